"""DataLoader2 delivery: exactly once across workers and ranks, fresh orders, dead workers."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch.multiprocessing as tmp
from torch.utils.data import IterDataPipe

import mlcast_pipes as mp
from mlcast_pipes.errors import ParameterError


def _pipe(
    path: Path, index_dir: Path, method: str = "uniform", batch_size: int = 4, **kw: object
) -> IterDataPipe:
    return (
        mp.OpenXarrayDataset(str(path))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .sample(method, seed=5, **kw)
        .normalize()
        .to_tensor(batch_size=batch_size, metadata=True)
    )


def _ids(batches) -> list[int]:
    return [int(i) for b in batches for i in b["meta"]["sample_id"]]


def test_exactly_once_two_workers_and_fresh_orders(tiny_archive, index_dir):
    pipe = _pipe(tiny_archive, index_dir)
    reference = _ids(_pipe(tiny_archive, index_dir))
    assert len(reference) == len(set(reference)) > 12
    loader = mp.make_dataloader(pipe, num_workers=2)
    try:
        epochs = [_ids(loader) for _ in range(3)]
    finally:
        loader.shutdown()
    for ids in epochs:
        assert sorted(ids) == sorted(reference)  # every sample exactly once
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order every epoch
    again = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=2)
    try:
        assert _ids(again) == epochs[0]  # reproducible for (seed, epoch)
    finally:
        again.shutdown()


def test_worker_batches_come_in_shared_memory_with_the_same_values(tiny_archive, index_dir):
    def by_id(batches) -> dict[int, object]:
        return {
            int(i): b["data"][k].clone()
            for b in batches
            for k, i in enumerate(b["meta"]["sample_id"])
        }

    reference = by_id(_pipe(tiny_archive, index_dir))
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=2)
    try:
        batches = list(loader)
    finally:
        loader.shutdown()
    assert all(b["data"].is_shared() for b in batches)  # received through shared memory
    got = by_id(batches)
    assert got.keys() == reference.keys()
    assert all(bool((got[i] == reference[i]).all()) for i in got)


def test_recycled_batch_memory_never_overwrites_a_held_batch(tiny_archive, index_dir):
    def check(batches) -> None:
        for b in batches:
            for k, i in enumerate(b["meta"]["sample_id"]):
                assert bool((b["data"][k] == reference[int(i)]).all()), f"sample {int(i)}"

    reference = {
        int(i): b["data"][k].clone()
        for b in _pipe(tiny_archive, index_dir, batch_size=2)
        for k, i in enumerate(b["meta"]["sample_id"])
    }
    loader = mp.make_dataloader(
        _pipe(tiny_archive, index_dir, batch_size=2), num_workers=2, prefetch=1
    )
    pool = loader.batch_pool
    assert pool is not None and pool.table.shape[:2] == (2, 12)
    try:
        for _ in range(2):
            for batch in loader:  # let go of at once: the workers recycle the buffers
                check([batch])
        assert pool.n_released > 0
        held = list(loader)  # a whole epoch held: more batches than buffers
        assert len(held) > pool.table.shape[0] * pool.table.shape[1]
        early = next(iter(loader))  # an epoch left early drops the batches in flight...
        after = list(loader)  # ...and the next epoch gets their buffers back
        check(held)
        check([early])
        check(after)
        assert sorted(_ids(after)) == sorted(reference)
    finally:
        loader.shutdown()
    # batches wrapped in the user's own type are not tracked, yet kept while referenced
    boxed = mp.make_dataloader(
        _pipe(tiny_archive, index_dir, batch_size=2).map(_Box), num_workers=2, prefetch=1
    )
    try:
        kept = list(boxed)
        for _ in range(2):
            for _box in boxed:
                pass
        check([box.batch for box in kept])
    finally:
        boxed.shutdown()
    plain = mp.make_dataloader(
        _pipe(tiny_archive, index_dir), num_workers=2, reuse_batch_memory=False
    )
    try:
        assert plain.batch_pool is None
        check(list(plain))
    finally:
        plain.shutdown()


class _Box:
    """A user's own batch type (the pool cannot see inside it)."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch


def test_binnorm_epoch_multiset_same_with_workers(tiny_archive, index_dir):
    kw = {"n_samples": 30}
    in_process = Counter(_ids(_pipe(tiny_archive, index_dir, "binnorm", **kw)))
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir, "binnorm", **kw), num_workers=2)
    try:
        with_workers = Counter(_ids(loader))
    finally:
        loader.shutdown()
    assert with_workers == in_process
    assert sum(in_process.values()) == 30


def test_start_epoch_resumes_order(tiny_archive, index_dir):
    full = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=0)
    _ids(full)
    second = _ids(full)
    resumed = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=0, start_epoch=1)
    assert _ids(resumed) == second


class _KillWorker(IterDataPipe):
    """Kills the worker process that delivers the third item (as the OOM killer would)."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        for i, item in enumerate(self.source):
            if i == 2:
                os._exit(9)
            yield item


def test_dead_worker_raises_instead_of_hanging(tiny_archive, index_dir):
    pipe = _KillWorker(_pipe(tiny_archive, index_dir))
    loader = mp.make_dataloader(pipe, num_workers=2)
    with pytest.raises(mp.WorkerDiedError, match="died mid-epoch"):
        for _ in loader:
            pass


def test_distributed_needs_process_group(tiny_archive, index_dir):
    with pytest.raises(ParameterError, match="init_process_group"):
        mp.make_dataloader(_pipe(tiny_archive, index_dir), distributed=True)


def _rank_main(
    rank: int, world: int, init_file: str, archive: str, index_dir: str, out: str
) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loader = mp.make_dataloader(
            _pipe(Path(archive), Path(index_dir)), num_workers=2, distributed=True
        )
        try:
            ids = [_ids(loader) for _ in range(2)]
        finally:
            loader.shutdown()
        Path(out, f"rank{rank}.json").write_text(json.dumps(ids))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on loopback, Linux CI")
def test_two_ranks_disjoint_and_complete(tiny_archive, index_dir, tmp_path):
    reference = sorted(_ids(_pipe(tiny_archive, index_dir)))  # builds the indexes first
    args = (2, str(tmp_path / "init"), str(tiny_archive), str(index_dir), str(tmp_path))
    tmp.start_processes(_rank_main, args=args, nprocs=2, join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert not set(a) & set(b)  # disjoint
        assert sorted(a + b) == reference  # complete
        assert abs(len(a) - len(b)) <= 1
    assert ranks[0][0] != ranks[0][1]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gets_identical_batches(tiny_archive, index_dir, workers):
    def batches(loader):
        try:
            return [b["meta"]["sample_id"].tolist() for b in loader]
        finally:
            loader.shutdown()

    pipe = _pipe(tiny_archive, index_dir, "binnorm", n_samples=30)
    full = mp.make_dataloader(pipe, num_workers=workers, start_epoch=1)
    expected = batches(full)
    resumed = mp.make_dataloader(
        _pipe(tiny_archive, index_dir, "binnorm", n_samples=30),
        num_workers=workers,
        start_epoch=1,
        start_batch=3,
    )
    assert batches(resumed) == expected[3:]


def test_mix_two_archives_exactly_once_with_workers(tiny_archive, index_dir, tmp_path):
    from mlcast_pipes.demo import generate_demo

    other = generate_demo(tmp_path / "other.zarr", preset="tiny", seed=3)

    def pipe():
        sampled = [
            mp.OpenXarrayDataset(str(p))
            .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
            .uniform_sample(seed=2)
            for p in (tiny_archive, other)
        ]
        return (
            mp.mix(sampled, weights=[2, 1], seed=0)
            .normalize()
            .to_tensor(batch_size=4, metadata=True)
        )

    def keys(batches):
        return Counter(
            (d, int(i))
            for b in batches
            for d, i in zip(b["meta"]["dataset_id"], b["meta"]["sample_id"], strict=True)
        )

    reference = keys(pipe())
    assert len({d for d, _ in reference}) == 2
    loader = mp.make_dataloader(pipe(), num_workers=2)
    try:
        assert keys(loader) == reference
    finally:
        loader.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_takes_effect_on_linux():
    assert mp.tune_malloc() is True


_WARN_ONCE_SCRIPT = """
import sys
import mlcast_pipes as mp
pipe = (
    mp.OpenXarrayDataset(sys.argv[1])
    .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=sys.argv[2])
    .sample("uniform", seed=5)
    .normalize()
    .to_tensor(batch_size=4)
)
loader = mp.make_dataloader(pipe, num_workers=int(sys.argv[3]), prepare=sys.argv[4] == "1")
try:
    n = sum(1 for _ in loader)
finally:
    loader.shutdown()
print("batches", n)
"""


@pytest.mark.parametrize("prepare", [True, False])
def test_archive_warnings_are_shown_once_not_once_per_worker(
    tiny_archive: Path, tmp_path: Path, prepare: bool
) -> None:
    """An archive that deviates from the spec (units spelled 'mm/hr') is noted once."""
    import shutil
    import subprocess

    archive = tmp_path / "mmhr.zarr"
    shutil.copytree(tiny_archive, archive)
    attrs_file = archive / "rainfall_rate" / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    attrs["units"] = "mm/hr"
    attrs_file.write_text(json.dumps(attrs))
    consolidated = json.loads((archive / ".zmetadata").read_text())
    consolidated["metadata"]["rainfall_rate/.zattrs"]["units"] = "mm/hr"
    (archive / ".zmetadata").write_text(json.dumps(consolidated))
    script = tmp_path / "run.py"
    script.write_text(_WARN_ONCE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(mp.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(archive), str(tmp_path / "idx"), "3", str(int(prepare))],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "batches" in done.stdout
    assert done.stderr.count("units 'mm/hr' are read as 'mm h-1'") == 1, done.stderr


def test_worker_prefetch_waits_on_a_queue_keeps_order_and_stops_the_last_iteration():
    import threading

    from torchdata.datapipes.iter import IterableWrapper

    from mlcast_pipes.loader import _QueuePrefetch

    ahead = _QueuePrefetch(IterableWrapper(range(50)), size=3)
    assert list(ahead) == list(range(50))
    first = iter(ahead)
    assert [next(first) for _ in range(5)] == [0, 1, 2, 3, 4]
    producer = ahead._running[0]
    assert producer.is_alive()  # blocked on the full queue
    assert list(ahead) == list(range(50))  # a new iteration starts afresh...
    producer.join(1)
    assert not producer.is_alive()  # ...after stopping the last one's thread
    assert not any(t.name == "mlcast-worker-prefetch" for t in threading.enumerate())


def test_worker_prefetch_raises_the_source_error_in_the_consumer():
    from mlcast_pipes.errors import ReadError
    from mlcast_pipes.loader import _QueuePrefetch

    class Failing(IterDataPipe):
        def __iter__(self):
            yield 1
            raise ReadError("chunk 7 could not be read")

    items = iter(_QueuePrefetch(Failing(), size=2))
    assert next(items) == 1
    with pytest.raises(ReadError, match="chunk 7"):
        next(items)


def test_loader_workers_use_the_waiting_prefetch_not_torchdata_polling(tiny_archive, index_dir):
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=1, prefetch=3)
    try:
        service = loader.dataloader.reading_service
        assert service.worker_prefetch_cnt == 0 and service.main_prefetch_cnt == 0
        init = service.worker_init_fn
        assert init.keywords["prefetch"] == 3
        assert len(_ids(loader)) > 12
    finally:
        loader.shutdown()


def _with_gc_freeze_count(batch: object) -> tuple[object, int]:
    import gc

    return batch, gc.get_freeze_count()


def test_forked_workers_leave_the_main_process_objects_out_of_gc(tiny_archive, index_dir):
    import gc

    pipe = _pipe(tiny_archive, index_dir).map(_with_gc_freeze_count)
    loader = mp.make_dataloader(pipe, num_workers=1)  # fork: the default on Linux
    try:
        counts = [count for _, count in loader]
        assert gc.get_freeze_count() == 0  # unfrozen here once the worker started
    finally:
        loader.shutdown()
    assert counts and min(counts) > 10_000  # what the worker inherited is never collected there


def test_objects_the_caller_froze_stay_frozen(tiny_archive, index_dir):
    import gc

    gc.freeze()  # a training script may freeze before forking, as Python's docs suggest
    try:
        frozen = gc.get_freeze_count()
        loader = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=1)
        try:
            assert len(_ids(loader)) > 12
        finally:
            loader.shutdown()
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen by the loader (0 then)
    finally:
        gc.unfreeze()
