"""Sharding and epoch bookkeeping shared by the datapipes that own an epoch's order.

DataLoader2's reading services call ``apply_sharding``; iterated on its own, a datapipe's epoch
advances on every ``__iter__``; a :class:`~mlcast_pipes.loader.Loader` sets it explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlcast_pipes.epochs import EpochOrder, Shard, combine_shards, shard_size

__all__ = [
    "EpochShardMixin",
]


class EpochShardMixin:
    """Implements ``apply_sharding`` (workers x ranks) and a per-copy epoch counter.

    Each copy of the pipeline counts its own epochs (they stay in step: one iteration per epoch);
    ``set_epoch`` fixes the next one, as the loader does before every epoch.

    Examples
    --------
    >>> class Numbers(EpochShardMixin):
    ...     def __init__(self):
    ...         self._init_epochs()
    ...     def __iter__(self):
    ...         epoch, shard = self._start_epoch(), self.shard
    ...         return iter([100 * epoch + i for i in range(6)][shard.index :: shard.count])
    >>> dp = Numbers()
    >>> dp.apply_sharding(2, 1)  # worker 1 of 2
    >>> list(dp), list(dp)  # epochs 0 and 1
    ([1, 3, 5], [101, 103, 105])

    """

    _shard_levels: dict[int, tuple[int, int]]
    _next_epoch: int
    _ordered: bool = False
    _batch_size: int = 1
    _drop_remainder: bool = False

    def _init_epochs(self, start_epoch: int = 0) -> None:
        self._shard_levels = {}
        self._next_epoch = start_epoch

    def is_shardable(self) -> bool:
        """Tell torchdata this datapipe splits its epoch across workers and ranks."""
        return True

    def apply_sharding(
        self, num_of_instances: int, instance_id: int, sharding_group: int = 1
    ) -> None:
        """Deliver share ``instance_id`` of ``num_of_instances`` at this sharding level."""
        self._shard_levels[int(sharding_group)] = (int(num_of_instances), int(instance_id))

    @property
    def shard(self) -> Shard:
        """The share of each epoch this copy delivers."""
        return combine_shards(self._shard_levels)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration deliver epoch ``epoch`` (e.g. to resume a run)."""
        self._next_epoch = int(epoch)

    def configure_epochs(
        self, *, ordered: bool = False, batch_size: int = 1, drop_remainder: bool = False
    ) -> None:
        """Choose the epoch plan (set by :class:`~mlcast_pipes.loader.Loader`).

        ``ordered`` delivers the records in a fixed order, batch by batch in turn from the
        workers (the same sequence whatever the numbers of workers and ranks); the ranks are
        evened out by padding, or by leaving the remainder out with ``drop_remainder``.
        """
        self._ordered = bool(ordered)
        self._batch_size = max(int(batch_size), 1)
        self._drop_remainder = bool(drop_remainder)

    @property
    def _order(self) -> EpochOrder:
        return EpochOrder(self._ordered, self._batch_size, self._drop_remainder)

    def _start_epoch(self) -> int:
        epoch = self._next_epoch
        self._next_epoch += 1
        return epoch

    def _epoch_keys(self, epoch: int) -> list[np.ndarray]:
        """The read-group key of every record of epoch ``epoch``, one array per table."""
        raise NotImplementedError

    def _shard_sizes(self, keys: Sequence[np.ndarray], shard: Shard) -> int:
        """Records ``shard`` delivers of an epoch with these keys."""
        return shard_size(keys, shard, self._order)

    def _worker_sizes(self, keys: Sequence[np.ndarray], shard: Shard) -> list[int]:
        """Records of every worker of ``shard``'s rank."""
        return [self._shard_sizes(keys, shard.of_worker(w)) for w in range(shard.workers)]

    def epoch_records(self, epoch: int, shard: Shard) -> int:
        """Records ``shard`` delivers in epoch ``epoch`` (from the plan, no pixel read)."""
        return self._shard_sizes(self._epoch_keys(epoch), shard)
