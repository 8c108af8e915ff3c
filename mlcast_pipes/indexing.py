"""Index resolution for an opened archive: its tiling table and sampling pools, made once, shared.

Workers and ranks that need the same index take a file lock: one computes, the rest load.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from filelock import FileLock

from mlcast_pipes import dataset as ds
from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.index import read_sidecar, sidecar_path, write_sidecar
from mlcast_pipes.prepare import TileIndex, prepare_tiling
from mlcast_pipes.reader import TileRequest, expect_chunks, get_reader
from mlcast_pipes.records import DatasetInfo, TileSample
from mlcast_pipes.sampling import SamplingIndex, build_sampling_index, epoch_shares
from mlcast_pipes.splits import TimeSplit, tiles_within
from mlcast_pipes.tiling import TilingParams, tiling_id
from mlcast_pipes.transforms import (
    DEFAULT_CLIP_MAX,
    DEFAULT_DBZ_FLOOR,
    read_stats_csv,
    stats_filename,
    to_rain_rate_fn,
    write_stats_csv,
)

#: Environment variable naming the default folder of index files.
INDEX_DIR_ENV = "MLCAST_PIPES_INDEX_DIR"


def default_index_dir() -> Path:
    """The default folder of index files: ``$MLCAST_PIPES_INDEX_DIR``, else the cache.

    Examples
    --------
    >>> isinstance(default_index_dir(), Path)
    True

    """
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from mlcast_pipes.catalog import demo_cache_dir

    return demo_cache_dir() / "index"


def dataset_info(da: xr.DataArray) -> DatasetInfo:
    """Summarise an opened archive for the steps after tiling.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> info = dataset_info(da)
    >>> info.standard_name, info.units, info.time_step.astype("timedelta64[m]")
    ('rainfall_flux', 'mm h-1', np.timedelta64(5,'m'))

    """
    times = np.asarray(da["time"].values)
    return DatasetInfo(
        spec=ds.source_spec(da),
        standard_name=str(da.attrs.get("standard_name", "")),
        units=str(da.attrs.get("units", "")),
        time_step=ds.nominal_time_step(times, da.attrs.get("consistent_timestep_start")),
        fingerprint=ds.fingerprint(da),
    )


@dataclass
class TilingPlan:
    """How to tile archives: parameters, index folder, split. Picklable; no datapipe inside.

    Attributes
    ----------
    params : TilingParams
        Window length, tile size, strides, NaN threshold, statistics.
    index_dir : pathlib.Path
        Folder of the index files.
    split : TimeSplit, optional
        Keep only tiles whose frames all lie in this split.
    recompute : bool
        Recompute a stale index instead of raising.
    progress : bool
        Show a progress bar while computing statistics.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(da)  # computed once, then loaded from {tiling_id}.samples.csv
    >>> table.name.endswith(".64x64.12"), table.record(0).n_time
    (True, 12)

    """

    params: TilingParams
    index_dir: Path
    split: TimeSplit | None = None
    recompute: bool = False
    progress: bool = False
    _tables: dict[DatasetInfo, TileTable] = field(default_factory=dict, repr=False, compare=False)

    def table(self, da: xr.DataArray) -> TileTable:
        """Load or compute the tiling index of an opened archive, filtered by the split.

        The table is kept for the life of the plan (one load per process and archive version).
        """
        info = dataset_info(da)
        if info not in self._tables:
            self._tables[info] = self._make_table(da, info)
        table = self._tables[info]
        absent = table.index.meta.get("absent_chunks")
        if absent is not None:  # chunks there when indexed must be there when read
            expect_chunks(info.spec.url, info.spec.var_name, absent)
        return table

    def _make_table(self, da: xr.DataArray, info: DatasetInfo) -> TileTable:
        index = prepare_index(
            da, self.params, self.index_dir, recompute=self.recompute, progress=self.progress
        )
        rows = index.table
        name = index.tiling_id
        if self.split is not None:
            mask = self.split.frame_mask(np.asarray(da["time"].values))
            keep = tiles_within(rows["t_start"].to_numpy(), rows["n_time_window"].to_numpy(), mask)
            rows = rows.loc[keep].reset_index(drop=True)
            name = f"{name}.{self.split.token}"
            if rows.empty:
                raise ParameterError(
                    f"split {self.split.name!r} holds no tile of {info.dataset_id}: "
                    f"none of the {len(index.table)} tiles lies wholly inside its time ranges; "
                    + _split_hint(mask, self.params)
                )
        return TileTable(info=info, index=index, rows=rows, name=name)


def _split_hint(mask: np.ndarray, params: TilingParams) -> str:
    """What would give a split tiles: a smaller time stride, shorter windows, a wider split."""
    n = params.n_time_window
    st, ty, tx = params.effective_stride
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = edges[1::2] - edges[0::2]
    longest = int(runs.max()) if runs.size else 0
    fit = int(np.maximum(runs - n + 1, 0).sum()) if runs.size else 0
    text = f"its ranges hold {int(mask.sum())} frames, at most {longest} in a row; "
    if fit and st > 1:
        return text + (
            f"with a smaller time stride, e.g. stride=(1, {ty}, {tx}), up to {fit} windows of "
            f"{n} steps would fit (the stride {st} lattice misses them), or widen the split"
        )
    return text + f"use n_time_window <= {max(longest, 1)} or widen the split"


def prepare_index(
    da: xr.DataArray,
    params: TilingParams,
    index_dir: str | os.PathLike[str] | None = None,
    *,
    recompute: bool = False,
    progress: bool = False,
) -> TileIndex:
    """Load the tiling index of an opened archive, or compute it, under a file lock.

    Parameters
    ----------
    da : xarray.DataArray
        An archive opened with :func:`mlcast_pipes.dataset.open_mlcast`.
    params : TilingParams
        Tiling parameters.
    index_dir : str or path, optional
        Folder of the index files (:func:`default_index_dir` when None).
    recompute : bool
        Recompute a stale index instead of raising :class:`~mlcast_pipes.errors.StaleIndexError`.
    progress : bool
        Show a progress bar while computing.

    Returns
    -------
    TileIndex

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> index = prepare_index(da, TilingParams(n_time_window=12, tile_size=(64, 64)),
    ...                       tempfile.mkdtemp())
    >>> index.path.name.endswith(".64x64.12.samples.csv"), index.n_tiles > 0
    (True, True)

    """
    folder = Path(index_dir) if index_dir is not None else default_index_dir()
    info = dataset_info(da)
    folder = _ensure_folder(folder)
    with _file_lock(folder / f"{tiling_id(info.dataset_id, params)}.lock"):
        return prepare_tiling(
            da,
            params,
            folder,
            dataset_id=info.dataset_id,
            fingerprint=info.fingerprint,
            missing_times=ds.missing_times(da),
            to_rate=to_rain_rate_fn(info.standard_name, info.units, info.time_step),
            consistent_timestep_start=da.attrs.get("consistent_timestep_start"),
            recompute=recompute,
            progress=progress,
            absent_chunks=lambda: ds._absent_time_chunks(info.spec, int(da.sizes["time"])),
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold the file lock ``path``; in a folder this process cannot write, go on without it.

    There, complete index files are only read; writing a missing one raises IndexFileError.
    """
    lock = FileLock(str(path))
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _ensure_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexFileError(
            f"cannot create the index folder {folder}: {exc}; pass a writable index_dir "
            f"or set ${INDEX_DIR_ENV}"
        ) from exc
    return folder


@dataclass
class TileTable:
    """The tiles of one archive usable in this run: index rows plus the archive's description.

    Attributes
    ----------
    info : DatasetInfo
        The archive.
    index : TileIndex
        The full tiling index (file, sidecar, table).
    rows : pandas.DataFrame
        Rows of the index kept for this run (all, or those of one split).
    name : str
        The tiling id, plus the split's token when a split is applied.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(da)
    >>> pool = table.sampling_index("uniform", {}, n_time_sample=6, seed=0,
    ...                             index_dir=plan.index_dir)
    >>> len(pool.table) == len(table.rows), int(pool.table["n_time_sample"].iloc[0])
    (True, 6)

    """

    info: DatasetInfo
    index: TileIndex
    rows: pd.DataFrame
    name: str
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def column(self, name: str) -> np.ndarray:
        """One column of ``rows`` as a cached numpy array."""
        if name not in self._columns:
            self._columns[name] = self.rows[name].to_numpy()
        return self._columns[name]

    def record(self, pos: int) -> TileSample:
        """The tile at row position ``pos`` of ``rows`` as a lazy record."""
        c = self.column
        return TileSample(
            info=self.info,
            tile_id=int(c("tile_id")[pos]),
            t_start=int(c("t_start")[pos]),
            n_time=int(c("n_time_window")[pos]),
            y_start=int(c("y_start")[pos]),
            y_tile=int(c("y_tile")[pos]),
            x_start=int(c("x_start")[pos]),
            x_tile=int(c("x_tile")[pos]),
            time_start=iso_time(c("time_start")[pos]),
        )

    def sampling_index(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        n_time_sample: int | None,
        seed: int,
        index_dir: Path,
        recompute: bool = False,
    ) -> SamplingIndex:
        """Load or build the sampling pool of these tiles for a sampler, under a file lock."""
        meta = dict(self.index.meta)
        meta["tiling_id"] = self.name
        folder = _ensure_folder(index_dir)
        with _file_lock(folder / f"{self.name}.sampling.lock"):
            return build_sampling_index(
                self.rows,
                meta,
                method=method,
                index_dir=folder,
                n_time_sample=n_time_sample,
                seed=seed,
                recompute=recompute,
                **params,
            )


def iso_time(value: Any, offset_steps: int = 0, step: np.timedelta64 | None = None) -> str:
    """ISO 8601 text (to the second) of a time, optionally ``offset_steps`` steps later.

    Examples
    --------
    >>> iso_time(np.datetime64("2021-06-12T10:00"), 3, np.timedelta64(5, "m"))
    '2021-06-12T10:15:00'

    """
    t = np.datetime64(value, "ns")
    if offset_steps and step is not None:
        t = t + offset_steps * step.astype("timedelta64[ns]")
    return str(np.datetime_as_string(t, unit="s"))


def iter_tables(plan: TilingPlan, arrays: Iterator[xr.DataArray]) -> Iterator[TileTable]:
    """The tile table of every archive an upstream source yields.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> [t.info.dataset_id for t in iter_tables(plan, iter([da]))] == [da.attrs["dataset_id"]]
    True

    """
    for da in arrays:
        if not isinstance(da, xr.DataArray):
            from mlcast_pipes.errors import PipelineOrderError

            raise PipelineOrderError(
                f"tiling needs opened archives (xarray.DataArray) from .open_mlcast(), "
                f"MLCastCatalogDataset or OpenXarrayDataset, got {type(da).__name__}; put an "
                "open step before the tiling step"
            )
        yield plan.table(da)


# --------------------------------------------------------------------------------------------
# Statistics of a sampling, for the "fitted" normalisation
# --------------------------------------------------------------------------------------------

StatsWeighting = Literal["epoch", "pool"]


@dataclass(frozen=True)
class SamplingStats:
    """Mean and standard deviation of the samples of a sampling index, and their file.

    Attributes
    ----------
    path : pathlib.Path
        The ``{sampling_id}.stats.csv`` file (beside the sampling index).
    variable : str
        Row of the file: the archive's data variable.
    mean, std : float
        In rain rate mm/h after the normaliser's clipping (the input of the ``fitted``
        transform).

    Examples
    --------
    >>> s = SamplingStats(Path("idx/x.stats.csv"), "rainfall_rate", 0.5, 2.0)
    >>> s.normalize_params()
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
    >>> import pandas as pd
    >>> idx = SamplingIndex(Path("idx/a.12.binnorm.0123.samples.csv"), {}, pd.DataFrame(),
    ...                     "a.12.binnorm.0123")
    >>> stats_path(idx).as_posix()
    'idx/a.12.binnorm.0123.stats.csv'

    """
    return sampling_index.path.parent / stats_filename(sampling_index.sampling_id)


def epoch_weights(pool: pd.DataFrame) -> np.ndarray:
    """Expected share of an epoch each pool row gets (the draws of :func:`draw_epoch`).

    Binned pools (more than one bin id >= 0) draw every bin equally often, so a row of a bin
    holding ``k`` rows weighs ``1 / (n_bins * k)``; rows with a negative bin id are never
    drawn. Other pools draw every row equally often.

    Examples
    --------
    >>> import pandas as pd
    >>> epoch_weights(pd.DataFrame({"bin_id": [0, 0, 0, 1]})).tolist()
    [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]

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
    """Mean and standard deviation of the sampled tiles, as the ``fitted`` normaliser sees them.

    Pixels are read with the fast reader (each frame decoded once per read window), turned
    into rain rate in mm/h, clipped to ``[0, clip_max]`` exactly as
    :func:`mlcast_pipes.transforms.make_normalizer` clips them, and NaN (no data) is left out.

    Parameters
    ----------
    table : TileTable
        The tiles of the archive the sampling index was built from.
    sampling_index : SamplingIndex
        The sampling pool (rows with ``t_start``, ``t_offset``, ``n_time_sample``, positions).
    clip_max : float or None
        Clutter clip in mm/h (None: no clipping at all, as in the normaliser).
    dbz_floor : float
        Reflectivity at or below which there is no rain (dBZ archives).
    weighting : {"epoch", "pool"}
        ``"epoch"`` weighs each pool row by its expected share of an epoch (what the model
        sees: BinNorm's rare bins count as often as common ones); ``"pool"`` counts every row
        of the pool once.
    max_tiles : int, optional
        Use a seeded random subset of at most this many pool rows (None: all).
    seed : int
        Seed of that subset.
    progress : bool
        Show a progress bar on stderr, once the pass has taken two seconds.

    Returns
    -------
    (float, float)
        ``(mean, std)`` in mm/h.

    Raises
    ------
    ParameterError
        Bad ``weighting``/``max_tiles``, or no valid pixel in the sampled tiles.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(da)
    >>> pool = table.sampling_index("uniform", {}, n_time_sample=None, seed=0,
    ...                             index_dir=plan.index_dir)
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
    """Load or compute the statistics file ``{sampling_id}.stats.csv`` of a sampling index.

    The file (``variable,mean,std``, one row for the archive's data variable) is written
    atomically beside the sampling CSV, under a file lock, so workers and ranks that need it
    at the same time compute it once. An existing file is loaded unless it is older than the
    sampling CSV (the pool was rebuilt), was computed with other parameters (``clip_max``,
    ``dbz_floor``, ``weighting``, ``max_tiles``, ``seed``, recorded in the sidecar
    ``{sampling_id}.stats.meta.json``), or ``recompute`` is set: then it is computed again. The
    numbers are those of :func:`compute_sampling_stats` (rain rate in mm/h after clipping).

    Parameters
    ----------
    table : TileTable
        The tiles of the archive (from :meth:`TilingPlan.table`).
    sampling_index : SamplingIndex
        Its sampling index (from :meth:`TileTable.sampling_index`).
    clip_max, dbz_floor, weighting, max_tiles, seed
        As for :func:`compute_sampling_stats`.
    recompute : bool
        Compute and rewrite the file even if a current one exists.
    progress : bool
        Show a progress bar while computing, once that has taken two seconds.

    Returns
    -------
    SamplingStats

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(da)
    >>> pool = table.sampling_index("binnorm", {"n_scalar_total_bins": 5}, n_time_sample=None,
    ...                             seed=0, index_dir=plan.index_dir)
    >>> stats = sampling_stats(table, pool)
    >>> stats.path.name == f"{pool.sampling_id}.stats.csv", stats.variable
    (True, 'rainfall_rate')
    >>> tiles = mp.TileDataPipe(mp.OpenXarrayDataset(archive), 12, (64, 64),
    ...                         index_dir=plan.index_dir)
    >>> fitted = tiles.binnorm_sample(n_scalar_total_bins=5).normalize(method="fitted")
    >>> next(iter(fitted)).normalization  # the statistics file above is loaded
    'fitted'

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
