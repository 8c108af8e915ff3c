"""Index resolution for an opened archive: its tiling table and sampling pools, made once, shared.

Workers and ranks that need the same index take a file lock: one computes, the rest load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from filelock import FileLock

from mlcast_pipes import dataset as ds
from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.prepare import TileIndex, prepare_tiling
from mlcast_pipes.records import DatasetInfo, TileSample
from mlcast_pipes.sampling import SamplingIndex, build_sampling_index
from mlcast_pipes.splits import TimeSplit, tiles_within
from mlcast_pipes.tiling import TilingParams, tiling_id
from mlcast_pipes.transforms import to_rain_rate_fn

#: Environment variable naming the default folder of index files.
INDEX_DIR_ENV = "MLCAST_PIPES_INDEX_DIR"


def default_index_dir() -> Path:
    """The default folder of index files: ``$MLCAST_PIPES_INDEX_DIR``, else the cache."""
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from mlcast_pipes.catalog import demo_cache_dir

    return demo_cache_dir() / "index"


def dataset_info(da: xr.DataArray) -> DatasetInfo:
    """Summarise an opened archive for the steps after tiling."""
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
        return self._tables[info]

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
                    "widen the split or use shorter windows"
                )
        return TileTable(info=info, index=index, rows=rows, name=name)


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

    """
    folder = Path(index_dir) if index_dir is not None else default_index_dir()
    info = dataset_info(da)
    folder = _ensure_folder(folder)
    lock = FileLock(str(folder / f"{tiling_id(info.dataset_id, params)}.lock"))
    with lock:
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
        )


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
        with FileLock(str(folder / f"{self.name}.sampling.lock")):
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
    """ISO 8601 text (to the second) of a time, optionally ``offset_steps`` steps later."""
    t = np.datetime64(value, "ns")
    if offset_steps and step is not None:
        t = t + offset_steps * step.astype("timedelta64[ns]")
    return str(np.datetime_as_string(t, unit="s"))


def iter_tables(plan: TilingPlan, arrays: Iterator[xr.DataArray]) -> Iterator[TileTable]:
    """The tile table of every archive an upstream source yields."""
    for da in arrays:
        if not isinstance(da, xr.DataArray):
            from mlcast_pipes.errors import PipelineOrderError

            raise PipelineOrderError(
                f"tiling needs opened archives (xarray.DataArray) from .open_mlcast(), "
                f"MLCastCatalogDataset or OpenXarrayDataset, got {type(da).__name__}; put an "
                "open step before the tiling step"
            )
        yield plan.table(da)
