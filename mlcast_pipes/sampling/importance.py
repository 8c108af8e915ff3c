"""Importance samplers: ``importance`` (DGMR-style acceptance) and ``uniform``.

Both return an unbinned pool with per-tile weights.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.format import importance_column
from mlcast_pipes.sampling.base import (
    _LOOSEN_HINT,
    MIN_ACCEPTANCE,
    MIN_POOL_TILES,
    SamplingWarning,
    _finite_only,
    _int_param,
    _scalar_column,
    _tile_ids,
)
from mlcast_pipes.sampling.epoch import _TAG_KEEP, _TAG_SUBSET, per_tile_uniform
from mlcast_pipes.sampling.registry import register_sampler

__all__ = [
    "importance",
    "uniform",
]


@register_sampler("importance", "dgmr")
def importance(
    table: pd.DataFrame,
    *,
    seed: int,
    q_min: float = 1e-4,
    m: float = 0.1,
    s: float = 1.0,
) -> pd.DataFrame:
    """DGMR importance sampling: keep a tile with probability ``q = min(1, q_min + m * imp_s)``.

    ``imp_s`` is the tiling column ``nanmean(1 - exp(-R / s))`` (``imp_s1``, ...). Each tile
    draws its own seeded uniform and is kept iff it is <= q; ``weight`` holds q. DGMR uses
    ``q_min=1e-4, m=0.1, s=1``.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2, 3], "sum": [0.0, 1.0, 10.0, 100.0],
    ...                       "p99": [0.0, 0.3, 2.0, 40.0], "imp_s1": [0.0, 0.2, 0.6, 0.9]})
    >>> pool = importance(tiles, seed=0, q_min=0.0, m=1.0)
    >>> pool["source_tile_id"].tolist(), pool["weight"].tolist()
    ([1, 3], [0.2, 0.9])

    """
    sampler = "importance"
    for name, val, lo, hi, rule in (
        ("q_min", q_min, 0.0, 1.0, "in [0, 1]"),
        ("m", m, 0.0, math.inf, ">= 0"),
        ("s", s, 0.0, math.inf, "> 0"),
    ):
        if (
            isinstance(val, bool)
            or not isinstance(val, (int, float))
            or not (math.isfinite(val) and lo <= val <= hi)
            or (name == "s" and val == 0)
        ):
            raise ParameterError(f"importance: {name} must be a finite number {rule}, got {val!r}")
    column = importance_column(s)
    if column not in table.columns:
        stored = sorted(str(c) for c in table.columns if str(c).startswith("imp_s"))
        raise ParameterError(
            f"importance: the tiling index has no column {column!r} for s={s:g}; stored scales: "
            f"{', '.join(stored) or 'none'}. Re-run prepare so that it stores the importance "
            f"statistic for scale {s:g} mm/h, or pick a stored s"
        )
    ids, imp = _finite_only(
        _tile_ids(table, sampler),
        np.asarray(table[column].to_numpy(dtype=np.float64, na_value=np.nan)),
        column,
        sampler,
    )
    q = np.minimum(1.0, q_min + m * imp)
    u = per_tile_uniform(ids, seed, _TAG_KEEP)
    keep = u <= q
    n_kept = int(keep.sum())
    rate = n_kept / max(len(ids), 1)
    if n_kept and ((n_kept < MIN_POOL_TILES and rate < 0.5) or rate < MIN_ACCEPTANCE):
        warnings.warn(
            f"importance: kept {n_kept} of {len(ids)} tiles (acceptance {100 * rate:.2g}%, "
            f"q_min={q_min:g}, m={m:g}, s={s:g}); epochs will repeat these few tiles; fix: "
            f"{_LOOSEN_HINT['importance']}, e.g. q_min=0.1 or m=1",
            SamplingWarning,
            stacklevel=3,
        )
    pool = pd.DataFrame(
        {
            "source_tile_id": ids[keep],
            "scalar_value": imp[keep],
            "bin_id": np.full(int(keep.sum()), -1, dtype=np.int64),
            "weight": q[keep],
        }
    )
    pool.attrs = {
        "scalar": column,
        "acceptance_expected": float(q.sum()),
        "n_candidates": len(ids),
        "acceptance_rate": rate,
    }
    return pool


@register_sampler("uniform")
def uniform(
    table: pd.DataFrame,
    *,
    seed: int,
    n_tiles: int | None = None,
    aggregation: str | None = None,
) -> pd.DataFrame:
    """Every tile, or ``n_tiles`` of them drawn without replacement (seeded, order-independent).

    ``aggregation`` is copied to ``scalar_value`` for diagnostics.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2, 3], "sum": [0.0, 1.0, 10.0, 100.0],
    ...                       "p99": [0.0, 0.3, 2.0, 40.0], "imp_s1": [0.0, 0.2, 0.6, 0.9]})
    >>> uniform(tiles, seed=0, n_tiles=2)["source_tile_id"].tolist()
    [0, 3]

    """
    sampler = "uniform"
    ids = _tile_ids(table, sampler)
    if aggregation is None:
        values = np.full(len(ids), np.nan)
    else:
        values = _scalar_column(table, aggregation, sampler)
    keep = np.arange(len(ids))
    if n_tiles is not None:
        n_tiles = _int_param(n_tiles, "uniform: n_tiles", 1, " (or None for all tiles)")
        if n_tiles > len(ids):
            raise ParameterError(
                f"uniform: n_tiles={n_tiles} is more than the {len(ids)} tiles (drawn without "
                f"replacement); use n_tiles <= {len(ids)}, or None for all tiles"
            )
        u = per_tile_uniform(ids, seed, _TAG_SUBSET)
        keep = np.sort(np.argsort(u, kind="stable")[:n_tiles])
    return pd.DataFrame(
        {
            "source_tile_id": ids[keep],
            "scalar_value": values[keep],
            "bin_id": np.full(keep.size, -1, dtype=np.int64),
            "weight": np.ones(keep.size, dtype=np.float64),
        }
    )
