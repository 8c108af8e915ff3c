"""One dask pass over an archive yielding per-tile statistics block by block.

Reads frames with retries of transient errors and reduces them with the kernels.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import MLCastPipesError, ReadError
from mlcast_pipes.indexes.format import (
    importance_column,
    quantile_column,
)
from mlcast_pipes.reader.errors import is_transient
from mlcast_pipes.tiling.grid import TimeWindows, tile_grid
from mlcast_pipes.tiling.kernels import (
    N_BINS,
    KernelSpec,
    RateFn,
    _frame_partials_3d,
    hist_importance,
    hist_quantiles,
    importance_weights,
    partials_dtype,
    window_max,
    window_sum,
)
from mlcast_pipes.tiling.params import TilingParams
from mlcast_pipes.tiling.steps import STEP_FIELDS, steps_dtype

__all__ = [
    "COMPUTE_RETRIES",
    "COMPUTE_RETRY_BACKOFF_S",
    "KERNEL_NAME_PREFIX",
    "TileBlock",
    "iter_tile_statistics",
]


#: Name prefix of the per-frame kernel tasks in dask graphs (progress bars count these).
KERNEL_NAME_PREFIX = "mlcast-tile-partials-"
_PARTIALS_BUDGET_BYTES = 384 * 2**20
#: Times a block of frames is read again after the same transient (network-like) error, and the
#: wait before the first retry in seconds (doubled each time). A corrupted chunk fails at once.
COMPUTE_RETRIES = 3
COMPUTE_RETRY_BACKOFF_S = 0.5
_MAX_BLOCK_RETRY_FACTOR = 4  # at most 4 x COMPUTE_RETRIES retries per block in all


# ================================================================================================
# the pass
# ================================================================================================
@dataclass
class TileBlock:
    """Kept tiles of one block of the pass: column arrays and progress.

    ``columns`` holds every index column except ``tile_id`` and ``time_start`` (``t_start`` is the
    time index); ``rejected_nan`` counts tiles of valid windows dropped for their NaN fraction;
    ``steps`` is ``(n_rows, n_time_window)`` of :func:`~mlcast_pipes.tiling.steps.steps_dtype`.

    Examples
    --------
    >>> from mlcast_pipes.tiling import TilingParams, time_windows
    >>> data = np.ones((4, 16, 32), dtype=np.float32)
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(4) * np.timedelta64(5, "m")
    >>> params = TilingParams(n_time_window=2, tile_size=(16, 16))
    >>> block = next(iter_tile_statistics(data, times, params, time_windows(times, 2, 2)))
    >>> block.n_rows, block.frames_done, block.frames_total
    (4, 4, 4)

    """

    columns: dict[str, np.ndarray]
    time_start: np.ndarray
    rejected_nan: int
    frames_done: int
    frames_total: int
    steps: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """Number of kept tiles in the block."""
        return int(self.time_start.size)


def _block_frames(requested: int, itemsize: int, n: int) -> int:
    budget = max(1, _PARTIALS_BUDGET_BYTES // (3 * max(itemsize, 1)))
    return int(max(1, min(int(requested), budget)))


def _as_dask(data: Any, height: int, width: int) -> Any:
    import dask.array as dsa

    arr = data if isinstance(data, dsa.Array) else dsa.from_array(data, chunks=(1, -1, -1))
    if arr.chunks[1] != (height,) or arr.chunks[2] != (width,):
        arr = arr.rechunk({1: -1, 2: -1})
    return arr


def _select_frames(arr: Any, idx: np.ndarray) -> Any:
    """Frames ``idx`` (sorted) of a dask array as slices of consecutive runs (no per-frame copy)."""
    import dask.array as dsa

    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, breaks)]
    if len(runs) == 1:
        return arr[runs[0][0] : runs[0][1]]
    return dsa.concatenate([arr[a:b] for a, b in runs], axis=0)


def iter_tile_statistics(
    data: Any,
    times: npt.ArrayLike,
    params: TilingParams,
    windows: TimeWindows,
    *,
    to_rate: RateFn | None = None,
    block_frames: int = 512,
    compute: Callable[[Any], np.ndarray] | None = None,
    source: str | None = None,
    retries: int | None = None,
    retry_backoff: float | None = None,
) -> Iterator[TileBlock]:
    """Compute per-tile statistics of all valid windows in one pass, a :class:`TileBlock` per block.

    Only frames inside valid ``windows`` are read, each once, ``block_frames`` at a time, so
    memory is bounded by the block size. ``to_rate`` converts native values to mm/h (None:
    already mm/h); ``source`` is named in read errors; a block failing with a transient error is
    reread ``retries`` times (default :data:`COMPUTE_RETRIES`).

    Examples
    --------
    >>> from mlcast_pipes.tiling import TilingParams, time_windows
    >>> data = np.zeros((6, 64, 64), dtype=np.float32)
    >>> data[:, :32, :32] = 2.0
    >>> data[:, 40:, 40:] = np.nan
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(6) * np.timedelta64(5, "m")
    >>> params = TilingParams(n_time_window=3, tile_size=(32, 32))
    >>> blocks = list(iter_tile_statistics(data, times, params, time_windows(times, 3, 3)))
    >>> [(b.n_rows, b.rejected_nan) for b in blocks]  # 2 windows x 4 tiles, 2 with NaN dropped
    [(6, 2)]

    """
    n_t, height, width = (int(s) for s in data.shape)
    params.validate_for(n_t, height, width)
    grid = tile_grid(height, width, params)
    n = params.n_time_window
    ncy, ncx = grid.n_cells
    ncell = ncy * ncx
    cy, cx = grid.cell
    kty, ktx = grid.cells_per_tile
    cell_y0 = grid.y_starts // cy
    cell_x0 = grid.x_starts // cx
    nty, ntx = grid.y_starts.size, grid.x_starts.size
    npix = n * grid.tile[0] * grid.tile[1]
    spec = KernelSpec(
        height, width, cy, cx, ncy, ncx, params.wet_threshold, to_rate, params.clip_max
    )
    pdtype = partials_dtype(ncell)
    weights = importance_weights(params.importance_scales)
    sdtype = steps_dtype([importance_column(s) for s in params.importance_scales])
    tvals = np.asarray(times).astype("datetime64[ns]")

    frames = windows.frames_needed()
    total = int(frames.size)
    starts_t = windows.valid_starts
    if total == 0:
        return
    start_pos = np.searchsorted(frames, starts_t)
    end_pos = start_pos + n - 1
    bf = _block_frames(block_frames, pdtype.itemsize, n)
    arr = _as_dask(data, height, width)
    if compute is None:

        def compute(x: Any) -> np.ndarray:
            return np.asarray(x.compute())

    n_retries = COMPUTE_RETRIES if retries is None else max(0, int(retries))
    backoff = COMPUTE_RETRY_BACKOFF_S if retry_backoff is None else max(0.0, float(retry_backoff))
    carry = np.zeros(0, dtype=pdtype)
    carry_start = 0
    qcols = [quantile_column(q) for q in params.quantiles]
    icols = [importance_column(s) for s in params.importance_scales]

    # cell partials -> tile totals: (frames or windows, cells, ...) -> (same, tiles, ...)
    def grid_sum(a: np.ndarray) -> np.ndarray:
        f, rest = a.shape[0], a.shape[2:]
        a = a.reshape(f, ncy, ncx, *rest)
        a = window_sum(window_sum(a, cell_y0, kty, axis=1), cell_x0, ktx, axis=2)
        return a.reshape(f, nty * ntx, *rest)

    def grid_max(a: np.ndarray) -> np.ndarray:
        f = a.shape[0]
        a = window_max(window_max(a.reshape(f, ncy, ncx), cell_y0, kty, axis=1), cell_x0, ktx, 2)
        return a.reshape(f, nty * ntx)

    for b0 in range(0, total, bf):
        b1 = min(b0 + bf, total)
        sub = _select_frames(arr, frames[b0:b1])
        # keep 3 dims (k, 1, 1): with drop_axis dask would copy every frame (concatenate=True)
        parts = sub.map_blocks(
            _frame_partials_3d,
            spec,
            dtype=pdtype,
            chunks=(sub.chunks[0], (1,), (1,)),
            meta=np.zeros((0, 0, 0), dtype=pdtype),
            name=f"{KERNEL_NAME_PREFIX}{uuid.uuid4().hex}",
        )
        # a failing compute stops at its first error: several flaky chunks in one block fail
        # one after the other, so the retries are counted per error (per chunk), within a cap
        attempt = 0
        seen: dict[str, int] = {}
        while True:
            try:
                res = compute(parts)
                break
            except MLCastPipesError:
                raise
            except Exception as exc:
                key = f"{type(exc).__name__}: {exc}"
                seen[key] = seen.get(key, 0) + 1
                if (
                    seen[key] <= n_retries
                    and attempt < _MAX_BLOCK_RETRY_FACTOR * n_retries
                    and is_transient(exc)
                ):
                    time.sleep(backoff * 2 ** (seen[key] - 1))
                    attempt += 1
                    continue
                first, last = int(frames[b0]), int(frames[b1 - 1])
                span = (
                    f"{np.datetime_as_string(tvals[first], 's')} .. "
                    f"{np.datetime_as_string(tvals[last], 's')}"
                )
                where = f" of {source}" if source else ""
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise ReadError(
                    f"reading or converting frames {first}..{last} ({span}){where} failed"
                    f"{tries}: {type(exc).__name__}: {exc}; fix: check that the archive is "
                    "readable there (network, credentials, damaged chunks) and that to_rate "
                    "accepts the data"
                ) from exc
        res = res.reshape(-1)
        cat = np.concatenate([carry, res]) if carry.size else res
        lo, hi = np.searchsorted(end_pos, [b0, b1])
        sel = np.arange(lo, hi)
        keep_from = max(b1 - (n - 1), carry_start) if n > 1 else b1
        if sel.size == 0:
            carry = cat[keep_from - carry_start :].copy()
            carry_start = keep_from
            yield TileBlock({}, np.zeros(0, "datetime64[ns]"), 0, b1, total)
            continue
        local = start_pos[sel] - carry_start
        nan_w = window_sum(cat["nan"], local, n)
        sum_w = window_sum(cat["sum"], local, n)
        wet_w = window_sum(cat["wet"], local, n)
        clip_w = window_sum(cat["clip"], local, n)
        max_w = window_max(cat["max"], local, n)
        hist_w = window_sum(cat["hist"], local, n)
        f0, f1 = int(local.min()), int(local.max()) + n
        per_step = cat[f0:f1]
        carry = cat[keep_from - carry_start :].copy()
        carry_start = keep_from
        del cat, res

        nan_t = grid_sum(nan_w).ravel()
        nan_frac = nan_t / npix
        kept = nan_frac <= params.max_nan_fraction
        rejected = int(kept.size - np.count_nonzero(kept))
        rows = np.flatnonzero(kept)
        sum_t = grid_sum(sum_w).ravel()[rows]
        wet_t = grid_sum(wet_w).ravel()[rows]
        clip_t = grid_sum(clip_w).ravel()[rows]
        max_t = grid_max(max_w).ravel()[rows].astype(np.float64)
        hist_t = grid_sum(hist_w).reshape(-1, N_BINS)[rows]
        nan_k = nan_t[rows]
        valid = npix - nan_k
        hist_t[:, 0] = valid - hist_t[:, 1:].sum(axis=1)
        win_idx, tile_idx = np.divmod(rows, nty * ntx)
        iy, ix = np.divmod(tile_idx, ntx)
        t_start = starts_t[sel][win_idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(valid > 0, sum_t / valid, np.nan)
            frac_wet = np.where(valid > 0, wet_t / valid, np.nan)
        max_t = np.where(valid > 0, max_t, np.nan)
        cols: dict[str, np.ndarray] = {
            "t_start": t_start.astype(np.int64),
            "y_start": grid.y_starts[iy].astype(np.int64),
            "x_start": grid.x_starts[ix].astype(np.int64),
            "n_time_window": np.full(rows.size, n, dtype=np.int64),
            "y_tile": np.full(rows.size, grid.tile[0], dtype=np.int64),
            "x_tile": np.full(rows.size, grid.tile[1], dtype=np.int64),
            "nan_count": nan_k.astype(np.int64),
            "nan_fraction": nan_frac[rows],
            "sum": sum_t,
            "mean": mean,
            "max": max_t,
            "frac_wet": frac_wet,
            "clip_count": clip_t.astype(np.int64),
        }
        qv = hist_quantiles(hist_t, max_t, params.quantiles)
        for j, name in enumerate(qcols):
            cols[name] = qv[:, j]
        iv = hist_importance(hist_t, weights)
        for j, name in enumerate(icols):
            cols[name] = iv[:, j]
        steps = _tile_steps(
            per_step, weights, sdtype, (local[win_idx] - f0, tile_idx), n, grid_sum, grid_max
        )
        yield TileBlock(cols, tvals[t_start], rejected, b1, total, steps)


def _tile_steps(
    per_step: np.ndarray,
    weights: np.ndarray,
    sdtype: np.dtype[Any],
    where: tuple[np.ndarray, np.ndarray],
    n: int,
    grid_sum: Callable[[np.ndarray], np.ndarray],
    grid_max: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Step records ``(rows, n)`` of the kept tiles (first frame, spatial tile) in ``where``."""
    first, tile = where
    frame = first[:, None] + np.arange(n)[None, :]
    tile = tile[:, None]
    out = np.empty(frame.shape, dtype=sdtype)
    for name in ("nan", "sum", "wet", "clip"):
        out[name] = grid_sum(per_step[name])[frame, tile]
    out["max"] = grid_max(per_step["max"])[frame, tile]
    imp = grid_sum(per_step["hist"] @ weights)  # bin 0 (dry) has weight 0
    for j, name in enumerate((sdtype.names or ())[len(STEP_FIELDS) :]):
        out[name] = imp[frame, tile, j]
    return out
