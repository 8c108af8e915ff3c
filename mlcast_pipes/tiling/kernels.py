"""Per-frame statistic kernels: cell partials, window sums and maxima, histogram quantiles.

Pure numpy; the dask pass in :mod:`mlcast_pipes.tiling.stats` maps them over frame blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HIST_LOG_EDGES",
    "N_BINS",
    "FloatArray",
    "IntArray",
    "KernelSpec",
    "RateFn",
    "frame_partials",
    "hist_bin",
    "hist_importance",
    "hist_quantiles",
    "importance_weights",
    "partials_dtype",
    "window_max",
    "window_sum",
]


FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]
RateFn = Callable[[np.ndarray], np.ndarray]
# ---- fixed intensity histogram (mm/h) ---------------------------------------------------------
#: Log-spaced bin edges, 20 per decade from 0.01 to 1000 mm/h (101 values).
HIST_LOG_EDGES: npt.NDArray[np.float64] = 10.0 ** (np.arange(-40, 61) / 20.0)
#: Number of bins: 0 = R <= 0 (dry), 1 = 0 < R < 0.01, 2..101 = log bins, 102 = R >= 1000 (clutter).
N_BINS = len(HIST_LOG_EDGES) + 2
_BINS_PER_DECADE = 20.0
_BIN_OFFSET = 42.0  # floor(log10(R) * 20 + 42) gives bin 2 at R = 0.01
assert 2 * N_BINS <= 256  # the kernel packs (2 * bin + wet) into uint8
_HIST_LO = np.concatenate([[0.0, 0.0], HIST_LOG_EDGES])
_HIST_HI = np.concatenate([[0.0], HIST_LOG_EDGES, [np.inf]])


def hist_bin(values: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Histogram bin of rain rates (mm/h): 0 for R <= 0, 1 below 0.01, 2..101 log bins, 102 >= 1000.

    Examples
    --------
    >>> hist_bin([0.0, 0.005, 0.01, 1.0, 5000.0]).tolist()
    [0, 1, 2, 42, 102]

    """
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=np.intp)
    pos = v > 0
    with np.errstate(divide="ignore"):
        lg = np.floor(np.log10(v[pos]) * _BINS_PER_DECADE + _BIN_OFFSET)
    out[pos] = np.clip(lg, 1, N_BINS - 1).astype(np.intp)
    return out


# ================================================================================================
# per-frame kernel
# ================================================================================================
@dataclass(frozen=True)
class KernelSpec:
    """Geometry and settings of the per-frame kernel (small and picklable for dask workers).

    Cells are ``cy x cx`` pixels, ``ncy x ncx`` of them from the top-left corner; ``to_rate``
    converts native values to mm/h (None: already mm/h); rates above ``clip_max`` are capped.

    Examples
    --------
    >>> import pickle
    >>> spec = KernelSpec(4, 6, cy=2, cx=3, ncy=2, ncx=2, wet_threshold=0.1, to_rate=None)
    >>> pickle.loads(pickle.dumps(spec)) == spec  # can be sent to dask workers
    True

    """

    height: int
    width: int
    cy: int
    cx: int
    ncy: int
    ncx: int
    wet_threshold: float
    to_rate: RateFn | None
    clip_max: float | None = None


def partials_dtype(n_cells: int) -> np.dtype[Any]:
    """Structured dtype of the per-frame partial statistics of ``n_cells`` cells.

    Per cell: ``nan``/``wet``/``clip`` counts, ``sum``/``max`` of rates, ``hist`` (:data:`N_BINS`).

    Examples
    --------
    >>> partials_dtype(4).names
    ('nan', 'sum', 'max', 'wet', 'clip', 'hist')

    """
    return np.dtype(
        [
            ("nan", np.int32, (n_cells,)),
            ("sum", np.float64, (n_cells,)),
            ("max", np.float32, (n_cells,)),
            ("wet", np.int32, (n_cells,)),
            ("clip", np.int32, (n_cells,)),
            ("hist", np.int32, (n_cells, N_BINS)),
        ]
    )


@functools.lru_cache(maxsize=8)
def _segment_base(cy: int, ncy: int, ncx: int) -> np.ndarray:
    """For each (row, cell column) segment: its cell times ``2 * N_BINS`` (int32)."""
    cell = ((np.arange(ncy * cy) // cy)[:, None] * ncx + np.arange(ncx)[None, :]).ravel()
    base = (cell * (2 * N_BINS)).astype(np.int32)
    base.setflags(write=False)
    return base


def _count_dtype(n: int) -> type[np.unsignedinteger[Any]] | type[np.signedinteger[Any]]:
    if n <= 255:
        return np.uint8
    if n <= 65535:
        return np.uint16
    return np.int32


def _frame_into(frame: np.ndarray, spec: KernelSpec, rec: np.void) -> None:
    ncy, ncx, cy, cx = spec.ncy, spec.ncx, spec.cy, spec.cx
    ncell = ncy * ncx
    hc, wc = ncy * cy, ncx * cx
    width = frame.shape[1]
    # Full-frame passes run on strips of whole cell rows (~512 KiB) so that the frame is read from
    # memory once and the NaN test, the positive test and the gather hit the cache.
    per_strip = max(1, (1 << 19) // (width * 4 * cy))
    strip_rows = per_strip * cy
    nan_buf = np.empty((strip_rows, width), dtype=bool)
    pos_buf = np.empty((strip_rows, width), dtype=bool)
    colnan = np.empty((ncy, width), dtype=_count_dtype(cy))
    # number of positive values per segment = (row, cell column), in the order of the gather
    cnt = np.empty((hc, ncx), dtype=_count_dtype(cx))
    parts: list[np.ndarray] = []
    for c0 in range(0, ncy, per_strip):
        c1 = min(c0 + per_strip, ncy)
        r0, r1 = c0 * cy, c1 * cy
        xs = frame[r0:r1]
        if xs.dtype not in (np.float32, np.float64):  # float16, ints: convert before arithmetic
            xs = xs.astype(np.float32)
        if spec.to_rate is not None:
            xs = np.asarray(spec.to_rate(xs))
            if xs.dtype not in (np.float32, np.float64):
                xs = xs.astype(np.float32)
        xs = np.ascontiguousarray(xs)
        m = nan_buf[: r1 - r0]
        np.isnan(xs, out=m)
        m.view(np.uint8).reshape(c1 - c0, cy, width).sum(
            axis=1, dtype=colnan.dtype, out=colnan[c0:c1]
        )
        p = pos_buf[: r1 - r0]
        np.greater(xs, 0, out=p)  # NaN > 0 is False; negative rates count as dry
        if wc < width:
            p[:, wc:] = False
        p.view(np.uint8)[:, :wc].reshape(r1 - r0, ncx, cx).sum(
            axis=2, dtype=cnt.dtype, out=cnt[r0:r1]
        )
        parts.append(xs[p])
    rec["nan"] = colnan[:, :wc].reshape(ncy, ncx, cx).sum(axis=2).ravel()
    cnt = cnt.ravel()
    vals = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    if vals.size == 0:
        rec["sum"] = 0.0
        rec["max"] = 0.0
        rec["wet"] = 0
        rec["clip"] = 0
        rec["hist"] = 0
        return
    # sum and max per segment (float32 over at most cx values), then per cell
    nz = np.flatnonzero(cnt)
    offs = np.cumsum(cnt, dtype=np.intp)
    offs -= cnt
    offs = offs[nz]
    rec["clip"] = 0
    if spec.clip_max is not None:
        over = vals > spec.clip_max
        if over.any():
            over &= np.isfinite(vals)  # +inf stays: the samplers' pools refuse infinite statistics
            seg_clip = np.zeros(hc * ncx, dtype=np.int64)
            seg_clip[nz] = np.add.reduceat(over, offs, dtype=np.int64)
            rec["clip"] = seg_clip.reshape(ncy, cy, ncx).sum(axis=1).ravel()
            np.copyto(vals, vals.dtype.type(spec.clip_max), where=over)
    seg_base = _segment_base(cy, ncy, ncx)
    # histogram code per value: (cell * N_BINS + bin) * 2 + wet
    lg = np.log10(vals)
    lg *= _BINS_PER_DECADE
    lg += _BIN_OFFSET
    np.clip(lg, 1, N_BINS - 1, out=lg)
    b = lg.astype(np.uint8)  # bins < 128, so 2 * bin + wet fits
    del lg
    b <<= 1
    b += vals > spec.wet_threshold
    code = np.repeat(seg_base, cnt)
    code += b
    del b
    h2 = np.bincount(code, minlength=ncell * N_BINS * 2).reshape(ncell, N_BINS, 2)
    del code
    rec["hist"] = h2.sum(axis=2)
    rec["wet"] = h2[:, :, 1].sum(axis=1)
    seg_sum = np.zeros(hc * ncx, dtype=np.float64)
    seg_sum[nz] = np.add.reduceat(vals, offs)
    rec["sum"] = seg_sum.reshape(ncy, cy, ncx).sum(axis=1).ravel()
    seg_max = np.zeros(hc * ncx, dtype=np.float32)
    seg_max[nz] = np.maximum.reduceat(vals, offs)
    rec["max"] = seg_max.reshape(ncy, cy, ncx).max(axis=1).ravel()


def frame_partials(block: np.ndarray, spec: KernelSpec) -> np.ndarray:
    """Partial statistics per frame and cell of a ``(k, H, W)`` block (dask ``map_blocks`` kernel).

    Rates are taken after ``spec.to_rate`` and capped at ``spec.clip_max``; negative rates count
    as 0 (dry), NaN as missing; ``k`` records of :func:`partials_dtype` come back.

    Examples
    --------
    >>> spec = KernelSpec(4, 4, cy=2, cx=2, ncy=2, ncx=2, wet_threshold=0.1, to_rate=None)
    >>> block = np.zeros((1, 4, 4), dtype=np.float32)
    >>> block[0, 0, :2] = [2.0, 0.0625]  # top-left cell: one wet and one drizzle pixel
    >>> out = frame_partials(block, spec)
    >>> out["sum"][0].tolist(), out["wet"][0].tolist()
    ([2.0625, 0.0, 0.0, 0.0], [1, 0, 0, 0])

    """
    dtype = partials_dtype(spec.ncy * spec.ncx)
    out = np.zeros(block.shape[0], dtype=dtype)
    for i in range(block.shape[0]):
        _frame_into(block[i], spec, out[i])
    return out


def _frame_partials_3d(block: np.ndarray, spec: KernelSpec) -> np.ndarray:
    return frame_partials(block, spec).reshape(-1, 1, 1)


# ================================================================================================
# window reductions (cost independent of the window length)
# ================================================================================================
def _take(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.take(a, idx, axis=axis)


def _non_overlapping(starts: np.ndarray, k: int) -> bool:
    return starts.size < 2 or bool(np.all(np.diff(starts) >= k))


def _reduceat_windows(
    ufunc: np.ufunc, a: np.ndarray, starts: np.ndarray, k: int, axis: int, dtype: Any = None
) -> np.ndarray:
    length = a.shape[axis]
    idx = np.empty(2 * starts.size, dtype=np.intp)
    idx[0::2] = starts
    idx[1::2] = starts + k
    if idx[-1] >= length:
        idx = idx[:-1]
    out = ufunc.reduceat(a, idx, axis=axis, dtype=dtype)
    return _take(out, np.arange(0, 2 * starts.size, 2), axis)


def window_sum(a: np.ndarray, starts: np.ndarray, k: int, axis: int = 0) -> np.ndarray:
    """Sum over ``[s, s + k)`` along ``axis`` for each ``s`` in ``starts`` (int64 / float64).

    Examples
    --------
    >>> window_sum(np.arange(6), [0, 2], 3).tolist()  # windows [0, 3) and [2, 5) overlap
    [3, 9]

    """
    starts = np.asarray(starts, dtype=np.intp)
    acc = np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64
    if starts.size == 0:
        shape = list(a.shape)
        shape[axis] = 0
        return np.zeros(shape, dtype=acc)
    if k == 1:
        return _take(a, starts, axis).astype(acc, copy=False)
    if _non_overlapping(starts, k):
        return _reduceat_windows(np.add, a, starts, k, axis, dtype=acc)
    moved = np.moveaxis(a, axis, 0)
    cs = np.zeros((moved.shape[0] + 1, *moved.shape[1:]), dtype=acc)
    np.cumsum(moved, axis=0, dtype=acc, out=cs[1:])
    return np.moveaxis(cs[starts + k] - cs[starts], 0, axis)


def window_max(a: np.ndarray, starts: np.ndarray, k: int, axis: int = 0) -> np.ndarray:
    """Take maxima over ``[s, s + k)`` along ``axis`` (van Herk / Gil-Werman if overlapping).

    Examples
    --------
    >>> window_max(np.array([3, 1, 4, 1, 5, 9]), [0, 1, 3], 3).tolist()
    [4, 4, 9]

    """
    starts = np.asarray(starts, dtype=np.intp)
    if starts.size == 0:
        shape = list(a.shape)
        shape[axis] = 0
        return np.zeros(shape, dtype=a.dtype)
    if k == 1:
        return _take(a, starts, axis)
    if _non_overlapping(starts, k):
        return _reduceat_windows(np.maximum, a, starts, k, axis)
    moved = np.moveaxis(a, axis, 0)
    length = moved.shape[0]
    nblk = -(-length // k)
    pad = nblk * k - length
    low = np.array(-np.inf if np.issubdtype(a.dtype, np.floating) else np.iinfo(a.dtype).min)
    if pad:
        fill = np.full((pad, *moved.shape[1:]), low, dtype=a.dtype)
        moved = np.concatenate([moved, fill], axis=0)
    blocks = moved.reshape(nblk, k, *moved.shape[1:])
    prefix = np.maximum.accumulate(blocks, axis=1).reshape(nblk * k, *moved.shape[1:])
    suffix = np.maximum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1]
    suffix = suffix.reshape(nblk * k, *moved.shape[1:])
    res = np.maximum(suffix[starts], prefix[starts + k - 1])
    return np.moveaxis(res, 0, axis)


# ================================================================================================
# statistics from histograms
# ================================================================================================
def hist_quantiles(
    hist: np.ndarray, vmax: np.ndarray, quantiles: Sequence[float]
) -> npt.NDArray[np.float64]:
    """Rain-rate quantiles from histograms ``(M, N_BINS)``, at most ``vmax``; NaN for an empty row.

    Examples
    --------
    >>> hist = np.zeros((2, N_BINS), dtype=np.int64)
    >>> hist[0] = np.bincount(hist_bin([0.0, 0.0, 1.0, 2.0, 8.0]), minlength=N_BINS)
    >>> hist_quantiles(hist, np.array([8.0, 0.0]), [0.0, 0.5, 1.0]).round(2).tolist()
    [[0.0, 1.06, 7.97], [nan, nan, nan]]

    """
    hist = np.asarray(hist)
    m = hist.shape[0]
    out = np.full((m, len(quantiles)), np.nan)
    if m == 0 or not quantiles:
        return out
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1]
    rows = np.arange(m)
    vmax = np.asarray(vmax, dtype=np.float64)
    for j, q in enumerate(quantiles):
        rank = q * np.maximum(total - 1, 0)
        b = np.minimum((cum <= rank[:, None]).sum(axis=1), N_BINS - 1)
        count = hist[rows, b]
        below = cum[rows, b] - count
        frac = np.clip((rank - below + 0.5) / np.maximum(count, 1), 0.0, 1.0)
        lo = _HIST_LO[b]
        hi = np.minimum(_HIST_HI[b], vmax)
        hi = np.maximum(hi, lo)
        safe_lo = np.where(lo > 0, lo, 1.0)
        geo = safe_lo * np.exp(frac * np.log(np.where(lo > 0, hi, 1.0) / safe_lo))
        lin = lo + frac * (hi - lo)
        val = np.where(b == 0, 0.0, np.where(b == 1, lin, geo))
        val = np.minimum(val, np.maximum(vmax, 0.0))
        out[:, j] = np.where(total > 0, val, np.nan)
    return out


def importance_weights(scales: Sequence[float]) -> npt.NDArray[np.float64]:
    """Per-bin mean of ``1 - exp(-R / s)``, R log-uniform in each bin; shape ``(N_BINS, ns)``.

    Examples
    --------
    >>> importance_weights([1.0])[hist_bin([0.0, 0.1, 1.0, 10.0]), 0].round(2).tolist()
    [0.0, 0.1, 0.65, 1.0]

    """
    w = np.zeros((N_BINS, len(scales)))
    u = np.linspace(0.0, 1.0, 65)
    for j, s in enumerate(scales):
        w[1, j] = np.mean(1.0 - np.exp(-(u * HIST_LOG_EDGES[0]) / s))
        for b in range(2, N_BINS - 1):
            r = _HIST_LO[b] * (_HIST_HI[b] / _HIST_LO[b]) ** u
            w[b, j] = np.mean(1.0 - np.exp(-r / s))
        w[N_BINS - 1, j] = 1.0 - np.exp(-HIST_LOG_EDGES[-1] / s)
    return w


def hist_importance(hist: np.ndarray, weights: np.ndarray) -> npt.NDArray[np.float64]:
    """DGMR importance ``mean(1 - exp(-R / s))`` per row from histograms ``(M, N_BINS)``.

    Examples
    --------
    >>> hist = np.zeros((2, N_BINS), dtype=np.int64)
    >>> hist[0] = np.bincount(hist_bin([0.0, 0.0, 10.0, 100.0]), minlength=N_BINS)
    >>> hist_importance(hist, importance_weights([1.0])).round(3).tolist()  # empty row: NaN
    [[0.5], [nan]]

    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        res: npt.NDArray[np.float64] = (hist @ weights) / total[:, None]
    res[total == 0] = np.nan
    return res
