"""FrameReader: decoded-frame cache and grouped tile reads of one (time, y, x) zarr variable."""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mlcast_pipes._locks import ForkSafeLock
from mlcast_pipes.chunkio import ChunkReader, FetchAhead, OnChunk
from mlcast_pipes.errors import DatasetError, ParameterError, ReadError
from mlcast_pipes.reader.errors import _describe, _FrameFailedError, _is_denied, is_transient
from mlcast_pipes.reader.requests import (
    _OUT_ITEMSIZE,
    READ_DEADLINE_ENV,
    ReaderStats,
    TileRequest,
    _as_int,
    _cf_decoding,
    _CFDecoding,
    _default_deadline,
    _open_store,
)

__all__ = ["DECODE_BUDGET", "MISSING_CHUNKS_ENV", "FrameReader", "expect_chunks"]


#: Time chunks in flight at once (being read or decoded) per read: local files, remote stores.
_LOCAL_IN_FLIGHT = 8
_REMOTE_IN_FLIGHT = 32
#: Default bound, in bytes, of a reader's decode buffers (in flight and kept for reuse).
DECODE_BUDGET = 256 * 2**20


class _FrameCache:
    """LRU cache of decoded frames keyed by time index, bounded in bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.nbytes = 0
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, t: object) -> bool:
        return t in self._frames

    def keys(self) -> list[int]:
        """Return the cached time indices, least recently used first."""
        return list(self._frames)

    def get(self, t: int) -> np.ndarray | None:
        frame = self._frames.get(t)
        if frame is not None:
            self._frames.move_to_end(t)
        return frame

    def put(self, t: int, frame: np.ndarray) -> list[np.ndarray]:
        """Cache ``frame`` (read-only from now on); return the frames that left the cache."""
        dropped = []
        if t in self._frames:
            old = self._frames.pop(t)
            self.nbytes -= old.nbytes
            dropped.append(old)
        if frame.nbytes > self.capacity:
            dropped.append(frame)
            return dropped
        while self._frames and self.nbytes + frame.nbytes > self.capacity:
            _, old = self._frames.popitem(last=False)
            self.nbytes -= old.nbytes
            dropped.append(old)
        frame.flags.writeable = False
        self._frames[t] = frame
        self.nbytes += frame.nbytes
        return dropped

    def clear(self) -> None:
        self._frames.clear()
        self.nbytes = 0


class FrameReader:
    """Read tiles of one (time, y, x) variable of a zarr archive, decoding each frame once.

    Frames are decoded as ``open_zarr`` does (fill values to NaN, scale and offset) into an LRU
    cache of ``cache_bytes`` (0: none) and returned as float32 copies; each worker (after fork)
    gets its own handle and cache. A read failing with a transient error is retried ``retries``
    times; ``read_deadline`` (seconds, default :data:`READ_DEADLINE`) bounds a remote read over
    all retries, then ReadError. Up to 8 time chunks (32 from a remote store) are read at once,
    fewer when their decode buffers would exceed ``decode_budget`` bytes (at least one).

    Examples
    --------
    >>> import xarray as xr
    >>> rain = np.arange(24, dtype="float32").reshape(2, 3, 4)  # (time, y, x)
    >>> _ = xr.Dataset({"rain": (("time", "y", "x"), rain)}).to_zarr("frames.zarr", mode="w")
    >>> reader = FrameReader("frames.zarr", "rain")
    >>> reader.read_tile(0, 2, 1, 2, 1, 2)[1].tolist()  # [0:2, 1:3, 1:3]
    [[17.0, 18.0], [21.0, 22.0]]

    """

    def __init__(
        self,
        url: str,
        var_name: str,
        *,
        storage_options: dict[str, Any] | None = None,
        cache_bytes: int = 256 * 2**20,
        retries: int = 3,
        retry_backoff: float = 0.2,
        read_deadline: float | str | None = "default",
        decode_budget: int = DECODE_BUDGET,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ParameterError(f"url must be a non-empty path or URL string, got {url!r}.")
        if cache_bytes < 0:
            raise ParameterError(f"cache_bytes must be >= 0, got {cache_bytes}; use 0 to disable.")
        if retries < 0:
            raise ParameterError(f"retries must be >= 0, got {retries}.")
        if decode_budget < 0:
            raise ParameterError(
                f"decode_budget must be >= 0 bytes, got {decode_budget}; 0 decodes one chunk at "
                "a time."
            )
        if retry_backoff < 0:
            raise ParameterError(f"retry_backoff must be >= 0 seconds, got {retry_backoff}.")
        self.url = url
        self.var_name = var_name
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.cache_bytes = int(cache_bytes)
        self.retries = int(retries)
        self.retry_backoff = float(retry_backoff)
        self.decode_budget = int(decode_budget)
        if read_deadline == "default":
            read_deadline = _default_deadline()
        if read_deadline is not None and (
            isinstance(read_deadline, str) or not read_deadline > 0  # NaN fails too
        ):
            raise ParameterError(
                f"read_deadline must be a positive number of seconds or None, got "
                f"{read_deadline!r}."
            )
        self.read_deadline: float | None = None if read_deadline is None else float(read_deadline)
        self.stats = ReaderStats()
        self._lock = threading.RLock()
        self._cache = _FrameCache(self.cache_bytes)
        #: decode buffers of frames that left the cache, reused so that decoding does not fault
        #: in fresh memory for every frame; with those lent to reads in flight (``_lent``) they
        #: stay within the decode budget
        self._spare: list[np.ndarray] = []
        self._lent = 0
        #: (pid, store) of the bytes fetched ahead for this reader; a second read lane of the
        #: same archive uses its owner's (see :func:`~mlcast_pipes.reader.get_reader`)
        self._ahead_store: tuple[int, FetchAhead] | None = None
        self._ahead_owner: FrameReader | None = None
        self._reset_handles()

    # ------------------------------------------------------------------ state and opening
    def _reset_handles(self) -> None:
        self._pid: int | None = None
        self._store: Any = None
        self._array: Any = None
        self._shape: tuple[int, int, int] | None = None
        self._dtype: np.dtype[Any] | None = None
        self._tchunk = 1
        self._chunks: ChunkReader | None = None
        self._cf = _CFDecoding()
        self._limit = 0  # chunks in flight per read (0: not computed yet)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "var_name": self.var_name,
            "storage_options": self.storage_options,
            "cache_bytes": self.cache_bytes,
            "retries": self.retries,
            "retry_backoff": self.retry_backoff,
            "read_deadline": self.read_deadline,
            "decode_budget": self.decode_budget,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            state["var_name"],
            storage_options=state["storage_options"],
            cache_bytes=state["cache_bytes"],
            retries=state["retries"],
            retry_backoff=state["retry_backoff"],
            read_deadline=state.get("read_deadline"),
            decode_budget=state.get("decode_budget", DECODE_BUDGET),
        )

    def __repr__(self) -> str:
        opened = "open" if self._pid == os.getpid() else "not opened"
        return f"FrameReader({self.url!r}, {self.var_name!r}, {opened})"

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_open(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None:
            # forked copy: drop the parent's handles (not closing them) and start afresh
            self._lock = threading.RLock()
            self._cache = _FrameCache(self.cache_bytes)
            self._spare = []
            self._lent = 0
            self.stats = ReaderStats()
            self._reset_handles()
        with self._lock:
            if self._pid == pid:
                return
            self._open(pid)

    def _open(self, pid: int) -> None:
        import zarr

        attempt = 0
        while True:
            try:
                store = _open_store(self.url, self.storage_options)
                group = zarr.open_group(store, mode="r")
                break
            except Exception as exc:
                if is_transient(exc) and attempt < self.retries:
                    time.sleep(self.retry_backoff * 2**attempt)
                    attempt += 1
                    continue
                if is_transient(exc):
                    raise ReadError(
                        f"Could not open the zarr store at {self.url!r} after {attempt + 1} "
                        f"attempts ({_describe(exc)}). Check the network connection and "
                        "storage_options, or raise `retries`."
                    ) from exc
                raise DatasetError(
                    f"Could not open a zarr group at {self.url!r} ({_describe(exc)}). Check that "
                    "the path or URL points at the root of a zarr store (format 2 or 3) and that "
                    "storage_options give access to it."
                ) from exc
        try:
            node = group[self.var_name]
        except KeyError as exc:
            names = sorted(group.array_keys())
            raise DatasetError(
                f"Variable {self.var_name!r} is not in the zarr store at {self.url!r}; its arrays "
                f"are {names}. Pass one of these as var_name."
            ) from exc
        if not isinstance(node, zarr.Array):
            raise DatasetError(
                f"{self.var_name!r} in {self.url!r} is a group, not an array; pass the name of "
                f"the (time, y, x) data variable, one of {sorted(group.array_keys())}."
            )
        if len(node.shape) != 3:
            raise DatasetError(
                f"Variable {self.var_name!r} in {self.url!r} has shape {node.shape}; the reader "
                "needs a 3-D (time, y, x) array. Pick the data variable of the archive."
            )
        dtype = np.dtype(node.dtype)
        if dtype.kind not in "fiu":
            raise DatasetError(
                f"Variable {self.var_name!r} in {self.url!r} has dtype {dtype}; the reader needs "
                "numeric pixels (float or integer)."
            )
        self._store = store
        self._array = node
        self._shape = (int(node.shape[0]), int(node.shape[1]), int(node.shape[2]))
        self._dtype = dtype
        self._tchunk = max(1, int(node.chunks[0]))
        self._chunks = ChunkReader(node, ahead=self._ahead())
        self._cf = _cf_decoding(node)
        self._pid = pid

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (time, y, x) of the variable (opens the archive if needed)."""
        self._ensure_open()
        assert self._shape is not None
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Dtype of the variable on disk (returned arrays are always float32)."""
        self._ensure_open()
        assert self._dtype is not None
        return self._dtype

    @property
    def frame_nbytes(self) -> int:
        """Bytes of one decoded frame in the cache (on-disk dtype)."""
        _, h, w = self.shape
        return h * w * self.dtype.itemsize

    @property
    def cached_frames(self) -> list[int]:
        """Time indices in the decoded-frame cache, least recently used first."""
        return self._cache.keys()

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the decoded-frame cache now."""
        return self._cache.nbytes

    # ------------------------------------------------------------------ public reads
    def read_frames(self, t0: int, t1: int) -> np.ndarray:
        """Return the full frames ``[t0, t1)`` as a new float32 array (t1 - t0, y, x).

        Raises ParameterError for an empty or out-of-range window, ReadError for a failed read.
        """
        t0, t1 = _as_int(t0, "t0"), _as_int(t1, "t1")
        _, h, w = self.shape
        return self.read_tiles([TileRequest(t0, t1 - t0, 0, h, 0, w)])[0]

    def read_tile(self, t0: int, n: int, y0: int, ny: int, x0: int, nx: int) -> np.ndarray:
        """Return the window ``[t0:t0+n, y0:y0+ny, x0:x0+nx]`` as a float32 copy.

        Frames come from (and go to) the cache. Raises ParameterError for an empty or out-of-range
        window, ReadError if a frame cannot be read.
        """
        return self.read_tiles([TileRequest(t0, n, y0, ny, x0, nx)])[0]

    def read_tiles(
        self, requests: Sequence[TileRequest], *, cache: bool = True
    ) -> list[np.ndarray]:
        """Read a group of tiles (any order, overlaps allowed), decoding their frames once.

        Missing frames are read and decoded concurrently (each cut into the tiles by the thread
        that decoded it); one float32 array per request is returned, in request order.
        ``cache=False`` skips caching the new frames so that their buffers are reused at once
        (for callers that cut all they need). Thread-safe: concurrent calls run one after the
        other. Raises ParameterError for a bad request, ReadError naming frame, tiles and URL.
        """
        reqs = [self._validate(r) for r in requests]
        if not reqs:
            return []
        self._ensure_open()
        with self._lock:
            return self._read_tiles_locked(reqs, cache)

    def fetch_ahead(self, frames: Iterable[int]) -> None:
        """Start fetching the stored bytes of ``frames`` for reads to come, and return at once.

        For remote stores only (elsewhere it does nothing): a later :meth:`read_tiles` of this
        reader, or of its second read lane, decodes them without waiting for storage. Bounded
        (see :class:`~mlcast_pipes.chunkio.FetchAhead`); frames in the cache, outside the
        archive or not read within 30 s cost nothing more. Closing the reader drops them.
        """
        self._ensure_open()
        chunks = self._chunks
        if chunks is None or chunks.is_local:
            return
        wanted = {int(t) // self._tchunk for t in frames if int(t) not in self._cache}
        chunks.fetch_ahead(sorted(wanted))

    def _ahead(self) -> FetchAhead:
        """The store of bytes fetched ahead: this reader's (per process), or its lane owner's."""
        if self._ahead_owner is not None:
            return self._ahead_owner._ahead()
        pid = os.getpid()
        with _AHEAD_LOCK:
            if self._ahead_store is None or self._ahead_store[0] != pid:
                self._ahead_store = (pid, FetchAhead())
            return self._ahead_store[1]

    def close(self) -> None:
        """Drop the store handle and the cached frames (the reader reopens on next use)."""
        with self._lock:
            store = self._store
            own = self._pid == os.getpid()
            self._cache.clear()
            self._spare.clear()
            ahead = self._ahead_store
            self._reset_handles()
        if ahead is not None and ahead[0] == os.getpid() and ahead[1].held:  # dropped unread
            from zarr.core.sync import _get_loop

            _get_loop().call_soon_threadsafe(ahead[1].clear)
        if own and store is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                store.close()

    # ------------------------------------------------------------------ internals
    def _validate(self, r: TileRequest) -> TileRequest:
        if not isinstance(r, TileRequest):
            raise ParameterError(
                f"read_tiles expects TileRequest items, got {type(r).__name__}; build them with "
                "TileRequest(t0, n, y0, ny, x0, nx)."
            )
        vals = [_as_int(getattr(r, k), k) for k in ("t0", "n", "y0", "ny", "x0", "nx")]
        shape = self.shape
        if vals[1] >= 1 and vals[0] >= 0 and vals[0] + vals[1] > shape[0]:
            shape = self._refresh_if_grown()  # frames appended since the archive was opened?
        for (start, size), dim, length in zip(
            ((vals[0], vals[1]), (vals[2], vals[3]), (vals[4], vals[5])),
            ("time", "y", "x"),
            shape,
            strict=True,
        ):
            if size < 1 or start < 0 or start + size > length:
                raise ParameterError(
                    f"Tile {r} reaches outside the archive along {dim}: [{start}, {start + size}) "
                    f"is not inside [0, {length}) of {self.var_name!r} in {self.url!r} (shape "
                    f"{shape}). Use a start >= 0, a size >= 1 and start + size <= {length}."
                )
        return TileRequest(*vals)

    def _refresh_if_grown(self) -> tuple[int, int, int]:
        """Re-read the array's metadata; keep the new handle only if frames were appended."""
        import zarr

        with self._lock:
            assert self._shape is not None
            try:
                node = zarr.open_group(self._store, mode="r")[self.var_name]
            except Exception:  # the caller reports the request against the shape it knows
                return self._shape
            if (
                isinstance(node, zarr.Array)
                and len(node.shape) == 3
                and tuple(int(n) for n in node.shape[1:]) == self._shape[1:]
                and int(node.shape[0]) > self._shape[0]
            ):
                self._array = node
                self._chunks = ChunkReader(node, ahead=self._ahead())
                self._shape = (int(node.shape[0]), self._shape[1], self._shape[2])
            return self._shape

    def _read_tiles_locked(self, reqs: list[TileRequest], cache: bool = True) -> list[np.ndarray]:
        outs = [np.empty((r.n, r.ny, r.nx), dtype=np.float32) for r in reqs]
        users: dict[int, list[int]] = {}
        for i, r in enumerate(reqs):
            for t in r.frames:
                users.setdefault(t, []).append(i)

        missing: list[int] = []
        for t in sorted(users):
            frame = self._cache.get(t)
            if frame is None:
                missing.append(t)
                self.stats.cache_misses += 1
            else:
                self.stats.cache_hits += 1
                self._cut(frame, t, users[t], reqs, outs)

        def cut_chunk(index: int, block: np.ndarray) -> None:
            # runs in the decoding thread, while the frames are in that core's cache; each
            # frame fills its own time step of the tiles, so threads never write the same bytes
            c0 = index * self._tchunk
            for k in range(block.shape[0]):
                if c0 + k in users:
                    self._cut(block[k], c0 + k, users[c0 + k], reqs, outs)

        units = _group_by_chunk(missing, self._tchunk, self.shape[0])
        self._read_chunks(
            units, cut_chunk, cache, lambda f, n, **kw: self._read_error(f, n, reqs, users, **kw)
        )
        self.stats.bytes_delivered += sum(o.nbytes for o in outs)
        return outs

    def _cut(
        self,
        frame: np.ndarray,
        t: int,
        idx: list[int],
        reqs: list[TileRequest],
        outs: list[np.ndarray],
    ) -> None:
        cf = self._cf
        for i in idx:
            r = reqs[i]
            cf.apply_into(outs[i][t - r.t0], frame[r.y0 : r.y0 + r.ny, r.x0 : r.x0 + r.nx])

    def _in_flight_limit(self) -> int:
        """Time chunks read at once: a count, lowered so that their buffers fit the budget."""
        assert self._chunks is not None
        count = _LOCAL_IN_FLIGHT if self._chunks.is_local else _REMOTE_IN_FLIGHT
        return max(1, min(count, self.decode_budget // max(self._chunks.chunk_nbytes, 1)))

    def _read_chunks(
        self,
        units: list[tuple[int, int, list[int]]],
        then: OnChunk,
        cache: bool,
        error: Callable[..., ReadError],
    ) -> None:
        """Read, decode and cut the time chunks ``units`` (chunk start, stop, needed frames).

        A sliding window keeps up to :meth:`_in_flight_limit` chunks in flight (or decoded and
        waiting to enter the cache in time order). A transient failure is retried ``retries``
        times after a backoff, within ``read_deadline`` of the chunk's first try.
        """
        if not units:
            return
        assert self._chunks is not None
        chunks = self._chunks
        chunks.known_absent = _KNOWN_ABSENT.get((self.url, self.var_name))
        chunks.warn_missing = os.environ.get(MISSING_CHUNKS_ENV, "").lower() == "warn"
        limit = self._limit = self._limit or self._in_flight_limit()
        lend = self._tchunk == 1 and chunks.direct
        # to start, smallest first: (index in units, not before (monotonic), attempt, deadline)
        todo: list[tuple[int, float, int, float | None]] = [
            (k, 0.0, 0, None) for k in range(len(units))
        ]
        running: dict[concurrent.futures.Future[Any], tuple[int, int, float | None, Any]] = {}
        finished: queue.SimpleQueue[concurrent.futures.Future[Any]] = queue.SimpleQueue()
        held: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # decoded, not yet cached
        ordered, next_k = cache, 0
        try:
            while todo or running:
                now = time.monotonic()
                while todo and todo[0][1] <= now and len(running) + len(held) < limit:
                    k, _, attempt, deadline = heapq.heappop(todo)
                    if deadline is None and self.read_deadline is not None:
                        deadline = now + self.read_deadline
                    timeout = None if deadline is None else max(deadline - now, 1e-3)
                    out = self._lend() if lend else None
                    future = chunks.start(units[k][0] // self._tchunk, out, then, timeout)
                    running[future] = (k, attempt, deadline, out)
                    future.add_done_callback(finished.put)
                if not running:
                    if held:  # the window is full of frames waiting for a retried one: cache them
                        ordered = False
                        for k in sorted(held):
                            self._deliver(units[k], *held.pop(k), cache)
                    elif todo:
                        time.sleep(max(todo[0][1] - now, 0.0))
                    continue
                wait = todo[0][1] - now if todo and len(running) + len(held) < limit else None
                try:
                    done = [finished.get(timeout=wait)]
                except queue.Empty:
                    continue
                while not finished.empty():
                    done.append(finished.get_nowait())
                for future in done:
                    k, attempt, deadline, out = running.pop(future)
                    outcome = future.result()
                    if isinstance(outcome, Exception):
                        if out is not None:
                            self._lent -= 1  # a failed decode may have written part of it: drop it
                        backoff = self._retry_backoff(units[k], attempt, deadline, outcome, error)
                        heapq.heappush(todo, (k, time.monotonic() + backoff, attempt + 1, deadline))
                    elif ordered:
                        held[k] = (np.asarray(outcome), out)
                    else:
                        self._deliver(units[k], np.asarray(outcome), out, cache)
                while ordered and next_k in held:
                    self._deliver(units[next_k], *held.pop(next_k), cache)
                    next_k += 1
        finally:
            for future, (_, _, _, out) in running.items():
                if not future.cancel():
                    with contextlib.suppress(Exception):
                        future.result()
                if out is not None:
                    self._lent -= 1
            for _, out in held.values():
                if out is not None:
                    self._lent -= 1

    def _retry_backoff(
        self,
        unit: tuple[int, int, list[int]],
        attempt: int,
        deadline: float | None,
        error: Exception,
        report: Callable[..., ReadError],
    ) -> float:
        """Seconds to wait before retrying a failed time chunk; ReadError if it must not be."""
        failure = _FrameFailedError(unit[0], unit[1], error)
        wait = self.retry_backoff * float(2**attempt)
        late = deadline is not None and time.monotonic() + wait >= deadline
        transient = is_transient(error)
        if not transient or attempt >= self.retries or late:
            raise report(
                failure, attempt + 1, transient=transient, late=late and transient
            ) from error
        return wait

    def _deliver(
        self,
        unit: tuple[int, int, list[int]],
        block: np.ndarray,
        out: np.ndarray | None,
        cache: bool,
    ) -> None:
        """Count a decoded time chunk; cache its needed frames (or recycle their buffers)."""
        c0, c1, needed = unit
        _, h, w = self.shape
        self.stats.frames_decoded += c1 - c0
        self.stats.bytes_decoded += (c1 - c0) * h * w * _OUT_ITEMSIZE
        if out is not None:
            self._lent -= 1
            if block.base is not out and block is not out:
                self._recycle([out])  # decoded elsewhere (e.g. an absent chunk's fill value)
        # one frame: a view, whose buffer is reused once evicted; several: copies, so that a
        # cached frame does not keep the whole time chunk alive
        frames = [(c0, block[0])] if c1 - c0 == 1 else [(t, block[t - c0].copy()) for t in needed]
        for t, frame in frames:
            self._recycle(self._cache.put(t, frame) if cache else [frame])

    def _lend(self) -> np.ndarray:
        """A decode buffer for a time chunk about to be read (a spare one if any)."""
        assert self._chunks is not None
        self._lent += 1
        return (
            self._spare.pop()
            if self._spare
            else np.empty(self._chunks.out_shape(0), self._chunks.dtype)
        )

    def _recycle(self, frames: list[np.ndarray]) -> None:
        """Keep the decode buffers of frames that left the cache, within the decode budget."""
        if self._chunks is None:
            return
        limit = self._limit or self._in_flight_limit()
        for frame in frames:
            block = frame if frame.base is None else frame.base
            if (
                isinstance(block, np.ndarray)
                and self._lent + len(self._spare) < limit
                and block.flags.owndata
                and block.flags.writeable
                and block.shape == self._chunks.out_shape(0)
                and block.dtype == self._chunks.dtype
            ):
                self._spare.append(block)

    def _read_error(
        self,
        failure: _FrameFailedError,
        attempts: int,
        reqs: list[TileRequest],
        users: dict[int, list[int]],
        *,
        transient: bool,
        late: bool = False,
    ) -> ReadError:
        frames = range(failure.c0, failure.c1)
        hit = sorted({i for t in frames for i in users.get(t, [])})
        tiles = ", ".join(str(reqs[i]) for i in hit[:3]) + (
            f" and {len(hit) - 3} more" if len(hit) > 3 else ""
        )
        where = (
            f"frame {failure.c0}"
            if len(frames) == 1
            else f"frames {failure.c0}..{failure.c1 - 1} (one time chunk)"
        )
        if late:
            fix = (
                f"It got no answer within the read deadline ({self.read_deadline:g} s over "
                f"{attempts} attempt(s)): the server is not answering. Check the network "
                "connection and the server, or raise `read_deadline` "
                f"(${READ_DEADLINE_ENV})."
            )
        elif transient:
            fix = (
                f"It failed {attempts} times with a transient error; check the network "
                "connection and storage_options, or raise `retries` / `retry_backoff`."
            )
        elif isinstance(failure.error, FileNotFoundError):
            fix = (
                "Restore that chunk (re-download the time step), or rebuild the index with "
                f"recompute=True to accept it as missing (${MISSING_CHUNKS_ENV}=warn reads it "
                "as no data, with a warning)."
            )
        elif _is_denied(failure.error):
            fix = (
                "Access to the chunk was denied: check the credentials and storage_options "
                "(key/secret, anon, endpoint_url) and the permissions of the store."
            )
        else:
            fix = (
                "The chunk is probably corrupted or truncated: re-download or rewrite that time "
                "step of the archive, or add its time to `missing_times` to skip it."
            )
        return ReadError(
            f"Could not read {where} of variable {self.var_name!r} from {self.url!r}, needed "
            f"by tile(s) {tiles}: {_describe(failure.error)}. {fix}"
        )


def _group_by_chunk(
    frames: Iterable[int], tchunk: int, length: int
) -> list[tuple[int, int, list[int]]]:
    """Group sorted time indices by time chunk: (chunk start, chunk stop, needed frames)."""
    units: dict[int, list[int]] = {}
    for t in frames:
        units.setdefault(t // tchunk, []).append(t)
    return [(c * tchunk, min((c + 1) * tchunk, length), needed) for c, needed in units.items()]


#: Guards the creation of readers' stores of bytes fetched ahead
_AHEAD_LOCK = ForkSafeLock()

#: (url, variable) -> time chunks absent when the archive was indexed (others must be there)
_KNOWN_ABSENT: dict[tuple[str, str], frozenset[int]] = {}
#: Environment variable: "warn" reads a chunk missing since indexing as no data, with a warning.
MISSING_CHUNKS_ENV = "MLCAST_PIPES_MISSING_CHUNKS"


def expect_chunks(url: str, var_name: str, absent: Iterable[int]) -> None:
    """Declare which time chunks of a variable were absent when it was indexed.

    Any other missing chunk then raises ReadError (``$MLCAST_PIPES_MISSING_CHUNKS=warn``: read as
    no data, with a warning); undeclared, a missing chunk reads as the fill value.

    Examples
    --------
    >>> import os
    >>> import xarray as xr
    >>> rain = xr.Dataset({"rain": (("time", "y", "x"), np.ones((3, 2, 2), "f4"))})
    >>> chunks = {"rain": {"chunks": (1, 2, 2)}}
    >>> _ = rain.to_zarr("declared.zarr", mode="w", zarr_format=2, encoding=chunks)
    >>> os.remove("declared.zarr/rain/1.0.0")
    >>> expect_chunks("declared.zarr", "rain", absent=[])
    >>> FrameReader("declared.zarr", "rain").read_frames(0, 3)
    Traceback (most recent call last):
    ...
    mlcast_pipes.errors.ReadError: Could not read frame 1 of variable 'rain' ...

    """
    _KNOWN_ABSENT[(url, var_name)] = frozenset(int(i) for i in absent)
