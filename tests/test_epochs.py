import random

import numpy as np
import pytest

from mlcast_pipes.epochs import (
    Shard,
    combine_shards,
    group_by_key,
    mix_groups,
    plan_shard,
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


def test_mix_groups_keeps_every_item_once():
    groups = [[(g, i) for i in range(3)] for g in range(7)]
    out = list(mix_groups(iter(groups), 3, random.Random(0)))
    assert sorted(out) == sorted(x for g in groups for x in g)
    # the first 9 items come from the first three groups only
    assert {g for g, _ in out[:9]} == {0, 1, 2}
    with pytest.raises(ParameterError):
        list(mix_groups(iter(groups), 0, random.Random(0)))
