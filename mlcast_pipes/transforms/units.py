"""Units and variable kinds: one table of unit spellings, their kind and scale.

Serves both archive validation and the conversions to rain rate.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

from mlcast_pipes.errors import ParameterError

__all__ = [
    "KINDS",
    "Kind",
    "canonical_units",
    "known_units",
    "units_kind",
    "variable_kind",
]


Kind: TypeAlias = Literal["rate", "reflectivity", "amount"]
"""What a variable measures: rain rate, radar reflectivity (dBZ) or rain amount per time step."""


TimeStep: TypeAlias = "np.timedelta64 | _dt.timedelta | str"


ArrayF: TypeAlias = npt.NDArray[np.floating[Any]]


KINDS: tuple[Kind, ...] = get_args(Kind)


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
    """Reduce a spelling of precipitation units to its key in the units table, or None.

    Examples
    --------
    >>> [canonical_units(u) for u in ["mm/hr", "mm h^-1", "kg/m2/s", "furlongs"]]
    ['mm h-1', 'mm h-1', 'kg m-2 s-1', None]

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
    """The canonical units the conversions understand (see :func:`canonical_units`).

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
    """``"rate"``, ``"reflectivity"`` or ``"amount"`` from a CF standard name and units.

    An unknown standard name defers to the units. Raises ParameterError for unknown units, units
    that contradict the name, or nothing to decide from.

    Examples
    --------
    >>> variable_kind("rainfall_flux", "mm h-1"), variable_kind(None, "dBZ")
    ('rate', 'reflectivity')

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
