"""Index CSV files: write one with its sidecar, validate it against the sidecar, read it back.

Used by the tiling and sampling passes; a CSV is complete only once its sidecar exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import (
    CSV_SUFFIX,
    FORMAT_VERSION,
    SIDECAR_SUFFIX,
    VerifyMode,
    _jsonable,
    atomic_write,
    cleanup_stale_temps,
    ensure_writable_dir,
    file_sha256,
    index_paths,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "load_index",
    "read_index_table",
    "resolve_csv_path",
    "validate_index",
    "write_index",
]


def write_index(
    csv_path: str | os.PathLike[str],
    chunks: Iterable[pd.DataFrame],
    meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    columns: Sequence[str],
    float_format: str = "%.6g",
) -> dict[str, Any]:
    """Write an index CSV chunk by chunk, then its sidecar, atomically; return the sidecar.

    The sidecar (row count, size, sha256) is written last, so an interrupted write never leaves an
    index that looks complete. ``chunks`` are DataFrames with exactly ``columns``; ``meta`` is a
    mapping or a function called after the last chunk.

    Examples
    --------
    >>> rows = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]})
    >>> meta = write_index("wi/demo.samples.csv", [rows], {"kind": "demo"}, columns=["a", "b"])
    >>> meta["n_rows"], sorted(p.name for p in Path("wi").iterdir())
    (2, ['demo.meta.json', 'demo.samples.csv'])

    """
    csv = Path(csv_path)
    side = sidecar_path(csv)
    folder = ensure_writable_dir(csv.parent)
    cleanup_stale_temps(folder)
    cols = list(columns)
    n_rows = 0

    def _drop_old_sidecar() -> None:
        side.unlink(missing_ok=True)

    with atomic_write(csv, before_commit=_drop_old_sidecar) as fh:
        fh.write(",".join(cols) + "\n")
        for chunk in chunks:
            if list(chunk.columns) != cols:
                raise IndexFileError(
                    f"internal error: rows for {csv.name} have columns {list(chunk.columns)}, "
                    f"expected {cols}; fix: report this as a bug"
                )
            if len(chunk) == 0:
                continue
            chunk.to_csv(
                fh,
                header=False,
                index=False,
                float_format=float_format,
                na_rep="nan",
                lineterminator="\n",
            )
            n_rows += len(chunk)
    full = dict(meta() if callable(meta) else meta)
    full.setdefault("format_version", FORMAT_VERSION)
    full.update(
        {
            "n_rows": n_rows,
            "csv_file": csv.name,
            "csv_bytes": fh.nbytes,
            "csv_sha256": fh.sha256,
            "columns": cols,
        }
    )
    write_sidecar(side, full)
    return full


def resolve_csv_path(path: str | os.PathLike[str], index_id: str | None = None) -> Path:
    """The index CSV named by a CSV path, a sidecar path, or a folder plus an index id.

    Examples
    --------
    >>> resolve_csv_path("idx", "radar").as_posix(), resolve_csv_path("idx/radar.meta.json").name
    ('idx/radar.samples.csv', 'radar.samples.csv')

    """
    p = Path(path)
    if index_id is not None:
        return index_paths(p, index_id)[0]
    if p.is_dir():
        raise ParameterError(
            f"{str(p)!r} is a folder; fix: pass the index CSV path, or the folder and the index id"
        )
    if p.name.endswith(SIDECAR_SUFFIX):
        return p.with_name(p.name[: -len(SIDECAR_SUFFIX)] + CSV_SUFFIX)
    return p


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return "(" + ", ".join(_fmt_value(x) for x in v) + ")"
    return repr(v)


def validate_index(
    path: str | os.PathLike[str],
    index_id: str | None = None,
    *,
    kind: str | None = None,
    expected_params: Mapping[str, Any] | None = None,
    expected_fingerprint: str | None = None,
    verify: VerifyMode = "size",
    rerun_hint: str = "rerun `mlcast-pipes prepare` for this dataset",
) -> dict[str, Any]:
    """Check that an index is complete, intact and made for the expected parameters and data.

    ``path`` is the CSV or sidecar, or the folder with ``index_id``. ``verify="size"`` compares
    the CSV size with the sidecar, ``"sha256"`` also hashes it. Returns the sidecar. Raises
    IndexFileError (missing, incomplete or edited files) or StaleIndexError (other format
    version, ``expected_params`` or ``expected_fingerprint``), with ``rerun_hint`` as the fix.

    Examples
    --------
    >>> rows = pd.DataFrame({"a": [1, 2]})
    >>> _ = write_index("vi/x.samples.csv", [rows], {"params": {"size": 64}}, columns=["a"])
    >>> try:
    ...     validate_index("vi", "x", expected_params={"size": 32})
    ... except StaleIndexError as exc:
    ...     print(exc)
    index 'vi/x.samples.csv' was made with other parameters (size: index has 64, asked 32); fix: ...

    """
    csv = resolve_csv_path(path, index_id)
    side = sidecar_path(csv)
    fix_stale = f"fix: {rerun_hint}, or pass recompute=True (or on_stale='recompute')"
    if not csv.exists():
        raise IndexFileError(f"index file {str(csv)!r} not found; fix: {rerun_hint} to create it")
    if not side.exists():
        raise IndexFileError(
            f"index incomplete (no sidecar) - rerun prepare: {str(csv)!r} has no {side.name}, "
            f"the pass that wrote it was interrupted; fix: {rerun_hint}"
        )
    meta = read_sidecar(side)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StaleIndexError(
            f"index {str(csv)!r} has format version {version!r}, this mlcast-pipes reads version "
            f"{FORMAT_VERSION}; {fix_stale}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise IndexFileError(
            f"index {str(csv)!r} is a {meta.get('kind')!r} index, a {kind!r} index was expected; "
            "fix: pass the right index file"
        )
    size = csv.stat().st_size
    if size != meta.get("csv_bytes"):
        raise IndexFileError(
            f"index CSV {str(csv)!r} has {size} bytes but its sidecar records "
            f"{meta.get('csv_bytes')}: the file was truncated or edited after it was written; "
            f"fix: {rerun_hint} (recompute=True), or restore the original file"
        )
    if verify == "sha256":
        digest = file_sha256(csv)
        if digest != meta.get("csv_sha256"):
            raise IndexFileError(
                f"index CSV {str(csv)!r} does not match the sha256 recorded in its sidecar: the "
                f"file was edited after it was written; fix: {rerun_hint} (recompute=True), or "
                "restore the original file"
            )
    elif verify != "size":
        raise ParameterError(f"verify={verify!r} is not supported; fix: use 'size' or 'sha256'")
    with open(csv, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split(",")
    if header != list(meta.get("columns", [])):
        raise IndexFileError(
            f"index CSV {str(csv)!r} has columns {header} but its sidecar lists "
            f"{meta.get('columns')}; fix: {rerun_hint} (recompute=True)"
        )
    if expected_fingerprint is not None and meta.get("dataset_fingerprint") != expected_fingerprint:
        raise StaleIndexError(
            f"index {str(csv)!r} is stale: the dataset fingerprint changed "
            f"(index: {meta.get('dataset_fingerprint')!r}, dataset now: {expected_fingerprint!r}); "
            f"the dataset changed or was appended to since the index was made; {fix_stale}"
        )
    if expected_params is not None:
        stored = _jsonable(meta.get("params", {}))
        wanted = _jsonable(dict(expected_params))
        changes = [
            f"{k}: index has {_fmt_value(stored.get(k))}, asked {_fmt_value(wanted[k])}"
            for k in wanted
            if stored.get(k) != wanted[k]
        ]
        if changes:
            raise StaleIndexError(
                f"index {str(csv)!r} was made with other parameters ({'; '.join(changes)}); "
                f"{fix_stale}"
            )
    return meta


def read_index_table(
    path: str | os.PathLike[str],
    meta: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a validated index CSV with the sidecar's compact dtypes (``columns``: a subset).

    Raises ParameterError for an unknown column, IndexFileError if the CSV cannot be parsed.

    Examples
    --------
    >>> from mlcast_pipes.indexes.format import tiling_dtypes
    >>> rows = pd.DataFrame({"t_start": [0, 4], "mean": [0.5, 1.25]})
    >>> meta = {"dtypes": tiling_dtypes(["t_start", "mean"])}
    >>> meta = write_index("ri/x.samples.csv", [rows], meta, columns=["t_start", "mean"])
    >>> read_index_table("ri/x.samples.csv", meta).dtypes.astype(str).to_dict()
    {'t_start': 'int32', 'mean': 'float32'}

    """
    all_cols = list(meta.get("columns", []))
    if columns is not None:
        unknown = [c for c in columns if c not in all_cols]
        if unknown:
            raise ParameterError(
                f"columns {unknown} are not in index {Path(path).name}; fix: choose from {all_cols}"
            )
        use = [c for c in all_cols if c in set(columns)]
    else:
        use = all_cols
    dtypes = dict(meta.get("dtypes") or {})
    parse_dates = [c for c in use if str(dtypes.get(c, "")).startswith("datetime64")]
    read_dtypes = {c: dtypes[c] for c in use if c in dtypes and c not in parse_dates}
    try:
        frame = pd.read_csv(
            path,
            usecols=use,
            dtype=read_dtypes,
            engine="c",
            na_values=["nan"],
        )
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise IndexFileError(
            f"index CSV {str(path)!r} cannot be parsed ({exc}); fix: rerun prepare with "
            "recompute=True to rebuild it"
        ) from exc
    for c in parse_dates:
        frame[c] = pd.to_datetime(frame[c], format="%Y-%m-%dT%H:%M:%S").astype("datetime64[ns]")
    return frame[use] if list(frame.columns) != use else frame


def load_index(
    path: str | os.PathLike[str],
    index_id: str | None = None,
    *,
    kind: str | None = None,
    expected_params: Mapping[str, Any] | None = None,
    expected_fingerprint: str | None = None,
    verify: VerifyMode = "size",
    columns: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Validate (see :func:`validate_index`) and read an index: ``(table, meta)``.

    Examples
    --------
    >>> rows = pd.DataFrame({"a": [1, 2, 3]})
    >>> _ = write_index("li/x.samples.csv", [rows], {"kind": "demo"}, columns=["a"])
    >>> table, meta = load_index("li", "x", kind="demo")
    >>> table["a"].tolist(), meta["n_rows"]
    ([1, 2, 3], 3)

    """
    csv = resolve_csv_path(path, index_id)
    meta = validate_index(
        csv,
        kind=kind,
        expected_params=expected_params,
        expected_fingerprint=expected_fingerprint,
        verify=verify,
    )
    return read_index_table(csv, meta, columns=columns), meta
