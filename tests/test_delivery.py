"""Tests of mlcast_pipes.delivery: a sampler's epochs planned and read without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcast_pipes.dataset import open_mlcast
from mlcast_pipes.delivery import SampleDelivery
from mlcast_pipes.epochs import EpochOrder, Shard
from mlcast_pipes.indexes.plan import TilingPlan
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
