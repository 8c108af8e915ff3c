"""Sampling steps: ``.binnorm_sample()``, a functional per registered sampler, ``BinNormSampler``.

Each epoch is drawn from the sampling pool, grouped by read window, sharded, read group by group.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes._sharding import EpochShardMixin
from mlcast_pipes.datapipes.steps import Stage, Step, StepFactory
from mlcast_pipes.datapipes.tile import TileDataPipe
from mlcast_pipes.epochs import (
    epoch_rng,
    group_by_key,
    mix_blocks,
    plan_ordered,
    plan_shard,
    skip_records,
)
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.indexing import TileTable, iso_time, iter_tables
from mlcast_pipes.materialize import TrainingCopy, copy_path
from mlcast_pipes.reader import get_reader
from mlcast_pipes.records import TileSample
from mlcast_pipes.sampling import (
    SAMPLES_COLUMNS,
    SamplingIndex,
    available_samplers,
    draw_epoch,
    get_sampler,
)


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
        Steps per sample (default: the tile's window); a seeded sub-window otherwise.
    seed : int
        Seeds the pool, the per-epoch order, and the sub-window offsets.
    mix_groups : int
        Read windows mixed together in each worker: a batch holds samples of up to this many
        moments in time, at the memory cost of that many windows.
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
        mix_groups: int = 4,
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
        if n_samples is not None and n_samples <= 0:
            raise ParameterError(f"n_samples must be a positive number of samples, got {n_samples}")
        n_window = tile_datapipe.plan.params.n_time_window
        if n_time_sample is not None and not 0 < n_time_sample <= n_window:
            raise ParameterError(
                f"n_time_sample={n_time_sample} must be between 1 and the tiles' "
                f"n_time_window={n_window}; lower it or tile with longer windows"
            )
        if mix_groups < 1:
            raise ParameterError(f"mix_groups must be >= 1, got {mix_groups}")
        # Keep the tiling plan, not the tile datapipe: the graph then holds one shardable step.
        self.source_datapipe = tile_datapipe.source_datapipe
        self.plan = tile_datapipe.plan
        self.method = method
        self.params = params
        self.n_samples = n_samples
        self.n_time_sample = n_time_sample
        self.seed = seed
        self.mix_groups = mix_groups
        self.load = load
        self.materialized = materialized
        self.index_dir = Path(index_dir) if index_dir is not None else self.plan.index_dir
        self.recompute = recompute
        self._pools: dict[str, SamplingIndex] = {}
        self._copies: dict[str, TrainingCopy] = {}
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
        self._resume: tuple[int, int, bool] | None = (int(batches), int(batch_size), drop_last)

    def _epoch_plans(self, epoch: int) -> list[tuple[int, TileTable, Any, np.ndarray, Any]]:
        """(table number, table, training copy, drawn pool rows, pool columns) per table."""
        plans = []
        for k, table in enumerate(iter_tables(self.plan, iter(self.source_datapipe))):
            sampling = self._pool(table)
            pool = sampling.table
            copy = self.training_copy(sampling)
            rows = draw_epoch(pool, n_samples=self.n_samples, seed=self.seed, epoch=epoch)
            cols = {name: pool[name].to_numpy() for name in _POOL_COLUMNS}
            plans.append((k, table, copy, rows, cols))
        return plans

    @staticmethod
    def _read_keys(copy: TrainingCopy | None, cols: dict[str, np.ndarray], rows: np.ndarray) -> Any:
        # From the source, a read group is a time window; from a training copy every sample is
        # its own chunk and the draws are in random order already: groups of a few draws keep
        # the plan cheap, the workers' shares even and the first read of an epoch short.
        return cols["t_start"][rows] if copy is None else np.arange(len(rows)) // 4

    def _epoch_keys(self, epoch: int) -> list[np.ndarray]:
        return [self._read_keys(c, cols, r) for _, _, c, r, cols in self._epoch_plans(epoch)]

    def __iter__(self) -> Iterator[TileSample]:
        epoch = self._start_epoch()
        shard = self.shard
        plans = self._epoch_plans(epoch)
        keys = [self._read_keys(copy, cols, rows) for _, _, copy, rows, cols in plans]
        skip = 0
        resume: tuple[int, int, bool] | None = getattr(self, "_resume", None)
        self._resume = None
        if resume is not None:
            batches, batch_size, drop_last = resume
            sizes = self._worker_sizes(keys, shard)
            skip = skip_records(sizes, shard.worker, batches, batch_size, drop_last)
        for k, block in self._blocks(epoch, shard, keys):
            _, table, copy, rows, cols = plans[k]
            if skip >= len(block):
                skip -= len(block)
                continue
            block = block[skip:]
            skip = 0
            padded = block >= len(rows)
            records = self._read_block(table, cols, rows[block % max(len(rows), 1)], copy)
            for record, pad in zip(records, padded, strict=True):
                record.padded = bool(pad)
            yield from records

    def _blocks(
        self, epoch: int, shard: Any, keys: list[np.ndarray]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(table, plan positions) blocks this shard reads, in delivery order."""
        if self._ordered:
            runs = plan_ordered(
                keys, shard=shard, batch_size=self._batch_size, drop_remainder=self._drop_remainder
            )
            for k, positions in runs:  # one read per window
                n = len(keys[k])
                window = keys[k][positions % max(n, 1)]
                cuts = np.flatnonzero(np.diff(window)) + 1
                for part in np.split(positions, cuts):
                    yield k, part
            return
        for k, table_keys in enumerate(keys):
            groups = plan_shard(
                table_keys,
                seed=self.seed + k,
                epoch=epoch,
                shard=shard,
                drop_remainder=self._drop_remainder,
            )
            rng = random.Random(int(epoch_rng(self.seed, epoch, shard.index, k).integers(2**63)))
            for block in mix_blocks(groups, self.mix_groups, rng):
                yield k, block

    def training_copy(self, sampling: SamplingIndex) -> TrainingCopy | None:
        """The training copy to read this sampling index from, if any (see ``materialized``)."""
        if self.materialized is False:
            return None
        path = copy_path(sampling.path.parent, sampling.sampling_id)
        expected = sampling.meta.get("csv_sha256")
        copy = self._copies.get(str(path))
        if copy is None or copy.expected_sha256 != expected:  # kept: its chunk reader too
            copy = self._copies[str(path)] = TrainingCopy(path, expected)
        if copy.exists():
            return copy
        if self.materialized:
            raise ParameterError(
                f"no training copy of {sampling.sampling_id} in {sampling.path.parent}: run "
                "`mlcast-pipes prepare ... --sampler ... --materialize` first, or pass "
                "materialized=None to read from the source archive"
            )
        return None

    def _read_block(
        self,
        table: TileTable,
        col: dict[str, np.ndarray],
        rows: np.ndarray,
        copy: TrainingCopy | None = None,
    ) -> list[TileSample]:
        """Records of pool rows ``rows``, in order, read window by window (or from the copy)."""
        records = []
        for r in rows:
            rec = TileSample(
                info=table.info,
                tile_id=int(col["source_tile_id"][r]),
                t_start=int(col["t_start"][r]) + int(col["t_offset"][r]),
                n_time=int(col["n_time_sample"][r]),
                y_start=int(col["y_start"][r]),
                y_tile=int(col["y_tile"][r]),
                x_start=int(col["x_start"][r]),
                x_tile=int(col["x_tile"][r]),
                time_start=iso_time(
                    col["time_start"][r], int(col["t_offset"][r]), table.info.time_step
                ),
                sample_id=int(col["sampled_tile_id"][r]),
                scalar_value=float(col["scalar_value"][r]),
                bin_id=int(col["bin_id"][r]),
            )
            records.append(rec)
        if self.load and copy is not None:
            for rec, data in zip(records, copy.read_many(rows), strict=True):
                rec.data = data
        elif self.load and records:
            spec = table.info.spec
            reader = get_reader(spec.url, spec.var_name, spec.storage_options)
            for group in group_by_key(col["t_start"][rows]):  # one read per window
                members = [records[int(i)] for i in group]
                requests = [r.request for r in members]
                for rec, data in zip(
                    members, reader.read_tiles(requests, cache=False), strict=True
                ):
                    rec.data = data
        return records


_POOL_COLUMNS = tuple(c for c in SAMPLES_COLUMNS if c != "weight")

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
    n_samples, n_time_sample, seed, mix_groups, load, index_dir, recompute
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
    >>> BinNormSampler(aggregation="sum", n_scalar_total_bins=10).kwargs["aggregation"]
    'sum'

    """

    step = BinNormSampleDataPipe


class Sampler(StepFactory):
    """A sampling step for any registered sampler: ``Sampler("importance", q_min=1e-4)``.

    Examples
    --------
    >>> Sampler("uniform").method
    'uniform'

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
