"""Tests of mlcast_pipes.delivery: a sampler's epochs planned and read without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcast_pipes.dataset import open_mlcast
from mlcast_pipes.delivery import SampleDelivery
from mlcast_pipes.epochs import EpochOrder, Shard
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.plan import TilingPlan
from mlcast_pipes.reader import close_readers, get_reader
from mlcast_pipes.tiling import TilingParams


def _pools(archive: Path, index_dir: Path) -> list:
    plan = TilingPlan(TilingParams(n_time_window=12, tile_size=(64, 64)), index_dir)
    table = plan.table(open_mlcast(str(archive)))
    pool = table.sampling_index("uniform", {}, n_time_sample=None, seed=0, index_dir=index_dir)
    return [(table, pool)]


def test_shards_share_an_epoch_exactly(tiny_archive: Path, index_dir: Path) -> None:
    pools = _pools(tiny_archive, index_dir)
    delivery = SampleDelivery(seed=1, n_samples=10, load=False)
    whole = [r.sample_id for r in delivery.records(pools, 0, Shard())]
    assert len(whole) == 10
    parts = [
        [r.sample_id for r in delivery.records(pools, 0, Shard(count=3, index=i))] for i in range(3)
    ]
    assert sorted(i for part in parts for i in part) == sorted(whole)
    assert [r.sample_id for r in delivery.records(pools, 0, Shard())] == whole  # (seed, epoch)
    assert [r.sample_id for r in delivery.records(pools, 1, Shard())] != whole


def test_reads_pixels_and_skips_batches(tiny_archive: Path, index_dir: Path) -> None:
    pools = _pools(tiny_archive, index_dir)
    delivery = SampleDelivery(seed=2, n_samples=8)
    order = EpochOrder(ordered=True, batch_size=4)
    epoch = list(delivery.records(pools, 0, Shard(), order))
    assert all(r.data is not None and r.data.shape == (12, 64, 64) for r in epoch)
    rest = list(delivery.records(pools, 0, Shard(), order, skip_batches=(1, 4, False)))
    assert [r.sample_id for r in rest] == [r.sample_id for r in epoch[4:]]
    np.testing.assert_array_equal(rest[0].data, epoch[4].data)
    keys = delivery.epoch_keys(pools, 0)
    assert len(keys) == 1 and len(keys[0]) == 8


def _binnorm_pools(archive: Path, index_dir: Path) -> list:
    plan = TilingPlan(TilingParams(n_time_window=4, tile_size=(64, 64)), index_dir)
    table = plan.table(open_mlcast(str(archive)))
    pool = table.sampling_index(
        "binnorm", {"n_scalar_total_bins": 6}, n_time_sample=None, seed=0, index_dir=index_dir
    )
    return [(table, pool)]


def test_shuffled_epoch_resumes_with_the_records_it_would_have_delivered(
    tiny_archive: Path, index_dir: Path
) -> None:
    pools = _binnorm_pools(tiny_archive, index_dir)
    delivery = SampleDelivery(seed=3, n_samples=40, shuffle_buffer=12)
    order = EpochOrder(batch_size=4)
    epoch = list(delivery.records(pools, 0, Shard(count=2, index=1), order))
    rest = list(
        delivery.records(pools, 0, Shard(count=2, index=1), order, skip_batches=(4, 4, False))
    )
    # DataLoader2 takes batches from workers 0 and 1 in turn: 4 batches = 2 of this worker
    assert [r.sample_id for r in rest] == [r.sample_id for r in epoch[8:]]
    for a, b in zip(rest, epoch[8:], strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_repeats_are_read_once_and_delivered_as_equal_copies(
    tiny_archive: Path, index_dir: Path
) -> None:
    pools = _binnorm_pools(tiny_archive, index_dir)
    spec = pools[0][0].info.spec
    for ahead in (0, 2):
        close_readers()
        delivery = SampleDelivery(seed=0, n_samples=60, shuffle_buffer=16, read_ahead=ahead)
        records = list(delivery.records(pools, 0, Shard(), EpochOrder(batch_size=8)))
        frames = {r.t_start + k for r in records for k in range(r.n_time)}
        assert get_reader(spec.url, spec.var_name).stats.frames_decoded == len(frames)
        by_id: dict[int, list] = {}
        for r in records:
            by_id.setdefault(r.sample_id, []).append(r)
        repeated = [rs for rs in by_id.values() if len(rs) > 1]
        assert repeated  # binnorm draws rare tiles several times
        for rs in repeated:
            assert len({id(r.data) for r in rs}) == len(rs)  # copies, not one shared array
            for r in rs[1:]:
                np.testing.assert_array_equal(r.data, rs[0].data)
        if ahead == 0:
            first = records
        else:
            assert [r.sample_id for r in records] == [r.sample_id for r in first]
            for a, b in zip(records, first, strict=True):
                np.testing.assert_array_equal(a.data, b.data)
    reader = get_reader(str(tiny_archive), pools[0][0].info.spec.var_name)
    one = records[0]
    np.testing.assert_array_equal(one.data, reader.read_tiles([one.request])[0])


def test_batches_mix_windows_and_spread_repeats(tiny_archive: Path, index_dir: Path) -> None:
    pools = _binnorm_pools(tiny_archive, index_dir)
    span = 8

    def figures(records) -> tuple[float, float]:
        batches = [records[i : i + span] for i in range(0, len(records), span)]
        dups = np.mean([len(b) - len({r.sample_id for r in b}) for b in batches])
        wins = np.mean([len({r.t_start for r in b}) for b in batches])
        return float(dups), float(wins)

    mixed = list(
        SampleDelivery(seed=0, n_samples=80, load=False).records(
            pools, 0, Shard(), EpochOrder(batch_size=span)
        )
    )
    alone = list(
        SampleDelivery(seed=0, n_samples=80, load=False, shuffle_buffer=1).records(
            pools, 0, Shard(), EpochOrder(batch_size=span)
        )
    )
    rng = np.random.default_rng(0)
    shuffled = [figures([mixed[i] for i in rng.permutation(len(mixed))]) for _ in range(20)]
    dup, win = figures(mixed)
    assert dup <= np.mean([d for d, _ in shuffled])
    assert win >= 0.9 * np.mean([w for _, w in shuffled])
    assert figures(alone)[1] < win


def test_shuffle_buffer_and_read_ahead_are_checked() -> None:
    with pytest.raises(ParameterError, match="shuffle_buffer"):
        SampleDelivery(shuffle_buffer=0)
    with pytest.raises(ParameterError, match="read_ahead"):
        SampleDelivery(read_ahead=-1)


def test_training_copy_repeats_are_held_no_longer_than_the_buffer(
    tiny_archive: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    from mlcast_pipes.indexes.training_copy import copy_path, materialize

    pools = _pools(tiny_archive, index_dir)
    table, sampling = pools[0]
    materialize(
        sampling.table, sampling.meta, table.info, copy_path(index_dir, sampling.sampling_id)
    )
    read = SampleDelivery._read
    arrays: list[weakref.ref[np.ndarray]] = []

    def tracked(
        self: SampleDelivery, plan: object, rows: np.ndarray, lane: int = 0
    ) -> list[np.ndarray]:
        out = read(self, plan, rows, lane)  # type: ignore[arg-type]
        arrays.extend(weakref.ref(a) for a in out)
        return out

    monkeypatch.setattr(SampleDelivery, "_read", tracked)
    n_pool = len(sampling.table)
    delivery = SampleDelivery(
        seed=0, n_samples=8 * n_pool, shuffle_buffer=4, read_ahead=0, materialized=True
    )
    held, ids = 0, []
    for record in delivery.records(pools, 0, Shard(), EpochOrder(batch_size=4)):
        ids.append(record.sample_id)
        del record
        held = max(held, sum(ref() is not None for ref in arrays))
    assert len(ids) == 8 * n_pool and len(arrays) == len(set(ids))  # each row read once
    assert held <= 4 + 8  # the buffer and one group of 4 draws (and the record being built)


def test_ranks_workers_and_archives_share_every_record_once(
    tiny_archive: Path, index_dir: Path
) -> None:
    from collections import Counter

    pools = _binnorm_pools(tiny_archive, index_dir) + _pools(tiny_archive, index_dir)
    delivery = SampleDelivery(seed=4, n_samples=37, load=False, shuffle_buffer=8)
    order = EpochOrder(batch_size=4)

    def key(r: object) -> tuple[int, int, int]:
        return (r.n_time, r.sample_id, r.t_start)  # type: ignore[attr-defined]

    whole = Counter(key(r) for r in delivery.records(pools, 0, Shard(), order))
    assert sum(whole.values()) == 74
    for ranks, workers in ((2, 2), (3, 2)):
        got: Counter[tuple[int, int, int]] = Counter()
        per_rank = [0] * ranks
        for i in range(ranks * workers):
            shard = Shard(ranks * workers, i, ranks)
            records = list(delivery.records(pools, 0, shard, order))
            per_rank[shard.rank] += len(records)
            got.update(key(r) for r in records if not r.padded)
        assert got == whole  # every record once, padding aside
        assert len(set(per_rank)) == 1  # every rank the same count


def test_read_errors_reach_the_consumer_and_no_read_thread_outlives_its_epoch(
    tiny_archive: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    pools = _binnorm_pools(tiny_archive, index_dir)
    delivery = SampleDelivery(seed=0, n_samples=60, shuffle_buffer=8, read_ahead=2)

    def threads() -> int:
        return sum(t.name.startswith("mlcast-read-ahead") for t in threading.enumerate())

    for epoch in range(6):  # left after a few records, closed, or abandoned
        records = delivery.records(pools, epoch, Shard(), EpochOrder(batch_size=4))
        for k, _ in enumerate(records):
            if k == 5:
                break
        if epoch % 2:
            records.close()
        del records
        assert threads() == 0
    read = SampleDelivery._read
    calls = []

    def failing(
        self: SampleDelivery, plan: object, rows: np.ndarray, lane: int = 0
    ) -> list[np.ndarray]:
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError("chunk store unreachable")
        return read(self, plan, rows, lane)  # type: ignore[arg-type]

    monkeypatch.setattr(SampleDelivery, "_read", failing)
    with pytest.raises(OSError, match="unreachable"):
        list(delivery.records(pools, 0, Shard(), EpochOrder(batch_size=4)))
    assert threads() == 0


def test_the_next_epochs_head_start_never_fails_the_current_one(monkeypatch) -> None:
    from types import SimpleNamespace

    from mlcast_pipes.delivery import SampleDelivery
    from mlcast_pipes.epochs import EpochOrder, Shard

    def unreachable(*args, **kw):
        raise OSError("the store does not answer")

    delivery = SampleDelivery(seed=0)
    monkeypatch.setattr(delivery, "_plans", unreachable)
    table = SimpleNamespace(info=SimpleNamespace(spec=SimpleNamespace(url="https://x/a.zarr")))
    delivery._fetch_epoch_start([(table, None)], 1, Shard(), EpochOrder())  # no error
    local = SimpleNamespace(info=SimpleNamespace(spec=SimpleNamespace(url="/data/a.zarr")))
    delivery._fetch_epoch_start([(local, None)], 1, Shard(), EpochOrder())  # nothing to do
