"""The tiling step: ``.tile()`` and ``TilingSampler``, over the tiling index of each opened archive.

Yields lazy tile records in time order (or a seeded shuffle of read windows), sharded by window.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xarray as xr
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes._sharding import EpochShardMixin
from mlcast_pipes.epochs import plan_shard
from mlcast_pipes.indexing import TilingPlan, default_index_dir, iter_tables
from mlcast_pipes.records import TileSample
from mlcast_pipes.splits import TimeSplit
from mlcast_pipes.tiling import TilingParams


@functional_datapipe("tile")
class TileDataPipe(EpochShardMixin, IterDataPipe[TileSample]):
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
        Seed of the shuffle.
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
            tile_size=tuple(tile_size),  # type: ignore[arg-type]
            stride=None if stride is None else tuple(stride),  # type: ignore[arg-type]
            max_nan_fraction=max_nan_fraction,
            **tiling_params,
        )
        folder = Path(index_dir) if index_dir is not None else default_index_dir()
        self.source_datapipe = source_datapipe
        self.plan = TilingPlan(params, folder, split, recompute, progress)
        self.shuffle_windows = shuffle_windows
        self.seed = seed
        self._init_epochs()

    def __iter__(self) -> Iterator[TileSample]:
        epoch = self._start_epoch()
        shard = self.shard
        for table in iter_tables(self.plan, iter(self.source_datapipe)):
            keys = table.column("t_start")
            groups = plan_shard(
                keys, seed=self.seed, epoch=epoch, shard=shard, shuffle=self.shuffle_windows
            )
            for group in groups:
                for pos in group:
                    yield table.record(int(pos))


class TilingSampler:
    """The seed's tiling step: ``TilingSampler(n_time_window=12, tile_size=(128, 128))``.

    Calling it on a source datapipe returns the equivalent ``.tile(...)`` datapipe; use it in
    :func:`mlcast_pipes.compose`.

    Examples
    --------
    >>> TilingSampler(n_time_window=12, tile_size=(128, 128)).kwargs["n_time_window"]
    12

    """

    requires = "dataset"
    provides = "tiles"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __call__(self, source: IterDataPipe[Any]) -> TileDataPipe:
        """Apply the step to an upstream datapipe."""
        return TileDataPipe(source, **self.kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"TilingSampler({args})"
