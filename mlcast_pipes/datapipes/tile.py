"""The tiling step: ``.tile()`` and ``TilingSampler``, over the tiling index of each opened archive.

Yields lazy tile records in time order (or a seeded shuffle of read windows), sharded by window.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes._sharding import EpochShardMixin
from mlcast_pipes.datapipes.steps import Stage, Step, StepFactory
from mlcast_pipes.epochs import plan_ordered, plan_shard, table_slices
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.format import default_index_dir
from mlcast_pipes.indexes.plan import TilingPlan, iter_tables
from mlcast_pipes.records import TileSample
from mlcast_pipes.splits import TimeSplit
from mlcast_pipes.tiling import TilingParams

__all__ = [
    "TileDataPipe",
    "TilingSampler",
]


@functional_datapipe("tile")
class TileDataPipe(EpochShardMixin, Step, IterDataPipe[TileSample]):
    """Cut each opened archive into space-time tiles, using (or making) its tiling index.

    Functional name: ``tile``. Loads ``{index_dir}/{tiling_id}.samples.csv`` when it matches
    the parameters and the archive, computes it with dask otherwise. Records are lazy: their
    pixels are read by the next step (``record.load()``), each frame decoded once per window.

    Parameters
    ----------
    source_datapipe : IterDataPipe of xarray.DataArray
        Opened archives (``.open_mlcast()``).
    n_time_window : int
        Steps per tile.
    tile_size : (int, int)
        Tile size (y, x) in pixels.
    stride : (int, int, int), optional
        Strides (t, y, x); default non-overlapping in time and space.
    max_nan_fraction : float
        Tiles with a larger share of NaN pixels are dropped.
    index_dir : str or path, optional
        Folder of index files (``$MLCAST_PIPES_INDEX_DIR`` or the cache when None).
    split : TimeSplit, optional
        Keep only tiles whose frames all lie in the split.
    shuffle_windows : bool
        Deliver read windows in a seeded random order per epoch instead of time order.
    seed : int
        Seed of the shuffle. A sampler chained after ``.tile()`` orders its own epochs and
        refuses ``shuffle_windows`` and ``seed`` here (give the sampler its ``seed``).
    recompute : bool
        Recompute a stale index instead of raising.
    progress : bool
        Progress bar on stderr while computing the index, once that has taken two seconds
        (False: none).
    **tiling_params
        Further :class:`~mlcast_pipes.tiling.TilingParams` fields (``wet_threshold``, ...).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> dp = IterableWrapper(["demo"]).open_mlcast().tile(n_time_window=12, tile_size=(128, 128))
    >>> dp.plan.params.tile_size
    (128, 128)

    """

    def __init__(
        self,
        source_datapipe: IterDataPipe[xr.DataArray],
        n_time_window: int = 12,
        tile_size: tuple[int, int] | int = (128, 128),
        stride: tuple[int, int, int] | None = None,
        max_nan_fraction: float = 0.05,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        split: TimeSplit | None = None,
        shuffle_windows: bool = False,
        seed: int = 0,
        recompute: bool = False,
        progress: bool = True,
        **tiling_params: Any,
    ) -> None:
        known = {f.name for f in dataclasses.fields(TilingParams)}
        unknown = sorted(set(tiling_params) - known)
        if unknown:
            raise ParameterError(
                f"unknown tiling argument(s) {', '.join(map(repr, unknown))}; fix: use "
                f"{', '.join(sorted(known | _OWN_ARGS))}"
            )
        if isinstance(tile_size, int):
            tile_size = (tile_size, tile_size)
        self.n_time_window = n_time_window
        self.tile_size = tile_size
        self.stride = stride
        self.max_nan_fraction = max_nan_fraction
        self.index_dir = index_dir
        self.split = split
        self.recompute = recompute
        self.progress = progress
        params = TilingParams(
            n_time_window=n_time_window,
            tile_size=_listed(tile_size),
            stride=None if stride is None else _listed(stride),
            max_nan_fraction=max_nan_fraction,
            **tiling_params,
        )
        folder = Path(index_dir) if index_dir is not None else default_index_dir()
        self.source_datapipe = source_datapipe
        self.plan = TilingPlan(params, folder, split, recompute, progress)
        self.shuffle_windows = shuffle_windows
        self.seed = seed
        self._init_epochs()

    provides: ClassVar[Stage] = "tiles"
    accepts: ClassVar[tuple[Stage, ...]] = ("dataset",)

    def prepare(self) -> None:
        """Build or load the tiling index of every upstream archive."""
        for da in self.source_datapipe:
            self.plan.table(da)

    def time_steps(self) -> int:
        """Steps per tile."""
        return int(self.plan.params.n_time_window)

    def _epoch_keys(self, epoch: int) -> list[np.ndarray]:
        return [t.column("t_start") for t in iter_tables(self.plan, iter(self.source_datapipe))]

    def __iter__(self) -> Iterator[TileSample]:
        epoch = self._start_epoch()
        shard = self.shard
        tables = list(iter_tables(self.plan, iter(self.source_datapipe)))
        if self._ordered:
            runs = plan_ordered(
                [t.column("t_start") for t in tables],
                shard=shard,
                batch_size=self._batch_size,
                drop_remainder=self._drop_remainder,
            )
            for k, positions in runs:
                yield from _records(tables[k], positions)
            return
        slices = table_slices(
            [len(t.column("t_start")) for t in tables], shard, self._drop_remainder
        )
        for table, bounds in zip(tables, slices, strict=True):
            keys = table.column("t_start")
            groups = plan_shard(
                keys,
                seed=self.seed,
                epoch=epoch,
                shard=shard,
                shuffle=self.shuffle_windows,
                drop_remainder=self._drop_remainder,
                bounds=bounds,
            )
            for group in groups:
                yield from _records(table, group)


def _records(table: Any, positions: np.ndarray) -> Iterator[TileSample]:
    """The records at plan positions (``n + row``: a padding copy of ``row``)."""
    n = len(table.column("t_start"))
    for pos in positions:
        record = table.record(int(pos) % n)
        if pos >= n:
            record.padded = True
        yield record


#: Arguments of ``.tile()`` besides those of TilingParams.
_OWN_ARGS = {"index_dir", "split", "shuffle_windows", "seed", "recompute", "progress"}


def _listed(value: Any) -> Any:
    """A list (YAML) as a tuple; anything else unchanged, for TilingParams to check."""
    return tuple(value) if isinstance(value, list) else value


class TilingSampler(StepFactory):
    """The seed's tiling step: ``TilingSampler(n_time_window=12, tile_size=(128, 128))``.

    Calling it on a source datapipe returns the equivalent ``.tile(...)`` datapipe; use it in
    :func:`mlcast_pipes.compose`.

    Examples
    --------
    >>> step = TilingSampler(n_time_window=12, tile_size=(128, 128))
    >>> step.provides, step.accepts
    ('tiles', ('dataset',))

    """

    step = TileDataPipe
