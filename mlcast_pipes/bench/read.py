"""Reference figures of the read benchmark.

A dask-free per-sample read, the decode floor of an epoch, the diversity of batches (duplicates,
read windows) against a shuffled epoch, and reads over a loopback server with latency.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__: list[str] = []

#: One sample of an epoch: (t_start, n_time, y_start, x_start).
_Sample = tuple[int, int, int, int]


def _dask_free_rate(
    path: str, var_name: str, samples: Sequence[_Sample], tile: tuple[int, int]
) -> float:
    """Samples/s of ``xr.open_zarr(path, chunks=None)`` then ``.isel(...).values`` per sample."""
    with warnings.catch_warnings():  # zarr v3 stores without consolidated metadata
        warnings.simplefilter("ignore", RuntimeWarning)
        da = xr.open_zarr(path, chunks=None)[var_name]
    dt, dy, dx = da.dims
    ty, tx = tile
    _ = da.isel({dt: slice(0, 1), dy: slice(0, 1), dx: slice(0, 1)}).values  # open once
    t0 = time.perf_counter()
    for t, n, y, x in samples:
        _ = da.isel({dt: slice(t, t + n), dy: slice(y, y + ty), dx: slice(x, x + tx)}).values
    return len(samples) / (time.perf_counter() - t0)


def _decode_floor(
    path: str,
    var_name: str,
    samples: Sequence[_Sample],
    tile: tuple[int, int],
    threads: int,
) -> dict[str, Any]:
    """Decode each chunk the samples touch once, cut their tiles and log-transform them.

    Chunks are split into ``threads`` contiguous runs, one thread each, every thread decoding
    into its own reused buffer (:class:`~mlcast_pipes.chunkio.ChunkReader`); each tile step is
    passed through LDCast's transform as the chain's ``normalize`` does.
    """
    import zarr

    from mlcast_pipes.chunkio import ChunkReader
    from mlcast_pipes.transforms.registry import LDCastTransform

    array = zarr.open_group(path, mode="r")[var_name]
    chunks = ChunkReader(array)
    ct = chunks.chunks[0]
    ty, tx = tile
    cuts: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # chunk -> (row, y, x)
    for t, n, y, x in samples:
        for f in range(t, t + n):
            cuts[f // ct].append((f % ct, y, x))
    ids = sorted(cuts)
    threads = max(1, min(threads, len(ids)))
    runs = [list(part) for part in np.array_split(np.asarray(ids, dtype=np.int64), threads)]
    transform = LDCastTransform()

    def work(run: list[int]) -> int:
        buffer = np.empty(chunks.out_shape(0), dtype=chunks.dtype)
        done = 0
        for c in run:
            out = buffer if chunks.out_shape(c) == buffer.shape else None
            block = chunks.read([int(c)], out=[out])[0]
            if isinstance(block, BaseException):
                raise block
            done += 1
            for row, y, x in cuts[int(c)]:
                transform.forward(block[row, y : y + ty, x : x + tx])
        return done

    cpu0, t0 = time.process_time(), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads, "mlcast-floor") as pool:
        decoded = sum(pool.map(work, runs))
    seconds = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    return {
        "samples_per_s": len(samples) / seconds,
        "chunks_decoded": decoded,
        "frames_touched": len({t + k for t, n, _, _ in samples for k in range(n)}),
        "threads": threads,
        "seconds": seconds,
        "cpu_s": cpu_s,
    }


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its children alive now (the workers).

    This process's from its own clock (``time.process_time``, to the nanosecond): psutil counts
    in clock ticks (10 ms), and a short in-process epoch could measure 0.
    """
    import psutil

    proc = psutil.Process()
    total = time.process_time()
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just ended
            total += sum(child.cpu_times()[:2])
    return float(total)


def _batch_figures(batches: Iterable[Sequence[tuple[int, int]]]) -> tuple[float, float, int]:
    """(mean duplicates, mean distinct windows, batches) of batches of ``(tile_id, t_start)``.

    Duplicates are the samples of a batch minus its distinct ids; windows its distinct t_start.
    """
    dups, windows = [], []
    for batch in batches:
        if not batch:
            continue
        dups.append(len(batch) - len(set(batch)))
        windows.append(len({t for _, t in batch}))
    if not dups:
        return 0.0, 0.0, 0
    return float(np.mean(dups)), float(np.mean(windows)), len(dups)


def _shuffled(
    ids: Sequence[tuple[int, int]], batch_size: int, seed: int = 0
) -> list[list[tuple[int, int]]]:
    """The same samples in a seeded random order, cut into batches of ``batch_size``."""
    order = np.random.default_rng(seed).permutation(len(ids))
    flat = [ids[i] for i in order]
    return [flat[i : i + batch_size] for i in range(0, len(flat), batch_size)]


def _batch_ids(batch: Any) -> list[tuple[int, int]]:
    """``(tile_id, t_start)`` of each sample of a batch made with ``to_tensor(metadata=True)``."""
    meta = batch["meta"]
    return [
        (int(a), int(b))
        for a, b in zip(meta["tile_id"].tolist(), meta["t_start"].tolist(), strict=True)
    ]


def _batch_quality(batches: Iterable[Any], batch_size: int, shuffles: int = 50) -> dict[str, Any]:
    """Duplicates and read windows per delivered batch, against shuffles of the same samples.

    The reference is the mean over ``shuffles`` seeded shuffles (one shuffle of a few hundred
    samples varies by tens of percent).
    """
    delivered = [_batch_ids(b) for b in batches]
    dup, win, n_batches = _batch_figures(delivered)
    flat = [i for b in delivered for i in b]
    refs = [_batch_figures(_shuffled(flat, batch_size, seed))[:2] for seed in range(shuffles)]
    ref_dup = float(np.mean([d for d, _ in refs])) if refs else 0.0
    ref_win = float(np.mean([w for _, w in refs])) if refs else 0.0
    return {
        "samples": len(flat),
        "batches": n_batches,
        "duplicates_per_batch": round(dup, 3),
        "windows_per_batch": round(win, 2),
        "shuffled_duplicates_per_batch": round(ref_dup, 3),
        "shuffled_windows_per_batch": round(ref_win, 2),
        "duplicates_over_shuffled": round(dup / ref_dup, 3) if ref_dup > 0 else None,
        "windows_over_shuffled": round(win / ref_win, 3) if ref_win > 0 else None,
    }


def _timed_reads(
    url: str,
    var_name: str,
    window_reads: Sequence[Sequence[Any]],
    per_call: int,
    ahead: bool,
    opened: Any,
    go: Any,
    result: Any,
) -> None:
    """Time a new reader on ``window_reads``, ``per_call`` windows per call (a child process).

    It opens the archive, sets ``opened``, waits for ``go``, reads (with ``ahead``, asking for
    the next call's bytes before each call), then puts (tiles, seconds) on ``result``.
    """
    from mlcast_pipes.reader import FrameReader

    reader = FrameReader(url, var_name)
    _ = reader.shape
    opened.set()
    go.wait()
    n = 0
    t0 = time.perf_counter()
    calls = [
        [r for w in window_reads[k : k + per_call] for r in w]
        for k in range(0, len(window_reads), per_call)
    ]
    for k, tiles in enumerate(calls):
        if ahead and k + 1 < len(calls):
            reader.fetch_ahead({t for r in calls[k + 1] for t in r.frames})
        n += len(reader.read_tiles(tiles, cache=False))
    result.put((n, time.perf_counter() - t0))
    reader.close()
    # end here: the HTTP session fsspec keeps for the URL is not closed (it is shared through
    # fsspec's instance cache), and aiohttp would report it when collected at the child's exit
    os._exit(0)


def _latency_run(
    archive: Path,
    index_dir: Path,
    delay_ms: float,
    chain: Any,
    workers: int,
    epochs: int,
    window_reads: Sequence[Sequence[Any]] = (),
    var_name: str = "",
) -> dict[str, Any]:
    """Samples/s of the chain under DataLoader2 reading ``archive`` over loopback HTTP.

    The server answers at once while the index is prepared, the first (start-up) epoch and
    ``epochs - 1`` timed epochs run (``http_0ms``: the cost of HTTP itself, on the same cores),
    then sleeps ``delay_ms`` per request for ``epochs - 1`` more; then a reader of ``var_name``
    alone reads ``window_reads`` (tile requests per window), one and four windows per call, and
    four with the next call's bytes fetched ahead. The server stops before returning.
    """
    import mlcast_pipes as mp
    from mlcast_pipes.bench.server import _ServerProcess
    from mlcast_pipes.reader import close_readers

    close_readers()
    reader_rates: dict[str, float] = {}
    reader_peaks: dict[str, int] = {}
    reader_means: dict[str, float] = {}
    with _ServerProcess(archive.parent, 0.0) as server:
        url = f"{server.url}/{archive.name}"
        loader = mp.make_dataloader(chain(source=url, where=index_dir), num_workers=workers)
        try:
            # start-up, then the timed epochs over HTTP without delay, then with the delay
            counts, seconds = [], []
            for epoch in range(2 * epochs - 1):
                if epoch == epochs:
                    server.delay_s = delay_ms / 1000.0
                    before, busy, cpu = server.requests, server.busy_s, server.cpu_s
                n = 0
                t0 = time.perf_counter()
                for batch in loader:
                    n += int(batch.shape[0])
                seconds.append(time.perf_counter() - t0)
                counts.append(n)
        finally:
            loader.shutdown()
            close_readers()
        requests = server.requests - before
        server_cpu_s = server.cpu_s - cpu
        undelayed = sum(counts[1:epochs]) / sum(seconds[1:epochs])
        counts, seconds = counts[:1] + counts[epochs:], seconds[:1] + seconds[epochs:]
        in_flight = (server.busy_s - busy) / sum(seconds[1:])
        variants = {"": (1, False), "_4_windows": (4, False), "_4_windows_ahead": (4, True)}
        for name, (per_call, ahead) in variants.items() if window_reads else ():
            # in a child process, as the workers read: not sharing this process's GIL with the
            # server; counted from when its reader is open
            ctx = multiprocessing.get_context("fork")
            opened, go, result = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
            child = ctx.Process(
                target=_timed_reads,
                args=(url, var_name, window_reads, per_call, ahead, opened, go, result),
                daemon=True,
            )
            child.start()
            try:
                if not opened.wait(60):
                    raise RuntimeError("the reader process did not open the archive within 60 s")
                server.peak_in_flight = 0
                busy = server.busy_s
                go.set()
                n, elapsed = result.get()
            finally:
                child.join(10)
                if child.is_alive():
                    child.kill()
            reader_rates[name] = n / elapsed
            reader_peaks[name] = server.peak_in_flight
            reader_means[name] = (server.busy_s - busy) / elapsed
    figures: dict[str, Any] = {
        "latency_ms": delay_ms,
        "latency_samples_per_s": round(sum(counts[1:]) / sum(seconds[1:]), 1),
        "latency_requests_per_epoch": round(requests / max(1, epochs - 1), 1),
        "latency_mean_requests_in_flight": round(in_flight, 1),
        "latency_server_cpu_ms_per_request": round(1000 * server_cpu_s / max(requests, 1), 3),
        "latency_samples_checked": counts,
        "http_0ms_samples_per_s": round(undelayed, 1),
        "latency_over_http_0ms": round(sum(counts[1:]) / sum(seconds[1:]) / undelayed, 3),
    }
    for name, rate in reader_rates.items():
        figures |= {
            f"latency_reader{name}_samples_per_s": round(rate, 1),
            f"latency_reader{name}_peak_requests_in_flight": reader_peaks[name],
            f"latency_reader{name}_mean_requests_in_flight": round(reader_means[name], 1),
        }
    return figures


def _worker_memory(
    path: Path,
    *,
    n_time_window: int,
    tile_size: tuple[int, int],
    fraction: float,
    batch_size: int,
    workers: int,
    peak: Any,
) -> dict[str, Any]:
    """Peak RSS/USS per DataLoader2 worker over one epoch of the read chain, then samples/s.

    ``peak`` is the children's memory sampler of the package (``_ChildrenPeakRSS``); the first
    epoch, start-up included, is sampled, the second timed without sampling.
    """
    import tempfile

    import mlcast_pipes as mp
    from mlcast_pipes.reader import close_readers, get_reader
    from mlcast_pipes.reader.frames import DECODE_BUDGET

    with tempfile.TemporaryDirectory(prefix="mlcast-bench-") as tmp:
        tiles = mp.OpenXarrayDataset(str(path)).tile(
            n_time_window=n_time_window, tile_size=tile_size, index_dir=Path(tmp)
        )
        table = tiles.plan.table(next(iter(tiles.source_datapipe)))
        n_tiles = max(1, round(fraction * len(table.rows)))
        chain = (
            tiles.sample("uniform", seed=0, n_tiles=n_tiles, materialized=False)
            .normalize()
            .to_tensor(batch_size=batch_size)
        )
        close_readers()
        loader = mp.make_dataloader(chain, num_workers=workers)
        counts, seconds = [], []
        try:
            with peak(interval_s=0.05) as mem:
                t0 = time.perf_counter()
                counts.append(sum(int(b.shape[0]) for b in loader))
                seconds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            counts.append(sum(int(b.shape[0]) for b in loader))
            seconds.append(time.perf_counter() - t0)
        finally:
            loader.shutdown()
        spec = table.info.spec
        shape = [int(v) for v in get_reader(spec.url, spec.var_name).shape]
        close_readers()
    return {
        "archive": str(path),
        "shape": shape,
        "frame_mb": round(shape[1] * shape[2] * 4 / 2**20, 1),
        "decode_budget_mb": round(DECODE_BUDGET / 2**20, 1),
        "tile": f"{n_time_window}x{tile_size[0]}x{tile_size[1]}",
        "workers": workers,
        "samples_per_epoch": counts[0],
        "peak_rss_per_worker_mb": round(mem.peak / 2**20, 1),
        "peak_uss_per_worker_mb": round(getattr(mem, "peak_uss", 0) / 2**20, 1),
        "first_epoch_samples_per_s": round(counts[0] / seconds[0], 1),
        "samples_per_s": round(counts[1] / seconds[1], 1),
        "samples_checked": counts,
    }
