"""Shared-memory batch buffers that data loader workers reuse once the main process lets go.

Send a batch on to another process only as a copy (``batch.clone()``), or use
``reuse_batch_memory=False``.
"""

# Fresh shared memory is zeroed and faulted in page by page, which costs more than stacking a
# batch: each worker stacks into a few slots it recycles. One small shared table per loader
# holds, per worker and slot, the generation of the batch in it (0: free) and the inode of its
# memory. A worker writes the generation into the table and into a header after the data; the
# main process reads the header (BatchPool.track), frees the slot once the batch's storage died
# (a torch weak reference says so, BatchPool.release) and, at each epoch start, frees the slots
# it holds no live mapping of (BatchPool.reclaim). A batch still held is never overwritten.

from __future__ import annotations

import math
import os
import secrets
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = [
    "BatchPool",
    "WorkerBuffers",
    "sharing_by_fd",
]


#: int64 header after a pooled batch's data: magic, pool token, worker, slot, generation.
_MAGIC = 0x6D6C636173742D62  # "mlcast-b"
_HEADER = 8  # int64 words (64 bytes) reserved
_ALIGN = 64
_GEN, _INO, _DEV = 0, 1, 2  # table columns


def _header_offset(nbytes: int) -> int:
    """Byte offset of the header in a buffer holding ``nbytes`` of batch data."""
    return math.ceil(nbytes / _ALIGN) * _ALIGN


class BatchPool:
    """Recycled shared-memory batch buffers of one data loader (``n_workers`` x ``n_slots``).

    Made in the main process before the workers start; workers use :meth:`worker_buffers`, the
    main process :meth:`track`, :meth:`release` and :meth:`reclaim`. With all slots in use a
    worker allocates ordinary shared memory.

    Examples
    --------
    >>> pool = BatchPool(n_workers=1, n_slots=2)
    >>> batch = pool.worker_buffers(0).empty((4, 3), torch.float32)
    >>> batch.shape, batch.is_shared(), pool.in_use()
    (torch.Size([4, 3]), True, 1)

    """

    def __init__(self, n_workers: int, n_slots: int = 8) -> None:
        if n_workers < 1 or n_slots < 1:
            raise ValueError(f"need n_workers >= 1 and n_slots >= 1, got {n_workers}, {n_slots}")
        self.table = torch.zeros((n_workers, n_slots, 3), dtype=torch.int64)
        self.table.share_memory_()  # type: ignore[no-untyped-call]
        self.token = secrets.randbits(62) + 1
        self._held: dict[tuple[int, int], tuple[StorageWeakRef, int]] = {}
        self.n_released = 0

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as a reference to this pool where it is known, else as its shared table.

        DataLoader2 copies its reading service (worker set-up function included) with
        ``pickle``, and a forked worker inherits this process's pools: both get this very
        pool back. A spawned worker gets the table through shared memory.
        """
        _POOLS[self.token] = self
        return (_attach, (self.token, self.table))

    def worker_buffers(self, worker: int) -> WorkerBuffers:
        """The buffers of worker ``worker`` (call it in that worker)."""
        return WorkerBuffers(self.table[worker].numpy(), self.token, worker)

    # ---- main process ------------------------------------------------------------------

    def track(self, item: Any) -> int:
        """Note the pooled batches in a received item (tensors in tuples, lists, mappings).

        Returns the number of pooled buffers found.
        """
        table = self.table.numpy()
        found = 0
        for storage in _storages(item):
            header = _read_header(storage)
            if header is None or header[1] != self.token:
                continue
            worker, slot, gen = (int(v) for v in header[2:5])
            if not (0 <= worker < table.shape[0] and 0 <= slot < table.shape[1]):
                continue
            if table[worker, slot, _GEN] != gen:  # not the batch the slot holds: leave it
                continue
            self._held[(worker, slot)] = (_weak_ref(storage), gen)
            found += 1
        return found

    def release(self) -> int:
        """Free the slots whose batches no tensor in this process holds any more.

        Returns the number of slots freed.
        """
        table = self.table.numpy()
        freed = 0
        for key, (ref, gen) in list(self._held.items()):
            if ref.expired():  # type: ignore[no-untyped-call]
                del self._held[key]
                worker, slot = key
                if table[worker, slot, _GEN] == gen:
                    table[worker, slot, _GEN] = 0
                    freed += 1
        self.n_released += freed
        return freed

    def reclaim(self) -> int:
        """Free the slots this process holds no live mapping of (call it between epochs).

        Only safe while no batch is on its way from a worker: the loader calls it when an
        epoch starts, after DataLoader2 reset its workers and before it asks for batches. A
        slot whose shared memory this process still maps (torch's receive cache has a live
        storage for it) keeps its batch, whatever holds it. Returns the number freed.
        """
        from torch.multiprocessing.reductions import shared_cache

        self.release()
        table = self.table.numpy()
        freed = 0
        for worker in range(table.shape[0]):
            for slot in range(table.shape[1]):
                if table[worker, slot, _GEN] == 0 or (worker, slot) in self._held:
                    continue
                key = (int(table[worker, slot, _INO]), int(table[worker, slot, _DEV]))
                ref = shared_cache.get(key)  # type: ignore[no-untyped-call]
                if ref is None or ref.expired():
                    table[worker, slot, _GEN] = 0
                    freed += 1
        self.n_released += freed
        return freed

    def in_use(self) -> int:
        """Slots holding a batch (all workers)."""
        return int(np.count_nonzero(self.table.numpy()[:, :, _GEN]))


#: the pools of this process (and of the process it was forked from), by token
_POOLS: weakref.WeakValueDictionary[int, BatchPool] = weakref.WeakValueDictionary()


def _attach(token: int, table: torch.Tensor) -> BatchPool:
    """Unpickle a :class:`BatchPool`: the known one, or a new view of its shared table."""
    known = _POOLS.get(token)
    if known is not None:
        return known
    pool = BatchPool.__new__(BatchPool)
    pool.table, pool.token, pool._held, pool.n_released = table, token, {}, 0
    _POOLS[token] = pool
    return pool


class WorkerBuffers:
    """One worker's side of a :class:`BatchPool`: batch tensors in recycled shared memory.

    Examples
    --------
    >>> buffers = BatchPool(n_workers=1, n_slots=1).worker_buffers(0)
    >>> buffers.empty((2, 3), torch.float32).is_shared()
    True

    """

    def __init__(self, row: np.ndarray, token: int, worker: int) -> None:
        self._row = row  # (n_slots, 3) view of the shared table
        self._token = token
        self._worker = worker
        self._buffers: list[torch.UntypedStorage | None] = [None] * row.shape[0]
        self._gen = 0
        self._pid = os.getpid()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``dtype`` to stack a batch into, in shared memory."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        free = [s for s in range(self._row.shape[0]) if self._row[s, _GEN] == 0]
        pooled = os.getpid() == self._pid and sharing_by_fd()
        if not free or not pooled:
            return _view(_new_shared(max(nbytes, 1)), shape, dtype)
        size = _header_offset(nbytes) + _HEADER * 8
        # a slot whose buffer has the right size, else the first free one (resized)
        fits = [s for s in free if (b := self._buffers[s]) is not None and b.nbytes() == size]
        slot = fits[0] if fits else free[0]
        kept = self._buffers[slot]
        storage = kept if kept is not None and kept.nbytes() == size else _new_shared(size)
        if storage is not kept:
            self._buffers[slot] = storage
            fd, _ = storage._share_fd_cpu_()
            st = os.fstat(fd)  # the key torch's receive cache files it under
            self._row[slot, _INO], self._row[slot, _DEV] = st.st_ino, st.st_dev
        self._gen += 1
        self._row[slot, _GEN] = self._gen
        offset = _header_offset(nbytes) // 8
        header = torch.empty(0, dtype=torch.int64).set_(storage, offset, (5,), (1,))
        header.copy_(torch.tensor([_MAGIC, self._token, self._worker, slot, self._gen]))
        return _view(storage, shape, dtype)


def sharing_by_fd() -> bool:
    """Whether torch shares CPU tensors by file descriptor (what the pool's reclaim relies on).

    Examples
    --------
    >>> import sys
    >>> sharing_by_fd() == sys.platform.startswith("linux")  # torch's default there
    True

    """
    strategy = torch.multiprocessing.get_sharing_strategy()  # type: ignore[no-untyped-call]
    return bool(strategy == "file_descriptor")


def _new_shared(nbytes: int) -> torch.UntypedStorage:
    """A new shared-memory storage of ``nbytes`` bytes."""
    storage: torch.UntypedStorage = torch.UntypedStorage._new_shared(nbytes)  # type: ignore[no-untyped-call]
    return storage


def _weak_ref(storage: torch.UntypedStorage) -> StorageWeakRef:
    """A weak reference that tells when ``storage`` has died (in this process)."""
    ref: StorageWeakRef = StorageWeakRef(storage)  # type: ignore[no-untyped-call]
    return ref


def _view(
    storage: torch.UntypedStorage, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """A C-contiguous tensor of ``shape`` at the start of ``storage``."""
    stride = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * shape[i + 1]
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape, tuple(stride))


def _storages(item: Any) -> Iterator[torch.UntypedStorage]:
    """The distinct shared CPU storages of the tensors in a (nested) item."""
    seen: set[int] = set()
    visited: set[int] = set()
    stack = [item]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided or obj.device.type != "cpu":
                continue
            if obj.is_shared():  # type: ignore[no-untyped-call]
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    yield storage
        elif isinstance(obj, (list, tuple, Mapping)) and id(obj) not in visited:
            visited.add(id(obj))
            stack.extend(obj.values() if isinstance(obj, Mapping) else obj)


def _read_header(storage: torch.UntypedStorage) -> np.ndarray | None:
    """The pool header at the end of a storage, or None if it holds none."""
    size = storage.nbytes()
    if size < _HEADER * 8 or size % 8:
        return None
    words = torch.empty(0, dtype=torch.int64)
    words.set_(storage, size // 8 - _HEADER, (_HEADER,), (1,))
    header: np.ndarray = words.numpy()
    if header[0] != _MAGIC:
        return None
    return header.copy()
