"""Fitted statistics of a sampling index: mean and std of the transformed pixels.

Computed once over the pool (or an epoch's weights) and cached next to the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.format import read_sidecar, sidecar_path, write_sidecar
from mlcast_pipes.indexes.plan import TileTable, _ensure_folder, _file_lock
from mlcast_pipes.indexes.sampling import SamplingIndex
from mlcast_pipes.indexes.stats import read_stats_csv, stats_filename, write_stats_csv
from mlcast_pipes.reader import TileRequest, get_reader
from mlcast_pipes.sampling.registry import epoch_shares
from mlcast_pipes.transforms.normalize import DEFAULT_CLIP_MAX
from mlcast_pipes.transforms.rates import DEFAULT_DBZ_FLOOR, to_rain_rate_fn

__all__ = [
    "SamplingStats",
    "StatsWeighting",
    "compute_sampling_stats",
    "epoch_weights",
    "sampling_stats",
    "stats_path",
]


StatsWeighting = Literal["epoch", "pool"]


@dataclass(frozen=True)
class SamplingStats:
    """Mean and std (mm/h, after clipping: the ``fitted`` transform's input) and their file.

    Examples
    --------
    >>> SamplingStats(Path("idx/x.stats.csv"), "rainfall_rate", 0.5, 2.0).normalize_params()
    {'mean': 0.5, 'std': 2.0}

    """

    path: Path
    variable: str
    mean: float
    std: float

    def normalize_params(self) -> dict[str, float]:
        """The parameters of ``.normalize(method="fitted", ...)`` and ``denormalize``."""
        return {"mean": self.mean, "std": self.std}


def stats_path(sampling_index: SamplingIndex) -> Path:
    """Where the statistics of a sampling index live: ``{sampling_id}.stats.csv`` beside it.

    Examples
    --------
    >>> path = Path("idx/a.8.uniform.01.samples.csv")
    >>> idx = SamplingIndex(path, {}, pd.DataFrame(), "a.8.uniform.01")
    >>> stats_path(idx).name
    'a.8.uniform.01.stats.csv'

    """
    return sampling_index.path.parent / stats_filename(sampling_index.sampling_id)


def epoch_weights(pool: pd.DataFrame) -> np.ndarray:
    """Expected share of an epoch for each pool row (as :func:`draw_epoch` draws).

    Examples
    --------
    >>> epoch_weights(pd.DataFrame({"bin_id": [0, 0, 0, 1]})).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]

    """
    return epoch_shares(pool)


def compute_sampling_stats(
    table: TileTable,
    sampling_index: SamplingIndex,
    *,
    clip_max: float | None = DEFAULT_CLIP_MAX,
    dbz_floor: float = DEFAULT_DBZ_FLOOR,
    weighting: StatsWeighting = "epoch",
    max_tiles: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[float, float]:
    """``(mean, std)`` in mm/h of the sampled pixels, clipped to ``[0, clip_max]``, NaN left out.

    ``weighting="epoch"`` weighs rows by their share of an epoch, ``"pool"`` counts each once;
    ``max_tiles`` takes a seeded subset. ParameterError when no pixel is valid.

    Examples
    --------
    >>> from mlcast_pipes.indexes.plan import TilingPlan
    >>> from mlcast_pipes.tiling import TilingParams
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> plan = TilingPlan(TilingParams(n_time_window=12, tile_size=(64, 64)), Path("i"))
    >>> table = plan.table(mp.open_mlcast(archive))
    >>> pool = table.sampling_index("uniform", {}, n_time_sample=None, seed=0, index_dir=Path("i"))
    >>> mean, std = compute_sampling_stats(table, pool)
    >>> 0 < mean < std
    True

    """
    if weighting not in ("epoch", "pool"):
        raise ParameterError(f"weighting must be 'epoch' or 'pool', got {weighting!r}")
    pool = sampling_index.table
    weights = epoch_weights(pool) if weighting == "epoch" else np.ones(len(pool))
    rows = np.flatnonzero(weights > 0)
    if max_tiles is not None:
        if max_tiles < 1:
            raise ParameterError(f"max_tiles must be >= 1 (or None for all), got {max_tiles}")
        if rows.size > max_tiles:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 17])
            rows = np.sort(rng.choice(rows, size=max_tiles, replace=False))
    info = table.info
    to_rate = to_rain_rate_fn(info.standard_name, info.units, info.time_step, dbz_floor=dbz_floor)
    low, high = (None, None) if clip_max is None else (0.0, float(clip_max))
    col = {c: pool[c].to_numpy() for c in _STATS_COLUMNS}
    reader = get_reader(info.spec.url, info.spec.var_name, info.spec.storage_options)
    total_w = total_mean = total_m2 = 0.0
    starts = col["t_start"][rows]
    from mlcast_pipes.progress import progress_bar

    bar = progress_bar(
        rows.size, f"statistics {sampling_index.sampling_id}", unit="samples", enabled=progress
    )
    for key in np.unique(starts):
        group = rows[starts == key]
        bar.update(group.size)
        requests = [
            TileRequest(
                int(col["t_start"][r]) + int(col["t_offset"][r]),
                int(col["n_time_sample"][r]),
                int(col["y_start"][r]),
                int(col["y_tile"][r]),
                int(col["x_start"][r]),
                int(col["x_tile"][r]),
            )
            for r in group
        ]
        for r, data in zip(group, reader.read_tiles(requests, cache=False), strict=True):
            values = np.asarray(to_rate(data) if to_rate is not None else data, dtype=np.float64)
            if low is not None and high is not None:
                values = np.clip(values, low, high)
            values = values[~np.isnan(values)]
            if values.size == 0:
                continue
            w = float(weights[r]) * values.size
            mean = float(values.mean())
            m2 = float(np.square(values - mean).sum()) * float(weights[r])
            # Chan's combination, with every pixel of this tile weighing weights[r]
            new_w = total_w + w
            delta = mean - total_mean
            total_mean += delta * w / new_w
            total_m2 += m2 + delta * delta * total_w * w / new_w
            total_w = new_w
    bar.close()
    if total_w <= 0:
        raise ParameterError(
            f"cannot fit mean/std for {sampling_index.sampling_id}: its sampled tiles hold no "
            "valid (non-NaN) pixel; check the sampler's parameters and the archive's coverage"
        )
    return total_mean, math.sqrt(max(total_m2, 0.0) / total_w)


_STATS_COLUMNS = ("t_start", "t_offset", "n_time_sample", "y_start", "y_tile", "x_start", "x_tile")


def sampling_stats(
    table: TileTable,
    sampling_index: SamplingIndex,
    *,
    clip_max: float | None = DEFAULT_CLIP_MAX,
    dbz_floor: float = DEFAULT_DBZ_FLOOR,
    weighting: StatsWeighting = "epoch",
    max_tiles: int | None = None,
    seed: int = 0,
    recompute: bool = False,
    progress: bool = False,
) -> SamplingStats:
    """Load or compute ``{sampling_id}.stats.csv`` beside the sampling CSV, under a file lock.

    Recomputed when older than the sampling CSV, made with other options, or with ``recompute``.

    Examples
    --------
    >>> from mlcast_pipes.indexes.plan import TilingPlan
    >>> from mlcast_pipes.tiling import TilingParams
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> plan = TilingPlan(TilingParams(n_time_window=12, tile_size=(64, 64)), Path("i"))
    >>> table = plan.table(mp.open_mlcast(archive))
    >>> pool = table.sampling_index("uniform", {}, n_time_sample=None, seed=0, index_dir=Path("i"))
    >>> sampling_stats(table, pool).path.name == f"{pool.sampling_id}.stats.csv"
    True

    """
    path = stats_path(sampling_index)
    meta_path = sidecar_path(path)  # {sampling_id}.stats.meta.json
    variable = table.info.spec.var_name
    folder = _ensure_folder(path.parent)
    params = {
        "clip_max": clip_max,
        "dbz_floor": dbz_floor,
        "weighting": weighting,
        "max_tiles": max_tiles,
        "seed": seed,
        "sampling_csv_sha256": sampling_index.meta.get("csv_sha256"),
    }
    with _file_lock(folder / f"{sampling_index.sampling_id}.stats.lock"):
        if (
            not recompute
            and _is_current(path, sampling_index.path)
            and _stats_params(meta_path) == params
        ):
            stats = read_stats_csv(path)
            if variable in stats:
                mean, std = stats[variable]
                return SamplingStats(path, variable, mean, std)
        mean, std = compute_sampling_stats(
            table,
            sampling_index,
            clip_max=clip_max,
            dbz_floor=dbz_floor,
            weighting=weighting,
            max_tiles=max_tiles,
            seed=seed,
            progress=progress,
        )
        meta_path.unlink(missing_ok=True)  # never pair new numbers with old parameters
        write_stats_csv(path, {variable: (mean, std)})
        write_sidecar(meta_path, params)
    return SamplingStats(path, variable, mean, std)


def _stats_params(meta_path: Path) -> dict[str, Any] | None:
    """The parameters a statistics file was computed with (None if unknown or unreadable)."""
    try:
        return read_sidecar(meta_path)
    except IndexFileError:
        return None


def _is_current(path: Path, source: Path) -> bool:
    """Whether ``path`` exists and is not older than ``source``."""
    try:
        return path.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        return path.exists()
