"""Datapipe adapters: one small IterDataPipe per pipeline step, registered as functionals.

Importing it registers .open_mlcast(), .tile(), the samplers, .normalize(), .to_tensor().
"""

from __future__ import annotations

from mlcast_pipes.datapipes.normalize import NormalizeDataPipe, NormalizeForTraining
from mlcast_pipes.datapipes.sample import (
    BinNormSampleDataPipe,
    BinNormSampler,
    SampleDataPipe,
    Sampler,
    register_sampler_functional,
)
from mlcast_pipes.datapipes.source import MLCastCatalogDataset, MLCastOpener, OpenXarrayDataset
from mlcast_pipes.datapipes.tensor import ToTensorDataPipe, ToTorchTensor
from mlcast_pipes.datapipes.tile import TileDataPipe, TilingSampler

__all__ = [
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
]
