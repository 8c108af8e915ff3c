"""Conversions to and from rain rate: Marshall-Palmer dBZ and amounts per time step.

Built from a variable's standard name and units (:mod:`mlcast_pipes.transforms.units`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.transforms.units import ArrayF, TimeStep, _units_entry, variable_kind

__all__ = [
    "DEFAULT_DBZ_FLOOR",
    "MARSHALL_PALMER_A",
    "MARSHALL_PALMER_B",
    "dbz_to_rate",
    "from_rain_rate_fn",
    "rate_to_dbz",
    "to_rain_rate_fn",
]


MARSHALL_PALMER_A = 200.0
"""Marshall-Palmer coefficient ``a`` of ``Z = a R^b`` (Z in mm^6 m^-3, R in mm/h)."""


MARSHALL_PALMER_B = 1.6
"""Marshall-Palmer exponent ``b`` of ``Z = a R^b``."""


DEFAULT_DBZ_FLOOR = 0.0
"""Reflectivities at or below this value (dBZ) count as no rain (0 mm/h)."""


def _step_hours(time_step: TimeStep | None, what: str) -> float:
    """Return the length of a time step in hours, checked."""
    if time_step is None:
        raise ParameterError(
            f"{what} needs the archive's time step to turn amounts per step into rates; pass "
            "time_step=... (e.g. np.timedelta64(5, 'm'))"
        )
    try:
        if isinstance(time_step, str):
            import pandas as pd

            td = np.timedelta64(pd.Timedelta(time_step).to_timedelta64())
        else:
            td = np.timedelta64(time_step)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"time_step={time_step!r} is not a time span; pass a numpy.timedelta64 "
            "such as np.timedelta64(5, 'm') or a string such as '5min'"
        ) from exc
    if np.datetime_data(td.dtype)[0] == "generic" or np.isnat(td):
        raise ParameterError(
            f"time_step={time_step!r} has no time unit; pass e.g. np.timedelta64(5, 'm')"
        )
    hours = float(td / np.timedelta64(1, "h"))
    if not hours > 0:
        raise ParameterError(f"time_step={time_step!r} must be positive")
    return hours


def _as_float(x: npt.ArrayLike) -> ArrayF:
    """``x`` as a float array of at least float32 precision (no copy when already so)."""
    arr = np.asarray(x)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 8:
        return arr
    return arr.astype(np.float32 if arr.dtype.itemsize <= 2 else np.float64)


def rate_to_dbz(
    r: npt.ArrayLike, a: float = MARSHALL_PALMER_A, b: float = MARSHALL_PALMER_B
) -> ArrayF:
    """Reflectivity ``dBZ = 10 log10(a R^b)`` of rain rate R in mm/h (0 gives -inf, negative NaN).

    Examples
    --------
    >>> float(rate_to_dbz(1.0))  # 10 log10(200)
    23.010299956639813

    """
    rr = _as_float(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cast(ArrayF, 10.0 * math.log10(a) + 10.0 * float(b) * np.log10(rr))


def dbz_to_rate(
    dbz: npt.ArrayLike, a: float = MARSHALL_PALMER_A, b: float = MARSHALL_PALMER_B
) -> ArrayF:
    """Rain rate ``R = (10**(dBZ/10) / a)**(1/b)`` in mm/h, without a no-rain floor.

    Examples
    --------
    >>> round(float(dbz_to_rate(rate_to_dbz(12.5))), 6)
    12.5

    """
    d = _as_float(dbz)
    with np.errstate(over="ignore"):
        return cast(ArrayF, np.power(10.0, (d - 10.0 * math.log10(a)) / (10.0 * float(b))))


@dataclass(frozen=True)
class _UnitConversion:
    """A picklable numpy function between a native variable and rain rate (or its inverse)."""

    op: Literal["scale", "dbz_to_rate", "rate_to_dbz"]
    factor: float = 1.0
    a: float = MARSHALL_PALMER_A
    b: float = MARSHALL_PALMER_B
    dbz_floor: float = DEFAULT_DBZ_FLOOR

    def __call__(self, x: npt.ArrayLike) -> ArrayF:
        arr = _as_float(x)
        if self.op == "scale":
            return cast(ArrayF, arr * arr.dtype.type(self.factor))
        if self.op == "dbz_to_rate":
            rate = dbz_to_rate(arr, self.a, self.b)
            return cast(ArrayF, np.where(arr <= self.dbz_floor, arr.dtype.type(0), rate))
        dbz = rate_to_dbz(arr, self.a, self.b)
        # rates whose reflectivity is at or below the floor (0 and below included) give the floor
        dry = (dbz <= self.dbz_floor) | (arr <= 0)
        return cast(ArrayF, np.where(dry, arr.dtype.type(self.dbz_floor), dbz))


def to_rain_rate_fn(
    standard_name: str | None,
    units: str | None,
    time_step: TimeStep | None,
    *,
    a: float = MARSHALL_PALMER_A,
    b: float = MARSHALL_PALMER_B,
    dbz_floor: float = DEFAULT_DBZ_FLOOR,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A picklable numpy function from the variable's values to mm/h, or None if already mm/h.

    Rates per second are multiplied by 3600; dBZ use Marshall-Palmer (``a``, ``b``) and values at or
    below ``dbz_floor`` become 0; amounts are divided by ``time_step`` in hours. Raises
    ParameterError for unknown units or an amount archive without ``time_step``.

    Examples
    --------
    >>> f = to_rain_rate_fn("precipitation_amount", "mm", np.timedelta64(5, "m"))
    >>> f(np.array([1.0]))
    array([12.])

    """
    kind = variable_kind(standard_name, units)
    if kind == "reflectivity":
        return _UnitConversion("dbz_to_rate", a=a, b=b, dbz_floor=dbz_floor)
    if kind == "amount":
        hours = _step_hours(time_step, f"converting {standard_name or units} to mm/h")
        return _UnitConversion("scale", factor=1.0 / hours)
    factor = _rate_factor(standard_name, units)
    return None if factor == 1.0 else _UnitConversion("scale", factor=factor)


def from_rain_rate_fn(
    standard_name: str | None,
    units: str | None,
    time_step: TimeStep | None,
    *,
    a: float = MARSHALL_PALMER_A,
    b: float = MARSHALL_PALMER_B,
    dbz_floor: float = DEFAULT_DBZ_FLOOR,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The inverse of :func:`to_rain_rate_fn`: mm/h to native units (None if already mm/h).

    For dBZ, rates at or below the floor come back as ``dbz_floor``.

    Examples
    --------
    >>> f = from_rain_rate_fn("equivalent_reflectivity_factor", "dBZ", None)
    >>> f(np.array([0.0, 1.0])).round(3)
    array([ 0.  , 23.01])

    """
    kind = variable_kind(standard_name, units)
    if kind == "reflectivity":
        return _UnitConversion("rate_to_dbz", a=a, b=b, dbz_floor=dbz_floor)
    if kind == "amount":
        hours = _step_hours(time_step, f"converting mm/h to {standard_name or units}")
        return _UnitConversion("scale", factor=hours)
    factor = _rate_factor(standard_name, units)
    return None if factor == 1.0 else _UnitConversion("scale", factor=1.0 / factor)


def _rate_factor(standard_name: str | None, units: str | None) -> float:
    if units is None or not str(units).strip():
        raise ParameterError(
            f"the rate variable {standard_name!r} has no units, so mm/h and kg m-2 s-1 cannot be "
            "told apart; set its 'units' attribute (e.g. 'mm h-1' or 'kg m-2 s-1')"
        )
    return _units_entry(units)[1]
