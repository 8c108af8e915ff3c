"""Tiling plans and tables: which tiling index a ``.tile()`` step uses, and its rows per array.

A plan makes (or finds) the index; a table is one array's tiles with their statistics.
"""

from __future__ import annotations

import contextlib
import errno
import os
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from filelock import FileLock

from mlcast_pipes import dataset as ds
from mlcast_pipes.dataset.ids import _absent_time_chunks
from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.format import INDEX_DIR_ENV, default_index_dir
from mlcast_pipes.indexes.sampling import SamplingIndex, build_sampling_index
from mlcast_pipes.indexes.tiling import TileIndex, prepare_tiling
from mlcast_pipes.reader import expect_chunks
from mlcast_pipes.records import DatasetInfo, TileSample
from mlcast_pipes.sampling.registry import sampler_name
from mlcast_pipes.splits import TimeSplit, tiles_within
from mlcast_pipes.tiling import TilingParams, tiling_id
from mlcast_pipes.transforms.rates import to_rain_rate_fn

__all__ = [
    "TileTable",
    "TilingPlan",
    "dataset_info",
    "iso_time",
    "iter_tables",
    "prepare_index",
]


#: id of an opened array -> (weak reference to it, its summary): one fingerprint per opening
_INFOS: dict[int, tuple[weakref.ref[xr.DataArray], DatasetInfo]] = {}


def dataset_info(da: xr.DataArray) -> DatasetInfo:
    """Summarise an opened archive for the steps after tiling (once per opened array).

    The fingerprint reads chunk sizes from the store (round trips to a remote one): it is
    computed when an array is first summarised and kept while that array lives. ``.open_mlcast()``
    opens a local archive again when its metadata files change, which gives a new array.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> da = mp.open_mlcast(archive)
    >>> info = dataset_info(da)
    >>> info.standard_name, info.units
    ('rainfall_flux', 'mm h-1')

    """
    known = _INFOS.get(id(da))
    if known is not None and known[0]() is da:
        return known[1]
    times = np.asarray(da["time"].values)
    info = DatasetInfo(
        spec=ds.source_spec(da),
        standard_name=str(da.attrs.get("standard_name", "")),
        units=str(da.attrs.get("units", "")),
        time_step=ds.nominal_time_step(times, da.attrs.get("consistent_timestep_start")),
        fingerprint=ds.fingerprint(da),
    )
    key = id(da)

    def forget(_: weakref.ref[xr.DataArray]) -> None:
        _INFOS.pop(key, None)

    _INFOS[key] = (weakref.ref(da, forget), info)
    return info


@dataclass
class TilingPlan:
    """How to tile archives: ``params``, ``index_dir``, optional ``split``; picklable.

    ``recompute`` recomputes a stale index instead of raising; ``progress`` shows a bar.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(mp.open_mlcast(archive))  # computed once, then read back
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

    ``index_dir`` defaults to :func:`default_index_dir`; ``recompute`` rebuilds a stale index
    instead of raising StaleIndexError.

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
            absent_chunks=lambda: _absent_time_chunks(info.spec, int(da.sizes["time"])),
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
    """The tiles of one archive usable in this run: ``info``, ``index``, kept ``rows``, ``name``.

    ``name`` is the tiling id plus the split's token when a split is applied.

    Examples
    --------
    >>> import tempfile
    >>> import mlcast_pipes as mp
    >>> from mlcast_pipes.demo import ensure_demo
    >>> archive = ensure_demo(Path(tempfile.gettempdir()) / "mlcast-doctest-tiny.zarr", "tiny")
    >>> params = TilingParams(n_time_window=12, tile_size=(64, 64))
    >>> plan = TilingPlan(params, Path(tempfile.mkdtemp()))
    >>> table = plan.table(mp.open_mlcast(archive))
    >>> pool = table.sampling_index("uniform", {}, n_time_sample=6, seed=0,
    ...                             index_dir=plan.index_dir)
    >>> len(pool.table) == len(table.rows)
    True

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
        """Load or build the sampling pool of these tiles for a sampler, under a file lock.

        Samplers see the statistics of each tile's drawn ``n_time_sample`` steps (the index's
        per-step statistics); an index written without them is stale when they are needed.
        """
        meta = dict(self.index.meta)
        meta["tiling_id"] = self.name
        window = self.index.params.n_time_window
        needed = n_time_sample is not None and n_time_sample < window
        if needed and not self.index.has_steps and sampler_name(method) != "uniform":
            self.index.read_steps()  # raises StaleIndexError naming the fix
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
                steps=self.index.read_steps if self.index.has_steps else None,
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
