"""Tile requests, reader statistics and the store/CF-decoding helpers of the frame reader."""

from __future__ import annotations

import base64
import contextlib
import math
import os
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mlcast_pipes._checks import as_int
from mlcast_pipes.errors import ParameterError

__all__ = ["READ_DEADLINE", "READ_DEADLINE_ENV", "ReaderStats", "TileRequest"]


#: Default bound, in seconds, of the time a read may take over all its retries (remote stores).
READ_DEADLINE = 20.0
#: Environment variable overriding :data:`READ_DEADLINE` ("0" or "none": no bound).
READ_DEADLINE_ENV = "MLCAST_PIPES_READ_DEADLINE"


def _default_deadline() -> float | None:
    text = os.environ.get(READ_DEADLINE_ENV, "").strip().lower()
    if not text:
        return READ_DEADLINE
    if text in ("0", "none", "inf"):
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ParameterError(
            f"${READ_DEADLINE_ENV}={text!r} is not a number of seconds; fix: set it to e.g. 20, "
            "or to 'none' for no bound"
        ) from exc
    return value if math.isfinite(value) and value > 0 else None


#: Bytes counted per delivered or decoded pixel in :class:`ReaderStats` (float32 output).
_OUT_ITEMSIZE = 4


@dataclass(frozen=True)
class TileRequest:
    """A pixel window of an archive: ``n`` time steps from ``t0``, ``ny`` rows from ``y0``, ...

    Examples
    --------
    >>> r = TileRequest(t0=10, n=4, y0=0, ny=64, x0=128, nx=64)
    >>> list(r.frames), r.nbytes
    ([10, 11, 12, 13], 65536)

    """

    t0: int
    n: int
    y0: int
    ny: int
    x0: int
    nx: int

    @property
    def frames(self) -> range:
        """The time indices the window covers."""
        return range(self.t0, self.t0 + self.n)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the window as float32."""
        return self.n * self.ny * self.nx * _OUT_ITEMSIZE


@dataclass
class ReaderStats:
    """Counters of a :class:`~mlcast_pipes.reader.FrameReader` (per process; reset after fork).

    Byte counters count 4 bytes per pixel whatever the dtype on disk, so
    ``bytes_decoded / bytes_delivered`` (``amplification``) is the read amplification.

    Examples
    --------
    >>> import xarray as xr
    >>> from mlcast_pipes.reader import FrameReader
    >>> rain = np.arange(24, dtype="float32").reshape(2, 3, 4)  # (time, y, x)
    >>> _ = xr.Dataset({"rain": (("time", "y", "x"), rain)}).to_zarr("stats.zarr", mode="w")
    >>> reader = FrameReader("stats.zarr", "rain")
    >>> _ = reader.read_tile(0, 2, 0, 2, 0, 2)  # decodes frames 0 and 1
    >>> _ = reader.read_tile(1, 1, 1, 2, 2, 2)  # frame 1 again: from the cache
    >>> reader.stats.cache_hits, reader.stats.amplification
    (1, 2.0)

    """

    frames_decoded: int = 0
    bytes_decoded: int = 0
    bytes_delivered: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def amplification(self) -> float:
        """Decoded bytes per delivered byte (``nan`` before anything was delivered)."""
        return self.bytes_decoded / self.bytes_delivered if self.bytes_delivered else math.nan

    def reset(self) -> None:
        """Set every counter to zero."""
        for f in fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class _CFDecoding:
    """CF decoding that xarray applies by default (mask fill values, then scale and offset)."""

    mask_values: tuple[float, ...] = ()
    scale_factor: float | None = None
    add_offset: float | None = None

    @property
    def is_identity(self) -> bool:
        return not self.mask_values and self.scale_factor is None and self.add_offset is None

    def apply_into(self, dst: np.ndarray, raw: np.ndarray) -> None:
        """Write the decoded float32 values of ``raw`` into ``dst`` (same shape)."""
        if self.is_identity:
            dst[...] = raw
            return
        vals: np.ndarray = raw
        if self.scale_factor is not None or self.add_offset is not None:
            vals = raw.astype(np.float64)
            if self.scale_factor is not None:
                vals *= self.scale_factor
            if self.add_offset is not None:
                vals += self.add_offset
        dst[...] = vals
        for mv in self.mask_values:
            dst[raw == mv] = np.nan


def _as_int(value: Any, name: str) -> int:
    return as_int(name, value)


def _open_store(url: str, storage_options: dict[str, Any] | None) -> Any:
    from zarr.storage import FsspecStore, LocalStore

    if url.startswith("file://"):
        return LocalStore(url[len("file://") :], read_only=True)
    if "://" in url or "::" in url:
        from mlcast_pipes.dataset import with_timeouts

        options = with_timeouts(url, storage_options, s3_attempts=1)
        return FsspecStore.from_url(url, storage_options=options or None, read_only=True)
    return LocalStore(os.path.expanduser(url), read_only=True)


def _cf_decoding(arr: Any) -> _CFDecoding:
    """Reproduce xarray's default CF decoding of a zarr array (``open_zarr`` defaults)."""
    attrs = dict(arr.attrs)
    dtype = np.dtype(arr.dtype)
    masks: list[float] = []

    def add_mask(value: Any) -> None:
        for v in np.atleast_1d(np.asarray(value)).ravel():
            try:
                fv = float(v)
            except (TypeError, ValueError):
                continue
            if not math.isnan(fv) and fv not in masks:
                masks.append(fv)

    if arr.metadata.zarr_format == 2:
        # xarray reads a v2 zarr fill_value as _FillValue (use_zarr_fill_value_as_mask=True)
        if arr.fill_value is not None:
            add_mask(arr.fill_value)
    elif "_FillValue" in attrs:
        fv = attrs["_FillValue"]
        if dtype.kind == "f" and isinstance(fv, str | bytes):
            with contextlib.suppress(ValueError, struct.error):
                fv = struct.unpack("<d", base64.standard_b64decode(fv))[0]
        add_mask(fv)
    if "missing_value" in attrs:
        add_mask(attrs["missing_value"])

    def number(key: str) -> float | None:
        value = attrs.get(key)
        if value is None:
            return None
        return float(np.asarray(value).ravel()[0])

    return _CFDecoding(tuple(masks), number("scale_factor"), number("add_offset"))
