"""The tensor step: ``.to_tensor()`` and ``ToTorchTensor``: float32 tensors, batched and split.

Batches are built inside the worker processes, so only whole batches cross process boundaries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes._checks import as_int
from mlcast_pipes.batchpool import WorkerBuffers
from mlcast_pipes.datapipes.steps import Stage, Step, StepFactory, chain
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.records import TileSample

__all__ = [
    "Layout",
    "ToTensorDataPipe",
    "ToTorchTensor",
    "stack_into_shared_memory",
]


Layout = Literal["TYX", "CTYX", "TCYX"]
_META_INT = ("tile_id", "sample_id", "t_start", "y_start", "x_start")

_SHARED_BATCHES: list[Any] = [False]  # False, True (fresh shared memory) or WorkerBuffers


def stack_into_shared_memory(enabled: bool = True, buffers: WorkerBuffers | None = None) -> None:
    """Build this process's batches straight in shared memory, so sending them copies nothing.

    ``buffers`` (a worker's side of a :class:`~mlcast_pipes.batchpool.BatchPool`) recycles the
    memory; :func:`mlcast_pipes.make_dataloader` sets this up in its workers.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> stack_into_shared_memory()
    >>> pipe = IterableWrapper(["demo"]).open_mlcast().tile().normalize().to_tensor(batch_size=2)
    >>> next(iter(pipe)).is_shared()
    True
    >>> stack_into_shared_memory(False)

    """
    _SHARED_BATCHES[0] = (buffers if buffers is not None else True) if enabled else False


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack same-shaped arrays into one tensor (in shared memory when turned on)."""
    mode = _SHARED_BATCHES[0]
    if mode is False:
        return torch.from_numpy(np.stack(arrays))
    first = torch.from_numpy(arrays[0])
    shape = (len(arrays), *first.shape)
    if isinstance(mode, WorkerBuffers):
        out = mode.empty(shape, first.dtype)
    else:
        storage = first._typed_storage()._new_shared(  # type: ignore[no-untyped-call]
            first.numel() * len(arrays), device=first.device
        )
        out = first.new(storage).resize_(*shape)
    np.stack(arrays, out=out.numpy())
    return out


@functional_datapipe("to_tensor")
class ToTensorDataPipe(Step, IterDataPipe[Any]):
    """Turn tiles into float32 torch tensors, optionally batched, split and augmented.

    Yields ``[B, n_time, y, x]`` tensors (``B`` only with ``batch_size``), ``(inputs, targets)``
    with ``n_input``/``n_target`` (they must add up to the samples' length), or dicts with
    ``"data"`` (or ``"inputs"``/``"targets"``), ``"mask"`` and ``"meta"`` when ``metadata=True``
    or the normaliser made a mask (``meta["padded"]`` marks copies that even out the ranks).
    ``augment``: rotations by 90 degrees and flips seeded by (seed, epoch, sample), the same
    whatever the workers. ``layout`` adds a channel axis. A NaN raises unless ``allow_nan``.

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> dp = IterableWrapper(["demo"]).open_mlcast().tile().normalize()
    >>> next(iter(dp.to_tensor(batch_size=4, n_input=4, n_target=8)))[1].shape
    torch.Size([4, 8, 128, 128])

    """

    provides: ClassVar[Stage] = "tensors"
    accepts: ClassVar[tuple[Stage, ...]] = ("tiles", "samples", "normalized")

    def __init__(
        self,
        source_datapipe: IterDataPipe[Any],
        batch_size: int | None = None,
        n_input: int | None = None,
        n_target: int | None = None,
        augment: bool = False,
        *,
        seed: int = 0,
        metadata: bool = False,
        layout: Layout = "TYX",
        drop_last: bool = False,
        allow_nan: bool = False,
    ) -> None:
        if batch_size is not None:
            batch_size = as_int("batch_size", batch_size, minimum=1)
        if (n_input is None) != (n_target is None):
            raise ParameterError("give both n_input and n_target to split inputs from targets")
        if n_input is not None and (n_input <= 0 or n_target is None or n_target <= 0):
            raise ParameterError(
                f"n_input and n_target must be positive, got {n_input}, {n_target}"
            )
        if layout not in ("TYX", "CTYX", "TCYX"):
            raise ParameterError(f"unknown layout {layout!r}; use 'TYX', 'CTYX' or 'TCYX'")
        expected = _sample_length(source_datapipe)
        if n_input is not None and n_target is not None and expected is not None:
            _check_split(n_input, n_target, expected)
        self.source_datapipe = source_datapipe
        self.batch_size = batch_size
        self.n_input = n_input
        self.n_target = n_target
        self.augment = augment
        self.seed = seed
        self.metadata = metadata
        self.layout = layout
        self.drop_last = drop_last
        self.allow_nan = allow_nan
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the augmentations of epoch ``epoch``."""
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        epoch = self._next_epoch
        self._next_epoch += 1
        if self.batch_size is None:
            for sample in self.source_datapipe:
                yield self._collate([self._prepare(sample, epoch)], batched=False)
            return
        batch: list[dict[str, Any]] = []
        for sample in self.source_datapipe:
            batch.append(self._prepare(sample, epoch))
            if len(batch) == self.batch_size:
                yield self._collate(batch, batched=True)
                batch = []
        if batch and not self.drop_last:
            yield self._collate(batch, batched=True)

    def _prepare(self, sample: Any, epoch: int) -> dict[str, Any]:
        if not isinstance(sample, TileSample):
            raise PipelineOrderError(
                "to_tensor needs tiles: chain it after .tile(), a sampler or .normalize(), "
                f"got {type(sample).__name__}"
            )
        data = np.asarray(sample.load(), dtype=np.float32)
        if not self.allow_nan and not np.isfinite(data).all():
            what = "infinite values" if np.isinf(data).any() else "NaN"
            raise ParameterError(
                f"tile {sample.tile_id} of {sample.info.dataset_id} (t={sample.t_start}, "
                f"y={sample.y_start}, x={sample.x_start}) holds {what}: add .normalize() before "
                ".to_tensor() (it fills NaN; mask infinite pixels to NaN in the archive), or "
                "pass allow_nan=True to keep them"
            )
        if self.n_input is not None and self.n_target is not None:
            _check_split(self.n_input, self.n_target, data.shape[0])
        mask = sample.mask
        if self.augment:
            k, flip = _augmentation(self.seed, epoch, sample, data.shape)
            data = _dihedral(data, k, flip)
            if mask is not None:
                mask = _dihedral(mask, k, flip)
        return {"data": data, "mask": mask, "meta": sample.metadata()}

    def _collate(self, items: list[dict[str, Any]], *, batched: bool) -> Any:
        def stack(key: str) -> torch.Tensor:
            arrays = [np.ascontiguousarray(it[key]) for it in items]
            t = _stack(arrays) if batched else torch.from_numpy(arrays[0])
            axis = 1 if batched else 0
            if self.layout == "CTYX":
                t = t.unsqueeze(axis)
            elif self.layout == "TCYX":
                t = t.unsqueeze(axis + 1)
            return t

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            axis = (1 if batched else 0) + (1 if self.layout == "CTYX" else 0)
            n_in = int(self.n_input or 0)
            n_tg = int(self.n_target or 0)
            return t.narrow(axis, 0, n_in), t.narrow(axis, n_in, n_tg)

        data = stack("data")
        has_mask = items[0]["mask"] is not None
        mask = stack("mask") if has_mask else None
        if not (self.metadata or has_mask):
            return split(data) if self.n_input is not None else data
        out: dict[str, Any] = {}
        if self.n_input is not None:
            out["inputs"], out["targets"] = split(data)
            if mask is not None:
                out["inputs_mask"], out["targets_mask"] = split(mask)
        else:
            out["data"] = data
            if mask is not None:
                out["mask"] = mask
        metas = [it["meta"] for it in items]
        meta: dict[str, Any] = {}
        for key in _META_INT:
            values = torch.tensor([m[key] for m in metas], dtype=torch.int64)
            meta[key] = values if batched else values[0]
        padded = torch.tensor([bool(m.get("padded", False)) for m in metas], dtype=torch.bool)
        meta["padded"] = padded if batched else padded[0]
        for key in ("time_start", "dataset_id"):
            values_list = [m[key] for m in metas]
            meta[key] = values_list if batched else values_list[0]
        out["meta"] = meta
        return out


class ToTorchTensor(StepFactory):
    """The seed's last step: ``ToTorchTensor(batch_size=16)``.

    Examples
    --------
    >>> step = ToTorchTensor(batch_size=16, n_input=4, n_target=8)
    >>> step.provides, step.accepts
    ('tensors', ('tiles', 'samples', 'normalized'))

    """

    step = ToTensorDataPipe


def _sample_length(dp: Any) -> int | None:
    """The number of steps per sample of the nearest upstream tiling/sampling step, if known."""
    return next((n for step in chain(dp) if (n := step.time_steps()) is not None), None)


def _check_split(n_input: int, n_target: int, n_time: int) -> None:
    if n_input + n_target != n_time:
        raise ParameterError(
            f"n_input + n_target = {n_input} + {n_target} = {n_input + n_target}, but samples have "
            f"{n_time} steps; make them add up (or set n_time_sample={n_input + n_target} on the "
            "sampler)"
        )


def _augmentation(
    seed: int, epoch: int, sample: TileSample, shape: tuple[int, ...]
) -> tuple[int, bool]:
    """The rotation/flip of one sample, fixed by (seed, epoch, sample identity)."""
    ident = (sample.info.dataset_id, sample.sample_id, sample.tile_id, sample.t_start)
    key = f"{seed}/{epoch}/{ident}"
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    square = shape[-1] == shape[-2]
    k = (h % 4) if square else 2 * (h % 2)
    flip = bool((h >> 8) & 1)
    return k, flip


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate by ``k`` quarter turns, then mirror left-right: the 8 symmetries of a square."""
    out = np.rot90(a, k, axes=(-2, -1))
    if flip:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)
