"""Synthetic but realistic radar rainfall archives that follow the MLCast dataset structure.

Gives tests, the ``mlcast-pipes demo`` command and the benchmarks data without a download.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
import pathlib
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import DatasetError, ParameterError

__all__ = [
    "DEMO_FORMAT_VERSION",
    "PRESETS",
    "DemoPreset",
    "describe",
    "ensure_demo",
    "generate_demo",
    "quantized_rates",
]

#: Bumped whenever the generated values or layout change; ``ensure_demo`` replaces older stores.
DEMO_FORMAT_VERSION = 1

#: Name of the data variable in the demo archive.
VAR_NAME = "rainfall_rate"

#: Smallest side (pixels) accepted for a demo grid. The MLCast spec asks >= 256; smaller grids are
#: allowed for quick tests of code paths that do not care.
MIN_SIDE = 32

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]

# Marshall-Palmer quantisation: levels of 0.5 dBZ from 5 dBZ (~0.075 mm/h) up to 95 dBZ.
_ZR_A = 200.0
_ZR_B = 1.6
_DBZ_STEP = 0.5
_DBZ_MIN = 5.0
_DBZ_MAX = 95.0
_RATE_CAP = 150.0  # mm/h, cap on meteorological rain before quantisation
_WET_THRESHOLD = 0.1  # mm/h, used by describe()
_PROJ4 = "+proj=laea +lat_0=42.5 +lon_0=12.5 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
_UNIT_AREA = 256 * 256  # pixel area to which per-area densities refer
_BLOCK_BYTES = 64 * 2**20  # aim of bytes per written block
_TIME_UNITS = "minutes since 2000-01-01 00:00:00"


@dataclass(frozen=True)
class DemoPreset:
    """Layout and content knobs of a demo archive.

    Parameters
    ----------
    name : str
        Preset name (also stored in the archive's ``demo_preset`` attribute).
    shape : tuple of int
        Grid size ``(ny, nx)`` in 1 km pixels.
    event_starts : tuple of str
        ISO start time of each rain event (one time axis holds them all).
    event_lengths : tuple of int
        Nominal time slots of each event, present steps plus its missing steps.
    missing_per_event : tuple of int
        Single steps dropped inside each event and listed in ``missing_times``.
    time_step_minutes : int
        Nominal time step.
    first_event_step_minutes : int or None
        If set, the first event uses this (coarser) step and the archive's global attribute
        ``consistent_timestep_start`` marks where the regular ``time_step_minutes`` regime starts.
    radars : tuple of (float, float, float)
        Coverage circles ``(centre_row, centre_col, radius)`` as fractions of
        ``(ny, nx, min(ny, nx))``; pixels outside all circles are NaN.
    cells_per_unit_area : float
        Mean number of live convective cells per 256 x 256 pixels.
    clutter : bool
        Put a few fixed ground-clutter pixels (about 240-7800 mm/h) inside the coverage.
    description : str
        One line for humans.

    Examples
    --------
    >>> preset = DemoPreset(
    ...     name="mini", shape=(64, 64), event_starts=("2022-05-01T12:00",),
    ...     event_lengths=(10,), missing_per_event=(1,),
    ... )
    >>> preset.n_times
    9
    >>> PRESETS["tiny"].n_times
    130
    >>> import xarray as xr
    >>> path = generate_demo("mini.zarr", preset, seed=0)
    >>> ds = xr.open_zarr(path)
    >>> ds["rainfall_rate"].shape, ds["missing_times"].size
    ((9, 64, 64), 1)

    """

    name: str
    shape: tuple[int, int]
    event_starts: tuple[str, ...]
    event_lengths: tuple[int, ...]
    missing_per_event: tuple[int, ...]
    time_step_minutes: int = 5
    first_event_step_minutes: int | None = None
    radars: tuple[tuple[float, float, float], ...] = (
        (0.35, 0.35, 0.36),
        (0.66, 0.68, 0.36),
    )
    cells_per_unit_area: float = 10.0
    clutter: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.event_starts)
        if n == 0 or len(self.event_lengths) != n or len(self.missing_per_event) != n:
            raise ParameterError(
                f"DemoPreset {self.name!r}: event_starts, event_lengths and missing_per_event must "
                f"have the same non-zero length (got {n}, {len(self.event_lengths)}, "
                f"{len(self.missing_per_event)}); give one entry per event"
            )
        if any(length < 1 for length in self.event_lengths):
            raise ParameterError(
                f"DemoPreset {self.name!r}: event_lengths must be positive, "
                f"got {self.event_lengths}"
            )
        if self.time_step_minutes < 1:
            raise ParameterError(
                f"DemoPreset {self.name!r}: time_step_minutes must be >= 1, "
                f"got {self.time_step_minutes}"
            )
        if not self.radars:
            raise ParameterError(f"DemoPreset {self.name!r}: give at least one radar circle")

    @property
    def n_times(self) -> int:
        """Number of present time steps (event slots minus missing steps)."""
        return sum(self.event_lengths) - sum(self.missing_per_event)


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset(
        name="tiny",
        shape=(256, 256),
        event_starts=("2021-06-12T10:00", "2021-07-20T14:00"),
        event_lengths=(72, 60),
        missing_per_event=(1, 1),
        description="256x256, 130 steps of 5 min in 2 events 38 days apart, 2 missing steps",
    ),
    "tiny_stepchange": DemoPreset(
        name="tiny_stepchange",
        shape=(256, 256),
        event_starts=("2021-06-12T10:00", "2021-07-20T14:00"),
        event_lengths=(40, 60),
        missing_per_event=(1, 1),
        first_event_step_minutes=15,
        description=(
            "256x256, a 15-min event then a 5-min event (consistent_timestep_start set), "
            "2 missing steps"
        ),
    ),
    "small": DemoPreset(
        name="small",
        shape=(512, 512),
        event_starts=("2021-05-03T06:00", "2021-06-28T12:00", "2021-09-14T00:00"),
        event_lengths=(240, 216, 156),
        missing_per_event=(2, 2, 1),
        radars=((0.28, 0.30, 0.30), (0.30, 0.74, 0.27), (0.72, 0.50, 0.32)),
        description="512x512, 607 steps of 5 min in 3 events (gaps of 8 weeks and 11 weeks)",
    ),
    "itdpc": DemoPreset(
        name="itdpc",
        shape=(1400, 1200),
        event_starts=("2021-10-04T00:00", "2022-01-17T06:00"),
        event_lengths=(432, 288),
        missing_per_event=(3, 2),
        radars=((0.22, 0.42, 0.33), (0.50, 0.58, 0.34), (0.80, 0.45, 0.33)),
        description="1400x1200 like IT-DPC, 715 steps of 5 min (2.5 days), 2 events 3 months apart",
    ),
}


# --------------------------------------------------------------------------------------------
# quantisation
# --------------------------------------------------------------------------------------------


def quantized_rates() -> _F32:
    """Return every non-zero rain rate (mm/h, float32) the demo can hold, in increasing order.

    The demo quantises like an operational product: Marshall-Palmer reflectivity
    ``Z = 200 R^1.6`` rounded to 0.5 dBZ, from 5 to 95 dBZ. Every finite value of a demo
    archive is 0 or one of these.

    Returns
    -------
    numpy.ndarray
        float32 array of the allowed positive rates.

    Examples
    --------
    >>> levels = quantized_rates()
    >>> bool(levels[0] < 0.1 < levels[-1])
    True

    """
    dbz = np.arange(_DBZ_MIN, _DBZ_MAX + _DBZ_STEP / 2, _DBZ_STEP, dtype=np.float64)
    rate = (10.0 ** (dbz / 10.0) / _ZR_A) ** (1.0 / _ZR_B)
    return rate.astype(np.float32)


_LEVELS = quantized_rates()
_LEVEL_TABLE = np.concatenate([np.zeros(1, np.float32), _LEVELS])  # index 0 = dry
# below this rate (0.3 dBZ under the lowest level) a value is dry whatever the rounding
_RATE_FLOOR = np.float32((10.0 ** ((_DBZ_MIN - 0.3) / 10.0) / _ZR_A) ** (1.0 / _ZR_B))


def _quantize(rate: _F32) -> _F32:
    """Quantise rates (mm/h) to 0.5 dBZ Marshall-Palmer levels, 0 below the lowest level."""
    out = np.zeros(rate.shape, dtype=np.float32)
    flat = rate.ravel()
    idx = np.flatnonzero(flat > _RATE_FLOOR)  # only the wet minority needs logarithms
    dbz = np.float32(10.0 * math.log10(_ZR_A)) + np.float32(10.0 * _ZR_B) * np.log10(flat[idx])
    k = np.rint((dbz - np.float32(_DBZ_MIN)) / np.float32(_DBZ_STEP))
    k = np.clip(k + 1, 0, len(_LEVELS)).astype(np.intp)
    out.ravel()[idx] = _LEVEL_TABLE[k]
    return out


# --------------------------------------------------------------------------------------------
# time axis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    start: np.datetime64  # first slot
    step_min: int
    n_slots: int
    missing_slots: tuple[int, ...]  # slot indices dropped inside the event

    def present_slots(self) -> npt.NDArray[np.int64]:
        keep = np.ones(self.n_slots, dtype=bool)
        keep[list(self.missing_slots)] = False
        return np.flatnonzero(keep).astype(np.int64)

    def slot_times(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.datetime64]:
        return self.start + slots * np.timedelta64(self.step_min, "m")

    @property
    def end(self) -> np.datetime64:
        return self.start + self.n_slots * np.timedelta64(self.step_min, "m")


def _split_counts(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainders)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    parts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - parts), kind="stable")
    for i in order[: total - int(parts.sum())]:
        parts[i] += 1
    return [int(p) for p in parts]


def _layout_events(preset: DemoPreset, n_times: int, seed: int) -> list[_Event]:
    """Place events and their missing steps on the time axis."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7001]))
    present_weights = [
        max(1, length - miss)
        for length, miss in zip(preset.event_lengths, preset.missing_per_event, strict=True)
    ]
    counts = _split_counts(n_times, present_weights)
    events: list[_Event] = []
    previous_end: np.datetime64 | None = None
    for i, (start_iso, n_present, miss) in enumerate(
        zip(preset.event_starts, counts, preset.missing_per_event, strict=True)
    ):
        if n_present == 0:
            continue
        step = preset.time_step_minutes
        if i == 0 and preset.first_event_step_minutes is not None:
            step = preset.first_event_step_minutes
        start = np.datetime64(start_iso, "m").astype("datetime64[ns]")
        if previous_end is not None:
            # keep at least a day between events when n_times stretched an event
            earliest = previous_end + np.timedelta64(1, "D")
            if start < earliest:
                start = earliest.astype("datetime64[h]").astype("datetime64[ns]") + np.timedelta64(
                    1, "h"
                )
        n_missing = min(miss, max(0, (n_present - 1) // 3))
        n_slots = n_present + n_missing
        missing: list[int] = []
        if n_missing:
            # one missing step in each of n_missing equal segments of the interior, never adjacent
            edges = np.linspace(1, n_slots - 1, n_missing + 1)
            for a, b in itertools.pairwise(edges):
                lo = math.ceil(a) + 1
                hi = max(lo, math.floor(b) - 1)
                missing.append(int(rng.integers(lo, hi + 1)))
            missing = sorted(set(min(max(1, m), n_slots - 2) for m in missing))
            n_slots = n_present + len(missing)
        events.append(_Event(start, step, n_slots, tuple(missing)))
        previous_end = events[-1].end
    return events


# --------------------------------------------------------------------------------------------
# rain model
# --------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> _F32:
    """Return a periodic Gaussian random field with unit variance and correlation length ~scale."""
    ny, nx = shape
    noise = rng.standard_normal(shape)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k2 = ky * ky + kx * kx
    spectrum = np.fft.rfft2(noise) * np.exp(-2.0 * (math.pi * scale_px) ** 2 * k2 / 4.0)
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    std = float(field.std())
    field /= std if std > 0 else 1.0
    return field.astype(np.float32)


@dataclass
class _Cells:
    birth: _F64  # minutes since event start
    life: _F64
    y0: _F64  # pixel position at birth
    x0: _F64
    vy: _F64  # pixels per minute
    vx: _F64
    peak: _F64  # mm/h
    sig_a: _F64  # pixels
    sig_b: _F64
    cos_t: _F64
    sin_t: _F64


class _EventModel:
    """The rain of one event as a function of time (minutes since the event start)."""

    def __init__(
        self, seed: int, index: int, shape: tuple[int, int], duration_min: float, density: float
    ) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1000 + index]))
        ny, nx = shape
        self.shape = shape
        area_units = ny * nx / _UNIT_AREA
        speed = rng.uniform(20.0, 55.0) / 60.0  # km/min = px/min
        angle = rng.uniform(0.0, 2.0 * math.pi)
        self.vy = speed * math.sin(angle)
        self.vx = speed * math.cos(angle)
        # stratiform: two fields blended by a slowly turning angle (keeps unit variance),
        # a finer texture field, and a threshold that drifts to vary the rain cover.
        self.field_a = _smooth_field(rng, shape, rng.uniform(45.0, 70.0))
        self.field_b = _smooth_field(rng, shape, rng.uniform(45.0, 70.0))
        self.meso = _smooth_field(rng, shape, 16.0) * np.float32(0.35)
        texture = _smooth_field(rng, shape, 5.0)
        self.turn_period = rng.uniform(240.0, 480.0)
        self.turn_phase = rng.uniform(0.0, 2.0 * math.pi)
        self.thr_mid = rng.uniform(1.0, 1.35)
        self.thr_period = rng.uniform(300.0, 900.0)
        self.thr_phase = rng.uniform(0.0, 2.0 * math.pi)
        self.strat_gain = rng.uniform(1.6, 3.0)
        self.texture_gain = (
            np.exp(np.float32(0.45) * texture) * np.float32(self.strat_gain)
        ).astype(np.float32)

        # convection: storm clusters that drift with the wind; cells are born around them
        pre = 150.0  # minutes of spin-up, so the first frame already has mature cells
        span = duration_min + pre
        n_clusters = max(1, round(1.5 * math.sqrt(area_units)))
        cl_y = rng.uniform(-0.1 * ny, 1.1 * ny, n_clusters) - self.vy * span / 2
        cl_x = rng.uniform(-0.1 * nx, 1.1 * nx, n_clusters) - self.vx * span / 2
        cl_sigma = rng.uniform(25.0, 60.0, n_clusters)
        mean_life = 55.0
        rate_per_min = density * area_units / mean_life
        n_births = int(rng.poisson(rate_per_min * span))
        birth = np.sort(rng.uniform(-pre, duration_min, n_births))
        # activity varies over the event: accept births with a smooth envelope
        envelope = 0.55 + 0.45 * np.sin(2.0 * math.pi * birth / rng.uniform(360.0, 900.0) + 1.0)
        keep = rng.random(n_births) < envelope
        birth = birth[keep]
        n = birth.size
        clustered = rng.random(n) < 0.75
        which = rng.integers(0, n_clusters, n)
        y0 = np.where(
            clustered,
            cl_y[which] + self.vy * (birth + pre) + rng.normal(0.0, 1.0, n) * cl_sigma[which],
            rng.uniform(0.0, ny, n),
        )
        x0 = np.where(
            clustered,
            cl_x[which] + self.vx * (birth + pre) + rng.normal(0.0, 1.0, n) * cl_sigma[which],
            rng.uniform(0.0, nx, n),
        )
        theta = rng.uniform(0.0, math.pi, n)
        sig_a = rng.uniform(2.0, 6.5, n)
        self.cells = _Cells(
            birth=birth,
            life=rng.gamma(4.0, mean_life / 4.0, n) + 15.0,
            y0=y0,
            x0=x0,
            vy=self.vy + rng.normal(0.0, 0.08, n),
            vx=self.vx + rng.normal(0.0, 0.08, n),
            peak=np.minimum(rng.lognormal(math.log(14.0), 0.75, n), 130.0),
            sig_a=sig_a,
            sig_b=sig_a / rng.uniform(1.0, 2.2, n),
            cos_t=np.cos(theta),
            sin_t=np.sin(theta),
        )

    def stratiform(self, t: float) -> _F32:
        ny, nx = self.shape
        phi = 2.0 * math.pi * t / self.turn_period + self.turn_phase
        field = self.field_a * np.float32(math.cos(phi))
        field += np.float32(math.sin(phi)) * self.field_b
        field += self.meso
        thr = self.thr_mid + 0.3 * math.sin(2.0 * math.pi * t / self.thr_period + self.thr_phase)
        field -= np.float32(thr)
        wet = np.flatnonzero(field > 0.0)
        excess = field.ravel()[wet]
        rate = np.zeros(self.shape, dtype=np.float32)
        rate.ravel()[wet] = np.power(excess, np.float32(1.4)) * self.texture_gain.ravel()[wet]
        # the whole pattern drifts with the steering wind (periodic field, integer pixel shifts)
        return np.roll(rate, (round(self.vy * t) % ny, round(self.vx * t) % nx), axis=(0, 1))

    def add_cells(self, out: _F32, t: float) -> None:
        c = self.cells
        ny, nx = self.shape
        age = (t - c.birth) / c.life
        alive = np.flatnonzero((age >= 0.0) & (age < 1.0))
        if alive.size == 0:
            return
        a = age[alive]
        # fast growth, slower decay: peak at about a third of the life
        f = np.sin(math.pi * a**0.6) ** 2
        grow = 0.55 + 0.45 * np.sqrt(f)
        dt = t - c.birth[alive]
        cy = c.y0[alive] + c.vy[alive] * dt
        cx = c.x0[alive] + c.vx[alive] * dt
        sa = c.sig_a[alive] * grow
        sb = c.sig_b[alive] * grow
        amp = c.peak[alive] * f
        reach = np.ceil(3.5 * sa).astype(np.int64)
        for j in range(alive.size):
            r = int(reach[j])
            y_lo = max(0, int(cy[j]) - r)
            y_hi = min(ny, int(cy[j]) + r + 1)
            x_lo = max(0, int(cx[j]) - r)
            x_hi = min(nx, int(cx[j]) + r + 1)
            if y_lo >= y_hi or x_lo >= x_hi or amp[j] < 0.05:
                continue
            i = alive[j]
            dy = (np.arange(y_lo, y_hi, dtype=np.float32) - np.float32(cy[j]))[:, None]
            dx = (np.arange(x_lo, x_hi, dtype=np.float32) - np.float32(cx[j]))[None, :]
            cos_t = np.float32(c.cos_t[i])
            sin_t = np.float32(c.sin_t[i])
            u = (dx * cos_t + dy * sin_t) / np.float32(sa[j])
            v = (dy * cos_t - dx * sin_t) / np.float32(sb[j])
            out[y_lo:y_hi, x_lo:x_hi] += np.float32(amp[j]) * np.exp(
                np.float32(-0.5) * (u * u + v * v)
            )

    def frame(self, t: float) -> _F32:
        rate = self.stratiform(t)
        self.add_cells(rate, t)
        np.minimum(rate, np.float32(_RATE_CAP), out=rate)
        return rate


def _coverage(shape: tuple[int, int], radars: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Boolean mask of pixels inside at least one radar circle."""
    ny, nx = shape
    yy = np.arange(ny, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(nx, dtype=np.float64)[None, :] + 0.5
    side = min(ny, nx)
    mask = np.zeros(shape, dtype=bool)
    for fy, fx, fr in radars:
        mask |= (yy - fy * ny) ** 2 + (xx - fx * nx) ** 2 <= (fr * side) ** 2
    return mask


def _clutter_pixels(
    seed: int, covered: np.ndarray, enabled: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], _F64]:
    """Draw fixed clutter positions (inside the coverage) and their base rates."""
    if not enabled:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
    n = int(min(40, max(2, round(4 * covered.size / _UNIT_AREA))))
    flat = np.flatnonzero(covered.ravel())
    n = min(n, flat.size)
    chosen = np.sort(rng.choice(flat, size=n, replace=False))
    rows, cols = np.divmod(chosen, covered.shape[1])
    base = np.exp(rng.uniform(math.log(300.0), math.log(6500.0), n))
    return rows.astype(np.intp), cols.astype(np.intp), base


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _resolve_preset(preset: str | DemoPreset) -> DemoPreset:
    if isinstance(preset, DemoPreset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ParameterError(
            f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)} "
            "(or pass a DemoPreset)"
        ) from None


def _check_params(
    preset: DemoPreset, seed: int, n_times: int | None, shape: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if n_times is None:
        n_times = preset.n_times
    if isinstance(n_times, bool) or not isinstance(n_times, int | np.integer) or n_times < 1:
        raise ParameterError(f"n_times must be a positive integer, got {n_times!r}")
    if shape is None:
        shape = preset.shape
    try:
        ny, nx = (int(s) for s in shape)
        ok = all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or ny < MIN_SIDE or nx < MIN_SIDE:
        raise ParameterError(
            f"shape must be two integers (ny, nx), each >= {MIN_SIDE}, got {shape!r}; "
            "the MLCast spec asks >= 256, smaller grids are only for quick tests"
        )
    return int(n_times), (ny, nx)


def _looks_like_zarr(path: pathlib.Path) -> bool:
    return any((path / name).exists() for name in (".zmetadata", ".zgroup", "zarr.json"))


def _remove_store(path: pathlib.Path) -> None:
    """Delete an existing zarr store (refusing anything that is not one)."""
    if path.is_dir():
        if not _looks_like_zarr(path) and any(path.iterdir()):
            raise ParameterError(
                f"{path} exists and is not a zarr store; overwrite=True only replaces zarr stores. "
                "Choose another path or remove it yourself"
            )
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        raise ParameterError(
            f"{path} exists and is a file, not a zarr store; choose another path or remove it"
        )


def _lat_lon(x: _F64, y: _F64) -> tuple[_F32, _F32]:
    from pyproj import CRS, Transformer

    transformer = Transformer.from_crs(CRS.from_proj4(_PROJ4), CRS.from_epsg(4326), always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = transformer.transform(xx, yy)
    return np.asarray(lat, dtype=np.float32), np.asarray(lon, dtype=np.float32)


def _skeleton(
    store: pathlib.Path,
    preset: DemoPreset,
    seed: int,
    shape: tuple[int, int],
    times: npt.NDArray[np.datetime64],
    missing: npt.NDArray[np.datetime64],
    step_start: np.datetime64 | None,
    n_events: int,
) -> None:
    """Write coordinates, attributes and the empty data variable (no data chunks)."""
    import dask.array as dask_array
    import numcodecs
    import xarray as xr
    from pyproj import CRS

    ny, nx = shape
    x = (np.arange(nx, dtype=np.float64) - nx / 2 + 0.5) * 1000.0
    y = (ny / 2 - 0.5 - np.arange(ny, dtype=np.float64)) * 1000.0  # decreasing: row 0 is north
    lat, lon = _lat_lon(x, y)
    crs = CRS.from_proj4(_PROJ4)
    wkt = crs.to_wkt()
    crs_attrs: dict[str, Any] = {}
    try:
        crs_attrs.update({k: v for k, v in crs.to_cf().items() if k != "crs_wkt"})
    except Exception:  # pragma: no cover - pyproj without CF support
        crs_attrs["grid_mapping_name"] = "lambert_azimuthal_equal_area"
    crs_attrs.update({"crs_wkt": wkt, "spatial_ref": wkt})

    try:
        from importlib.metadata import version

        lib_version = version("mlcast-pipes")
    except Exception:
        lib_version = "0.0.0"
    global_attrs: dict[str, Any] = {
        "title": f"mlcast-pipes synthetic radar rainfall demo ({preset.name})",
        "summary": (
            "Synthetic radar composite: moving, growing and decaying convective cells over a "
            "drifting stratiform field, quantised to 0.5 dBZ (Z=200R^1.6), NaN outside radar "
            "coverage" + (", with fixed ground-clutter pixels" if preset.clutter else "")
        ),
        "license": "CC-BY-4.0",
        "Conventions": "CF-1.10",
        "mlcast_dataset_identifier": _identifier(preset, seed, len(times), shape),
        "mlcast_dataset_version": f"{DEMO_FORMAT_VERSION}.0.0",
        "mlcast_created_on": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mlcast_created_by": "mlcast_pipes.demo (synthetic data, no real observations)",
        "mlcast_created_with": f"mlcast-pipes {lib_version}",
        "demo_preset": preset.name,
        "demo_seed": int(seed),
        "demo_shape": [ny, nx],
        "demo_n_times": len(times),
        "demo_n_events": n_events,
        "demo_clutter": bool(preset.clutter),
        "demo_format_version": DEMO_FORMAT_VERSION,
    }
    if step_start is not None:
        global_attrs["consistent_timestep_start"] = str(np.datetime_as_string(step_start, unit="s"))

    data = dask_array.zeros((len(times), ny, nx), chunks=(1, ny, nx), dtype=np.float32)
    ds = xr.Dataset(
        data_vars={
            VAR_NAME: (
                ("time", "y", "x"),
                data,
                {
                    "standard_name": "rainfall_flux",
                    "long_name": "rainfall rate (synthetic radar composite)",
                    "units": "mm h-1",
                    "grid_mapping": "crs",
                },
            ),
            "crs": ((), np.int32(0), crs_attrs),
            "missing_times": (
                ("missing_time",),
                missing,
                {"long_name": "nominal time steps absent from the time axis"},
            ),
        },
        coords={
            "time": ("time", times, {"standard_name": "time", "axis": "T", "long_name": "time"}),
            "y": (
                "y",
                y,
                {
                    "standard_name": "projection_y_coordinate",
                    "long_name": "y coordinate of projection",
                    "units": "m",
                    "axis": "Y",
                },
            ),
            "x": (
                "x",
                x,
                {
                    "standard_name": "projection_x_coordinate",
                    "long_name": "x coordinate of projection",
                    "units": "m",
                    "axis": "X",
                },
            ),
            "lat": (
                ("y", "x"),
                lat,
                {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
            ),
            "lon": (
                ("y", "x"),
                lon,
                {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
            ),
        },
        attrs=global_attrs,
    )
    zstd = numcodecs.Zstd(level=3)
    time_enc = {"units": _TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int64"}
    encoding: dict[str, dict[str, Any]] = {
        VAR_NAME: {"chunks": (1, ny, nx), "compressors": (zstd,), "dtype": "float32"},
        "lat": {"chunks": (ny, nx), "compressors": (zstd,)},
        "lon": {"chunks": (ny, nx), "compressors": (zstd,)},
        "time": dict(time_enc),
        "missing_times": dict(time_enc),
    }
    ds.to_zarr(store, mode="w-", zarr_format=2, consolidated=True, compute=False, encoding=encoding)


def _identifier(preset: DemoPreset, seed: int, n_times: int, shape: tuple[int, int]) -> str:
    """Return the archive's ``mlcast_dataset_identifier``, distinct for each content.

    Readers derive dataset ids (and so index-file names) from it, so two demos with other
    presets, seeds or sizes must not share one.
    """
    ident = f"zz-mlcastpipes-demo-{preset.name}-seed{seed}"
    if n_times != preset.n_times or tuple(shape) != tuple(preset.shape):
        ident += f"-{n_times}x{shape[0]}x{shape[1]}"
    return ident


def _frame_plan(
    events: list[_Event],
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.int64], _F64, npt.NDArray[np.datetime64]]:
    """Return times, event index and minutes into the event of each frame, and missing times."""
    times: list[npt.NDArray[np.datetime64]] = []
    which: list[npt.NDArray[np.int64]] = []
    minutes: list[_F64] = []
    missing: list[npt.NDArray[np.datetime64]] = []
    for i, ev in enumerate(events):
        slots = ev.present_slots()
        times.append(ev.slot_times(slots))
        which.append(np.full(slots.size, i, dtype=np.int64))
        minutes.append(slots.astype(np.float64) * ev.step_min)
        missing.append(ev.slot_times(np.asarray(ev.missing_slots, dtype=np.int64)))
    return (
        np.concatenate(times).astype("datetime64[ns]"),
        np.concatenate(which),
        np.concatenate(minutes),
        np.concatenate(missing).astype("datetime64[ns]"),
    )


def _write_store(
    store: pathlib.Path,
    preset: DemoPreset,
    seed: int,
    n_times: int,
    shape: tuple[int, int],
    progress: bool,
) -> None:
    """Generate the archive into ``store`` (which must not exist)."""
    import zarr

    events = _layout_events(preset, n_times, seed)
    times, which, minutes, missing = _frame_plan(events)
    step_start: np.datetime64 | None = None
    if preset.first_event_step_minutes is not None and len(events) > 1:
        step_start = events[1].start
    _skeleton(store, preset, seed, shape, times, missing, step_start, len(events))

    ny, nx = shape
    covered = _coverage(shape, preset.radars)
    outside = ~covered
    c_rows, c_cols, c_base = _clutter_pixels(seed, covered, preset.clutter)
    block = int(min(64, max(8, _BLOCK_BYTES // (ny * nx * 4))))
    array = zarr.open_array(str(store / VAR_NAME), mode="r+", zarr_format=2)
    model: _EventModel | None = None
    model_index = -1
    total = len(times)
    buffer = np.empty((block, ny, nx), dtype=np.float32)
    from mlcast_pipes.progress import progress_bar

    bar = progress_bar(total, f"demo archive {preset.name}", enabled=progress)
    for start in range(0, total, block):
        stop = min(total, start + block)
        out = buffer[: stop - start]
        for k in range(start, stop):
            ev = int(which[k])
            if ev != model_index:
                model = None  # free the previous event's fields first
                event = events[ev]
                duration = float(event.n_slots * event.step_min)
                model = _EventModel(seed, ev, shape, duration, preset.cells_per_unit_area)
                model_index = ev
            assert model is not None
            frame = _quantize(model.frame(float(minutes[k])))
            if c_rows.size:
                rng = np.random.default_rng(np.random.SeedSequence([seed, 9, k]))
                flicker = rng.uniform(0.8, 1.2, c_rows.size)
                frame[c_rows, c_cols] = _quantize((c_base * flicker).astype(np.float32))
            frame[outside] = np.nan
            out[k - start] = frame
        array[start:stop] = out
        bar.update(stop - start)
    bar.close()


def generate_demo(
    path: str | os.PathLike[str],
    preset: str | DemoPreset = "small",
    seed: int = 0,
    *,
    n_times: int | None = None,
    shape: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pathlib.Path:
    """Write a synthetic MLCast radar archive (zarr format 2, consolidated) to ``path``.

    The store is written to a temporary folder beside ``path`` and renamed into place at the end,
    so ``path`` never holds a half-written archive.

    Parameters
    ----------
    path : str or os.PathLike
        Where the zarr store goes (a folder, conventionally ending in ``.zarr``).
    preset : str or DemoPreset
        One of :data:`PRESETS` (``"tiny"``, ``"tiny_stepchange"``, ``"small"``, ``"itdpc"``) or a
        custom :class:`DemoPreset`.
    seed : int
        Non-negative seed; the same seed, preset and sizes give byte-identical values.
    n_times : int, optional
        Number of time steps to write instead of the preset's; they are spread over the preset's
        events in proportion (events that would be empty are dropped, missing steps are only kept
        in events of at least 4 steps).
    shape : tuple of int, optional
        Grid ``(ny, nx)`` instead of the preset's; each side >= 32 (the MLCast spec asks >= 256).
        Radar circles scale with the grid, rain structures keep their size in km.
    overwrite : bool
        Replace an existing zarr store at ``path``. Without it an existing path is an error.
    progress : bool
        Show a progress bar on stderr, once generating has taken two seconds.

    Returns
    -------
    pathlib.Path
        The path of the written store.

    Raises
    ------
    ParameterError
        Unknown preset, bad sizes or seed, or ``path`` exists and ``overwrite`` is False.

    Notes
    -----
    The store holds ``rainfall_rate`` (float32, dims ``(time, y, x)``, one zstd-compressed chunk
    per time step, attributes ``standard_name="rainfall_flux"``, ``units="mm h-1"``,
    ``grid_mapping="crs"``) on a 1 km Lambert azimuthal equal-area grid centred on Italy (``y``
    decreasing, so row 0 is north), 2-D ``lat``/``lon``, a scalar ``crs`` variable (``crs_wkt``,
    ``spatial_ref``) and ``missing_times`` (dim ``missing_time``). The time axis holds a few rain
    events separated by gaps of weeks to months; inside the events a few single steps are absent
    and listed in ``missing_times``; the gaps between events are not listed, as in real event
    archives.

    The rain is built from convective cells (rotated elliptic Gaussians born around drifting storm
    clusters, moving with the event's steering wind plus a spread of their own, growing and
    decaying over a lifecycle, with lognormal peak rates) over a smooth stratiform field
    (FFT-filtered noise that drifts with the wind and evolves slowly, thresholded so that most
    pixels are dry). Rates are capped at 150 mm/h, then quantised like an operational product:
    converted to reflectivity with Marshall-Palmer (Z = 200 R^1.6), rounded to 0.5 dBZ, converted
    back (:func:`quantized_rates` lists the levels), and set to exactly 0 below 5 dBZ (about
    0.075 mm/h). Pixels outside a composite of radar-coverage circles are NaN in every frame. When
    ``DemoPreset.clutter`` is on (all built-in presets) a few fixed pixels carry ground clutter of
    about 240-7800 mm/h in every frame, as real composites do; statistics that should ignore it
    need a clutter cap (e.g. 200 mm/h).

    Frames are generated and written in blocks of 8 to 64 frames (about 64 MiB at most for frames
    up to 8 MiB), so memory does not grow with the number of time steps.

    Examples
    --------
    A short, small-grid variant of the ``tiny`` preset:

    >>> path = generate_demo("demo.zarr", "tiny", seed=1, n_times=6, shape=(64, 64))
    >>> path.name
    'demo.zarr'
    >>> import xarray as xr
    >>> da = xr.open_zarr(path)["rainfall_rate"]
    >>> da.dims, da.shape, da.attrs["units"]
    (('time', 'y', 'x'), (6, 64, 64), 'mm h-1')

    Every finite value is 0 or one of the quantised rates:

    >>> values = da.values[np.isfinite(da.values)]
    >>> bool(np.isin(values[values > 0], quantized_rates()).all())
    True

    """
    resolved = _resolve_preset(preset)
    n, grid = _check_params(resolved, seed, n_times, shape)
    target = pathlib.Path(path)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ParameterError(
            f"{target} already exists; pass overwrite=True to replace it, use ensure_demo() to "
            "reuse it, or choose another path"
        )
    tmp = _temp_beside(target)
    try:
        _write_store(tmp, resolved, int(seed), n, grid, progress)
        if target.exists() or target.is_symlink():
            _remove_store(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _temp_beside(target: pathlib.Path) -> pathlib.Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(
            f"cannot create the folder {parent} for the demo archive ({exc}); "
            "choose a writable path"
        ) from exc
    return parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _read_demo_attrs(path: pathlib.Path) -> dict[str, Any] | None:
    """Global attributes of a complete consolidated store, or None when it is not one."""
    import json

    meta = path / ".zmetadata"
    try:
        with open(meta, encoding="utf-8") as fh:
            consolidated = json.load(fh)
        attrs = consolidated["metadata"][".zattrs"]
        if f"{VAR_NAME}/.zarray" not in consolidated["metadata"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(attrs) if isinstance(attrs, dict) else None


def _matches(attrs: dict[str, Any] | None, preset: DemoPreset, seed: int) -> bool:
    if attrs is None:
        return False
    return (
        attrs.get("demo_preset") == preset.name
        and attrs.get("demo_seed") == seed
        and attrs.get("demo_format_version") == DEMO_FORMAT_VERSION
        and list(attrs.get("demo_shape", [])) == list(preset.shape)
        and attrs.get("demo_n_times") == preset.n_times
    )


def ensure_demo(
    path: str | os.PathLike[str],
    preset: str | DemoPreset = "small",
    seed: int = 0,
    *,
    progress: bool = True,
) -> pathlib.Path:
    """Return a demo archive at ``path``, generating it only when absent (safe across processes).

    The archive is generated into a temporary folder beside ``path`` and renamed into place
    atomically. When several processes or threads call this at once, each may generate a copy;
    the first rename wins and the others discard theirs. A complete store made with the same
    preset, seed and demo format version is reused; one made by an older demo version is replaced.

    Parameters
    ----------
    path : str or os.PathLike
        Where the zarr store lives.
    preset : str or DemoPreset
        Preset name from :data:`PRESETS`, or a custom :class:`DemoPreset`.
    seed : int
        Non-negative seed.
    progress : bool
        Show a progress bar on stderr while generating, once that has taken two seconds.

    Returns
    -------
    pathlib.Path
        ``path`` as a :class:`pathlib.Path`.

    Raises
    ------
    ParameterError
        Unknown preset or bad seed, or ``path`` holds something else (another preset or seed, a
        non-demo store, a file).

    Examples
    --------
    The first call generates the archive, later calls reuse it:

    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> path.name
    'tiny.zarr'
    >>> ensure_demo("tiny.zarr", preset="tiny", seed=0) == path
    True

    A store made with other settings is never overwritten:

    >>> ensure_demo("tiny.zarr", preset="tiny", seed=1)
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.ParameterError: tiny.zarr holds the demo preset 'tiny' with seed 0, not
    'tiny' with seed 1; ...

    """
    resolved = _resolve_preset(preset)
    _check_params(resolved, seed, None, None)
    seed = int(seed)
    target = pathlib.Path(path)
    attrs = _read_demo_attrs(target)
    if _matches(attrs, resolved, seed):
        return target
    if target.exists() or target.is_symlink():
        _raise_if_foreign(target, attrs, resolved, seed)
    tmp = _temp_beside(target)
    try:
        _write_store(tmp, resolved, seed, resolved.n_times, resolved.shape, progress)
        for _ in range(10):
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if not (target.exists() or target.is_symlink()):
                    raise
            # someone else got there first (or an outdated store is in the way)
            attrs = _read_demo_attrs(target)
            if _matches(attrs, resolved, seed):
                return target
            _raise_if_foreign(target, attrs, resolved, seed)
            _move_aside_and_delete(target)
        raise DatasetError(
            f"could not place the demo archive at {target}: it kept being replaced by other "
            "processes; remove it and call ensure_demo() again"
        )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_if_foreign(
    target: pathlib.Path, attrs: dict[str, Any] | None, preset: DemoPreset, seed: int
) -> None:
    """Raise unless ``target`` is an outdated (or half-written) demo store we may replace."""
    if attrs is not None and "demo_preset" in attrs:
        same = attrs.get("demo_preset") == preset.name and attrs.get("demo_seed") == seed
        if same:
            return  # an older demo format, or other sizes of the same preset: replace it
        raise ParameterError(
            f"{target} holds the demo preset {attrs.get('demo_preset')!r} with seed "
            f"{attrs.get('demo_seed')!r}, not {preset.name!r} with seed {seed}; use another path "
            "(e.g. one named after the preset and seed) or delete it"
        )
    if target.is_dir() and not any(target.iterdir()):
        return
    raise ParameterError(
        f"{target} exists but is not a demo archive made by mlcast_pipes.demo; choose another "
        "path or delete it"
    )


def _move_aside_and_delete(target: pathlib.Path) -> None:
    aside = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return  # another process moved it already
    shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def _fmt_minutes(delta: np.timedelta64) -> str:
    seconds = float(delta / np.timedelta64(1, "s"))
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600 * 2:
        return f"{seconds / 3600:.1f} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _time_structure(
    times: npt.NDArray[np.datetime64],
    missing: npt.NDArray[np.datetime64],
    step_start: np.datetime64 | None,
) -> tuple[list[np.timedelta64], int, np.timedelta64 | None]:
    """Return the nominal step of each regime, the number of gaps between events, the longest."""
    if times.size < 2:
        return [], 0, None
    diffs = np.diff(times)
    regimes = [np.ones(diffs.size, dtype=bool)]
    if step_start is not None:
        before = times[1:] <= step_start
        regimes = [before, ~before]
    steps: list[np.timedelta64] = []
    n_gaps = 0
    longest: np.timedelta64 | None = None
    missing_set = set(missing.astype("datetime64[ns]").astype(np.int64).tolist())
    for sel in regimes:
        if not sel.any():
            continue
        d = diffs[sel]
        step = d.min()
        steps.append(step)
        for i in np.flatnonzero(sel & (diffs > step)):
            # a hole of whole steps entirely listed in missing_times is not a gap
            slots = np.arange(times[i] + step, times[i + 1], step).astype("datetime64[ns]")
            if slots.size and all(int(s) in missing_set for s in slots.astype(np.int64)):
                continue
            n_gaps += 1
            if longest is None or diffs[i] > longest:
                longest = diffs[i]
    return steps, n_gaps, longest


def describe(path: str | os.PathLike[str], max_frames: int = 64) -> str:
    """Summarise a (demo or real) MLCast archive in a few lines for humans.

    Parameters
    ----------
    path : str or os.PathLike
        A zarr store (local path or fsspec URL).
    max_frames : int
        Pixel statistics are computed from at most this many evenly spaced frames.

    Returns
    -------
    str
        Shape, time range, step, events/gaps, missing times, NaN fraction, wet fraction, max.

    Raises
    ------
    DatasetError
        The store cannot be opened or has no ``(time, y, x)`` variable.

    Examples
    --------
    >>> path = generate_demo("describe.zarr", "tiny", seed=0, n_times=12, shape=(64, 64))
    >>> print(describe(path))
    archive describe.zarr (demo preset tiny, seed 0)
      variable rainfall_rate [mm h-1] float32, 12 x 64 x 64 (time, y, x), chunks (1, 64, 64)
      time 2021-06-12T10:00 -> ..., step 5 min, 2 events, 1 gap, longest ... days, ...
      pixels NaN ...%, wet (> 0.1 mm h-1) ...% of valid, max ... mm h-1 (from 12 of 12 frames)

    """
    import xarray as xr

    try:
        ds = xr.open_zarr(os.fspath(path), chunks=None)
    except Exception as exc:
        raise DatasetError(
            f"cannot open {path} as a zarr store ({type(exc).__name__}: {exc}); check the path, "
            "or generate the demo with mlcast_pipes.demo.generate_demo()"
        ) from exc
    candidates = [name for name, v in ds.data_vars.items() if v.dims == ("time", "y", "x")]
    if not candidates:
        raise DatasetError(
            f"{path} has no variable with dims (time, y, x); variables there: "
            f"{sorted(str(k) for k in ds.data_vars)}"
        )
    name = VAR_NAME if VAR_NAME in candidates else str(candidates[0])
    da = ds[name]
    nt, ny, nx = da.shape
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    missing = (
        np.asarray(ds["missing_times"].values).astype("datetime64[ns]")
        if "missing_times" in ds
        else np.zeros(0, dtype="datetime64[ns]")
    )
    step_attr = ds.attrs.get("consistent_timestep_start")
    step_start = np.datetime64(str(step_attr).rstrip("Z"), "ns") if step_attr else None
    steps, n_gaps, longest = _time_structure(times, missing, step_start)
    chunks = da.encoding.get("chunks")
    units = da.attrs.get("units", "?")
    a = ds.attrs
    head = f"archive {os.fspath(path)}"
    if "demo_preset" in a:
        head += f" (demo preset {a['demo_preset']}, seed {a.get('demo_seed')})"
    elif "mlcast_dataset_identifier" in a:
        head += f" ({a['mlcast_dataset_identifier']})"
    lines = [
        head,
        f"  variable {name} [{units}] {da.dtype}, {nt} x {ny} x {nx} (time, y, x), chunks {chunks}",
    ]
    if nt:
        step_txt = " then ".join(_fmt_minutes(s) for s in steps) or "-"
        if step_start is not None:
            step_txt += f" (from {np.datetime_as_string(step_start, unit='m')})"
        gap_txt = f", longest {_fmt_minutes(longest)}" if longest is not None else ""
        lines.append(
            f"  time {np.datetime_as_string(times[0], unit='m')} -> "
            f"{np.datetime_as_string(times[-1], unit='m')}, step {step_txt}, "
            f"{n_gaps + 1} event{_s(n_gaps + 1)}, {n_gaps} gap{_s(n_gaps)}{gap_txt}, "
            f"{missing.size} missing time{_s(missing.size)}"
        )
        pick = np.unique(np.linspace(0, nt - 1, min(nt, max(1, max_frames))).round().astype(int))
        n_nan = n_valid = n_wet = 0
        vmax = -np.inf
        for i in pick:
            frame = np.asarray(da[int(i)].values, dtype=np.float32)
            valid = np.isfinite(frame)
            n_nan += int(frame.size - valid.sum())
            n_valid += int(valid.sum())
            vals = frame[valid]
            n_wet += int((vals > _WET_THRESHOLD).sum())
            if vals.size:
                vmax = max(vmax, float(vals.max()))
        total = pick.size * ny * nx
        wet = n_wet / n_valid if n_valid else float("nan")
        lines.append(
            f"  pixels NaN {n_nan / total:.1%}, wet (> {_WET_THRESHOLD} {units}) {wet:.1%} of "
            f"valid, max {vmax:.1f} {units} (from {pick.size} of {nt} frames)"
        )
    return "\n".join(lines)


def _s(n: int) -> str:
    return "" if n == 1 else "s"
