"""Benchmarks of the offline pass and of the loaders (wall time, peak memory, ratios).

Face layer used by ``mlcast-pipes bench``; each function times one aspect on a given archive.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as dsa
import psutil
import xarray as xr

from mlcast_pipes.bench.read import (
    _batch_quality,
    _cpu_seconds,
    _dask_free_rate,
    _decode_floor,
    _latency_run,
    _worker_memory,
)
from mlcast_pipes.errors import DatasetError, ParameterError

__all__ = ["bench_prepare", "bench_read", "run_bench"]


class _PeakRSS:
    """Samples the process RSS in a background thread; ``peak`` is the high-water mark (bytes)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = psutil.Process(os.getpid())
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_rss = 0
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakRSS:
        gc.collect()
        self.start_rss = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _open(path_or_da: Any, var_name: str | None) -> xr.DataArray:
    if isinstance(path_or_da, xr.DataArray):
        return path_or_da
    path = str(path_or_da)
    try:
        with warnings.catch_warnings():  # zarr v3 stores without consolidated metadata
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(path, chunks={})
    except Exception as exc:  # zarr/fsspec raise many types
        raise DatasetError(
            f"cannot open {path!r} as a zarr archive ({type(exc).__name__}: {exc}); fix: pass the "
            "path of a zarr store or an opened xarray.DataArray"
        ) from exc
    names = [str(n) for n, v in ds.data_vars.items() if v.ndim == 3 and "time" in v.dims]
    if var_name is None:
        if len(names) != 1:
            raise ParameterError(
                f"{path!r} has data variables {names} with a time axis; fix: pass var_name="
            )
        var_name = names[0]
    if var_name not in ds.data_vars:
        raise ParameterError(
            f"{path!r} has no variable {var_name!r}; fix: use one of {list(ds.data_vars)}"
        )
    out: xr.DataArray = ds[var_name]
    return out


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, int, Any]:
    best = float("inf")
    peak = 0
    out: Any = None
    for _ in range(max(1, repeats)):
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        best = min(best, dt)
        peak = max(peak, mem.peak - mem.start_rss)
    return best, peak, out


#: The progress bar of the running :func:`run_bench` (None: no bar); each measured stage ticks it.
_STAGES: Any = None


def _stage(name: str) -> None:
    """Tick the benchmark's progress bar: stage ``name`` is done."""
    if _STAGES is not None:
        _STAGES.set_postfix_str(name, refresh=False)
        _STAGES.update(1)


#: Stages of each benchmark, as :func:`_stage` ticks them (one more for ``read`` with latency).
_N_STAGES = {"prepare": 6, "read": 9, "memory": 2}
#: Frames and frame size (y, x) of the archive of ``mlcast-pipes bench --what memory``.
_MEMORY_FRAMES = 36
_MEMORY_FRAME_SIZE = (3500, 7000)


def bench_prepare(
    path_or_da: str | os.PathLike[str] | xr.DataArray,
    *,
    n_time_windows: Sequence[int] = (12, 24),
    repeats: int = 1,
    tile_size: tuple[int, int] = (128, 128),
    var_name: str | None = None,
    warmup: bool = True,
    index_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Time the tiling pass against a plain dask ``nansum`` of the archive (best of ``repeats``).

    Values are taken as mm/h; ``warmup`` reads the archive once first so both see a warm file
    cache; indexes go to ``index_dir`` (a temporary folder by default). Returns ``nansum_s``,
    ``prepare_s`` and ``ratio`` per window length, frames read, peak RSS per phase and tile counts.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> rain = np.random.default_rng(0).gamma(0.5, 2.0, (24, 128, 128)).astype("float32")
    >>> times = pd.date_range("2021-06-12", periods=24, freq="5min")
    >>> da = xr.DataArray(rain, dims=("time", "y", "x"), coords={"time": times})
    >>> result = bench_prepare(da, n_time_windows=(12,), tile_size=(64, 64))
    >>> result["frames"], result["n_tiles"], result["frames_read"]
    (24, {'12': 8}, {'12': 24})

    """
    from mlcast_pipes.indexes.tiling import prepare_tiling
    from mlcast_pipes.tiling import TilingParams

    da = _open(path_or_da, var_name)
    arr = da.data if isinstance(da.data, dsa.Array) else dsa.from_array(da.data, chunks=(1, -1, -1))
    n_frames = int(da.shape[0])
    if warmup:
        dsa.nansum(arr).compute()
    base_s, base_mem, _ = _timed(lambda: dsa.nansum(arr).compute(), repeats)
    _stage("nansum")
    result: dict[str, Any] = {
        "shape": [int(s) for s in da.shape],
        "frames": n_frames,
        "chunks": [int(arr.chunksize[0]), int(arr.chunksize[1]), int(arr.chunksize[2])],
        "nansum_s": round(base_s, 4),
        "prepare_s": {},
        "ratio": {},
        "frames_read": {},
        "ratio_per_frame": {},
        "n_tiles": {},
        "peak_rss_mb": {"nansum": round(base_mem / 2**20, 1)},
        "repeats": repeats,
    }
    with tempfile.TemporaryDirectory(prefix="mlcast-bench-") as tmp:
        folder = Path(index_dir) if index_dir is not None else Path(tmp)
        for n in n_time_windows:
            params = TilingParams(n_time_window=int(n), tile_size=tile_size)

            def run(params: TilingParams = params) -> Any:
                return prepare_tiling(
                    da,
                    params,
                    folder,
                    dataset_id="bench",
                    fingerprint="bench",
                    missing_times=None,
                    recompute=True,
                )

            dt, mem, index = _timed(run, repeats)
            frames_read = int(index.meta.get("frames_read", n_frames))
            key = str(n)
            result["prepare_s"][key] = round(dt, 4)
            result["ratio"][key] = round(dt / base_s, 3)
            result["frames_read"][key] = frames_read
            result["ratio_per_frame"][key] = round((dt / frames_read) / (base_s / n_frames), 3)
            result["n_tiles"][key] = index.n_tiles
            result["peak_rss_mb"][f"prepare_{key}"] = round(mem / 2**20, 1)
            _stage(f"prepare {key} steps")

        # memory against archive length: a quarter, half and all of the frames, in blocks of
        # 128 frames (so that every length spans several blocks). The RSS high-water mark stays
        # flat once the allocator has grown, so this measures the peak of traced allocations
        # (numpy buffers, decoded chunks) of each run instead.
        params = TilingParams(n_time_window=int(n_time_windows[0]), tile_size=tile_size)
        by_frames: dict[str, float] = {}
        for frac in (4, 2, 1):
            part = da.isel({da.dims[0]: slice(0, max(n_frames // frac, params.n_time_window))})
            tracemalloc.start()
            try:
                prepare_tiling(
                    part,
                    params,
                    folder,
                    dataset_id=f"bench-{part.shape[0]}",
                    fingerprint="bench",
                    missing_times=None,
                    recompute=True,
                    block_frames=128,
                )
                _, traced_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            by_frames[str(int(part.shape[0]))] = round(traced_peak / 2**20, 1)
            _stage(f"memory on {part.shape[0]} frames")
        result["peak_traced_mb_by_frames"] = by_frames
    return result


def _helper_process(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of multiprocessing's own helpers (resource tracker, forkserver)."""
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return "resource_tracker" in command or "forkserver" in command


class _ChildrenPeakRSS(_PeakRSS):
    """Samples the RSS of each child process (DataLoader2 workers); ``peak`` is the largest one."""

    peak_uss: int = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for child in self._proc.children(recursive=True):
                    if _helper_process(child):
                        continue
                    self.peak = max(self.peak, child.memory_info().rss)
                    self.peak_uss = max(self.peak_uss, child.memory_full_info().uss)
            except psutil.Error:
                pass
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakRSS:
        self.start_rss = self.peak = self.peak_uss = 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # children only: this process's RSS is not a worker's


def _drain(iterable: Any) -> tuple[int, float]:
    """Consume batches; return (samples, seconds)."""
    n = 0
    t0 = time.perf_counter()
    for batch in iterable:
        n += int(batch.shape[0]) if hasattr(batch, "shape") else len(batch)
    return n, time.perf_counter() - t0


def _drain_epochs(loader: Any, epochs: int) -> tuple[float, float, list[int]]:
    """Run ``epochs`` epochs; return (first epoch samples/s, later epochs samples/s, counts)."""
    counts, seconds = [], []
    for _ in range(epochs):
        n, dt = _drain(loader)
        counts.append(n)
        seconds.append(dt)
    later = sum(counts[1:]) / sum(seconds[1:])
    return counts[0] / seconds[0], later, counts


def bench_read(
    path: str | os.PathLike[str],
    *,
    n_time_window: int = 12,
    tile_size: tuple[int, int] = (128, 128),
    fraction: float = 0.1,
    batch_size: int = 16,
    workers: int = 2,
    naive_samples: int = 24,
    epochs: int = 3,
    index_dir: str | os.PathLike[str] | None = None,
    latency_ms: float | None = None,
    floor_threads: int | None = None,
) -> dict[str, Any]:
    """Compare training-read paths with ``fraction`` of the tiles sampled; returns rates and ratios.

    Paths: (a) a naive per-sample xarray read; the reader on the epoch's read groups; (b) the
    chain in this process; (c) the chain under DataLoader2 with ``workers`` processes for
    ``epochs`` epochs (the first includes worker start-up); (d) as (c) on the training copy.
    Read amplification is decoded bytes per delivered byte, also given over its minimum.
    Beside (a), a dask-free per-sample read; the floor decodes each chunk the epoch touches
    once (``floor_threads``) and log-transforms the samples' pixels (``c_over_floor``, and the
    load-robust ``floor_cpu_over_c_cpu``); batch quality counts duplicates and distinct windows
    per delivered binnorm batch against a shuffle of the same samples; ``latency_ms`` runs (c)
    over a loopback HTTP server that sleeps that long per request (``latency_over_local``), and
    the reader alone on the epoch's windows, one and four per call, against the local reader.

    Examples
    --------
    >>> from mlcast_pipes.demo import generate_demo
    >>> path = generate_demo("bench.zarr", preset="tiny", n_times=24, overwrite=True)
    >>> result = bench_read(path, n_time_window=4, tile_size=(64, 64), fraction=0.2,
    ...                     batch_size=4, workers=0, naive_samples=2, epochs=2)
    >>> result["samples_per_epoch"], result["amplification_over_minimum"]
    (7, 1.0)
    >>> result["floor_frames_decoded"] == result["floor_frames_touched"]
    True

    """
    import numpy as np

    import mlcast_pipes as mp
    from mlcast_pipes.epochs import Shard, plan_shard
    from mlcast_pipes.reader import TileRequest, close_readers, get_reader, naive_read_tile
    from mlcast_pipes.sampling import draw_epoch

    if not 0 < fraction <= 1:
        raise ParameterError(f"fraction must be in (0, 1], got {fraction}")
    if epochs < 2:
        raise ParameterError(f"epochs must be >= 2 (one start-up epoch, one timed), got {epochs}")
    with tempfile.TemporaryDirectory(prefix="mlcast-bench-") as tmp:
        folder = Path(index_dir) if index_dir is not None else Path(tmp)

        def chain(
            tensor: bool = True,
            source: str = str(path),
            where: Path = folder,
            method: str = "uniform",
            metadata: bool = False,
            **sample_kw: Any,
        ) -> Any:
            tiles = mp.OpenXarrayDataset(source).tile(
                n_time_window=n_time_window, tile_size=tile_size, index_dir=where
            )
            n_tiles = len(tiles.plan.table(next(iter(tiles.source_datapipe))).rows)
            # paths (a)-(c) read the source even if a training copy is in index_dir; (d) the copy
            sample_kw.setdefault("materialized", False)
            if method == "uniform":
                sample_kw["n_tiles"] = max(1, round(fraction * n_tiles))
            sampled = tiles.sample(method, seed=0, **sample_kw)
            if not tensor:
                return sampled
            return sampled.normalize().to_tensor(batch_size=batch_size, metadata=metadata)

        sampler = chain(tensor=False)
        pool_index = sampler.sampling_indexes()[0]
        pool = pool_index.table
        table = sampler.plan.table(next(iter(sampler.source_datapipe)))
        spec = table.info.spec
        rows = draw_epoch(pool, n_samples=None, seed=0, epoch=0)
        t_start = pool["t_start"].to_numpy()[rows] + pool["t_offset"].to_numpy()[rows]
        n_time = pool["n_time_sample"].to_numpy()[rows]
        ys, xs = pool["y_start"].to_numpy()[rows], pool["x_start"].to_numpy()[rows]
        n_epoch = len(rows)
        ty, tx = tile_size
        frames_touched = len(
            {int(t) + k for t, n in zip(t_start, n_time, strict=True) for k in range(int(n))}
        )
        _, height, width = (int(v) for v in get_reader(spec.url, spec.var_name).shape)
        delivered = float(np.sum(n_time)) * ty * tx
        min_amp = frames_touched * height * width / delivered

        # (a) naive per-sample reads, on one core and with dask's threads
        k = min(naive_samples, n_epoch)
        naive_read_tile(spec.url, spec.var_name, 0, 1, 0, 1, 0, 1)  # open once
        samples = [
            (int(t_start[i]), int(n_time[i]), int(ys[i]), int(xs[i])) for i in range(n_epoch)
        ]

        def naive_pass(scheduler: str) -> float:
            with dask.config.set(scheduler=scheduler):
                t0 = time.perf_counter()
                for t, n, y, x in samples[:k]:
                    naive_read_tile(spec.url, spec.var_name, t, n, y, ty, x, tx)
                return k / (time.perf_counter() - t0)

        # one core, with and without dask: alternated twice, best of each (the noisiest figures)
        naive_rates = {"synchronous": 0.0, "threads": 0.0}
        dask_free_rate = 0.0
        for _ in range(2):
            naive_rates["synchronous"] = max(naive_rates["synchronous"], naive_pass("synchronous"))
            dask_free_rate = max(
                dask_free_rate, _dask_free_rate(spec.url, spec.var_name, samples[:k], tile_size)
            )
        naive_rates["threads"] = naive_pass("threads")
        naive_rate = naive_rates["synchronous"]
        naive_amp = (
            float(np.mean(n_time[:k])) * height * width / (float(np.mean(n_time[:k])) * ty * tx)
        )
        _stage("(a) naive reads")

        # the reader called directly on the epoch's read groups, against the sampler alone
        # (no normalize/tensor); alternated twice, best of each, so file caches treat both alike
        groups = plan_shard(pool["t_start"].to_numpy()[rows], seed=0, epoch=0, shard=Shard())
        window_reads = [
            [
                TileRequest(int(t_start[i]), int(n_time[i]), int(ys[i]), ty, int(xs[i]), tx)
                for i in g
            ]
            for g in groups
        ]
        direct_s = sampler_s = float("inf")
        n_sampler = 0
        for _ in range(2):
            close_readers()
            reader = get_reader(spec.url, spec.var_name)
            t0 = time.perf_counter()
            for requests in window_reads:
                reader.read_tiles(requests, cache=False)  # as the sampler reads its groups
            direct_s = min(direct_s, time.perf_counter() - t0)
            close_readers()
            sampler_only = chain(tensor=False)
            t0 = time.perf_counter()
            n_sampler = sum(1 for _ in sampler_only)
            sampler_s = min(sampler_s, time.perf_counter() - t0)
        _stage("reader alone")

        # (b) the full chain in this process
        close_readers()
        full = chain()
        n_b, chain_s = _drain(full)
        stats = get_reader(spec.url, spec.var_name).stats
        chain_amp = stats.bytes_decoded / max(stats.bytes_delivered, 1)
        _stage("(b) chain")

        # the floor: each touched frame decoded once, one thread per core, plus the transform
        close_readers()
        floor = _decode_floor(
            spec.url, spec.var_name, samples, tile_size, floor_threads or os.cpu_count() or 1
        )
        _stage("floor")

        # distinct read windows per batch (records only, no pixels read)
        windows_per_batch = {}
        for n_mix in (1, 64, 256):
            starts = [r.t_start for r in chain(tensor=False, shuffle_buffer=n_mix, load=False)]
            batches = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
            distinct = [len(set(b)) for b in batches]
            windows_per_batch[str(n_mix)] = round(float(np.mean(distinct)), 2)
        _stage("windows per batch")

        # (c) under DataLoader2 with worker processes, kept for several epochs
        close_readers()
        loader = mp.make_dataloader(chain(), num_workers=workers)
        rates_c = _drain_epochs(loader, epochs)
        # CPU seconds of one more epoch, workers included: against the floor's, load-independent
        cpu0 = _cpu_seconds()
        n_cpu, _ = _drain(loader)
        chain_cpu_s = _cpu_seconds() - cpu0
        _stage("(c) DataLoader2")
        # the workers' memory in one more epoch: sampling it (smaps) costs CPU, so not while timed
        with _ChildrenPeakRSS(interval_s=0.05) as mem:
            n_mem, _ = _drain(loader)
        loader.shutdown()
        _stage("worker memory")

        # batch quality of a binnorm chain's delivered batches, against the shuffled epoch
        close_readers()
        loader = mp.make_dataloader(
            chain(method="binnorm", n_scalar_total_bins=10, n_samples=int(n_epoch), metadata=True),
            num_workers=workers,
        )
        quality = _batch_quality(loader, batch_size)
        loader.shutdown()
        _stage("batch quality")

        latency: dict[str, Any] = {}
        if latency_ms is not None:
            latency = _latency_run(
                Path(path),
                folder / "http",
                float(latency_ms),
                chain,
                workers,
                epochs,
                window_reads,
                spec.var_name,
            )
            latency["latency_over_local"] = round(latency["latency_samples_per_s"] / rates_c[1], 3)
            for key in [k for k in latency if k.startswith("latency_reader") and "per_s" in k]:
                ratio = latency[key] * direct_s / n_epoch
                latency[key.replace("samples_per_s", "over_local")] = round(ratio, 3)
            _stage("latency")

        # (d) as (c), on the training copy (one sample per chunk)
        from mlcast_pipes.indexes.training_copy import copy_path, materialize

        close_readers()
        t0 = time.perf_counter()
        target = materialize(
            pool, pool_index.meta, table.info, copy_path(folder, pool_index.sampling_id)
        )
        materialize_s = time.perf_counter() - t0
        copy_mb = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
        loader = mp.make_dataloader(chain(materialized=True), num_workers=workers)
        rates_d = _drain_epochs(loader, epochs)
        loader.shutdown()
        _stage("(d) training copy")

    rate_b = n_b / chain_s
    rate_c, rate_d = rates_c[1], rates_d[1]
    return {
        "archive": str(path),
        "shape": [int(v) for v in get_reader(spec.url, spec.var_name).shape],
        "tile": f"{n_time_window}x{ty}x{tx}",
        "tiles_in_index": len(table.rows),
        "samples_per_epoch": int(n_epoch),
        "fraction_sampled": fraction,
        "samples_per_window": round(n_epoch / max(len(groups), 1), 2),
        "cpu_count": os.cpu_count(),
        "a_naive_samples_per_s": round(naive_rate, 1),
        "a_naive_threads_samples_per_s": round(naive_rates["threads"], 1),
        "a_dask_free_samples_per_s": round(dask_free_rate, 1),
        "floor_samples_per_s": round(floor["samples_per_s"], 1),
        "floor_threads": floor["threads"],
        "floor_frames_touched": floor["frames_touched"],
        "floor_frames_decoded": floor["chunks_decoded"],
        "direct_reader_samples_per_s": round(n_epoch / direct_s, 1),
        "b_chain_samples_per_s": round(rate_b, 1),
        "c_dataloader2_samples_per_s": round(rate_c, 1),
        "c_dataloader2_first_epoch_samples_per_s": round(rates_c[0], 1),
        "c_workers": workers,
        "epochs": epochs,
        "b_over_a": round(rate_b / naive_rate, 1),
        "c_over_a": round(rate_c / naive_rate, 1),
        "c_over_a_first_epoch": round(rates_c[0] / naive_rate, 1),
        "c_over_dask_free": round(rate_c / dask_free_rate, 2),
        "c_over_floor": round(rate_c / floor["samples_per_s"], 3),
        "floor_cpu_s": round(floor["cpu_s"], 3),
        "c_cpu_s": round(chain_cpu_s, 3),
        "floor_cpu_over_c_cpu": round(floor["cpu_s"] / chain_cpu_s, 3),
        "batch_quality_binnorm": quality,
        **latency,
        "windows_per_batch_by_shuffle_buffer": windows_per_batch,
        "batch_size": batch_size,
        "amplification_naive": round(naive_amp, 2),
        "amplification_chain": round(chain_amp, 2),
        "amplification_minimum": round(min_amp, 2),
        "amplification_over_minimum": round(chain_amp / min_amp, 3),
        "sampler_overhead_over_reader": round(sampler_s / direct_s - 1, 3),
        "samples_checked": [n_sampler, n_b, *rates_c[2], n_cpu, n_mem, *rates_d[2]],
        "peak_rss_per_worker_mb": round(mem.peak / 2**20, 1),
        "peak_uss_per_worker_mb": round(getattr(mem, "peak_uss", 0) / 2**20, 1),
        "d_copy_samples_per_s": round(rate_d, 1),
        "d_copy_first_epoch_samples_per_s": round(rates_d[0], 1),
        "d_over_a": round(rate_d / naive_rate, 1),
        "d_copy_size_mb": round(copy_mb, 1),
        "d_copy_build_s": round(materialize_s, 2),
        "source_size_mb": round(
            sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1
        ),
    }


def run_bench(
    *,
    what: str = "all",
    preset: str = "itdpc",
    path: str | os.PathLike[str] | None = None,
    n_times: int | None = None,
    json_path: str | os.PathLike[str] | None = None,
    fraction: float = 0.1,
    workers: int = 2,
    epochs: int = 3,
    tile_size: tuple[int, int] = (128, 128),
    n_time_window: int = 12,
    latency_ms: float | None = None,
    frame_size: tuple[int, int] | None = None,
    progress: bool = False,
) -> str:
    """Run the benchmarks of ``mlcast-pipes bench`` (``what``: prepare, read, memory, all).

    Measures a cached demo archive of ``preset`` unless ``path`` is given; ``json_path`` also
    writes the figures as JSON; ``latency_ms`` adds the read chain over a slow loopback server;
    ``progress`` shows a bar on stderr; returns the report. ``memory`` measures the peak memory
    per DataLoader2 worker over an epoch on a cached demo archive of 36 frames of ``frame_size``
    (default 3500x7000; ``path`` if given). Other options go to :func:`bench_prepare` /
    :func:`bench_read`.

    Examples
    --------
    >>> import json
    >>> import numpy as np
    >>> import pandas as pd
    >>> rain = np.random.default_rng(0).gamma(0.5, 2.0, (24, 128, 128)).astype("float32")
    >>> times = pd.date_range("2021-06-12", periods=24, freq="5min")
    >>> ds = xr.Dataset({"rain": (("time", "y", "x"), rain)}, coords={"time": times})
    >>> _ = ds.to_zarr("rain.zarr", mode="w", zarr_format=2)
    >>> report = run_bench(what="prepare", path="rain.zarr", json_path="bench.json")
    >>> json.loads(Path("bench.json").read_text())["prepare"]["n_tiles"]
    {'12': 2, '24': 1}

    """
    import json

    if what not in ("prepare", "read", "memory", "all"):
        raise ParameterError(f"what must be 'prepare', 'read', 'memory' or 'all', got {what!r}")
    results: dict[str, Any] = {}
    sections = ("prepare", "read") if what == "all" else (what,)
    if what == "memory":
        path = _memory_archive(path, preset, n_times, frame_size, progress, results)
    elif path is None:
        from mlcast_pipes.catalog import demo_cache_dir
        from mlcast_pipes.demo import ensure_demo, generate_demo

        suffix = f"-t{n_times}" if n_times else ""
        target = demo_cache_dir() / f"bench-{preset}{suffix}-seed0.zarr"
        if n_times:
            if not target.exists():
                generate_demo(target, preset=preset, seed=0, n_times=n_times, progress=progress)
            path = target
        else:
            path = ensure_demo(target, preset, 0, progress=progress)
    from mlcast_pipes.progress import progress_bar

    global _STAGES
    with progress_bar(
        sum(_N_STAGES[s] for s in sections) + (latency_ms is not None and "read" in sections),
        "bench",
        unit="stages",
        enabled=progress,
        delay=0,
    ) as bar:
        _STAGES = bar
        try:
            if "prepare" in sections:
                results["prepare"] = bench_prepare(path, tile_size=tile_size)
            if "read" in sections:
                results["read"] = bench_read(
                    path,
                    n_time_window=n_time_window,
                    tile_size=tile_size,
                    fraction=fraction,
                    workers=workers,
                    epochs=epochs,
                    latency_ms=latency_ms,
                )
            if "memory" in sections:
                results["memory"] = {
                    **results.get("memory", {}),
                    **_worker_memory(
                        Path(path),
                        n_time_window=n_time_window,
                        tile_size=tile_size,
                        fraction=fraction,
                        batch_size=16,
                        workers=workers,
                        peak=_ChildrenPeakRSS,
                    ),
                }
                _stage("worker memory")
        finally:
            _STAGES = None
    if json_path is not None:
        Path(json_path).write_text(json.dumps(results, indent=2))
    lines = [f"archive: {path}"]
    for section, figures in results.items():
        lines.extend(["", _table(section, figures)])
    return "\n".join(lines)


def _memory_archive(
    path: str | os.PathLike[str] | None,
    preset: str,
    n_times: int | None,
    frame_size: tuple[int, int] | None,
    progress: bool,
    results: dict[str, Any],
) -> Path:
    """The archive of the memory benchmark: ``path``, else a cached demo (generated if absent)."""
    if path is not None:
        return Path(path)
    import dataclasses

    from mlcast_pipes.catalog import demo_cache_dir
    from mlcast_pipes.demo import PRESETS, generate_demo

    ny, nx = frame_size or _MEMORY_FRAME_SIZE
    n = n_times or _MEMORY_FRAMES
    base = PRESETS[preset]
    # one event without missing steps, so that every window of the archive can be sampled
    layout = dataclasses.replace(
        base,
        shape=(ny, nx),
        event_starts=base.event_starts[:1],
        event_lengths=(n,),
        missing_per_event=(0,),
        first_event_step_minutes=None,
    )
    target = demo_cache_dir() / f"bench-{preset}-t{n}-{ny}x{nx}-seed0.zarr"
    if not target.exists():
        free = shutil.disk_usage(target.parent if target.parent.exists() else "/").free
        raw = n * ny * nx * 4
        if free < raw // 2:
            raise ParameterError(
                f"the memory benchmark archive ({n} frames of {ny}x{nx}, up to "
                f"{raw / 2**30:.1f} GiB) needs more than the {free / 2**30:.1f} GiB free in "
                f"{target.parent}; fix: free space, or pass a smaller --frame-size or --n-times"
            )
        t0 = time.perf_counter()
        generate_demo(target, preset=layout, seed=0, progress=progress)
        results["memory"] = {"archive_generated_s": round(time.perf_counter() - t0, 1)}
    _stage("memory archive")
    return target


def _table(section: str, figures: Mapping[str, Any]) -> str:
    """The figures of one benchmark as a two-column text table (nested figures one row each)."""
    rows: list[tuple[str, str]] = []
    for key, value in figures.items():
        if isinstance(value, Mapping) and value:
            rows.extend((f"{key} [{k}]", str(v)) for k, v in value.items())
        else:
            rows.append((key, str(value)))
    w1 = max(len(section), *(len(r[0]) for r in rows))
    w2 = max(len("value"), *(len(r[1]) for r in rows))
    out = [f"{section:<{w1}}  value", f"{'-' * w1}  {'-' * w2}"]
    out.extend(f"{k:<{w1}}  {v}" for k, v in rows)
    return "\n".join(out)
