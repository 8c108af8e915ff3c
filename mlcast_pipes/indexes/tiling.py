"""The tiling index: one dask pass over the archive that writes per-tile statistics to a CSV.

:func:`prepare_tiling` writes it (the ``prepare`` command); :class:`TileIndex` reads it back.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from dask.callbacks import Callback

from mlcast_pipes.errors import DatasetError, IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import (
    CSV_SUFFIX,
    FORMAT_VERSION,
    STEPS_SUFFIX,
    VerifyMode,
    atomic_write,
    ensure_writable_dir,
    file_sha256,
    importance_column,
    index_paths,
    package_version,
    read_sidecar,
    sidecar_path,
    tiling_dtypes,
    utc_now_iso,
)
from mlcast_pipes.indexes.index_csv import (
    read_index_table,
    resolve_csv_path,
    validate_index,
    write_index,
)
from mlcast_pipes.tiling import (
    HIST_LOG_EDGES,
    KERNEL_NAME_PREFIX,
    N_BINS,
    TilingParams,
    iter_tile_statistics,
    partials_dtype,
    steps_dtype,
    tile_grid,
    tiling_id,
    time_windows,
)

__all__ = [
    "TileIndex",
    "prepare_tiling",
]


_RERUN = "rerun `mlcast-pipes prepare` for this dataset"


@dataclass
class TileIndex:
    """A complete tiling index on disk: CSV ``path``, sidecar ``meta``, ``tiling_id``, lazy table.

    Examples
    --------
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(8) * np.timedelta64(5, "m")
    >>> da = xr.DataArray(np.zeros((8, 64, 64), np.float32), dims=("time", "y", "x"),
    ...                   coords={"time": times})
    >>> params = TilingParams(n_time_window=4, tile_size=(32, 32))
    >>> made = prepare_tiling(da, params, "ti", dataset_id="demo", fingerprint="v1")
    >>> index = TileIndex.open("ti", made.tiling_id, expected_params=params)
    >>> index.sidecar.name, index.n_tiles, index.rejected
    ('demo.32x32.4.meta.json', 8, {'gap': 0, 'nan': 0})

    """

    path: Path
    meta: dict[str, Any]
    tiling_id: str
    _columns: Sequence[str] | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        index_id: str | None = None,
        *,
        expected_params: TilingParams | Mapping[str, Any] | None = None,
        expected_fingerprint: str | None = None,
        verify: VerifyMode = "size",
    ) -> TileIndex:
        """Open and check an existing tiling index (see :func:`validate_index`).

        ``path`` is the CSV or sidecar, or the folder with ``index_id``; a change of
        ``expected_params`` or ``expected_fingerprint`` raises StaleIndexError naming it.
        """
        csv = resolve_csv_path(path, index_id)
        wanted = (
            expected_params.to_dict()
            if isinstance(expected_params, TilingParams)
            else (expected_params)
        )
        meta = validate_index(
            csv,
            kind="tiling",
            expected_params=wanted,
            expected_fingerprint=expected_fingerprint,
            verify=verify,
            rerun_hint=_RERUN,
        )
        return cls(path=csv, meta=meta, tiling_id=str(meta.get("tiling_id", csv.name)))

    @property
    def sidecar(self) -> Path:
        """Path of the metadata sidecar."""
        return sidecar_path(self.path)

    @property
    def params(self) -> TilingParams:
        """Tiling parameters the index was made with."""
        return TilingParams.from_dict(self.meta["params"])

    @property
    def n_tiles(self) -> int:
        """Number of kept tiles (rows)."""
        return int(self.meta["n_rows"])

    @property
    def rejected(self) -> dict[str, int]:
        """Rejected candidate tiles by reason (``gap``, ``nan``)."""
        return {k: int(v) for k, v in self.meta.get("rejected", {}).items()}

    @property
    def steps_path(self) -> Path:
        """Path of the per-step statistics (``{tiling_id}.steps.bin``)."""
        return _steps_path(self.path)

    @property
    def has_steps(self) -> bool:
        """Whether the index was written with per-step statistics (older indexes were not)."""
        return isinstance(self.meta.get("steps"), dict)

    def read_steps(self, verify: VerifyMode = "sha256") -> np.ndarray:
        """Per-step statistics, ``(n_tiles, n_time_window)`` records (a read-only memory map).

        Row ``i`` is tile ``i``; see :func:`~mlcast_pipes.tiling.steps.steps_dtype`. Raises
        StaleIndexError for an index written without them, IndexFileError for a missing or
        changed file; both name the fix (recompute the tiling index).
        """
        info = self.meta.get("steps")
        fix = f"fix: {_RERUN} with recompute=True (CLI --recompute)"
        if not isinstance(info, dict):
            raise StaleIndexError(
                f"the tiling index {self.path.name} has no per-step statistics (written by an "
                f"older version); {fix}"
            )
        path = self.steps_path
        dtype = np.dtype([(str(n), str(t)) for n, t in info["dtype"]])
        shape = (int(self.meta["n_rows"]), int(info["n_steps"]))
        size = path.stat().st_size if path.is_file() else None
        if size != int(info["bytes"]) or size != shape[0] * shape[1] * dtype.itemsize:
            found = "is missing" if size is None else f"has {size} bytes, not {info['bytes']}"
            raise IndexFileError(f"{path} {found}; {fix}")
        if verify == "sha256" and file_sha256(path) != info["sha256"]:
            raise IndexFileError(f"{path} changed since it was written (sha256 differs); {fix}")
        if shape[0] == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def read(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Read the table (compact dtypes), optionally only some columns."""
        return read_index_table(self.path, self.meta, columns=columns)

    @cached_property
    def table(self) -> pd.DataFrame:
        """The whole table, read on first access and cached."""
        return self.read(self._columns)

    def summary(self) -> str:
        """One-paragraph human summary: tiles kept and rejected by reason."""
        m = self.meta
        rej = self.rejected
        win = m.get("windows", {})
        n_sp = int(m.get("n_spatial_tiles", 0))
        cand = int(win.get("candidates", 0)) * n_sp
        kept = self.n_tiles
        pct = 100.0 * kept / cand if cand else 0.0
        p = m.get("params", {})
        detail = ", ".join(
            f"{win.get(k, 0)} {label}"
            for k, label in (
                ("gap", "cross a time gap"),
                ("step_change", "span a change of time step"),
                ("missing_time", "contain a missing time"),
            )
            if win.get(k, 0)
        )
        lines = [
            f"tiling {self.tiling_id}: {kept} tiles kept of {cand} candidates ({pct:.1f}%)",
            f"  {win.get('valid', 0)} valid of {win.get('candidates', 0)} candidate time windows "
            f"x {n_sp} spatial positions (tile {p.get('tile_size')}, {p.get('n_time_window')} "
            f"steps, stride {p.get('stride')})",
            f"  rejected: {rej.get('gap', 0)} for time gaps"
            + (f" (windows: {detail})" if detail else "")
            + f", {rej.get('nan', 0)} for NaN fraction > {p.get('max_nan_fraction')}",
            f"  file: {self.path}",
        ]
        return "\n".join(lines)


def _steps_path(csv: Path) -> Path:
    return csv.with_name(csv.name[: -len(CSV_SUFFIX)] + STEPS_SUFFIX)


class _ProgressBar:
    """The pass's progress bar (:func:`~mlcast_pipes.progress.progress_bar`), in frames read."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        from mlcast_pipes.progress import progress_bar

        self.total = max(int(total), 1)
        self.done = 0
        self._lock = threading.Lock()
        self._bar = progress_bar(self.total, label, file=stream or sys.stderr)

    def advance(self, k: int) -> None:
        with self._lock:
            step = min(self.done + int(k), self.total) - self.done
            self.done += step
            self._bar.update(step)

    def set(self, done: int) -> None:
        with self._lock:
            step = max(self.done, min(int(done), self.total)) - self.done
            self.done += step
            self._bar.update(step)

    def close(self) -> None:
        self._bar.close()


class _FrameCallback(Callback):  # type: ignore[misc]
    """Counts finished per-frame kernel tasks over all blocks (local dask schedulers)."""

    def __init__(self, bar: _ProgressBar, dtype: np.dtype[Any]) -> None:
        super().__init__()
        self._bar = bar
        self._dtype = dtype

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        # fused tasks are renamed ("getitem-mlcast-...") and aliased back to our key: count the
        # key with our exact prefix only, once per kernel output
        if (
            isinstance(key, tuple)
            and isinstance(key[0], str)
            and key[0].startswith(KERNEL_NAME_PREFIX)
            and isinstance(result, np.ndarray)
            and result.dtype == self._dtype
        ):
            self._bar.advance(len(result))


def _check_dataarray(da: Any) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise DatasetError(
            f"prepare_tiling needs an xarray.DataArray (time, y, x), got {type(da).__name__}; "
            "fix: open the archive with mlcast_pipes.dataset.open_mlcast(...) or pick a variable "
            "of the Dataset (ds[name])"
        )
    if da.ndim != 3:
        raise DatasetError(
            f"the data variable must have 3 dims (time, y, x), it has {da.dims}; fix: select a "
            "single level/member so that only time, y and x remain"
        )
    if "time" not in da.dims:
        raise DatasetError(
            f"the data variable has dims {da.dims} but no 'time' dim; fix: rename the time "
            "dimension to 'time'"
        )
    if da.dims[0] != "time":
        other = [d for d in da.dims if d != "time"]
        da = da.transpose("time", *other)
    assert isinstance(da, xr.DataArray)
    if "time" not in da.coords:
        raise DatasetError(
            "the data variable has no 'time' coordinate; fix: open the archive with decoded times"
        )
    return da


def _source_label(da: xr.DataArray, dataset_id: str) -> str:
    """How read errors name the archive: its path or URL when known, else the dataset id."""
    spec = da.encoding.get("mlcast_source")
    url = getattr(spec, "url", None)
    if isinstance(url, str) and url:
        return f"{url!r} (dataset {dataset_id!r})"
    return f"dataset {dataset_id!r}"


def _no_tile_message(
    dataset_id: str, params: TilingParams, win: Mapping[str, int], n_sp: int, nan_rej: int
) -> str:
    gap = (win["candidates"] - win["valid"]) * n_sp
    return (
        f"no valid tile in dataset {dataset_id!r}: of {win['candidates']} candidate windows x "
        f"{n_sp} spatial positions, {gap} were rejected for time gaps ({win['gap']} windows cross "
        f"a gap, {win['step_change']} a change of time step, {win['missing_time']} a missing time) "
        f"and {nan_rej} for NaN fraction > {params.max_nan_fraction}; fix: use a shorter "
        "n_time_window or a smaller temporal stride (gaps), a larger max_nan_fraction or a smaller "
        "tile_size (NaN), or check that the archive covers the radar domain"
    )


def _from_another_archive(exc: StaleIndexError, side: Path, da: xr.DataArray) -> StaleIndexError:
    """``exc``, saying so when the stale index was made from another archive with this id."""
    made_from = read_sidecar(side).get("source_url")
    url = getattr(da.encoding.get("mlcast_source"), "url", None)
    if "fingerprint" not in str(exc) or not made_from or not url or made_from == url:
        return exc
    return StaleIndexError(
        f"{exc}. The index was made from {made_from!r}, this archive is {url!r}: if they are "
        "different archives with one dataset id (e.g. a subset that kept the identifier), give "
        "this one its own id (open_mlcast(..., dataset_id='...')) or its own index_dir"
    )


def prepare_tiling(
    da: xr.DataArray,
    params: TilingParams,
    index_dir: str | os.PathLike[str],
    *,
    dataset_id: str,
    fingerprint: str,
    missing_times: np.ndarray | None = None,
    to_rate: Callable[[np.ndarray], np.ndarray] | None = None,
    consistent_timestep_start: Any = None,
    recompute: bool = False,
    on_stale: Literal["raise", "recompute"] = "raise",
    progress: bool = False,
    block_frames: int = 512,
    verify: VerifyMode = "sha256",
    absent_chunks: Callable[[], list[int]] | None = None,
) -> TileIndex:
    """Load the tiling index of ``da`` for ``params``, or compute and write it (``prepare``).

    The index is ``{index_dir}/{tiling_id}.samples.csv`` plus its sidecar, computed in one dask
    pass of ``block_frames`` frames at a time and written atomically. An index of other
    parameters or ``fingerprint`` raises StaleIndexError unless ``recompute`` (or
    ``on_stale="recompute"``). ``to_rate`` maps native values to mm/h (None: already mm/h);
    ``missing_times`` and ``consistent_timestep_start`` default to ``da``'s attributes;
    ``absent_chunks`` (time chunks absent from the store) is recorded. Raises ParameterError
    (bad parameters, no valid tile) or IndexFileError (damaged index, folder not writable).

    Examples
    --------
    >>> times = np.datetime64("2024-05-01T00:00") + np.arange(8) * np.timedelta64(5, "m")
    >>> rain = np.zeros((8, 64, 64), dtype=np.float32)
    >>> rain[:, 40:, 40:] = np.nan
    >>> da = xr.DataArray(rain, dims=("time", "y", "x"), coords={"time": times})
    >>> params = TilingParams(n_time_window=4, tile_size=(32, 32))
    >>> index = prepare_tiling(da, params, "idx", dataset_id="demo", fingerprint="v1")
    >>> print(index.summary())
    tiling demo.32x32.4: 6 tiles kept of 8 candidates (75.0%)
      2 valid of 2 candidate time windows x 4 spatial positions (tile [32, 32], 4 steps,
      stride [4, 32, 32])
      rejected: 0 for time gaps, 2 for NaN fraction > 0.05
      file: idx/demo.32x32.4.samples.csv

    """
    if not isinstance(params, TilingParams):
        raise ParameterError(
            f"params must be a TilingParams, got {type(params).__name__}; fix: pass "
            "TilingParams(n_time_window=..., tile_size=...)"
        )
    if on_stale not in ("raise", "recompute"):
        raise ParameterError(f"on_stale={on_stale!r}; fix: use 'raise' or 'recompute'")
    da = _check_dataarray(da)
    n_t, height, width = (int(s) for s in da.shape)
    params.validate_for(n_t, height, width)
    grid = tile_grid(height, width, params)
    tid = tiling_id(dataset_id, params)
    csv, side = index_paths(index_dir, tid)

    if not recompute and csv.exists() and side.exists():
        try:
            return TileIndex.open(
                csv,
                expected_params=params,
                expected_fingerprint=fingerprint,
                verify=verify,
            )
        except StaleIndexError as exc:
            if on_stale != "recompute":
                raise _from_another_archive(exc, side, da) from None
        except IndexFileError as exc:
            raise IndexFileError(
                f"{exc}. To rebuild it call prepare_tiling(..., recompute=True)"
            ) from exc

    if missing_times is None:
        missing_times = da.attrs.get("missing_times")
    if consistent_timestep_start is None:
        consistent_timestep_start = da.attrs.get("consistent_timestep_start")
    times = np.asarray(da["time"].values)
    windows = time_windows(
        times,
        params.n_time_window,
        params.effective_stride[0],
        missing_times=missing_times,
        consistent_timestep_start=consistent_timestep_start,
    )
    wcounts = windows.counts()
    n_sp = grid.n_tiles
    if windows.n_valid == 0:
        raise ParameterError(_no_tile_message(dataset_id, params, wcounts, n_sp, 0))
    ensure_writable_dir(index_dir)

    columns = params.columns
    ncell = grid.n_cells[0] * grid.n_cells[1]
    npix = params.n_time_window * params.tile_size[0] * params.tile_size[1]
    state: dict[str, Any] = {"nan": 0, "kept": 0}
    sdtype = steps_dtype([importance_column(s) for s in params.importance_scales])
    steps_file = _steps_path(csv)
    t0 = time.perf_counter()
    frames_read = int(windows.frames_needed().size)
    bar = _ProgressBar(frames_read, f"prepare {tid}") if progress else None

    def frames() -> Iterator[pd.DataFrame]:
        blocks = iter_tile_statistics(
            da.data,
            times,
            params,
            windows,
            to_rate=to_rate,
            block_frames=block_frames,
            source=_source_label(da, dataset_id),
        )
        cb = _FrameCallback(bar, partials_dtype(ncell)) if bar is not None else None
        # the steps file is committed before the CSV; the old sidecar goes first so that an
        # interruption in between leaves no index that looks complete
        with atomic_write(steps_file, before_commit=lambda: side.unlink(missing_ok=True)) as sfh:
            try:
                if cb is not None:
                    cb.register()
                for blk in blocks:
                    if bar is not None:
                        bar.set(blk.frames_done)
                    state["nan"] += blk.rejected_nan
                    k = blk.n_rows
                    if k == 0:
                        continue
                    data: dict[str, Any] = {
                        "tile_id": np.arange(state["kept"], state["kept"] + k, dtype=np.int64),
                        "time_start": np.datetime_as_string(blk.time_start, unit="s"),
                    }
                    data.update(blk.columns)
                    state["kept"] += k
                    assert blk.steps is not None
                    sfh.write_bytes(np.ascontiguousarray(blk.steps, dtype=sdtype).tobytes())
                    yield pd.DataFrame(data, columns=columns)
            finally:
                if cb is not None:
                    cb.unregister()
                if bar is not None:
                    bar.close()
            if state["kept"] == 0:
                raise ParameterError(
                    _no_tile_message(dataset_id, params, wcounts, n_sp, state["nan"])
                )
        state["steps"] = {
            "file": steps_file.name,
            "n_steps": params.n_time_window,
            "dtype": [[n, sdtype[n].str] for n in sdtype.names or ()],
            "bytes": sfh.nbytes,
            "sha256": sfh.sha256,
        }

    def meta() -> dict[str, Any]:
        regimes = windows.regimes
        return {
            "kind": "tiling",
            "format_version": FORMAT_VERSION,
            "mlcast_pipes_version": package_version(),
            "created": utc_now_iso(),
            "tiling_id": tid,
            "dataset_id": dataset_id,
            "dataset_fingerprint": fingerprint,
            "params": params.to_dict(),
            "shape": [n_t, height, width],
            "source_url": getattr(da.encoding.get("mlcast_source"), "url", None),
            "time_step_s": regimes[-1]["step_s"] if regimes else None,
            "time_regimes": regimes,
            "consistent_timestep_start": (
                None if consistent_timestep_start is None else str(consistent_timestep_start)
            ),
            "n_missing_times": int(np.size(missing_times)) if missing_times is not None else 0,
            "units": "mm/h",
            "rate_conversion": None if to_rate is None else getattr(to_rate, "__name__", "custom"),
            "windows": wcounts,
            "n_spatial_tiles": n_sp,
            "rejected": {
                "gap": (wcounts["candidates"] - wcounts["valid"]) * n_sp,
                "nan": int(state["nan"]),
            },
            "n_kept": int(state["kept"]),
            "frames_read": frames_read,
            "steps": state["steps"],
            "cell_size": list(grid.cell),
            "histogram": {
                "description": (
                    "bin 0: R <= 0; bin 1: 0 < R < edges[0]; bin b (2..N-2): edges[b-2] <= R < "
                    "edges[b-1]; bin N-1: R >= edges[-1] (mm/h)"
                ),
                "n_bins": N_BINS,
                "edges": [float(e) for e in HIST_LOG_EDGES],
            },
            "dtypes": tiling_dtypes(columns, nan_count_wide=npix >= 2**31),
            "elapsed_s": round(time.perf_counter() - t0, 3),
            **({} if absent_chunks is None else {"absent_chunks": absent_chunks()}),
        }

    written = write_index(csv, frames(), meta, columns=columns)
    return TileIndex(path=csv, meta=written, tiling_id=tid)
