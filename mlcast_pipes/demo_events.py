"""The rain model of the demo archives: presets, moving convective cells, stratiform fields.

Pure numpy; :mod:`mlcast_pipes.demo` writes its frames to a zarr store.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import ParameterError

__all__ = ["PRESETS", "DemoPreset", "quantized_rates"]


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
_UNIT_AREA = 256 * 256  # pixel area to which per-area densities refer


@dataclass(frozen=True)
class DemoPreset:
    """Layout and content knobs of a demo archive.

    ``shape`` is ``(ny, nx)`` in 1 km pixels; each event has an ISO start, a length in time slots
    and a number of single missing steps (listed in ``missing_times``); ``first_event_step_minutes``
    gives the first event a coarser step (marked by ``consistent_timestep_start``); ``radars`` are
    coverage circles ``(row, col, radius)`` as fractions of the grid (NaN outside);
    ``cells_per_unit_area`` counts convective cells per 256 x 256 pixels; ``clutter`` adds fixed
    ground-clutter pixels of about 240-7800 mm/h.

    Examples
    --------
    >>> preset = DemoPreset(
    ...     name="mini", shape=(64, 64), event_starts=("2022-05-01T12:00",),
    ...     event_lengths=(10,), missing_per_event=(1,),
    ... )
    >>> preset.n_times, PRESETS["tiny"].n_times
    (9, 130)

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


def quantized_rates() -> _F32:
    """Every non-zero rain rate (mm/h, float32, increasing) a demo archive can hold.

    Marshall-Palmer ``Z = 200 R^1.6`` rounded to 0.5 dBZ, 5 to 95 dBZ, as in operational products.

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
