"""Open an MLCast archive (path, URL, catalog entry or xarray object) as a (time, y, x) DataArray.

The SourceSpec in its encoding lets worker processes reopen it (``open_source``).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from mlcast_pipes.catalog import (
    DEMO_DRIVER,
    ZARR_DRIVERS,
    CatalogLike,
    resolve_entry,
    resolve_urlpath,
)
from mlcast_pipes.dataset.select import STANDARD_NAMES, _prepare, _std
from mlcast_pipes.dataset.spec import (
    _canonical_units,
    _check_needed,
    _infer_standard_name,
    _read_missing_times,
    _validated,
)
from mlcast_pipes.dataset.stores import (
    _MEMORY_ROOT,
    _basename,
    _is_in_memory_url,
    _is_url,
    _local_target,
    _looks_like_path,
    _open_store,
    _Target,
)
from mlcast_pipes.errors import CatalogError, DatasetError
from mlcast_pipes.indexes.format import sanitize_id

__all__ = ["SourceSpec", "open_mlcast", "open_source", "source_spec"]


_ON_DISK = "auto-on-disk"
_KEEP_COORDS = frozenset({"time", "y", "x", "lat", "lon"})


@dataclass(frozen=True)
class SourceSpec:
    """Everything needed to reopen an archive in another process (picklable, cheap).

    ``storage_options`` (fsspec options) are left out of equality and hashing; ``consolidated``
    None lets xarray find out.

    Examples
    --------
    >>> import pickle
    >>> spec = SourceSpec(url="/data/tiny.zarr", var_name="rainfall_rate", dataset_id="tiny")
    >>> pickle.loads(pickle.dumps(spec)) == spec
    True

    """

    url: str
    var_name: str
    dataset_id: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    consolidated: bool | None = None


def open_mlcast(
    source: str | os.PathLike[str] | xr.Dataset | xr.DataArray,
    var_name: str | None = None,
    *,
    catalog: CatalogLike = None,
    storage_options: Mapping[str, Any] | None = None,
    strict: bool = False,
    dataset_id: str | None = None,
) -> xr.DataArray:
    """Open an MLCast archive lazily as a ``(time, y, x)`` DataArray and check its structure.

    ``source``: a catalog id, zarr path, fsspec URL or xarray object (copied once per process into
    an in-memory store). ``var_name`` defaults to the CF ``standard_name`` pick; ``strict`` raises
    DatasetError instead of warning on spec deviations; ``dataset_id`` names index files (default:
    the archive's identifier, else the store's name). The result's attrs add ``dataset_id`` and
    ``missing_times``. Raises CatalogError for an unknown id, DatasetError for an unusable store.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> da.dims, da.shape, da.attrs["units"]
    (('time', 'y', 'x'), (130, 256, 256), 'mm h-1')

    """
    if isinstance(source, xr.Dataset | xr.DataArray):
        return _open_in_memory(source, var_name, strict=strict, dataset_id=dataset_id)
    target = _resolve_source(source, catalog, storage_options)
    ds = _open_store(target.url, target.storage_options, target.consolidated, {}, target.is_url)
    ds, name, _ = _validated(ds, var_name, strict=strict, hint=target.hint, label=target.url)
    # The id comes from the archive itself, so a catalog id, a path and a URL of the same
    # archive share their index files.
    did = sanitize_id(str(dataset_id)) if dataset_id is not None else _id_from_store(ds, target.url)
    spec = SourceSpec(
        url=target.url,
        var_name=name,
        dataset_id=did,
        storage_options=dict(target.storage_options),
        consolidated=target.consolidated,
    )
    return _finish(ds, name, spec)


def open_source(spec: SourceSpec, *, chunks: Any = _ON_DISK) -> xr.DataArray:
    """Reopen the archive a :class:`SourceSpec` describes (e.g. in a worker process).

    Needs are checked again, deviations not warned about. ``chunks``: ``"auto-on-disk"`` (as on
    disk), ``None`` (no dask), or anything :func:`xarray.open_zarr` accepts.

    Examples
    --------
    >>> from mlcast_pipes.dataset import source_spec
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> open_source(source_spec(da), chunks=None).shape == da.shape
    True

    """
    if not isinstance(spec, SourceSpec):
        raise DatasetError(
            f"open_source needs a SourceSpec, got {type(spec).__name__}; get one with "
            "source_spec(da) from a DataArray opened by open_mlcast."
        )
    _check_in_memory_here(spec.url)
    is_url = _is_url(spec.url)
    if is_url and spec.url.startswith("file://"):
        is_url = False
    chunk_arg = {} if isinstance(chunks, str) and chunks == _ON_DISK else chunks
    ds = _open_store(spec.url, spec.storage_options, spec.consolidated, chunk_arg, is_url)
    ds, name, _ = _prepare(ds, spec.var_name, None, spec.url)
    _check_needed(ds, name, spec.url)
    return _finish(ds, name, spec)


def source_spec(da: xr.DataArray) -> SourceSpec:
    """Return the :class:`SourceSpec` of an opened DataArray (DatasetError if it has none).

    Examples
    --------
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> spec = source_spec(da)
    >>> spec.var_name, source_spec(da.isel(time=slice(0, 12))) == spec  # selections keep it
    ('rainfall_rate', True)

    """
    spec = getattr(da, "encoding", {}).get("mlcast_source")
    if isinstance(spec, SourceSpec):
        return spec
    raise DatasetError(
        "this DataArray carries no source description (encoding['mlcast_source']): it was not "
        "opened with mlcast_pipes.dataset.open_mlcast, or an xarray operation dropped its "
        "encoding. Open the archive with open_mlcast and pass that DataArray."
    )


def _resolve_source(
    source: str | os.PathLike[str],
    catalog: CatalogLike,
    storage_options: Mapping[str, Any] | None,
) -> _Target:
    user_so = dict(storage_options or {})
    if isinstance(source, os.PathLike):
        return _local_target(os.fspath(source))
    if not isinstance(source, str) or not source.strip():
        raise DatasetError(
            f"source must be a catalog id, a local path or a URL, got {source!r}; e.g. 'demo', "
            "'/data/radar.zarr' or 's3://bucket/radar.zarr'."
        )
    text = source.strip()
    if _is_url(text):
        if text.startswith("file://"):
            return _local_target(text[len("file://") :])
        return _Target(text, True, user_so, None, None, None)
    if _looks_like_path(text):
        return _local_target(text)
    try:
        entry = resolve_entry(text, catalog)
    except CatalogError as exc:
        if os.path.exists(text):
            return _local_target(text)
        raise CatalogError(f"{exc} No local file or folder named {text!r} exists either.") from exc
    if entry.driver not in ZARR_DRIVERS and entry.driver != DEMO_DRIVER:
        raise CatalogError(
            f"catalog entry {entry.id!r} uses driver {entry.driver!r}; mlcast-pipes opens zarr "
            f"stores only (drivers 'zarr' and '{DEMO_DRIVER}'). Convert the data to an MLCast "
            "zarr archive or pass a zarr path."
        )
    url = resolve_urlpath(entry)
    is_url = _is_url(url) and not url.startswith("file://")
    if url.startswith("file://"):
        url = url[len("file://") :]
    return _Target(
        url=url if is_url else os.path.abspath(os.path.expanduser(url)),
        is_url=is_url,
        storage_options={**entry.storage_options, **user_so} if is_url else {},
        consolidated=entry.consolidated,
        hint=entry.var_name,
        entry_name=entry.name,
    )


#: content token -> the URL of its memory store, per process.
_IN_MEMORY: dict[str, str] = {}
_IN_MEMORY_LABEL = "the in-memory xarray object"


def _open_in_memory(
    obj: xr.Dataset | xr.DataArray,
    var_name: str | None,
    *,
    strict: bool,
    dataset_id: str | None,
) -> xr.DataArray:
    """Check an in-memory object, copy it into a content-addressed memory store, wrap it."""
    if isinstance(obj, xr.DataArray):
        if obj.name is not None:
            name = str(obj.name)
        else:
            name = var_name or STANDARD_NAMES.get(_std(obj), ("rainfall_rate",))[0]
        attrs = dict(obj.attrs)
        gaps = attrs.pop("missing_times", None)  # as open_mlcast gives it: into a variable
        obj_ds = obj.copy(deep=False).to_dataset(name=name)
        obj_ds.attrs = {}
        obj_ds[name].attrs = attrs
        if gaps is not None and np.size(gaps):
            obj_ds["missing_times"] = ("missing_time", np.asarray(gaps).ravel())
        var_name = var_name or name
    else:
        obj_ds = obj
    ds, name, _ = _validated(obj_ds, var_name, strict=strict, hint=None, label=_IN_MEMORY_LABEL)
    url = _memory_store(ds, name)
    spec = SourceSpec(
        url=url,
        var_name=name,
        dataset_id=sanitize_id(str(dataset_id) if dataset_id is not None else _basename(url)),
        consolidated=True,
    )
    # the DataArray keeps the object's own data (dask passes, e.g. on a distributed cluster,
    # carry it); the training reads decode the memory store, which holds the same values
    return _finish(ds, name, spec)


def _content_hash(ds: xr.Dataset, name: str, fs: Any, store: str) -> str:
    """Hash of the variable's values (its stored chunks), attributes and coordinate values.

    Stored metadata is left out: xarray encodes times differently for numpy and dask values.
    """
    digest = hashlib.sha256()
    attrs = json.dumps(dict(ds[name].attrs), sort_keys=True, default=str)
    digest.update(f"{name}|{ds[name].dtype}|{ds[name].shape}|{attrs}".encode())
    for coord in ("time", "y", "x", "missing_times"):
        if coord not in ds.variables:
            continue
        values = np.asarray(ds.variables[coord].values)
        if np.issubdtype(values.dtype, np.datetime64):
            values = values.astype("datetime64[ns]").view(np.int64)
        digest.update(f"|{coord}:{values.size}|".encode())
        digest.update(np.ascontiguousarray(values.astype(np.float64)).tobytes())
    folder = f"{store}/{name}/"
    for path in sorted(fs.find(folder)):
        if not path.rsplit("/", 1)[-1].startswith("."):
            digest.update(path[len(folder) :].encode())
            digest.update(fs.cat_file(path))
    return digest.hexdigest()[:16]


def _check_in_memory_here(url: str) -> None:
    """Raise a clear error when a store made from an in-memory object is not in this process."""
    if not _is_in_memory_url(url):
        return
    import fsspec

    if not fsspec.filesystem("memory").exists(f"{url}/.zmetadata"):
        raise DatasetError(
            f"{url} was made from an in-memory xarray object in another process and does not "
            "exist here. Pass the object itself to open_mlcast / .open_mlcast() in this process "
            "(it travels to worker processes by pickling), or save it once with "
            "ds.to_zarr('radar.zarr') and pass that path."
        )


def _memory_store(ds: xr.Dataset, name: str) -> str:
    """URL of the zarr copy of ``ds`` in this process's fsspec memory filesystem (made once)."""
    import dask
    import fsspec
    import numcodecs

    fs = fsspec.filesystem("memory")
    keep = [name, *(v for v in ("missing_times",) if v in ds.variables)]
    grid_mapping = ds[name].attrs.get("grid_mapping")
    if grid_mapping and str(grid_mapping) in ds.variables:
        keep.append(str(grid_mapping))
    # the values of a numpy-backed object (changed in place: a new token), a dask one's graph
    token = dask.base.tokenize(ds[keep])
    known = _IN_MEMORY.get(token)
    if known is not None and fs.exists(f"{known}/.zmetadata"):
        return known
    copy = ds[keep].copy(deep=False)
    for var in copy.variables.values():
        var.encoding = {}  # values as they are: no packing, fill values or chunks of a source
    _, ny, nx = (int(n) for n in copy[name].shape)
    if copy[name].chunks is not None:
        copy[name] = copy[name].chunk({"time": 1, "y": -1, "x": -1})
    encoding = {name: {"chunks": (1, ny, nx), "compressors": (numcodecs.Zstd(level=1),)}}
    tmp = f"{_MEMORY_ROOT}/tmp-{os.getpid()}-{uuid.uuid4().hex}.zarr"
    try:
        # in this process even under a distributed client: its workers have their own memory
        with dask.config.set(scheduler="threads"):
            copy.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        url = f"{_MEMORY_ROOT}/xarray-{_content_hash(copy, name, fs, tmp)}.zarr"
        if fs.exists(f"{url}/.zmetadata"):
            fs.rm(tmp, recursive=True)
        else:
            fs.mv(tmp, url, recursive=True)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise
    _IN_MEMORY[token] = url
    return url


def _id_from_store(ds: xr.Dataset, url: str) -> str:
    ident = ds.attrs.get("mlcast_dataset_identifier")
    if isinstance(ident, str) and ident.strip():
        version = ds.attrs.get("mlcast_dataset_version")
        if version is not None and str(version).strip():
            v = str(version).strip()
            return sanitize_id(f"{ident.strip()}-{v if v.lower().startswith('v') else 'v' + v}")
        return sanitize_id(ident)
    base = url.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    if base.lower().endswith(".zarr"):
        base = base[: -len(".zarr")]
    return sanitize_id(base)


def _finish(ds: xr.Dataset, name: str, spec: SourceSpec) -> xr.DataArray:
    """Build the (time, y, x) DataArray with the attrs and encoding of the shared conventions."""
    da = ds[name]
    drop = [str(c) for c in da.coords if str(c) not in _KEEP_COORDS]
    if drop:
        da = da.drop_vars(drop)
    attrs = dict(da.attrs)
    units = _canonical_units(attrs.get("units"))
    if units is not None and units != attrs.get("units"):
        attrs["units_original"] = attrs.get("units")
        attrs["units"] = units
    if not _std(da) and units is not None:
        attrs["standard_name"] = _infer_standard_name(units)
    attrs["dataset_id"] = spec.dataset_id
    attrs["missing_times"] = _read_missing_times(ds, spec.url)
    for key in ("consistent_timestep_start", "mlcast_dataset_identifier", "mlcast_dataset_version"):
        if key in ds.attrs:
            attrs[key] = ds.attrs[key]
    grid_mapping = attrs.get("grid_mapping")
    if grid_mapping and str(grid_mapping) in ds.variables:
        crs = ds.variables[str(grid_mapping)]
        wkt = crs.attrs.get("crs_wkt") or crs.attrs.get("spatial_ref")
        if wkt:
            attrs["crs_wkt"] = str(wkt)
    da.attrs = attrs
    encoding = dict(da.encoding)
    encoding["mlcast_source"] = spec
    da.encoding = encoding
    return da
