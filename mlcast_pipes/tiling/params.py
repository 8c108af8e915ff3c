"""Tiling parameters and the tiling id that names an index made with them.

A TilingParams fixes tile size, stride, window length and the statistics columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcast_pipes._checks import as_int
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.format import (
    format_number,
    importance_column,
    quantile_column,
    sanitize_id,
    short_hash,
    tiling_columns,
)
from mlcast_pipes.transforms import DEFAULT_CLIP_MAX

__all__ = ["DEFAULT_IMPORTANCE_SCALES", "DEFAULT_QUANTILES", "TilingParams", "tiling_id"]


DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)
DEFAULT_IMPORTANCE_SCALES: tuple[float, ...] = (1.0,)


# ================================================================================================
# parameters
# ================================================================================================
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
    items = tuple(as_int(name, v) for v in value)
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

    ``stride`` ``(t, y, x)`` defaults to ``(n_time_window, *tile_size)``; a tile is kept if its
    NaN fraction is at most ``max_nan_fraction``; ``wet_threshold``, ``importance_scales`` and
    ``clip_max`` (the cap ``.normalize()`` applies; None: none) are in mm/h.

    Examples
    --------
    >>> params = TilingParams(n_time_window=4, tile_size=(64, 64), stride=(2, 32, 32))
    >>> params.effective_stride, params.cell_size, params.columns[-2:]
    ((2, 32, 32), (32, 32), ['p999', 'imp_s1'])

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
        n = as_int("n_time_window", self.n_time_window)
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
        """Check against ``n_times`` frames of ``height x width`` (ParameterError if too small)."""
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

    Suffixes: ``.s{t}x{y}x{x}`` (stride), ``.nan{f}``, ``.wet{r}``, ``.q{hash}`` (quantiles),
    ``.imp{hash}`` (importance scales), ``.clip{r}`` or ``.clipnone``; filename-safe.

    Examples
    --------
    >>> params = TilingParams(n_time_window=4, tile_size=(64, 64), stride=(2, 32, 32))
    >>> tiling_id("radar", params)
    'radar.64x64.4.s2x32x32'

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
