"""Delivering a sampler's epochs: draw, group by read window, shard, read (source or training copy).

The torch-free core of the sampling datapipes: they only choose the epoch and the shard.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mlcast_pipes.epochs import (
    EpochOrder,
    Shard,
    epoch_rng,
    group_by_key,
    mix_blocks,
    plan_ordered,
    plan_shard,
    shard_size,
    skip_records,
    table_slices,
)
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.plan import TileTable, iso_time
from mlcast_pipes.indexes.sampling import SamplingIndex
from mlcast_pipes.indexes.training_copy import TrainingCopy, copy_path
from mlcast_pipes.reader import get_reader
from mlcast_pipes.records import TileSample
from mlcast_pipes.sampling import SAMPLES_COLUMNS, draw_epoch

__all__ = ["SampleDelivery"]

_POOL_COLUMNS = tuple(c for c in SAMPLES_COLUMNS if c != "weight")


@dataclass
class _TablePlan:
    """One archive's part of an epoch: its pool rows drawn, and where to read them."""

    table: TileTable
    copy: TrainingCopy | None
    rows: np.ndarray
    cols: dict[str, np.ndarray]

    def read_keys(self) -> np.ndarray:
        # From the source, a read group is a time window; from a training copy every sample is
        # its own chunk and the draws are in random order already: groups of a few draws keep
        # the plan cheap, the workers' shares even and the first read of an epoch short.
        if self.copy is None:
            return np.asarray(self.cols["t_start"][self.rows])
        return np.arange(len(self.rows)) // 4


class SampleDelivery:
    """Plans the epochs of sampling pools and yields one shard's records, pixels read.

    Parameters
    ----------
    seed : int
        Seeds each epoch's draw and order.
    n_samples : int, optional
        Samples per epoch and archive (default: the size of the pool).
    mix_groups : int
        Read windows mixed together in each shard's stream.
    load : bool
        Read pixels (grouped, each frame decoded once); False yields lazy records.
    materialized : bool, optional
        Read from the training copy: None when it exists and matches, True requires it.

    Examples
    --------
    >>> from pathlib import Path
    >>> from mlcast_pipes.demo import generate_demo
    >>> from mlcast_pipes.indexes.plan import TilingPlan
    >>> from mlcast_pipes.dataset import open_mlcast
    >>> from mlcast_pipes.tiling import TilingParams
    >>> path = generate_demo("deliver.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> plan = TilingPlan(TilingParams(n_time_window=4, tile_size=(64, 64)), Path("idx"))
    >>> table = plan.table(open_mlcast(str(path)))
    >>> pool = table.sampling_index(
    ...     "uniform", {}, n_time_sample=None, seed=0, index_dir=Path("idx")
    ... )
    >>> delivery = SampleDelivery(seed=0, n_samples=6)
    >>> records = list(delivery.records([(table, pool)], epoch=0, shard=Shard()))
    >>> len(records), records[0].data.shape
    (6, (4, 64, 64))

    """

    def __init__(
        self,
        *,
        seed: int = 0,
        n_samples: int | None = None,
        mix_groups: int = 4,
        load: bool = True,
        materialized: bool | None = None,
    ) -> None:
        if mix_groups < 1:
            raise ParameterError(f"mix_groups must be >= 1, got {mix_groups}")
        self.seed = seed
        self.n_samples = n_samples
        self.mix_groups = mix_groups
        self.load = load
        self.materialized = materialized
        self._copies: dict[str, TrainingCopy] = {}

    def training_copy(self, sampling: SamplingIndex) -> TrainingCopy | None:
        """The training copy to read this sampling index from, if any (see ``materialized``)."""
        if self.materialized is False:
            return None
        path = copy_path(sampling.path.parent, sampling.sampling_id)
        expected = sampling.meta.get("csv_sha256")
        copy = self._copies.get(str(path))
        if copy is None or copy.expected_sha256 != expected:  # kept: its chunk reader too
            copy = self._copies[str(path)] = TrainingCopy(path, expected)
        if copy.exists():
            return copy
        if self.materialized:
            raise ParameterError(
                f"no training copy of {sampling.sampling_id} in {sampling.path.parent}: run "
                "`mlcast-pipes prepare ... --sampler ... --materialize` first, or pass "
                "materialized=None to read from the source archive"
            )
        return None

    def _plans(
        self, pools: Sequence[tuple[TileTable, SamplingIndex]], epoch: int
    ) -> list[_TablePlan]:
        plans = []
        for table, sampling in pools:
            pool = sampling.table
            rows = draw_epoch(pool, n_samples=self.n_samples, seed=self.seed, epoch=epoch)
            cols = {name: pool[name].to_numpy() for name in _POOL_COLUMNS}
            plans.append(_TablePlan(table, self.training_copy(sampling), rows, cols))
        return plans

    def epoch_keys(
        self, pools: Sequence[tuple[TileTable, SamplingIndex]], epoch: int
    ) -> list[np.ndarray]:
        """The read-group key of every record of an epoch, one array per archive."""
        return [p.read_keys() for p in self._plans(pools, epoch)]

    def records(
        self,
        pools: Sequence[tuple[TileTable, SamplingIndex]],
        epoch: int,
        shard: Shard,
        order: EpochOrder | None = None,
        skip_batches: tuple[int, int, bool] | None = None,
    ) -> Iterator[TileSample]:
        """The records ``shard`` delivers in ``epoch``, in delivery order.

        ``skip_batches`` (batches, batch size, drop_last) leaves out the records of the epoch's
        first batches before any pixel is read (resuming an interrupted epoch).
        """
        order = order or EpochOrder()
        plans = self._plans(pools, epoch)
        keys = [p.read_keys() for p in plans]
        skip = 0
        if skip_batches is not None:
            batches, batch_size, drop_last = skip_batches
            sizes = [shard_size(keys, shard.of_worker(w), order) for w in range(shard.workers)]
            skip = skip_records(sizes, shard.worker, batches, batch_size, drop_last)
        for k, block in self._blocks(epoch, shard, keys, order):
            plan = plans[k]
            if skip >= len(block):
                skip -= len(block)
                continue
            block = block[skip:]
            skip = 0
            padded = block >= len(plan.rows)
            records = self._read(plan, plan.rows[block % max(len(plan.rows), 1)])
            for record, pad in zip(records, padded, strict=True):
                record.padded = bool(pad)
            yield from records

    def _blocks(
        self, epoch: int, shard: Shard, keys: list[np.ndarray], order: EpochOrder
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(archive, plan positions) blocks this shard reads, in delivery order."""
        if order.ordered:
            runs = plan_ordered(
                keys,
                shard=shard,
                batch_size=order.batch_size,
                drop_remainder=order.drop_remainder,
            )
            for k, positions in runs:  # one read per window
                n = len(keys[k])
                window = keys[k][positions % max(n, 1)]
                cuts = np.flatnonzero(np.diff(window)) + 1
                for part in np.split(positions, cuts):
                    yield k, part
            return
        slices = table_slices([len(k) for k in keys], shard, order.drop_remainder)
        for k, table_keys in enumerate(keys):
            groups = plan_shard(
                table_keys,
                seed=self.seed + k,
                epoch=epoch,
                shard=shard,
                drop_remainder=order.drop_remainder,
                bounds=slices[k],
            )
            rng = random.Random(int(epoch_rng(self.seed, epoch, shard.index, k).integers(2**63)))
            for block in mix_blocks(groups, self.mix_groups, rng):
                yield k, block

    def _read(self, plan: _TablePlan, rows: np.ndarray) -> list[TileSample]:
        """Records of pool rows ``rows``, in order, read window by window (or from the copy)."""
        table, col = plan.table, plan.cols
        records = []
        for r in rows:
            rec = TileSample(
                info=table.info,
                tile_id=int(col["source_tile_id"][r]),
                t_start=int(col["t_start"][r]) + int(col["t_offset"][r]),
                n_time=int(col["n_time_sample"][r]),
                y_start=int(col["y_start"][r]),
                y_tile=int(col["y_tile"][r]),
                x_start=int(col["x_start"][r]),
                x_tile=int(col["x_tile"][r]),
                time_start=iso_time(
                    col["time_start"][r], int(col["t_offset"][r]), table.info.time_step
                ),
                sample_id=int(col["sampled_tile_id"][r]),
                scalar_value=float(col["scalar_value"][r]),
                bin_id=int(col["bin_id"][r]),
            )
            records.append(rec)
        if self.load and plan.copy is not None:
            for rec, data in zip(records, plan.copy.read_many(rows), strict=True):
                rec.data = data
        elif self.load and records:
            spec = table.info.spec
            reader = get_reader(spec.url, spec.var_name, spec.storage_options)
            for group in group_by_key(col["t_start"][rows]):  # one read per window
                members = [records[int(i)] for i in group]
                requests = [m.request for m in members]
                for rec, data in zip(
                    members, reader.read_tiles(requests, cache=False), strict=True
                ):
                    rec.data = data
        return records
