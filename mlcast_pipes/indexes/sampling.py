"""Sampling index files: a sampler's pool of tiles with its id, sidecar and staleness checks.

Built from a tiling index by a registered sampler (:mod:`mlcast_pipes.sampling`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import (
    CSV_SUFFIX,
    SIDECAR_SUFFIX,
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
    _TILING_POSITION_COLUMNS,
    SAMPLES_COLUMNS,
    SamplingWarning,
    _check_n_time_sample,
    _check_seed,
)
from mlcast_pipes.sampling.epoch import assign_time_offsets
from mlcast_pipes.sampling.registry import resolve_sampler_params, run_sampler, sampler_name

__all__ = [
    "SamplingIndex",
    "build_sampling_index",
    "load_sampling_index",
    "sampling_id",
    "write_sampling_index",
]


def sampling_id(
    tiling_id: str, *, method: str, n_time_sample: int, seed: int, params: Mapping[str, Any]
) -> str:
    """Return the sampling id ``{tiling_id}.{n_time_sample}.{method}.{hash}``.

    The hash (12 hex digits of SHA-256) covers the tiling id, method, n_time_sample, seed and the
    resolved parameters in canonical form, so equal settings give equal ids (``s=1`` and
    ``s=1.0`` alike, defaults spelled out or not) and any difference gives another id. The
    tiling id is made filename-safe with :func:`~mlcast_pipes.indexes.format.sanitize_id` (the
    hash is taken over the raw id, so it still tells such ids apart).

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
        "package_version": package_version(),
        "created_on": utc_now_iso(),
    }
    full = write_sampling_index(csv_path, table, meta)
    table.attrs = {"sampler": name, "params": resolved, "bins": bins}
    return SamplingIndex(path=csv_path, meta=full, table=table, sampling_id=sid)
