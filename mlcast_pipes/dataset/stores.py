"""zarr stores behind an archive: local paths, fsspec URLs, timeouts and readable open errors.

Used by the opening functions; nothing here selects variables or checks the spec.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import xarray as xr

from mlcast_pipes.errors import DatasetError

__all__ = ["with_timeouts"]


_ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json", ".zmetadata")


@dataclass
class _Target:
    """Where a source argument points to, after catalog resolution."""

    url: str
    is_url: bool
    storage_options: dict[str, Any]
    consolidated: bool | None
    hint: str | None
    entry_name: str | None


def _is_url(text: str) -> bool:
    return "://" in text


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or os.sep in text
        or text.startswith((".", "~"))
        or text.lower().rstrip("/").endswith(".zarr")
    )


#: fsspec memory-filesystem folder of the stores made from in-memory xarray objects.
_MEMORY_ROOT = "memory://mlcast-pipes"


def _is_in_memory_url(url: str) -> bool:
    return url.startswith(_MEMORY_ROOT + "/")


def _basename(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".zarr")] if base.endswith(".zarr") else base


def _local_target(path_text: str) -> _Target:
    path = os.path.abspath(os.path.expanduser(path_text))
    return _Target(path, False, {}, None, None, None)


def _check_local_store(path: pathlib.Path) -> bool:
    """Check that ``path`` is a zarr group; return whether it has consolidated metadata."""
    if not path.exists():
        raise DatasetError(
            f"the path {path} does not exist. Check the spelling and the working directory "
            f"({os.getcwd()}); pass a catalog id such as 'demo' or a URL for remote data."
        )
    if path.is_file():
        raise DatasetError(
            f"{path} is a file, not a zarr store; pass the zarr store folder (e.g. "
            "'radar.zarr'). Zipped stores must be unzipped first."
        )
    markers = [m for m in _ZARR_MARKERS if (path / m).exists()]
    if not markers:
        inner = sorted(
            p.name
            for p in path.iterdir()
            if p.is_dir() and any((p / m).exists() for m in _ZARR_MARKERS)
        )[:5]
        hint = f" It contains zarr stores {inner}; pass one of them." if inner else ""
        raise DatasetError(
            f"{path} is not a zarr store: it holds none of {', '.join(_ZARR_MARKERS)}.{hint} "
            "Pass the folder of a zarr store (usually named '*.zarr')."
        )
    if ".zarray" in markers and ".zgroup" not in markers:
        raise DatasetError(
            f"{path} is a single zarr array, not a dataset; pass the folder of the zarr group "
            "that holds the data variable and its coordinates."
        )
    if ".zmetadata" in markers:
        return True
    if "zarr.json" in markers:
        try:
            meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{path / 'zarr.json'} cannot be read as JSON ({exc}); the store is damaged; "
                "rewrite it."
            ) from exc
        if isinstance(meta, dict) and meta.get("node_type") == "array":
            raise DatasetError(
                f"{path} is a single zarr array, not a dataset; pass the folder of the zarr "
                "group that holds the data variable and its coordinates."
            )
        return isinstance(meta, dict) and bool(meta.get("consolidated_metadata"))
    return False


def with_timeouts(
    url: str, storage_options: Mapping[str, Any] | None, *, s3_attempts: int = 3
) -> dict[str, Any]:
    """Storage options with bounded connect/read timeouts (http(s), S3) and S3 attempts added.

    A silent server must not stall a pass or a training loop; options the user gives win.
    ``s3_attempts`` is botocore's per request (the reader passes 1 and retries on its own).

    Examples
    --------
    >>> with_timeouts("s3://b/x.zarr", {"anon": True})["config_kwargs"]["read_timeout"]
    30

    """
    opts = dict(storage_options or {})
    scheme = url.split("://", 1)[0].lower() if "://" in url and "::" not in url else ""
    if scheme in ("http", "https"):
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if "timeout" not in client_kwargs:
            try:
                import aiohttp
            except ImportError:  # pragma: no cover - aiohttp ships with the 'remote' extra
                return opts
            client_kwargs["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=30
            )
        opts["client_kwargs"] = client_kwargs
    elif scheme in ("s3", "s3a"):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("connect_timeout", 10)
        config.setdefault("read_timeout", 30)
        config.setdefault("retries", {"total_max_attempts": s3_attempts, "mode": "standard"})
        opts["config_kwargs"] = config
    return opts


def _open_store(
    url: str,
    storage_options: Mapping[str, Any],
    consolidated: bool | None,
    chunks: Any,
    is_url: bool,
) -> xr.Dataset:
    """Open a zarr store lazily with xarray, turning failures into DatasetError."""
    if is_url:
        options: dict[str, Any] | None = with_timeouts(url, storage_options) or None
        _preflight(url, options or {})
    else:
        options = None
        found = _check_local_store(pathlib.Path(url))
        if consolidated is None or (consolidated and not found):
            consolidated = found
    attempts: list[bool | None] = [consolidated]
    if is_url and consolidated:
        attempts.append(None)  # the catalog may claim consolidated metadata the store lacks
    error: Exception | None = None
    for cons in attempts:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"(?s).*[Cc]onsolidated metadata")
                opened: xr.Dataset = xr.open_zarr(
                    url, chunks=chunks, consolidated=cons, storage_options=options
                )
                return opened
        except Exception as exc:
            error = exc
            if _is_connection_error(exc):
                break
    assert error is not None
    raise _open_error(url, error, is_url, options) from error


def _preflight(url: str, options: Mapping[str, Any]) -> None:
    """Look for a zarr marker file with single requests, so an unreachable host fails cleanly.

    One request at a time fails fast and leaves no concurrent requests behind (zarr's parallel
    metadata reads would otherwise be abandoned half-way when the host is down).
    """
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except Exception as exc:
        raise DatasetError(
            f"cannot open {url}: {type(exc).__name__}: {exc}. Check the URL scheme and "
            "storage_options (s3:// needs s3fs, http(s):// needs aiohttp)."
        ) from exc
    root = str(path).rstrip("/")
    for marker in (".zmetadata", "zarr.json", ".zgroup"):
        try:
            fs.info(f"{root}/{marker}")
            return
        except FileNotFoundError as exc:
            if _is_connection_error(exc):
                raise _open_error(url, exc, True, options) from exc
        except Exception as exc:
            raise _open_error(url, exc, True, options) from exc
    raise DatasetError(
        f"no zarr store found at {url}: none of .zmetadata, zarr.json, .zgroup exists there. "
        "Check the URL (it should point to the '*.zarr' folder) and storage_options."
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
        if isinstance(current, BaseExceptionGroup):  # pragma: no cover - rare in zarr
            current = current.exceptions[0] if current.exceptions else None


_CONNECTION_NAMES = frozenset(
    {
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerTimeoutError",
        "ServerDisconnectedError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "FSTimeoutError",
        "gaierror",
    }
)


def _is_connection_error(exc: BaseException) -> bool:
    return any(
        type(e).__name__ in _CONNECTION_NAMES or isinstance(e, ConnectionError | TimeoutError)
        for e in _chain(exc)
    )


def _open_error(
    url: str, exc: Exception, is_url: bool, options: Mapping[str, Any] | None = None
) -> DatasetError:
    what = f"{type(exc).__name__}: {exc}"
    if len(what) > 400:
        what = what[:400] + "..."
    names = {type(e).__name__ for e in _chain(exc)}
    if is_url and _is_connection_error(exc):
        return DatasetError(
            f"could not reach {url} ({what}). Check the URL and the network connection; for "
            "S3 check storage_options['endpoint_url'], for private data your credentials."
        )
    denied = any(isinstance(e, PermissionError) for e in _chain(exc)) or bool(
        names & {"NoCredentialsError", "AccessDenied", "ClientAuthenticationError"}
    )
    if denied:
        if options and options.get("anon"):
            return DatasetError(
                f"anonymous access to {url} was denied ({what}): the store is not public. Pass "
                "credentials in storage_options (e.g. {'key': ..., 'secret': ...} or "
                "{'profile': ...}) with anon=False, or configure them in the environment."
            )
        return DatasetError(
            f"access to {url} was denied ({what}). For public buckets pass "
            "storage_options={'anon': True}; otherwise configure credentials."
        )
    not_found = any(isinstance(e, FileNotFoundError | KeyError) for e in _chain(exc)) or bool(
        names & {"GroupNotFoundError", "NodeNotFoundError", "PathNotFoundError"}
    )
    if not_found:
        return DatasetError(
            f"no zarr store found at {url} (none of {', '.join(_ZARR_MARKERS)} could be read; "
            f"{what}). Check the URL (it should point to the '*.zarr' folder) and "
            "storage_options."
        )
    return DatasetError(
        f"xarray could not open the zarr store at {url} ({what}). Check that it is a zarr "
        "store written by xarray (zarr v2 or v3) and that storage_options are right."
    )
