"""Whole-chunk reads along the first axis of a zarr array, several chunks at once.

Plain codec chains are decoded from chunk bytes by numcodecs into reused buffers, others by zarr.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["ChunkReader", "PendingChunks"]

#: numcodecs compressors (zarr format 2 ``compressor`` ids) whose ``decode(buf)`` returns the raw
#: chunk bytes; chunks compressed with anything else are read through zarr.
_V2_COMPRESSORS = frozenset({"zstd", "blosc", "lz4", "zlib", "gzip", "bz2", "lzma"})


#: Called in the decoding thread with (chunk index, chunk array) after each chunk is decoded.
OnChunk = Callable[[int, np.ndarray], None]


def _v3_codec(codecs: Sequence[Any]) -> tuple[Any, Literal["|", "<", ">"]] | None:
    """(numcodecs codec or None, byte order) of a zarr 3 chain ``bytes [+ zstd|gzip|blosc]``."""
    from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    endian = codecs[0].endian
    order: Literal["|", "<", ">"] = (
        "|" if endian is None else ("<" if endian.value == "little" else ">")
    )
    if len(codecs) == 1:
        return None, order
    import numcodecs

    codec = codecs[1]
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum), order
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip(level=codec.level), order
    if isinstance(codec, BloscCodec):
        return numcodecs.Blosc(), order  # a blosc frame describes itself
    return None


def _zstd_content_size(raw: np.ndarray) -> int | None:
    """Decoded size written in a zstd frame header (RFC 8878, 3.1.1.1), None if absent."""
    head = bytes(raw[:18])
    if len(head) < 6 or int.from_bytes(head[:4], "little") != 0xFD2FB528:
        return None
    descriptor = head[4]
    single_segment = (descriptor >> 5) & 1
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    n = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    if n == 0 or len(head) < pos + n:
        return None
    return int.from_bytes(head[pos : pos + n], "little") + (256 if n == 2 else 0)


def _decoded_size(codec: Any, raw: np.ndarray) -> int | None:
    """Exact decoded size of a compressed chunk when its header tells it cheaply, else None."""
    codec_id = getattr(codec, "codec_id", None)
    if codec_id == "zstd":
        return _zstd_content_size(raw)
    if codec_id == "blosc" and raw.size >= 16:  # header: 4 version/flag bytes, then nbytes
        return int.from_bytes(bytes(raw[4:8]), "little")
    if codec_id == "lz4" and raw.size >= 4:
        return int.from_bytes(bytes(raw[:4]), "little")
    return None


def _numpy_dtype(dtype: Any) -> np.dtype[Any]:
    """The numpy dtype of a zarr data type (zarr >= 3.1 wraps it, older versions do not)."""
    to_native = getattr(dtype, "to_native_dtype", None)
    native: np.dtype[Any] = np.dtype(to_native() if to_native is not None else dtype)
    return native


class ChunkReader:
    """Read whole chunks along the first axis of a zarr array that has one chunk along the others.

    Plain codec chains are decoded by numcodecs (into the caller's buffers when given), others by
    zarr, so values are always those zarr returns. A chunk absent and not in ``known_absent``
    gives ``FileNotFoundError`` (None: any may be absent); errors come back in place of chunks.

    Examples
    --------
    >>> import zarr
    >>> arr = zarr.create_array({}, shape=(5, 2, 3), chunks=(2, 2, 3), dtype="float32")
    >>> arr[:] = np.arange(30, dtype="float32").reshape(5, 2, 3)
    >>> chunks = ChunkReader(arr)
    >>> [c.shape for c in chunks.read([0, 2])], type(chunks.read([7])[0]).__name__
    ([(2, 2, 3), (1, 2, 3)], 'IndexError')

    """

    def __init__(self, array: Any, *, known_absent: Container[int] | None = None) -> None:
        self.array = array
        #: chunks allowed to be absent (read as the fill value); None: any chunk may be
        self.known_absent = known_absent
        #: read another absent chunk as the fill value with a warning instead of raising
        self.warn_missing = False
        self.shape = tuple(int(v) for v in array.shape)
        self.chunks = tuple(int(v) for v in array.chunks)
        self.n_chunks = math.ceil(self.shape[0] / self.chunks[0]) if self.shape else 0
        self.dtype: np.dtype[Any] = np.dtype(array.dtype)
        self._async = getattr(array, "_async_array", None)
        self._codec: Any = None
        self.direct = self._plan_direct()
        self._local: Path | None = None  # folder of a local store: read and decode in one go
        if self.direct and self._async is not None:
            from zarr.storage import LocalStore

            store_path = self._async.store_path
            if isinstance(store_path.store, LocalStore):
                self._local = Path(store_path.store.root) / store_path.path

    def _plan_direct(self) -> bool:
        """Whether chunks can be decoded from their bytes without zarr (sets codec and dtype)."""
        meta = getattr(self._async, "metadata", None)
        if meta is None or len(self.shape) < 1:
            return False
        if any(c < s for c, s in zip(self.chunks[1:], self.shape[1:], strict=True)):
            return False  # chunked along another axis too
        try:
            if meta.zarr_format == 2:
                compressor = meta.compressor
                if meta.filters or meta.order != "C":
                    return False
                if compressor is not None and compressor.codec_id not in _V2_COMPRESSORS:
                    return False
                self._codec = compressor
                dtype = _numpy_dtype(meta.dtype)
            else:
                plan = _v3_codec(meta.codecs)
                if plan is None:
                    return False
                self._codec, order = plan
                dtype = _numpy_dtype(meta.data_type)
                if dtype.itemsize > 1 and order != "|":
                    dtype = dtype.newbyteorder(order)
        except Exception:  # metadata of an unexpected shape: let zarr read it
            return False
        if dtype.kind not in "biuf":
            return False
        self.dtype = dtype
        return True

    def rows(self, index: int) -> slice:
        """The first-axis rows of chunk ``index``."""
        c = self.chunks[0]
        return slice(index * c, min((index + 1) * c, self.shape[0]))

    def out_shape(self, index: int) -> tuple[int, ...]:
        """Shape of chunk ``index`` as :meth:`read` returns it."""
        rows = self.rows(index)
        return (rows.stop - rows.start, *self.shape[1:])

    def _decode(self, raw: np.ndarray, index: int, out: np.ndarray | None) -> np.ndarray:
        """Decode the bytes of chunk ``index``, into ``out`` when its size is known to match."""
        full = math.prod(self.chunks) * self.dtype.itemsize
        shape = self.out_shape(index)
        fits = (
            out is not None
            and self._codec is not None
            and shape == self.chunks  # an edge chunk is stored padded: no direct fit
            and out.shape == shape
            and out.dtype == self.dtype
            and out.flags.c_contiguous
            and out.flags.writeable
            and _decoded_size(self._codec, raw) == full
        )
        if fits:
            assert out is not None
            self._codec.decode(raw, out=out.reshape(-1).view(np.uint8))
            return out
        data = raw if self._codec is None else self._codec.decode(raw)
        flat = np.frombuffer(data, dtype=self.dtype)
        if flat.nbytes != full:
            raise ValueError(
                f"chunk {index} decodes to {flat.nbytes} bytes, its shape {self.chunks} needs "
                f"{full} (truncated or foreign chunk)"
            )
        block = flat.reshape(self.chunks)
        return block[tuple(slice(0, n) for n in shape)]

    def _key(self, index: int) -> str:
        assert self._async is not None
        return str(self._async.metadata.encode_chunk_key((index,) + (0,) * (len(self.shape) - 1)))

    def _check_absent(self, index: int) -> None:
        """Raise FileNotFoundError for an absent chunk that must be there."""
        if self.known_absent is not None and index not in self.known_absent:
            message = (
                f"chunk {index} ({self._key(index)!r}) is missing from the store, but it was "
                "there when the data was indexed or copied"
            )
            if not self.warn_missing:
                raise FileNotFoundError(message)
            warnings.warn(f"{message}; read as no data (fill value)", RuntimeWarning, stacklevel=2)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} is outside [0, {self.n_chunks})")

    def _read_local(self, index: int, out: np.ndarray | None, then: OnChunk | None) -> Any:
        """Read and decode one chunk file (a task of the chunk thread pool)."""
        assert self._local is not None
        try:
            self._check(index)
            data = _read_file(self._local / self._key(index))
            if data is None:  # never written: zarr's fill value
                self._check_absent(index)
                block = np.asarray(self.array[self.rows(index)])
            else:
                block = self._decode(np.frombuffer(data, dtype=np.uint8), index, out)
            return _then(then, index, block)
        except Exception as exc:  # returned, so that one failure does not cancel the others
            return exc

    def _decode_then(
        self, raw: np.ndarray, index: int, out: np.ndarray | None, then: OnChunk | None
    ) -> np.ndarray:
        return _then(then, index, self._decode(raw, index, out))

    async def _read_async(self, index: int, out: np.ndarray | None, then: OnChunk | None) -> Any:
        """Fetch one chunk through the store (remote stores) and decode it in a thread."""
        assert self._async is not None
        try:
            self._check(index)
            if self.direct:
                from zarr.core.buffer import default_buffer_prototype

                key = self._key(index)
                buf = await (self._async.store_path / key).get(default_buffer_prototype())
                if buf is None:
                    self._check_absent(index)
                else:
                    raw = buf.as_numpy_array()
                    return await asyncio.to_thread(self._decode_then, raw, index, out, then)
            return _then(then, index, np.asarray(await self._async.getitem(self.rows(index))))
        except Exception as exc:
            return exc

    def _read_sync(self, index: int, then: OnChunk | None) -> Any:
        try:
            self._check(index)
            return _then(then, index, np.asarray(self.array[self.rows(index)]))
        except Exception as exc:
            return exc

    @property
    def is_local(self) -> bool:
        """Whether chunks are read from local files (else through the store, e.g. remote)."""
        return self._local is not None

    def start(
        self,
        index: int,
        out: np.ndarray | None = None,
        then: OnChunk | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Start reading chunk ``index``; the future's result is the chunk or the exception.

        ``out``, ``then`` and ``timeout`` are as in :meth:`submit`. Local files are read and
        decoded by the chunk thread pool; remote chunks are fetched on zarr's event loop (many
        at once) and decoded in a thread as soon as each one arrives.
        """
        if self._local is not None:
            return _thread_pool().submit(self._read_local, int(index), out, then)
        if self._async is None:  # not a zarr 3 array: read at once
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done.set_result(self._read_sync(int(index), then))
            return done
        from zarr.core.sync import _get_loop

        async def bounded() -> Any:
            try:
                return await asyncio.wait_for(self._read_async(int(index), out, then), timeout)
            except TimeoutError:
                return TimeoutError(f"chunk {index} was not read within {timeout:.3g} s")

        return asyncio.run_coroutine_threadsafe(bounded(), _get_loop())

    def submit(
        self,
        indices: Sequence[int],
        out: Sequence[np.ndarray | None] | None = None,
        then: OnChunk | None = None,
        timeout: float | None = None,
    ) -> PendingChunks:
        """Start reading the chunks ``indices`` concurrently; one outcome (array or exception) each.

        ``out`` may give a buffer per chunk (shape :meth:`out_shape`, C order) to decode into;
        one that does not fit is left alone. ``then(index, chunk)`` runs in the decoding thread
        right after each decode (an exception it raises becomes the outcome). ``timeout`` bounds,
        in seconds, each chunk fetched from a remote store (then ``TimeoutError``).
        """
        outs = list(out) if out is not None else [None] * len(indices)
        if len(outs) != len(indices):
            raise ValueError(f"{len(outs)} buffers given for {len(indices)} chunks")
        return PendingChunks(
            [self.start(i, o, then, timeout) for i, o in zip(indices, outs, strict=True)]
        )

    def read(
        self,
        indices: Sequence[int],
        out: Sequence[np.ndarray | None] | None = None,
        then: OnChunk | None = None,
    ) -> list[Any]:
        """Read the chunks ``indices`` concurrently and wait: one array or exception per index."""
        return self.submit(indices, out, then).result()


class PendingChunks:
    """Chunks being read by :meth:`ChunkReader.submit`: wait for them, or cancel the rest.

    Examples
    --------
    >>> import zarr
    >>> arr = zarr.create_array({}, shape=(4, 2), chunks=(1, 2), dtype="int16")
    >>> arr[:] = [[0, 1], [2, 3], [4, 5], [6, 7]]
    >>> pending = ChunkReader(arr).submit([3, 1])
    >>> [chunk.tolist() for chunk in pending.result()]
    [[[6, 7]], [[2, 3]]]

    """

    def __init__(self, futures: list[concurrent.futures.Future[Any]]) -> None:
        self._futures = futures
        #: ``time.monotonic()`` by which the reads must be done (None: unbounded); set by callers
        self.deadline: float | None = None

    def result(self) -> list[Any]:
        """One outcome per chunk (array or exception), in the order asked for."""
        return [f.result() for f in self._futures]

    def cancel(self) -> None:
        """Drop the reads not started yet and wait for the running ones (their data is dropped)."""
        for f in self._futures:
            if not f.cancel():
                with contextlib.suppress(Exception):
                    f.result()


def _then(then: OnChunk | None, index: int, block: np.ndarray) -> np.ndarray:
    """Run the caller's ``then`` on a chunk just read (in the reading thread); return the chunk."""
    if then is not None:
        then(index, block)
    return block


def _read_file(path: Path) -> bytes | None:
    """The bytes of a chunk file of a local store, None if it does not exist (as zarr reads it)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


_POOL: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Chunk thread pool of this process (zarr's ``threading.max_workers``, else one per core)."""
    global _POOL
    pid = os.getpid()
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != pid:  # new, or inherited through fork without threads
            import zarr

            workers = zarr.config.get("threading.max_workers", None) or os.cpu_count() or 1
            _POOL = (pid, concurrent.futures.ThreadPoolExecutor(workers, "mlcast-chunks"))
        return _POOL[1]
