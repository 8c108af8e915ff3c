"""Sampler registry: register, resolve and run samplers by name.

A sampler is a function ``(table, *, seed, **params) -> pool``.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.sampling.base import (
    _FEWER_BINS_HINT,
    _LOOSEN_HINT,
    DOMINANT_SHARE,
    POOL_COLUMNS,
    SamplingWarning,
    _canonical,
    _check_seed,
    _fmt,
)

__all__ = [
    "available_samplers",
    "epoch_shares",
    "get_sampler",
    "register_sampler",
    "resolve_sampler_params",
    "run_sampler",
    "sampler_name",
]


SamplerFn = Callable[..., pd.DataFrame]


F = TypeVar("F", bound=SamplerFn)


_REGISTRY: dict[str, SamplerFn] = {}


_ALIASES: dict[str, str] = {}


def register_sampler(name: str, *aliases: str) -> Callable[[F], F]:
    """Register a sampler ``f(table, *, seed, **params) -> pool`` under ``name`` (and aliases).

    The pool has ``source_tile_id``, ``scalar_value``, ``bin_id`` (-1: unbinned), optionally
    ``weight``. Raises ParameterError for a taken or malformed name or a missing keyword ``seed``.

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

    Examples
    --------
    >>> {"binnorm", "ldcast", "importance", "dgmr", "uniform"} <= set(available_samplers())
    True

    """
    return sorted([*_REGISTRY, *_ALIASES])


def sampler_name(name: str) -> str:
    """The name a sampler is registered under (``"dgmr"`` -> ``"importance"``).

    Raises ParameterError listing the known samplers if none has this name.

    Examples
    --------
    >>> sampler_name("dgmr"), sampler_name("ldcast")
    ('importance', 'ldcast')

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
    """The sampler function registered under ``name`` or an alias (see :func:`register_sampler`).

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": [0, 1, 2], "imp_s1": [0.0, 0.5, 1.0]})
    >>> pool = get_sampler("dgmr")(tiles, seed=0, q_min=1.0)  # q_min=1 keeps every tile
    >>> pool["source_tile_id"].tolist()
    [0, 1, 2]

    """
    return _REGISTRY[sampler_name(name)]


def resolve_sampler_params(method: str, **params: Any) -> dict[str, Any]:
    """All parameters of a sampler call (given over defaults), canonical and sorted by name.

    Integral numbers become int and sequences lists, so equal settings compare equal. Raises
    ParameterError for a parameter the sampler does not take or a missing required one.

    Examples
    --------
    >>> resolve_sampler_params("dgmr", s=1.0)
    {'m': 0.1, 'q_min': 0.0001, 's': 1}

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
        from mlcast_pipes.sampling.community import _community_file_params

        resolved = _community_file_params(resolved)
    return resolved


def run_sampler(method: str, table: pd.DataFrame, *, seed: int, **params: Any) -> pd.DataFrame:
    """Run a registered sampler on a tiling table and check its pool (ParameterError: no tile kept).

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": range(6), "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0]})
    >>> pool = run_sampler("binnorm", tiles, seed=0, aggregation="mean", n_scalar_total_bins=3)
    >>> pool["bin_id"].tolist(), [b["label"] for b in pool.attrs["bins"]]
    ([0, 0, 1, 1, 2, 2], ['dry (<= 0)', '[0.5, 2)', '[2, 8]'])

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
    """Expected share of an epoch's draws for each pool row (as :func:`draw_epoch` draws).

    Binned pools draw bins equally often (a row of a bin of ``k`` rows gets ``1 / (n_bins * k)``,
    negative bin ids never); other pools draw every row equally.

    Examples
    --------
    >>> epoch_shares(pd.DataFrame({"bin_id": [0, 0, 0, 1]})).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]

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
