"""Binned samplers: ``binnorm`` (bins of a per-tile statistic, equal shares) and ``ldcast``.

Both return a pool with ``bin_id``; epochs draw the bins evenly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.sampling.base import (
    _FEWER_BINS_HINT,
    _NAMED_EDGES,
    LDCAST_BIN_EDGES,
    SamplingWarning,
    _finite_only,
    _fmt,
    _int_param,
    _interval,
    _scalar_column,
    _tile_ids,
)
from mlcast_pipes.sampling.registry import register_sampler

__all__ = [
    "binnorm",
    "ldcast",
]


def _finish_binned(
    ids: npt.NDArray[Any],
    values: npt.NDArray[np.float64],
    bins: npt.NDArray[np.int64],
    bin_info: list[dict[str, Any]],
    edges: Sequence[float],
    aggregation: str,
    sampler: str,
) -> pd.DataFrame:
    """Build a binned pool, warn about empty bins (they are then absent from the draw)."""
    counts = np.bincount(bins, minlength=len(bin_info))
    for info, n in zip(bin_info, counts, strict=True):
        info["n_tiles"] = int(n)
    empty = [info for info in bin_info if info["n_tiles"] == 0]
    if empty:
        desc = ", ".join(f"{b['bin_id']} {b['label']}" for b in empty)
        warnings.warn(
            f"{sampler}: {len(empty)} of {len(bin_info)} bins hold no tile and are left out "
            f"of the draw: {desc}; {_FEWER_BINS_HINT.get(sampler, 'use fewer bins')} to avoid "
            "this",
            SamplingWarning,
            stacklevel=4,
        )
    pool = pd.DataFrame(
        {
            "source_tile_id": ids,
            "scalar_value": values,
            "bin_id": bins.astype(np.int64),
            "weight": np.ones(len(ids), dtype=np.float64),
        }
    )
    pool.attrs = {
        "scalar": aggregation,
        "bins": bin_info,
        "bin_edges": [float(e) for e in edges],
    }
    return pool


def _wet_edges(
    wet: npt.NDArray[np.float64], n_wet: int, method: str, has_dry_bin: bool
) -> npt.NDArray[np.float64]:
    distinct = np.unique(wet)
    if n_wet > distinct.size:
        raise ParameterError(
            f"binnorm: {n_wet} {'wet ' if has_dry_bin else ''}bins for only {distinct.size} "
            f"distinct {'wet ' if has_dry_bin else ''}scalar values; use at most "
            f"n_scalar_total_bins={distinct.size + int(has_dry_bin)} or another aggregation"
        )
    lo, hi = float(distinct[0]), float(distinct[-1])
    if method == "log":
        if lo <= 0:
            raise ParameterError(
                f"binnorm: log bin edges need positive scalar values, the smallest is {lo}; "
                "use bin_edges='linear' or 'quantile', or set dry_threshold=0 to bin dry tiles "
                "apart"
            )
        return np.geomspace(lo, hi, n_wet + 1)
    if method == "linear":
        return np.linspace(lo, hi, n_wet + 1)
    return np.quantile(wet, np.linspace(0.0, 1.0, n_wet + 1))


@register_sampler("binnorm")
def binnorm(
    table: pd.DataFrame,
    *,
    seed: int,
    aggregation: str = "sum",
    n_scalar_total_bins: int | None = None,
    bin_edges: str | Sequence[float] = "log",
    dry_threshold: float | None = 0.0,
) -> pd.DataFrame:
    """Bin a per-tile scalar so that every bin can be drawn equally often (bin normalisation).

    Tiles with ``aggregation`` <= ``dry_threshold`` form the dry bin 0 (None: none); wet tiles
    go to bins 1, 2, ... by ``bin_edges`` (``"log"``, ``"linear"``, ``"quantile"`` or explicit
    edges); ``n_scalar_total_bins`` counts the dry bin. Empty bins give a SamplingWarning.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2, 3], "sum": [0.0, 1.0, 10.0, 100.0],
    ...                       "p99": [0.0, 0.3, 2.0, 40.0], "imp_s1": [0.0, 0.2, 0.6, 0.9]})
    >>> binnorm(tiles, seed=0, n_scalar_total_bins=3)["bin_id"].tolist()  # dry, then 2 wet bins
    [0, 1, 2, 2]

    """
    sampler = "binnorm"
    if dry_threshold is not None and not (
        isinstance(dry_threshold, (int, float))
        and math.isfinite(dry_threshold)
        and dry_threshold >= 0
    ):
        raise ParameterError(
            "binnorm: dry_threshold must be a finite number >= 0 (mm/h) or None, got "
            f"{dry_threshold!r}"
        )
    has_dry = dry_threshold is not None
    explicit: npt.NDArray[np.float64] | None = None
    if isinstance(bin_edges, str):
        if bin_edges not in _NAMED_EDGES:
            raise ParameterError(
                f"binnorm: unknown bin_edges {bin_edges!r}; use one of {', '.join(_NAMED_EDGES)} "
                "or an increasing sequence of edges"
            )
    else:
        try:
            explicit = np.asarray(bin_edges, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ParameterError(
                f"binnorm: bin_edges must be 'log', 'linear', 'quantile' or a sequence of numbers, "
                f"got {bin_edges!r}"
            ) from exc
        if explicit.ndim != 1 or explicit.size < 2 or not np.all(np.isfinite(explicit)):
            raise ParameterError(
                f"binnorm: explicit bin_edges need at least 2 finite numbers, got {bin_edges!r}"
            )
        if not np.all(np.diff(explicit) > 0):
            raise ParameterError(
                "binnorm: explicit bin_edges must be strictly increasing, got "
                f"{explicit.tolist()}; sort them and drop repeated values"
            )
    implied = None if explicit is None else explicit.size - 1 + int(has_dry)
    if n_scalar_total_bins is None:
        n_total = 10 if implied is None else implied
    else:
        n_total = _int_param(
            n_scalar_total_bins,
            "binnorm: n_scalar_total_bins",
            2,
            "; use at least 2 bins (one bin would be the plain uniform sampler)",
        )
        if implied is not None and n_total != implied:
            raise ParameterError(
                f"binnorm: the {explicit.size if explicit is not None else 0} explicit bin_edges "
                f"make {implied} bins{' (dry bin included)' if has_dry else ''}, but "
                f"n_scalar_total_bins={n_total}; pass n_scalar_total_bins={implied} or None"
            )
    ids, values = _finite_only(
        _tile_ids(table, sampler), _scalar_column(table, aggregation, sampler), aggregation, sampler
    )
    n_wet = n_total - int(has_dry)
    dry = (
        values <= dry_threshold if dry_threshold is not None else np.zeros(values.shape, dtype=bool)
    )
    if explicit is not None:
        edges = explicit
    else:
        edges = _wet_edges(values[~dry], n_wet, str(bin_edges), has_dry)
    bins = np.zeros(values.shape, dtype=np.int64)
    wet_bins = np.searchsorted(edges[1:-1], values[~dry], side="right")
    bins[~dry] = wet_bins + int(has_dry)
    info: list[dict[str, Any]] = []
    if dry_threshold is not None:
        info.append(
            {
                "bin_id": 0,
                "lower": None,
                "upper": float(dry_threshold),
                "label": f"dry (<= {_fmt(dry_threshold)})",
            }
        )
    for i in range(n_wet):
        lower: float | None = float(edges[i])
        upper: float | None = float(edges[i + 1])
        lower_closed = True
        if explicit is not None and i == 0:  # values below the first edge land here too
            lower = None if dry_threshold is None else float(dry_threshold)
            lower_closed = False
        if explicit is not None and i == n_wet - 1:
            upper = None
        label = _interval(lower, upper, lower_closed, i == n_wet - 1)
        info.append({"bin_id": i + int(has_dry), "lower": lower, "upper": upper, "label": label})
    return _finish_binned(ids, values, bins, info, edges.tolist(), aggregation, sampler)


@register_sampler("ldcast")
def ldcast(table: pd.DataFrame, *, seed: int, aggregation: str = "p99") -> pd.DataFrame:
    """LDCast's preset: bin ``aggregation`` (the tile's p99) on :data:`LDCAST_BIN_EDGES`.

    Bin ``bisect_left(edges, value)``: 0 is <= 0.2 mm/h (dry included), 10 is > 50 mm/h. LDCast
    bins each 32x32 patch and step; here a tile has one scalar and one bin.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2, 3], "sum": [0.0, 1.0, 10.0, 100.0],
    ...                       "p99": [0.0, 0.3, 2.0, 40.0], "imp_s1": [0.0, 0.2, 0.6, 0.9]})
    >>> ldcast(tiles, seed=0)["bin_id"].tolist()
    [0, 1, 4, 9]

    """
    sampler = "ldcast"
    ids, values = _finite_only(
        _tile_ids(table, sampler), _scalar_column(table, aggregation, sampler), aggregation, sampler
    )
    edges = LDCAST_BIN_EDGES
    bins = np.searchsorted(edges, values, side="left").astype(np.int64)
    info: list[dict[str, Any]] = []
    for i in range(edges.size + 1):
        lower = None if i == 0 else float(edges[i - 1])
        upper = None if i == edges.size else float(edges[i])
        info.append(
            {
                "bin_id": i,
                "lower": lower,
                "upper": upper,
                "label": _interval(lower, upper, False, True),
            }
        )
    return _finish_binned(ids, values, bins, info, edges.tolist(), aggregation, sampler)
