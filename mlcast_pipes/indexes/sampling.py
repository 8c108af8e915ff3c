"""Sampling index files: a sampler's pool of tiles with its id, sidecar and staleness checks.

Built from a tiling index by a registered sampler (:mod:`mlcast_pipes.sampling`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import (
    CSV_SUFFIX,
    SIDECAR_SUFFIX,
    TILING_POSITION_COLUMNS,
    VerifyMode,
    index_paths,
    package_version,
    sanitize_id,
    short_hash,
    sidecar_path,
    utc_now_iso,
)
from mlcast_pipes.indexes.index_csv import read_index_table, validate_index, write_index
from mlcast_pipes.sampling.base import (
    _QUANTILE_RE,
    SAMPLES_COLUMNS,
    SamplingWarning,
    _check_n_time_sample,
    _check_seed,
)
from mlcast_pipes.sampling.epoch import assign_time_offsets
from mlcast_pipes.sampling.registry import resolve_sampler_params, run_sampler, sampler_name
from mlcast_pipes.tiling.steps import sub_window_statistics

__all__ = [
    "SamplingIndex",
    "build_sampling_index",
    "load_sampling_index",
    "sampling_id",
    "write_sampling_index",
]


def sampling_id(
    tiling_id: str,
    *,
    method: str,
    n_time_sample: int,
    seed: int,
    params: Mapping[str, Any],
    sub_window: bool = False,
) -> str:
    """The sampling id ``{tiling_id}.{n_time_sample}.{method}.{hash}``.

    The 12-digit hash covers the raw tiling id, method, n_time_sample, seed, the resolved
    parameters in canonical form and ``sub_window`` (statistics of the drawn sub-windows):
    equal settings give equal ids, any difference another id.

    Examples
    --------
    >>> sid = sampling_id("demo.tiles", method="dgmr", n_time_sample=4, seed=0, params={})
    >>> sid.rsplit(".", 1)[0], sid == sampling_id(
    ...     "demo.tiles", method="importance", n_time_sample=4, seed=0, params={"s": 1.0})
    ('demo.tiles.4.importance', True)

    """
    name = sampler_name(method)
    payload = {
        "tiling_id": tiling_id,
        "method": name,
        "n_time_sample": int(n_time_sample),
        "seed": int(seed),
        "params": resolve_sampler_params(name, **dict(params)),
    }
    if sub_window:
        payload["scalar_steps"] = "sample"
    return f"{sanitize_id(tiling_id)}.{int(n_time_sample)}.{name}.{short_hash(payload, 12)}"


@dataclass
class SamplingIndex:
    """A sampling index: its CSV ``path``, sidecar ``meta``, ``table`` and ``sampling_id``.

    The table has :data:`SAMPLES_COLUMNS` and is a pool for :func:`draw_epoch`
    (``table.attrs["bins"]`` describes binned samplers' bins).

    Examples
    --------
    >>> path = Path("idx/a.8.uniform.01.samples.csv")
    >>> index = SamplingIndex(path, {}, pd.DataFrame(), "a.8.uniform.01")
    >>> index.meta_path.name
    'a.8.uniform.01.meta.json'

    """

    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame
    sampling_id: str

    @property
    def meta_path(self) -> Path:
        """Path of the metadata sidecar (``{sampling_id}.meta.json``)."""
        return sidecar_path(self.path)


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
    """Write the sampling CSV, then its sidecar, atomically (floats kept exact); return the sidecar.

    Examples
    --------
    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> index = build_sampling_index(tiles, {"tiling_id": "t"}, method="uniform", index_dir="idx")
    >>> write_sampling_index("copy/u.samples.csv", index.table, index.meta)["n_rows"]
    6

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


_StepsSource = np.ndarray | Callable[[], np.ndarray]


def _sub_window_table(
    table: pd.DataFrame,
    meta: Mapping[str, Any],
    steps: _StepsSource,
    n_time_sample: int,
    seed: int,
) -> tuple[pd.DataFrame, int]:
    """``table`` with the statistics of each tile's drawn sub-window, and the tiles dropped.

    Tiles over the NaN limit are dropped, quantile columns too (not reducible from steps).
    """
    arr = steps() if callable(steps) else steps
    ids = table["tile_id"].to_numpy(dtype=np.int64)
    windows = table["n_time_window"].to_numpy(dtype=np.int64)
    if (
        arr.ndim != 2
        or (ids.size and (ids.min() < 0 or ids.max() >= arr.shape[0]))
        or (windows != arr.shape[1]).any()
    ):
        raise IndexFileError(
            f"the per-step statistics ({arr.shape}) do not match the tiling table ({len(table)} "
            f"tiles, tile ids up to {ids.max() if ids.size else '-'}); pass those of the same "
            "tiling index (TileIndex.read_steps()), or recompute it"
        )
    pool = pd.DataFrame({"source_tile_id": ids})
    offsets = assign_time_offsets(pool, windows, n_time_sample, seed)
    pixels = table["y_tile"].to_numpy(dtype=np.int64) * table["x_tile"].to_numpy(dtype=np.int64)
    stats = sub_window_statistics(arr, ids, offsets, n_time_sample, pixels)
    out = table.drop(columns=[c for c in table.columns if _QUANTILE_RE.match(str(c))])
    for col, values in stats.items():
        out[col] = values
    limit = meta.get("params", {}).get("max_nan_fraction")
    keep = stats["nan_fraction"] <= (1.0 if limit is None else float(limit))
    if not keep.any():
        raise ParameterError(
            f"every tile's drawn {n_time_sample}-step sub-window has a NaN fraction above "
            f"max_nan_fraction={limit}; use a larger max_nan_fraction or n_time_sample"
        )
    return out.loc[keep].reset_index(drop=True), int((~keep).sum())


def load_sampling_index(
    path: str | os.PathLike[str],
    *,
    tiling_table: pd.DataFrame | None = None,
    tiling_meta: Mapping[str, Any] | None = None,
    expected: Mapping[str, Any] | None = None,
    verify: VerifyMode = "sha256",
) -> SamplingIndex:
    """Load a sampling index (``.samples.csv`` or its sidecar) and check it.

    ``tiling_table``/``tiling_meta`` and ``expected`` (``method``, ``seed``, ``n_time_sample``,
    ``params``, ``scalar_steps``: ``"sample"`` or ``"window"``) make a changed index stale;
    ``verify`` checks size and sha256. Raises IndexFileError for missing or edited files,
    StaleIndexError naming what changed.

    Examples
    --------
    >>> tiles = pd.DataFrame({"tile_id": range(2), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": 0, "x_start": [0, 32], "n_time_window": 8, "y_tile": 32, "x_tile": 32})
    >>> built = build_sampling_index(tiles, {"tiling_id": "t2"}, method="uniform", index_dir="idx")
    >>> load_sampling_index(built.path, expected={"method": "uniform", "seed": 1})
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.StaleIndexError: the sampling index t2.8.uniform....samples.csv
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
    steps_info = (tiling_meta or {}).get("steps")
    made_from = meta.get("scalar_steps", "window")
    if (
        made_from == "sample"
        and isinstance(steps_info, dict)
        and meta.get("tiling_steps_sha256") != steps_info.get("sha256")
    ):
        problems.append("the tiling index's per-step statistics changed")
    want = expected.get("scalar_steps")
    if want is not None and want != made_from:
        kinds = {"sample": "the drawn samples", "window": "whole windows"}
        problems.append(
            f"its statistics are of {kinds.get(made_from, made_from)}, asked: of "
            f"{kinds.get(want, want)}"
        )
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
    steps: _StepsSource | None = None,
    **params: Any,
) -> SamplingIndex:
    """Build, or load when it exists, the sampling index ``{index_dir}/{sampling_id}.samples.csv``.

    ``tiling_meta`` needs ``tiling_id``; ``n_time_sample`` defaults to the tiles' window;
    ``recompute`` rebuilds a stale file; ``**params`` go to the sampler. ``steps`` (the tiling's
    :meth:`~mlcast_pipes.indexes.tiling.TileIndex.read_steps`, or a function returning them)
    makes the sampler see the statistics of each tile's drawn ``n_time_sample`` steps when they
    are fewer than the window (quantiles cannot be); without them it sees whole windows, with a
    SamplingWarning. Raises ParameterError, IndexFileError, or StaleIndexError for an index of
    another tiling.

    Examples
    --------
    >>> tiles = pd.DataFrame({
    ...     "tile_id": range(6), "time_start": "2021-06-12T10:00", "t_start": 0,
    ...     "y_start": [0, 0, 32, 32, 64, 64], "x_start": [0, 32] * 3, "n_time_window": 8,
    ...     "y_tile": 32, "x_tile": 32, "mean": [0.0, 0.0, 0.5, 1.0, 2.0, 8.0],
    ... })
    >>> index = build_sampling_index(tiles, {"tiling_id": "demo.tiles"}, method="binnorm",
    ...     index_dir="idx", n_time_sample=4, aggregation="mean", n_scalar_total_bins=3)
    >>> index.table["bin_id"].tolist()
    [0, 0, 1, 1, 2, 2]

    """
    seed = _check_seed(seed, "seed")
    name = sampler_name(method)
    resolved = resolve_sampler_params(name, **params)
    missing = [c for c in TILING_POSITION_COLUMNS if c not in tiling_table.columns]
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
    longest = int(windows.max()) if windows.size else n_time_sample
    sub_window = steps is not None and n_time_sample < longest
    aggregation = resolved.get("aggregation")
    if sub_window and isinstance(aggregation, str) and _QUANTILE_RE.match(aggregation):
        raise ParameterError(
            f"{name}: aggregation={aggregation!r} is a quantile, which the tiling index holds for "
            f"whole {longest}-step windows only, not for the drawn {n_time_sample}-step samples; "
            f"fix: tile with n_time_window={n_time_sample} (a smaller time stride gives "
            "overlapping windows), or use aggregation='sum', 'mean', 'max' or 'frac_wet'"
        )
    sid = sampling_id(
        tiling_id,
        method=name,
        n_time_sample=n_time_sample,
        seed=seed,
        params=resolved,
        sub_window=sub_window,
    )
    csv_path, side_path = index_paths(index_dir, sid)
    # A CSV without sidecar is an interrupted write: rebuild it. A complete one must match.
    if csv_path.exists() and side_path.exists() and not recompute:
        expected = {
            "method": name,
            "seed": seed,
            "n_time_sample": n_time_sample,
            "scalar_steps": "sample" if sub_window else "window",
        }
        return load_sampling_index(
            csv_path,
            tiling_table=tiling_table,
            tiling_meta=tiling_meta,
            expected={**expected, "params": resolved},
        )

    candidates, rejected_nan = tiling_table, 0
    if sub_window:
        assert steps is not None
        candidates, rejected_nan = _sub_window_table(
            tiling_table, tiling_meta, steps, n_time_sample, seed
        )
    pool = run_sampler(name, candidates, seed=seed, **params)
    pos = pd.Index(tiling_table["tile_id"]).get_indexer(pool["source_tile_id"].to_numpy())
    if (pos < 0).any():
        raise ParameterError(
            f"sampler {name!r} returned tile ids that are not in the tiling table; fix the sampler"
        )
    src = tiling_table.iloc[pos]
    if name != "uniform" and n_time_sample < longest and not sub_window:
        warnings.warn(
            f"{name}: tiles are chosen by statistics of their whole {longest}-step window but a "
            f"sample is {n_time_sample} steps of it, so a tile picked as wet can give a dry "
            "sample; fix: pass the tiling's per-step statistics (steps=TileIndex.read_steps(), "
            "as the .tile() step and `prepare` do) so that they are the drawn steps' statistics, "
            f"or tile with n_time_window={n_time_sample}",
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
        "scalar_steps": "sample" if sub_window else "window",
        **(
            {
                "tiling_steps_sha256": (tiling_meta.get("steps") or {}).get("sha256"),
                "rejected_sub_window_nan": rejected_nan,
            }
            if sub_window
            else {}
        ),
        "n_tiles_in_tiling": len(tiling_table),
        "shape": tiling_meta.get("shape"),
        "source_url": tiling_meta.get("source_url"),
        "bin_edges": pool.attrs.get("bin_edges"),
        "bins": bins,
        "n_candidates": pool.attrs.get("n_candidates", len(tiling_table)),
        "acceptance_rate": pool.attrs.get("acceptance_rate", len(pool) / max(len(tiling_table), 1)),
        "package_version": package_version(),
        "created_on": utc_now_iso(),
    }
    full = write_sampling_index(csv_path, table, meta)
    table.attrs = {"sampler": name, "params": resolved, "bins": bins}
    return SamplingIndex(path=csv_path, meta=full, table=table, sampling_id=sid)
