"""Transforms: the ``Transform`` base, its registry and the built-in scalings.

LDCast log, MLCast dBZ, log1p, identity and fitted mean/std, chosen by name.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias, cast

import numpy as np

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.transforms.rates import _as_float, dbz_to_rate, rate_to_dbz
from mlcast_pipes.transforms.units import ArrayF, Kind

__all__ = [
    "FittedTransform",
    "IdentityTransform",
    "LDCastTransform",
    "Log1pTransform",
    "MLCastDBZTransform",
    "ScaleTransform",
    "Transform",
    "available_transforms",
    "get_transform",
    "register_transform",
]


class Transform:
    """An invertible scaling of precipitation values, registered by name.

    Subclasses implement :meth:`forward` and :meth:`inverse` (float arrays, NaN kept, input
    untouched) and set ``accepts`` (kinds ``forward`` can read; others are converted to mm/h
    first when ``"rate"`` is accepted), ``kind`` (what this instance reads) and ``fill_value``
    (the output standing for NaN input, by default the image of no rain).

    Examples
    --------
    >>> t = get_transform("log1p")
    >>> t.kind, t.fill_value
    ('rate', 0.0)

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
    """Decorator registering a :class:`Transform` subclass (or a factory) under ``name``.

    A transform accepting several kinds must take a keyword ``kind``. Raises ParameterError for an
    empty name, ``"auto"`` or a name taken by another transform.

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

    Examples
    --------
    >>> {"fitted", "ldcast", "log1p", "mlcast_dbz", "scale"} <= set(available_transforms())
    True

    """
    return sorted(_REGISTRY)


def get_transform(name: str, **params: Any) -> Transform:
    """Build a registered transform; ParameterError for unknown names or rejected parameters.

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

    Invertible for R >= 0.1 mm/h; lower rates map to ``fill_value`` (about -3.12) and come back
    as 0.

    Examples
    --------
    >>> t = LDCastTransform()
    >>> x = t.forward(np.array([0.0, 1.0, 10.0]))
    >>> x.round(3), t.inverse(x).round(3)
    (array([-3.121,  0.097,  1.991]), array([ 0.,  1., 10.]))

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

    Rates are converted with Marshall-Palmer; ``kind="reflectivity"`` reads dBZ directly. Lossy
    outside 0-60 dBZ (about 0.036-205 mm/h); ``fill_value`` is -1 (0 dBZ).

    Examples
    --------
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
    """``x = log1p(R) / scale``, exactly invertible for R >= 0; ``fill_value`` 0.

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
    """Affine ``x = (v - offset) / scale`` of any kind; ``fill_value`` is the image of 0.

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
    """No scaling (NaN filling and clipping still apply in a Normalizer); ``fill_value`` 0.

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
    """Standardisation ``x = (R - mean) / std`` with statistics of the training data (mm/h).

    Give ``mean`` and ``std``, or ``stats_file`` (a ``{sampling_id}.stats.csv``) and, when it has
    several rows, ``variable``. ``fill_value`` is ``-mean / std`` (no rain).

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
            from mlcast_pipes.indexes.stats import read_stats_csv

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
