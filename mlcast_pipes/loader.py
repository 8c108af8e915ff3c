"""DataLoader2 set-up: reading services for workers and ranks, epochs, resumable state, a watchdog.

``make_dataloader(pipe, num_workers=2)`` is the one call a training loop needs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import queue
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterDataPipe
from torchdata.dataloader2 import (
    DataLoader2,
    DistributedReadingService,
    MultiProcessingReadingService,
    SequentialReadingService,
)

from mlcast_pipes._checks import as_int
from mlcast_pipes.batchpool import BatchPool, sharing_by_fd
from mlcast_pipes.datapipes.steps import (
    Batching,
    EpochAware,
    Resumable,
    Shardable,
    Step,
    walk,
)
from mlcast_pipes.epochs import Shard, combine_shards
from mlcast_pipes.errors import MLCastPipesError, ParameterError

__all__ = [
    "Loader",
    "WorkerDiedError",
    "make_dataloader",
    "prepare_indexes",
    "set_epoch",
    "set_resume",
    "tune_malloc",
]


#: glibc ``mallopt`` parameters and the values :func:`tune_malloc` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_THRESHOLD = 256 * 2**20
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value


def tune_malloc() -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process (data loader workers).

    Sets ``M_MMAP_THRESHOLD`` to 32 MB and ``M_TRIM_THRESHOLD`` to 256 MB, so that samples
    allocated anew for every read reuse freed heap pages instead of fresh ``mmap`` pages.
    :func:`make_dataloader` calls it in its workers. Returns whether the settings took effect
    (False off glibc, e.g. on macOS).

    Examples
    --------
    >>> tune_malloc() in (True, False)
    True

    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


class _QueuePrefetch(IterDataPipe[Any]):
    """Read up to ``size`` items of ``source_datapipe`` ahead, in a thread that waits, not polls.

    torchdata's ``prefetch`` wakes its two threads every 0.1 ms while the buffer is full or
    empty (about a tenth of a core each); this one blocks on a queue. A new iteration stops
    the previous one's thread first, so the source never has two iterators at once.
    """

    def __init__(self, source_datapipe: IterDataPipe[Any], size: int) -> None:
        self.source_datapipe = source_datapipe
        self.size = size
        self._running: tuple[threading.Thread, threading.Event, queue.Queue[Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source_datapipe": self.source_datapipe, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.source_datapipe, self.size = state["source_datapipe"], state["size"]
        self._running = None

    def halt(self) -> None:
        """Stop the thread of the current iteration, if any (its items are dropped)."""
        if self._running is None:
            return
        thread, stop, items = self._running
        stop.set()
        while thread.is_alive():  # free a put waiting on a full queue
            with contextlib.suppress(queue.Empty):
                items.get_nowait()
            thread.join(0.05)
        self._running = None

    def __iter__(self) -> Iterator[Any]:
        self.halt()
        stop = threading.Event()
        items: queue.Queue[Any] = queue.Queue(self.size)
        end = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    items.put(item, timeout=0.1)
                    return True
            return False

        def produce() -> None:
            try:
                for item in self.source_datapipe:
                    if not put((item, None)):
                        return
                put((end, None))
            except BaseException as exc:  # handed to the consumer, raised there
                put((end, exc))

        thread = threading.Thread(target=produce, daemon=True, name="mlcast-worker-prefetch")
        self._running = (thread, stop, items)
        thread.start()
        try:
            while True:
                item, error = items.get()
                if error is not None:
                    raise error
                if item is end:
                    return
                yield item
        finally:
            if self._running is not None and self._running[0] is thread:
                self.halt()


def _init_worker(
    datapipe: Any,
    worker_info: Any,
    pool: BatchPool | None = None,
    quiet: bool = False,
    prefetch: int = 0,
) -> Any:
    """DataLoader2 worker set-up: :func:`tune_malloc`, batches stacked in shared memory.

    With a ``pool``, batches go into this worker's recycled buffers of it. The package's
    warnings about the archive and the sampler are the same in every worker: only worker 0
    shows them, and none when the main process has shown them already (``quiet``). With
    ``prefetch``, up to that many items are made ahead of the requests (:class:`_QueuePrefetch`).
    """
    from mlcast_pipes.datapipes.tensor import stack_into_shared_memory
    from mlcast_pipes.dataset import MLCastSpecWarning
    from mlcast_pipes.sampling import SamplingWarning

    if quiet or getattr(worker_info, "worker_id", 0) > 0:
        for category in (MLCastSpecWarning, SamplingWarning):
            warnings.filterwarnings("ignore", category=category)
    tune_malloc()
    _exit_with_parent()
    buffers = pool.worker_buffers(worker_info.worker_id) if pool is not None else None
    stack_into_shared_memory(buffers=buffers)
    return _QueuePrefetch(datapipe, prefetch) if prefetch > 0 else datapipe


def _exit_with_parent(interval: float = 0.5) -> None:
    """Make this worker process end when the process that started it dies.

    A daemon thread ends the process once its parent process id changes (the parent died and
    the worker was handed to another process). ``prctl(PR_SET_PDEATHSIG)`` is not used: it
    fires when the parent's *thread* that started the worker ends, which DataLoader2 may do.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mlcast-parent-watch").start()


class _EpochControl:
    """The epoch and resume point of the next iteration, in memory shared with the workers.

    DataLoader2 copies its reading service with ``pickle``: like a
    :class:`~mlcast_pipes.batchpool.BatchPool`, a copy in this process (or a forked worker)
    is this very object, and a spawned worker gets the values through shared memory.
    """

    def __init__(self, values: torch.Tensor | None = None) -> None:
        if values is None:
            values = torch.zeros(2, dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self.values = values
        self.token = id(self)

    def __reduce__(self) -> tuple[Any, ...]:
        _CONTROLS[self.token] = self
        return (_attach_control, (self.token, self.values))


_CONTROLS: weakref.WeakValueDictionary[int, _EpochControl] = weakref.WeakValueDictionary()


def _attach_control(token: int, values: torch.Tensor) -> _EpochControl:
    """The control ``token`` names where it is known, else one around the shared ``values``."""
    known = _CONTROLS.get(token)
    return known if known is not None else _EpochControl(values)


def _reset_worker(
    datapipe: Any, worker_info: Any, seed_generator: Any, control: _EpochControl
) -> Any:
    """DataLoader2 per-epoch worker reset: the epoch and resume point the loader set."""
    if isinstance(datapipe, _QueuePrefetch):
        datapipe.halt()  # the last epoch's reads stop before the next one is set
    set_epoch(datapipe, int(control.values[0]))
    set_resume(datapipe, int(control.values[1]))
    return datapipe


class WorkerDiedError(MLCastPipesError, RuntimeError):
    """A worker process of the data loader ended without finishing its epoch (rerun the epoch).

    Examples
    --------
    >>> issubclass(WorkerDiedError, (MLCastPipesError, RuntimeError))
    True

    """


#: Pipelines whose indexes were prepared in this process (their warnings were shown here).
_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()


def prepare_indexes(pipe: IterDataPipe[Any]) -> None:
    """Build or load every index the pipeline needs, in this process, before workers start.

    Workers would otherwise wait for one another on the index files' locks at their first epoch.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("prepare.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> pipe = tiles.uniform_sample(n_samples=6).normalize().to_tensor(batch_size=2)
    >>> prepare_indexes(pipe)  # the tiling index, then the sampling index
    >>> from pathlib import Path
    >>> sorted(p.name for p in Path("idx").glob("*.samples.csv"))
    ['...64x64.4.4.uniform....samples.csv', '...64x64.4.samples.csv']

    """
    for dp in walk(pipe):  # from the last step upwards
        if isinstance(dp, Step):
            dp.prepare()
    with contextlib.suppress(TypeError):  # not weakly referenceable: workers warn once
        _PREPARED.add(pipe)


def set_resume(pipe: IterDataPipe[Any], batch: int) -> None:
    """Make the next epoch of a pipeline start at batch ``batch`` (skipped without reading).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("resume.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> pipe = tiles.uniform_sample(n_samples=6).normalize().to_tensor(batch_size=2)
    >>> batches = list(pipe)  # epoch 0: 3 batches
    >>> set_epoch(pipe, 0)
    >>> set_resume(pipe, 2)  # epoch 0 again, from its batch 2
    >>> resumed = list(pipe)
    >>> len(resumed), bool((resumed[0] == batches[2]).all())
    (1, True)

    """
    if batch <= 0:
        return
    dps = walk(pipe)
    _refuse_mixed_resume(dps)
    batch_size, drop_last = _batching(dps)
    resumable = [dp for dp in dps if isinstance(dp, Resumable)]
    if not resumable:
        raise ParameterError(
            "start_batch needs a sampling step (.binnorm_sample(), .sample(...)) in the pipeline"
        )
    for dp in resumable:
        dp.set_resume(batch, batch_size, drop_last)


def _refuse_mixed_resume(dps: list[Any]) -> None:
    """Refuse a mid-epoch resume of a graph holding a ``mix()``: it cannot be replayed exactly.

    The batches skipped hold an unknown number of each mixed pipeline's records, and the
    mix's interleaving would restart: samples would be lost.
    """
    from mlcast_pipes.datapipes.mix import MixDataPipe

    if any(isinstance(dp, MixDataPipe) for dp in dps):
        raise ParameterError(
            "a pipeline holding mix() cannot resume in the middle of an epoch (start_batch > 0 "
            "or a state saved mid-epoch): its interleaving cannot be replayed, samples would be "
            "lost. Resume at the start of an epoch instead (set_epoch(epoch), start_batch=0)"
        )


def set_epoch(pipe: IterDataPipe[Any], epoch: int) -> None:
    """Set the next epoch of every epoch-aware datapipe of a graph (for resuming).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("epoch.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> pipe = tiles.uniform_sample(n_samples=6, load=False)  # records only, no pixels
    >>> epoch0 = [r.tile_id for r in pipe]
    >>> epoch1 = [r.tile_id for r in pipe]
    >>> set_epoch(pipe, 0)
    >>> [r.tile_id for r in pipe] == epoch0 != epoch1
    True

    """
    for dp in walk(pipe):
        if isinstance(dp, EpochAware):
            dp.set_epoch(epoch)


class Loader:
    """Iterate a pipeline with DataLoader2, one epoch per ``iter()``, failing fast if a worker dies.

    Use :func:`make_dataloader` to build one. Like a torch ``DataLoader`` with a
    ``DistributedSampler``: :meth:`set_epoch` chooses the epoch (the draw and the order),
    ``len()`` is the number of batches of this rank's epoch, and :meth:`state_dict` /
    :meth:`load_state_dict` resume an epoch where it stopped.

    Iterating again without :meth:`set_epoch` delivers the next epoch only after a completed
    one: an iteration left early (a ``break``, a sanity check) delivers the same epoch again,
    from its start.

    Attributes
    ----------
    epoch : int
        The epoch the next ``iter()`` delivers.
    batch_pool : BatchPool or None
        The workers' recycled batch buffers (None without workers or with
        ``reuse_batch_memory=False``).
    sampler : Loader
        This loader itself: trainers that call ``loader.sampler.set_epoch(epoch)`` before each
        epoch (as Lightning does) set its epoch.
    batch_sampler : None
        As a ``DataLoader`` built without one (Lightning reads it).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("loader.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> tiles = IterableWrapper([str(path)]).open_mlcast().tile(
    ...     n_time_window=4, tile_size=(64, 64), index_dir="idx"
    ... )
    >>> pipe = tiles.uniform_sample(n_samples=6).normalize().to_tensor(batch_size=2)
    >>> with Loader(pipe, num_workers=0) as loader:  # or make_dataloader(pipe, ...)
    ...     shapes = [tuple(batch.shape) for batch in loader]
    >>> shapes, loader.epoch
    ([(2, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64)], 1)

    """

    def __init__(
        self,
        pipe: IterDataPipe[Any],
        *,
        num_workers: int = 0,
        distributed: bool = False,
        seed: int = 0,
        start_epoch: int = 0,
        start_batch: int = 0,
        prefetch: int = 2,
        watchdog_interval: float = 0.5,
        multiprocessing_context: str | None = None,
        reuse_batch_memory: bool = True,
        shuffle: bool = True,
        drop_remainder: bool = False,
    ) -> None:
        num_workers = as_int("num_workers", num_workers, minimum=0)
        start_epoch = as_int("start_epoch", start_epoch, minimum=0)
        start_batch = as_int("start_batch", start_batch, minimum=0)
        prefetch = as_int("prefetch", prefetch, minimum=1)
        self.pipe = pipe
        self.num_workers = num_workers
        self.distributed = distributed
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.epoch = start_epoch
        self.watchdog_interval = watchdog_interval
        self._start_batch = start_batch  # where the next iteration of self.epoch starts
        self._batch = start_batch  # batches of self.epoch delivered (or skipped) so far
        self._lengths: dict[int, int] = {}
        self.world_size, self.rank = 1, 0
        if distributed:
            import torch.distributed as dist

            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self._configure(pipe)
        if start_batch > 0:
            _refuse_mixed_resume(walk(pipe))
        services: list[Any] = []
        self._direct = not distributed or _shard_ranks_directly(pipe)
        if not self._direct:
            services.append(DistributedReadingService())
        # batch buffers in use per worker: its prefetch, the batch being built, those in the
        # queue to this process and the one the training step holds (a mask takes a second one)
        self.batch_pool = (
            BatchPool(num_workers, n_slots=4 * prefetch + 8)
            if num_workers > 0 and reuse_batch_memory and sharing_by_fd()
            else None
        )
        if num_workers > 0:
            services.append(
                MultiProcessingReadingService(
                    num_workers=num_workers,
                    # torchdata's prefetch polls every 0.1 ms: the workers' own queue instead
                    worker_prefetch_cnt=0,
                    main_prefetch_cnt=0,
                    multiprocessing_context=multiprocessing_context,
                    worker_init_fn=functools.partial(
                        _init_worker,
                        pool=self.batch_pool,
                        quiet=pipe in _PREPARED,
                        prefetch=prefetch,
                    ),
                    worker_reset_fn=functools.partial(_reset_worker, control=self._control),
                )
            )
        self._mp = services[-1] if num_workers > 0 else None
        service: Any = None
        if len(services) == 1:
            service = services[0]
        elif len(services) > 1:
            service = SequentialReadingService(*services)
        self.dataloader = DataLoader2(pipe, reading_service=service)

    batch_sampler = None

    @property
    def sampler(self) -> Loader:
        """The loader itself, so that ``loader.sampler.set_epoch(e)`` (Lightning) sets the epoch."""
        return self

    def _configure(self, pipe: IterDataPipe[Any]) -> None:
        """Tell the epoch-planning steps the plan (ordered or not, batch size, remainder)."""
        from mlcast_pipes.datapipes._sharding import EpochShardMixin
        from mlcast_pipes.datapipes.mix import MixDataPipe

        dps = walk(pipe)
        self._batch_size, self._drop_last = _batching(dps)
        if not self.shuffle and any(isinstance(dp, MixDataPipe) for dp in dps):
            raise ParameterError(
                "shuffle=False cannot fix the order of a mix() of pipelines (its interleaving "
                "depends on the workers): evaluate each archive with its own loader"
            )
        for dp in dps:
            if isinstance(dp, EpochShardMixin):
                dp.configure_epochs(
                    ordered=not self.shuffle,
                    batch_size=self._batch_size,
                    drop_remainder=self.drop_remainder,
                )
        # the epoch and resume point of the next iteration, read by each worker at its reset
        self._control = _EpochControl()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration deliver epoch ``epoch`` (its draw and order), from its start.

        Setting the epoch the loader is at already keeps a resume point loaded with
        :meth:`load_state_dict`. With ``shuffle=False`` every epoch delivers the same batches.
        """
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self._start_batch, self._batch = epoch, 0, 0

    def __len__(self) -> int:
        """Batches this rank delivers in the epoch :attr:`epoch` (from the plan, no pixel read).

        Raises ``TypeError`` when the pipeline holds steps whose output count is not known
        in advance (a filter, a user's own datapipe).
        """
        epoch = self.epoch if self.shuffle else 0
        if epoch not in self._lengths:
            self._lengths = {epoch: self._plan_length(epoch)}
        return self._lengths[epoch]

    def _plan_length(self, epoch: int) -> int:
        if not self._direct:
            raise TypeError(
                "len() is unknown for this pipeline: its ranks are split by "
                "DistributedReadingService (it holds sharding steps of its own)"
            )
        levels: dict[int, tuple[int, int]] = {}
        if self.world_size > 1:
            levels[2] = (self.world_size, self.rank)
        if self.num_workers > 0:
            levels[3] = (self.num_workers, 0)
        shard = combine_shards(levels)
        memo: dict[int, Any] = {}
        total = 0
        for w in range(shard.workers):
            n = _count(self.pipe, epoch, shard.of_worker(w), memo)
            if n is None:
                raise TypeError(
                    "len() is unknown for this pipeline: it holds a step whose number of "
                    "items is not known in advance (only sampling, tiling, mix, normalize, "
                    "map and to_tensor steps are counted)"
                )
            total += n
        return total

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the epoch and the batches of it delivered so far.

        Save it with a checkpoint; :meth:`load_state_dict` on a loader of the same pipeline,
        ``num_workers``, ranks, seed, shuffle and batching (checked) resumes with exactly the
        remaining batches.

        Examples
        --------
        >>> from torchdata.datapipes.iter import IterableWrapper
        >>> from mlcast_pipes.demo import generate_demo
        >>> path = generate_demo("state.zarr", preset="tiny", n_times=24, overwrite=True)
        >>> def pipe():
        ...     tiles = IterableWrapper([str(path)]).open_mlcast().tile(
        ...         n_time_window=4, tile_size=(64, 64), index_dir="idx"
        ...     )
        ...     return tiles.uniform_sample(n_samples=6).normalize().to_tensor(batch_size=2)
        >>> loader = Loader(pipe())
        >>> batches = iter(loader)
        >>> first = next(batches)
        >>> state = loader.state_dict()
        >>> state["epoch"], state["batch"]
        (0, 1)
        >>> rest = list(batches)
        >>> resumed = Loader(pipe())
        >>> resumed.load_state_dict(state)
        >>> again = list(resumed)
        >>> len(again), all(bool((a == b).all()) for a, b in zip(again, rest))
        (2, True)

        """
        epoch, batch = self.epoch, self._batch
        if batch and self._completes(batch):
            epoch, batch = epoch + 1, 0
        return {
            "epoch": epoch,
            "batch": batch,
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            **self._plan_settings(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration delivers the remaining batches.

        Examples
        --------
        >>> from torchdata.datapipes.iter import IterableWrapper
        >>> tiles = IterableWrapper(["demo"]).open_mlcast().tile()
        >>> loader = Loader(tiles.uniform_sample().normalize().to_tensor(batch_size=4))
        >>> loader.load_state_dict({"epoch": 2, "batch": 5})
        >>> loader.epoch, loader.state_dict()["batch"]
        (2, 5)

        """
        for key, mine in (("num_workers", self.num_workers), ("world_size", self.world_size)):
            if key in state and int(state[key]) != mine:
                raise ParameterError(
                    f"this loader state was saved with {key}={state[key]}, this loader has "
                    f"{mine}: resume with the same number of workers and ranks (or resume at "
                    "the start of the epoch with set_epoch)"
                )
        for key, value in self._plan_settings().items():
            if key in state and state[key] != value:
                raise ParameterError(
                    f"this loader state was saved with {key}={state[key]!r}, this loader has "
                    f"{value!r}: the epoch would be drawn or cut differently, losing and "
                    f"repeating samples. Resume with {key}={state[key]!r} (or start a new "
                    "epoch with set_epoch)"
                )
        batch = int(state.get("batch", 0))
        if batch > 0:
            _refuse_mixed_resume(walk(self.pipe))
        self.epoch = int(state["epoch"])
        self._start_batch = self._batch = batch

    def _plan_settings(self) -> dict[str, Any]:
        """The settings that decide an epoch's draw and batches (a resume needs the same)."""
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self._batch_size,
            "drop_last": self._drop_last,
            "drop_remainder": self.drop_remainder,
        }

    def _completes(self, batch: int) -> bool:
        """Whether ``batch`` batches are the whole of the current epoch (False if unknown)."""
        try:
            return batch >= len(self)
        except Exception:  # a probe only: len() itself reports why it is unknown
            return False

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self.epoch, self._start_batch
        # DataLoader2 takes batches from the workers in turn, starting again at worker 0 each
        # epoch: the workers skip whole rounds, this loader drops the rest of the last round.
        rounds = max(self.num_workers, 1)
        drop = start % rounds
        self._batch = start
        finished = False
        try:
            for i, item in enumerate(self._epoch(epoch, start - drop)):
                if i < drop:
                    continue
                if self.epoch == epoch:
                    self._start_batch = 0  # a later iteration of this epoch starts afresh
                    self._batch += 1
                yield item
            finished = True
        finally:
            if self.epoch == epoch and (finished or self._completes(self._batch)):
                self.epoch, self._start_batch, self._batch = epoch + 1, 0, 0

    def _epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        data_epoch = epoch if self.shuffle else 0
        self._control.values[0], self._control.values[1] = data_epoch, skip
        if self._mp is None:
            set_epoch(self.dataloader.datapipe, data_epoch)
            set_resume(self.dataloader.datapipe, skip)
        self.dataloader.seed(self.seed + data_epoch)
        if self._mp is None:
            yield from self.dataloader
            return
        # DataLoader2 works on a copy of the reading service: watch that copy's processes.
        watchdog = _Watchdog(self.dataloader.reading_service, self.watchdog_interval)
        with watchdog:
            iterator: Iterator[Any] | None = None
            while True:
                try:
                    if iterator is None:
                        # starts or resets the workers (a dead one would block it: under the
                        # watchdog); objects made so far are left out of the garbage collections
                        # of forked workers, which would otherwise write to (copy) their pages
                        with _gc_frozen():
                            iterator = iter(self.dataloader)
                        if self.batch_pool is not None:
                            self.batch_pool.reclaim()  # buffers let go of or dropped since
                    item = next(iterator)
                    if self.batch_pool is not None:
                        self.batch_pool.track(item)
                        self.batch_pool.release()
                except StopIteration:
                    return
                except Exception as exc:
                    # the error may come before the watchdog's next look (e.g. a batch that
                    # the dead worker shared cannot be fetched): look again before raising it
                    if not watchdog.dead and not watchdog.check(wait=2 * self.watchdog_interval):
                        raise
                    # DataLoader2 shuts down on the error itself, which can fail in turn on
                    # the dead worker's queue: report the death, not the follow-up error.
                    self._abort()
                    if isinstance(exc, WorkerDiedError):
                        raise
                    raise WorkerDiedError(watchdog.message()) from exc
                yield item

    def _abort(self) -> None:
        for proc in _processes(self.dataloader.reading_service):
            if proc.is_alive():
                proc.kill()
        self.shutdown(timeout=5)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker processes, killing them if they do not stop within ``timeout`` s.

        DataLoader2's own shutdown can wait forever for a worker that is mid-item when an
        epoch is left early; this bound keeps a training script from hanging at exit.
        """
        closer = threading.Thread(target=self.dataloader.shutdown, daemon=True)
        closer.start()
        closer.join(timeout=timeout)
        if closer.is_alive():
            for proc in _processes(self.dataloader.reading_service):
                if proc.is_alive():
                    proc.kill()
            closer.join(timeout=timeout)

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep this process's objects out of garbage collections (``gc.freeze``) while in the block.

    A worker forked inside the block inherits them frozen: its collections never visit (and so
    never copy) the pages of the objects it shares with the main process, which made some
    epochs twice as slow after a large ``prepare`` in the main process. They are unfrozen here
    on leaving, unless the caller had frozen objects itself (then it is left to the caller).
    """
    if gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _shard_ranks_directly(pipe: IterDataPipe[Any]) -> bool:
    """Give each rank its share of the epoch without DistributedReadingService, if possible.

    DistributedReadingService ends every rank's epoch when the first rank runs out (its
    ``fullsync``), which drops samples whenever ranks hold unequal numbers of batches. When
    every shardable step of the pipeline is one of ours, each rank takes its share directly
    (shares differ by at most one sample) and nothing is dropped. Returns False, leaving the
    job to DistributedReadingService, when the pipeline has other sharding steps.
    """
    import torch.distributed as dist
    from torch.utils.data.datapipes.iter.sharding import SHARDING_PRIORITIES

    from mlcast_pipes.datapipes._sharding import EpochShardMixin

    shardable = [dp for dp in walk(pipe) if isinstance(dp, Shardable)]
    if not shardable or not all(isinstance(dp, EpochShardMixin) for dp in shardable):
        return False
    for dp in shardable:
        dp.apply_sharding(dist.get_world_size(), dist.get_rank(), SHARDING_PRIORITIES.DISTRIBUTED)
    return True


def _batching(dps: list[Any]) -> tuple[int, bool]:
    """Batch size and ``drop_last`` of the batching step of a graph (1, False if none)."""
    sizes = [dp for dp in dps if isinstance(dp, Batching)]
    if not sizes:
        return 1, False
    return int(sizes[0].batch_size or 1), bool(sizes[0].drop_last)


def _count(dp: Any, epoch: int, shard: Shard, memo: dict[int, Any]) -> int | None:
    """Items ``dp`` delivers to one worker in epoch ``epoch`` (None when not known in advance)."""
    from torch.utils.data.datapipes.iter.callable import MapperIterDataPipe

    from mlcast_pipes.datapipes._sharding import EpochShardMixin
    from mlcast_pipes.datapipes.mix import MixDataPipe
    from mlcast_pipes.datapipes.normalize import NormalizeDataPipe
    from mlcast_pipes.datapipes.tensor import ToTensorDataPipe

    if isinstance(dp, EpochShardMixin):
        if id(dp) not in memo:
            memo[id(dp)] = dp._epoch_keys(epoch)
        return dp._shard_sizes(memo[id(dp)], shard)
    if isinstance(dp, MixDataPipe):
        counts = [_count(p, epoch, shard, memo) for p in dp.pipes]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    if isinstance(dp, ToTensorDataPipe):
        n = _count(dp.source_datapipe, epoch, shard, memo)
        if n is None or dp.batch_size is None:
            return n
        return n // dp.batch_size if dp.drop_last else -(-n // dp.batch_size)
    if isinstance(dp, NormalizeDataPipe):
        return _count(dp.source_datapipe, epoch, shard, memo)
    if isinstance(dp, MapperIterDataPipe):
        return _count(dp.datapipe, epoch, shard, memo)
    return None


def _worker_entries(service: Any) -> list[tuple[Any, Any, Any]]:
    """(process, request queue, result queue) of each worker a reading service started."""
    entries: list[tuple[Any, Any, Any]] = []
    for inner in getattr(service, "reading_services", ()):
        entries.extend(_worker_entries(inner))
    entries.extend(getattr(service, "_worker_processes", []))
    return entries


def _processes(service: Any) -> list[Any]:
    """The processes a (possibly sequential) reading service has started."""
    procs = [entry[0] for entry in _worker_entries(service)]
    for inner in [service, *getattr(service, "reading_services", ())]:
        dispatch = getattr(inner, "_dispatch_process", None)
        if dispatch:
            procs.append(dispatch[0])
    return procs


def _report(result_queue: Any, error: Exception) -> None:
    """Deliver ``error`` to the main process as if the worker behind the queue had raised it."""
    from torchdata._utils import ExceptionWrapper
    from torchdata.dataloader2.communication.messages import WorkerExceptionResponse

    try:
        raise error
    except WorkerDiedError:
        wrapped = ExceptionWrapper(where="in the mlcast-pipes watchdog")
    result_queue.put(WorkerExceptionResponse(wrapped))


class _Watchdog:
    """Fails the epoch promptly when a worker process has died.

    DataLoader2 would otherwise wait forever for the dead worker's next item. The watchdog
    puts a worker-exception message on the dead worker's result queue, which the main process
    raises as :class:`WorkerDiedError` with the exit status.
    """

    def __init__(self, service: Any, interval: float) -> None:
        self.service = service
        self.interval = interval
        self.dead: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mlcast-watchdog")

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def check(self, wait: float) -> bool:
        """Whether a worker has died (looking for up to ``wait`` s); records the dead ones."""
        deadline = time.monotonic() + wait
        while True:
            entries = _worker_entries(self.service)
            dead = [e for e in entries if e[0].exitcode not in (None, 0)]
            if dead:
                self.dead = self.dead or [(e[0].pid, e[0].exitcode) for e in dead]
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            entries = _worker_entries(self.service)
            dead = [e for e in entries if e[0].exitcode not in (None, 0)]
            if dead and not self._stop.is_set():
                self.dead = [(e[0].pid, e[0].exitcode) for e in dead]
                # again at each interval: between epochs DataLoader2 may swallow one report
                # (discarding a request) and then wait on that queue again
                for entry in dead:
                    with contextlib.suppress(ValueError, OSError):  # queue closed by shutdown
                        _report(entry[2], WorkerDiedError(self.message()))

    def message(self) -> str:
        parts = []
        for pid, code in self.dead:
            killed = code is not None and code < 0
            how = f"killed by signal {-(code or 0)}" if killed else f"exit code {code}"
            if code == -signal.SIGKILL:
                how += (
                    " (SIGKILL: often the out-of-memory killer; lower shuffle_buffer or batch_size)"
                )
            parts.append(f"pid {pid} ({how})")
        return (
            f"a data loader worker died mid-epoch: {', '.join(parts)}; the epoch is incomplete. "
            "Rerun the epoch (set_epoch / start_epoch) after fixing the cause"
        )


def make_dataloader(
    pipe: IterDataPipe[Any],
    *,
    num_workers: int = 2,
    distributed: bool = False,
    seed: int = 0,
    start_epoch: int = 0,
    start_batch: int = 0,
    prefetch: int = 2,
    prepare: bool = True,
    reuse_batch_memory: bool = True,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Loader:
    """Wrap a pipeline in DataLoader2 with worker processes (and ranks), the right way.

    Parameters
    ----------
    pipe : IterDataPipe
        A chain ending in ``.to_tensor(batch_size=...)`` (batches are built in the workers).
    num_workers : int
        Worker processes (0: iterate in this process).
    distributed : bool
        Split each epoch across the ranks of the initialised ``torch.distributed`` group,
        as ``DistributedSampler`` does: the shares are disjoint and every rank delivers the
        same number of batches (with or without ``drop_last``), the short ranks padded with
        records of the same epoch (``meta["padded"]`` is True for them).
    seed : int
        Base seed given to DataLoader2 each epoch (``seed + epoch``) for any other random step.
    start_epoch : int
        The first epoch to deliver (:meth:`Loader.set_epoch` and :meth:`Loader.load_state_dict`
        are the usual way).
    start_batch : int
        Start that epoch at this batch: the skipped batches' records are dropped before any
        pixel is read, and the batches after them are those the interrupted run would have
        seen (same ``num_workers`` and ranks).
    prefetch : int
        Items each worker makes ahead of the requests (a thread waiting on a queue).
    prepare : bool
        Build the index files in this process first, so workers only load them.
    reuse_batch_memory : bool
        Let the workers recycle the shared memory of batches this process has let go of
        (:mod:`mlcast_pipes.batchpool`): a batch still referenced is never overwritten, but
        one sent on to a third process must be sent as a copy (``batch.clone()``), or turn
        this off.
    shuffle : bool
        False for validation and test: every epoch delivers the same samples (the draw of
        epoch 0) in the same order, whatever the numbers of workers and ranks (each rank a
        contiguous part of the sequence).
    drop_remainder : bool
        With ``distributed``, even the ranks out by leaving the last records of the epoch out
        instead of padding (as ``DistributedSampler(drop_last=True)``).

    Returns
    -------
    Loader
        Iterate it once per epoch; a worker that dies raises :class:`WorkerDiedError`.

    Examples
    --------
    >>> import mlcast_pipes as mp
    >>> pipe = mp.compose([mp.MLCastCatalogDataset("demo"), mp.TilingSampler(),
    ...                    mp.NormalizeForTraining(), mp.ToTorchTensor(batch_size=8)])
    >>> loader = make_dataloader(pipe, num_workers=0, prepare=False)
    >>> loader.epoch
    0

    """
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ParameterError(
                "distributed=True needs an initialised process group: call "
                "torch.distributed.init_process_group(...) first (gloo works on CPU)"
            )
    if prepare:
        prepare_indexes(pipe)
    return Loader(
        pipe,
        num_workers=num_workers,
        distributed=distributed,
        seed=seed,
        start_epoch=start_epoch,
        start_batch=start_batch,
        prefetch=prefetch,
        reuse_batch_memory=reuse_batch_memory,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
    )
