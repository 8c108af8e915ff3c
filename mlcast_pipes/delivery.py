"""Delivering a sampler's epochs: draw, group by read window, shard, read (source or training copy).

The torch-free core of the sampling datapipes: they only choose the epoch and the shard.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mlcast_pipes._checks import as_int
from mlcast_pipes.epochs import (
    BufferPlan,
    EpochOrder,
    Shard,
    epoch_rng,
    plan_buffer,
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

    def pool_rows(self, positions: np.ndarray | int) -> np.ndarray:
        """Pool rows of plan positions (a position past the draws is a padding copy)."""
        return np.asarray(self.rows[positions % max(len(self.rows), 1)])

    def read_keys(self) -> np.ndarray:
        # From the source, a read group is a time window; from a training copy every sample is
        # its own chunk and the draws are in random order already: groups of a few draws keep
        # the plan cheap, the workers' shares even and the first read of an epoch short. The
        # repeats of a row join the group of its first draw: read once, held only while there.
        if self.copy is None:
            return np.asarray(self.cols["t_start"][self.rows])
        _, first, inverse = np.unique(self.rows, return_index=True, return_inverse=True)
        return np.asarray(first[inverse.reshape(-1)] // 4, dtype=np.int64)


class SampleDelivery:
    """Plans the epochs of sampling pools and yields one shard's records, pixels read.

    Each shard reads its read windows in a random order, each window once (all its samples cut
    from frames decoded once), and delivers the samples through a shuffle buffer
    (:func:`~mlcast_pipes.epochs.plan_buffer`) while the next windows are read in a background
    thread: batches are as mixed as a shuffled epoch at the cost of ``shuffle_buffer`` samples
    in memory per worker.

    Parameters
    ----------
    seed : int
        Seeds each epoch's draw and order.
    n_samples : int, optional
        Samples per epoch and archive (default: the size of the pool).
    shuffle_buffer : int
        Distinct samples held per worker to mix batches (memory: this many samples, e.g.
        256 x 12 x 128 x 128 float32 = 200 MB); 1 delivers window after window.
    read_ahead : int
        Read groups read ahead in a background thread (0: read when needed).
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
        shuffle_buffer: int = 256,
        read_ahead: int = 4,
        load: bool = True,
        materialized: bool | None = None,
    ) -> None:
        shuffle_buffer = as_int(
            "shuffle_buffer", shuffle_buffer, minimum=1, hint=" (1: window after window)"
        )
        read_ahead = as_int("read_ahead", read_ahead, minimum=0, hint=" (0: read when needed)")
        self.seed = seed
        self.n_samples = n_samples
        self.shuffle_buffer = shuffle_buffer
        self.read_ahead = read_ahead
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
        if order.ordered:
            yield from self._ordered(plans, keys, shard, order, skip)
            return
        groups, items = self._shard_groups(plans, keys, epoch, shard, order)
        span = order.batch_size if order.batch_size > 1 else _DEFAULT_SPAN
        rng = epoch_rng(self.seed, epoch, shard.index, _TAG_BUFFER)
        buffer = plan_buffer(
            groups, items.rows, items.windows, capacity=self.shuffle_buffer, span=span, rng=rng
        )
        upcoming = functools.partial(self._fetch_epoch_start, pools, epoch + 1, shard, order)
        yield from self._deliver(plans, groups, items, buffer, skip, upcoming)

    def _fetch_epoch_start(
        self,
        pools: Sequence[tuple[TileTable, SamplingIndex]],
        epoch: int,
        shard: Shard,
        order: EpochOrder,
    ) -> None:
        """Ask remote stores for the bytes of the first reads of ``epoch`` (likely the next).

        Only a head start: a failure here is left for the reads of that epoch to report.
        """
        if not any(_is_remote(table.info.spec.url) for table, _ in pools):
            return
        try:
            plans = self._plans(pools, epoch)
            keys = [p.read_keys() for p in plans]
            groups, items = self._shard_groups(plans, keys, epoch, shard, order)
            members: list[int] = []
            for group in groups[: 2 * max(self.read_ahead, 1)]:
                if len(members) >= 2 * _JOB_SAMPLES:
                    break
                members.extend(group.tolist())
            _fetch_frames_ahead(plans, items, members)
        except Exception:  # e.g. the store is unreachable now: the epoch's reads will say so
            return

    def _ordered(
        self,
        plans: list[_TablePlan],
        keys: list[np.ndarray],
        shard: Shard,
        order: EpochOrder,
        skip: int,
    ) -> Iterator[TileSample]:
        """A fixed epoch (evaluation): runs of one window read as they come."""
        runs = plan_ordered(
            keys, shard=shard, batch_size=order.batch_size, drop_remainder=order.drop_remainder
        )
        for k, positions in runs:
            n = len(keys[k])
            window = keys[k][positions % max(n, 1)]
            cuts = np.flatnonzero(np.diff(window)) + 1
            for block in np.split(positions, cuts):
                if skip >= len(block):
                    skip -= len(block)
                    continue
                block, skip = block[skip:], 0
                plan = plans[k]
                rows = plan.pool_rows(block)
                records = [
                    self._record(plan, int(r), bool(p))
                    for r, p in zip(rows, block >= len(plan.rows), strict=True)
                ]
                if self.load:
                    for rec, data in zip(records, self._read(plan, rows), strict=True):
                        rec.data = data
                yield from records

    def _shard_groups(
        self,
        plans: list[_TablePlan],
        keys: list[np.ndarray],
        epoch: int,
        shard: Shard,
        order: EpochOrder,
    ) -> tuple[list[np.ndarray], _Items]:
        """The shard's read groups of every archive, interleaved at random, as item indices."""
        slices = table_slices([len(k) for k in keys], shard, order.drop_remainder)
        found: list[tuple[int, np.ndarray]] = []
        for k, table_keys in enumerate(keys):
            groups = plan_shard(
                table_keys,
                seed=self.seed + k,
                epoch=epoch,
                shard=shard,
                drop_remainder=order.drop_remainder,
                bounds=slices[k],
            )
            found.extend((k, g) for g in groups)
        rng = epoch_rng(self.seed, epoch, shard.index, _TAG_INTERLEAVE)
        found = [found[i] for i in rng.permutation(len(found))] if len(plans) > 1 else found
        empty = np.zeros(0, dtype=np.int64)
        tables = np.concatenate([empty, *(np.full(len(g), k) for k, g in found)])
        positions = np.concatenate([empty, *(g for _, g in found)]).astype(np.int64)
        rows = np.empty(len(positions), dtype=np.int64)
        windows = np.empty(len(positions), dtype=np.int64)
        for k, plan in enumerate(plans):
            mine = tables == k
            row = plan.pool_rows(positions[mine])
            rows[mine] = (k << 40) + row
            windows[mine] = (k << 40) + np.asarray(plan.cols["t_start"][row], dtype=np.int64)
        bounds = np.cumsum([0, *(len(g) for _, g in found)])
        groups = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(found))]
        return groups, _Items(tables.astype(np.int64), positions, rows, windows)

    def _deliver(
        self,
        plans: list[_TablePlan],
        groups: list[np.ndarray],
        items: _Items,
        buffer: BufferPlan,
        skip: int,
        upcoming: Callable[[], None] | None = None,
    ) -> Iterator[TileSample]:
        """Yield the buffer plan's records from ``skip`` on, reading each needed row once.

        ``upcoming`` runs once every read has started (e.g. to fetch the next epoch's bytes).
        """
        order = buffer.order[skip:]
        if not len(order):
            return
        left = Counter(items.rows[order].tolist())  # copies still to deliver, per row
        # each needed row is read by the first group holding it (in reading order)
        reads: list[tuple[int, list[int]]] = []  # (group, items whose rows it reads)
        seen: set[int] = set()
        for g, members in enumerate(groups):
            fresh = []
            for i in members.tolist():
                row = int(items.rows[i])
                if row in left and row not in seen:
                    seen.add(row)
                    fresh.append(i)
            if fresh:
                reads.append((g, fresh))
        store: dict[int, np.ndarray | None] = {}
        with _Prefetch(self, plans, items, reads, upcoming) as fetched:
            for i, need in zip(order.tolist(), buffer.reads_before[skip:].tolist(), strict=True):
                fetched.until(need, store)
                k, pos = int(items.tables[i]), int(items.positions[i])
                plan = plans[k]
                row = int(items.rows[i])
                rec = self._record(plan, int(plan.pool_rows(pos)), pos >= len(plan.rows))
                left[row] -= 1
                data = store[row] if left[row] else store.pop(row)
                if data is not None:
                    rec.data = data.copy() if left[row] else data
                yield rec

    def _record(self, plan: _TablePlan, r: int, padded: bool) -> TileSample:
        """The record of pool row ``r`` of a table (pixels not read)."""
        table, col = plan.table, plan.cols
        return TileSample(
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
            padded=padded,
        )

    def _read(self, plan: _TablePlan, rows: np.ndarray, lane: int = 0) -> list[np.ndarray]:
        """Pixels of pool rows ``rows``, in order: from the training copy, or the source.

        ``lane`` 1 reads through a second reader of the source (see :func:`get_reader`).
        """
        if plan.copy is not None:
            return plan.copy.read_many(rows)
        if not len(rows):
            return []
        spec = plan.table.info.spec
        reader = get_reader(spec.url, spec.var_name, spec.storage_options, lane=lane)
        # one call for all: each frame is decoded once, the chunks fetched concurrently
        return reader.read_tiles(
            [self._record(plan, int(r), False).request for r in rows], cache=False
        )


def _is_remote(url: str) -> bool:
    """Whether ``url`` names a store reached over a network (not a local path or memory)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme not in ("", "file", "memory")


#: Records per batch assumed when the loader has not told the batch size.
_DEFAULT_SPAN = 16
#: Random stream tags of an epoch's shuffle buffer and of the interleaving of archives.
_TAG_BUFFER = 101
_TAG_INTERLEAVE = 102


@dataclass
class _Items:
    """The records of a shard's epoch: archive, plan position, row key and window key each."""

    tables: np.ndarray
    positions: np.ndarray
    rows: np.ndarray
    windows: np.ndarray


class _Prefetch:
    """Reads the needed rows in order, ``read_ahead`` read groups ahead, in a background thread.

    Consecutive groups of one archive are read together (up to ``read_ahead`` groups or
    :data:`_JOB_SAMPLES` samples): their frames are fetched concurrently, which hides the
    latency of remote stores, while the consumer works through the groups read before.
    """

    def __init__(
        self,
        delivery: SampleDelivery,
        plans: list[_TablePlan],
        items: _Items,
        reads: list[tuple[int, list[int]]],
        upcoming: Callable[[], None] | None = None,
    ) -> None:
        self.delivery = delivery
        self.upcoming = upcoming  # run once all reads are submitted (remote stores)
        self.plans = plans
        self.items = items
        self.reads = reads
        self.next = 0  # next entry of ``reads`` to put into the store
        self.submitted = 0  # entries handed to jobs so far
        self.fetched = 0  # entries whose bytes were asked for ahead (remote stores)
        self.jobs: deque[tuple[int, concurrent.futures.Future[dict[int, np.ndarray | None]]]] = (
            deque()
        )
        self.ahead = delivery.read_ahead if delivery.load else 0
        # two reads in flight from remote stores: one fetches while the other decodes
        remote = any(p.copy is None and _is_remote(p.table.info.spec.url) for p in plans)
        self.remote = remote and self.ahead > 0
        self.lanes = 2 if self.remote else 1
        if self.lanes > 1:  # open both lanes' readers in this thread, before any read starts
            for p in plans:
                spec = p.table.info.spec
                for lane in range(self.lanes):
                    _ = get_reader(spec.url, spec.var_name, spec.storage_options, lane=lane).shape
        self.pool = (
            concurrent.futures.ThreadPoolExecutor(self.lanes, "mlcast-read-ahead")
            if self.ahead
            else None
        )
        self._lane = threading.local()
        self._lane_count = itertools.count()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, future in self.jobs:
            future.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _job(self, first: int) -> int:
        """End (exclusive) of the job of consecutive entries starting at ``first``."""
        table = int(self.items.tables[self.reads[first][1][0]])
        end, samples = first, 0
        while (
            end < len(self.reads)
            and end - first < max(self.ahead, 1)
            and samples < _JOB_SAMPLES
            and int(self.items.tables[self.reads[end][1][0]]) == table
        ):
            samples += len(self.reads[end][1])
            end += 1
        return end

    def _members(self, first: int, end: int) -> list[int]:
        """The items that entries ``[first, end)`` read."""
        return [i for _, group in self.reads[first:end] for i in group]

    def _fetch(self, first: int, end: int) -> dict[int, np.ndarray | None]:
        """Pixels of the new rows of entries ``[first, end)`` (one archive), keyed by row."""
        items = self.items
        members = self._members(first, end)
        if not self.delivery.load:
            return {int(items.rows[i]): None for i in members}
        plan = self.plans[int(items.tables[members[0]])]
        pool_rows = plan.pool_rows(items.positions[members])
        lane = getattr(self._lane, "index", None)
        if lane is None:  # each thread of the pool keeps one lane
            lane = self._lane.index = next(self._lane_count) % self.lanes
        got = self.delivery._read(plan, pool_rows, lane)
        return {int(items.rows[i]): data for i, data in zip(members, got, strict=True)}

    def _top_up(self) -> None:
        """Keep one job running beyond the entries the consumer holds."""
        while (
            self.pool is not None
            and self.submitted < len(self.reads)
            and len(self.jobs) < self.lanes + 1
        ):
            end = self._job(self.submitted)
            self._fetch_ahead(end)  # its bytes all at once, not as its reader's window slides
            self.jobs.append((end, self.pool.submit(self._fetch, self.submitted, end)))
            self.submitted = end
        if self.submitted < len(self.reads):
            self._fetch_ahead(self._job(self.submitted))  # and those of the job after
        elif self.remote and self.upcoming is not None:
            upcoming, self.upcoming = self.upcoming, None
            upcoming()

    def _fetch_ahead(self, until: int) -> None:
        """Start fetching the stored bytes of the jobs before entry ``until`` (remote stores)."""
        while self.remote and self.fetched < until:
            end = self._job(self.fetched)
            _fetch_frames_ahead(self.plans, self.items, self._members(self.fetched, end))
            self.fetched = end

    def until(self, groups_read: int, store: dict[int, np.ndarray | None]) -> None:
        """Put into ``store`` the rows of every read group before group ``groups_read``."""
        while self.next < len(self.reads) and self.reads[self.next][0] < groups_read:
            if self.pool is None:
                end = self._job(self.next)
                store.update(self._fetch(self.next, end))
            else:
                self._top_up()
                end, future = self.jobs.popleft()
                store.update(future.result())
            self.next = end
        self._top_up()


#: Samples read together at most by one background read (bounds the memory read ahead).
_JOB_SAMPLES = 64


def _fetch_frames_ahead(plans: list[_TablePlan], items: _Items, members: Sequence[int]) -> None:
    """Ask remote stores for the bytes of the frames of ``members`` (items of the shard)."""
    by_table: dict[int, list[int]] = {}
    for i in members:
        by_table.setdefault(int(items.tables[i]), []).append(i)
    for k, mine in by_table.items():
        plan = plans[k]
        spec = plan.table.info.spec
        if plan.copy is not None or not _is_remote(spec.url):
            continue
        rows = plan.pool_rows(items.positions[mine])
        cols = plan.cols
        starts = np.asarray(cols["t_start"][rows]) + np.asarray(cols["t_offset"][rows])
        frames = {
            t
            for t0, n in zip(starts.tolist(), cols["n_time_sample"][rows].tolist(), strict=True)
            for t in range(int(t0), int(t0) + int(n))
        }
        get_reader(spec.url, spec.var_name, spec.storage_options).fetch_ahead(frames)
