"""Argument checks shared by the pipeline steps (one place per step calls these)."""

from __future__ import annotations

import operator
from typing import Any

from mlcast_pipes.errors import ParameterError

__all__ = [
    "as_int",
]


def as_int(name: str, value: Any, *, minimum: int | None = None, hint: str = "") -> int:
    """``value`` as an ``int`` (Python or numpy integer, or a float with no fraction).

    The one integer check of the package's parameters. Raises ParameterError, naming
    ``name`` and the fix, for anything else (``2.5``, ``"4"``, ``True``, a list) and for
    values below ``minimum``; ``hint`` follows the value in the message.

    Examples
    --------
    >>> as_int("batch_size", 4.0, minimum=1)
    4
    >>> as_int("batch_size", 2.5, minimum=1)
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.ParameterError: batch_size must be an integer >= 1, got 2.5 (float);
    fix: pass a whole number, e.g. batch_size=1

    """
    if isinstance(value, bool):
        number: int | None = None
    else:
        try:
            number = operator.index(value)
        except TypeError:
            number = int(value) if isinstance(value, float) and value.is_integer() else None
    bound = f" >= {minimum}" if minimum is not None else ""
    if number is None:
        raise ParameterError(
            f"{name} must be an integer{bound}, got {value!r} ({type(value).__name__}){hint}; "
            f"fix: pass a whole number, e.g. {name}={max(minimum or 0, 1)}"
        )
    if minimum is not None and number < minimum:
        raise ParameterError(
            f"{name} must be an integer{bound}, got {number}{hint}; "
            f"fix: {name} must be{bound}, pass {name}={minimum} or more"
        )
    return number
