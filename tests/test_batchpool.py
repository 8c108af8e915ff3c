"""Recycled shared-memory batch buffers: a held batch is never overwritten, dropped ones return."""

from __future__ import annotations

import os
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef, fd_id, shared_cache

from mlcast_pipes.batchpool import BatchPool


def _received(batch: torch.Tensor) -> torch.Tensor:
    """The batch as another process receives it: its own mapping of the shared memory, filed
    in torch's receive cache under the memory's inode (as ``rebuild_storage_fd`` does)."""
    fd, size = batch.untyped_storage()._share_fd_cpu_()
    dup = os.dup(fd)
    try:
        storage = torch.UntypedStorage._new_shared_fd_cpu(dup, size)
        shared_cache[fd_id(dup)] = StorageWeakRef(storage)
    finally:
        os.close(dup)
    view = torch.empty(0, dtype=batch.dtype)
    return view.set_(storage, batch.storage_offset(), batch.shape, batch.stride())


def test_a_slot_returns_only_when_its_batch_is_let_go_of() -> None:
    pool = BatchPool(n_workers=1, n_slots=2)
    buffers = pool.worker_buffers(0)
    sent_a = buffers.empty((3, 4), torch.float32).fill_(1.0)
    sent_b = buffers.empty((3, 4), torch.float32).fill_(2.0)
    a, b = _received(sent_a), _received(sent_b)
    ptr_a = sent_a.untyped_storage().data_ptr()
    del sent_a, sent_b  # a worker keeps only its pool's reference
    assert pool.track((a, b)) == 2 and pool.in_use() == 2
    # both slots held: the next batch gets ordinary shared memory, not a pooled buffer
    c = buffers.empty((3, 4), torch.float32).fill_(3.0)
    assert c.is_shared() and pool.track(_received(c)) == 0
    assert pool.release() == 0
    del a
    assert pool.release() == 1 and pool.in_use() == 1 and pool.n_released == 1
    d = buffers.empty((3, 4), torch.float32)  # a's buffer again
    assert d.untyped_storage().data_ptr() == ptr_a
    d.fill_(4.0)
    assert bool((b == 2.0).all()) and bool((c == 3.0).all())  # untouched


def test_views_keep_their_batch_held() -> None:
    pool = BatchPool(n_workers=1, n_slots=1)
    buffers = pool.worker_buffers(0)
    batch = _received(buffers.empty((2, 6), torch.float32))
    pool.track(batch)
    inputs, targets = batch.narrow(1, 0, 4), batch.narrow(1, 4, 2)
    del batch
    assert pool.release() == 0  # the views still use the buffer
    del inputs
    assert pool.release() == 0
    del targets
    assert pool.release() == 1


def test_buffers_of_other_shapes_and_dtypes() -> None:
    pool = BatchPool(n_workers=1, n_slots=1)
    buffers = pool.worker_buffers(0)
    mask = _received(buffers.empty((2, 3, 5), torch.bool))
    assert mask.shape == (2, 3, 5) and mask.dtype == torch.bool and mask.is_contiguous()
    pool.track(mask)
    del mask
    pool.release()
    data = buffers.empty((4, 7), torch.float32)  # the slot is resized
    assert data.shape == (4, 7) and pool.track(data) == 1


def test_between_epochs_only_buffers_this_process_no_longer_maps_are_reclaimed() -> None:
    pool = BatchPool(n_workers=1, n_slots=4)
    buffers = pool.worker_buffers(0)
    tracked = _received(buffers.empty((2,), torch.float32).fill_(7.0))
    pool.track(tracked)  # delivered and still held
    untracked = {"held in": [_received(buffers.empty((2,), torch.float32).fill_(8.0))]}
    lost = buffers.empty((2,), torch.float32)  # dropped in flight: never received
    sent = buffers.empty((2,), torch.float32)
    dropped = _received(sent)  # received, then let go of
    reusable = {lost.untyped_storage().data_ptr(), sent.untyped_storage().data_ptr()}
    del lost, sent, dropped
    assert pool.in_use() == 4
    assert pool.reclaim() == 2 and pool.in_use() == 2  # the lost and the dropped one
    again = buffers.empty((2,), torch.float32).fill_(9.0)
    assert again.untyped_storage().data_ptr() in reusable
    kept = _received(again)
    assert bool((tracked == 7.0).all()) and bool((untracked["held in"][0] == 8.0).all())
    del untracked
    assert pool.reclaim() == 1 and bool((kept == 9.0).all())  # now let go of too


def test_a_batch_taken_again_is_not_tracked_as_the_old_one() -> None:
    pool = BatchPool(n_workers=1, n_slots=1)
    buffers = pool.worker_buffers(0)
    old = _received(buffers.empty((2,), torch.float32))
    assert pool.reclaim() == 0  # still mapped
    del old
    assert pool.reclaim() == 1
    stale = buffers.empty((2,), torch.float32)  # the slot again, a new generation
    table = pool.table.numpy()
    table[0, 0, 0] += 1  # as if it were taken once more before this batch arrived
    assert pool.track(_received(stale)) == 0


def test_other_pools_and_plain_tensors_are_ignored() -> None:
    pool, other = BatchPool(1, 1), BatchPool(1, 1)
    foreign = other.worker_buffers(0).empty((2, 2), torch.float32)
    assert pool.track({"data": foreign, "meta": {"x": torch.zeros(3)}, "l": [torch.ones(2)]}) == 0
    assert pool.track(torch.zeros(4).share_memory_()) == 0


def test_a_pickled_pool_shares_its_table() -> None:
    from mlcast_pipes import batchpool

    pool = BatchPool(n_workers=2, n_slots=3)
    assert pickle.loads(pickle.dumps(pool)) is pool  # DataLoader2's copy, a forked worker
    data = ForkingPickler.dumps(pool)
    del batchpool._POOLS[pool.token]  # as in a spawned worker, which knows no pool
    clone = pickle.loads(data)
    assert clone is not pool
    batch = clone.worker_buffers(1).empty((2,), torch.float32)
    assert pool.in_use() == 1 and pool.track(_received(batch)) == 1


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_workers"):
        BatchPool(0)
