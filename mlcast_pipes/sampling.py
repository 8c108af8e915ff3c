"""Samplers (a registry chosen by name), seeded epoch drawing, and the sampling index files.

Core of the sampling step: turns a tiling index table into a sample pool, draws epochs from it.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes.errors import DatasetError, IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.index import (
    CSV_SUFFIX,
    SIDECAR_SUFFIX,
    VerifyMode,
    importance_column,
    index_paths,
    read_index_table,
    sanitize_id,
    short_hash,
    sidecar_path,
    utc_now_iso,
    validate_index,
    write_index,
)

__all__ = [
    "DOMINANT_SHARE",
    "LDCAST_BIN_EDGES",
    "MIN_ACCEPTANCE",
    "MIN_POOL_TILES",
    "POOL_COLUMNS",
    "SAMPLES_COLUMNS",
    "STAT_AGGREGATIONS",
    "SamplingIndex",
    "SamplingWarning",
    "assign_time_offsets",
    "available_samplers",
    "build_sampling_index",
    "draw_epoch",
    "epoch_shares",
    "get_sampler",
    "load_community_csv",
    "load_community_stats",
    "load_sampling_index",
    "per_tile_uniform",
    "register_sampler",
    "resolve_sampler_params",
    "run_sampler",
    "sampler_name",
    "sampling_id",
    "write_sampling_index",
]

SamplerFn = Callable[..., pd.DataFrame]
F = TypeVar("F", bound=SamplerFn)

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

#: Position columns a tiling table must have to build a sampling index.
_TILING_POSITION_COLUMNS: tuple[str, ...] = (
    "tile_id",
    "time_start",
    "t_start",
    "y_start",
    "x_start",
    "n_time_window",
    "y_tile",
    "x_tile",
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

# Stream tags keep the random streams derived from one seed apart.
_TAG_KEEP = 1
_TAG_OFFSET = 2
_TAG_SUBSET = 3
_TAG_BIN_ORDER = 11
_TAG_CYCLE = 12
_TAG_EPOCH = 13
# Bins with at most this many rows are shuffled with vectorised hash keys (many cycles per epoch);
# bigger bins with numpy's generator (few cycles per epoch). Depends on the bin size only, so a
# cycle's permutation is the same whichever epoch asks for it.
_SMALL_BIN = 4096


class SamplingWarning(UserWarning):
    """A sampler could not use part of the tiles, or its pool would repeat a few tiles.

    Raised for empty bins, tiles without a scalar, a tiny importance pool or acceptance rate,
    and tiles expected to take more than :data:`DOMINANT_SHARE` of an epoch's draws. Sampling
    warnings are emitted where the pool is built (by ``prepare`` or the main process), not by
    each loader worker.

    Examples
    --------
    A tile whose importance statistic is NaN (all its pixels NaN) is left out, with a warning:

    >>> import warnings
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "imp_s1": [np.nan, 0.2, 0.9]})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     pool = run_sampler("importance", tiles, seed=0, q_min=1.0)
    >>> [w.category.__name__ for w in caught]
    ['SamplingWarning']
    >>> print(caught[0].message)
    importance: 1 of 3 tiles have no finite imp_s1 (all pixels NaN?) and are left out of the
    pool; ...
    >>> pool["source_tile_id"].tolist()
    [1, 2]

    """


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, SamplerFn] = {}
_ALIASES: dict[str, str] = {}


def register_sampler(name: str, *aliases: str) -> Callable[[F], F]:
    """Register a sampler function under ``name`` (and optional aliases).

    The function has the signature ``f(table, *, seed, **params) -> pandas.DataFrame``: it takes
    a tiling index table and returns the sample pool, with columns ``source_tile_id``,
    ``scalar_value``, ``bin_id`` (-1 for unbinned samplers) and optionally ``weight``. Its own
    parameters are keyword-only with defaults; they are validated and recorded by name. It may
    describe its bins in ``pool.attrs["bins"]`` (list of dicts with ``bin_id``, ``lower``,
    ``upper``, ``label``) and ``pool.attrs["bin_edges"]``.

    Parameters
    ----------
    name : str
        The sampler's name (lowercase letters, digits, ``_``).
    *aliases : str
        Other names that select the same sampler.

    Returns
    -------
    callable
        A decorator returning the function unchanged.

    Registering again a function of the same module and name replaces it (re-running a notebook
    cell works); another function under a taken name is an error.

    Raises
    ------
    ParameterError
        The name is taken or malformed, or the function lacks a keyword-only ``seed``.

    Examples
    --------
    >>> @register_sampler("every_other_doc_example")
    ... def every_other(table, *, seed):
    ...     rows = table.iloc[::2]
    ...     return pd.DataFrame({"source_tile_id": rows["tile_id"], "scalar_value": 0.0,
    ...                          "bin_id": -1})
    >>> "every_other_doc_example" in available_samplers()
    True

    """

    def decorator(func: F) -> F:
        names = (name, *aliases)
        for n in names:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", n):
                raise ParameterError(
                    f"sampler name {n!r} must be lowercase letters, digits and '_' (it becomes "
                    "part of file names and of a datapipe functional); choose another name"
                )
            if n in _REGISTRY or n in _ALIASES:
                old = _REGISTRY[sampler_name(n)]
                if (old.__module__, old.__qualname__) != (func.__module__, func.__qualname__):
                    raise ParameterError(
                        f"sampler name {n!r} is already registered (to {old.__module__}."
                        f"{old.__qualname__}); choose another name"
                    )
        sig = inspect.signature(func)
        seed_param = sig.parameters.get("seed")
        if seed_param is None or seed_param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ParameterError(
                f"sampler function {func.__qualname__} must take a keyword-only 'seed' "
                "argument: def f(table, *, seed, **params)"
            )
        _REGISTRY[name] = func
        for alias in aliases:
            _ALIASES[alias] = name
        return func

    return decorator


def available_samplers() -> list[str]:
    """Names (and aliases) of the registered samplers, sorted.

    Returns
    -------
    list of str

    Examples
    --------
    >>> {"binnorm", "ldcast", "importance", "dgmr", "uniform"} <= set(available_samplers())
    True

    """
    return sorted([*_REGISTRY, *_ALIASES])


def sampler_name(name: str) -> str:
    """Return the canonical name of a sampler (``"dgmr"`` -> ``"importance"``).

    Parameters
    ----------
    name : str
        Sampler name or alias.

    Returns
    -------
    str
        The name the sampler is registered under.

    Raises
    ------
    ParameterError
        No sampler has this name; the message lists the known ones.

    Examples
    --------
    >>> sampler_name("dgmr"), sampler_name("ldcast")
    ('importance', 'ldcast')
    >>> sampler_name("nope")
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.ParameterError: unknown sampler 'nope'; known samplers: ...

    """
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ParameterError(
        f"unknown sampler {name!r}; known samplers: {', '.join(available_samplers())} "
        "(add one with @register_sampler)"
    )


def get_sampler(name: str) -> SamplerFn:
    """Return the sampler function registered under ``name`` or an alias.

    Parameters
    ----------
    name : str
        Sampler name or alias.

    Returns
    -------
    callable
        ``f(table, *, seed, **params) -> pandas.DataFrame`` (see :func:`register_sampler`).

    Raises
    ------
    ParameterError
        No sampler has this name; the message lists the known ones.

    Examples
    --------
    >>> importance = get_sampler("dgmr")
    >>> importance.__name__
    'importance'
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "imp_s1": [0.0, 0.5, 1.0]})
    >>> pool = importance(tiles, seed=0, q_min=1.0)  # q_min=1 keeps every tile
    >>> pool["source_tile_id"].tolist(), pool["weight"].tolist()
    ([0, 1, 2], [1.0, 1.0, 1.0])

    """
    return _REGISTRY[sampler_name(name)]


def resolve_sampler_params(method: str, **params: Any) -> dict[str, Any]:
    """All parameters of a sampler call: the given ones over the function's defaults.

    Parameters
    ----------
    method : str
        Sampler name or alias.
    **params
        The sampler's parameters (not ``seed``).

    Returns
    -------
    dict
        Every parameter of the sampler, in canonical JSON-ready form (integral numbers as int,
        sequences as lists), sorted by name.

    Raises
    ------
    ParameterError
        A parameter is not one of the sampler's, or a required one is missing.

    Examples
    --------
    >>> resolve_sampler_params("dgmr", s=1.0)
    {'m': 0.1, 'q_min': 0.0001, 's': 1}
    >>> resolve_sampler_params("uniform", n_tiles=10.0)
    {'aggregation': None, 'n_tiles': 10}

    """
    func = get_sampler(method)
    accepted = {
        p.name: p
        for p in inspect.signature(func).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed"
    }
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ParameterError(
            f"sampler {sampler_name(method)!r} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(sorted(accepted)) or '(none)'}"
        )
    resolved: dict[str, Any] = {}
    for pname, p in sorted(accepted.items()):
        if pname in params:
            resolved[pname] = _canonical(params[pname], pname)
        elif p.default is not inspect.Parameter.empty:
            resolved[pname] = _canonical(p.default, pname)
        else:
            raise ParameterError(
                f"sampler {sampler_name(method)!r} needs the parameter {pname!r}; pass {pname}=..."
            )
    if sampler_name(method) == "community":
        resolved = _community_file_params(resolved)
    return resolved


def run_sampler(method: str, table: pd.DataFrame, *, seed: int, **params: Any) -> pd.DataFrame:
    """Run a registered sampler on a tiling table and check the pool it returns.

    Parameters
    ----------
    method : str
        Sampler name or alias.
    table : pandas.DataFrame
        Tiling index table (one row per tile).
    seed : int
        Non-negative seed.
    **params
        The sampler's parameters.

    Returns
    -------
    pandas.DataFrame
        The pool: ``source_tile_id`` (int64), ``scalar_value`` (float64), ``bin_id`` (int64),
        ``weight`` (float64), with a fresh RangeIndex. ``attrs`` holds ``sampler``, ``params``
        and, for binned samplers, ``bins`` and ``bin_edges``.

    Raises
    ------
    ParameterError
        Bad parameters, or the sampler kept no tile.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": range(6), "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0]})
    >>> pool = run_sampler("binnorm", tiles, seed=0, aggregation="mean", n_scalar_total_bins=3)
    >>> pool["bin_id"].tolist()
    [0, 0, 1, 1, 2, 2]
    >>> [b["label"] for b in pool.attrs["bins"]]
    ['dry (<= 0)', '[0.5, 2)', '[2, 8]']
    >>> len(run_sampler("uniform", tiles, seed=0, n_tiles=4))
    4

    """
    _check_seed(seed, "seed")
    name = sampler_name(method)
    resolved = resolve_sampler_params(name, **params)
    func = _REGISTRY[name]
    pool = func(table, seed=seed, **params)
    missing = [c for c in POOL_COLUMNS[:3] if c not in pool.columns]
    if missing:
        raise ParameterError(
            f"sampler {name!r} returned a pool without the column(s) {', '.join(missing)}; "
            "a sampler must return source_tile_id, scalar_value and bin_id"
        )
    attrs = dict(pool.attrs)
    out = pd.DataFrame(
        {
            "source_tile_id": pool["source_tile_id"].to_numpy(),
            "scalar_value": pool["scalar_value"].to_numpy(dtype=np.float64),
            "bin_id": pool["bin_id"].to_numpy(dtype=np.int64),
            "weight": (
                pool["weight"].to_numpy(dtype=np.float64)
                if "weight" in pool.columns
                else np.ones(len(pool), dtype=np.float64)
            ),
        }
    )
    if out.empty:
        hint = _LOOSEN_HINT.get(name, "loosen its parameters")
        raise ParameterError(
            f"sampler {name!r} kept none of the {len(table)} tiles with {resolved}; {hint}, or "
            "use more tiles"
        )
    attrs.update({"sampler": name, "params": resolved})
    out.attrs = attrs
    _warn_dominant(out, table, name)
    return out


def epoch_shares(pool: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Expected share of an epoch's draws each pool row gets (as :func:`draw_epoch` draws).

    Binned pools (more than one bin id >= 0) draw every bin equally often, so a row of a bin
    holding ``k`` rows gets ``1 / (n_bins * k)``; rows with a negative bin id are never drawn.
    Other pools draw every row equally often.

    Examples
    --------
    >>> epoch_shares(pd.DataFrame({"bin_id": [0, 0, 0, 1]})).tolist()
    [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]

    """
    n = len(pool)
    if n == 0:
        return np.zeros(0)
    if "bin_id" not in pool.columns:
        return np.full(n, 1.0 / n)
    bins = np.asarray(pool["bin_id"].to_numpy(), dtype=np.int64)
    labels, counts = np.unique(bins[bins >= 0], return_counts=True)
    if labels.size <= 1:
        return np.full(n, 1.0 / n)
    out = np.zeros(n)
    pos = np.searchsorted(labels, bins[bins >= 0])
    out[bins >= 0] = 1.0 / (labels.size * counts[pos])
    return out


def _warn_dominant(pool: pd.DataFrame, table: pd.DataFrame, sampler: str) -> None:
    """Warn when tiles are expected to take more than DOMINANT_SHARE of an epoch each."""
    shares = epoch_shares(pool)
    # a tiny archive gives every tile a large share whatever the sampler: report only tiles
    # drawn at least twice as often as a uniform draw over the whole tiling would draw them
    heavy = np.flatnonzero((shares > DOMINANT_SHARE) & (shares >= 2.0 / max(len(table), 1)))
    if heavy.size == 0:
        return
    heavy = heavy[np.argsort(-shares[heavy], kind="stable")]
    ids = pool["source_tile_id"].to_numpy()
    clip: dict[int, int] = {}
    if "clip_count" in table.columns and "tile_id" in table.columns:
        sel = pd.Index(table["tile_id"]).get_indexer(ids[heavy[:3]])
        counts = table["clip_count"].to_numpy()
        clip = {
            int(ids[h]): int(counts[i])
            for h, i in zip(heavy[:3], sel, strict=True)
            if i >= 0 and counts[i] > 0
        }
    scalar = pool.attrs.get("scalar") or "scalar"
    values = pool["scalar_value"].to_numpy(dtype=np.float64)
    desc = ", ".join(
        f"tile {int(ids[h])} ({100 * shares[h]:.1f}%, {scalar} {_fmt(float(values[h]))}"
        + (f", {clip[int(ids[h])]} pixels capped" if clip.get(int(ids[h])) else "")
        + ")"
        for h in heavy[:3]
    )
    more = f" and {heavy.size - 3} more" if heavy.size > 3 else ""
    if pool["bin_id"].max() >= 0 and len(np.unique(pool["bin_id"][pool["bin_id"] >= 0])) > 1:
        fix = _FEWER_BINS_HINT.get(sampler, "use fewer bins")
        why = "they sit in bins of very few tiles"
    else:
        fix = _LOOSEN_HINT.get(sampler, "loosen the sampler's parameters")
        why = f"the pool holds only {len(pool)} tiles"
    if clip:
        fix += "; capped pixels point to clutter: check the tiling's clip_max (mm/h)"
    warnings.warn(
        f"{sampler}: {heavy.size} tile(s) would each take more than "
        f"{100 * DOMINANT_SHARE:g}% of an epoch's draws ({desc}{more}): {why}, so an epoch "
        f"repeats them; fix: {fix}",
        SamplingWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------
# Random streams
# --------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser (wrapping uint64 arithmetic, array in, array out)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _as_u64(value: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    arr = np.asarray(value)
    if arr.dtype == np.uint64:
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64).view(np.uint64)
    if arr.dtype == object and arr.ndim == 0 and isinstance(arr.item(), int):
        return np.asarray(arr.item() % 2**64, dtype=np.uint64)
    raise ParameterError(f"expected integer keys for a random stream, got dtype {arr.dtype}")


def _hash_u64(*keys: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Hash integer keys (broadcast together) to uint64, one independent value per key tuple."""
    u64 = [_as_u64(k) for k in keys]
    shape = np.broadcast_shapes(*(k.shape for k in u64))
    arrays = np.broadcast_arrays(*[np.atleast_1d(k) for k in u64])  # no 0-d: no scalar warnings
    h = _mix64(np.array(arrays[0], dtype=np.uint64, copy=True))
    for k in arrays[1:]:
        h = _mix64(h ^ _mix64(np.asarray(k, dtype=np.uint64)))
    return h.reshape(shape)


def _tile_keys(tile_ids: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    arr = np.asarray(tile_ids)
    if arr.dtype.kind in "iu":
        return _as_u64(arr)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return _as_u64(arr.astype(np.int64))
    # Strings or other labels: pandas' stable hash (fixed key), identical across runs.
    hashed = pd.util.hash_array(np.asarray(arr.astype(str), dtype=object))
    return np.asarray(hashed, dtype=np.uint64)


def per_tile_uniform(
    tile_ids: npt.ArrayLike, seed: int, stream: int = 0
) -> npt.NDArray[np.float64]:
    """One uniform number in [0, 1) per tile, from an independent stream per (seed, tile_id).

    Counter-based (a SplitMix64 hash of seed, stream and tile id), so it is vectorised, does not
    depend on the order or number of tiles, and differs between tiles (unlike one generator
    seeded identically for every tile).

    Parameters
    ----------
    tile_ids : array_like
        Integer tile ids (other labels are hashed by their string form).
    seed : int
        Non-negative seed.
    stream : int
        Separates uses of the same seed (keep/drop, sub-window offset, ...).

    Returns
    -------
    numpy.ndarray of float64
        Same shape as ``tile_ids``.

    Examples
    --------
    >>> u = per_tile_uniform([0, 1, 2], seed=0)
    >>> bool(((u >= 0) & (u < 1)).all()) and len(set(u.tolist())) == 3
    True

    """
    _check_seed(seed, "seed")
    h = _hash_u64(seed, stream, _tile_keys(tile_ids))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _int_param(value: object, name: str, minimum: int, hint: str = "") -> int:
    """Check an integer parameter (bools and floats refused) and return it as int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return int(value)


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


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


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

    Tiles with scalar <= ``dry_threshold`` form the dry bin (``bin_id`` 0); the other ("wet")
    tiles are split into the remaining bins (``bin_id`` 1, 2, ...). Wet bins are left-closed,
    ``[e_i, e_{i+1})``, the last one closed; with explicit edges, values below the first or
    above the last edge fall in the first or last wet bin. Empty bins raise a
    :class:`SamplingWarning` naming them and are absent from the draw.

    Parameters
    ----------
    table : pandas.DataFrame
        Tiling index table with ``tile_id`` and the statistic column.
    seed : int
        Unused (binning is deterministic); part of the common signature.
    aggregation : str
        The scalar: ``"sum"``, ``"mean"``, ``"max"``, ``"frac_wet"`` or a stored quantile
        (``"p50"``, ``"p90"``, ``"p95"``, ``"p99"``, ``"p999"``).
    n_scalar_total_bins : int, optional
        Total number of bins, the dry bin included. None: 10 for named edges; with explicit
        edges, ``len(bin_edges) - 1`` plus the dry bin (a given value must agree).
    bin_edges : {"log", "linear", "quantile"} or sequence of float
        How to place the wet bins between the smallest and largest wet scalar (geometric,
        arithmetic, or equal-count), or explicit strictly increasing edges of the wet bins.
    dry_threshold : float or None
        Scalars <= this (mm/h, default 0: exactly dry) go to the dry bin; None: no dry bin.

    Returns
    -------
    pandas.DataFrame
        The pool (``source_tile_id``, ``scalar_value``, ``bin_id``, ``weight`` = 1).

    Raises
    ------
    ParameterError
        Unknown aggregation or edge method, fewer than 2 bins, more bins than distinct values,
        non-increasing explicit edges, disagreeing ``n_scalar_total_bins``.

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
    """LDCast's equal-frequency preset: bin the tile's 99th percentile on fixed edges.

    Bins are ``bisect_left(LDCAST_BIN_EDGES, value)``: bin 0 is ``value <= 0.2`` mm/h (dry
    included), bin ``i`` is ``(edge[i-1], edge[i]]``, bin 10 is ``value > 50`` mm/h. LDCast
    computes the percentile per 32x32 patch and time step and lets a sample join every bin one of
    its patches falls in; here a tile has one scalar (its window's percentile) and one bin.

    Parameters
    ----------
    table : pandas.DataFrame
        Tiling index table with ``tile_id`` and the statistic column.
    seed : int
        Unused (binning is deterministic).
    aggregation : str
        The scalar (default ``"p99"``, as in LDCast).

    Returns
    -------
    pandas.DataFrame
        The pool with ``bin_id`` in 0..10.

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

    ``imp_s`` is the tile's ``nanmean(1 - exp(-R / s))``, the tiling index column named by
    :func:`mlcast_pipes.index.importance_column` (``imp_s1``, ``imp_s0_5``, ...). Each tile
    draws its own uniform ``u`` from a stream derived from (seed, tile_id) and is kept iff
    ``u <= q``; no tile is duplicated. ``weight`` holds ``q``.

    Parameters
    ----------
    table : pandas.DataFrame
        Tiling index table with ``tile_id`` and the ``imp_s...`` column of scale ``s``.
    seed : int
        Non-negative seed of the keep/drop draws.
    q_min, m, s : float
        Floor probability, slope and rain-rate scale (mm/h); DGMR uses 1e-4, 0.1, 1.

    Returns
    -------
    pandas.DataFrame
        The pool: kept tiles, ``scalar_value`` = ``imp_s``, ``bin_id`` = -1, ``weight`` = q.

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

    Parameters
    ----------
    table : pandas.DataFrame
        Tiling index table with ``tile_id``.
    seed : int
        Non-negative seed of the subset draw.
    n_tiles : int, optional
        Size of the subset (None: all tiles). Named ``n_tiles`` so as not to clash with the
        epoch size ``n_samples`` of :func:`draw_epoch`.
    aggregation : str, optional
        Statistic copied to ``scalar_value`` for diagnostics (NaN when None).

    Returns
    -------
    pandas.DataFrame
        The pool, ``bin_id`` = -1, in table order.

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


# --------------------------------------------------------------------------------------------
# Epochs and sub-windows
# --------------------------------------------------------------------------------------------


def _extras(total: int, n_bins: int, position: int) -> int:
    """How many of the first ``total`` round-robin extras land on bin ``position``."""
    return total // n_bins + (1 if position < total % n_bins else 0)


def _stream_slice(m: int, start: int, count: int, seed: int, stream: int) -> npt.NDArray[np.int64]:
    """Items ``[start, start + count)`` of an endless stream of fresh permutations of ``range(m)``.

    Cycle ``c`` of the stream is a permutation that depends only on (seed, stream, c, m).
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    first = start // m
    last = (start + count - 1) // m
    if m <= _SMALL_BIN:
        cycles = np.arange(first, last + 1, dtype=np.int64)[:, None]
        keys = _hash_u64(seed, _TAG_CYCLE, stream, cycles, np.arange(m, dtype=np.int64)[None, :])
        perms = np.argsort(keys, axis=1, kind="stable").ravel()
    else:
        perms = np.concatenate(
            [
                np.random.default_rng([seed, _TAG_CYCLE, stream, c]).permutation(m)
                for c in range(first, last + 1)
            ]
        )
    offset = start - first * m
    return np.asarray(perms[offset : offset + count], dtype=np.int64)


def draw_epoch(
    pool: pd.DataFrame, *, n_samples: int | None, seed: int, epoch: int
) -> npt.NDArray[np.int64]:
    """Row positions into ``pool`` for one epoch; the same for the same (pool, seed, epoch).

    Binned pools (more than one distinct ``bin_id`` >= 0; rows with negative ``bin_id`` are then
    left out): every bin is drawn equally often, ``n_samples // n_bins`` each, the remainder
    going to bins taken in a seeded random order, round robin across epochs. Within a bin the
    draws follow the bin's shuffled list and continue across epochs, reshuffling when the list
    is exhausted (LDCast): a small bin repeats, a big bin is subsampled and all its tiles come
    before any repeats. Unbinned pools: a random permutation of all rows, epochs continuing the
    same way (``n_samples`` None: all rows; more than the rows: fresh permutations appended).
    The result is shuffled, so bins are interleaved.

    Parameters
    ----------
    pool : pandas.DataFrame
        A sample pool (``bin_id`` column optional: without it the pool is unbinned).
    n_samples : int or None
        Draws in the epoch (None: the number of rows in the pool, or in its bins).
    seed : int
        Non-negative seed.
    epoch : int
        Non-negative epoch number.

    Returns
    -------
    numpy.ndarray of int64
        Row positions (``pool.iloc[rows]``), length ``n_samples``.

    Raises
    ------
    ParameterError
        ``n_samples <= 0``, negative seed/epoch, or an empty pool.

    Examples
    --------
    >>> pool = pd.DataFrame({"bin_id": [0] * 8 + [1, 1]})
    >>> rows = draw_epoch(pool, n_samples=10, seed=0, epoch=0)
    >>> np.bincount(pool["bin_id"].to_numpy()[rows]).tolist()
    [5, 5]

    """
    seed = _check_seed(seed, "seed")
    epoch = _check_seed(epoch, "epoch")
    if n_samples is not None:
        n_samples = _int_param(n_samples, "n_samples", 1, " (or None for the pool size)")
    if len(pool) == 0:
        raise ParameterError(
            "the sample pool is empty: the sampler kept no tile; loosen its parameters"
        )
    bins = (
        np.asarray(pool["bin_id"].to_numpy(), dtype=np.int64)
        if "bin_id" in pool.columns
        else np.full(len(pool), -1, dtype=np.int64)
    )
    binned = np.flatnonzero(bins >= 0)
    labels = np.unique(bins[binned])
    if labels.size <= 1:
        m = len(pool)
        n = m if n_samples is None else int(n_samples)
        return _stream_slice(m, epoch * n, n, seed, 0)
    order = binned[np.argsort(bins[binned], kind="stable")]
    starts = np.searchsorted(bins[order], labels, side="left")
    ends = np.append(starts[1:], order.size)
    n_bins = labels.size
    n = order.size if n_samples is None else int(n_samples)
    base, rest = divmod(n, n_bins)
    position = np.empty(n_bins, dtype=np.int64)
    position[np.random.default_rng([seed, _TAG_BIN_ORDER]).permutation(n_bins)] = np.arange(n_bins)
    parts = []
    for i in range(n_bins):
        before = _extras(epoch * rest, n_bins, int(position[i]))
        after = _extras((epoch + 1) * rest, n_bins, int(position[i]))
        members = order[starts[i] : ends[i]]
        picks = _stream_slice(
            members.size, epoch * base + before, base + after - before, seed, int(labels[i]) + 1
        )
        parts.append(members[picks])
    drawn = np.concatenate(parts)
    return np.random.default_rng([seed, _TAG_EPOCH, epoch]).permutation(drawn)


def assign_time_offsets(
    pool: pd.DataFrame,
    n_time_window: int | npt.ArrayLike,
    n_time_sample: int,
    seed: int,
) -> npt.NDArray[np.int64]:
    """Seeded start offsets of ``n_time_sample``-step sub-windows inside each tile's window.

    The offset of a tile depends only on (seed, source_tile_id) and lies in
    ``[0, n_time_window - n_time_sample]``.

    Parameters
    ----------
    pool : pandas.DataFrame
        Pool with ``source_tile_id``.
    n_time_window : int or array_like of int
        Steps in each tile's window (one value, or one per pool row).
    n_time_sample : int
        Steps per sample.
    seed : int
        Non-negative seed.

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    ParameterError
        ``n_time_sample`` < 1 or longer than a window.

    Examples
    --------
    >>> pool = pd.DataFrame({"source_tile_id": [0, 1, 2, 3]})
    >>> offsets = assign_time_offsets(pool, n_time_window=8, n_time_sample=4, seed=0)
    >>> bool(((offsets >= 0) & (offsets <= 4)).all())
    True
    >>> np.array_equal(offsets, assign_time_offsets(pool, 8, 4, seed=0))  # seeded
    True
    >>> assign_time_offsets(pool, 8, 8, seed=0).tolist()  # the whole window: no choice
    [0, 0, 0, 0]

    """
    _check_seed(seed, "seed")
    window = np.broadcast_to(np.asarray(n_time_window, dtype=np.int64), (len(pool),))
    n_time_sample = _check_n_time_sample(
        n_time_sample, int(window.min()) if window.size else n_time_sample
    )
    span = window - n_time_sample + 1
    u = per_tile_uniform(pool["source_tile_id"].to_numpy(), seed, _TAG_OFFSET)
    return np.minimum(np.floor(u * span).astype(np.int64), span - 1)


# --------------------------------------------------------------------------------------------
# Sampling index files
# --------------------------------------------------------------------------------------------


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


def sampling_id(
    tiling_id: str, *, method: str, n_time_sample: int, seed: int, params: Mapping[str, Any]
) -> str:
    """Return the sampling id ``{tiling_id}.{n_time_sample}.{method}.{hash}``.

    The hash (12 hex digits of SHA-256) covers the tiling id, method, n_time_sample, seed and the
    resolved parameters in canonical form, so equal settings give equal ids (``s=1`` and
    ``s=1.0`` alike, defaults spelled out or not) and any difference gives another id. The
    tiling id is made filename-safe with :func:`mlcast_pipes.index.sanitize_id` (the hash is
    taken over the raw id, so it still tells such ids apart).

    Parameters
    ----------
    tiling_id : str
        Id of the tiling index.
    method : str
        Sampler name or alias (the canonical name is used).
    n_time_sample : int
        Steps per sample.
    seed : int
        Seed of the sampler.
    params : mapping
        The sampler's parameters (completed with defaults here).

    Returns
    -------
    str

    Examples
    --------
    >>> sid = sampling_id("demo.tiles", method="dgmr", n_time_sample=4, seed=0, params={})
    >>> sid.rsplit(".", 1)[0]  # then the 12-digit hash
    'demo.tiles.4.importance'
    >>> sid == sampling_id(
    ...     "demo.tiles", method="importance", n_time_sample=4, seed=0, params={"s": 1.0}
    ... )
    True
    >>> sid == sampling_id("demo.tiles", method="dgmr", n_time_sample=4, seed=1, params={})
    False

    """
    name = sampler_name(method)
    payload = {
        "tiling_id": tiling_id,
        "method": name,
        "n_time_sample": int(n_time_sample),
        "seed": int(seed),
        "params": resolve_sampler_params(name, **dict(params)),
    }
    return f"{sanitize_id(tiling_id)}.{int(n_time_sample)}.{name}.{short_hash(payload, 12)}"


@dataclass
class SamplingIndex:
    """A sampling index: its CSV file, sidecar metadata and table.

    Attributes
    ----------
    path : pathlib.Path
        The ``{sampling_id}.samples.csv`` file.
    meta : dict
        The sidecar (kind "sampling", ids, fingerprints, parameters, bins, checksums).
    table : pandas.DataFrame
        The rows (columns :data:`SAMPLES_COLUMNS`); also a pool for :func:`draw_epoch`.
        ``table.attrs["bins"]`` describes the bins of binned samplers.
    sampling_id : str
        The id (file name without ``.samples.csv``).

    Examples
    --------
    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> index = build_sampling_index(
    ...     tiles, {"tiling_id": "demo.tiles"}, method="uniform", index_dir="idx"
    ... )
    >>> isinstance(index, SamplingIndex), index.sampling_id.startswith("demo.tiles.8.uniform.")
    (True, True)
    >>> index.path.name == index.sampling_id + ".samples.csv", index.meta_path.suffix
    (True, '.json')
    >>> index.meta["method"], len(index.table)
    ('uniform', 6)

    """

    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame
    sampling_id: str

    @property
    def meta_path(self) -> Path:
        """Path of the metadata sidecar (``{sampling_id}.meta.json``)."""
        return sidecar_path(self.path)


def _package_version() -> str:
    try:
        from mlcast_pipes import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - package half-initialised
        return "unknown"


def _rows_sha(table: pd.DataFrame) -> str:
    """SHA-256 of the tile ids and integer positions (exact, unlike float statistics)."""
    h = hashlib.sha256()
    for c in ("tile_id", "t_start", "y_start", "x_start", "n_time_window", "y_tile", "x_tile"):
        if c in table.columns:
            h.update(np.ascontiguousarray(table[c].to_numpy(dtype=np.int64)).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _tiling_fingerprints(
    table: pd.DataFrame | None, meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Identify the tiling a sampling index is made from (recorded, compared on load)."""
    meta = meta or {}
    out: dict[str, Any] = {
        "tiling_id": meta.get("tiling_id"),
        "tiling_csv_sha256": meta.get("csv_sha256"),
        "dataset_fingerprint": meta.get("dataset_fingerprint"),
    }
    if table is not None:
        out["tiling_rows_sha256"] = _rows_sha(table)
    return out


def _time_start(values: pd.Series) -> pd.Series:
    """``time_start`` as datetime64[ns] (ISO strings or datetimes in; unparseable -> NaT)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("datetime64[ns]")
    return pd.to_datetime(values, errors="coerce", format="ISO8601").astype("datetime64[ns]")


def write_sampling_index(
    csv_path: str | os.PathLike[str], table: pd.DataFrame, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write the sampling CSV, then its sidecar, atomically (via ``index.write_index``).

    Floats are written with 17 significant digits, so a loaded index equals the built one;
    ``time_start`` as ``YYYY-MM-DDTHH:MM:SS``.

    Parameters
    ----------
    csv_path : str or path
        ``{index_dir}/{sampling_id}.samples.csv``.
    table : pandas.DataFrame
        Rows with columns :data:`SAMPLES_COLUMNS`.
    meta : mapping
        Sidecar content; ``n_rows``, ``csv_bytes``, ``csv_sha256``, ``columns``, ``dtypes`` and
        ``format_version`` are added.

    Returns
    -------
    dict
        The sidecar as written.

    Raises
    ------
    IndexFileError
        The folder is not writable.

    Examples
    --------
    Write a copy of an index built from a tiny tiling table:

    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> index = build_sampling_index(
    ...     tiles, {"tiling_id": "demo.tiles"}, method="uniform", index_dir="idx"
    ... )
    >>> meta = write_sampling_index("copy/uniform.samples.csv", index.table, index.meta)
    >>> meta["n_rows"], meta["csv_file"]
    (6, 'uniform.samples.csv')
    >>> sorted(p.name for p in Path("copy").iterdir())
    ['uniform.meta.json', 'uniform.samples.csv']
    >>> load_sampling_index("copy/uniform.samples.csv").table.equals(index.table)
    True

    """
    rows = table.loc[:, list(SAMPLES_COLUMNS)].copy()
    rows["time_start"] = _time_start(rows["time_start"]).dt.strftime("%Y-%m-%dT%H:%M:%S")
    full = {**meta, "dtypes": dict(_SAMPLES_DTYPES)}
    return write_index(csv_path, [rows], full, columns=SAMPLES_COLUMNS, float_format="%.17g")


#: dtypes of a loaded sampling index (recorded in the sidecar for :func:`read_index_table`).
_SAMPLES_DTYPES: dict[str, str] = {
    "sampled_tile_id": "int64",
    "source_tile_id": "int64",
    "scalar_value": "float64",
    "bin_id": "int32",
    "t_offset": "int32",
    "weight": "float64",
    "time_start": "datetime64[ns]",
    "t_start": "int32",
    "y_start": "int32",
    "x_start": "int32",
    "y_tile": "int32",
    "x_tile": "int32",
    "n_time_sample": "int32",
}

_REBUILD_HINT = "rebuild it with build_sampling_index(..., recompute=True)"


def load_sampling_index(
    path: str | os.PathLike[str],
    *,
    tiling_table: pd.DataFrame | None = None,
    tiling_meta: Mapping[str, Any] | None = None,
    expected: Mapping[str, Any] | None = None,
    verify: VerifyMode = "sha256",
) -> SamplingIndex:
    """Load a sampling index and check it against its sidecar, the tiling and the parameters.

    Parameters
    ----------
    path : str or path
        The ``.samples.csv`` file (or its ``.meta.json`` sidecar).
    tiling_table, tiling_meta : optional
        The current tiling index (table and sidecar); when given, a changed tiling (CSV SHA-256,
        dataset fingerprint, tile ids/positions) makes the index stale.
    expected : mapping, optional
        Expected settings: any of ``method``, ``seed``, ``n_time_sample``, ``params`` (a dict of
        the sampler's parameters, completed with defaults before comparing).
    verify : {"sha256", "size"}
        Check the CSV's byte size and SHA-256 against the sidecar (catches same-size edits),
        or only its byte size (cheaper).

    Returns
    -------
    SamplingIndex

    Raises
    ------
    IndexFileError
        Missing or unreadable files, or a CSV changed since it was written.
    StaleIndexError
        The tiling changed or the parameters differ; the message names what.
    ParameterError
        ``expected`` gives ``params`` without ``method``.

    Examples
    --------
    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> built = build_sampling_index(
    ...     tiles, {"tiling_id": "demo.tiles"}, method="uniform", index_dir="idx"
    ... )
    >>> index = load_sampling_index(built.path, expected={"method": "uniform", "seed": 0})
    >>> index.sampling_id == built.sampling_id, index.table.equals(built.table)
    (True, True)
    >>> load_sampling_index(built.path, expected={"method": "uniform", "seed": 1})
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.StaleIndexError: the sampling index demo.tiles.8.uniform....samples.csv
    is stale: seed differs (index 0, asked 1); ...

    """
    expected = dict(expected or {})
    want_params = None
    if expected.get("params") is not None:
        method = expected.get("method")
        if method is None:
            raise ParameterError("expected['params'] needs expected['method'] to resolve them")
        want_params = resolve_sampler_params(str(method), **dict(expected["params"]))
    csv = Path(path)
    if csv.name.endswith(SIDECAR_SUFFIX):
        csv = csv.with_name(csv.name[: -len(SIDECAR_SUFFIX)] + CSV_SUFFIX)
    meta = validate_index(
        csv,
        kind="sampling",
        expected_params=want_params,
        expected_fingerprint=(tiling_meta or {}).get("dataset_fingerprint"),
        verify=verify,
        rerun_hint=_REBUILD_HINT,
    )
    problems = _stale_reasons(meta, tiling_table, tiling_meta, expected)
    if problems:
        raise StaleIndexError(
            f"the sampling index {csv.name} is stale: {'; '.join(problems)}; {_REBUILD_HINT}"
        )
    table = read_index_table(csv, meta)
    if len(table) != meta.get("n_rows"):
        raise IndexFileError(
            f"{csv.name} has {len(table)} rows, its sidecar records {meta.get('n_rows')}; "
            f"{_REBUILD_HINT}"
        )
    table.attrs = {"sampler": meta["method"], "params": meta["params"], "bins": meta.get("bins")}
    return SamplingIndex(path=csv, meta=meta, table=table, sampling_id=str(meta["sampling_id"]))


def _stale_reasons(
    meta: Mapping[str, Any],
    tiling_table: pd.DataFrame | None,
    tiling_meta: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
) -> list[str]:
    problems: list[str] = []
    if tiling_table is not None or tiling_meta is not None:
        now = _tiling_fingerprints(tiling_table, tiling_meta)
        for key, what in (
            ("tiling_id", "tiling id"),
            ("tiling_csv_sha256", "tiling index CSV (SHA-256)"),
            ("tiling_rows_sha256", "tiling index rows (tile ids / positions)"),
        ):
            if now.get(key) is not None and meta.get(key) is not None and now[key] != meta[key]:
                problems.append(f"the {what} changed ({meta[key]!r} -> {now[key]!r})")
    for key in ("method", "seed", "n_time_sample"):
        if expected.get(key) is not None:
            want = sampler_name(str(expected[key])) if key == "method" else expected[key]
            if meta.get(key) != want:
                problems.append(f"{key} differs (index {meta.get(key)!r}, asked {want!r})")
    return problems


def build_sampling_index(
    tiling_table: pd.DataFrame,
    tiling_meta: Mapping[str, Any],
    *,
    method: str,
    index_dir: str | os.PathLike[str],
    n_time_sample: int | None = None,
    seed: int = 0,
    recompute: bool = False,
    **params: Any,
) -> SamplingIndex:
    """Build (or load a matching existing) sampling index ``{index_dir}/{sampling_id}.samples.csv``.

    Parameters
    ----------
    tiling_table : pandas.DataFrame
        The tiling index table (tile ids, positions, statistics).
    tiling_meta : mapping
        The tiling sidecar; needs ``tiling_id``; its ``csv_sha256`` and ``dataset_fingerprint``
        are recorded for staleness checks when present.
    method : str
        Sampler name or alias (:func:`available_samplers`).
    index_dir : str or path
        Folder of the index files.
    n_time_sample : int, optional
        Steps per sample (default: the tiles' window); shorter sub-windows get seeded offsets.
    seed : int
        Non-negative seed of the sampler and of the offsets.
    recompute : bool
        Rebuild even if a file exists (needed when it is stale).
    **params
        The sampler's parameters.

    Returns
    -------
    SamplingIndex

    Raises
    ------
    ParameterError
        Bad method, parameters, seed or ``n_time_sample``.
    IndexFileError
        The tiling table lacks columns or has duplicate tile ids; unwritable folder; an existing
        index file was edited or truncated.
    StaleIndexError
        An index with this id exists but was made from another tiling (pass ``recompute=True``).

    Examples
    --------
    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> index = build_sampling_index(
    ...     tiles, {"tiling_id": "demo.tiles"}, method="binnorm", index_dir="idx",
    ...     n_time_sample=4, aggregation="mean", n_scalar_total_bins=3,
    ... )
    >>> index.sampling_id.rsplit(".", 1)[0]  # the tiling id, n_time_sample, method, then a hash
    'demo.tiles.4.binnorm'
    >>> index.table["bin_id"].tolist()
    [0, 0, 1, 1, 2, 2]
    >>> bool(index.table["t_offset"].between(0, 8 - 4).all())
    True

    The same call again loads the file instead of sampling anew:

    >>> again = build_sampling_index(
    ...     tiles, {"tiling_id": "demo.tiles"}, method="binnorm", index_dir="idx",
    ...     n_time_sample=4, aggregation="mean", n_scalar_total_bins=3,
    ... )
    >>> again.path == index.path, again.table.equals(index.table)
    (True, True)

    """
    seed = _check_seed(seed, "seed")
    name = sampler_name(method)
    resolved = resolve_sampler_params(name, **params)
    missing = [c for c in _TILING_POSITION_COLUMNS if c not in tiling_table.columns]
    if missing:
        raise IndexFileError(
            f"the tiling table lacks the column(s) {', '.join(missing)} (it has "
            f"{', '.join(map(str, tiling_table.columns))}); pass the table of a tiling index"
        )
    if not tiling_table["tile_id"].is_unique:
        raise IndexFileError(
            "the tiling table has repeated tile_id values; rebuild the tiling index"
        )
    tiling_id = tiling_meta.get("tiling_id")
    if not isinstance(tiling_id, str) or not tiling_id:
        raise ParameterError(
            "tiling_meta has no 'tiling_id'; pass the sidecar of the tiling index (its meta dict)"
        )
    windows = np.asarray(tiling_table["n_time_window"].to_numpy(), dtype=np.int64)
    if n_time_sample is None:
        if windows.size and windows.min() != windows.max():
            raise ParameterError(
                f"the tiles' windows differ ({windows.min()}..{windows.max()} steps); pass "
                "n_time_sample explicitly"
            )
        n_time_sample = int(windows[0]) if windows.size else 1
    n_time_sample = _check_n_time_sample(
        n_time_sample, int(windows.min()) if windows.size else n_time_sample
    )
    sid = sampling_id(
        tiling_id, method=name, n_time_sample=n_time_sample, seed=seed, params=resolved
    )
    csv_path, side_path = index_paths(index_dir, sid)
    # A CSV without sidecar is an interrupted write: rebuild it. A complete one must match.
    if csv_path.exists() and side_path.exists() and not recompute:
        expected = {"method": name, "seed": seed, "n_time_sample": n_time_sample}
        return load_sampling_index(
            csv_path,
            tiling_table=tiling_table,
            tiling_meta=tiling_meta,
            expected={**expected, "params": resolved},
        )

    pool = run_sampler(name, tiling_table, seed=seed, **params)
    pos = pd.Index(tiling_table["tile_id"]).get_indexer(pool["source_tile_id"].to_numpy())
    if (pos < 0).any():
        raise ParameterError(
            f"sampler {name!r} returned tile ids that are not in the tiling table; fix the sampler"
        )
    src = tiling_table.iloc[pos]
    longest = int(windows.max()) if windows.size else n_time_sample
    if name != "uniform" and n_time_sample < longest:
        warnings.warn(
            f"{name}: tiles are chosen by statistics of their whole {longest}-step window but a "
            f"sample is {n_time_sample} steps of it, so a tile picked as wet can give a dry "
            f"sample; fix: tile with n_time_window={n_time_sample} (a smaller time stride "
            "gives overlapping windows) so that statistics and samples cover the same steps",
            SamplingWarning,
            stacklevel=2,
        )
    offsets = assign_time_offsets(pool, src["n_time_window"].to_numpy(), n_time_sample, seed)
    table = pd.DataFrame(
        {
            "sampled_tile_id": np.arange(len(pool)),
            "source_tile_id": pool["source_tile_id"].to_numpy(),
            "scalar_value": pool["scalar_value"].to_numpy(),
            "bin_id": pool["bin_id"].to_numpy(),
            "t_offset": offsets,
            "weight": pool["weight"].to_numpy(),
            "time_start": _time_start(src["time_start"]).to_numpy(),
            "t_start": src["t_start"].to_numpy(),
            "y_start": src["y_start"].to_numpy(),
            "x_start": src["x_start"].to_numpy(),
            "y_tile": src["y_tile"].to_numpy(),
            "x_tile": src["x_tile"].to_numpy(),
            "n_time_sample": n_time_sample,
        }
    ).astype(_SAMPLES_DTYPES)
    bins = pool.attrs.get("bins")
    meta: dict[str, Any] = {
        "kind": "sampling",
        "sampling_id": sid,
        **_tiling_fingerprints(tiling_table, tiling_meta),
        "dataset_id": tiling_meta.get("dataset_id"),
        "method": name,
        "seed": seed,
        "n_time_sample": n_time_sample,
        "params": resolved,
        "scalar": pool.attrs.get("scalar"),
        "n_tiles_in_tiling": len(tiling_table),
        "shape": tiling_meta.get("shape"),
        "source_url": tiling_meta.get("source_url"),
        "bin_edges": pool.attrs.get("bin_edges"),
        "bins": bins,
        "n_candidates": pool.attrs.get("n_candidates", len(tiling_table)),
        "acceptance_rate": pool.attrs.get("acceptance_rate", len(pool) / max(len(tiling_table), 1)),
        "package_version": _package_version(),
        "created_on": utc_now_iso(),
    }
    full = write_sampling_index(csv_path, table, meta)
    table.attrs = {"sampler": name, "params": resolved, "bins": bins}
    return SamplingIndex(path=csv_path, meta=full, table=table, sampling_id=sid)


# --------------------------------------------------------------------------------------------
# MLCast community sampler interop
# --------------------------------------------------------------------------------------------


def _community_table(
    frame: pd.DataFrame,
    *,
    source: str,
    n_time_window: int,
    tile_size: tuple[int, int],
    times: npt.ArrayLike | None,
    x_is_axis: int,
    scalar: str | None,
) -> pd.DataFrame:
    missing = [c for c in ("t", "x", "y") if c not in frame.columns]
    if missing:
        raise IndexFileError(
            f"{source} lacks the column(s) {', '.join(missing)} (it has "
            f"{', '.join(map(str, frame.columns))}); expected the community sampler's t,x,y output"
        )
    if x_is_axis not in (1, 2):
        raise ParameterError(
            f"x_is_axis must be 1 (their x indexes array axis 1 = our rows, y) or 2 (their x is "
            f"our columns, x), got {x_is_axis!r}"
        )
    n_time_window = _int_param(n_time_window, "n_time_window", 1)
    if len(tile_size) != 2 or any(int(s) < 1 for s in tile_size):
        raise ParameterError(
            f"tile_size must be two positive integers (rows, columns), got {tile_size!r}"
        )
    try:
        t = frame["t"].to_numpy(dtype=np.int64)
        a = frame["x"].to_numpy(dtype=np.int64)
        b = frame["y"].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"{source}: t, x, y must be integer indices ({exc})") from exc
    if (t < 0).any() or (a < 0).any() or (b < 0).any():
        raise IndexFileError(
            f"{source}: negative t/x/y indices; expected absolute array indices >= 0"
        )
    y_start, x_start = (a, b) if x_is_axis == 1 else (b, a)
    if times is not None:
        tarr = np.asarray(times).astype("datetime64[ns]")
        if t.size and int(t.max()) + n_time_window > tarr.size:
            raise ParameterError(
                f"{source}: a cube starting at t={int(t.max())} with {n_time_window} steps runs "
                f"past the {tarr.size} given times; pass the archive's full time coordinate"
            )
        time_start = tarr[t]
    else:
        time_start = np.full(t.size, np.datetime64("NaT"), dtype="datetime64[ns]")
    n = len(frame)
    out = pd.DataFrame(
        {
            "tile_id": np.arange(n, dtype=np.int64),
            "time_start": time_start,
            "t_start": t,
            "y_start": y_start,
            "x_start": x_start,
            "n_time_window": np.full(n, int(n_time_window), dtype=np.int64),
            "y_tile": np.full(n, int(tile_size[0]), dtype=np.int64),
            "x_tile": np.full(n, int(tile_size[1]), dtype=np.int64),
        }
    )
    for c in ("nan_count", "sum", "mean", "frac_wet"):
        if c in frame.columns:
            out[c] = frame[c].to_numpy(dtype=np.float64)
    if "nan_count" in out.columns:
        out["nan_fraction"] = out["nan_count"] / float(n_time_window * tile_size[0] * tile_size[1])
    out["source_tile_id"] = out["tile_id"]
    if scalar is None:
        out["scalar_value"] = np.nan
    else:
        out["scalar_value"] = _scalar_column(out, scalar, "community")
    out["bin_id"] = np.full(n, -1, dtype=np.int64)
    out["weight"] = np.ones(n, dtype=np.float64)
    return out


def _community_file_params(params: dict[str, Any]) -> dict[str, Any]:
    """The community sampler's file as an absolute path plus its sha256 (the id covers both)."""
    from mlcast_pipes.index import file_sha256

    path = Path(str(params["csv"])).expanduser().resolve()
    if not path.is_file():
        raise ParameterError(
            f"community: csv={params['csv']!r} is not a file; pass the t,x,y CSV written by the "
            "MLCast community sampler (mlcast-dataset-sampler)"
        )
    out = dict(params)
    out["csv"] = str(path)
    if out.get("csv_sha256") is None:
        out["csv_sha256"] = file_sha256(path)
    return out


@register_sampler("community")
def community(
    table: pd.DataFrame,
    *,
    seed: int,
    csv: str,
    csv_sha256: str | None = None,
    x_is_axis: int = 1,
) -> pd.DataFrame:
    """The cubes of the MLCast community sampler's ``t,x,y`` CSV, as a pool of tiles.

    Each cube is matched to the tile of the tiling index that starts at the same time index,
    row and column, so tile with the cubes' size and strides (the community tool: 24 steps of
    256 x 256 pixels, strides 3 x 16 x 16: ``.tile(n_time_window=24, tile_size=(256, 256),
    stride=(3, 16, 16))``). Every cube is drawn once per epoch (no duplicates); cubes the tiling
    rejected (a time gap, or more NaN than ``max_nan_fraction``) are left out with a
    :class:`SamplingWarning` that counts them. The sampling id covers the file's sha256, so an
    edited file gets a new index.

    Parameters
    ----------
    table : pandas.DataFrame
        Tiling index table.
    seed : int
        Unused (the pool is the file's cubes); epochs are shuffled by seed as for every sampler.
    csv : str
        The community sampler's output file (columns ``t,x,y``).
    csv_sha256 : str, optional
        The file's sha256; filled in when the parameters are resolved. A file that no longer
        matches it is an error.
    x_is_axis : {1, 2}
        Which array axis the file's ``x`` indexes (see :func:`load_community_csv`).

    Returns
    -------
    pandas.DataFrame
        The pool, ``bin_id`` = -1, ``weight`` = 1.

    Examples
    --------
    Two cubes of 4 steps x 32 x 32 pixels, on a tiling with the same size and strides:

    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "t_start": [0, 0, 4], "y_start": [0, 32, 0],
    ...                       "x_start": [0, 0, 32], "n_time_window": 4, "y_tile": 32,
    ...                       "x_tile": 32})
    >>> pd.DataFrame({"t": [4, 0], "x": [0, 32], "y": [32, 0]}).to_csv("cubes.csv", index=False)
    >>> run_sampler("community", tiles, seed=0, csv="cubes.csv")["source_tile_id"].tolist()
    [1, 2]

    """
    from mlcast_pipes.index import file_sha256

    path = Path(csv).expanduser()
    if csv_sha256 is not None and path.is_file() and file_sha256(path) != csv_sha256:
        raise ParameterError(
            f"community: {path} changed since its sampling index was made (sha256 differs); "
            "build the index again (recompute=True, or --recompute)"
        )
    required = ("tile_id", "t_start", "y_start", "x_start", "n_time_window", "y_tile", "x_tile")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ParameterError(
            f"community: the tiling table lacks {', '.join(missing)}; pass a tiling index table"
        )
    if table.empty:
        raise ParameterError("community: the tiling table holds no tile")
    window = int(table["n_time_window"].iloc[0])
    size = (int(table["y_tile"].iloc[0]), int(table["x_tile"].iloc[0]))
    cubes = load_community_csv(path, n_time_window=window, tile_size=size, x_is_axis=x_is_axis)
    keys = ["t_start", "y_start", "x_start"]
    cubes = cubes.drop_duplicates(keys)
    matched = cubes[keys].merge(table[[*keys, "tile_id"]], on=keys, how="left")
    found = matched["tile_id"].notna().to_numpy()
    if not found.any():
        raise ParameterError(
            f"community: none of the {len(cubes)} cubes of {path.name} starts where a tile of "
            f"this tiling starts ({window} steps of {size[0]} x {size[1]} pixels); tile with "
            "the cubes' size and strides, e.g. .tile(n_time_window=24, tile_size=(256, 256), "
            "stride=(3, 16, 16)) for the community tool's defaults, and a max_nan_fraction that "
            "keeps its cubes"
        )
    if not found.all():
        warnings.warn(
            f"community: {int((~found).sum())} of the {len(cubes)} cubes of {path.name} are not "
            "tiles of this tiling (a time gap or more NaN than max_nan_fraction, or another "
            "grid); they are left out",
            SamplingWarning,
            stacklevel=2,
        )
    ids = np.sort(matched.loc[found, "tile_id"].to_numpy(dtype=np.int64))
    return pd.DataFrame(
        {
            "source_tile_id": ids,
            "scalar_value": np.full(ids.size, np.nan),
            "bin_id": np.full(ids.size, -1, dtype=np.int64),
            "weight": np.ones(ids.size, dtype=np.float64),
        }
    )


def load_community_csv(
    path: str | os.PathLike[str],
    *,
    n_time_window: int = 24,
    tile_size: tuple[int, int] = (256, 256),
    times: npt.ArrayLike | None = None,
    x_is_axis: int = 1,
) -> pd.DataFrame:
    """Read the MLCast community sampler's ``t,x,y`` CSV as a tiling table and unbinned pool.

    In that tool arrays are ordered ``(t, x, y)`` and ``x`` indexes axis 1; in an MLCast archive
    ``(time, y, x)`` axis 1 is ``y`` (rows). With ``x_is_axis=1`` (default) their ``x`` becomes
    our ``y_start`` and their ``y`` our ``x_start``; ``x_is_axis=2`` maps them by name.

    Parameters
    ----------
    path : str or path
        CSV with columns ``t,x,y`` (absolute indices of a cube's first step and top-left corner).
    n_time_window : int
        Steps per cube (24 in the community tool).
    tile_size : (int, int)
        Cube size as (rows, columns) = (``y_tile``, ``x_tile``).
    times : array_like of datetime64, optional
        The archive's time coordinate; fills ``time_start`` (datetime64, NaT without it).
    x_is_axis : {1, 2}
        Which array axis their ``x`` indexes.

    Returns
    -------
    pandas.DataFrame
        Tiling columns (``tile_id`` = row number, ``time_start``, ``t_start``, ``y_start``,
        ``x_start``, ``n_time_window``, ``y_tile``, ``x_tile``) plus pool columns
        (``source_tile_id``, ``scalar_value`` = NaN, ``bin_id`` = -1, ``weight`` = 1), usable by
        :func:`draw_epoch`.

    Raises
    ------
    IndexFileError
        Unreadable file or missing/invalid columns.
    ParameterError
        Bad ``x_is_axis``, ``tile_size``, ``n_time_window`` or too short ``times``.

    Examples
    --------
    >>> cubes = pd.DataFrame({"t": [0, 24], "x": [0, 256], "y": [256, 0]})
    >>> cubes.to_csv("cubes.csv", index=False)
    >>> table = load_community_csv("cubes.csv", n_time_window=24, tile_size=(256, 256))
    >>> table[["tile_id", "t_start", "y_start", "x_start"]].to_numpy().tolist()
    [[0, 0, 0, 256], [1, 24, 256, 0]]
    >>> sorted(draw_epoch(table, n_samples=2, seed=0, epoch=0).tolist())
    [0, 1]

    """
    p = Path(path)
    try:
        frame = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IndexFileError(f"cannot read the community CSV {p}: {exc}; check the path") from exc
    return _community_table(
        frame,
        source=str(p),
        n_time_window=n_time_window,
        tile_size=tile_size,
        times=times,
        x_is_axis=x_is_axis,
        scalar=None,
    )


def load_community_stats(
    path: str | os.PathLike[str],
    *,
    n_time_window: int = 24,
    tile_size: tuple[int, int] = (256, 256),
    times: npt.ArrayLike | None = None,
    x_is_axis: int = 1,
    scalar: str = "mean",
) -> pd.DataFrame:
    """Read the community per-cube statistics (``t,x,y,nan_count,sum,mean,frac_wet``).

    Parquet (``.parquet``/``.pq``, needs pyarrow) or CSV with the same columns. The result is
    what :func:`load_community_csv` returns plus the statistics and ``nan_fraction``; it can be
    passed to the samplers (e.g. ``binnorm`` with ``aggregation="mean"``) or to :func:`draw_epoch`.

    Parameters
    ----------
    path : str or path
        Statistics file.
    n_time_window, tile_size, times, x_is_axis
        As for :func:`load_community_csv`.
    scalar : str
        Statistic copied to ``scalar_value``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    IndexFileError
        Unreadable file, parquet without pyarrow, missing columns.

    Examples
    --------
    >>> cubes = pd.DataFrame({
    ...     "t": [0, 0, 2], "x": [0, 0, 4], "y": [0, 4, 0], "nan_count": [0, 8, 0],
    ...     "sum": [0.0, 16.0, 64.0], "mean": [0.0, 0.5, 2.0], "frac_wet": [0.0, 0.25, 0.75],
    ... })
    >>> cubes.to_csv("stats.csv", index=False)
    >>> stats = load_community_stats("stats.csv", n_time_window=2, tile_size=(4, 4))
    >>> stats["scalar_value"].tolist(), stats["nan_fraction"].tolist()
    ([0.0, 0.5, 2.0], [0.0, 0.25, 0.0])
    >>> pool = run_sampler("binnorm", stats, seed=0, aggregation="mean", n_scalar_total_bins=2)
    >>> pool["bin_id"].tolist()
    [0, 1, 1]

    """
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise IndexFileError(
                f"reading {p.name} needs pyarrow, which is not installed; install it "
                "(pip install pyarrow) or convert the file to CSV"
            )
        try:
            frame = pd.read_parquet(p)
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"cannot read the community statistics {p}: {exc}") from exc
    else:
        try:
            frame = pd.read_csv(p)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise IndexFileError(f"cannot read the community statistics {p}: {exc}") from exc
    missing = [c for c in ("nan_count", "sum", "mean", "frac_wet") if c not in frame.columns]
    if missing:
        raise IndexFileError(
            f"{p} lacks the statistics column(s) {', '.join(missing)}; for a plain t,x,y list "
            "use load_community_csv"
        )
    return _community_table(
        frame,
        source=str(p),
        n_time_window=n_time_window,
        tile_size=tile_size,
        times=times,
        x_is_axis=x_is_axis,
        scalar=scalar,
    )
