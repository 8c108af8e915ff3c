"""mlcast-pipes: composable datapipes from MLCast radar archives to training batches.

Importing the package registers the functionals (``.open_mlcast()``, ``.tile()``, ...).
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlcast-pipes")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

with warnings.catch_warnings():
    # torchdata 0.9 warns on import that datapipes are deprecated; this package pins it on purpose.
    warnings.filterwarnings("ignore", message=r"(?s).*deprecated", category=UserWarning)
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
    from mlcast_pipes.loader import Loader, WorkerDiedError, make_dataloader, tune_malloc
    from mlcast_pipes.pipeline import compose, load_pipeline

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
from mlcast_pipes.splits import TimeSplit, split_by_blocks, split_by_ranges, split_chronological
from mlcast_pipes.transforms import denormalize

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
