from collections import Counter

import numpy as np
import pytest

from mlcast_pipes.epochs import (
    EpochOrder,
    Shard,
    combine_shards,
    group_by_key,
    plan_shard,
    shard_size,
)
from mlcast_pipes.errors import ParameterError


def test_combine_shards_ranks_outer_workers_inner():
    assert combine_shards({}) == Shard(1, 0)
    assert combine_shards({3: (2, 1)}) == Shard(2, 1)
    shards = {combine_shards({2: (2, r), 3: (3, w)}).index for r in range(2) for w in range(3)}
    assert shards == set(range(6))


def test_shard_validates():
    with pytest.raises(ParameterError, match="index must be"):
        Shard(2, 2)


def test_group_by_key_partitions_rows():
    keys = np.array([3, 1, 3, 2, 1, 3])
    groups = group_by_key(keys)
    assert [sorted(g.tolist()) for g in groups] == [[1, 4], [3], [0, 2, 5]]
    assert group_by_key(np.array([], dtype=int)) == []


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
def test_plan_shard_exactly_once(n_shards):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 40, size=500)
    seen = []
    sizes = []
    for i in range(n_shards):
        mine = plan_shard(keys, seed=7, epoch=3, shard=Shard(n_shards, i))
        for group in mine:
            assert len(set(keys[group])) == 1  # a group shares one read window
            seen.extend(group.tolist())
        sizes.append(sum(len(g) for g in mine))
    assert sorted(seen) == list(range(len(keys)))
    assert max(sizes) - min(sizes) <= 1  # every worker and rank gets the same count (+-1)


def test_plan_shard_time_order_without_shuffle():
    keys = np.array([2, 0, 1, 0, 2])
    groups = plan_shard(keys, seed=0, epoch=0, shard=Shard(), shuffle=False)
    assert [keys[g][0] for g in groups] == [0, 1, 2]


def test_plan_shard_reproducible_and_fresh_per_epoch():
    keys = np.repeat(np.arange(30), 4)
    a = np.concatenate(plan_shard(keys, seed=1, epoch=0, shard=Shard()))
    b = np.concatenate(plan_shard(keys, seed=1, epoch=0, shard=Shard()))
    c = np.concatenate(plan_shard(keys, seed=1, epoch=1, shard=Shard()))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_even_size_pads_or_drops_to_a_multiple_of_the_ranks():
    from mlcast_pipes.epochs import even_size

    assert [even_size(63, r) for r in (1, 2, 4)] == [63, 64, 64]
    assert [even_size(63, r, drop_remainder=True) for r in (1, 2, 4)] == [63, 62, 60]
    assert even_size(0, 4) == 0


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_plan_shard_gives_every_rank_the_same_count(drop_remainder):
    from mlcast_pipes.epochs import shard_records

    keys = np.random.default_rng(1).integers(0, 9, size=63)
    per_rank = {}
    seen = []
    for rank in range(2):
        for worker in range(3):
            shard = combine_shards({2: (2, rank), 3: (3, worker)})
            mine = np.concatenate(
                plan_shard(keys, seed=0, epoch=1, shard=shard, drop_remainder=drop_remainder)
            )
            assert len(mine) == shard_records(63, shard, drop_remainder)
            per_rank.setdefault(rank, []).append(len(mine))
            seen.extend(mine.tolist())
    assert per_rank[0] == per_rank[1]  # same worker sizes: same batch counts on both ranks
    real = [p for p in seen if p < 63]
    if drop_remainder:
        assert len(seen) == 62 and len(set(seen)) == 62 and max(seen) < 63
    else:
        padded = [p - 63 for p in seen if p >= 63]
        assert len(seen) == 64 and sorted(real) == list(range(63))
        assert len(padded) == 1 and 0 <= padded[0] < 63  # one copy of a record of the epoch


@pytest.mark.parametrize(("ranks", "workers"), [(1, 1), (1, 3), (2, 2), (3, 1)])
def test_plan_ordered_is_one_sequence_whatever_the_shards(ranks, workers):
    from mlcast_pipes.epochs import ordered_records, plan_ordered

    keys = [np.array([3, 1, 3, 2, 1]), np.array([0, 0, 5])]
    n = 8
    reference = [(k, int(p)) for k, g in plan_ordered(keys, shard=Shard(), batch_size=2) for p in g]
    assert [k for k, _ in reference] == [0] * 5 + [1] * 3
    delivered = []
    for rank in range(ranks):
        by_worker = []
        for worker in range(workers):
            shard = combine_shards({2: (ranks, rank), 3: (workers, worker)})
            runs = plan_ordered(keys, shard=shard, batch_size=2)
            flat = [(k, int(p)) for k, g in runs for p in g]
            assert len(flat) == ordered_records(n, shard, batch_size=2)
            by_worker.append([flat[i : i + 2] for i in range(0, len(flat), 2)])
        # DataLoader2 takes batches from the workers in turn
        rounds = max(len(b) for b in by_worker)
        for i in range(rounds):
            for batches in by_worker:
                if i < len(batches):
                    delivered.extend(batches[i])
    size = {0: 5, 1: 3}
    real = [(k, p) for k, p in delivered if p < size[k]]
    assert real == reference  # the same order, whatever the number of ranks and workers
    assert len(delivered) == -(-n // ranks) * ranks


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("workers", [2, 3, 4])
def test_several_tables_give_the_workers_counts_within_one(ranks, workers):
    from mlcast_pipes.epochs import table_slices

    rng = np.random.default_rng(ranks * 10 + workers)
    for _ in range(20):
        sizes = [int(n) for n in rng.integers(0, 12, size=int(rng.integers(1, 6)))]
        keys = [rng.integers(0, 3, size=n) for n in sizes]
        count = ranks * workers
        seen = [Counter() for _ in sizes]
        totals = []
        for index in range(count):
            shard = Shard(count, index, ranks)
            slices = table_slices(sizes, shard)
            totals.append(sum(hi - lo for lo, hi in slices))
            assert totals[-1] == shard_size(keys, shard, EpochOrder())
            for k, bounds in enumerate(slices):
                groups = plan_shard(keys[k], seed=1, epoch=0, shard=shard, bounds=bounds)
                seen[k].update(int(p) for g in groups for p in g if p < sizes[k])
        per_rank = [totals[r * workers : (r + 1) * workers] for r in range(ranks)]
        for mine in per_rank:  # later workers hold the odd records, one at most
            assert mine == sorted(mine) and mine[-1] - mine[0] <= 1
        assert len({sum(mine) for mine in per_rank}) == 1  # every rank the same
        for k, n in enumerate(sizes):
            assert seen[k] == Counter(range(n))  # every row exactly once (padding aside)


def _buffer_case(seed: int = 0):
    """40 windows of 1-8 samples; some rows drawn several times (repeats share a window)."""
    rng = np.random.default_rng(seed)
    rows, windows, groups = [], [], []
    for w in range(40):
        distinct = rng.integers(1, 6)
        members = []
        for r in range(distinct):
            for _ in range(1 + (rng.random() < 0.3) * rng.integers(1, 5)):
                members.append(len(rows))
                rows.append(w * 10 + r)
                windows.append(w)
        groups.append(np.asarray(members))
    return groups, np.asarray(rows), np.asarray(windows)


def test_plan_buffer_delivers_every_item_once_after_its_read():
    from mlcast_pipes.epochs import plan_buffer

    groups, rows, windows = _buffer_case()
    plan = plan_buffer(groups, rows, windows, capacity=32, span=8, rng=np.random.default_rng(1))
    assert sorted(plan.order.tolist()) == list(range(len(rows)))
    group_of = {int(i): g for g, members in enumerate(groups) for i in members}
    assert all(plan.reads_before[k] > group_of[int(i)] for k, i in enumerate(plan.order))
    assert np.all(np.diff(plan.reads_before) >= 0)
    assert plan.peak_held <= 32 + max(len(np.unique(rows[g])) for g in groups)
    again = plan_buffer(groups, rows, windows, capacity=32, span=8, rng=np.random.default_rng(1))
    assert np.array_equal(plan.order, again.order)  # the generator alone decides


def test_plan_buffer_batches_are_as_varied_as_a_shuffle():
    from mlcast_pipes.epochs import plan_buffer

    groups, rows, windows = _buffer_case(2)
    span = 8

    def figures(order):
        batches = [order[i : i + span] for i in range(0, len(order), span)]
        dups = np.mean([len(b) - len(set(rows[b])) for b in batches])
        wins = np.mean([len(set(windows[b])) for b in batches])
        return dups, wins

    plan = plan_buffer(groups, rows, windows, capacity=48, span=span, rng=np.random.default_rng(0))
    dup, win = figures(plan.order)
    shuffled = [figures(np.random.default_rng(s).permutation(len(rows))) for s in range(20)]
    assert dup <= np.mean([d for d, _ in shuffled])
    assert win >= 0.9 * np.mean([w for _, w in shuffled])
    # without a buffer, one window after the other: far fewer windows per batch
    _, alone = figures(
        plan_buffer(
            groups, rows, windows, capacity=1, span=span, rng=np.random.default_rng(0)
        ).order
    )
    assert alone < 0.6 * win


def test_plan_buffer_refuses_an_empty_buffer():
    from mlcast_pipes.epochs import plan_buffer

    with pytest.raises(ParameterError, match="shuffle_buffer"):
        plan_buffer([], np.zeros(0), np.zeros(0), capacity=0, span=4, rng=np.random.default_rng())


@pytest.mark.parametrize("capacity", [1, 2, 4, 8])
def test_plan_buffer_holds_at_most_its_capacity_plus_one_group(capacity):
    from mlcast_pipes.epochs import plan_buffer

    # windows of a few rows drawn many times (rare bins): deferred repeats pile up while the
    # buffer runs empty; they must be released before another window is read
    rng = np.random.default_rng(5)
    groups, rows, windows = [], [], []
    for w in range(12):
        members = []
        for _ in range(int(rng.integers(4, 12))):
            members.append(len(rows))
            rows.append(100 * w + int(rng.integers(3)))
            windows.append(w)
        groups.append(np.asarray(members))
    rows_a, windows_a = np.asarray(rows), np.asarray(windows)
    largest = max(len(np.unique(rows_a[g])) for g in groups)
    for seed in range(20):
        plan = plan_buffer(
            groups, rows_a, windows_a, capacity=capacity, span=4, rng=np.random.default_rng(seed)
        )
        assert sorted(plan.order.tolist()) == list(range(len(rows)))
        assert plan.peak_held <= capacity + largest
