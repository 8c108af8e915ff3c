"""Epoch plans: group records by read window, order the groups, shard them across workers and ranks.

Pure numpy: the datapipes call it so that every record of an epoch is delivered exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlcast_pipes.errors import ParameterError

__all__ = [
    "BufferPlan",
    "EpochOrder",
    "Shard",
    "combine_shards",
    "epoch_rng",
    "even_size",
    "group_by_key",
    "ordered_records",
    "plan_buffer",
    "plan_ordered",
    "plan_shard",
    "shard_records",
    "shard_size",
    "skip_records",
    "table_slices",
]


#: Sharding priorities as torch names them (``SHARDING_PRIORITIES``): DEFAULT 1, DISTRIBUTED 2,
#: MULTIPROCESSING 3. Lower values are the outer level of the split.
_DISTRIBUTED = 2
_MULTIPROCESSING = 3


@dataclass(frozen=True)
class Shard:
    """Which share of the epoch this copy of the pipeline delivers.

    Attributes
    ----------
    count : int
        Number of shares (workers x ranks).
    index : int
        This copy's share, in ``range(count)``.
    ranks : int
        How many of the shares' outer level are ranks (``count`` is a multiple of it): every
        rank gets the same number of records (see :func:`even_size`).

    Examples
    --------
    Worker 1 of 4 (on a single rank) delivers the second quarter of each epoch:

    >>> shard = Shard(count=4, index=1)
    >>> plan_shard(np.arange(8), seed=0, epoch=0, shard=shard, shuffle=False)
    [array([2]), array([3])]
    >>> Shard()  # the whole epoch
    Shard(count=1, index=0, ranks=1)

    """

    count: int = 1
    index: int = 0
    ranks: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ParameterError(
                f"invalid shard {self.index} of {self.count}: the index must be in [0, count)"
            )
        if self.ranks < 1 or self.count % self.ranks:
            raise ParameterError(
                f"invalid shard: {self.count} shares cannot be split over {self.ranks} ranks"
            )

    @property
    def workers(self) -> int:
        """Shares per rank."""
        return self.count // self.ranks

    @property
    def rank(self) -> int:
        """The rank of this share."""
        return self.index // self.workers

    @property
    def worker(self) -> int:
        """The worker of this share within its rank."""
        return self.index % self.workers

    def of_worker(self, worker: int) -> Shard:
        """The share of worker ``worker`` of the same rank."""
        return Shard(self.count, self.rank * self.workers + worker, self.ranks)


@dataclass(frozen=True)
class EpochOrder:
    """How an epoch is cut: shuffled groups per shard, or batch by batch in a fixed order.

    Examples
    --------
    >>> keys = [np.array([0, 0, 1, 1, 2])]
    >>> shard_size(keys, Shard(count=2, index=1), EpochOrder(ordered=True, batch_size=2))
    2

    """

    ordered: bool = False
    batch_size: int = 1
    drop_remainder: bool = False


def shard_size(keys: Sequence[np.ndarray], shard: Shard, order: EpochOrder) -> int:
    """Records ``shard`` delivers of an epoch whose records have these read-group keys.

    Examples
    --------
    >>> [shard_size([np.arange(5)], Shard(count=2, index=i), EpochOrder()) for i in (0, 1)]
    [2, 3]

    """
    if order.ordered:
        n = sum(len(k) for k in keys)
        return ordered_records(n, shard, order.batch_size, order.drop_remainder)
    slices = table_slices([len(k) for k in keys], shard, order.drop_remainder)
    return sum(hi - lo for lo, hi in slices)


def combine_shards(levels: Mapping[int, tuple[int, int]]) -> Shard:
    """Combine the sharding calls of the reading services into one :class:`Shard`.

    Parameters
    ----------
    levels : mapping of int to (count, index)
        ``apply_sharding`` arguments keyed by sharding priority (DISTRIBUTED = 2,
        MULTIPROCESSING = 3, DEFAULT = 1). Ranks form the outer level, workers the inner.

    Examples
    --------
    >>> combine_shards({2: (2, 1), 3: (4, 3)})
    Shard(count=8, index=7, ranks=2)

    """
    count, index = 1, 0
    for _, (n, i) in sorted(levels.items()):
        count, index = count * n, index * n + i
    ranks = 1
    for level, (n, _) in levels.items():
        if level == _DISTRIBUTED:
            ranks *= n
    return Shard(count, index, ranks)


def even_size(n: int, ranks: int, drop_remainder: bool = False) -> int:
    """Records an epoch of ``n`` holds once shared evenly by ``ranks`` ranks.

    Like torch's ``DistributedSampler``: padded up to a multiple of ``ranks`` with records of
    the same epoch (the first ones of its order), or cut down to one with ``drop_remainder``.

    Examples
    --------
    >>> even_size(63, 2), even_size(63, 2, drop_remainder=True), even_size(63, 1)
    (64, 62, 63)

    """
    if ranks <= 1 or n == 0:
        return n
    return n // ranks * ranks if drop_remainder else -(-n // ranks) * ranks


def shard_records(n: int, shard: Shard, drop_remainder: bool = False) -> int:
    """Records ``shard`` delivers of an epoch of ``n`` (after :func:`even_size`).

    Examples
    --------
    63 records, 2 ranks of 2 workers: 16 per worker, one of them a padding copy.

    >>> [shard_records(63, Shard(4, i, ranks=2)) for i in range(4)]
    [16, 16, 16, 16]

    """
    lo, hi = table_slices([n], shard, drop_remainder)[0]
    return hi - lo


def table_slices(
    sizes: Sequence[int], shard: Shard, drop_remainder: bool = False
) -> list[tuple[int, int]]:
    """The (start, stop) slice of each table's evened sequence that ``shard`` delivers.

    Every table is evened out over the ranks (:func:`even_size`) and each rank's part is cut
    into one contiguous slice per worker. The records a table cannot share evenly between the
    workers go to the workers in turn, last worker first, continuing from table to table: over
    all tables the workers' record counts differ by at most one, the later workers holding the
    extra ones (DataLoader2 takes items from its workers in turn and needs no more).

    Examples
    --------
    Three tables of 5 records, two workers: the odd records go to worker 1, 0, then 1.

    >>> [table_slices([5, 5, 5], Shard(2, w)) for w in (0, 1)]
    [[(0, 2), (0, 3), (0, 2)], [(2, 5), (3, 5), (2, 5)]]

    """
    workers = shard.workers
    out: list[tuple[int, int]] = []
    extras = 0  # records given out beyond the even shares so far
    for n in sizes:
        per_rank = even_size(int(n), shard.ranks, drop_remainder) // shard.ranks
        base, rem = divmod(per_rank, workers)
        counts = [base + int((workers - 1 - w - extras) % workers < rem) for w in range(workers)]
        lo = shard.rank * per_rank + sum(counts[: shard.worker])
        out.append((lo, lo + counts[shard.worker]))
        extras += rem
    return out


def group_by_key(keys: np.ndarray) -> list[np.ndarray]:
    """Split row positions into groups of equal key, in ascending key order.

    Examples
    --------
    >>> [g.tolist() for g in group_by_key(np.array([5, 1, 5, 2]))]
    [[1], [3], [0, 2]]

    """
    keys = np.asarray(keys)
    if keys.size == 0:
        return []
    order = np.argsort(keys, kind="stable")
    boundaries = np.flatnonzero(np.diff(keys[order])) + 1
    return list(np.split(order, boundaries))


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """A random generator determined by (seed, epoch, stream...), the same in every process.

    Examples
    --------
    >>> a = epoch_rng(7, 3).integers(1000, size=4)
    >>> bool((a == epoch_rng(7, 3).integers(1000, size=4)).all())  # same seed and epoch
    True
    >>> bool((a == epoch_rng(7, 4).integers(1000, size=4)).all())  # next epoch: new draws
    False

    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, stream)])


def plan_shard(
    keys: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shard: Shard,
    shuffle: bool = True,
    drop_remainder: bool = False,
    bounds: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Plan one shard's part of an epoch as groups of row positions sharing a read window.

    Rows are grouped by key; groups are put in a random order for (seed, epoch) (or key
    order when ``shuffle`` is False) and the rows inside each group are shuffled. The
    resulting sequence is cut into ``shard.count`` contiguous slices whose sizes differ by at
    most one, so every worker and rank gets the same number of records (±1) and the union over
    all shards is every row exactly once. A group cut between two shards is read by both.
    Over several ranks the sequence is first evened out (:func:`even_size`): padding copies
    of its first rows are added at its end as positions ``len(keys) + row``, so that every
    rank gets the same number of records.

    Parameters
    ----------
    keys : numpy.ndarray
        One read-group key per row (e.g. the window's first time index).
    seed, epoch : int
        Determine the order.
    shard : Shard
        The share to plan.
    shuffle : bool
        Randomise the order of groups and of rows within groups.
    drop_remainder : bool
        Even the ranks out by leaving the last rows out instead of padding.
    bounds : (int, int), optional
        The shard's slice of the evened sequence (default: its slice of this table alone);
        give the one :func:`table_slices` computes for this table of several.

    Returns
    -------
    list of numpy.ndarray
        Row positions, one array per (part of a) group, in delivery order (a position
        ``p >= len(keys)`` is a padding copy of row ``p - len(keys)``).

    Examples
    --------
    >>> keys = np.array([0, 0, 1, 1, 1])
    >>> [g.tolist() for g in plan_shard(keys, seed=0, epoch=0, shard=Shard(2, 0), shuffle=False)]
    [[0, 1]]

    """
    groups = group_by_key(keys)
    if shuffle:
        rng = epoch_rng(seed, epoch, 0)
        groups = [rng.permutation(groups[i]) for i in rng.permutation(len(groups))]
    n = int(sum(len(g) for g in groups))
    n_even = even_size(n, shard.ranks, drop_remainder)
    if n_even > n:  # padding copies of the first rows, one group per read window
        extra = np.resize(np.concatenate(groups), n_even - n)
        cuts = np.flatnonzero(np.diff(np.asarray(keys)[extra])) + 1
        groups = [*groups, *(g + len(keys) for g in np.split(extra, cuts))]
    lo, hi = bounds if bounds is not None else table_slices([n], shard, drop_remainder)[0]
    out: list[np.ndarray] = []
    start = 0
    for group in groups:
        end = start + len(group)
        a, b = max(lo, start), min(hi, end)
        if a < b:
            out.append(group[a - start : b - start])
        start = end
        if start >= hi:
            break
    return out


@dataclass(frozen=True)
class BufferPlan:
    """A shard's delivery through a shuffle buffer: what is read, and when each record leaves.

    Attributes
    ----------
    order : numpy.ndarray
        Item indices in delivery order.
    reads_before : numpy.ndarray
        For each delivered record, how many read groups (from the start) must be read first.
    peak_held : int
        Most distinct rows held at once (pixels kept in memory: buffer and deferred copies).

    Examples
    --------
    >>> plan = plan_buffer([np.array([0, 1]), np.array([2])], np.arange(3), np.array([0, 0, 1]),
    ...                    capacity=8, span=2, rng=np.random.default_rng(0))
    >>> sorted(plan.order.tolist()), plan.peak_held
    ([0, 1, 2], 3)

    """

    order: np.ndarray
    reads_before: np.ndarray
    peak_held: int


def plan_buffer(
    groups: Sequence[np.ndarray],
    rows: np.ndarray,
    windows: np.ndarray,
    *,
    capacity: int,
    span: int,
    rng: np.random.Generator,
) -> BufferPlan:
    """Deliver read groups through a shuffle buffer so that batches look like a shuffled epoch.

    Groups (e.g. all of a shard's samples of one read window) are read in the order given; the
    buffer is refilled one group at a time while it holds fewer than ``capacity`` distinct rows,
    and records leave it in random order. Within each run of ``span`` records (a batch) a
    record's row appears once and windows differ where the buffer allows. Repeats of a row
    (one read, shared pixels) enter the buffer at random later reads, and a row with as many
    copies left as batches is delivered at once, so that repeats spread over the epoch.

    Parameters
    ----------
    groups : sequence of numpy.ndarray
        Item indices of each read group, in reading order.
    rows, windows : numpy.ndarray
        Per item: the row it reads (equal rows share pixels) and its read window.
    capacity : int
        Distinct rows held at most (plus one group), i.e. the samples kept in memory.
    span : int
        Records per batch downstream.
    rng : numpy.random.Generator
        The only source of randomness: the plan depends on it and the inputs alone.

    Examples
    --------
    Two windows of three samples, batches of two: every batch mixes both windows.

    >>> plan = plan_buffer([np.array([0, 1, 2]), np.array([3, 4, 5])], np.arange(6),
    ...                    np.array([0, 0, 0, 1, 1, 1]), capacity=8, span=2,
    ...                    rng=np.random.default_rng(0))
    >>> [len({i // 3 for i in plan.order[b : b + 2]}) for b in (0, 2, 4)]
    [2, 2, 2]

    """
    if capacity < 1:
        raise ParameterError(f"shuffle_buffer must be >= 1 sample, got {capacity}")
    span = max(int(span), 1)
    n_groups = len(groups)
    mean_rows = float(np.mean([len(np.unique(rows[g])) for g in groups])) if n_groups else 1.0
    horizon = max(1, int(capacity / max(mean_rows, 1.0)))  # reads a repeat may wait
    total = int(sum(len(g) for g in groups))
    row_of, window_of = np.asarray(rows).tolist(), np.asarray(windows).tolist()  # no numpy scalars
    buf: list[int] = []
    deferred: dict[int, list[int]] = {}
    held: dict[int, int] = {}  # row -> copies not yet delivered
    order = np.empty(total, dtype=np.int64)
    before = np.empty(total, dtype=np.int64)
    peak = 0
    read = 0

    def take(g: int) -> None:
        seen: set[int] = set()
        for item in groups[g].tolist():
            row = row_of[item]
            room = min(horizon, n_groups - 1 - g)
            if row in seen and room > 0:
                deferred.setdefault(g + 1 + int(rng.integers(room)), []).append(item)
            else:
                buf.append(item)
            seen.add(row)
            held[row] = held.get(row, 0) + 1
        buf.extend(deferred.pop(g, []))

    in_batch: set[int] = set()
    batch_windows: set[int] = set()
    forced: list[int] = []
    for k in range(total):
        while read < n_groups and (len(held) < capacity or not buf):
            if not buf and len(held) >= capacity:  # full of deferred repeats: release some
                buf.extend(deferred.pop(min(deferred)))
                continue
            take(read)
            read += 1
        if k % span == 0:
            in_batch, batch_windows = set(), set()
            batches_left = -(-(total - k) // span)
            urgent: dict[int, int] = {}
            for item in buf:
                row = row_of[item]
                if held[row] >= batches_left:
                    urgent.setdefault(row, item)
            forced = list(urgent.values())
        if forced:
            pick = buf.index(forced.pop())
        else:
            pick = -1
            for attempt in range(16):  # a random record of a new row (and window), if one comes
                j = int(rng.integers(len(buf)))
                item = buf[j]
                if row_of[item] not in in_batch and (
                    attempt >= 8 or window_of[item] not in batch_windows
                ):
                    pick = j
                    break
            if pick < 0:
                fresh = [j for j, item in enumerate(buf) if row_of[item] not in in_batch]
                pick = (
                    fresh[int(rng.integers(len(fresh)))] if fresh else int(rng.integers(len(buf)))
                )
        item = buf[pick]
        buf[pick] = buf[-1]
        buf.pop()
        row = row_of[item]
        order[k], before[k] = item, read
        in_batch.add(row)
        batch_windows.add(window_of[item])
        peak = max(peak, len(held))
        held[row] -= 1
        if not held[row]:
            del held[row]
    return BufferPlan(order, before, peak)


def plan_ordered(
    keys: Sequence[np.ndarray], *, shard: Shard, batch_size: int, drop_remainder: bool = False
) -> list[tuple[int, np.ndarray]]:
    """Plan one shard's part of a fixed, ordered epoch (evaluation) over several tables.

    The epoch is the same whatever the shard count: the rows of every table in key order,
    table after table, evened out over the ranks (:func:`even_size`, padding positions as in
    :func:`plan_shard`), cut into one contiguous slice per rank. A rank's slice is cut into
    batches of ``batch_size`` and worker ``w`` of ``W`` gets batches ``w, w + W, ...``:
    taking batches from the workers in turn delivers the slice in order.

    Returns
    -------
    list of (int, numpy.ndarray)
        (table, row positions) runs in this shard's delivery order.

    Examples
    --------
    Ten rows of one table, one rank, two workers, batches of 2: worker 1 gets batches 1 and 3.

    >>> keys = [np.arange(10)]
    >>> [(k, p.tolist()) for k, p in plan_ordered(keys, shard=Shard(2, 1), batch_size=2)]
    [(0, [2, 3, 6, 7])]

    """
    empty = np.zeros(0, dtype=np.int64)
    tables = np.concatenate([empty, *(np.full(len(k), i) for i, k in enumerate(keys))])
    rows = np.concatenate([empty, *(g for k in keys for g in group_by_key(k))])
    tables, rows = tables.astype(np.int64), rows.astype(np.int64)
    n = len(rows)
    n_even = even_size(n, shard.ranks, drop_remainder)
    if n_even > n:
        extra = np.resize(np.arange(n), n_even - n)
        sizes = np.array([len(k) for k in keys], dtype=np.int64)
        tables = np.concatenate([tables, tables[extra]])
        rows = np.concatenate([rows, rows[extra] + sizes[tables[extra]]])
    per_rank = n_even // shard.ranks
    lo = shard.rank * per_rank
    step = shard.workers * batch_size
    picks = [
        np.arange(lo + s, lo + min(s + batch_size, per_rank))
        for s in range(shard.worker * batch_size, per_rank, step)
    ]
    if not picks:
        return []
    pick = np.concatenate(picks)
    tab, pos = tables[pick], rows[pick]
    cuts = np.flatnonzero(np.diff(tab)) + 1
    return [(int(t[0]), p) for t, p in zip(np.split(tab, cuts), np.split(pos, cuts), strict=True)]


def ordered_records(n: int, shard: Shard, batch_size: int, drop_remainder: bool = False) -> int:
    """Records ``shard`` delivers of an ordered epoch of ``n`` (see :func:`plan_ordered`).

    Examples
    --------
    >>> [ordered_records(10, Shard(2, w), batch_size=2) for w in range(2)]
    [6, 4]

    """
    per_rank = even_size(n, shard.ranks, drop_remainder) // shard.ranks
    starts = range(shard.worker * batch_size, per_rank, shard.workers * batch_size)
    return sum(min(batch_size, per_rank - s) for s in starts)


def skip_records(
    sizes: Sequence[int], worker: int, batches: int, batch_size: int, drop_last: bool = False
) -> int:
    """Records worker ``worker`` skips so that its rank's epoch resumes at batch ``batches``.

    ``sizes`` are the records of every worker of the rank. DataLoader2 takes batches from
    its workers in turn (worker 0, 1, ..., 0, 1, ...), skipping workers that have run out;
    the first ``batches`` batches of that sequence are replayed on the workers' batch counts.

    Examples
    --------
    >>> skip_records([5, 5], worker=1, batches=3, batch_size=2)
    2

    """
    counts = [n // batch_size if drop_last else -(-n // batch_size) for n in sizes]
    taken = [0] * len(sizes)
    left = batches
    while left > 0 and any(t < c for t, c in zip(taken, counts, strict=True)):
        for j, c in enumerate(counts):
            if left > 0 and taken[j] < c:
                taken[j] += 1
                left -= 1
    return min(taken[worker] * batch_size, sizes[worker])
