"""DataLoader2 set-up: reading services for workers and ranks, per-epoch seeding, a watchdog.

``make_dataloader(pipe, num_workers=2)`` is the one call a training loop needs.
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterDataPipe
from torch.utils.data.graph import traverse_dps
from torchdata.dataloader2 import (
    DataLoader2,
    DistributedReadingService,
    MultiProcessingReadingService,
    SequentialReadingService,
)

from mlcast_pipes.errors import MLCastPipesError, ParameterError


class WorkerDiedError(MLCastPipesError, RuntimeError):
    """A worker process of the data loader ended without finishing its epoch."""


def _walk(pipe: IterDataPipe[Any]) -> list[Any]:
    """Every datapipe of a graph (each once)."""
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


def prepare_indexes(pipe: IterDataPipe[Any]) -> None:
    """Build or load every index the pipeline needs, in this process, before workers start.

    Workers would otherwise wait for one another on the index files' locks at their first epoch.
    """
    for dp in _walk(pipe):
        build = getattr(dp, "sampling_indexes", None)
        if callable(build):
            build()
            continue
        plan = getattr(dp, "plan", None)
        source = getattr(dp, "source_datapipe", None)
        if plan is not None and source is not None and hasattr(plan, "table"):
            for da in source:
                plan.table(da)


def set_epoch(pipe: IterDataPipe[Any], epoch: int) -> None:
    """Set the next epoch of every epoch-aware datapipe of a graph (for resuming)."""
    for dp in _walk(pipe):
        setter = getattr(dp, "set_epoch", None)
        if callable(setter):
            setter(epoch)


class Loader:
    """Iterate a pipeline with DataLoader2, one epoch per ``iter()``, failing fast if a worker dies.

    Use :func:`make_dataloader` to build one.

    Attributes
    ----------
    epoch : int
        The epoch the next ``iter()`` delivers.

    """

    def __init__(
        self,
        pipe: IterDataPipe[Any],
        *,
        num_workers: int = 0,
        distributed: bool = False,
        seed: int = 0,
        start_epoch: int = 0,
        prefetch: int = 2,
        watchdog_interval: float = 0.5,
        multiprocessing_context: str | None = None,
    ) -> None:
        if num_workers < 0:
            raise ParameterError(f"num_workers must be >= 0, got {num_workers}")
        self.pipe = pipe
        self.num_workers = num_workers
        self.distributed = distributed
        self.seed = seed
        self.epoch = start_epoch
        self.watchdog_interval = watchdog_interval
        set_epoch(pipe, start_epoch)
        services: list[Any] = []
        if distributed:
            services.append(DistributedReadingService())
        if num_workers > 0:
            services.append(
                MultiProcessingReadingService(
                    num_workers=num_workers,
                    worker_prefetch_cnt=prefetch,
                    main_prefetch_cnt=prefetch,
                    multiprocessing_context=multiprocessing_context,
                )
            )
        self._mp = services[-1] if num_workers > 0 else None
        service: Any = None
        if len(services) == 1:
            service = services[0]
        elif len(services) > 1:
            service = SequentialReadingService(*services)
        self.dataloader = DataLoader2(pipe, reading_service=service)

    def __iter__(self) -> Iterator[Any]:
        self.dataloader.seed(self.seed + self.epoch)
        self.epoch += 1
        if self._mp is None:
            yield from self.dataloader
            return
        watchdog = _Watchdog(self._mp, self.watchdog_interval)
        iterator = iter(self.dataloader)
        watchdog.start()
        try:
            while True:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                except KeyboardInterrupt:
                    if watchdog.dead:
                        self._abort()
                        raise WorkerDiedError(watchdog.message()) from None
                    raise
                yield item
        finally:
            watchdog.stop()

    def _abort(self) -> None:
        for proc in _processes(self._mp):
            if proc.is_alive():
                proc.kill()
        closer = threading.Thread(target=self.dataloader.shutdown, daemon=True)
        closer.start()
        closer.join(timeout=5)

    def shutdown(self) -> None:
        """Stop the worker processes."""
        self.dataloader.shutdown()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _processes(service: Any) -> list[Any]:
    procs = [entry[0] for entry in getattr(service, "_worker_processes", [])]
    dispatch = getattr(service, "_dispatch_process", None)
    if dispatch:
        procs.append(dispatch[0])
    return procs


class _Watchdog:
    """Interrupts the main thread when a worker process has died (DataLoader2 would hang)."""

    def __init__(self, service: Any, interval: float) -> None:
        self.service = service
        self.interval = interval
        self.dead: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mlcast-watchdog")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            procs = _processes(self.service)
            dead = [
                (p.pid, p.exitcode) for p in procs if p.exitcode is not None and p.exitcode != 0
            ]
            if dead and not self._stop.is_set():
                self.dead = dead
                _thread.interrupt_main(signal.SIGINT)
                return

    def message(self) -> str:
        parts = []
        for pid, code in self.dead:
            how = (
                f"killed by signal {-code}"
                if code is not None and code < 0
                else f"exit code {code}"
            )
            if code == -signal.SIGKILL:
                how += " (SIGKILL: often the out-of-memory killer; lower batch_size or mix_groups)"
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
    prefetch: int = 2,
    prepare: bool = True,
) -> Loader:
    """Wrap a pipeline in DataLoader2 with worker processes (and ranks), the right way.

    Parameters
    ----------
    pipe : IterDataPipe
        A chain ending in ``.to_tensor(batch_size=...)`` (batches are built in the workers).
    num_workers : int
        Worker processes (0: iterate in this process).
    distributed : bool
        Split each epoch across the ranks of the initialised ``torch.distributed`` group.
    seed : int
        Base seed given to DataLoader2 each epoch (``seed + epoch``) for any other random step.
    start_epoch : int
        The first epoch to deliver (to resume a run).
    prefetch : int
        Items prefetched per worker and in the main process.
    prepare : bool
        Build the index files in this process first, so workers only load them.

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
        prefetch=prefetch,
    )
