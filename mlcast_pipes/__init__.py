"""mlcast-pipes: composable datapipes from MLCast radar archives to training batches.

Importing the package registers the functionals (``.open_mlcast()``, ``.tile()``, ...) once torch
is imported; public names load on first use, so the command line and ``prepare`` never import torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str

    from mlcast_pipes.datapipes import (
        BinNormSampleDataPipe,
        BinNormSampler,
        MLCastCatalogDataset,
        MLCastOpener,
        NormalizeDataPipe,
        NormalizeForTraining,
        OpenXarrayDataset,
        SampleDataPipe,
        Sampler,
        TileDataPipe,
        TilingSampler,
        ToTensorDataPipe,
        ToTorchTensor,
        register_sampler_functional,
    )
    from mlcast_pipes.datapipes.mix import MixDataPipe, mix
    from mlcast_pipes.dataset import open_mlcast
    from mlcast_pipes.errors import (
        CatalogError,
        DatasetError,
        IndexFileError,
        MLCastPipesError,
        ParameterError,
        PipelineOrderError,
        ReadError,
        StaleIndexError,
    )
    from mlcast_pipes.loader import Loader, WorkerDiedError, make_dataloader, tune_malloc
    from mlcast_pipes.pipeline import compose, load_pipeline
    from mlcast_pipes.splits import TimeSplit, split_by_blocks, split_by_ranges, split_chronological
    from mlcast_pipes.transforms import denormalize

# where each public name lives; keep in step with the TYPE_CHECKING imports and __all__
_LAZY: dict[str, tuple[str, ...]] = {
    "mlcast_pipes.dataset": ("open_mlcast",),
    "mlcast_pipes.datapipes": (
        "BinNormSampleDataPipe",
        "BinNormSampler",
        "MLCastCatalogDataset",
        "MLCastOpener",
        "NormalizeDataPipe",
        "NormalizeForTraining",
        "OpenXarrayDataset",
        "SampleDataPipe",
        "Sampler",
        "TileDataPipe",
        "TilingSampler",
        "ToTensorDataPipe",
        "ToTorchTensor",
        "register_sampler_functional",
    ),
    "mlcast_pipes.datapipes.mix": ("MixDataPipe", "mix"),
    "mlcast_pipes.errors": (
        "CatalogError",
        "DatasetError",
        "IndexFileError",
        "MLCastPipesError",
        "ParameterError",
        "PipelineOrderError",
        "ReadError",
        "StaleIndexError",
    ),
    "mlcast_pipes.loader": ("Loader", "WorkerDiedError", "make_dataloader", "tune_malloc"),
    "mlcast_pipes.pipeline": ("compose", "load_pipeline"),
    "mlcast_pipes.splits": (
        "TimeSplit",
        "split_by_blocks",
        "split_by_ranges",
        "split_chronological",
    ),
    "mlcast_pipes.transforms": ("denormalize",),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "BinNormSampleDataPipe",
    "BinNormSampler",
    "CatalogError",
    "DatasetError",
    "IndexFileError",
    "Loader",
    "MLCastCatalogDataset",
    "MLCastOpener",
    "MLCastPipesError",
    "MixDataPipe",
    "NormalizeDataPipe",
    "NormalizeForTraining",
    "OpenXarrayDataset",
    "ParameterError",
    "PipelineOrderError",
    "ReadError",
    "SampleDataPipe",
    "Sampler",
    "StaleIndexError",
    "TileDataPipe",
    "TilingSampler",
    "TimeSplit",
    "ToTensorDataPipe",
    "ToTorchTensor",
    "WorkerDiedError",
    "__version__",
    "compose",
    "denormalize",
    "load_pipeline",
    "make_dataloader",
    "mix",
    "open_mlcast",
    "register_sampler_functional",
    "split_by_blocks",
    "split_by_ranges",
    "split_chronological",
    "tune_malloc",
]


def _import_quietly(module: str) -> ModuleType:
    with warnings.catch_warnings():
        # torchdata 0.9 warns that datapipes are deprecated; this package pins it on purpose
        warnings.filterwarnings("ignore", message=r"(?s).*deprecated", category=UserWarning)
        return importlib.import_module(module)


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("mlcast-pipes")
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            found = "0.0.0"
        globals()[name] = found
        return found
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_quietly(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _register_functionals() -> None:
    """Import the datapipes, whose class decorators register the functionals on IterDataPipe."""
    _import_quietly("mlcast_pipes.datapipes")
    _import_quietly("mlcast_pipes.datapipes.mix")


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Registers the functionals once ``torch`` has finished importing (a post-import hook)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # the hook runs once; the real finders locate torch
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register_functionals()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "torch" in sys.modules:
    _register_functionals()
elif not any(isinstance(f, _AfterTorch) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTorch())
