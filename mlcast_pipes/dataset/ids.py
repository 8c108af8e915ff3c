"""Ids and fingerprints of an opened archive: dataset id, content fingerprint, metadata stamp.

Also the archive's nominal time step and its declared missing times.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np
import xarray as xr

from mlcast_pipes.dataset.opening import SourceSpec, source_spec
from mlcast_pipes.dataset.spec import _to_datetime64
from mlcast_pipes.dataset.stores import _ZARR_MARKERS, _is_in_memory_url, _is_url
from mlcast_pipes.errors import DatasetError

__all__ = [
    "CHUNK_FINGERPRINT_ENV",
    "dataset_id",
    "fingerprint",
    "metadata_stamp",
    "missing_times",
    "nominal_time_step",
]


def missing_times(da: xr.DataArray) -> np.ndarray:
    """Return the archive's ``missing_times`` as a sorted ``datetime64[ns]`` array (maybe empty).

    Examples
    --------
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import ensure_demo
    >>> missing_times(open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))).size
    2

    """
    value = da.attrs.get("missing_times")
    if value is None:
        return np.array([], dtype="datetime64[ns]")
    arr = np.asarray(value).ravel()
    if arr.size == 0:
        return np.array([], dtype="datetime64[ns]")
    return np.sort(arr.astype("datetime64[ns]"))


def dataset_id(da: xr.DataArray) -> str:
    """Return the filename-safe id of an opened archive (its attrs, else its SourceSpec).

    Examples
    --------
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import ensure_demo
    >>> dataset_id(open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0)))
    'zz-mlcastpipes-demo-tiny-seed0-v1.0.0'

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
    """Hash an archive's metadata and a sample of its chunks (16 hex digits), to detect other data.

    Covers name, shape, dtype, units, coordinates, ``missing_times`` and, with ``chunks`` (default
    unless ``$MLCAST_PIPES_FINGERPRINT_CHUNKS=0``), the stored sizes of 16 time chunks.

    Examples
    --------
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import ensure_demo
    >>> da = open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0))
    >>> len(fingerprint(da)), fingerprint(da.isel(time=slice(0, 12))) == fingerprint(da)
    (16, False)

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

    from mlcast_pipes.reader.requests import _open_store

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
    """Time chunks of the variable (among the first ``n_frames``) with no stored chunk."""
    import zarr
    from zarr.core.sync import sync

    from mlcast_pipes.reader.requests import _open_store

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
    """Sizes and mtimes of the local store files :func:`fingerprint` reads (None for a URL).

    Examples
    --------
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.demo import ensure_demo
    >>> stamp = metadata_stamp(open_mlcast(ensure_demo("tiny.zarr", preset="tiny", seed=0)))
    >>> stamp == metadata_stamp(open_mlcast("tiny.zarr")), stamp[0][0]
    (True, '.zattrs')

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
    """Return the smallest difference between consecutive times (DatasetError if none).

    With ``consistent_timestep_start`` only the times from it on are used (if two or more are).

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
