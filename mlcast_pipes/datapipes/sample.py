"""Sampling steps: ``.binnorm_sample()``, a functional per registered sampler, ``BinNormSampler``.

Each epoch is drawn from the sampling pool, grouped by read window, sharded, read group by group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes._sharding import EpochShardMixin
from mlcast_pipes.datapipes.steps import Stage, Step, StepFactory
from mlcast_pipes.datapipes.tile import TileDataPipe
from mlcast_pipes.delivery import SampleDelivery
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.indexes.plan import TileTable, iter_tables
from mlcast_pipes.indexes.sampling import SamplingIndex
from mlcast_pipes.indexes.training_copy import TrainingCopy
from mlcast_pipes.records import TileSample
from mlcast_pipes.sampling import available_samplers, get_sampler

__all__ = [
    "BinNormSampleDataPipe",
    "BinNormSampler",
    "SampleDataPipe",
    "Sampler",
    "register_sampler_functional",
]


class SampleDataPipe(EpochShardMixin, Step, IterDataPipe[TileSample]):
    """Draw an epoch of tiles with a registered sampler and read them window by window.

    Functional name: ``sample`` (``method=`` picks the sampler); every registered sampler also
    has its own functional, ``.<name>_sample()``. The order depends only on (seed, epoch): it
    is the same in every process, and each record of an epoch is delivered exactly once across
    worker processes and ranks (this datapipe shards itself; add no ``sharding_filter``).

    Parameters
    ----------
    tile_datapipe : TileDataPipe
        The output of ``.tile()``.
    method : str
        A sampler name (see :func:`mlcast_pipes.sampling.available_samplers`).
    n_samples : int, optional
        Samples per epoch (default: the size of the pool).
    n_time_sample : int, optional
        Steps per sample (default: the tile's window); a seeded sub-window otherwise, whose
        own statistics the sampler sees (quantile aggregations need the whole window).
    seed : int
        Seeds the pool, the per-epoch order, and the sub-window offsets.
    shuffle_buffer : int
        Distinct samples each worker holds to mix its batches: every window is read once and
        its samples leave the buffer at random, so batches are about as varied as a shuffled
        epoch. Memory: this many samples (256 x 12 x 128 x 128 float32 = 200 MB).
    read_ahead : int
        Read windows read together ahead of use in a background thread (0: none); two such
        reads overlap for remote stores.
    load : bool
        Read pixels here (grouped, each frame decoded once). False yields lazy records.
    materialized : bool, optional
        Read from the training copy (``prepare --materialize``): None uses it when it exists
        and matches the sampling index, True requires it, False never uses it.
    index_dir : str or path, optional
        Folder of the sampling index (the tiling index's folder when None).
    recompute : bool
        Rebuild a stale sampling index instead of raising.
    **params
        The sampler's own parameters.

    Examples
    --------
    Six uniformly drawn tiles of 4 steps x 64 x 64 pixels per epoch, from a small demo archive:

    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("sample.zarr", preset="tiny", seed=0, n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> dp = tiles.sample("uniform", n_samples=6, seed=0)  # or tiles.uniform_sample(...)
    >>> records = list(dp)  # epoch 0
    >>> len(records), records[0].data.shape
    (6, (4, 64, 64))
    >>> dp.set_epoch(0)  # the order depends only on (seed, epoch)
    >>> [r.tile_id for r in dp] == [r.tile_id for r in records]
    True

    """

    default_method: ClassVar[str | None] = None

    def __init__(
        self,
        tile_datapipe: IterDataPipe[Any],
        method: str | None = None,
        *,
        n_samples: int | None = None,
        n_time_sample: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 256,
        read_ahead: int = 4,
        load: bool = True,
        materialized: bool | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        recompute: bool = False,
        **params: Any,
    ) -> None:
        method = method or self.default_method
        if method is None:
            raise ParameterError(
                "choose a sampler with method=...; known samplers: "
                + ", ".join(available_samplers())
            )
        get_sampler(method)  # unknown names fail here, listing the known ones
        if not isinstance(tile_datapipe, TileDataPipe):
            raise PipelineOrderError(
                f"the {method!r} sampler needs tiles: chain it after .tile() (TilingSampler), "
                f"got {type(tile_datapipe).__name__} before it"
            )
        if tile_datapipe.shuffle_windows or tile_datapipe.seed != 0:
            raise ParameterError(
                f"the {method!r} sampler draws and orders each epoch itself, so "
                ".tile(shuffle_windows=..., seed=...) would have no effect: remove them from "
                f".tile() and set the sampler's own seed=... (now {seed})"
            )
        if "mix_groups" in params:
            raise ParameterError(
                "mix_groups was replaced by shuffle_buffer=N (samples held per worker to mix "
                "batches; 256 by default): drop mix_groups"
            )
        if n_samples is not None and n_samples <= 0:
            raise ParameterError(f"n_samples must be a positive number of samples, got {n_samples}")
        n_window = tile_datapipe.plan.params.n_time_window
        if n_time_sample is not None and not 0 < n_time_sample <= n_window:
            raise ParameterError(
                f"n_time_sample={n_time_sample} must be between 1 and the tiles' "
                f"n_time_window={n_window}; lower it or tile with longer windows"
            )
        # Keep the tiling plan, not the tile datapipe: the graph then holds one shardable step.
        self.source_datapipe = tile_datapipe.source_datapipe
        self.plan = tile_datapipe.plan
        self.method = method
        self.params = params
        self.n_samples = n_samples
        self.n_time_sample = n_time_sample
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.read_ahead = read_ahead
        self.load = load
        self.materialized = materialized
        self.index_dir = Path(index_dir) if index_dir is not None else self.plan.index_dir
        self.recompute = recompute
        self._pools: dict[str, SamplingIndex] = {}
        self._resume: tuple[int, int, bool] | None = None
        self._delivery = SampleDelivery(
            seed=seed,
            n_samples=n_samples,
            shuffle_buffer=shuffle_buffer,
            read_ahead=read_ahead,
            load=load,
            materialized=materialized,
        )
        self._init_epochs()

    provides: ClassVar[Stage] = "samples"
    accepts: ClassVar[tuple[Stage, ...]] = ("tiles",)

    def prepare(self) -> None:
        """Build or load the sampling index of every upstream archive."""
        self.sampling_indexes()

    def time_steps(self) -> int:
        """Steps per sample."""
        return int(self.n_time_sample or self.plan.params.n_time_window)

    def sampling_indexes(self) -> list[SamplingIndex]:
        """Build (or load) the sampling index of every upstream archive, in this process."""
        return [self._pool(t) for t in iter_tables(self.plan, iter(self.source_datapipe))]

    def _pool(self, table: TileTable) -> SamplingIndex:
        """The sampling index of one tile table, built or loaded once per process."""
        key = f"{table.name}/{table.info.fingerprint}"
        if key not in self._pools:
            self._pools[key] = table.sampling_index(
                self.method,
                self.params,
                n_time_sample=self.n_time_sample,
                seed=self.seed,
                index_dir=self.index_dir,
                recompute=self.recompute,
            )
        return self._pools[key]

    def set_resume(self, batches: int, batch_size: int, drop_last: bool = False) -> None:
        """Start the next epoch at batch ``batches`` of batch size ``batch_size``.

        The records of the skipped batches are dropped before any pixel is read; the batches
        that follow are the ones the interrupted epoch would have delivered.
        """
        self._resume = (int(batches), int(batch_size), drop_last)

    def _pools_of_epoch(self) -> list[tuple[TileTable, SamplingIndex]]:
        tables = iter_tables(self.plan, iter(self.source_datapipe))
        return [(table, self._pool(table)) for table in tables]

    def _epoch_keys(self, epoch: int) -> list[np.ndarray]:
        return self._delivery.epoch_keys(self._pools_of_epoch(), epoch)

    def __iter__(self) -> Iterator[TileSample]:
        epoch = self._start_epoch()
        resume, self._resume = self._resume, None
        yield from self._delivery.records(
            self._pools_of_epoch(), epoch, self.shard, self._order, skip_batches=resume
        )

    def training_copy(self, sampling: SamplingIndex) -> TrainingCopy | None:
        """The training copy to read this sampling index from, if any (see ``materialized``)."""
        return self._delivery.training_copy(sampling)


functional_datapipe("sample")(SampleDataPipe)


@functional_datapipe("binnorm_sample")
class BinNormSampleDataPipe(SampleDataPipe):
    """Balance precipitation intensities: bin a per-tile scalar and draw every bin equally often.

    Functional name: ``binnorm_sample``.

    Parameters
    ----------
    tile_datapipe : TileDataPipe
        The output of ``.tile()``.
    aggregation : str
        The per-tile scalar: ``"sum"``, ``"mean"``, ``"max"``, ``"frac_wet"`` or a stored
        quantile such as ``"p99"``.
    n_scalar_total_bins : int, optional
        Number of bins, the dry bin included (10 by default; implied by explicit edges).
    bin_edges : str or sequence of float
        ``"log"``, ``"linear"``, ``"quantile"`` or explicit edges.
    n_samples, n_time_sample, seed, shuffle_buffer, read_ahead, load, index_dir, recompute
        As for :class:`SampleDataPipe`.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> dp = IterableWrapper(["demo"]).open_mlcast().tile().binnorm_sample(n_scalar_total_bins=8)
    >>> dp.params["n_scalar_total_bins"]
    8

    """

    default_method = "binnorm"

    def __init__(
        self,
        tile_datapipe: IterDataPipe[Any],
        aggregation: str = "sum",
        n_scalar_total_bins: int | None = None,
        bin_edges: str | list[float] = "log",
        n_samples: int | None = None,
        n_time_sample: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tile_datapipe,
            "binnorm",
            aggregation=aggregation,
            n_scalar_total_bins=n_scalar_total_bins,
            bin_edges=bin_edges,
            n_samples=n_samples,
            n_time_sample=n_time_sample,
            seed=seed,
            **kwargs,
        )


def register_sampler_functional(name: str) -> type[SampleDataPipe]:
    """Register ``.<name>_sample()`` for a sampler added with ``register_sampler``.

    Samplers registered before the package is imported get their functional automatically.
    Calling it again for the same name (re-running a notebook cell) replaces the functional;
    a name taken by another kind of datapipe raises :class:`ParameterError`.

    Examples
    --------
    >>> import pandas as pd
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.sampling import register_sampler
    >>> @register_sampler("every_third_example")
    ... def every_third(table, *, seed):
    ...     rows = table.iloc[::3]
    ...     return pd.DataFrame(
    ...         {"source_tile_id": rows["tile_id"], "scalar_value": 0.0, "bin_id": -1}
    ...     )
    >>> register_sampler_functional("every_third_example").__name__
    'EveryThirdExampleSampleDataPipe'
    >>> tiles = IterableWrapper(["demo"]).open_mlcast().tile()
    >>> tiles.every_third_example_sample(n_samples=10).method
    'every_third_example'

    """
    functional = f"{name}_sample"
    taken = IterDataPipe.functions.get(functional)
    if taken is not None:
        owner = getattr(taken, "args", (None,))[0]
        if not (isinstance(owner, type) and issubclass(owner, SampleDataPipe)):
            raise ParameterError(
                f"the functional .{functional}() is already taken by "
                f"{getattr(owner, '__name__', owner)!r}; register the sampler under another name"
            )
        del IterDataPipe.functions[functional]
    cls = type(
        f"{name.title().replace('_', '')}SampleDataPipe",
        (SampleDataPipe,),
        {
            "default_method": name,
            "__doc__": (
                f"Sample tiles with the {name!r} sampler (functional ``{functional}``).\n\n"
                "Examples\n--------\n"
                ">>> from torchdata.datapipes.iter import IterableWrapper\n"
                '>>> tiles = IterableWrapper(["demo"]).open_mlcast().tile()\n'
                f">>> tiles.{functional}().method\n{name!r}\n"
            ),
            "__module__": __name__,
        },
    )
    functional_datapipe(functional)(cls)
    globals()[cls.__name__] = cls  # picklable: graph traversal and spawned workers pickle it
    return cls


for _name in available_samplers():
    if _name != "binnorm":
        register_sampler_functional(_name)


class BinNormSampler(StepFactory):
    """The seed's sampling step: ``BinNormSampler(aggregation="sum", n_scalar_total_bins=10)``.

    Calling it on a ``.tile()`` datapipe returns the equivalent ``.binnorm_sample(...)``.

    Examples
    --------
    >>> step = BinNormSampler(aggregation="sum", n_scalar_total_bins=10)
    >>> step.provides, step.accepts
    ('samples', ('tiles',))

    """

    step = BinNormSampleDataPipe


class Sampler(StepFactory):
    """A sampling step for any registered sampler: ``Sampler("importance", q_min=1e-4)``.

    Examples
    --------
    >>> Sampler("importance", q_min=1e-4)
    Sampler('importance', q_min=0.0001)

    """

    step = SampleDataPipe

    def __init__(self, method: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        get_sampler(method)
        self.method = method
        self.kwargs = kwargs

    def __call__(self, source: IterDataPipe[Any]) -> SampleDataPipe:
        """Apply the step to an upstream datapipe."""
        return SampleDataPipe(source, self.method, **self.kwargs)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Sampler({self.method!r}{args})"
