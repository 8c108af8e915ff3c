"""The step protocol: the stage each pipeline step provides and accepts, and what else it can do.

The loader, :func:`~mlcast_pipes.compose` and the steps find one another with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from torch.utils.data import IterDataPipe
from torch.utils.data.graph import traverse_dps

__all__ = [
    "EpochAware",
    "Resumable",
    "Stage",
    "Step",
    "StepFactory",
    "chain",
    "nearest",
    "walk",
]

#: What flows between steps: opened archives, tile records, sampled records, normalised
#: records, tensors (batches).
Stage = Literal["dataset", "tiles", "samples", "normalized", "tensors"]

T = TypeVar("T")


class Step:
    """A pipeline step: a datapipe that ``provides`` one stage from one of those it ``accepts``.

    It reads ``source_datapipe``; :meth:`prepare` builds its index files, if any.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> tiles = IterableWrapper(["demo"]).open_mlcast().tile(n_time_window=6)
    >>> isinstance(tiles, Step), tiles.provides, tiles.accepts, tiles.time_steps()
    (True, 'tiles', ('dataset',), 6)

    """

    provides: ClassVar[Stage]
    accepts: ClassVar[tuple[Stage, ...]] = ()
    source_datapipe: Any = None

    def prepare(self) -> None:
        """Build or load the files this step needs, in this process (nothing by default)."""

    def time_steps(self) -> int | None:
        """Time steps of each record it delivers (None: not known here)."""
        return None


class StepFactory:
    """A step of :func:`~mlcast_pipes.compose`: ``Factory(**kwargs)(upstream)`` makes ``step``.

    Examples
    --------
    >>> from mlcast_pipes.datapipes.tile import TileDataPipe, TilingSampler
    >>> factory = TilingSampler(n_time_window=12)
    >>> factory.step is TileDataPipe, factory.provides, factory.accepts
    (True, 'tiles', ('dataset',))

    """

    step: ClassVar[type[Step]]

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    @property
    def provides(self) -> Stage:
        """The stage the step makes."""
        return self.step.provides

    @property
    def accepts(self) -> tuple[Stage, ...]:
        """The stages the step accepts from the step before it."""
        return self.step.accepts

    def __call__(self, source: IterDataPipe[Any]) -> Any:
        """Apply the step to an upstream datapipe."""
        return self.step(source, **self.kwargs)  # type: ignore[call-arg]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({args})"


@runtime_checkable
class EpochAware(Protocol):
    """A datapipe whose epochs are numbered: the loader sets the next one.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> isinstance(IterableWrapper(["demo"]).open_mlcast().tile(), EpochAware)
    True

    """

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration deliver epoch ``epoch``."""


@runtime_checkable
class Resumable(Protocol):
    """A datapipe that can start its next epoch at a given batch (a sampler).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> tiles = IterableWrapper(["demo"]).open_mlcast().tile()
    >>> isinstance(tiles, Resumable), isinstance(tiles.uniform_sample(), Resumable)
    (False, True)

    """

    def set_resume(self, batches: int, batch_size: int, drop_last: bool = False) -> None:
        """Start the next epoch at batch ``batches``."""


@runtime_checkable
class Shardable(Protocol):
    """A datapipe that takes its share of an epoch from torchdata's reading services."""

    def apply_sharding(
        self, num_of_instances: int, instance_id: int, sharding_group: Any = ...
    ) -> None:
        """Deliver share ``instance_id`` of ``num_of_instances``."""


@runtime_checkable
class Batching(Protocol):
    """A batching datapipe (``.to_tensor()``, torch's ``.batch()``): its size and remainder."""

    batch_size: int | None
    drop_last: bool


def walk(pipe: IterDataPipe[Any]) -> list[Any]:
    """Every datapipe of a graph, each once, from the last step upwards.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> pipe = IterableWrapper(["demo"]).open_mlcast().tile().uniform_sample()
    >>> [type(dp).__name__ for dp in walk(pipe)]
    ['UniformSampleDataPipe', 'MLCastOpener', 'IterableWrapperIterDataPipe']

    """
    out: list[Any] = []
    seen: set[int] = set()
    stack = [traverse_dps(pipe)]
    while stack:
        graph = stack.pop()
        for dp, sub in graph.values():
            if id(dp) not in seen:
                seen.add(id(dp))
                out.append(dp)
            stack.append(sub)
    return out


def chain(dp: Any) -> Iterator[Step]:
    """``dp`` and the steps above it, one input at a time, while they are steps.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> pipe = IterableWrapper(["demo"]).open_mlcast().tile().normalize()
    >>> [step.provides for step in chain(pipe)]
    ['normalized', 'tiles', 'dataset']

    """
    for _ in range(64):  # a bound against cycles
        if not isinstance(dp, Step):
            return
        yield dp
        dp = dp.source_datapipe


def nearest(dp: Any, kind: type[T]) -> T | None:
    """The nearest step of type ``kind`` from ``dp`` (included) upwards, or None.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.datapipes.sample import SampleDataPipe
    >>> pipe = IterableWrapper(["demo"]).open_mlcast().tile().uniform_sample().normalize()
    >>> type(nearest(pipe, SampleDataPipe)).__name__
    'UniformSampleDataPipe'

    """
    return next((s for s in chain(dp) if isinstance(s, kind)), None)
