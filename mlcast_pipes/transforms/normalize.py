"""Normalization: native values to model input and back, NaN fill, clipping, mean/std fits.

:func:`make_normalizer` builds the :class:`Normalizer` used by ``.normalize()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import DatasetError, ParameterError
from mlcast_pipes.transforms.rates import (
    DEFAULT_DBZ_FLOOR,
    _as_float,
    _step_hours,
    _UnitConversion,
    from_rain_rate_fn,
    rate_to_dbz,
    to_rain_rate_fn,
)
from mlcast_pipes.transforms.registry import Transform, _finite, available_transforms, get_transform
from mlcast_pipes.transforms.units import Kind, TimeStep, variable_kind

__all__ = [
    "DEFAULT_CLIP_MAX",
    "MeanStdAccumulator",
    "Normalizer",
    "denormalize",
    "fit_mean_std",
    "make_normalizer",
]


DEFAULT_CLIP_MAX = 300.0
"""Default clutter clip in mm/h: larger rates are set to this value before scaling."""


@dataclass
class MeanStdAccumulator:
    """Streaming, NaN-aware mean and variance; parts combine with :meth:`merge` (Chan's formula).

    ``count`` counts the non-NaN values; ``m2`` is their sum of squared deviations.

    Examples
    --------
    >>> acc = MeanStdAccumulator().update([1.0, 2.0]).merge(MeanStdAccumulator().update([3.0]))
    >>> acc.count, acc.mean, round(acc.std(), 6)
    (3, 2.0, 0.816497)

    """

    count: int = 0
    mean: float = math.nan
    m2: float = 0.0

    def update(self, values: npt.ArrayLike) -> MeanStdAccumulator:
        """Add the non-NaN values of an array (any shape); returns ``self``."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[~np.isnan(arr)]
        n = int(arr.size)
        if n:
            mean = float(arr.mean())
            m2 = float(np.square(arr - mean).sum())
            self.merge(MeanStdAccumulator(n, mean, m2))
        return self

    def merge(self, other: MeanStdAccumulator) -> MeanStdAccumulator:
        """Combine with another accumulator (Chan et al.); returns ``self``."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.count = n
        return self

    def std(self, ddof: int = 0) -> float:
        """Return the standard deviation (``ddof=0``: population, as :func:`numpy.nanstd`)."""
        if self.count - ddof <= 0:
            return math.nan
        return math.sqrt(max(self.m2, 0.0) / (self.count - ddof))


def fit_mean_std(values_iter: Iterable[npt.ArrayLike], *, ddof: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of all non-NaN values of a stream of arrays, without holding them all.

    Raises ParameterError if the stream has no non-NaN value.

    Examples
    --------
    >>> fit_mean_std([np.array([1.0, np.nan]), np.array([3.0])])
    (2.0, 1.0)

    """
    acc = MeanStdAccumulator()
    for chunk in values_iter:
        acc.update(chunk)
    if acc.count - ddof <= 0:
        raise ParameterError(
            f"cannot fit mean/std: only {acc.count} non-NaN values were seen; pass chunks "
            "that contain data (check the time range and the NaN coverage of the archive)"
        )
    return float(acc.mean), acc.std(ddof)


@dataclass(frozen=True)
class Normalizer:
    """Unit conversion, clutter clipping, a transform and a NaN policy for one archive.

    Built by :func:`make_normalizer`. Calling it maps native values (NaN = no data) to float32
    model inputs (and a validity mask when ``mask``); :meth:`inverse` maps them back. Picklable.

    Examples
    --------
    >>> norm = make_normalizer("fitted", standard_name="rainfall_flux", units="mm h-1",
    ...                        mean=1.0, std=2.0, mask=True)
    >>> values, valid = norm(np.array([np.nan, 5.0, 500.0]))
    >>> values, valid
    (array([ -0.5,   2. , 149.5], dtype=float32), array([False,  True,  True]))
    >>> norm.inverse(values)
    array([  0.,   5., 300.], dtype=float32)

    """

    transform: Transform
    kind: Kind
    to_work: Callable[[np.ndarray], np.ndarray] | None = None
    from_work: Callable[[np.ndarray], np.ndarray] | None = None
    to_rate: Callable[[np.ndarray], np.ndarray] | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    fill_nan: float | None = None
    mask: bool = False
    rate_error: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The transform's registry name."""
        return self.transform.name

    @property
    def work_kind(self) -> Kind:
        """The kind of values the transform reads."""
        return self.transform.kind

    def __call__(self, x: npt.ArrayLike) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Normalise native values (NaN = no data) to float32; with ``mask`` also the mask."""
        arr = _as_float(x)
        work = self.to_work(arr) if self.to_work is not None else arr
        if self.clip_low is not None or self.clip_high is not None:
            if np.isinf(work).any():  # clipping would pass them off as the clip value
                raise DatasetError(
                    f"{int(np.isinf(work).sum())} infinite pixel(s) in the input of .normalize(); "
                    "mask them to NaN in the archive (e.g. da.where(np.isfinite(da)))"
                )
            t = work.dtype.type
            low = None if self.clip_low is None else t(self.clip_low)
            high = None if self.clip_high is None else t(self.clip_high)
            work = np.clip(work, low, high)  # one pass; NaN stays NaN
        out = np.asarray(self.transform.forward(work))
        # always a new float32 array (never a view of x), then the NaN fill in place
        if out.dtype != np.float32 or np.may_share_memory(out, arr) or not out.flags.writeable:
            out = np.array(out, dtype=np.float32)
        if self.fill_nan is not None:
            fill = np.float32(self.fill_nan)
            # the image of no rain computed as the dry pixels are (same dtype): a fill that is
            # that value must equal them exactly, not differ by a float32 step
            dry = np.float32(np.asarray(self.transform.forward(np.zeros(1, work.dtype)))[0])
            if fill != dry and abs(float(fill) - float(dry)) <= 4e-7 * max(abs(float(dry)), 1.0):
                fill = dry
            np.copyto(out, fill, where=np.isnan(out))
        if self.mask:
            return out, ~np.isnan(arr)
        return out

    def inverse(self, y: npt.ArrayLike, *, native: bool = False) -> np.ndarray:
        """Map model-space values back to mm/h (``native=True``: the archive's units).

        Filled NaN pixels come back as no rain, clipped clutter as the clip value. Raises
        ParameterError for mm/h of an amount archive whose time step is unknown.
        """
        work = self.transform.inverse(_as_float(y))
        if native:
            out = self.from_work(work) if self.from_work is not None else work
        elif self.rate_error is not None:
            raise ParameterError(self.rate_error)
        else:
            out = self.to_rate(work) if self.to_rate is not None else work
        return np.array(out, dtype=np.float32)


def make_normalizer(
    method: str = "auto",
    *,
    standard_name: str | None,
    units: str | None,
    time_step: TimeStep | None = None,
    clip_max: float | None = DEFAULT_CLIP_MAX,
    fill_nan: float | Literal["auto"] | None = "auto",
    mask: bool = False,
    dbz_floor: float = DEFAULT_DBZ_FLOOR,
    **params: Any,
) -> Normalizer:
    """Build the :class:`Normalizer` of a variable (``standard_name``, ``units``).

    ``method``: ``"auto"`` (``ldcast`` for rates, ``mlcast_dbz`` for reflectivity) or a name of
    :func:`available_transforms`; ``**params`` go to the transform. ``clip_max`` clips clutter in
    mm/h (None: off); ``fill_nan`` replaces NaN (``"auto"``: no rain, None: keep); ``mask`` also
    returns the validity mask. Raises ParameterError for unknown methods or units.

    Examples
    --------
    >>> norm = make_normalizer(standard_name="rainfall_flux", units="mm h-1")
    >>> norm.name, norm(np.array([np.nan, 10.0])).round(3)
    ('ldcast', array([-3.121,  1.991], dtype=float32))

    """
    kind = variable_kind(standard_name, units)
    if method == "auto":
        method = "mlcast_dbz" if kind == "reflectivity" else "ldcast"
    if "kind" in params:
        raise ParameterError(
            "do not pass kind=...: the normaliser sets what the transform reads from "
            "standard_name and units"
        )
    transform = get_transform(method, **params)
    label = standard_name or units
    kwargs = {"dbz_floor": dbz_floor}

    if kind in transform.accepts:
        work: Kind = kind
    elif "rate" in transform.accepts:
        work = "rate"
        if kind == "amount" and time_step is None:
            raise ParameterError(
                f"method {method!r} reads rain rate, but {label!r} holds rain amounts per time "
                "step; pass time_step=... (the archive's nominal step, e.g. "
                "np.timedelta64(5, 'm')) so amounts are converted to mm/h, or use "
                "method='scale'/'identity' on the amounts"
            )
    else:
        raise ParameterError(
            f"method {method!r} reads {sorted(transform.accepts)} values and cannot read "
            f"{label!r} ({kind}); choose another method: {', '.join(available_transforms())}"
        )
    if transform.kind != work:
        transform = get_transform(method, **params, kind=work)

    step_known = time_step is not None
    if work == "rate":
        to_work = to_rain_rate_fn(standard_name, units, time_step, **kwargs)
        from_work = from_rain_rate_fn(standard_name, units, time_step, **kwargs)
        to_rate = None
    elif work == "reflectivity":
        to_work = from_work = None
        to_rate = _UnitConversion("dbz_to_rate", dbz_floor=dbz_floor)
    else:  # amounts read as they are
        to_work = from_work = None
        to_rate = (
            _UnitConversion("scale", factor=1.0 / _step_hours(time_step, ""))
            if step_known
            else None
        )
    rate_error = None
    if work == "amount" and not step_known:
        rate_error = (
            f"cannot return mm/h: {label!r} holds amounts per time step and no time_step was "
            "given; pass time_step=... or ask for native=True"
        )

    clip_low: float | None = None
    clip_high: float | None = None
    if clip_max is not None:
        cmax = _finite(clip_max, "clip_max", positive=True)
        if work == "rate":
            clip_low, clip_high = 0.0, cmax
        elif work == "reflectivity":
            clip_high = float(rate_to_dbz(cmax))
        else:
            if not step_known:
                raise ParameterError(
                    f"clip_max={clip_max} is in mm/h but {label!r} holds amounts per step and no "
                    "time_step was given; pass time_step=... or clip_max=None"
                )
            clip_low, clip_high = 0.0, cmax * _step_hours(time_step, "")

    if isinstance(fill_nan, str):
        if fill_nan != "auto":
            raise ParameterError(f"fill_nan must be a number, 'auto' or None, got {fill_nan!r}")
        fill: float | None = transform.fill_value
    elif fill_nan is None:
        fill = None
    else:
        fill = _finite(fill_nan, "fill_nan")

    return Normalizer(
        transform=transform,
        kind=kind,
        to_work=to_work,
        from_work=from_work,
        to_rate=to_rate,
        clip_low=clip_low,
        clip_high=clip_high,
        fill_nan=fill,
        mask=bool(mask),
        rate_error=rate_error,
    )


def denormalize(
    y: npt.ArrayLike,
    method: str = "auto",
    *,
    standard_name: str | None = None,
    units: str | None = None,
    time_step: TimeStep | None = None,
    native: bool = False,
    **params: Any,
) -> np.ndarray:
    """Map normalised values (e.g. model outputs) back to mm/h, or native units with ``native``.

    Takes the arguments given to :func:`make_normalizer`; without ``standard_name`` and
    ``units`` the values are taken to be rain rates in mm/h.

    Examples
    --------
    >>> denormalize(np.array([-1.0, 0.0]), "mlcast_dbz").round(2)
    array([0.  , 2.73], dtype=float32)

    """
    if standard_name is None and units is None:
        units = "mm h-1"
    params.setdefault("clip_max", None)
    norm = make_normalizer(
        method, standard_name=standard_name, units=units, time_step=time_step, **params
    )
    return norm.inverse(y, native=native)
