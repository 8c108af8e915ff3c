"""Tile grid, valid time windows and one-pass per-tile statistics of a radar archive.

Core layer of the offline pass: the index preparation drives it with dask and writes what it yields.
"""

from mlcast_pipes.tiling.grid import REJECT_REASONS, TileGrid, TimeWindows, tile_grid, time_windows
from mlcast_pipes.tiling.kernels import (
    HIST_LOG_EDGES,
    N_BINS,
    KernelSpec,
    frame_partials,
    hist_bin,
    hist_importance,
    hist_quantiles,
    importance_weights,
    partials_dtype,
    window_max,
    window_sum,
)
from mlcast_pipes.tiling.params import (
    DEFAULT_IMPORTANCE_SCALES,
    DEFAULT_QUANTILES,
    TilingParams,
    tiling_id,
)
from mlcast_pipes.tiling.stats import (
    COMPUTE_RETRIES,
    COMPUTE_RETRY_BACKOFF_S,
    KERNEL_NAME_PREFIX,
    TileBlock,
    iter_tile_statistics,
)
from mlcast_pipes.tiling.steps import (
    STEP_FIELDS,
    steps_dtype,
    sub_window_statistics,
)
from mlcast_pipes.transforms import DEFAULT_CLIP_MAX

__all__ = [
    "COMPUTE_RETRIES",
    "COMPUTE_RETRY_BACKOFF_S",
    "DEFAULT_CLIP_MAX",
    "DEFAULT_IMPORTANCE_SCALES",
    "DEFAULT_QUANTILES",
    "HIST_LOG_EDGES",
    "KERNEL_NAME_PREFIX",
    "N_BINS",
    "REJECT_REASONS",
    "STEP_FIELDS",
    "KernelSpec",
    "TileBlock",
    "TileGrid",
    "TilingParams",
    "TimeWindows",
    "frame_partials",
    "hist_bin",
    "hist_importance",
    "hist_quantiles",
    "importance_weights",
    "iter_tile_statistics",
    "partials_dtype",
    "steps_dtype",
    "sub_window_statistics",
    "tile_grid",
    "tiling_id",
    "time_windows",
    "window_max",
    "window_sum",
]
