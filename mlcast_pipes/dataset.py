"""Opening and validating MLCast radar archives as lazy (time, y, x) DataArrays.

Every pipeline starts here: ids, paths and URLs become DataArrays with a reopenable SourceSpec.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping
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
from mlcast_pipes.errors import CatalogError, DatasetError
from mlcast_pipes.indexes.format import sanitize_id
from mlcast_pipes.transforms import canonical_units, known_units, units_kind

__all__ = [
    "KNOWN_UNITS",
    "SPEC_GLOBAL_ATTRS",
    "STANDARD_NAMES",
    "MLCastSpecWarning",
    "SourceSpec",
    "dataset_id",
    "fingerprint",
    "metadata_stamp",
    "missing_times",
    "nominal_time_step",
    "open_mlcast",
    "open_source",
    "select_variable",
    "source_spec",
    "validate",
]

#: Variable names the MLCast spec allows for each CF standard_name (compared case-insensitively).
STANDARD_NAMES: dict[str, tuple[str, ...]] = {
    "rainfall_flux": ("mmh", "rr", "rain_rate", "rainfall_rate", "rainfall_flux"),
    "precipitation_flux": ("tprate", "prate"),
    "equivalent_reflectivity_factor": ("equivalent_reflectivity_factor", "dbz", "rare"),
    "precipitation_amount": ("rainfall_amount", "mm", "precipitation_amount", "tp"),
    "rainfall_amount": ("rainfall_amount", "mm", "precipitation_amount", "tp"),
}

_RATE_UNITS = ("mm h-1", "mm/h", "kg m-2 h-1")
_AMOUNT_UNITS = ("mm", "kg m-2")
_DBZ_UNITS = ("dBZ",)

#: Units the spec allows for each standard_name.
UNITS_BY_STANDARD_NAME: dict[str, tuple[str, ...]] = {
    "rainfall_flux": _RATE_UNITS,
    "precipitation_flux": _RATE_UNITS,
    "equivalent_reflectivity_factor": _DBZ_UNITS,
    "precipitation_amount": _AMOUNT_UNITS,
    "rainfall_amount": _AMOUNT_UNITS,
}

#: Every unit the pipeline can convert to a rain rate, in canonical spelling (the one units table
#: of :mod:`mlcast_pipes.transforms`); other spellings such as ``mm/hr`` reduce to these.
KNOWN_UNITS: tuple[str, ...] = tuple(known_units())

#: Global attributes the spec asks for.
SPEC_GLOBAL_ATTRS: tuple[str, ...] = (
    "license",
    "mlcast_dataset_identifier",
    "mlcast_dataset_version",
    "mlcast_created_on",
    "mlcast_created_by",
    "mlcast_created_with",
)

_MIN_SIDE = 256
_MAX_RESOLUTION_M = 1000.0
_ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json", ".zmetadata")
_ON_DISK = "auto-on-disk"
_KEEP_COORDS = frozenset({"time", "y", "x", "lat", "lon"})

_TIME_NAMES = ("time", "t", "valid_time", "datetime")
_X_NAMES = ("x", "easting", "projection_x_coordinate")
_Y_NAMES = ("y", "northing", "projection_y_coordinate")
_LON_NAMES = ("lon", "longitude")
_LAT_NAMES = ("lat", "latitude")


class MLCastSpecWarning(UserWarning):
    """An archive deviates from the MLCast dataset spec in a way the pipeline can live with.

    Examples
    --------
    A demo archive on a 64 x 64 grid is usable, but smaller than the spec asks:

    >>> import warnings
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("grid64.zarr", "tiny", seed=0, n_times=4, shape=(64, 64))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     da = open_mlcast(path)
    >>> [w.category.__name__ for w in caught]
    ['MLCastSpecWarning']
    >>> print(caught[0].message)
    /...grid64.zarr: the grid is smaller than 256 pixels along y=64, x=64; the spec asks each
    spatial dim to be >= 256.

    With ``strict=True`` the deviation is an error instead:

    >>> open_mlcast(path, strict=True)
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.DatasetError: /...grid64.zarr deviates from the MLCast dataset spec
    (strict=True): ...

    """


@dataclass(frozen=True)
class SourceSpec:
    """Everything needed to reopen an archive in another process (picklable, cheap).

    Attributes
    ----------
    url : str
        Local path or fsspec URL of the zarr store.
    var_name : str
        Name of the data variable in the store.
    dataset_id : str
        Filename-safe id of the dataset (see :func:`sanitize_id`).
    storage_options : dict
        fsspec options for URLs; left out of equality and hashing.
    consolidated : bool or None
        Whether the store has consolidated metadata (None: let xarray find out).

    Examples
    --------
    >>> import pickle
    >>> from mlcast_pipes.demo import ensure_demo
    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> spec = SourceSpec(url=str(path.resolve()), var_name="rainfall_rate", dataset_id="tiny")
    >>> pickle.loads(pickle.dumps(spec)) == spec
    True
    >>> open_source(spec).shape
    (130, 256, 256)

    """

    url: str
    var_name: str
    dataset_id: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    consolidated: bool | None = None


@dataclass
class _Target:
    """Where a source argument points to, after catalog resolution."""

    url: str
    is_url: bool
    storage_options: dict[str, Any]
    consolidated: bool | None
    hint: str | None
    entry_name: str | None


# --------------------------------------------------------------------------------------------
# public API


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

    Parameters
    ----------
    source : str, os.PathLike, xarray.Dataset or xarray.DataArray
        A catalog id (``"demo"``, ``"precipitation.dmi_10_minutes"`` or the short
        ``"dmi_10_minutes"``), a local zarr path, an fsspec URL (``s3://``, ``https://``,
        ``memory://``, ...), or an in-memory xarray object (numpy- or dask-backed). An
        object is checked like a store, then copied once per process into an in-memory zarr
        store (one zstd chunk per frame: a full pass over its pixels, and memory for the
        compressed copy) that the training reads decode; its dataset id is
        ``xarray-<content hash>`` unless ``dataset_id`` is given, so indexes are keyed by the
        object's content. Worker processes receive the object by pickling and make their own
        copy.
    var_name : str, optional
        Data variable to use. When None it is picked by CF ``standard_name`` (see
        :data:`STANDARD_NAMES`); when several qualify the catalog's ``variable`` hint decides.
    catalog : str, os.PathLike, mapping or None
        Your own intake-v1 catalog to resolve ids with; the bundled catalog when None.
    storage_options : mapping, optional
        fsspec options for URLs; they override the catalog's. Connection and read timeouts are
        added for ``http(s)://`` and ``s3://`` unless given.
    strict : bool
        Raise :class:`~mlcast_pipes.errors.DatasetError` on any deviation from the MLCast spec
        instead of warning with :class:`MLCastSpecWarning`.
    dataset_id : str, optional
        Id to use for index files; else the archive's ``mlcast_dataset_identifier``
        (+ ``mlcast_dataset_version``), else the store's name, whether the archive was named
        by catalog id, path or URL (so all three share one index). Always passed through
        :func:`sanitize_id`.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``("time", "y", "x")``, chunks as on disk, time as ``datetime64[ns]``.
        ``attrs`` holds the variable's attributes plus ``dataset_id``, ``missing_times``
        (datetime64[ns] array) and ``consistent_timestep_start`` when the archive has it;
        ``encoding["mlcast_source"]`` holds the :class:`SourceSpec`.

    Raises
    ------
    CatalogError
        Unknown or ambiguous catalog id, or an entry whose driver is not zarr.
    DatasetError
        Missing path, a folder that is not a zarr store, an unreachable URL, or an archive the
        pipeline cannot use (see :func:`validate`).

    Examples
    --------
    ``open_mlcast("demo")`` opens the catalog's demo archive (generated into the cache on first
    use); here a smaller one is made locally:

    >>> from mlcast_pipes.demo import ensure_demo
    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> da = open_mlcast(path)
    >>> da.dims, da.shape
    (('time', 'y', 'x'), (130, 256, 256))
    >>> da.attrs["units"], da.attrs["dataset_id"]
    ('mm h-1', 'zz-mlcastpipes-demo-tiny-seed0-v1.0.0')
    >>> open_mlcast(path, dataset_id="my radar/v2").attrs["dataset_id"]
    'my_radar_v2'

    An in-memory object gets an id from its content:

    >>> mem = open_mlcast(xr.open_zarr(path).load())
    >>> mem.attrs["dataset_id"].startswith("xarray-"), mem.shape
    (True, (130, 256, 256))

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

    Spec deviations are not warned about again; what the pipeline needs is still checked.

    Parameters
    ----------
    spec : SourceSpec
        From :func:`source_spec` of an opened DataArray.
    chunks : Any
        ``"auto-on-disk"`` (default) for dask chunks as on disk, ``None`` for lazy arrays
        without dask, or anything :func:`xarray.open_zarr` accepts.

    Returns
    -------
    xarray.DataArray
        The same ``(time, y, x)`` DataArray :func:`open_mlcast` returned.

    Raises
    ------
    DatasetError
        If the store cannot be opened or no longer fits the pipeline.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> again = open_source(source_spec(da))
    >>> again.shape == da.shape, again.attrs["dataset_id"] == da.attrs["dataset_id"]
    (True, True)
    >>> open_source(source_spec(da), chunks=None).chunks is None  # no dask
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


def validate(
    ds: xr.Dataset,
    var_name: str | None = None,
    *,
    strict: bool = False,
    hint: str | None = None,
) -> list[str]:
    """Check a dataset against the MLCast structure.

    What the pipeline needs raises :class:`~mlcast_pipes.errors.DatasetError`: exactly one
    usable data variable, dims ``(time, y, x)`` (recognised by name, ``standard_name`` or
    ``axis``), float dtype, strictly increasing datetime times, units from
    :data:`KNOWN_UNITS` and a decodable ``missing_times``. Other deviations from the spec
    (chunking not ``(1, H, W)``, no compression, no ``grid_mapping``/CRS, missing global
    attributes, a side < 256 pixels, resolution > 1 km, no 2-D lat/lon, ...) are warned about
    with :class:`MLCastSpecWarning`, or raise when ``strict``.

    Parameters
    ----------
    ds : xarray.Dataset
        The dataset as stored (before renaming).
    var_name : str, optional
        Data variable; picked by ``standard_name`` when None.
    strict : bool
        Raise on spec deviations instead of warning.
    hint : str, optional
        Preferred variable when several have a suitable ``standard_name``.

    Returns
    -------
    list of str
        The deviation messages that were warned about (empty for a conforming archive).

    Raises
    ------
    DatasetError
        If the pipeline cannot use the dataset, or ``strict`` and it deviates from the spec.

    Examples
    --------
    A bare in-memory dataset is usable but far from the spec; each deviation is warned about:

    >>> import warnings
    >>> times = np.array(["2021-06-12T10:00", "2021-06-12T10:05"], "M8[ns]")
    >>> rain = (("time", "y", "x"), np.zeros((2, 8, 8), "f4"), {"units": "mm h-1"})
    >>> ds = xr.Dataset({"rainfall_rate": rain}, coords={"time": times})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     messages = validate(ds)
    >>> len(messages) == len(caught) > 0
    True
    >>> print(messages[0])
    variable 'rainfall_rate' has no 'standard_name' attribute; set it (e.g. 'rainfall_flux' for
    units 'mm h-1').

    A conforming archive gives no message:

    >>> from mlcast_pipes.demo import ensure_demo
    >>> validate(xr.open_zarr(ensure_demo("tiny.zarr", preset="tiny", seed=0)))
    []

    """
    label = str(ds.encoding.get("source") or "the dataset")
    _, _, messages = _validated(ds, var_name, strict=strict, hint=hint, label=label)
    return messages


def select_variable(ds: xr.Dataset, var_name: str | None, *, hint: str | None = None) -> str:
    """Name of the data variable to use.

    Parameters
    ----------
    ds : xarray.Dataset
        The dataset.
    var_name : str or None
        Explicit choice (must be a data variable), or None to pick by CF ``standard_name``, then
        by the variable names of the spec, then the only 3-D data variable.
    hint : str, optional
        Preferred variable (e.g. a catalog's ``variable``) when several candidates qualify.

    Returns
    -------
    str
        The variable's name.

    Raises
    ------
    DatasetError
        If ``var_name`` is not a data variable (the data variables are listed), or no or several
        candidates qualify.

    Examples
    --------
    >>> attrs = {"standard_name": "rainfall_flux"}
    >>> rain = xr.Variable(("time", "y", "x"), np.zeros((2, 4, 4)), attrs)
    >>> quality = xr.Variable(("y", "x"), np.ones((4, 4)))
    >>> select_variable(xr.Dataset({"rr": rain, "quality": quality}), None)
    'rr'

    When several variables qualify, ``hint`` decides:

    >>> select_variable(xr.Dataset({"rr": rain, "rain_rate": rain}), None, hint="rain_rate")
    'rain_rate'

    """
    label = str(ds.encoding.get("source") or "the dataset")
    return _select(ds, var_name, hint, label)


def source_spec(da: xr.DataArray) -> SourceSpec:
    """Return the :class:`SourceSpec` of a DataArray opened by :func:`open_mlcast`.

    Parameters
    ----------
    da : xarray.DataArray
        An opened archive (or a selection of it that kept its encoding).

    Returns
    -------
    SourceSpec
        How to reopen the archive.

    Raises
    ------
    DatasetError
        If the DataArray carries no SourceSpec.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> spec = source_spec(da)
    >>> spec.var_name, spec.url.endswith("tiny.zarr")
    ('rainfall_rate', True)
    >>> source_spec(da.isel(time=slice(0, 12))) == spec  # selections keep it
    True

    """
    spec = getattr(da, "encoding", {}).get("mlcast_source")
    if isinstance(spec, SourceSpec):
        return spec
    raise DatasetError(
        "this DataArray carries no source description (encoding['mlcast_source']): it was not "
        "opened with mlcast_pipes.dataset.open_mlcast, or an xarray operation dropped its "
        "encoding. Open the archive with open_mlcast and pass that DataArray."
    )


def missing_times(da: xr.DataArray) -> np.ndarray:
    """Return the archive's ``missing_times`` as a sorted ``datetime64[ns]`` array (maybe empty).

    Parameters
    ----------
    da : xarray.DataArray
        An archive opened by :func:`open_mlcast`.

    Returns
    -------
    numpy.ndarray
        Absent nominal time steps.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> gaps = missing_times(da)
    >>> gaps.size, gaps.dtype
    (2, dtype('<M8[ns]'))
    >>> bool(np.isin(gaps, da["time"].values).any())  # never also in the time axis
    False
    >>> missing_times(xr.DataArray(np.zeros(3))).size  # no attribute: empty
    0

    """
    value = da.attrs.get("missing_times")
    if value is None:
        return np.array([], dtype="datetime64[ns]")
    arr = np.asarray(value).ravel()
    if arr.size == 0:
        return np.array([], dtype="datetime64[ns]")
    return np.sort(arr.astype("datetime64[ns]"))


def dataset_id(da: xr.DataArray) -> str:
    """Return the filename-safe id of an opened archive.

    Parameters
    ----------
    da : xarray.DataArray
        An archive opened by :func:`open_mlcast`.

    Returns
    -------
    str
        ``da.attrs["dataset_id"]``, else the SourceSpec's id.

    Raises
    ------
    DatasetError
        If the DataArray has neither.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> dataset_id(open_mlcast(path))
    'zz-mlcastpipes-demo-tiny-seed0-v1.0.0'
    >>> dataset_id(open_mlcast(path, dataset_id="radar 2021"))
    'radar_2021'

    """
    value = da.attrs.get("dataset_id")
    if isinstance(value, str) and value:
        return value
    return source_spec(da).dataset_id


#: Environment variable: "0" leaves the chunk sample out of :func:`fingerprint`.
CHUNK_FINGERPRINT_ENV = "MLCAST_PIPES_FINGERPRINT_CHUNKS"
#: Time chunks of the variable whose stored (compressed) size the fingerprint covers.
_CHUNK_SAMPLE = 16


def fingerprint(da: xr.DataArray, *, chunks: bool | None = None) -> str:
    """Hash an archive's metadata and a sample of its chunks, to detect indexes of other data.

    It covers the variable name, shape, dtype, standard_name, units, the time, y and x values,
    ``missing_times`` and the stored (compressed) size of 16 time chunks spread evenly over the
    archive, the same for a local copy and an object store; no pixel is read. Appending
    frames, changing coordinates or rewriting the pixels changes it (a rewrite that keeps
    every sampled chunk's size is not seen).

    Parameters
    ----------
    da : xarray.DataArray
        An archive opened by :func:`open_mlcast`.
    chunks : bool, optional
        Include the chunk sample (default: yes, unless ``$MLCAST_PIPES_FINGERPRINT_CHUNKS`` is
        ``0``). Turning it off or on changes the fingerprint.

    Returns
    -------
    str
        The first 16 hex digits of a SHA-256.

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> path = ensure_demo("tiny.zarr", preset="tiny", seed=0)
    >>> fp = fingerprint(open_mlcast(path))
    >>> len(fp), fp == fingerprint(open_mlcast(path))
    (16, True)
    >>> fingerprint(open_mlcast(path).isel(time=slice(0, 12))) == fp  # other frames
    False

    """
    spec = da.encoding.get("mlcast_source")
    name = spec.var_name if isinstance(spec, SourceSpec) else str(da.name)
    digest = hashlib.sha256()
    header = {
        "var_name": name,
        "dims": [str(d) for d in da.dims],
        "shape": [int(n) for n in da.shape],
        "dtype": str(da.dtype),
        "standard_name": str(da.attrs.get("standard_name", "")),
        "units": str(da.attrs.get("units", "")),
    }
    if isinstance(spec, SourceSpec) and _is_in_memory_url(spec.url):
        header["content"] = spec.url  # an in-memory object: its URL holds its content hash
    digest.update(json.dumps(header, sort_keys=True).encode())
    for dim in da.dims:
        values = np.asarray(da[dim].values)
        if np.issubdtype(values.dtype, np.datetime64):
            values = values.astype("datetime64[ns]").view(np.int64)
        else:
            values = values.astype(np.float64)
        digest.update(f"|{dim}:{values.size}|".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    mt = missing_times(da).view(np.int64)
    digest.update(f"|missing_times:{mt.size}|".encode())
    digest.update(np.ascontiguousarray(mt).tobytes())
    if chunks is None:
        chunks = os.environ.get(CHUNK_FINGERPRINT_ENV, "1").strip().lower() not in ("0", "no")
    if chunks and isinstance(spec, SourceSpec):
        n_frames = int(da.sizes["time"]) if "time" in da.dims else 0
        digest.update(json.dumps(_chunk_sample(spec, n_frames)).encode())
    return digest.hexdigest()[:16]


def _chunk_sample(spec: SourceSpec, n_frames: int) -> list[tuple[int, str]]:
    """(time chunk, stored size) of time chunks spread evenly over the first ``n_frames``."""
    import asyncio

    import zarr
    from zarr.core.sync import sync

    from mlcast_pipes.reader import _open_store

    async def size(key: str) -> str:
        try:
            return str(await store.getsize(key))
        except FileNotFoundError:
            return "absent"

    async def sizes(keys: list[str]) -> list[str]:
        return list(await asyncio.gather(*(size(k) for k in keys)))

    try:
        store = _open_store(spec.url, spec.storage_options or None)
        arr = zarr.open_array(store, path=spec.var_name, mode="r")
        n_chunks = min(int(arr.cdata_shape[0]), -(-n_frames // int(arr.chunks[0])))
        picks = sorted(
            {round(i) for i in np.linspace(0, n_chunks - 1, min(_CHUNK_SAMPLE, max(n_chunks, 0)))}
        )
        rest = (0,) * (len(arr.shape) - 1)
        keys = [f"{spec.var_name}/{arr.metadata.encode_chunk_key((i, *rest))}" for i in picks]
        found = sync(sizes(keys))
    except Exception as exc:
        raise DatasetError(
            f"cannot read the chunk sizes of {spec.var_name!r} in {spec.url!r} for the dataset "
            f"fingerprint ({type(exc).__name__}: {exc}); check the store and its access, or set "
            f"${CHUNK_FINGERPRINT_ENV}=0 to fingerprint its metadata only"
        ) from exc
    return list(zip(picks, found, strict=True))


def _absent_time_chunks(spec: SourceSpec, n_frames: int) -> list[int]:
    """Time chunks of the variable (among the first ``n_frames``) with no stored chunk.

    Lists the store once (one directory listing locally, a key listing on object stores).
    """
    import zarr
    from zarr.core.sync import sync

    from mlcast_pipes.reader import _open_store

    store = _open_store(spec.url, spec.storage_options or None)
    arr = zarr.open_array(store, path=spec.var_name, mode="r")
    n_chunks = min(int(arr.cdata_shape[0]), -(-n_frames // int(arr.chunks[0])))

    async def keys() -> set[str]:
        return {k async for k in store.list_prefix(f"{spec.var_name}/")}

    present = sync(keys())
    rest = (0,) * (len(arr.shape) - 1)
    encode = arr.metadata.encode_chunk_key
    return [i for i in range(n_chunks) if f"{spec.var_name}/{encode((i, *rest))}" not in present]


def metadata_stamp(da: xr.DataArray) -> tuple[tuple[str, int, int], ...] | None:
    """Sizes and modification times of what :func:`fingerprint` reads from a local store.

    A cheap test of whether a store opened earlier in this process may have changed since:
    it stats the store's metadata files, the variable's metadata and the files of its time
    and ``missing_times`` arrays (a few ``stat`` calls; no chunk of the variable). Appending
    frames, rewriting coordinates or consolidating again changes it.

    Parameters
    ----------
    da : xarray.DataArray
        An archive opened by :func:`open_mlcast`.

    Returns
    -------
    tuple or None
        ``(relative path, size, mtime_ns)`` per file; None for a URL (remote stores are not
        stat-ed: a process keeps what it opened).

    Examples
    --------
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> stamp = metadata_stamp(da)
    >>> stamp == metadata_stamp(open_mlcast("tiny.zarr")), [s[0] for s in stamp][:2]
    (True, ['.zattrs', '.zgroup'])

    """
    spec = source_spec(da)
    url = spec.url[len("file://") :] if spec.url.startswith("file://") else spec.url
    if _is_url(url):
        return None
    root = pathlib.Path(url)
    out: list[tuple[str, int, int]] = []

    def add(path: pathlib.Path) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))

    for name in sorted((*_ZARR_MARKERS, ".zattrs")):
        add(root / name)
    for name in sorted((*_ZARR_MARKERS, ".zattrs")):
        add(root / spec.var_name / name)
    for array in ("time", "missing_times"):  # small arrays: every file, chunk folders too
        folder = root / array
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                add(path)
    return tuple(out)


def nominal_time_step(times: np.ndarray, consistent_timestep_start: Any = None) -> np.timedelta64:
    """Return the nominal time step: the smallest difference between consecutive times.

    Parameters
    ----------
    times : numpy.ndarray
        Strictly increasing datetime64 values.
    consistent_timestep_start : str, datetime-like or None
        The archive's ``consistent_timestep_start`` attribute; when set, only times from it on
        (the current regular regime) are used, if at least two are there.

    Returns
    -------
    numpy.timedelta64
        The step, in nanoseconds.

    Raises
    ------
    DatasetError
        Fewer than two times, no positive difference, or an unreadable
        ``consistent_timestep_start``.

    Examples
    --------
    >>> t = np.array(["2020-01-01T00:00", "2020-01-01T00:05", "2020-01-01T00:20"], "M8[ns]")
    >>> nominal_time_step(t)
    np.timedelta64(300000000000,'ns')

    """
    t = np.asarray(times).ravel()
    if not np.issubdtype(t.dtype, np.datetime64):
        raise DatasetError(
            f"times must be datetime64 values, got dtype {t.dtype}; decode the time coordinate "
            "(CF units such as 'minutes since 2000-01-01')."
        )
    t = t.astype("datetime64[ns]")
    if t.size < 2:
        raise DatasetError(
            f"the nominal time step needs at least two time steps; the archive has {t.size}. "
            "Use an archive with more time steps."
        )
    if consistent_timestep_start is not None and not (
        isinstance(consistent_timestep_start, str) and not consistent_timestep_start.strip()
    ):
        start = _to_datetime64(consistent_timestep_start, "consistent_timestep_start")
        later = t[t >= start]
        if later.size >= 2:
            t = later
    diffs = np.diff(t)
    diffs = diffs[diffs > np.timedelta64(0, "ns")]
    if diffs.size == 0:
        raise DatasetError(
            "the time coordinate has no positive difference between steps; times must be "
            "strictly increasing."
        )
    return np.timedelta64(int(diffs.min().astype(np.int64)), "ns")


# --------------------------------------------------------------------------------------------
# source resolution and opening


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


#: fsspec memory-filesystem folder of the stores made from in-memory xarray objects.
_MEMORY_ROOT = "memory://mlcast-pipes"
#: id(object) -> (weak reference to it, its store's URL), per process.
_IN_MEMORY: dict[int, tuple[Any, str]] = {}
_IN_MEMORY_LABEL = "the in-memory xarray object"


def _is_in_memory_url(url: str) -> bool:
    return url.startswith(_MEMORY_ROOT + "/")


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
    url = _memory_store(obj, ds, name)
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


def _basename(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".zarr")] if base.endswith(".zarr") else base


def _memory_store(obj: Any, ds: xr.Dataset, name: str) -> str:
    """URL of the zarr copy of ``ds`` in this process's fsspec memory filesystem (made once)."""
    import dask
    import fsspec
    import numcodecs

    known = _IN_MEMORY.get(id(obj))
    fs = fsspec.filesystem("memory")
    if known is not None and known[0]() is obj and fs.exists(f"{known[1]}/.zmetadata"):
        return known[1]
    keep = [name, *(v for v in ("missing_times",) if v in ds.variables)]
    grid_mapping = ds[name].attrs.get("grid_mapping")
    if grid_mapping and str(grid_mapping) in ds.variables:
        keep.append(str(grid_mapping))
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
    with contextlib.suppress(TypeError):  # objects without weak references are not remembered
        _IN_MEMORY[id(obj)] = (weakref.ref(obj), url)
    return url


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

    A server that accepts a connection and then stays silent must not stall a pass or a
    training loop (aiohttp's own default is 300 s). Options the user gives win.

    Parameters
    ----------
    url : str
        The store's URL; only ``http(s)://`` and ``s3://`` get defaults.
    storage_options : mapping, optional
        The user's fsspec options.
    s3_attempts : int
        botocore attempts per request (the reader passes 1: its own bounded retry loop is the
        only one, otherwise retries multiply across botocore, s3fs and the reader).

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


# --------------------------------------------------------------------------------------------
# variable and coordinate recognition


def _std(var: xr.DataArray | xr.Variable) -> str:
    return str(var.attrs.get("standard_name", "")).strip().lower()


def _select(ds: xr.Dataset, var_name: str | None, hint: str | None, label: str) -> str:
    data_vars = [str(v) for v in ds.data_vars]
    if var_name is not None:
        if var_name in ds.data_vars:
            return var_name
        lower = [v for v in data_vars if v.lower() == str(var_name).lower()]
        maybe = f" Did you mean {lower[0]!r}?" if lower else ""
        kind = " It is a coordinate, not a data variable." if var_name in ds.coords else ""
        raise DatasetError(
            f"variable {var_name!r} is not in {label}.{kind}{maybe} Its data variables are "
            f"{data_vars}; pass one of these as var_name (or None to pick by standard_name)."
        )
    by_std = [v for v in data_vars if _std(ds[v]) in STANDARD_NAMES and ds[v].ndim >= 2]
    if len(by_std) == 1:
        return by_std[0]
    if len(by_std) > 1:
        if hint is not None and hint in by_std:
            return hint
        listed = ", ".join(f"{v!r} ({_std(ds[v])})" for v in by_std)
        raise DatasetError(
            f"{label} has several precipitation variables: {listed}. Pass var_name= one of "
            f"{by_std}."
        )
    if hint is not None and hint in ds.data_vars:
        return hint
    all_names = {n for names in STANDARD_NAMES.values() for n in names}
    by_name = [v for v in data_vars if v.lower() in all_names and ds[v].ndim >= 2]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise DatasetError(
            f"{label} has several data variables that could be the precipitation field: "
            f"{by_name}; none has a CF standard_name. Pass var_name= one of them."
        )
    three_d = [v for v in data_vars if ds[v].ndim == 3]
    if len(three_d) == 1:
        return three_d[0]
    raise DatasetError(
        f"{label} has no data variable with a precipitation standard_name "
        f"({', '.join(STANDARD_NAMES)}); its data variables are {data_vars}. Pass var_name=, "
        "or set the variable's 'standard_name' attribute."
    )


def _dim_role(ds: xr.Dataset, dim: str) -> str | None:
    """Whether a dimension is time, y or x, from its coordinate's attributes or its name."""
    var = ds.variables.get(dim)
    name = dim.lower()
    if var is not None:
        std = _std(var)
        if std == "time":
            return "time"
        if std in ("projection_x_coordinate", "longitude", "grid_longitude"):
            return "x"
        if std in ("projection_y_coordinate", "latitude", "grid_latitude"):
            return "y"
        axis = str(var.attrs.get("axis", "")).strip().upper()
        if axis == "T":
            return "time"
        if axis in ("X", "Y") and "units" in var.attrs:
            return axis.lower()
        if np.issubdtype(var.dtype, np.datetime64):
            return "time"
    if name in _TIME_NAMES:
        return "time"
    if name in _X_NAMES or name in _LON_NAMES:
        return "x"
    if name in _Y_NAMES or name in _LAT_NAMES:
        return "y"
    return None


def _prepare(
    ds: xr.Dataset, var_name: str | None, hint: str | None, label: str
) -> tuple[xr.Dataset, str, list[str]]:
    """Pick the variable, rename its dims to time/y/x and find 2-D lat/lon.

    Returns the renamed dataset, the variable name and notes for the spec-deviation list.
    """
    notes: list[str] = []
    name = _select(ds, var_name, hint, label)
    var = ds[name]
    dims = tuple(str(d) for d in var.dims)
    if len(dims) != 3:
        raise DatasetError(
            f"variable {name!r} of {label} has {len(dims)} dims {dims}; the pipeline needs "
            "exactly (time, y, x). Select or squeeze the extra dims and rewrite the archive."
        )
    roles = [_dim_role(ds, d) for d in dims]
    if sorted(r or "?" for r in roles) != ["time", "x", "y"]:
        found = ", ".join(f"{d}->{r or 'unknown'}" for d, r in zip(dims, roles, strict=True))
        raise DatasetError(
            f"cannot tell time, y and x apart in the dims {dims} of {name!r} in {label} "
            f"(understood as {found}). Name the dims time, y and x, or give their coordinates "
            "standard_name time / projection_y_coordinate / projection_x_coordinate (or axis "
            "T / Y / X with units)."
        )
    mapping = {d: r for d, r in zip(dims, roles, strict=True) if r is not None and d != r}
    for old, new in mapping.items():
        if new in ds.variables and new not in mapping:
            raise DatasetError(
                f"dim {old!r} of {name!r} in {label} is the {new} axis, but the dataset also has "
                f"another variable named {new!r}; rename one of them."
            )
    if mapping:
        ds = ds.rename(mapping)
    new_dims = tuple(str(d) for d in ds[name].dims)
    if new_dims != ("time", "y", "x"):
        shown = f"{dims} (that is {new_dims})" if mapping else f"{dims}"
        raise DatasetError(
            f"variable {name!r} of {label} has dims in the order {shown}, but MLCast archives "
            "need (time, y, x) with one chunk per time step. Rewrite the archive with "
            "ds.transpose('time', 'y', 'x') and chunks (1, ny, nx)."
        )
    for dim in ("y", "x"):
        if dim in ds.variables and _std(ds.variables[dim]) in ("latitude", "longitude"):
            notes.append(
                f"the {dim} axis is latitude/longitude, not a projected coordinate; MLCast "
                "archives use projected x/y in m or km."
            )
    ds = _find_lat_lon(ds, name)
    if "time" in ds.variables:
        tv = ds.variables["time"]
        if np.issubdtype(tv.dtype, np.datetime64) and tv.dtype != np.dtype("datetime64[ns]"):
            ds = ds.assign_coords(
                time=("time", np.asarray(tv.values).astype("datetime64[ns]"), dict(tv.attrs))
            )
    return ds, name, notes


def _find_lat_lon(ds: xr.Dataset, name: str) -> xr.Dataset:
    coords: list[str] = []
    for target, std, names in (("lat", "latitude", _LAT_NAMES), ("lon", "longitude", _LON_NAMES)):
        found = None
        for vname, var in ds.variables.items():
            v = str(vname)
            if v == name or tuple(var.dims) != ("y", "x"):
                continue
            if _std(var) == std or v.lower() in names:
                found = v
                break
        if found is None:
            continue
        if found != target:
            if target in ds.variables:
                continue
            ds = ds.rename({found: target})
        coords.append(target)
    if coords:
        ds = ds.set_coords(coords)
    return ds


# --------------------------------------------------------------------------------------------
# checks


def _canonical_units(units: Any) -> str | None:
    return canonical_units(units)


def _infer_standard_name(units: str) -> str:
    kind = units_kind(units) if canonical_units(units) else "amount"
    if kind == "reflectivity":
        return "equivalent_reflectivity_factor"
    if kind == "rate":
        return "rainfall_flux"
    return "precipitation_amount"


def _spec_spelling(units: Any, allowed: tuple[str, ...]) -> bool:
    """Whether ``units`` is written as the spec allows (case and spacing aside)."""
    text = " ".join(str(units).split()).lower()
    return text in {a.lower() for a in allowed}


def _to_datetime64(value: Any, what: str) -> np.datetime64:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DatasetError(
            f"{what} = {value!r} is not a date/time; write it as ISO 8601, e.g. "
            "'2020-01-01T00:00:00'."
        ) from exc
    if pd.isna(ts):
        raise DatasetError(f"{what} = {value!r} is not a date/time; write it as ISO 8601.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    out: np.datetime64 = ts.to_datetime64().astype("datetime64[ns]")
    return out


def _read_missing_times(ds: xr.Dataset, label: str) -> np.ndarray:
    if "missing_times" not in ds.variables:
        return np.array([], dtype="datetime64[ns]")
    var = ds.variables["missing_times"]
    if isinstance(var, xr.IndexVariable):  # on its own dimension: in memory already
        values = np.asarray(var.values)
    else:  # synchronously: a forked worker inherits dask's thread pool without its threads
        values = np.asarray(var.compute(scheduler="synchronous").values)
    values = values.ravel()
    if values.size == 0:
        return np.array([], dtype="datetime64[ns]")
    if not np.issubdtype(values.dtype, np.datetime64):
        raise DatasetError(
            f"'missing_times' of {label} holds {values.dtype} values, not date/times; give it CF "
            "time units (e.g. attrs units='minutes since 2000-01-01 00:00:00') so it decodes to "
            "datetime64."
        )
    values = values.astype("datetime64[ns]")
    return np.unique(values[~np.isnat(values)])


def _check_needed(ds: xr.Dataset, name: str, label: str) -> None:
    """Raise DatasetError for what the pipeline cannot work without."""
    var = ds[name]
    if not np.issubdtype(var.dtype, np.floating):
        raise DatasetError(
            f"variable {name!r} of {label} has dtype {var.dtype}; the pipeline needs float16/32/"
            "64 with NaN for no data. Convert it, or give it scale_factor/_FillValue attributes "
            "so xarray decodes it to float."
        )
    if "time" not in ds.variables:
        raise DatasetError(
            f"{label} has no time coordinate values; add a 'time' coordinate with CF time units."
        )
    times = np.asarray(ds.variables["time"].values)
    if not np.issubdtype(times.dtype, np.datetime64):
        raise DatasetError(
            f"the time coordinate of {label} has dtype {times.dtype}, not datetime64; give it CF "
            "units such as 'minutes since 2000-01-01 00:00:00' (standard calendar) so it decodes."
        )
    if times.size == 0:
        raise DatasetError(f"{label} has no time steps; write some frames first.")
    if np.isnat(times).any():
        first = int(np.flatnonzero(np.isnat(times))[0])
        raise DatasetError(
            f"the time coordinate of {label} has a missing value (NaT) at index {first}; every "
            "frame needs a valid time. Remove or fix that frame."
        )
    diffs = np.diff(times.astype("datetime64[ns]").view(np.int64))
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = int(bad[0])
        a, b = _fmt_time(times[i]), _fmt_time(times[i + 1])
        kind = "duplicate" if diffs[i] == 0 else "decreasing"
        more = f" ({bad.size} such places in all)" if bad.size > 1 else ""
        raise DatasetError(
            f"the time coordinate of {label} is not strictly increasing: {kind} times at "
            f"indices {i} and {i + 1} ({a} then {b}){more}. Sort the archive by time and drop "
            "duplicate frames (e.g. ds.sortby('time').drop_duplicates('time')) and rewrite it."
        )
    units = var.attrs.get("units")
    if units is None or not str(units).strip():
        raise DatasetError(
            f"variable {name!r} of {label} has no 'units' attribute; set it to one of "
            f"{list(KNOWN_UNITS)}."
        )
    if _canonical_units(units) is None:
        raise DatasetError(
            f"variable {name!r} of {label} has units {str(units)!r}, which the pipeline does not "
            f"know; known units are {list(KNOWN_UNITS)} (other spellings such as 'mm/h', "
            "'mm/hr', 'mm h^-1' or 'kg/m2/s' are read too). Convert the data or fix the "
            "'units' attribute."
        )
    _read_missing_times(ds, label)


def _fmt_time(value: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(value, "s"), unit="s"))


def _deviations(ds: xr.Dataset, name: str, label: str) -> list[str]:
    """Spec deviations the pipeline can live with, each with its fix."""
    out: list[str] = []
    var = ds[name]
    _, ny, nx = (int(n) for n in var.shape)
    std = _std(var)
    units = _canonical_units(var.attrs.get("units")) or ""
    if not std:
        out.append(
            f"variable {name!r} has no 'standard_name' attribute; set it (e.g. "
            f"'{_infer_standard_name(units)}' for units {units!r})."
        )
    elif std not in STANDARD_NAMES:
        out.append(
            f"variable {name!r} has standard_name {std!r}, not one of {list(STANDARD_NAMES)}; "
            "fix the attribute."
        )
    else:
        if name.lower() not in STANDARD_NAMES[std]:
            out.append(
                f"variable name {name!r} is not one the spec allows for standard_name {std!r} "
                f"({', '.join(STANDARD_NAMES[std])}); rename the variable."
            )
        allowed = UNITS_BY_STANDARD_NAME[std]
        if units and units_kind(units) != units_kind(allowed[0]):
            out.append(
                f"units {units!r} do not fit standard_name {std!r} (expected one of "
                f"{list(allowed)}); fix the attributes."
            )
        elif units and not _spec_spelling(var.attrs.get("units"), allowed):
            out.append(
                f"units {var.attrs.get('units')!r} are read as {units!r} (converted to mm/h where "
                f"needed); the spec asks for one of {list(allowed)}: fix the attribute or "
                "convert the data."
            )
    if not var.attrs.get("long_name"):
        out.append(f"variable {name!r} has no 'long_name' attribute; add one.")
    chunks = var.encoding.get("chunks")
    if chunks is not None and tuple(int(c) for c in chunks) != (1, ny, nx):
        out.append(
            f"variable {name!r} is chunked {tuple(int(c) for c in chunks)} on disk, not one chunk "
            f"per time step (1, {ny}, {nx}); reading tiles will decode more than needed. Rewrite "
            "it with encoding chunks (1, ny, nx)."
        )
    if "compressors" in var.encoding or "compressor" in var.encoding:
        comp = var.encoding.get("compressors", var.encoding.get("compressor"))
        if not comp:
            out.append(
                f"variable {name!r} is stored without compression; rewrite it with a compressor "
                "(zstd recommended)."
            )
    grid_mapping = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    if not grid_mapping:
        out.append(
            f"variable {name!r} has no 'grid_mapping' attribute; add one naming a CRS variable "
            "(usually 'crs') holding crs_wkt and spatial_ref."
        )
    elif str(grid_mapping) not in ds.variables:
        out.append(
            f"grid_mapping {grid_mapping!r} of {name!r} names no variable in the dataset; add a "
            "CRS variable of that name with crs_wkt and spatial_ref."
        )
    else:
        crs = ds.variables[str(grid_mapping)]
        if not (crs.attrs.get("crs_wkt") or crs.attrs.get("spatial_ref")):
            out.append(
                f"CRS variable {grid_mapping!r} has neither 'crs_wkt' nor 'spatial_ref'; add "
                "the projection's WKT."
            )
    missing_attrs = [a for a in SPEC_GLOBAL_ATTRS if a not in ds.attrs]
    if missing_attrs:
        out.append(f"global attributes {missing_attrs} are missing; add them.")
    small = [f"{d}={n}" for d, n in (("y", ny), ("x", nx)) if n < _MIN_SIDE]
    if small:
        out.append(
            f"the grid is smaller than {_MIN_SIDE} pixels along {', '.join(small)}; the spec asks "
            f"each spatial dim to be >= {_MIN_SIDE}."
        )
    out.extend(_resolution_deviations(ds))
    if "lat" not in ds.coords or "lon" not in ds.coords:
        out.append("there are no 2-D 'lat'/'lon' coordinates on (y, x); add them.")
    if "missing_times" not in ds.variables:
        out.append(
            "there is no 'missing_times' variable; add one (empty if no nominal step is absent) "
            "so that windows never span absent frames."
        )
    else:
        mt = _read_missing_times(ds, label)
        times = np.asarray(ds.variables["time"].values).astype("datetime64[ns]")
        overlap = np.intersect1d(mt, times)
        if overlap.size:
            out.append(
                f"{overlap.size} 'missing_times' values are also in the time coordinate (first "
                f"{_fmt_time(overlap[0])}); missing_times must be disjoint from time."
            )
    cts = ds.attrs.get("consistent_timestep_start")
    if cts is not None:
        try:
            _to_datetime64(cts, "consistent_timestep_start")
        except DatasetError as exc:
            out.append(str(exc))
    return out


def _resolution_deviations(ds: xr.Dataset) -> list[str]:
    out: list[str] = []
    for dim in ("y", "x"):
        if dim not in ds.variables:
            out.append(
                f"there is no {dim!r} coordinate; add projected {dim} values (m) so resolution "
                "and positions are known."
            )
            continue
        coord = ds.variables[dim]
        values = np.asarray(coord.values, dtype=np.float64)
        if values.size < 2:
            continue
        units = str(coord.attrs.get("units", "m")).strip().lower()
        if units in ("m", "metre", "meter", "metres", "meters"):
            factor = 1.0
        elif units in ("km", "kilometre", "kilometer", "kilometres", "kilometers"):
            factor = 1000.0
        else:
            out.append(
                f"coordinate {dim!r} has units {units!r}; the spec asks for projected m or km."
            )
            continue
        step = float(np.nanmedian(np.abs(np.diff(values)))) * factor
        if step > _MAX_RESOLUTION_M:
            out.append(
                f"the {dim} resolution is {step:g} m, coarser than the spec's 1 km; the pipeline "
                "works, but the archive does not meet the spec."
            )
    return out


def _validated(
    ds: xr.Dataset, var_name: str | None, *, strict: bool, hint: str | None, label: str
) -> tuple[xr.Dataset, str, list[str]]:
    """Prepare, check what is needed, then warn about (or, if strict, raise on) deviations."""
    ds, name, notes = _prepare(ds, var_name, hint, label)
    _check_needed(ds, name, label)
    messages = notes + _deviations(ds, name, label)
    if not messages:
        return ds, name, messages
    if strict:
        listed = "\n".join(f"  - {m}" for m in messages)
        raise DatasetError(
            f"{label} deviates from the MLCast dataset spec (strict=True):\n{listed}\n"
            "Fix the archive, or open it with strict=False to only warn."
        )
    for message in messages:
        warnings.warn(f"{label}: {message}", MLCastSpecWarning, stacklevel=3)
    return ds, name, messages


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
