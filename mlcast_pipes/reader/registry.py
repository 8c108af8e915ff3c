"""Per-process reader registry: one FrameReader per archive and variable, closed together.

Also the plain-xarray reference read (``naive_read_tile``) that benchmarks compare against.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mlcast_pipes._locks import ForkSafeLock
from mlcast_pipes.errors import DatasetError, ParameterError, ReadError
from mlcast_pipes.reader.errors import _describe
from mlcast_pipes.reader.frames import FrameReader
from mlcast_pipes.reader.requests import _as_int

__all__ = ["close_readers", "get_reader", "naive_read_tile"]


# ---------------------------------------------------------------------- per-process readers
_READERS: dict[tuple[int, str, str, str, int], FrameReader] = {}
_READERS_LOCK = ForkSafeLock()
_NAIVE: dict[tuple[int, str, str, str], Any] = {}  # naive_read_tile's opened DataArrays


def _options_token(storage_options: dict[str, Any] | None) -> str:
    return json.dumps(storage_options or {}, sort_keys=True, default=repr)


def get_reader(
    url: str,
    var_name: str,
    storage_options: dict[str, Any] | None = None,
    *,
    lane: int = 0,
    **kw: Any,
) -> FrameReader:
    """Return this process's shared :class:`FrameReader` for ``(url, var_name)``.

    Readers are cached per process id and storage options, so a forked worker makes its own.
    ``**kw`` (``cache_bytes``, ``retries``, ...) go to the reader when it is created. ``lane``
    1 gives a second reader of the same variable (no frame cache, half the decode budget), so
    that two reads of a remote store can overlap (calls on one reader run one at a time).

    Examples
    --------
    >>> import xarray as xr
    >>> rain = np.arange(24, dtype="float32").reshape(2, 3, 4)  # (time, y, x)
    >>> _ = xr.Dataset({"rain": (("time", "y", "x"), rain)}).to_zarr("shared.zarr", mode="w")
    >>> reader = get_reader("shared.zarr", "rain")
    >>> reader is get_reader("shared.zarr", "rain"), reader.read_frames(1, 2)[0, 0].tolist()
    (True, [12.0, 13.0, 14.0, 15.0])

    """
    pid = os.getpid()
    key = (pid, url, var_name, _options_token(storage_options), lane)
    if lane:
        first = get_reader(url, var_name, storage_options, **kw)
        kw = {
            "retries": first.retries,
            "retry_backoff": first.retry_backoff,
            "read_deadline": first.read_deadline,
            "cache_bytes": 0,
            "decode_budget": first.decode_budget // 2,
        }
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            for k in [k for k in _READERS if k[0] != pid]:
                del _READERS[k]  # inherited through fork: the parent's, not ours to close
            reader = FrameReader(url, var_name, storage_options=storage_options, **kw)
            if lane:
                reader._ahead_owner = first  # takes the bytes the first lane fetched ahead
            _READERS[key] = reader
        return reader


def close_readers() -> None:
    """Close and forget every reader :func:`get_reader` (and :func:`naive_read_tile`) made here.

    Examples
    --------
    >>> close_readers()  # the next get_reader call opens a new reader

    """
    pid = os.getpid()
    with _READERS_LOCK:
        readers = [r for k, r in _READERS.items() if k[0] == pid]
        _READERS.clear()
        _NAIVE.clear()
    for r in readers:
        r.close()


# ---------------------------------------------------------------------- naive reference path
def naive_read_tile(
    url: str,
    var_name: str,
    t0: int,
    n: int,
    y0: int,
    ny: int,
    x0: int,
    nx: int,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """Read one tile the per-sample way: xarray + dask and ``.isel().values`` (float32).

    The benchmarks' reference: each call decodes every frame the tile touches. Raises
    DatasetError, ParameterError (window outside the array) or ReadError.

    Examples
    --------
    >>> import xarray as xr
    >>> rain = np.arange(24, dtype="float32").reshape(2, 3, 4)  # (time, y, x)
    >>> _ = xr.Dataset({"rain": (("time", "y", "x"), rain)}).to_zarr("naive.zarr", mode="w")
    >>> naive_read_tile("naive.zarr", "rain", 0, 2, 1, 2, 1, 2)[0].tolist()  # [0:2, 1:3, 1:3]
    [[5.0, 6.0], [9.0, 10.0]]

    """
    import xarray as xr

    key = (os.getpid(), url, var_name, _options_token(storage_options))
    da = _NAIVE.get(key)
    if da is None:
        try:
            ds = xr.open_zarr(url, storage_options=storage_options or None, chunks={})
        except Exception as exc:
            raise DatasetError(
                f"xarray could not open the zarr store at {url!r} ({_describe(exc)}); check the "
                "path or URL and storage_options."
            ) from exc
        if var_name not in ds.data_vars:
            raise DatasetError(
                f"Variable {var_name!r} is not in {url!r}; its variables are "
                f"{sorted(map(str, ds.data_vars))}. Pass one of these as var_name."
            )
        da = ds[var_name]
        _NAIVE[key] = da
    names = ("t0", "n", "y0", "ny", "x0", "nx")
    vals = [_as_int(v, k) for v, k in zip((t0, n, y0, ny, x0, nx), names, strict=True)]
    sel = {}
    for (start, size), dim, length in zip(
        ((vals[0], vals[1]), (vals[2], vals[3]), (vals[4], vals[5])), da.dims, da.shape, strict=True
    ):
        if size < 1 or start < 0 or start + size > length:
            raise ParameterError(
                f"Window [{start}, {start + size}) along {dim} is outside [0, {length}) of "
                f"{var_name!r} in {url!r}; use a start >= 0, a size >= 1 and start + size <= "
                f"{length}."
            )
        sel[dim] = slice(start, start + size)
    try:
        return np.asarray(da.isel(sel).values, dtype=np.float32)
    except Exception as exc:
        raise ReadError(
            f"Could not read {sel} of {var_name!r} from {url!r}: {_describe(exc)}. Check the "
            "archive and the network connection."
        ) from exc
