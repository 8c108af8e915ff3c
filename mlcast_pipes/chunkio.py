"""Whole-chunk reads along the first axis of a zarr array, several chunks at once.

Plain codec chains are decoded from chunk bytes by numcodecs into reused buffers, others by zarr.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Container, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlcast_pipes._locks import ForkSafeLock

__all__ = ["ChunkReader", "FetchAhead", "PendingChunks"]

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


class FetchAhead:
    """Compressed chunk bytes fetched from a remote store before their reads ask for them.

    Bytes wait here until a :class:`ChunkReader` sharing this object reads (and decodes) the
    chunk, so that a read finds its bytes arrived instead of waiting one storage round trip per
    chunk. At most ``max_chunks`` chunks are held or in flight, ``max_in_flight`` fetched at
    once, and none is started while those arrived plus those in flight (at the mean size so far,
    else ``size_hint``) would pass ``max_bytes``; bytes not taken within ``ttl`` seconds are
    dropped. Used on zarr's event loop only.

    Examples
    --------
    >>> ahead = FetchAhead(max_chunks=8)
    >>> ahead.held, ahead.nbytes
    (0, 0)

    """

    def __init__(
        self,
        *,
        max_chunks: int = 128,
        max_in_flight: int = 64,
        max_bytes: int = 64 * 2**20,
        ttl: float = 30.0,
    ) -> None:
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.nbytes = 0  # bytes arrived and not yet taken
        #: fetched chunks taken by a read, and fetched ones dropped unread (figures)
        self.taken = self.dropped = 0
        self._max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None
        self._tasks: OrderedDict[str, tuple[float, asyncio.Task[Any]]] = OrderedDict()
        self._pending = 0  # fetches started and not arrived
        self._arrived = self._arrived_bytes = 0  # for the mean size of a chunk

    @property
    def held(self) -> int:
        """Chunks fetched or being fetched, not yet taken."""
        return len(self._tasks)

    def _expire(self, now: float) -> None:
        while self._tasks:
            key, (started, _) = next(iter(self._tasks.items()))
            if now - started < self.ttl:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        _, task = self._tasks.pop(key)
        if task.done():
            self.nbytes -= _size(task)
        else:
            task.cancel()
        self.dropped += 1

    def clear(self) -> None:
        """Drop every chunk held (fetches in flight are cancelled)."""
        for key in list(self._tasks):
            self._drop(key)

    def add(self, store_path: Any, keys: Sequence[str], size_hint: int = 0) -> None:
        """Start fetching ``keys`` (relative to ``store_path``) within the bounds.

        ``size_hint`` bounds a chunk's stored size (e.g. its decoded size) until some arrived.
        """
        now = time.monotonic()
        self._expire(now)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_in_flight)
        mean = self._arrived_bytes / self._arrived if self._arrived else size_hint
        for key in keys:
            full = f"{store_path}/{key}"
            if full in self._tasks:
                continue
            if (
                len(self._tasks) >= self.max_chunks
                or self.nbytes + (self._pending + 1) * mean > self.max_bytes
            ):
                return
            self._pending += 1
            task = asyncio.ensure_future(self._fetch(store_path / key))
            self._tasks[full] = (now, task)

    async def _fetch(self, path: Any) -> Any:
        from zarr.core.buffer import default_buffer_prototype

        assert self._slots is not None
        try:
            async with self._slots:
                buf = await path.get(default_buffer_prototype())
        except Exception as exc:  # returned: the read fetches it again and reports
            return exc
        finally:
            self._pending -= 1
        size = 0 if buf is None else len(buf)
        self.nbytes += size
        self._arrived += 1
        self._arrived_bytes += size
        return buf

    def take(self, store_path: Any, key: str) -> asyncio.Task[Any] | None:
        """The fetch of ``key`` if it was started (its bytes leave this store), else None.

        Bytes older than ``ttl`` are dropped instead (the chunk may have been rewritten).
        """
        full = f"{store_path}/{key}"
        entry = self._tasks.get(full)
        if entry is None:
            return None
        if time.monotonic() - entry[0] >= self.ttl:
            self._drop(full)
            return None
        del self._tasks[full]
        task = entry[1]
        if task.done():
            self.nbytes -= _size(task)
        else:  # counted when it arrives: count it out then
            task.add_done_callback(lambda t: self._settle(t))
        self.taken += 1
        return task

    def _settle(self, task: asyncio.Task[Any]) -> None:
        self.nbytes -= _size(task)


def _size(task: asyncio.Task[Any]) -> int:
    """Bytes a finished fetch holds (0 if it failed, was cancelled or found no chunk)."""
    if task.cancelled() or task.exception() is not None:
        return 0
    buf = task.result()
    return 0 if buf is None or isinstance(buf, Exception) else len(buf)


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

    def __init__(
        self,
        array: Any,
        *,
        known_absent: Container[int] | None = None,
        ahead: FetchAhead | None = None,
    ) -> None:
        self.array = array
        #: bytes of remote chunks fetched ahead (:meth:`fetch_ahead`), shared by readers
        self.ahead = ahead
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

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one whole decoded chunk (edge chunks are stored at this size too)."""
        return math.prod(self.chunks) * self.dtype.itemsize

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
        full = self.chunk_nbytes
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

    async def _fetch(self, index: int) -> tuple[bool, Any]:
        """(True, chunk bytes) of a chunk to decode here, or (False, the chunk zarr decoded)."""
        assert self._async is not None
        self._check(index)
        if self.direct:
            from zarr.core.buffer import default_buffer_prototype

            key = self._key(index)
            path = self._async.store_path
            early = self.ahead.take(path, key) if self.ahead is not None else None
            buf = await early if early is not None else None  # FetchAhead returns its errors
            if early is None or isinstance(buf, Exception):  # fetched (again): retried, reported
                buf = await (path / key).get(default_buffer_prototype())
            if buf is not None:
                return True, buf.as_numpy_array()
            self._check_absent(index)
        return False, np.asarray(await self._async.getitem(self.rows(index)))

    async def _read_async(
        self,
        index: int,
        out: np.ndarray | None,
        then: OnChunk | None,
        timeout: float | None,
        result: concurrent.futures.Future[Any],
    ) -> None:
        """Fetch a chunk from a remote store within ``timeout``; decode it in the thread pool.

        The pool's task sets ``result`` (the chunk, or the exception) unless it was cancelled.
        """
        raw: bool = False
        data: Any = RuntimeError(f"the read of chunk {index} was stopped")
        try:
            async with asyncio.timeout(timeout):
                try:
                    raw, data = await self._fetch(index)
                except Exception as exc:  # returned, so that one failure does not cancel others
                    raw, data = False, exc
        except TimeoutError:
            raw, data = False, TimeoutError(f"chunk {index} was not read within {timeout:.3g} s")
        finally:  # the caller waits on ``result``: it is always set, even on cancellation
            try:
                _thread_pool().submit(self._finish, result, raw, data, index, out, then)
            except RuntimeError as exc:  # the pool is shut down (the process is exiting)
                if result.set_running_or_notify_cancel():
                    result.set_result(exc)

    def _finish(
        self,
        result: concurrent.futures.Future[Any],
        raw: bool,
        data: Any,
        index: int,
        out: np.ndarray | None,
        then: OnChunk | None,
    ) -> None:
        """Decode fetched bytes (or take zarr's chunk) and set ``result``, unless cancelled."""
        if not result.set_running_or_notify_cancel():
            return
        try:
            if raw:
                data = self._decode(data, index, out)
            if not isinstance(data, Exception):
                data = _then(then, index, data)
        except Exception as exc:
            data = exc
        result.set_result(data)

    def _read_sync(self, index: int, then: OnChunk | None) -> Any:
        try:
            self._check(index)
            return _then(then, index, np.asarray(self.array[self.rows(index)]))
        except Exception as exc:
            return exc

    def fetch_ahead(self, indices: Sequence[int]) -> None:
        """Start fetching the bytes of chunks ``indices`` for reads to come (remote stores).

        Does nothing for local files, without a :class:`FetchAhead` or for chunks zarr
        decodes itself; returns at once.
        """
        if self.ahead is None or self._local is not None or self._async is None or not self.direct:
            return
        keys = [self._key(int(i)) for i in indices if 0 <= int(i) < self.n_chunks]
        if keys:
            from zarr.core.sync import _get_loop

            path = self._async.store_path
            _get_loop().call_soon_threadsafe(self.ahead.add, path, keys, self.chunk_nbytes)

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
        at once) and decoded by that pool as soon as each one arrives.
        """
        if self._local is not None:
            return _thread_pool().submit(self._read_local, int(index), out, then)
        if self._async is None:  # not a zarr 3 array: read at once
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done.set_result(self._read_sync(int(index), then))
            return done
        from zarr.core.sync import _get_loop

        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fetch = self._read_async(int(index), out, then, timeout, result)
        _get_loop().call_soon_threadsafe(_run_task, fetch)
        return result

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

    def result(self) -> list[Any]:
        """One outcome per chunk (array or exception), in the order asked for."""
        return [f.result() for f in self._futures]

    def cancel(self) -> None:
        """Drop the reads not started yet and wait for the running ones (their data is dropped)."""
        for f in self._futures:
            if not f.cancel():
                with contextlib.suppress(Exception):
                    f.result()


#: Fetches running on zarr's event loop (the loop holds tasks weakly only).
_TASKS: set[asyncio.Task[None]] = set()


def _run_task(fetch: Coroutine[Any, Any, None]) -> None:
    """Run ``fetch`` as a task of the running loop, held until it ends."""
    task = asyncio.ensure_future(fetch)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


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
_POOL_LOCK = ForkSafeLock()


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
