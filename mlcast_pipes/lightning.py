"""Lightning integration: :class:`MLCastDataModule` (install the ``[lightning]`` extra).

``import mlcast_pipes`` never imports Lightning; only this module does.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import IterDataPipe

from mlcast_pipes.errors import ParameterError
from mlcast_pipes.loader import Loader, make_dataloader, prepare_indexes

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mlcast_pipes.lightning needs Lightning: pip install 'mlcast-pipes[lightning]'"
    ) from exc

__all__ = [
    "MLCastDataModule",
]


_STAGES = ("train", "val", "test")


class MLCastDataModule(pl.LightningDataModule):
    """A LightningDataModule around :func:`~mlcast_pipes.make_dataloader`.

    ``train``, ``val``, ``test``: pipelines ending in ``.to_tensor(batch_size=...)``. The training
    loader takes its epoch from the trainer (a fresh draw per epoch) and its position is saved
    with checkpoints and restored on resume, mid-epoch included (same ``num_workers`` and
    devices); validation and test loaders keep one order. Under DDP every rank gets as many
    batches, padded with copies marked ``meta["padded"]`` unless ``drop_remainder``.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> tiles = IterableWrapper(["demo"]).open_mlcast().tile()
    >>> train = tiles.uniform_sample(n_samples=64).normalize().to_tensor(batch_size=8)
    >>> dm = MLCastDataModule(train=train, num_workers=2)
    >>> dm.num_workers  # then: lightning.Trainer(...).fit(model, datamodule=dm)
    2

    """

    def __init__(
        self,
        train: IterDataPipe[Any] | None = None,
        val: IterDataPipe[Any] | None = None,
        test: IterDataPipe[Any] | None = None,
        *,
        num_workers: int = 2,
        seed: int = 0,
        prefetch: int = 2,
        drop_remainder: bool = False,
        reuse_batch_memory: bool = True,
    ) -> None:
        super().__init__()
        self.pipes = {"train": train, "val": val, "test": test}
        self.num_workers = num_workers
        self.seed = seed
        self.prefetch = prefetch
        self.drop_remainder = drop_remainder
        self.reuse_batch_memory = reuse_batch_memory
        self._loaders: dict[str, Loader] = {}
        self._train_state: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaders"] = {}  # worker processes stay with their process
        return state

    def prepare_data(self) -> None:
        """Build the index files once, before the ranks and workers start."""
        for pipe in self.pipes.values():
            if pipe is not None:
                prepare_indexes(pipe)

    def loader(self, stage: str) -> Loader:
        """The loader of ``stage`` (``"train"``, ``"val"`` or ``"test"``), built once.

        Examples
        --------
        >>> MLCastDataModule().loader("val")
        Traceback (most recent call last):
        ...
        mlcast_pipes.errors.ParameterError: no val pipeline: pass val=... to MLCastDataModule

        """
        if stage not in _STAGES:
            raise ParameterError(f"unknown stage {stage!r}; use one of {', '.join(_STAGES)}")
        pipe = self.pipes[stage]
        if pipe is None:
            raise ParameterError(f"no {stage} pipeline: pass {stage}=... to MLCastDataModule")
        if stage not in self._loaders:
            import torch.distributed as dist

            trainer = self.trainer
            distributed = (
                trainer is not None
                and trainer.world_size > 1
                and dist.is_available()
                and dist.is_initialized()
            )
            self._loaders[stage] = make_dataloader(
                pipe,
                num_workers=self.num_workers,
                distributed=distributed,
                seed=self.seed,
                prefetch=self.prefetch,
                reuse_batch_memory=self.reuse_batch_memory,
                shuffle=stage == "train",
                drop_remainder=self.drop_remainder,
            )
        return self._loaders[stage]

    def train_dataloader(self) -> Loader:
        """The training loader, at the trainer's epoch (or the restored position)."""
        loader = self.loader("train")
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        if self.trainer is not None:
            loader.set_epoch(self.trainer.current_epoch)
        return loader

    def val_dataloader(self) -> Loader:
        """The validation loader: the same batches every epoch."""
        return self.loader("val")

    def test_dataloader(self) -> Loader:
        """The test loader: the same batches every time."""
        return self.loader("test")

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (saved in Lightning checkpoints)."""
        if "train" in self._loaders:
            return {"train": self._loaders["train"].state_dict()}
        return {"train": self._train_state} if self._train_state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training loader's position from :meth:`state_dict`."""
        state = state_dict.get("train")
        if state is None:
            return
        if "train" in self._loaders:
            self._loaders["train"].load_state_dict(state)
        else:
            self._train_state = dict(state)

    def teardown(self, stage: str) -> None:
        """Stop the worker processes of the loaders."""
        for loader in self._loaders.values():
            loader.shutdown()
        self._loaders.clear()
