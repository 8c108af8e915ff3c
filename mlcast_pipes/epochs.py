"""Epoch plans: group records by read window, order the groups, shard them across workers and ranks.

Pure numpy: the datapipes call it so that every record of an epoch is delivered exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from mlcast_pipes.errors import ParameterError

T = TypeVar("T")

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

    Examples
    --------
    Worker 1 of 4 (on a single rank) delivers the second quarter of each epoch:

    >>> shard = Shard(count=4, index=1)
    >>> plan_shard(np.arange(8), seed=0, epoch=0, shard=shard, shuffle=False)
    [array([2]), array([3])]
    >>> Shard()  # the whole epoch
    Shard(count=1, index=0)

    """

    count: int = 1
    index: int = 0

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ParameterError(
                f"invalid shard {self.index} of {self.count}: the index must be in [0, count)"
            )


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
    Shard(count=8, index=7)

    """
    count, index = 1, 0
    for _, (n, i) in sorted(levels.items()):
        count, index = count * n, index * n + i
    return Shard(count, index)


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
    keys: np.ndarray, *, seed: int, epoch: int, shard: Shard, shuffle: bool = True
) -> list[np.ndarray]:
    """Plan one shard's part of an epoch as groups of row positions sharing a read window.

    Rows are grouped by key; groups are put in a random order for (seed, epoch) (or key
    order when ``shuffle`` is False) and the rows inside each group are shuffled. The
    resulting sequence is cut into ``shard.count`` contiguous slices whose sizes differ by at
    most one, so every worker and rank gets the same number of records (±1) and the union over
    all shards is every row exactly once. A group cut between two shards is read by both.

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

    Returns
    -------
    list of numpy.ndarray
        Row positions, one array per (part of a) group, in delivery order.

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
    lo = shard.index * n // shard.count
    hi = (shard.index + 1) * n // shard.count
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


def mix_groups(groups: Iterable[list[T]], n_mix: int, rng: random.Random) -> Iterator[T]:
    """Yield the items of consecutive groups, ``n_mix`` groups at a time, in shuffled order.

    With ``n_mix`` groups mixed, a batch drawn from the output holds samples of up to that
    many read windows, at the memory cost of holding ``n_mix`` groups.

    Examples
    --------
    The first two groups are mixed together, then the third alone:

    >>> out = list(mix_groups([[1, 2], [3, 4], [5, 6]], 2, random.Random(0)))
    >>> sorted(out[:4]), sorted(out[4:])
    ([1, 2, 3, 4], [5, 6])

    """
    if n_mix < 1:
        raise ParameterError(f"mix_groups must be >= 1, got {n_mix}")
    pool: list[T] = []
    held = 0
    for group in groups:
        pool.extend(group)
        held += 1
        if held == n_mix:
            rng.shuffle(pool)
            yield from pool
            pool, held = [], 0
    rng.shuffle(pool)
    yield from pool


def mix_blocks(
    groups: Sequence[np.ndarray], n_mix: int, rng: random.Random
) -> Iterator[np.ndarray]:
    """Positions of consecutive groups, ``n_mix`` groups at a time, in shuffled delivery order.

    The same order as :func:`mix_groups` gives for the same generator, computed on positions
    only, so a resumed epoch can skip records without reading their pixels.

    Examples
    --------
    >>> groups = [np.array([1, 2]), np.array([3, 4]), np.array([5, 6])]
    >>> blocks = list(mix_blocks(groups, 2, random.Random(0)))
    >>> [len(b) for b in blocks]
    [4, 2]
    >>> mixed = list(mix_groups([g.tolist() for g in groups], 2, random.Random(0)))
    >>> np.concatenate(blocks).tolist() == mixed  # the order mix_groups delivers
    True

    """
    if n_mix < 1:
        raise ParameterError(f"mix_groups must be >= 1, got {n_mix}")
    for i in range(0, len(groups), n_mix):
        block = [int(p) for g in groups[i : i + n_mix] for p in g]
        rng.shuffle(block)
        yield np.asarray(block, dtype=np.int64)


def worker_sizes(n_total: int, levels: Mapping[int, tuple[int, int]]) -> tuple[list[int], int]:
    """Records per worker of this copy's rank under :func:`plan_shard`, and this worker's index.

    Examples
    --------
    10 records on one rank with 3 workers, seen from worker 1:

    >>> worker_sizes(10, {3: (3, 1)})
    ([3, 3, 4], 1)

    Rank 1 of 2 (5 records) with 2 workers, seen from worker 0:

    >>> worker_sizes(10, {2: (2, 1), 3: (2, 0)})
    ([2, 3], 0)

    """
    shard = combine_shards(levels)
    n_workers, worker = levels.get(_MULTIPROCESSING, (1, 0))
    first = shard.index - worker
    sizes = [
        (first + j + 1) * n_total // shard.count - (first + j) * n_total // shard.count
        for j in range(n_workers)
    ]
    return sizes, worker


def resume_skip(
    n_total: int,
    levels: Mapping[int, tuple[int, int]],
    batches: int,
    batch_size: int,
    drop_last: bool = False,
) -> int:
    """Records this worker skips so that its rank's epoch resumes at batch ``batches``.

    DataLoader2 takes batches from its workers in turn (worker 0, 1, ..., 0, 1, ...), skipping
    workers that have run out; the first ``batches`` batches of that sequence are replayed
    here on the workers' batch counts.

    Examples
    --------
    >>> resume_skip(10, {3: (2, 1)}, batches=3, batch_size=2)
    2

    """
    sizes, worker = worker_sizes(n_total, levels)
    counts = [n // batch_size if drop_last else -(-n // batch_size) for n in sizes]
    taken = [0] * len(sizes)
    left = batches
    while left > 0 and any(t < c for t, c in zip(taken, counts, strict=True)):
        for j, c in enumerate(counts):
            if left > 0 and taken[j] < c:
                taken[j] += 1
                left -= 1
    return min(taken[worker] * batch_size, sizes[worker])
