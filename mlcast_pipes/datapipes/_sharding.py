"""Sharding and epoch bookkeeping shared by the datapipes that own an epoch's order.

DataLoader2's reading services call ``apply_sharding``; the epoch advances on every ``__iter__``.
"""

from __future__ import annotations

from mlcast_pipes.epochs import Shard, combine_shards


class EpochShardMixin:
    """Implements ``apply_sharding`` (workers x ranks) and a per-copy epoch counter.

    Every copy of the pipeline (one per worker process and rank) counts its own epochs; the
    copies stay in step because each iterates once per epoch. ``set_epoch`` fixes the next
    epoch explicitly (for resuming).

    Examples
    --------
    A datapipe that delivers its share of six numbers per epoch:

    >>> class Numbers(EpochShardMixin):
    ...     def __init__(self):
    ...         self._init_epochs()
    ...     def __iter__(self):
    ...         epoch, shard = self._start_epoch(), self.shard
    ...         return iter([100 * epoch + i for i in range(6)][shard.index :: shard.count])
    >>> dp = Numbers()
    >>> dp.apply_sharding(2, 1)  # worker 1 of 2
    >>> dp.shard
    Shard(count=2, index=1)
    >>> list(dp), list(dp)  # epochs 0 and 1
    ([1, 3, 5], [101, 103, 105])
    >>> dp.set_epoch(0)  # replay epoch 0
    >>> list(dp)
    [1, 3, 5]

    """

    _shard_levels: dict[int, tuple[int, int]]
    _next_epoch: int

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

    def _start_epoch(self) -> int:
        epoch = self._next_epoch
        self._next_epoch += 1
        return epoch
