"""The normalising step: ``.normalize()`` and ``NormalizeForTraining``, over the transform registry.

Reads each record's pixels if needed, converts units, clips clutter, scales, fills NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes.sample import SampleDataPipe
from mlcast_pipes.datapipes.steps import Stage, Step, StepFactory, nearest
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.indexes.plan import iter_tables
from mlcast_pipes.indexes.sampling_stats import SamplingStats, sampling_stats
from mlcast_pipes.records import DatasetInfo, TileSample
from mlcast_pipes.transforms import DEFAULT_CLIP_MAX, DEFAULT_DBZ_FLOOR, Normalizer, make_normalizer

__all__ = [
    "NormalizeDataPipe",
    "NormalizeForTraining",
]


#: Parameters that give the ``fitted`` transform its statistics explicitly.
_FITTED_EXPLICIT = ("mean", "std", "stats_file")


@functional_datapipe("normalize")
class NormalizeDataPipe(Step, IterDataPipe[TileSample]):
    """Scale each tile for training with a registered transform (functional name ``normalize``).

    ``method="auto"`` picks LDCast's log rain rate for rates and amounts, the MLCast dBZ scaling
    for reflectivity. ``method="fitted"`` standardises with ``mean=``/``std=``, ``stats_file=``,
    or by default the statistics of the upstream sampler's pool (``{sampling_id}.stats.csv``,
    computed on first use). Other ``**params`` go to
    :func:`mlcast_pipes.transforms.make_normalizer` (``clip_max``, ``fill_nan``, ``mask``).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> dp = IterableWrapper(["demo"]).open_mlcast().tile().uniform_sample().normalize()
    >>> round(float(next(iter(dp)).data.min()), 3)  # LDCast's image of no rain
    -3.121

    """

    def __init__(
        self, source_datapipe: IterDataPipe[Any], method: str = "auto", **params: Any
    ) -> None:
        self.source_datapipe = source_datapipe
        self.method = method
        weighting = params.pop("stats_weighting", "epoch")
        if weighting not in ("epoch", "pool"):
            raise ParameterError(f"stats_weighting must be 'epoch' or 'pool', got {weighting!r}")
        self.stats_options = {
            "max_tiles": params.pop("stats_max_tiles", None),
            "weighting": weighting,
        }
        self.params = params
        # The sampler is looked up, not stored: a second reference to it would make the
        # datapipe graph (sharding, seeding) see it twice.
        self.uses_sampler_stats = method == "fitted" and not any(
            k in params for k in _FITTED_EXPLICIT
        )
        if self.uses_sampler_stats and self.sampler is None:
            raise ParameterError(
                "normalize(method='fitted') needs the training statistics: pass mean=..., "
                "std=... (mm/h) or stats_file='<sampling_id>.stats.csv', or put a sampler "
                "(e.g. .binnorm_sample(), BinNormSampler) before it so that its "
                "{sampling_id}.stats.csv is used"
            )
        self._normalizers: dict[DatasetInfo, Normalizer] = {}
        self._stats: dict[DatasetInfo, SamplingStats] = {}

    @property
    def sampler(self) -> Any:
        """The nearest sampling step upstream (None if there is none)."""
        return _find_sampler(self.source_datapipe)

    provides: ClassVar[Stage] = "normalized"
    accepts: ClassVar[tuple[Stage, ...]] = ("tiles", "samples")

    def prepare(self) -> None:
        """Load (or compute) the statistics files of ``method="fitted"``."""
        self.fitted_stats()

    def fitted_stats(self) -> dict[DatasetInfo, SamplingStats]:
        """Load (or compute) the statistics files of the upstream sampler, one per archive.

        Only for ``method="fitted"`` without explicit statistics; empty otherwise.
        """
        if not self.uses_sampler_stats:
            return {}
        if not self._stats:
            sampler = self.sampler
            tables = list(iter_tables(sampler.plan, iter(sampler.source_datapipe)))
            pools = sampler.sampling_indexes()
            for table, pool in zip(tables, pools, strict=True):
                self._stats[table.info] = sampling_stats(
                    table,
                    pool,
                    clip_max=self.params.get("clip_max", DEFAULT_CLIP_MAX),
                    dbz_floor=self.params.get("dbz_floor", DEFAULT_DBZ_FLOOR),
                    seed=int(getattr(sampler, "seed", 0)),
                    # the chain's progress setting, that of .tile()
                    **{"progress": sampler.plan.progress, **self.stats_options},
                )
        return self._stats

    def normalizer(self, info: DatasetInfo) -> Normalizer:
        """The normaliser for one archive (built once per archive)."""
        if info not in self._normalizers:
            params = dict(self.params)
            if self.uses_sampler_stats:
                stats = self.fitted_stats().get(info)
                if stats is None:
                    raise ParameterError(
                        f"no statistics for {info.dataset_id}: the sampler before "
                        "normalize(method='fitted') does not read this archive"
                    )
                params.update(stats.normalize_params())
            self._normalizers[info] = make_normalizer(
                self.method,
                standard_name=info.standard_name,
                units=info.units,
                time_step=info.time_step,
                **params,
            )
        return self._normalizers[info]

    def __iter__(self) -> Iterator[TileSample]:
        # Before iterating: the statistics are found by iterating the sources upstream, which
        # a datapipe allows only one iterator at a time.
        self.fitted_stats()
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


def _find_sampler(dp: Any) -> SampleDataPipe | None:
    """The nearest sampling step from ``dp`` (included) upwards, or None."""
    return nearest(dp, SampleDataPipe)


class NormalizeForTraining(StepFactory):
    """The seed's normalising step: ``NormalizeForTraining(method="auto")``.

    Examples
    --------
    >>> step = NormalizeForTraining(method="fitted")
    >>> step.provides, step.accepts  # it follows .tile() or a sampler
    ('normalized', ('tiles', 'samples'))

    """

    step = NormalizeDataPipe
