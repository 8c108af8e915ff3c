"""The normalising step: ``.normalize()`` and ``NormalizeForTraining``, over the transform registry.

Reads each record's pixels if needed, converts units, clips clutter, scales, fills NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.errors import PipelineOrderError
from mlcast_pipes.records import DatasetInfo, TileSample
from mlcast_pipes.transforms import Normalizer, make_normalizer


@functional_datapipe("normalize")
class NormalizeDataPipe(IterDataPipe[TileSample]):
    """Scale each tile for training with a registered transform (its inverse undoes it).

    Functional name: ``normalize``. ``method="auto"`` picks by the variable's standard_name and
    units: LDCast's log rain rate for rates and amounts, the MLCast dBZ scaling for
    reflectivity. NaN becomes the method's fill value; ``mask=True`` keeps a validity mask.

    Parameters
    ----------
    source_datapipe : IterDataPipe of TileSample
        Tiles from ``.tile()`` or a sampler.
    method : str
        A transform name (:func:`mlcast_pipes.transforms.available_transforms`) or ``"auto"``.
    **params
        Passed to :func:`mlcast_pipes.transforms.make_normalizer` (``clip_max``, ``fill_nan``,
        ``mask``, the transform's own parameters).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> dp = IterableWrapper(["demo"]).open_mlcast().tile().normalize(method="ldcast")
    >>> dp.method
    'ldcast'

    """

    def __init__(
        self, source_datapipe: IterDataPipe[Any], method: str = "auto", **params: Any
    ) -> None:
        self.source_datapipe = source_datapipe
        self.method = method
        self.params = params
        self._normalizers: dict[DatasetInfo, Normalizer] = {}

    def normalizer(self, info: DatasetInfo) -> Normalizer:
        """The normaliser for one archive (built once per archive)."""
        if info not in self._normalizers:
            self._normalizers[info] = make_normalizer(
                self.method,
                standard_name=info.standard_name,
                units=info.units,
                time_step=info.time_step,
                **self.params,
            )
        return self._normalizers[info]

    def __iter__(self) -> Iterator[TileSample]:
        for sample in self.source_datapipe:
            if not isinstance(sample, TileSample):
                raise PipelineOrderError(
                    "normalize needs tiles: chain it after .tile() or a sampler "
                    f"(TilingSampler / BinNormSampler), got {type(sample).__name__}"
                )
            if sample.normalization is not None:
                raise PipelineOrderError(
                    f"tile {sample.tile_id} is already normalised ({sample.normalization}); "
                    "use one normalize step"
                )
            norm = self.normalizer(sample.info)
            out = norm(sample.load())
            if isinstance(out, tuple):
                sample.data, sample.mask = np.asarray(out[0]), np.asarray(out[1])
            else:
                sample.data = np.asarray(out)
            sample.normalization = norm.name
            yield sample


class NormalizeForTraining:
    """The seed's normalising step: ``NormalizeForTraining(method="auto")``.

    Examples
    --------
    >>> NormalizeForTraining().kwargs
    {}

    """

    requires = "samples"
    provides = "normalized"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __call__(self, source: IterDataPipe[Any]) -> NormalizeDataPipe:
        """Apply the step to an upstream datapipe."""
        return NormalizeDataPipe(source, **self.kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"NormalizeForTraining({args})"
