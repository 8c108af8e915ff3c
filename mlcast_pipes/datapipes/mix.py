"""Mixing several sampled archives into one stream: ``mix([pipe_a, pipe_b], weights=[2, 1])``.

Each input keeps its own epoch (every record once); the mix only decides the interleaving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import IterDataPipe

from mlcast_pipes.epochs import epoch_rng
from mlcast_pipes.errors import ParameterError

__all__ = [
    "MixDataPipe",
    "mix",
]


class MixDataPipe(IterDataPipe[Any]):
    """Interleave the records of several pipelines at random, in proportion to weights.

    Every input is drained completely each epoch (so each input's exactly-once delivery holds
    for the mix); while several inputs have records left, the next record comes from input
    ``i`` with probability proportional to ``weights[i]``. The interleaving is fixed by
    (seed, epoch). Put it after the sampling steps and before ``.normalize()`` /
    ``.to_tensor()``, so batches are still built inside the workers.

    Parameters
    ----------
    pipes : sequence of IterDataPipe
        Sampled pipelines, one per archive (or per sampler).
    weights : sequence of float, optional
        Relative share of each input while all have records left (equal when None).
    seed : int
        Seeds the interleaving.

    Examples
    --------
    >>> from torch.utils.data.datapipes.iter import IterableWrapper
    >>> mixed = MixDataPipe([IterableWrapper([1, 2]), IterableWrapper([10, 20, 30])], seed=0)
    >>> sorted(mixed)
    [1, 2, 10, 20, 30]

    """

    def __init__(
        self,
        pipes: Sequence[IterDataPipe[Any]],
        weights: Sequence[float] | None = None,
        *,
        seed: int = 0,
    ) -> None:
        if not pipes:
            raise ParameterError("mix needs at least one pipeline")
        weights = list(weights) if weights is not None else [1.0] * len(pipes)
        if len(weights) != len(pipes) or any(w <= 0 for w in weights):
            raise ParameterError(
                f"mix needs one positive weight per pipeline: got {len(weights)} weights "
                f"{weights} for {len(pipes)} pipelines"
            )
        self.pipes = list(pipes)
        self.weights = [float(w) for w in weights]
        self.seed = seed
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the interleaving of epoch ``epoch``."""
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        rng = epoch_rng(self.seed, self._next_epoch, 1)
        self._next_epoch += 1
        active = [(iter(p), w) for p, w in zip(self.pipes, self.weights, strict=True)]
        while active:
            total = sum(w for _, w in active)
            pick = int(rng.choice(len(active), p=[w / total for _, w in active]))
            try:
                yield next(active[pick][0])
            except StopIteration:
                del active[pick]


def mix(
    pipes: Sequence[IterDataPipe[Any]], weights: Sequence[float] | None = None, *, seed: int = 0
) -> MixDataPipe:
    """Interleave several sampled pipelines (several archives in one training run).

    Examples
    --------
    >>> from torch.utils.data.datapipes.iter import IterableWrapper
    >>> len(list(mix([IterableWrapper(range(3)), IterableWrapper(range(4))], [3, 1])))
    7

    """
    return MixDataPipe(pipes, weights, seed=seed)
