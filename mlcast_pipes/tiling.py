"""Tile grid, valid time windows and one-pass per-tile statistics of a radar archive.

Core layer of the offline pass: prepare.py drives it with dask and writes what it yields.
"""

from __future__ import annotations

import functools
import math
import operator
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import DatasetError, MLCastPipesError, ParameterError, ReadError
from mlcast_pipes.indexes.format import (
    format_number,
    importance_column,
    quantile_column,
    sanitize_id,
    short_hash,
    tiling_columns,
)
from mlcast_pipes.reader import _is_transient
from mlcast_pipes.transforms import DEFAULT_CLIP_MAX

__all__ = [
    "DEFAULT_CLIP_MAX",
    "DEFAULT_IMPORTANCE_SCALES",
    "DEFAULT_QUANTILES",
    "HIST_LOG_EDGES",
    "KERNEL_NAME_PREFIX",
    "N_BINS",
    "REJECT_REASONS",
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
    "tile_grid",
    "tiling_id",
    "time_windows",
    "window_max",
    "window_sum",
]

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]
RateFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)
DEFAULT_IMPORTANCE_SCALES: tuple[float, ...] = (1.0,)

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

#: Rejection reasons of candidate windows (code -> name); 0 means valid.
REJECT_REASONS: dict[int, str] = {1: "gap", 2: "step_change", 3: "missing_time"}

#: Name prefix of the per-frame kernel tasks in dask graphs (progress bars count these).
KERNEL_NAME_PREFIX = "mlcast-tile-partials-"
_MAX_CELLS = 40_000
_PARTIALS_BUDGET_BYTES = 384 * 2**20

#: Times a block of frames is read again after the same transient (network-like) error, and the
#: wait before the first retry in seconds (doubled each time). A corrupted chunk fails at once.
COMPUTE_RETRIES = 3
COMPUTE_RETRY_BACKOFF_S = 0.5
_MAX_BLOCK_RETRY_FACTOR = 4  # at most 4 x COMPUTE_RETRIES retries per block in all


def hist_bin(values: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Histogram bin of rain rates (mm/h), as used for the per-tile quantiles.

    Parameters
    ----------
    values
        Rain rates; NaN is not allowed (it is never binned).

    Returns
    -------
    numpy.ndarray
        Bin index per value: 0 for R <= 0, 1 for 0 < R < 0.01, 2..101 for the log bins
        ``[HIST_LOG_EDGES[b-2], HIST_LOG_EDGES[b-1])`` and 102 for R >= 1000.

    Examples
    --------
    >>> hist_bin([0.0, 0.005, 0.01, 1.0, 5000.0]).tolist()
    [0, 1, 2, 42, 102]
    >>> float(HIST_LOG_EDGES[40]), round(float(HIST_LOG_EDGES[41]), 3)  # bin 42: [1, 1.122)
    (1.0, 1.122)

    """
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=np.intp)
    pos = v > 0
    with np.errstate(divide="ignore"):
        lg = np.floor(np.log10(v[pos]) * _BINS_PER_DECADE + _BIN_OFFSET)
    out[pos] = np.clip(lg, 1, N_BINS - 1).astype(np.intp)
    return out


# ================================================================================================
# parameters
# ================================================================================================
def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParameterError(f"{name}={value!r} must be an integer; fix: pass a whole number")
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParameterError(
            f"{name}={value!r} must be an integer; fix: pass a whole number"
        ) from None


def _as_float(name: str, value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={value!r} must be a number; fix: pass a number") from None
    if not math.isfinite(f):
        raise ParameterError(f"{name}={value!r} must be finite; fix: pass a finite number")
    return f


def _as_int_tuple(name: str, value: Any, n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ParameterError(f"{name}={value!r} must be a tuple of {n} integers ({what})")
    items = tuple(_as_int(name, v) for v in value)
    if len(items) != n:
        raise ParameterError(
            f"{name}={value!r} must have {n} entries ({what}); fix: pass e.g. {(128,) * n}"
        )
    bad = [v for v in items if v < 1]
    if bad:
        raise ParameterError(
            f"{name}={value!r} must be positive; fix: use sizes/strides >= 1 ({what})"
        )
    return items


@dataclass(frozen=True)
class TilingParams:
    """Parameters of the tiling step: window length, tile size, strides and statistics.

    Parameters
    ----------
    n_time_window
        Number of consecutive time steps of a tile.
    tile_size
        Tile size ``(y, x)`` in pixels.
    stride
        Step between candidate tiles ``(t, y, x)``; None means ``(n_time_window, *tile_size)``,
        i.e. non-overlapping in time and space.
    max_nan_fraction
        A tile is kept if its NaN fraction is at most this, in [0, 1].
    wet_threshold
        Rain rate (mm/h) above which a pixel counts as wet (``frac_wet``).
    quantiles
        Quantile levels of the per-tile rain rate, in [0, 1] (columns ``p50``, ``p99``, ...).
    importance_scales
        Scales ``s`` (mm/h) of the DGMR importance ``mean(1 - exp(-R / s))`` (columns ``imp_s1``).
    clip_max
        Cap (mm/h) of the rates the statistics see, as ``.normalize()`` clips by default, so
        that clutter (rates of thousands of mm/h) does not decide the bins; the column
        ``clip_count`` counts the capped pixels of each tile. None: no cap.

    Examples
    --------
    >>> params = TilingParams(n_time_window=4, tile_size=(64, 64), stride=(2, 32, 32))
    >>> params.effective_stride, params.cell_size
    ((2, 32, 32), (32, 32))
    >>> params.columns[-3:]
    ['p99', 'p999', 'imp_s1']
    >>> TilingParams(n_time_window=4).effective_stride  # default: no overlap
    (4, 128, 128)
    >>> try:
    ...     TilingParams(max_nan_fraction=1.5)
    ... except ParameterError as exc:
    ...     print(exc)
    max_nan_fraction=1.5 is outside [0, 1]; fix: use e.g. 0.05 (5% NaN allowed)

    """

    n_time_window: int = 12
    tile_size: tuple[int, int] = (128, 128)
    stride: tuple[int, int, int] | None = None
    max_nan_fraction: float = 0.05
    wet_threshold: float = 0.1
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    importance_scales: tuple[float, ...] = DEFAULT_IMPORTANCE_SCALES
    clip_max: float | None = DEFAULT_CLIP_MAX

    def __post_init__(self) -> None:
        n = _as_int("n_time_window", self.n_time_window)
        if n < 1:
            raise ParameterError(
                f"n_time_window={n} must be at least 1; fix: use the number of time steps per tile"
            )
        tile = _as_int_tuple("tile_size", self.tile_size, 2, "(y, x) in pixels")
        stride = (
            None
            if self.stride is None
            else _as_int_tuple("stride", self.stride, 3, "(t, y, x) in steps and pixels")
        )
        mnf = _as_float("max_nan_fraction", self.max_nan_fraction)
        if not 0.0 <= mnf <= 1.0:
            raise ParameterError(
                f"max_nan_fraction={mnf} is outside [0, 1]; fix: use e.g. 0.05 (5% NaN allowed)"
            )
        wet = _as_float("wet_threshold", self.wet_threshold)
        if wet < 0:
            raise ParameterError(
                f"wet_threshold={wet} is negative; fix: use a rain rate in mm/h such as 0.1"
            )
        qs = tuple(_as_float("quantiles", q) for q in self.quantiles)
        if any(not 0.0 <= q <= 1.0 for q in qs):
            raise ParameterError(
                f"quantiles={self.quantiles!r} must lie in [0, 1]; fix: use e.g. (0.5, 0.99)"
            )
        scales = tuple(_as_float("importance_scales", s) for s in self.importance_scales)
        if any(s <= 0 for s in scales):
            raise ParameterError(
                f"importance_scales={self.importance_scales!r} must be positive (mm/h); "
                "fix: use e.g. (1.0,)"
            )
        for name, cols in (
            ("quantiles", [quantile_column(q) for q in qs]),
            ("importance_scales", [importance_column(s) for s in scales]),
        ):
            if len(set(cols)) != len(cols):
                raise ParameterError(
                    f"{name} give duplicate columns {cols}; fix: remove repeated values"
                )
        clip = None if self.clip_max is None else _as_float("clip_max", self.clip_max)
        if clip is not None and clip <= 0:
            raise ParameterError(
                f"clip_max={clip} must be positive (mm/h); fix: use e.g. {DEFAULT_CLIP_MAX} "
                "(the default of .normalize()) or None for no cap"
            )
        if stride == (n, *tile):
            stride = None  # the default written out: one canonical form, so that == holds
        object.__setattr__(self, "n_time_window", n)
        object.__setattr__(self, "tile_size", tile)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "max_nan_fraction", mnf)
        object.__setattr__(self, "wet_threshold", wet)
        object.__setattr__(self, "quantiles", qs)
        object.__setattr__(self, "importance_scales", scales)
        object.__setattr__(self, "clip_max", clip)

    @property
    def effective_stride(self) -> tuple[int, int, int]:
        """Stride ``(t, y, x)`` actually used (``stride`` or the non-overlapping default)."""
        if self.stride is not None:
            return self.stride
        return (self.n_time_window, self.tile_size[0], self.tile_size[1])

    @property
    def cell_size(self) -> tuple[int, int]:
        """Spatial cell ``(y, x)`` on which partial statistics are kept: gcd of tile and stride."""
        _, sy, sx = self.effective_stride
        return (math.gcd(self.tile_size[0], sy), math.gcd(self.tile_size[1], sx))

    @property
    def columns(self) -> list[str]:
        """Columns of the tiling index CSV made with these parameters."""
        return tiling_columns(self.quantiles, self.importance_scales)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (stride resolved), as stored in the index sidecar."""
        return {
            "n_time_window": self.n_time_window,
            "tile_size": list(self.tile_size),
            "stride": list(self.effective_stride),
            "max_nan_fraction": self.max_nan_fraction,
            "wet_threshold": self.wet_threshold,
            "quantiles": list(self.quantiles),
            "importance_scales": list(self.importance_scales),
            "clip_max": self.clip_max,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TilingParams:
        """Rebuild parameters from :meth:`to_dict` output (unknown keys raise ParameterError)."""
        known = {
            "n_time_window",
            "tile_size",
            "stride",
            "max_nan_fraction",
            "wet_threshold",
            "quantiles",
            "importance_scales",
            "clip_max",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(
                f"unknown tiling parameters {unknown}; fix: use only {sorted(known)}"
            )
        kw: dict[str, Any] = dict(data)
        for key in ("tile_size", "stride", "quantiles", "importance_scales"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def validate_for(self, n_times: int, height: int, width: int) -> None:
        """Check the parameters against an archive of ``n_times`` frames of ``height x width``.

        Raises
        ------
        ParameterError
            Tile larger than the domain, or window longer than the archive.

        """
        ty, tx = self.tile_size
        if ty > height or tx > width:
            raise ParameterError(
                f"tile_size ({ty}, {tx}) is larger than the domain (y={height}, x={width}); "
                f"fix: use a tile_size of at most ({height}, {width})"
            )
        if self.n_time_window > n_times:
            raise ParameterError(
                f"n_time_window={self.n_time_window} is larger than the archive ({n_times} time "
                f"steps); fix: use n_time_window <= {n_times} or a longer archive"
            )


def tiling_id(dataset_id: str, params: TilingParams) -> str:
    """Id of a tiling: ``{dataset_id}.{ty}x{tx}.{n}`` plus suffixes for non-default parameters.

    Suffixes: ``.s{t}x{y}x{x}`` (stride), ``.nan{f}`` (max_nan_fraction), ``.wet{r}``
    (wet_threshold), ``.q{hash}`` (quantiles), ``.imp{hash}`` (importance scales), ``.clip{r}``
    or ``.clipnone`` (clip_max). Different
    parameters give different ids; the result is filename-safe.

    Parameters
    ----------
    dataset_id
        Dataset id (sanitised).
    params
        Tiling parameters.

    Returns
    -------
    str
        The tiling id.

    Examples
    --------
    >>> tiling_id("radar", TilingParams(n_time_window=4, tile_size=(64, 64)))
    'radar.64x64.4'
    >>> params = TilingParams(
    ...     n_time_window=4, tile_size=(64, 64), stride=(2, 32, 32), max_nan_fraction=0.1
    ... )
    >>> tiling_id("radar", params)
    'radar.64x64.4.s2x32x32.nan0.1'
    >>> tiling_id("radar", TilingParams(n_time_window=4, tile_size=(64, 64), clip_max=150))
    'radar.64x64.4.clip150'

    """
    default = TilingParams(n_time_window=params.n_time_window, tile_size=params.tile_size)
    ty, tx = params.tile_size
    parts = [sanitize_id(dataset_id, fallback=None), f"{ty}x{tx}", str(params.n_time_window)]
    if params.effective_stride != default.effective_stride:
        st, sy, sx = params.effective_stride
        parts.append(f"s{st}x{sy}x{sx}")
    if params.max_nan_fraction != default.max_nan_fraction:
        parts.append("nan" + format_number(params.max_nan_fraction))
    if params.wet_threshold != default.wet_threshold:
        parts.append("wet" + format_number(params.wet_threshold))
    if params.quantiles != default.quantiles:
        parts.append("q" + short_hash(list(params.quantiles)))
    if params.importance_scales != default.importance_scales:
        parts.append("imp" + short_hash(list(params.importance_scales)))
    if params.clip_max != default.clip_max:
        parts.append(
            "clipnone" if params.clip_max is None else "clip" + format_number(params.clip_max)
        )
    return sanitize_id(".".join(parts))


# ================================================================================================
# time windows
# ================================================================================================
@dataclass(frozen=True)
class TimeWindows:
    """Candidate time windows on the stride lattice and why each is (in)valid.

    Attributes
    ----------
    starts
        Start index (into the time axis) of every candidate window.
    reason
        Per candidate: 0 valid, else a key of :data:`REJECT_REASONS`.
    n_time_window
        Window length in steps.
    regimes
        One dict per time-step regime: ``start`` (ISO time), ``step_s`` (nominal step, seconds,
        None if the regime has a single frame), ``n_frames``.

    Examples
    --------
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(10) * np.timedelta64(5, "m")
    >>> windows = time_windows(np.delete(times, 6), 3, 2)  # 00:30 is absent
    >>> isinstance(windows, TimeWindows), windows.n_valid, windows.valid_starts.tolist()
    (True, 3, [0, 2, 6])
    >>> windows.frames_needed().tolist()  # frame 5 is in no valid window: never read
    [0, 1, 2, 3, 4, 6, 7, 8]
    >>> windows.regimes
    [{'start': '2024-05-01T00:00:00', 'step_s': 300.0, 'n_frames': 9}]

    """

    starts: npt.NDArray[np.intp]
    reason: npt.NDArray[np.int8]
    n_time_window: int
    regimes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid_starts(self) -> npt.NDArray[np.intp]:
        """Start indices of the valid windows."""
        out: npt.NDArray[np.intp] = self.starts[self.reason == 0]
        return out

    @property
    def n_valid(self) -> int:
        """Number of valid windows."""
        return int(np.count_nonzero(self.reason == 0))

    def counts(self) -> dict[str, int]:
        """Count candidate windows per outcome: ``candidates``, ``valid`` and each reason."""
        out = {"candidates": int(self.starts.size), "valid": self.n_valid}
        for code, name in REJECT_REASONS.items():
            out[name] = int(np.count_nonzero(self.reason == code))
        return out

    def frames_needed(self) -> npt.NDArray[np.intp]:
        """Sorted time indices covered by at least one valid window (the only frames read)."""
        starts = self.valid_starts
        if starts.size == 0:
            return np.zeros(0, dtype=np.intp)
        n = self.n_time_window
        length = int(starts[-1]) + n
        mark = np.zeros(length + 1, dtype=np.int32)
        np.add.at(mark, starts, 1)
        np.add.at(mark, starts + n, -1)
        covered: npt.NDArray[np.intp] = np.flatnonzero(np.cumsum(mark[:length]) > 0)
        return covered


def _to_ns(values: Any, what: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.datetime64):
        try:
            arr = arr.astype("datetime64[ns]")
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{what} must be datetime64 values (got dtype {arr.dtype}); fix: decode times "
                "with xarray (decode_times=True) or pass numpy datetime64 values"
            ) from exc
    return arr.astype("datetime64[ns]").astype(np.int64).ravel()


def time_windows(
    times: npt.ArrayLike,
    n_time_window: int,
    t_stride: int,
    *,
    missing_times: npt.ArrayLike | None = None,
    consistent_timestep_start: Any = None,
) -> TimeWindows:
    """Valid windows of each regular segment, and the archive-wide candidates that cross a break.

    The time axis is cut into regular segments: runs of frames in one time-step regime (regimes
    split at ``consistent_timestep_start``), each the regime's nominal step (the smallest
    difference in the regime) after the previous one, with no ``missing_times`` value between
    them. The valid windows of a segment start at its first step and every ``t_stride`` steps
    after, as long as ``n`` frames fit, so a window is never lost because a gap shifted the
    lattice. The windows of the archive-wide lattice ``range(0, T - n + 1, t_stride)`` that cross
    a break are listed too, rejected with their reason (the counts reported as time gaps).

    Parameters
    ----------
    times
        Time coordinate (datetime64), strictly increasing.
    n_time_window
        Window length in steps.
    t_stride
        Step between candidate window starts.
    missing_times
        Timestamps known to be absent from the archive.
    consistent_timestep_start
        Time from which a new regular step holds (global attr of MLCast archives), or None.

    Returns
    -------
    TimeWindows
        Candidates and the reason code of each.

    Raises
    ------
    DatasetError
        If times are not datetime64 or not strictly increasing.

    Examples
    --------
    Ten 5-minute steps with 00:30 absent; windows of 3 steps start every 2 steps:

    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(10) * np.timedelta64(5, "m")
    >>> windows = time_windows(np.delete(times, 6), n_time_window=3, t_stride=2)
    >>> windows.starts.tolist(), windows.reason.tolist()  # the window at 4 crosses the gap
    ([0, 2, 4, 6], [0, 0, 1, 0])
    >>> windows.counts()
    {'candidates': 4, 'valid': 3, 'gap': 1, 'step_change': 0, 'missing_time': 0}

    After a gap the windows restart at the segment's first step (a lattice over the whole axis
    would start at 8 and 12, losing one of the two windows of the second event):

    >>> times = np.concatenate([times[:5], times[:8] + np.timedelta64(1, "D")])
    >>> time_windows(times, n_time_window=4, t_stride=4).valid_starts.tolist()
    [0, 5, 9]

    """
    t = _to_ns(times, "the time coordinate")
    n = int(n_time_window)
    total = t.size
    diffs = np.diff(t)
    if diffs.size and np.any(diffs <= 0):
        i = int(np.flatnonzero(diffs <= 0)[0])
        raise DatasetError(
            f"time coordinate is not strictly increasing (index {i} -> {i + 1}: "
            f"{np.datetime64(int(t[i]), 'ns')} -> {np.datetime64(int(t[i + 1]), 'ns')}); fix: sort "
            "the archive by time and drop duplicate timestamps"
        )
    regime = np.zeros(total, dtype=np.int8)
    if consistent_timestep_start is not None and total:
        cts = _to_ns(np.asarray([consistent_timestep_start]), "consistent_timestep_start")[0]
        regime = (t >= cts).astype(np.int8)
    regimes: list[dict[str, Any]] = []
    nominal = np.zeros(2, dtype=np.int64)
    same = regime[:-1] == regime[1:] if total > 1 else np.zeros(0, dtype=bool)
    for rg in (0, 1):
        members = np.flatnonzero(regime == rg)
        if members.size == 0:
            continue
        d = diffs[same & (regime[:-1] == rg)] if diffs.size else diffs
        step = int(d.min()) if d.size else 0
        nominal[rg] = step
        regimes.append(
            {
                "start": str(np.datetime_as_string(np.datetime64(int(t[members[0]]), "ns"), "s")),
                "step_s": (step / 1e9) if step else None,
                "n_frames": int(members.size),
            }
        )
    mt = np.sort(_to_ns(missing_times if missing_times is not None else [], "missing_times"))
    # a link i -> i + 1 is regular when both frames share a regime, are the regime's nominal step
    # apart and no missing time lies between them; regular segments are runs of regular links
    good = same & (diffs == nominal[regime[:-1]]) if diffs.size else np.zeros(0, dtype=bool)
    if mt.size and diffs.size:
        between = np.searchsorted(mt, t[1:], "left") - np.searchsorted(mt, t[:-1], "right")
        good &= between <= 0
    st = int(t_stride)
    # candidates of the archive-wide lattice that cross a break are kept as rejected (reported)
    lattice = np.arange(0, max(total - n + 1, 0), st, dtype=np.intp)
    reason_l = np.zeros(lattice.size, dtype=np.int8)
    if lattice.size and n > 1:
        bad_cum = np.concatenate([[0], np.cumsum(~good)])
        ends = lattice + n - 1
        has_gap = (bad_cum[ends] - bad_cum[lattice]) > 0
        step_change = regime[lattice] != regime[ends]
        if mt.size:
            inside = np.searchsorted(mt, t[ends], "left") - np.searchsorted(mt, t[lattice], "right")
            reason_l[inside > 0] = 3
        reason_l[has_gap] = 1
        reason_l[step_change] = 2
    # valid candidates: each regular segment's own lattice, from its first step, so that no
    # window that fits in a segment is lost after a gap
    seg_first = np.concatenate([[0], np.flatnonzero(~good) + 1]).astype(np.intp)
    seg_end = np.concatenate([seg_first[1:], [total]]).astype(np.intp)  # exclusive
    valid_parts = (
        [
            np.arange(a, b - n + 1, st, dtype=np.intp)
            for a, b in zip(seg_first, seg_end, strict=True)
        ]
        if total
        else []
    )
    valid = np.concatenate(valid_parts) if valid_parts else np.zeros(0, dtype=np.intp)
    rejected = lattice[reason_l != 0]
    starts = np.concatenate([valid, rejected]).astype(np.intp)
    reason = np.concatenate([np.zeros(valid.size, np.int8), reason_l[reason_l != 0]])
    order = np.argsort(starts, kind="stable")
    starts, reason = starts[order], reason[order]
    return TimeWindows(starts=starts, reason=reason, n_time_window=n, regimes=regimes)


# ================================================================================================
# spatial grid
# ================================================================================================
@dataclass(frozen=True)
class TileGrid:
    """Spatial tile positions and the cell decomposition used for partial statistics.

    Cells of ``cell`` pixels tile the region ``[0, crop_h) x [0, crop_w)`` covered by tiles; each
    tile is a ``k_y x k_x`` block of cells starting at cell ``y_start // cell_y``.

    Examples
    --------
    >>> grid = tile_grid(64, 100, TilingParams(n_time_window=1, tile_size=(32, 32)))
    >>> isinstance(grid, TileGrid), grid.n_tiles, grid.crop  # 4 pixel columns are left out
    (True, 6, (64, 96))
    >>> grid.cell, grid.n_cells, grid.cells_per_tile
    ((32, 32), (2, 3), (1, 1))

    """

    height: int
    width: int
    tile: tuple[int, int]
    stride: tuple[int, int]
    cell: tuple[int, int]
    y_starts: npt.NDArray[np.intp]
    x_starts: npt.NDArray[np.intp]

    @property
    def n_tiles(self) -> int:
        """Number of spatial tile positions."""
        return int(self.y_starts.size * self.x_starts.size)

    @property
    def crop(self) -> tuple[int, int]:
        """Extent ``(h, w)`` of the region covered by tiles."""
        return (
            int(self.y_starts[-1]) + self.tile[0],
            int(self.x_starts[-1]) + self.tile[1],
        )

    @property
    def n_cells(self) -> tuple[int, int]:
        """Number of cells ``(y, x)``."""
        h, w = self.crop
        return (h // self.cell[0], w // self.cell[1])

    @property
    def cells_per_tile(self) -> tuple[int, int]:
        """Cells per tile ``(k_y, k_x)``."""
        return (self.tile[0] // self.cell[0], self.tile[1] // self.cell[1])


def tile_grid(height: int, width: int, params: TilingParams) -> TileGrid:
    """Spatial tile grid ``range(0, H - ty + 1, sy) x range(0, W - tx + 1, sx)``.

    Parameters
    ----------
    height, width
        Domain size in pixels.
    params
        Tiling parameters (validated against the domain here).

    Returns
    -------
    TileGrid
        Tile positions and cell decomposition.

    Raises
    ------
    ParameterError
        If the tile is larger than the domain, or the strides make the cells too small.

    Examples
    --------
    >>> params = TilingParams(n_time_window=2, tile_size=(32, 32), stride=(2, 16, 16))
    >>> grid = tile_grid(100, 150, params)
    >>> grid.y_starts.tolist(), grid.x_starts.tolist()
    ([0, 16, 32, 48, 64], [0, 16, 32, 48, 64, 80, 96, 112])
    >>> grid.n_tiles, grid.cell, grid.cells_per_tile
    (40, (16, 16), (2, 2))

    """
    ty, tx = params.tile_size
    if ty > height or tx > width:
        raise ParameterError(
            f"tile_size ({ty}, {tx}) is larger than the domain (y={height}, x={width}); "
            f"fix: use a tile_size of at most ({height}, {width})"
        )
    _, sy, sx = params.effective_stride
    grid = TileGrid(
        height=int(height),
        width=int(width),
        tile=(ty, tx),
        stride=(sy, sx),
        cell=params.cell_size,
        y_starts=np.arange(0, height - ty + 1, sy, dtype=np.intp),
        x_starts=np.arange(0, width - tx + 1, sx, dtype=np.intp),
    )
    ncy, ncx = grid.n_cells
    if ncy * ncx > _MAX_CELLS:
        cy, cx = grid.cell
        raise ParameterError(
            f"tile_size {params.tile_size} with spatial stride ({sy}, {sx}) share only a "
            f"{cy}x{cx}-pixel common cell, i.e. {ncy * ncx} cells per frame (at most "
            f"{_MAX_CELLS}); "
            "fix: use a spatial stride that divides the tile size or shares a larger common "
            "factor with it (e.g. stride 16, 32 or 64 for 128-pixel tiles)"
        )
    return grid


# ================================================================================================
# per-frame kernel
# ================================================================================================
@dataclass(frozen=True)
class KernelSpec:
    """Geometry and settings of the per-frame kernel (small and picklable for dask workers).

    Cells are ``cy x cx`` pixels, ``ncy x ncx`` of them from the top-left corner; ``to_rate``
    converts native values to mm/h (None: already mm/h); rates above ``clip_max`` are capped
    to it and counted (None: no cap).

    Examples
    --------
    Cells of 2 x 3 pixels on a 4 x 6 frame, values already in mm/h:

    >>> spec = KernelSpec(4, 6, cy=2, cx=3, ncy=2, ncx=2, wet_threshold=0.1, to_rate=None)
    >>> frame_partials(np.ones((1, 4, 6), dtype=np.float32), spec)["sum"].tolist()
    [[6.0, 6.0, 6.0, 6.0]]
    >>> import pickle
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

    Fields: ``nan`` (NaN count), ``sum`` (sum of positive rates), ``max`` (max rate, 0 if none),
    ``wet`` (count of rates > wet_threshold), ``clip`` (count of rates capped at clip_max) per
    cell, and ``hist`` (cells x :data:`N_BINS` counts of positive rates; bin 0 is left at 0 and
    derived later).

    Examples
    --------
    >>> dtype = partials_dtype(4)
    >>> dtype.names
    ('nan', 'sum', 'max', 'wet', 'clip', 'hist')
    >>> dtype["sum"].shape, dtype["hist"].shape == (4, N_BINS)
    ((4,), True)

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
            seg_clip = np.zeros(hc * ncx, dtype=np.int64)
            seg_clip[nz] = np.add.reduceat(over, offs, dtype=np.int64)
            rec["clip"] = seg_clip.reshape(ncy, cy, ncx).sum(axis=1).ravel()
            np.minimum(vals, vals.dtype.type(spec.clip_max), out=vals)
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
    as 0 (dry), NaN as missing.

    Parameters
    ----------
    block
        Frames ``(k, H, W)``.
    spec
        Geometry, wet threshold and rate conversion.

    Returns
    -------
    numpy.ndarray
        Structured array of length ``k`` with dtype :func:`partials_dtype`.

    Examples
    --------
    One 4 x 4 frame cut into four 2 x 2 cells:

    >>> spec = KernelSpec(4, 4, cy=2, cx=2, ncy=2, ncx=2, wet_threshold=0.1, to_rate=None)
    >>> block = np.zeros((1, 4, 4), dtype=np.float32)
    >>> block[0, 0, :2] = [2.0, 0.0625]  # top-left cell: one wet and one drizzle pixel
    >>> block[0, 3, 3] = np.nan  # bottom-right cell: one missing pixel
    >>> out = frame_partials(block, spec)
    >>> out["nan"][0].tolist(), out["sum"][0].tolist(), out["wet"][0].tolist()
    ([0, 0, 0, 1], [2.0625, 0.0, 0.0, 0.0], [1, 0, 0, 0])
    >>> out["max"][0].tolist()
    [2.0, 0.0, 0.0, 0.0]
    >>> out["hist"][0, 0, hist_bin([0.0625, 2.0])].tolist()  # one count in each rate's bin
    [1, 1]

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
    >>> window_sum(np.ones((2, 5), dtype=np.float32), [0, 3], 2, axis=1).tolist()
    [[2.0, 2.0], [2.0, 2.0]]

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
    """Quantiles of rain rate estimated from fixed-bin histograms.

    The rank ``q * (N - 1)`` is located in the cumulative histogram and interpolated inside its bin
    (geometrically in the log bins, linearly in ``(0, 0.01)``); the result never exceeds ``vmax``.

    Parameters
    ----------
    hist
        Counts ``(M, N_BINS)`` including bin 0 (R <= 0).
    vmax
        Maximum rate per row ``(M,)`` (caps the top bin).
    quantiles
        Levels in [0, 1].

    Returns
    -------
    numpy.ndarray
        ``(M, len(quantiles))``; NaN where a row has no valid pixel.

    Examples
    --------
    A row with rates 0, 0, 1, 2 and 8 mm/h, and an empty row:

    >>> rates = np.array([0.0, 0.0, 1.0, 2.0, 8.0])
    >>> hist = np.zeros((2, N_BINS), dtype=np.int64)
    >>> hist[0] = np.bincount(hist_bin(rates), minlength=N_BINS)
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
    >>> weights = importance_weights([1.0, 5.0])
    >>> weights.shape == (N_BINS, 2)
    True
    >>> weights[hist_bin([0.0, 0.1, 1.0, 10.0]), 0].round(2).tolist()  # scale 1 mm/h
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
    Two dry pixels and two heavy-rain pixels weigh about 0.5; an empty row gives NaN:

    >>> hist = np.zeros((2, N_BINS), dtype=np.int64)
    >>> hist[0] = np.bincount(hist_bin([0.0, 0.0, 10.0, 100.0]), minlength=N_BINS)
    >>> hist_importance(hist, importance_weights([1.0])).round(3).tolist()
    [[0.5], [nan]]

    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        res: npt.NDArray[np.float64] = (hist @ weights) / total[:, None]
    res[total == 0] = np.nan
    return res


# ================================================================================================
# the pass
# ================================================================================================
@dataclass
class TileBlock:
    """Kept tiles of one block of the pass, with column arrays and bookkeeping.

    Attributes
    ----------
    columns
        Column name -> array for the kept tiles (all index columns except ``tile_id`` and
        ``time_start``; ``t_start`` holds the time index).
    time_start
        datetime64 start time per kept tile.
    rejected_nan
        Tiles of valid windows dropped for their NaN fraction.
    frames_done, frames_total
        Progress of the pass in frames read.

    Examples
    --------
    >>> data = np.ones((4, 16, 32), dtype=np.float32)
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(4) * np.timedelta64(5, "m")
    >>> params = TilingParams(n_time_window=2, tile_size=(16, 16))
    >>> block = next(iter_tile_statistics(data, times, params, time_windows(times, 2, 2)))
    >>> isinstance(block, TileBlock), block.n_rows, block.frames_done, block.frames_total
    (True, 4, 4, 4)
    >>> np.datetime_as_string(block.time_start, unit="m").tolist()
    ['2024-05-01T00:00', '2024-05-01T00:00', '2024-05-01T00:10', '2024-05-01T00:10']

    """

    columns: dict[str, np.ndarray]
    time_start: np.ndarray
    rejected_nan: int
    frames_done: int
    frames_total: int

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
    """Frames ``idx`` (sorted) of a dask array, as slices of runs of consecutive frames.

    Fancy indexing would add a task per frame that copies it; slices along whole time chunks
    and their concatenation cost no pixel copy.
    """
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
    """Compute per-tile statistics of all valid windows in one streaming pass over the frames.

    Only frames inside valid windows are read, each exactly once, block by block; partial
    statistics per frame and cell are combined over windows with cumulative sums / sliding maxima,
    so the cost does not grow with the window length or the temporal overlap, and memory is bounded
    by the block size (not the archive length).

    Parameters
    ----------
    data
        ``(time, y, x)`` array: dask (any chunking; spatial chunks are merged) or numpy.
    times
        Time coordinate (datetime64) of ``data``.
    params
        Tiling parameters.
    windows
        Candidate windows from :func:`time_windows` (same ``n_time_window``).
    to_rate
        Conversion of native values to mm/h applied to each frame, or None.
    block_frames
        Frames per dask compute (memory vs. scheduling overhead).
    compute
        Function computing a dask array (default ``arr.compute()``; the active dask scheduler or
        distributed client is used).
    source
        The archive's path or URL, named in read errors.
    retries, retry_backoff
        Times a block is read again after the same transient (network) error (at most four
        times as many retries per block in all) and the first wait in seconds (doubled each
        retry); :data:`COMPUTE_RETRIES` and :data:`COMPUTE_RETRY_BACKOFF_S` when None.

    Yields
    ------
    TileBlock
        Kept tiles of the windows ending in each block, in (time, y, x) order.

    Examples
    --------
    Six frames of 64 x 64 pixels with 2 mm/h in the top-left quarter and a NaN patch at the
    bottom right; tiles of 32 x 32 pixels and 3 time steps:

    >>> data = np.zeros((6, 64, 64), dtype=np.float32)
    >>> data[:, :32, :32] = 2.0
    >>> data[:, 40:, 40:] = np.nan
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(6) * np.timedelta64(5, "m")
    >>> params = TilingParams(n_time_window=3, tile_size=(32, 32))
    >>> windows = time_windows(times, params.n_time_window, params.effective_stride[0])
    >>> blocks = list(iter_tile_statistics(data, times, params, windows))
    >>> [(b.n_rows, b.rejected_nan) for b in blocks]  # 2 windows x 4 tiles, 2 with NaN dropped
    [(6, 2)]
    >>> cols = blocks[0].columns
    >>> cols["t_start"].tolist(), cols["y_start"].tolist(), cols["x_start"].tolist()
    ([0, 0, 0, 3, 3, 3], [0, 0, 32, 0, 0, 32], [0, 32, 0, 0, 32, 0])
    >>> cols["mean"].tolist(), cols["frac_wet"].tolist()
    ([2.0, 0.0, 0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0, 0.0, 0.0])

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
                    and _is_transient(exc)
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
        nw = local.size
        nan_w = window_sum(cat["nan"], local, n)
        sum_w = window_sum(cat["sum"], local, n)
        wet_w = window_sum(cat["wet"], local, n)
        clip_w = window_sum(cat["clip"], local, n)
        max_w = window_max(cat["max"], local, n)
        hist_w = window_sum(cat["hist"], local, n)
        carry = cat[keep_from - carry_start :].copy()
        carry_start = keep_from
        del cat, res

        def spatial_sum(a: np.ndarray, nw: int = nw) -> np.ndarray:
            a = a.reshape(nw, ncy, ncx, *a.shape[2:])
            return window_sum(window_sum(a, cell_y0, kty, axis=1), cell_x0, ktx, axis=2)

        def spatial_max(a: np.ndarray, nw: int = nw) -> np.ndarray:
            a = a.reshape(nw, ncy, ncx, *a.shape[2:])
            return window_max(window_max(a, cell_y0, kty, axis=1), cell_x0, ktx, axis=2)

        nan_t = spatial_sum(nan_w).ravel()
        nan_frac = nan_t / npix
        kept = nan_frac <= params.max_nan_fraction
        rejected = int(kept.size - np.count_nonzero(kept))
        rows = np.flatnonzero(kept)
        sum_t = spatial_sum(sum_w).ravel()[rows]
        wet_t = spatial_sum(wet_w).ravel()[rows]
        clip_t = spatial_sum(clip_w).ravel()[rows]
        max_t = spatial_max(max_w).ravel()[rows].astype(np.float64)
        hist_t = spatial_sum(hist_w).reshape(-1, N_BINS)[rows]
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
        yield TileBlock(cols, tvals[t_start], rejected, b1, total)
