"""Unit conversions, the registry of invertible normalisation transforms, and the Normalizer.

Turns native radar values (rain rate, dBZ or rain amount; NaN = no data) into model inputs and back.
"""

from __future__ import annotations

import csv
import datetime as _dt
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import IndexFileError, ParameterError

__all__ = [
    "DEFAULT_CLIP_MAX",
    "DEFAULT_DBZ_FLOOR",
    "MARSHALL_PALMER_A",
    "MARSHALL_PALMER_B",
    "STATS_COLUMNS",
    "FittedTransform",
    "IdentityTransform",
    "Kind",
    "LDCastTransform",
    "Log1pTransform",
    "MLCastDBZTransform",
    "MeanStdAccumulator",
    "Normalizer",
    "ScaleTransform",
    "Transform",
    "available_transforms",
    "canonical_units",
    "dbz_to_rate",
    "denormalize",
    "fit_mean_std",
    "from_rain_rate_fn",
    "get_transform",
    "known_units",
    "make_normalizer",
    "rate_to_dbz",
    "read_stats_csv",
    "register_transform",
    "stats_filename",
    "to_rain_rate_fn",
    "units_kind",
    "variable_kind",
    "write_stats_csv",
]

Kind: TypeAlias = Literal["rate", "reflectivity", "amount"]
"""What a variable measures: rain rate, radar reflectivity (dBZ) or rain amount per time step."""

TimeStep: TypeAlias = "np.timedelta64 | _dt.timedelta | str"
ArrayF: TypeAlias = npt.NDArray[np.floating[Any]]

KINDS: tuple[Kind, ...] = get_args(Kind)

MARSHALL_PALMER_A = 200.0
"""Marshall-Palmer coefficient ``a`` of ``Z = a R^b`` (Z in mm^6 m^-3, R in mm/h)."""
MARSHALL_PALMER_B = 1.6
"""Marshall-Palmer exponent ``b`` of ``Z = a R^b``."""
DEFAULT_DBZ_FLOOR = 0.0
"""Reflectivities at or below this value (dBZ) count as no rain (0 mm/h)."""
DEFAULT_CLIP_MAX = 300.0
"""Default clutter clip in mm/h: larger rates are set to this value before scaling."""
STATS_COLUMNS = ("variable", "mean", "std")
"""Header of a ``{sampling_id}.stats.csv`` file."""

# --------------------------------------------------------------------------------------------
# Units and variable kinds
# --------------------------------------------------------------------------------------------

_STANDARD_NAME_KIND: dict[str, Kind] = {
    "rainfall_flux": "rate",
    "precipitation_flux": "rate",
    "rainfall_rate": "rate",
    "lwe_precipitation_rate": "rate",
    "equivalent_reflectivity_factor": "reflectivity",
    "precipitation_amount": "amount",
    "rainfall_amount": "amount",
    "lwe_thickness_of_precipitation_amount": "amount",
}

# THE units table of the package (dataset validation uses it too): canonical units ->
# (kind, factor to mm/h for rates, to mm for amounts). Spellings are reduced to these keys by
# :func:`canonical_units` ("mm/hr", "mm h^-1", "kg/m2/s", "mm per hour" ...).
_UNITS: dict[str, tuple[Kind, float]] = {
    "mm h-1": ("rate", 1.0),
    "kg m-2 h-1": ("rate", 1.0),
    "mm min-1": ("rate", 60.0),
    "kg m-2 min-1": ("rate", 60.0),
    "mm s-1": ("rate", 3600.0),
    "kg m-2 s-1": ("rate", 3600.0),
    "m s-1": ("rate", 3.6e6),
    "dbz": ("reflectivity", 1.0),
    "mm": ("amount", 1.0),
    "kg m-2": ("amount", 1.0),
    "m": ("amount", 1000.0),
}
_UNITS_DISPLAY = {"dbz": "dBZ"}
_UNIT_WORDS = {
    "hours": "h",
    "hour": "h",
    "hrs": "h",
    "hr": "h",
    "minutes": "min",
    "minute": "min",
    "mins": "min",
    "seconds": "s",
    "second": "s",
    "secs": "s",
    "sec": "s",
    "millimeters": "mm",
    "millimetres": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "meters": "m",
    "metres": "m",
    "meter": "m",
    "metre": "m",
    "kilograms": "kg",
    "kilogram": "kg",
}
_UNIT_TOKEN = re.compile(r"^([a-z]+)(-?\d+)?$")


def canonical_units(units: Any) -> str | None:
    """Reduce a spelling of precipitation units to the package's canonical form.

    Case, spacing, ``^`` / ``**`` exponents, ``/`` and ``per`` divisions, ``.`` or ``*``
    products and words (``hr``, ``hour``, ``sec``, ``millimetre`` ...) are normalised; the
    result is a key of the units table (see :func:`known_units`) or None when unknown.

    Examples
    --------
    >>> [canonical_units(u) for u in ["mm/hr", "mm h^-1", "MM/H", "kg/m2/s", "mm per hour"]]
    ['mm h-1', 'mm h-1', 'mm h-1', 'kg m-2 s-1', 'mm h-1']
    >>> canonical_units("dBZ"), canonical_units("furlongs")
    ('dBZ', None)

    """
    if units is None:
        return None
    text = str(units).strip().lower()
    text = text.replace("**", "").replace("^", "").replace("\u00b7", " ").replace("*", " ")
    text = re.sub(r"\s+per\s+", "/", text)
    text = re.sub(r"\s*/\s*", "/", text)
    tokens: list[str] = []
    for i, part in enumerate(text.split("/")):
        for word in re.split(r"[\s.]+", part):
            if not word:
                continue
            match = _UNIT_TOKEN.match(word)
            if match is None:
                return None
            name, power = match.group(1), int(match.group(2) or 1)
            name = _UNIT_WORDS.get(name, name)
            if i > 0:
                power = -power
            tokens.append(name if power == 1 else f"{name}{power}")
    key = " ".join(tokens)
    if key not in _UNITS:
        return None
    return _UNITS_DISPLAY.get(key, key)


def known_units() -> list[str]:
    """List the canonical units the conversions understand (other spellings reduce to these).

    Returns
    -------
    list of str
        Units as written in CF attributes, e.g. ``"mm h-1"``, ``"dBZ"``, ``"kg m-2"``; other
        spellings (``"mm/h"``, ``"mm/hr"``, ``"kg m**-2 s**-1"``) are accepted too, see
        :func:`canonical_units`.

    Examples
    --------
    >>> "dBZ" in known_units() and "mm h-1" in known_units()
    True

    """
    return [_UNITS_DISPLAY.get(u, u) for u in _UNITS]


def units_kind(units: str) -> Kind:
    """What canonical units measure: ``"rate"``, ``"reflectivity"`` or ``"amount"``.

    Examples
    --------
    >>> units_kind("kg m-2 s-1"), units_kind("dBZ")
    ('rate', 'reflectivity')

    """
    return _units_entry(units)[0]


def _units_entry(units: str) -> tuple[Kind, float]:
    key = canonical_units(units)
    if key is None:
        known = ", ".join(
            f"{u} (x{f:g})" if k == "rate" and f != 1 else u
            for u, (k, f) in zip(known_units(), _UNITS.values(), strict=True)
        )
        raise ParameterError(
            f"unknown precipitation units {units!r}; known units are: {known} (also spelled "
            "'mm/h', 'mm hr-1', 'mm/hr', 'mm h^-1', 'kg/m2/s', ...). Fix the variable's 'units' "
            "attribute "
            "(or pass units=... explicitly)"
        )
    return _UNITS[key.lower()]


def variable_kind(standard_name: str | None, units: str | None) -> Kind:
    """Classify a precipitation variable from its CF ``standard_name`` and ``units``.

    Parameters
    ----------
    standard_name : str or None
        CF standard name (``rainfall_flux``, ``precipitation_flux``,
        ``equivalent_reflectivity_factor``, ``precipitation_amount``, ``rainfall_amount``, ...),
        compared case-insensitively. An unknown name defers to the units.
    units : str or None
        CF units (see :func:`known_units`). ``None`` is accepted when the standard name is known.

    Returns
    -------
    {"rate", "reflectivity", "amount"}

    Raises
    ------
    ParameterError
        Unknown units, units that contradict the standard name, or nothing to decide from.

    Examples
    --------
    >>> variable_kind("rainfall_flux", "mm h-1")
    'rate'
    >>> variable_kind(None, "dBZ")
    'reflectivity'

    """
    by_name = _STANDARD_NAME_KIND.get(standard_name.strip().lower()) if standard_name else None
    if units is None or not str(units).strip():
        if by_name is None:
            raise ParameterError(
                f"cannot tell what the variable measures: standard_name={standard_name!r} is not "
                f"one of {sorted(_STANDARD_NAME_KIND)} and no units are given; set the variable's "
                f"'units' attribute to one of: {', '.join(known_units())}"
            )
        return by_name
    by_units, _ = _units_entry(units)
    if by_name is not None and by_name != by_units:
        expected = [
            u for u, (k, _) in zip(known_units(), _UNITS.values(), strict=True) if k == by_name
        ]
        raise ParameterError(
            f"standard_name {standard_name!r} is a {by_name} but units {units!r} are those of a "
            f"{by_units}; fix the variable's attributes (a {by_name} takes units "
            f"{', '.join(expected)})"
        )
    return by_units


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


# --------------------------------------------------------------------------------------------
# Marshall-Palmer
# --------------------------------------------------------------------------------------------


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
    """Reflectivity in dBZ of a rain rate by ``Z = a R^b``: ``dBZ = 10 log10(a R^b)``.

    Parameters
    ----------
    r : array_like
        Rain rate in mm/h. Zero gives ``-inf``, negative values NaN, NaN stays NaN.
    a, b : float
        Z-R coefficients (Marshall-Palmer by default).

    Returns
    -------
    numpy.ndarray
        Reflectivity in dBZ (float, at least float32).

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
    """Rain rate in mm/h of a reflectivity by ``Z = a R^b``: ``R = (10**(dBZ/10) / a)**(1/b)``.

    No floor is applied (see :func:`to_rain_rate_fn` for the "no rain" floor).

    Parameters
    ----------
    dbz : array_like
        Reflectivity in dBZ; NaN stays NaN.
    a, b : float
        Z-R coefficients (Marshall-Palmer by default).

    Returns
    -------
    numpy.ndarray
        Rain rate in mm/h (float, at least float32).

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
    """Return a numpy function converting the native variable to rain rate in mm/h.

    * rates: multiplied by 3600 for ``kg m-2 s-1`` / ``mm s-1``; ``None`` when already mm/h;
    * reflectivity (dBZ): Marshall-Palmer ``R = (10**(dBZ/10)/a)**(1/b)``, and values at or
      below ``dbz_floor`` (the "no rain" reflectivity) become 0;
    * amounts per time step (mm, kg m-2): divided by the step length in hours.

    NaN stays NaN. The function is picklable (it can be sent to worker processes).

    Parameters
    ----------
    standard_name, units : str or None
        CF attributes of the variable (see :func:`variable_kind`).
    time_step : numpy.timedelta64, datetime.timedelta, str or None
        Nominal time step of the archive; required for amounts.
    a, b : float
        Z-R coefficients for reflectivity.
    dbz_floor : float
        Reflectivity (dBZ) at or below which there is no rain.

    Returns
    -------
    callable or None
        ``f(native) -> rate``, or ``None`` when the values are already in mm/h.

    Raises
    ------
    ParameterError
        Unknown units, or an amount archive without ``time_step``.

    Examples
    --------
    >>> import numpy as np
    >>> f = to_rain_rate_fn("precipitation_amount", "mm", np.timedelta64(5, "m"))
    >>> f(np.array([1.0]))
    array([12.])
    >>> to_rain_rate_fn("rainfall_flux", "mm h-1", None) is None
    True

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
    """Return the inverse of :func:`to_rain_rate_fn`: rain rate in mm/h to native units.

    For reflectivity, rates whose dBZ lies at or below ``dbz_floor`` (zero rain included)
    come back as ``dbz_floor``; the round trip is exact above the floor.

    Parameters
    ----------
    standard_name, units, time_step, a, b, dbz_floor
        As for :func:`to_rain_rate_fn`.

    Returns
    -------
    callable or None
        ``f(rate) -> native``, or ``None`` when the native values are already in mm/h.

    Examples
    --------
    >>> import numpy as np
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


# --------------------------------------------------------------------------------------------
# Transforms and their registry
# --------------------------------------------------------------------------------------------


class Transform:
    """An invertible scaling of precipitation values, registered by name.

    Subclasses set the class attributes and implement :meth:`forward` and :meth:`inverse`;
    both take and return numpy float arrays of any shape, keep NaN as NaN and never modify
    their input.

    Attributes
    ----------
    name : str
        The registry name (set by :func:`register_transform`).
    accepts : frozenset of {"rate", "reflectivity", "amount"}
        Kinds of values :meth:`forward` can read. A :class:`Normalizer` converts other
        variables to rain rate (mm/h) first when ``"rate"`` is accepted.
    kind : str
        The kind this instance reads (one of ``accepts``; ``"rate"`` means mm/h).
    fill_value : float
        The output value that stands for NaN input (by default the image of "no rain").

    Examples
    --------
    >>> t = get_transform("log1p")
    >>> isinstance(t, Transform), t.kind, t.fill_value
    (True, 'rate', 0.0)

    """

    name: str = ""
    accepts: ClassVar[frozenset[Kind]] = frozenset({"rate"})

    def __init__(self, *, kind: Kind = "rate") -> None:
        if kind not in self.accepts:
            raise ParameterError(
                f"transform {self.name!r} cannot read {kind} values; it accepts "
                f"{sorted(self.accepts)} (convert the values to rain rate first)"
            )
        self.kind: Kind = kind

    @property
    def fill_value(self) -> float:
        """Output value of "no rain" (0 in the transform's input units), used for NaN."""
        return float(self.forward(np.zeros(1, dtype=np.float64))[0])

    def forward(self, x: ArrayF) -> ArrayF:
        """Scale values of kind :attr:`kind` into model space."""
        raise NotImplementedError

    def inverse(self, y: ArrayF) -> ArrayF:
        """Undo :meth:`forward`: model-space values back to values of kind :attr:`kind`."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self._params().items()))))


TransformFactory: TypeAlias = Callable[..., Transform]
_REGISTRY: dict[str, TransformFactory] = {}


def register_transform(name: str) -> Callable[[TransformFactory], TransformFactory]:
    """Register a :class:`Transform` subclass (or a factory returning one) under ``name``.

    Parameters
    ----------
    name : str
        Registry name, used by :func:`get_transform` and ``make_normalizer(method=name)``.

    Returns
    -------
    callable
        A decorator that registers its argument and returns it unchanged (a class gets its
        ``name`` attribute set).

    Raises
    ------
    ParameterError
        ``name`` is empty, ``"auto"``, or already taken by another transform.

    Notes
    -----
    A transform accepting several kinds (``accepts``) must take a keyword ``kind``: the
    :class:`Normalizer` passes the kind it feeds the transform.

    Examples
    --------
    >>> @register_transform("doc_sqrt")
    ... class Sqrt(Transform):
    ...     def forward(self, x):
    ...         return np.sqrt(x)
    ...     def inverse(self, y):
    ...         return y**2
    >>> get_transform("doc_sqrt").name
    'doc_sqrt'

    """
    if not name or name == "auto":
        raise ParameterError(f"{name!r} cannot name a transform; choose another name")

    def decorate(factory: TransformFactory) -> TransformFactory:
        previous = _REGISTRY.get(name)
        if previous is not None and _origin(previous) != _origin(factory):
            raise ParameterError(
                f"a transform named {name!r} is already registered ({previous!r}); choose "
                f"another name (taken: {', '.join(sorted(_REGISTRY))})"
            )
        if isinstance(factory, type) and issubclass(factory, Transform):
            factory.name = name
        _REGISTRY[name] = factory
        return factory

    return decorate


def _origin(factory: TransformFactory) -> tuple[str, str]:
    """Where a factory is defined (re-registering the same definition, e.g. on reload, is fine)."""
    return (getattr(factory, "__module__", ""), getattr(factory, "__qualname__", repr(factory)))


def available_transforms() -> list[str]:
    """Names of the registered transforms, sorted.

    Returns
    -------
    list of str

    Examples
    --------
    >>> {"fitted", "ldcast", "log1p", "mlcast_dbz", "scale"} <= set(available_transforms())
    True

    """
    return sorted(_REGISTRY)


def get_transform(name: str, **params: Any) -> Transform:
    """Build a registered transform.

    Parameters
    ----------
    name : str
        A name from :func:`available_transforms`.
    **params
        The transform's parameters (e.g. ``offset``/``scale`` for ``"scale"``).

    Returns
    -------
    Transform

    Raises
    ------
    ParameterError
        Unknown name (the message lists the known ones) or parameters the transform rejects.

    Examples
    --------
    >>> get_transform("scale", offset=1.0, scale=2.0).forward(np.array([5.0]))
    array([2.])

    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ParameterError(
            f"unknown normalisation method {name!r}; known methods are: "
            f"{', '.join(['auto', *available_transforms()])}"
        )
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as exc:
        raise ParameterError(
            f"transform {name!r} does not take parameters {sorted(params)}: {exc}; its "
            f"signature is {name}{_signature_text(factory)}"
        ) from exc
    transform = factory(**params)
    if not isinstance(transform, Transform):
        raise ParameterError(
            f"the factory registered as {name!r} returned {type(transform).__name__}, not a "
            "Transform; make it return a mlcast_pipes.transforms.Transform subclass instance"
        )
    if not transform.name:
        transform.name = name
    return transform


def _signature_text(factory: TransformFactory) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return "(...)"


def _finite(value: Any, what: str, *, positive: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{what} must be a number, got {value!r}") from exc
    if not math.isfinite(out) or (positive and out <= 0):
        raise ParameterError(
            f"{what} must be a finite{' positive' if positive else ''} number, got {value!r}"
        )
    return out


_LDCAST_THRESHOLD = 0.1
_LDCAST_ZERO = 0.02
_LDCAST_MEAN = 0.051
_LDCAST_STD = 0.528


@register_transform("ldcast")
class LDCastTransform(Transform):
    """LDCast's log rain rate: ``R < 0.1 -> 0.02``, ``x = (log10(R) + 0.051) / 0.528``.

    Inverse: ``R = 10**(0.528 x - 0.051)``, values below 0.1 mm/h set to 0. Invertible for
    R >= 0.1 mm/h; rates below 0.1 (no or negligible rain) all map to ``fill_value``
    ``(log10(0.02) + 0.051) / 0.528`` (about -3.12) and come back as 0. Reads rain rate in mm/h.

    Examples
    --------
    >>> t = LDCastTransform()
    >>> x = t.forward(np.array([0.0, 1.0, 10.0]))
    >>> x.round(3)
    array([-3.121,  0.097,  1.991])
    >>> t.inverse(x).round(3)
    array([ 0.,  1., 10.])

    """

    accepts = frozenset({"rate"})

    def forward(self, x: ArrayF) -> ArrayF:
        """Rain rate (mm/h) to LDCast log space."""
        r = _as_float(x)
        t = r.dtype.type
        # one new array, then in place: the same values as the plain expression, fewer passes
        out = np.where(r < t(_LDCAST_THRESHOLD), t(_LDCAST_ZERO), r)
        np.log10(out, out=out)
        out += t(_LDCAST_MEAN)
        out /= t(_LDCAST_STD)
        return cast(ArrayF, out)

    def inverse(self, y: ArrayF) -> ArrayF:
        """LDCast log space back to rain rate (mm/h)."""
        v = _as_float(y)
        t = v.dtype.type
        with np.errstate(over="ignore"):
            r = np.power(t(10.0), t(_LDCAST_STD) * v - t(_LDCAST_MEAN))
        return cast(ArrayF, np.where(r < t(_LDCAST_THRESHOLD), t(0), r))


_DBZ_MIN = 0.0
_DBZ_MAX = 60.0


@register_transform("mlcast_dbz")
class MLCastDBZTransform(Transform):
    """The MLCast community reflectivity scaling: ``x = clip(dBZ, 0, 60) / 30 - 1``.

    From rain rate, ``dBZ = 10 log10(200 R^1.6)`` (Marshall-Palmer, R <= 0 gives 0 dBZ); a
    reflectivity archive is read directly (``kind="reflectivity"``). The clipping is lossy:
    :meth:`inverse` restores values inside the clip range (0 < dBZ < 60, i.e. about
    0.036 < R < 205 mm/h); anything at or below 0 dBZ comes back as 0 mm/h (or 0 dBZ), and
    anything above as 60 dBZ (about 205 mm/h). Model outputs outside [-1, 1] are clipped
    the same way. ``fill_value`` is -1 (0 dBZ), as in the community loader.

    Parameters
    ----------
    kind : {"rate", "reflectivity"}
        Whether :meth:`forward` reads mm/h or dBZ (and :meth:`inverse` returns it).

    Examples
    --------
    >>> t = MLCastDBZTransform()
    >>> t.forward(np.array([0.0, 1.0])).round(3)
    array([-1.   , -0.233])
    >>> MLCastDBZTransform(kind="reflectivity").forward(np.array([30.0, 70.0]))
    array([0., 1.])

    """

    accepts = frozenset({"rate", "reflectivity"})

    def forward(self, x: ArrayF) -> ArrayF:
        """Rain rate (mm/h) or dBZ to the [-1, 1] reflectivity scale."""
        v = _as_float(x)
        t = v.dtype.type
        # NaN stays NaN; no rain (R <= 0) is 0 dBZ
        dbz = np.where(v <= 0, t(_DBZ_MIN), rate_to_dbz(v)) if self.kind == "rate" else v
        return cast(ArrayF, np.clip(dbz, t(_DBZ_MIN), t(_DBZ_MAX)) / t(30.0) - t(1.0))

    def inverse(self, y: ArrayF) -> ArrayF:
        """Map the [-1, 1] scale back to rain rate (mm/h) or dBZ, clipped to 0-60 dBZ."""
        v = _as_float(y)
        t = v.dtype.type
        dbz = np.clip((v + t(1.0)) * t(30.0), t(_DBZ_MIN), t(_DBZ_MAX))
        if self.kind == "reflectivity":
            return cast(ArrayF, dbz)
        return cast(ArrayF, np.where(dbz <= t(_DBZ_MIN), t(0), dbz_to_rate(dbz)))


@register_transform("log1p")
class Log1pTransform(Transform):
    """``x = log1p(R) / scale``; inverse ``R = expm1(scale x)`` (negative results set to 0).

    Exactly invertible for R >= 0. Reads rain rate in mm/h; ``fill_value`` is 0.

    Parameters
    ----------
    scale : float
        Positive divisor of ``log1p(R)`` (default 1).

    Examples
    --------
    >>> t = Log1pTransform(scale=2.0)
    >>> y = t.forward(np.array([0.0, 3.0]))
    >>> y.round(4), t.inverse(y).round(6)
    (array([0.    , 0.6931]), array([0., 3.]))

    """

    accepts = frozenset({"rate"})

    def __init__(self, *, scale: float = 1.0, kind: Kind = "rate") -> None:
        super().__init__(kind=kind)
        self.scale = _finite(scale, "log1p scale", positive=True)

    def forward(self, x: ArrayF) -> ArrayF:
        """Rain rate (mm/h) to ``log1p(R) / scale`` (negative rates count as 0)."""
        v = _as_float(x)
        t = v.dtype.type
        return cast(ArrayF, np.log1p(np.maximum(v, t(0))) / t(self.scale))

    def inverse(self, y: ArrayF) -> ArrayF:
        """Back to rain rate (mm/h)."""
        v = _as_float(y)
        t = v.dtype.type
        with np.errstate(over="ignore"):
            return cast(ArrayF, np.maximum(np.expm1(v * t(self.scale)), t(0)))

    def _params(self) -> dict[str, Any]:
        return {"scale": self.scale, "kind": self.kind}


@register_transform("scale")
class ScaleTransform(Transform):
    """Affine scaling ``x = (v - offset) / scale``, exactly invertible.

    Reads any kind: rain rate (mm/h), dBZ, or amounts, as chosen by the :class:`Normalizer`
    (the archive's own kind). ``fill_value`` is the image of 0: ``-offset / scale``.

    Parameters
    ----------
    offset : float
        Subtracted first (default 0).
    scale : float
        Non-zero divisor (default 1).

    Examples
    --------
    >>> ScaleTransform(offset=1.0, scale=4.0).forward(np.array([1.0, 9.0]))
    array([0., 2.])

    """

    accepts = frozenset({"rate", "reflectivity", "amount"})

    def __init__(self, *, offset: float = 0.0, scale: float = 1.0, kind: Kind = "rate") -> None:
        super().__init__(kind=kind)
        self.offset = _finite(offset, "scale offset")
        self.scale = _finite(scale, "scale divisor")
        if self.scale == 0:
            raise ParameterError("scale divisor must not be 0; pass scale=... (e.g. 10.0)")

    def forward(self, x: ArrayF) -> ArrayF:
        """``(v - offset) / scale``."""
        v = _as_float(x)
        t = v.dtype.type
        return cast(ArrayF, (v - t(self.offset)) / t(self.scale))

    def inverse(self, y: ArrayF) -> ArrayF:
        """``x * scale + offset``."""
        v = _as_float(y)
        t = v.dtype.type
        return cast(ArrayF, v * t(self.scale) + t(self.offset))

    def _params(self) -> dict[str, Any]:
        return {"offset": self.offset, "scale": self.scale, "kind": self.kind}


@register_transform("identity")
class IdentityTransform(ScaleTransform):
    """No scaling: values pass through (NaN filling and clipping still apply in a Normalizer).

    Reads any kind; ``fill_value`` is 0.

    Examples
    --------
    >>> IdentityTransform().forward(np.array([1.5]))
    array([1.5])

    """

    def __init__(self, *, kind: Kind = "rate") -> None:
        super().__init__(offset=0.0, scale=1.0, kind=kind)

    def _params(self) -> dict[str, Any]:
        return {"kind": self.kind}


@register_transform("fitted")
class FittedTransform(ScaleTransform):
    """Standardisation ``x = (R - mean) / std`` with statistics of the training data.

    ``mean`` and ``std`` are in rain rate mm/h (as computed at prepare time by
    :func:`fit_mean_std` and stored with :func:`write_stats_csv`). Give them directly, or
    give ``stats_file`` (a ``{sampling_id}.stats.csv``) and, when it holds several rows,
    ``variable``. Exactly invertible; ``fill_value`` is ``-mean / std`` (no rain).

    Parameters
    ----------
    mean, std : float, optional
        The statistics (std > 0).
    stats_file : str or Path, optional
        Read ``mean``/``std`` from this file instead.
    variable : str, optional
        Row of ``stats_file`` to use.

    Examples
    --------
    >>> t = FittedTransform(mean=0.5, std=2.0)
    >>> t.forward(np.array([0.5, 4.5])), t.fill_value
    (array([0., 2.]), -0.25)

    """

    accepts = frozenset({"rate"})

    def __init__(
        self,
        *,
        mean: float | None = None,
        std: float | None = None,
        stats_file: str | os.PathLike[str] | None = None,
        variable: str | None = None,
        kind: Kind = "rate",
    ) -> None:
        if stats_file is not None:
            if mean is not None or std is not None:
                raise ParameterError(
                    "fitted takes either mean/std or stats_file, not both; drop one of them"
                )
            mean, std = _pick_stats(read_stats_csv(stats_file), variable, stats_file)
        if mean is None or std is None:
            raise ParameterError(
                "the 'fitted' transform needs mean and std (in mm/h) from the training data: "
                "pass mean=..., std=... or stats_file='<sampling_id>.stats.csv' "
                "(see mlcast_pipes.transforms.fit_mean_std / write_stats_csv)"
            )
        std_f = _finite(std, "fitted std", positive=True)
        super().__init__(offset=_finite(mean, "fitted mean"), scale=std_f, kind=kind)

    @property
    def mean(self) -> float:
        """The mean subtracted (mm/h)."""
        return self.offset

    @property
    def std(self) -> float:
        """The standard deviation divided by (mm/h)."""
        return self.scale

    def _params(self) -> dict[str, Any]:
        return {"mean": self.offset, "std": self.scale, "kind": self.kind}


def _pick_stats(
    stats: dict[str, tuple[float, float]], variable: str | None, path: object
) -> tuple[float, float]:
    if variable is None:
        if len(stats) == 1:
            return next(iter(stats.values()))
        raise ParameterError(
            f"{path} holds statistics of several variables {sorted(stats)}; pass variable=..."
        )
    if variable not in stats:
        raise ParameterError(
            f"{path} has no statistics for variable {variable!r}; it has {sorted(stats)}"
        )
    return stats[variable]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass
class MeanStdAccumulator:
    """Streaming, NaN-aware mean and variance (Welford/Chan combination of chunks).

    Chunks are reduced with numpy in float64 and merged with Chan's parallel formula, so
    accumulators built on separate parts of the data can be combined with :meth:`merge`.

    Attributes
    ----------
    count : int
        Number of non-NaN values seen.
    mean : float
        Their mean (NaN while ``count`` is 0).
    m2 : float
        Sum of squared deviations from the mean.

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
    """Mean and standard deviation of all non-NaN values of a stream of arrays.

    Equals ``np.nanmean`` / ``np.nanstd`` of the concatenated arrays without holding them
    all in memory.

    Parameters
    ----------
    values_iter : iterable of array_like
        Chunks of values (any shapes), e.g. rain-rate frames in mm/h.
    ddof : int
        Delta degrees of freedom of the standard deviation.

    Returns
    -------
    (float, float)
        ``(mean, std)``.

    Raises
    ------
    ParameterError
        No non-NaN value in the stream.

    Examples
    --------
    >>> import numpy as np
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


def stats_filename(sampling_id: str) -> str:
    """File name of the statistics of a sampling: ``{sampling_id}.stats.csv``.

    Examples
    --------
    >>> stats_filename("demo.128x128.12.12.binnorm.0123456789ab")
    'demo.128x128.12.12.binnorm.0123456789ab.stats.csv'

    """
    return f"{sampling_id}.stats.csv"


def write_stats_csv(path: str | os.PathLike[str], stats: Mapping[str, tuple[float, float]]) -> Path:
    """Write ``{variable: (mean, std)}`` to a CSV with header ``variable,mean,std``.

    The file is written atomically (a temporary file then renamed), floats at full precision.

    Parameters
    ----------
    path : str or Path
        Target file, usually ``folder / stats_filename(sampling_id)``.
    stats : mapping of str to (float, float)
        Mean and standard deviation per variable.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ParameterError
        Empty mapping, non-finite values or a negative std.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / stats_filename("demo.binnorm")
    >>> print(write_stats_csv(path, {"rainfall_rate": (0.25, 1.5)}).read_text(), end="")
    variable,mean,std
    rainfall_rate,0.25,1.5

    """
    target = Path(path)
    if not stats:
        raise ParameterError("no statistics to write; pass {variable: (mean, std)}")
    rows = []
    for variable, pair in stats.items():
        try:
            mean, std = pair
        except (TypeError, ValueError) as exc:
            raise ParameterError(
                f"statistics of {variable!r} must be a (mean, std) pair, got {pair!r}"
            ) from exc
        m = _finite(mean, f"mean of {variable!r}")
        s = _finite(std, f"std of {variable!r}")
        if s < 0:
            raise ParameterError(f"std of {variable!r} must not be negative, got {std!r}")
        rows.append((str(variable), repr(m), repr(s)))
    from mlcast_pipes.index import atomic_write

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as fh:  # removes temp files of killed writes, too
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(STATS_COLUMNS)
        writer.writerows(rows)
    return target


def read_stats_csv(path: str | os.PathLike[str]) -> dict[str, tuple[float, float]]:
    """Read a ``variable,mean,std`` CSV written by :func:`write_stats_csv`.

    Parameters
    ----------
    path : str or Path
        The statistics file.

    Returns
    -------
    dict of str to (float, float)

    Raises
    ------
    IndexFileError
        Missing or unreadable file, wrong header, bad or non-finite numbers, duplicate rows.

    Examples
    --------
    >>> import tempfile
    >>> path = write_stats_csv(Path(tempfile.mkdtemp()) / "s.stats.csv", {"rr": (0.25, 1.5)})
    >>> read_stats_csv(path)
    {'rr': (0.25, 1.5)}

    """
    source = Path(path)
    fix = "recompute the statistics (rerun the prepare step) or fix the file"
    try:
        with source.open(newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh))
    except OSError as exc:
        raise IndexFileError(f"cannot read statistics file {source}: {exc}; {fix}") from exc
    if not lines or tuple(c.strip() for c in lines[0]) != STATS_COLUMNS:
        raise IndexFileError(
            f"{source} is not a statistics file: the header must be "
            f"{','.join(STATS_COLUMNS)}, got {','.join(lines[0]) if lines else 'nothing'}; {fix}"
        )
    out: dict[str, tuple[float, float]] = {}
    for number, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        try:
            variable, mean_s, std_s = row
            mean, std = float(mean_s), float(std_s)
        except ValueError as exc:
            raise IndexFileError(f"{source} line {number} is malformed: {row!r}; {fix}") from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
            raise IndexFileError(
                f"{source} line {number}: mean/std must be finite and std >= 0, got {row!r}; {fix}"
            )
        if variable in out:
            raise IndexFileError(f"{source} lists {variable!r} twice; {fix}")
        out[variable] = (mean, std)
    if not out:
        raise IndexFileError(f"{source} holds no statistics; {fix}")
    return out


# --------------------------------------------------------------------------------------------
# Normalizer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    """Unit conversion + clutter clipping + a transform + NaN policy for one archive.

    Build it with :func:`make_normalizer`. Calling it maps native values (any shape, NaN =
    no data) to float32 model inputs; :meth:`inverse` maps model outputs back to mm/h.
    Picklable.

    Attributes
    ----------
    transform : Transform
        The scaling, reading values of kind ``transform.kind`` (the working kind).
    kind : str
        What the archive stores (``"rate"``, ``"reflectivity"`` or ``"amount"``).
    to_work, from_work : callable or None
        Native values to the transform's input and back (``None``: no conversion).
    to_rate : callable or None
        Transform input to mm/h (``None``: already mm/h or not possible without time_step).
    clip_low, clip_high : float or None
        Bounds applied to the transform's input (from ``clip_max`` in mm/h; rates and
        amounts are also kept >= 0).
    fill_nan : float or None
        Output value of NaN inputs; ``None`` keeps NaN.
    mask : bool
        Whether :meth:`__call__` also returns the validity mask.

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
        """Normalise native values.

        Parameters
        ----------
        x : array_like
            Values in the archive's units, any shape; NaN = no data.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, numpy.ndarray)
            float32 values of the same shape, NaN-free unless ``fill_nan`` is None; with
            ``mask=True`` also a bool array, True where ``x`` had data.

        """
        arr = _as_float(x)
        work = self.to_work(arr) if self.to_work is not None else arr
        if self.clip_low is not None or self.clip_high is not None:
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
        """Map model-space values back to rain rate in mm/h (or to native units).

        Only the transform's invertible domain is restored (see each transform); filled
        NaN pixels come back as "no rain", clipped clutter as the clip value.

        Parameters
        ----------
        y : array_like
            Model-space values (e.g. a model's output), any shape.
        native : bool
            Return the archive's units (dBZ, mm per step, ...) instead of mm/h.

        Returns
        -------
        numpy.ndarray
            float32 array of the same shape.

        Raises
        ------
        ParameterError
            mm/h asked for an amount archive whose time step is unknown.

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
    """Build the :class:`Normalizer` of a variable.

    The transform reads the archive's values directly when it accepts their kind (after
    rates are brought to mm/h); otherwise the values are converted to rain rate in mm/h
    (Marshall-Palmer for dBZ, division by the step for amounts).

    Parameters
    ----------
    method : str
        ``"auto"`` (``ldcast`` for rates and amounts, ``mlcast_dbz`` for reflectivity) or a
        name from :func:`available_transforms`.
    standard_name, units : str or None
        CF attributes of the variable (see :func:`variable_kind`).
    time_step : numpy.timedelta64, datetime.timedelta, str or None
        Nominal step of the archive; needed to turn amounts into rates.
    clip_max : float or None
        Clutter clip in mm/h (default 300): larger rates (or the equivalent dBZ / amount per
        step) are set to it before scaling; negative rates and amounts become 0. ``None``
        disables clipping.
    fill_nan : float, "auto" or None
        Output value for NaN input; ``"auto"`` uses ``transform.fill_value`` (the image of no
        rain); ``None`` keeps NaN.
    mask : bool
        Also return a bool validity mask (True where the input had data).
    dbz_floor : float
        Reflectivity (dBZ) at or below which there is no rain, for dBZ <-> mm/h conversion.
    **params
        The transform's parameters (e.g. ``mean``/``std`` for ``fitted``).

    Returns
    -------
    Normalizer

    Raises
    ------
    ParameterError
        Unknown method or units, bad parameters, or a method that cannot read the variable
        (e.g. a rain-rate transform on amounts without ``time_step``).

    Examples
    --------
    >>> import numpy as np
    >>> norm = make_normalizer(standard_name="rainfall_flux", units="mm h-1")
    >>> norm.name
    'ldcast'
    >>> norm(np.array([np.nan, 10.0])).round(3)
    array([-3.121,  1.991], dtype=float32)

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
    """Map normalised values (e.g. model outputs) back to rain rate in mm/h.

    Takes the same arguments as :func:`make_normalizer`; clipping and NaN options do not
    matter for the inverse. With neither ``standard_name`` nor ``units`` the data are taken
    to be rain rates in mm/h.

    Parameters
    ----------
    y : array_like
        Normalised values, any shape.
    method : str
        The method used to normalise (``"auto"`` picks as :func:`make_normalizer` does).
    standard_name, units, time_step
        Describe the archive the values were normalised from.
    native : bool
        Return the archive's units instead of mm/h.
    **params
        The transform's parameters, as given when normalising.

    Returns
    -------
    numpy.ndarray
        float32 rain rate in mm/h (or native values).

    Examples
    --------
    >>> import numpy as np
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
