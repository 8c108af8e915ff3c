"""Build a datapipe chain from a list of steps (the seed's form) or from a YAML file.

``compose([...])`` checks the order of the steps and gives the same chain as the functionals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch.utils.data import IterDataPipe

from mlcast_pipes.datapipes.normalize import NormalizeForTraining
from mlcast_pipes.datapipes.sample import BinNormSampler, Sampler
from mlcast_pipes.datapipes.source import MLCastCatalogDataset, OpenXarrayDataset
from mlcast_pipes.datapipes.steps import StepFactory
from mlcast_pipes.datapipes.tensor import ToTorchTensor
from mlcast_pipes.datapipes.tile import TilingSampler
from mlcast_pipes.errors import MLCastPipesError, ParameterError, PipelineOrderError

__all__ = [
    "STEPS",
    "compose",
    "load_pipeline",
]


#: Step names usable in YAML files, with the stage each one gives.
STEPS: dict[str, Any] = {
    "MLCastCatalogDataset": MLCastCatalogDataset,
    "OpenXarrayDataset": OpenXarrayDataset,
    "TilingSampler": TilingSampler,
    "BinNormSampler": BinNormSampler,
    "Sampler": Sampler,
    "NormalizeForTraining": NormalizeForTraining,
    "ToTorchTensor": ToTorchTensor,
}

_MAKES = {"tiles": "TilingSampler", "samples": "a sampler (BinNormSampler, Sampler)"}


def compose(steps: Sequence[Any]) -> IterDataPipe[Any]:
    """Chain pipeline steps, checking that each gets what it needs from the one before.

    ``steps``: a source first (``MLCastCatalogDataset``, ``OpenXarrayDataset`` or a datapipe of
    opened archives), then step objects; the result is the same chain as the functional form.
    Raises PipelineOrderError for steps in an order that cannot work.

    Examples
    --------
    >>> import mlcast_pipes as mp
    >>> pipe = mp.compose([mp.MLCastCatalogDataset("demo"),
    ...                    mp.TilingSampler(n_time_window=12, tile_size=(128, 128)),
    ...                    mp.NormalizeForTraining(), mp.ToTorchTensor(batch_size=4)])
    >>> type(pipe).__name__
    'ToTensorDataPipe'

    """
    if not steps:
        raise ParameterError(
            "a pipeline needs at least a source step, e.g. MLCastCatalogDataset('demo')"
        )
    first, *rest = steps
    if not isinstance(first, IterDataPipe):
        raise PipelineOrderError(
            f"the first step must be a source (MLCastCatalogDataset, OpenXarrayDataset or a "
            f"datapipe), got {first!r}"
        )
    pipe: IterDataPipe[Any] = first
    stage, previous = "dataset", repr(type(first).__name__)
    made: dict[str, str] = {"dataset": previous}  # stage -> the step that gave it
    for step in rest:
        if not isinstance(step, StepFactory):
            raise PipelineOrderError(f"{step!r} is not a pipeline step; use {', '.join(STEPS)}")
        provides = step.provides
        if stage not in step.accepts:
            raise PipelineOrderError(_order_message(step, stage, previous, made))
        try:
            pipe = step(pipe)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, MLCastPipesError):
                raise
            raise ParameterError(
                f"bad arguments for {step!r}: {exc}; fix: check the argument names and types "
                "against the step's documentation"
            ) from exc
        stage, previous = provides, repr(step)
        made.setdefault(stage, previous)
    return pipe


def _order_message(step: StepFactory, stage: str, previous: str, made: Mapping[str, str]) -> str:
    """Explain why ``step`` cannot follow ``previous``, and how to reorder the steps."""
    provides, accepted = step.provides, step.accepts
    needs = " or ".join(accepted)
    earlier = [made[s] for s in accepted if s in made]
    if provides in made:
        hint = f"; the pipeline already has {made[provides]}: keep one of them"
    elif earlier:
        hint = f"; move it to directly after {earlier[-1]}"
    elif accepted[0] in _MAKES:
        hint = f"; put {_MAKES[accepted[0]]} before it"
    else:
        hint = ""
    return f"{step!r} needs {needs} from the step before it, but {previous} gives {stage}{hint}"


def load_pipeline(config: str | os.PathLike[str] | Mapping[str, Any]) -> IterDataPipe[Any]:
    """Build a pipeline from a YAML file (or its parsed mapping).

    The file holds a list ``steps:`` of one-key mappings, step name to its arguments::

        steps:
          - MLCastCatalogDataset: {dataset_id: demo}
          - TilingSampler: {n_time_window: 12, tile_size: [128, 128]}
          - BinNormSampler: {aggregation: sum, n_scalar_total_bins: 10}
          - NormalizeForTraining: {}
          - ToTorchTensor: {batch_size: 16}

    Examples
    --------
    >>> pipe = load_pipeline({"steps": [{"MLCastCatalogDataset": {"dataset_id": "demo"}},
    ...                                 {"TilingSampler": {"n_time_window": 12}}]})
    >>> type(pipe).__name__
    'TileDataPipe'

    """
    if isinstance(config, Mapping):
        data: Any = config
        where = "the pipeline mapping"
    else:
        path = Path(config)
        if not path.is_file():
            raise ParameterError(f"pipeline file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ParameterError(f"{path} is not valid YAML: {exc}") from exc
        where = str(path)
    steps_cfg = data.get("steps") if isinstance(data, Mapping) else None
    if not isinstance(steps_cfg, list) or not steps_cfg:
        raise ParameterError(f"{where} needs a non-empty list 'steps:' of {{StepName: {{args}}}}")
    steps = []
    for i, item in enumerate(steps_cfg):
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ParameterError(f"{where}: step {i} must be a one-key mapping StepName: {{args}}")
        ((name, args),) = item.items()
        if name not in STEPS:
            raise ParameterError(f"{where}: unknown step {name!r}; known steps: {', '.join(STEPS)}")
        args = dict(args or {})
        for key in ("tile_size", "stride"):
            if isinstance(args.get(key), list):
                args[key] = tuple(args[key])
        try:
            step = STEPS[name](**args)
        except TypeError as exc:
            raise ParameterError(f"{where}: bad arguments for {name}: {exc}") from exc
        steps.append(step)
    return compose(steps)
