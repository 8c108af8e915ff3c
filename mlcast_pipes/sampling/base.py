"""Shared pieces of the samplers: pool columns, the warning class and parameter checks.

Imported by the sampler modules and the sampling index files.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes._checks import as_int
from mlcast_pipes.errors import DatasetError, ParameterError

__all__ = [
    "DOMINANT_SHARE",
    "LDCAST_BIN_EDGES",
    "MIN_ACCEPTANCE",
    "MIN_POOL_TILES",
    "POOL_COLUMNS",
    "SAMPLES_COLUMNS",
    "STAT_AGGREGATIONS",
    "SamplingWarning",
]


#: Columns every sample pool has (``weight`` is added as 1.0 when a sampler leaves it out).
POOL_COLUMNS: tuple[str, ...] = ("source_tile_id", "scalar_value", "bin_id", "weight")


#: Columns of ``{sampling_id}.samples.csv``, in file order.
SAMPLES_COLUMNS: tuple[str, ...] = (
    "sampled_tile_id",
    "source_tile_id",
    "scalar_value",
    "bin_id",
    "t_offset",
    "weight",
    "time_start",
    "t_start",
    "y_start",
    "x_start",
    "y_tile",
    "x_tile",
    "n_time_sample",
)


#: Per-tile statistics a scalar can be taken from (quantiles only when the tiling stored them).
STAT_AGGREGATIONS: tuple[str, ...] = (
    "sum",
    "mean",
    "max",
    "frac_wet",
    "p50",
    "p90",
    "p95",
    "p99",
    "p999",
)


_QUANTILE_RE = re.compile(r"^p\d+$")


#: LDCast's equal-frequency bin edges in mm/h: 10 edges, 11 bins, assigned with bisect-left.
LDCAST_BIN_EDGES: npt.NDArray[np.float64] = np.exp(np.linspace(np.log(0.2), np.log(50.0), 10))
LDCAST_BIN_EDGES.setflags(write=False)


_NAMED_EDGES = ("log", "linear", "quantile")


#: A tile expected to take more than this share of an epoch's draws (and at least twice its
#: share under a uniform draw of all tiles) is reported (:class:`SamplingWarning`): it is seen
#: again and again, e.g. a clutter tile alone in its bin.
DOMINANT_SHARE = 0.03


#: An importance pool with fewer tiles than this (keeping less than half of the tiles), or
#: keeping fewer than :data:`MIN_ACCEPTANCE` of the tiles, is reported: epochs would repeat a
#: handful of tiles.
MIN_POOL_TILES = 64


MIN_ACCEPTANCE = 0.005


# What to change when a sampler keeps too little or gives a few tiles too many draws: only
# parameters the sampler takes.
_FEWER_BINS_HINT = {
    "binnorm": "use fewer bins (n_scalar_total_bins) or bin_edges='quantile'",
    "ldcast": (
        "LDCast's bin edges are fixed: use another aggregation (e.g. 'p90'), or the binnorm "
        "sampler for bins that fit this archive"
    ),
}


_LOOSEN_HINT = {
    "importance": "raise q_min (floor probability) or m (slope), or lower s (rain-rate scale)",
    "uniform": "raise n_tiles, or None for every tile",
}


# Bins with at most this many rows are shuffled with vectorised hash keys (many cycles per epoch);
# bigger bins with numpy's generator (few cycles per epoch). Depends on the bin size only, so a
# cycle's permutation is the same whichever epoch asks for it.
_SMALL_BIN = 4096


class SamplingWarning(UserWarning):
    """A sampler could not use part of the tiles, or its pool would repeat a few tiles.

    Emitted where the pool is built (not by each loader worker): empty bins, tiles without a
    scalar, a tiny importance pool, tiles above :data:`DOMINANT_SHARE` of an epoch.

    Examples
    --------
    >>> import warnings
    >>> from mlcast_pipes.sampling import run_sampler
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "imp_s1": [np.nan, 0.2, 0.9]})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     pool = run_sampler("importance", tiles, seed=0, q_min=1.0)
    >>> print(caught[0].message)
    importance: 1 of 3 tiles have no finite imp_s1 (all pixels NaN?) and are left out of the
    pool; ...

    """


def _int_param(value: object, name: str, minimum: int, hint: str = "") -> int:
    """Check an integer parameter (see :func:`~mlcast_pipes._checks.as_int`)."""
    return as_int(name, value, minimum=minimum, hint=hint)


def _check_seed(value: object, name: str) -> int:
    return _int_param(value, name, 0)


def _check_n_time_sample(n_time_sample: object, window: int) -> int:
    n = _int_param(n_time_sample, "n_time_sample", 1)
    if n > window:
        raise ParameterError(
            f"n_time_sample={n} is longer than the tiles' window n_time_window={window}; use "
            f"n_time_sample <= {window} or tile with longer windows"
        )
    return n


def _scalar_column(table: pd.DataFrame, aggregation: str, sampler: str) -> npt.NDArray[np.float64]:
    """Return the per-tile scalar ``aggregation`` of a tiling table; errors say what exists."""
    if not isinstance(aggregation, str):
        raise ParameterError(
            f"{sampler}: aggregation must be a statistic name, one of "
            f"{', '.join(STAT_AGGREGATIONS)}"
        )
    stored_q = sorted((c for c in table.columns if _QUANTILE_RE.match(str(c))), key=str)
    if aggregation not in STAT_AGGREGATIONS and not _QUANTILE_RE.match(aggregation):
        raise ParameterError(
            f"{sampler}: unknown aggregation {aggregation!r}; known aggregations: "
            f"{', '.join(STAT_AGGREGATIONS)} (quantiles only if stored; this table stores "
            f"{', '.join(map(str, stored_q)) or 'none'})"
        )
    if aggregation not in table.columns:
        if _QUANTILE_RE.match(aggregation):
            raise ParameterError(
                f"{sampler}: quantile {aggregation!r} is not stored in the tiling index; stored "
                f"quantiles: {', '.join(map(str, stored_q)) or 'none'}. Use one of those or "
                "re-run prepare with that quantile in the statistics"
            )
        raise ParameterError(
            f"{sampler}: the tiling table has no column {aggregation!r} (it has "
            f"{', '.join(map(str, table.columns))}); re-run prepare to store the statistics"
        )
    return np.asarray(table[aggregation].to_numpy(dtype=np.float64, na_value=np.nan))


def _tile_ids(table: pd.DataFrame, sampler: str) -> npt.NDArray[Any]:
    if "tile_id" not in table.columns:
        raise ParameterError(
            f"{sampler}: the table has no 'tile_id' column; pass a tiling index table "
            f"(columns found: {', '.join(map(str, table.columns))})"
        )
    return np.asarray(table["tile_id"].to_numpy())


def _finite_only(
    ids: npt.NDArray[Any], values: npt.NDArray[np.float64], what: str, sampler: str
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    infinite = np.isinf(values)
    if infinite.any():
        shown = ", ".join(str(i) for i in ids[infinite][:5])
        raise DatasetError(
            f"{sampler}: {int(infinite.sum())} tile(s) have an infinite {what} (tile ids "
            f"{shown}): the archive holds infinite pixel values; fix: mask them to NaN (or clip "
            "them) in the archive, then rebuild the index with recompute=True"
        )
    ok = np.isfinite(values)
    if not ok.all():
        warnings.warn(
            f"{sampler}: {int((~ok).sum())} of {len(values)} tiles have no finite {what} "
            "(all pixels NaN?) and are left out of the pool; filter them in the tiling step "
            "(max NaN fraction) to silence this",
            SamplingWarning,
            stacklevel=4,
        )
    return ids[ok], values[ok]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _interval(
    lower: float | None, upper: float | None, lower_closed: bool, upper_closed: bool
) -> str:
    """Interval label such as ``[0.2, 0.37)``; None bounds print as -inf / inf (always open)."""
    left = "(-inf" if lower is None else ("[" if lower_closed else "(") + _fmt(lower)
    right = "inf)" if upper is None else _fmt(upper) + ("]" if upper_closed else ")")
    return f"{left}, {right}"


def _canonical(value: Any, name: str) -> Any:
    """JSON-ready canonical form: integral numbers as int, sequences as lists, dict keys sorted."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            return repr(f)
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    if isinstance(value, Mapping):
        return {
            str(k): _canonical(v, name) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, (list, tuple, np.ndarray)):
        return [
            _canonical(v, name)
            for v in (value.tolist() if isinstance(value, np.ndarray) else value)
        ]
    raise ParameterError(
        f"parameter {name}={value!r} ({type(value).__name__}) cannot be recorded in the index; "
        "use numbers, strings, None, or lists of them"
    )
