"""The benchmark behind ``mlcast-pipes bench``: every path delivers the epoch, figures add up."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlcast_pipes.bench import bench_read
from mlcast_pipes.bench.read import (
    _batch_figures,
    _batch_quality,
    _dask_free_rate,
    _decode_floor,
    _shuffled,
)
from mlcast_pipes.bench.server import _LatencyServer, _ServerProcess
from mlcast_pipes.chunkio import ChunkReader
from mlcast_pipes.errors import ParameterError


def test_bench_read_tiny(tiny_archive: Path, tmp_path: Path) -> None:
    """All paths deliver the same epoch; the chain decodes each touched frame once."""
    out = bench_read(
        tiny_archive,
        n_time_window=4,
        tile_size=(32, 32),
        fraction=0.3,
        batch_size=4,
        workers=1,
        naive_samples=4,
        epochs=2,
        index_dir=tmp_path,
        latency_ms=5,
    )
    n = out["samples_per_epoch"]
    assert n > 0
    # sampler alone, chain, (c) for its 2 epochs, the CPU-time and the memory epochs, (d) for
    # its 2 epochs
    assert out["samples_checked"] == [n] * 8
    assert out["amplification_over_minimum"] == pytest.approx(1.0, abs=0.01)
    assert out["amplification_naive"] > out["amplification_chain"]
    assert out["samples_per_window"] >= 1
    mix = out["windows_per_batch_by_shuffle_buffer"]
    assert set(mix) == {"1", "64", "256"}
    assert 1 <= mix["1"] <= mix["256"] <= out["batch_size"]
    for key in ("a_naive_samples_per_s", "b_chain_samples_per_s", "c_dataloader2_samples_per_s"):
        assert out[key] > 0
    assert out["d_copy_size_mb"] > 0
    assert out["peak_rss_per_worker_mb"] > 0
    # the references: a dask-free read, the floor (each touched frame once), batch quality
    assert out["a_dask_free_samples_per_s"] > 0
    assert out["floor_frames_decoded"] == out["floor_frames_touched"] > 0
    assert out["c_over_floor"] > 0 and out["c_over_dask_free"] > 0
    assert out["floor_cpu_s"] > 0 and out["c_cpu_s"] > 0 and out["floor_cpu_over_c_cpu"] > 0
    quality = out["batch_quality_binnorm"]
    assert quality["samples"] == n  # as many binnorm samples as the epoch, all delivered
    assert quality["batches"] >= n / out["batch_size"]
    for key in ("windows_per_batch", "shuffled_windows_per_batch"):
        assert 1 <= quality[key] <= out["batch_size"]
    assert 0 <= quality["shuffled_duplicates_per_batch"] < out["batch_size"]
    # over loopback HTTP with latency: the whole epoch, each time, slower than locally
    assert out["latency_samples_checked"] == [n, n]
    assert out["latency_requests_per_epoch"] > 0
    assert out["latency_over_local"] > 0
    assert out["latency_mean_requests_in_flight"] > 0
    assert out["latency_server_cpu_ms_per_request"] >= 0  # the server's share of the cores
    assert out["http_0ms_samples_per_s"] > 0 and out["latency_over_http_0ms"] > 0
    # the reader alone over HTTP: one window per call, then four (more chunk fetches at once),
    # then four with the next call's bytes fetched ahead
    for key in ("latency_reader", "latency_reader_4_windows", "latency_reader_4_windows_ahead"):
        assert out[f"{key}_samples_per_s"] > 0 and out[f"{key}_over_local"] > 0
    peaks = [
        out[f"{k}_peak_requests_in_flight"] for k in ("latency_reader", "latency_reader_4_windows")
    ]
    assert min(peaks) >= 1


def test_bench_read_twice_in_one_index_dir(tiny_archive: Path, tmp_path: Path) -> None:
    """A training copy left by a first run does not replace the source in the next one."""
    kw = {"n_time_window": 4, "tile_size": (32, 32), "fraction": 0.3, "batch_size": 4}
    kw |= {"workers": 0, "naive_samples": 2, "epochs": 2, "index_dir": tmp_path}
    first = bench_read(tiny_archive, **kw)
    second = bench_read(tiny_archive, **kw)
    for out in (first, second):
        assert out["amplification_over_minimum"] == pytest.approx(1.0, abs=0.01)
        assert out["peak_rss_per_worker_mb"] == 0  # no worker processes: nothing measured


def test_bench_read_rejects_bad_parameters(tiny_archive: Path) -> None:
    """A fraction outside (0, 1] or a single epoch is refused before any work."""
    with pytest.raises(ParameterError, match="fraction"):
        bench_read(tiny_archive, fraction=0)
    with pytest.raises(ParameterError, match="epochs"):
        bench_read(tiny_archive, epochs=1)


def test_floor_decodes_each_touched_frame_once(
    tiny_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping samples share frames: the floor decodes each of them exactly once."""
    decoded: list[int] = []
    original = ChunkReader._decode

    def counting(self: ChunkReader, raw: np.ndarray, index: int, out: Any) -> np.ndarray:
        decoded.append(index)
        return original(self, raw, index, out)

    monkeypatch.setattr(ChunkReader, "_decode", counting)
    # (t_start, n_time, y, x): frames 0-3, 2-5 (overlap) twice at other tiles, and 10-13
    samples = [(0, 4, 0, 0), (2, 4, 32, 32), (2, 4, 64, 0), (10, 4, 0, 64)]
    floor = _decode_floor(str(tiny_archive), "rainfall_rate", samples, (32, 32), threads=2)
    assert sorted(decoded) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    assert floor["chunks_decoded"] == floor["frames_touched"] == 10
    assert floor["threads"] == 2 and floor["samples_per_s"] > 0
    assert _dask_free_rate(str(tiny_archive), "rainfall_rate", samples, (32, 32)) > 0


def test_batch_figures_against_a_shuffle() -> None:
    """Duplicates and windows per batch; a shuffle of an epoch without repeats has none."""
    batches = [[(1, 0), (1, 0), (2, 0), (3, 5)], [(4, 5), (5, 5)]]
    assert _batch_figures(batches) == (pytest.approx(0.5), pytest.approx(1.5), 2)
    epoch = [(tile, t) for t in range(0, 60, 12) for tile in range(20)]  # 100 distinct samples
    shuffled = _shuffled(epoch, 16, seed=0)
    assert sorted(i for b in shuffled for i in b) == sorted(epoch)  # same samples, new order
    assert [len(b) for b in shuffled] == [16] * 6 + [4]
    dup, windows, n = _batch_figures(shuffled)
    assert dup == 0 and n == 7 and windows > 2  # mixed windows, unlike the sorted epoch
    assert _batch_figures([epoch[i : i + 16] for i in range(0, 100, 16)])[1] < windows

    def batch(ids: list[tuple[int, int]]) -> dict[str, Any]:
        tiles, starts = zip(*ids, strict=True)
        return {"meta": {"tile_id": torch.tensor(tiles), "t_start": torch.tensor(starts)}}

    quality = _batch_quality([batch(b) for b in batches], batch_size=4)
    assert quality["samples"] == 6 and quality["batches"] == 2
    assert quality["duplicates_per_batch"] == 0.5 and quality["windows_per_batch"] == 1.5


def test_latency_server_delays_each_request_and_stops(tmp_path: Path) -> None:
    """Each request waits at least the delay; the server stops at the end of its block."""
    (tmp_path / "chunk").write_bytes(b"x" * 100)
    with _LatencyServer(tmp_path, 60) as server:
        url = f"{server.url}/chunk"
        for _ in range(2):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.read() == b"x" * 100
            assert time.perf_counter() - t0 >= 0.06
        assert server.busy_s >= 0.12 and server.peak_in_flight == 1 and server.in_flight == 0
        server.delay_s = 0.0
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        assert server.requests == 3
    assert not server.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_latency_server_answers_as_a_store_does(tmp_path: Path) -> None:
    """Byte ranges, HEAD, folder listings (fsspec lists them), 404, and kept-alive connections."""
    import http.client

    import fsspec

    folder = tmp_path / "a.zarr" / "rain"
    folder.mkdir(parents=True)
    (folder / "0.0").write_bytes(bytes(range(100)))
    (folder / "1.0").write_bytes(b"z" * 7)
    (folder / "empty").write_bytes(b"")
    with _LatencyServer(tmp_path, 0) as server:
        host = server.url.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=5)  # one connection throughout
        for method, path, headers, status, body in [
            ("GET", "/a.zarr/rain/0.0", {}, 200, bytes(range(100))),
            ("GET", "/a.zarr/rain/0.0", {"Range": "bytes=10-19"}, 206, bytes(range(10, 20))),
            ("GET", "/a.zarr/rain/0.0", {"Range": "bytes=-5"}, 206, bytes(range(95, 100))),
            ("GET", "/a.zarr/rain/0.0", {"Range": "bytes=200-"}, 416, b""),
            ("HEAD", "/a.zarr/rain/1.0", {}, 200, b""),
            ("GET", "/a.zarr/rain/9.0", {}, 404, b""),
            ("GET", "/a.zarr/../../etc/passwd", {}, 404, b""),
            ("GET", "/a.zarr/rain", {}, 301, b""),
            ("GET", "/a.zarr/rain/empty", {"Range": "bytes=0-"}, 416, b""),
            ("GET", "/a.zarr/rain/empty", {}, 200, b""),
            ("GET", "/a.zarr/rain/1.0", {"Content-Length": "3"}, 200, b"z" * 7),  # body skipped
            ("GET", "/a.zarr/rain/0.0", {"Range": "bytes=99-"}, 206, bytes([99])),
        ]:
            payload = b"abc" if "Content-Length" in headers else None
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            assert (response.status, response.read()) == (status, body), (method, path, headers)
            if method == "HEAD":
                assert response.getheader("Content-Length") == "7"
        connection.close()
        fs = fsspec.filesystem("http", skip_instance_cache=True)
        found = fs.find(f"{server.url}/a.zarr/rain/")
        assert sorted(p.rsplit("/", 1)[-1] for p in found) == ["0.0", "1.0", "empty"]
        assert fs.cat_file(f"{server.url}/a.zarr/rain/1.0") == b"z" * 7
        assert server.requests >= 10


def test_server_process_delays_counts_and_stops(tmp_path: Path) -> None:
    """The server in a child process: its delay is set and its figures read from the parent."""
    (tmp_path / "chunk").write_bytes(b"y" * 10)
    with _ServerProcess(tmp_path, 0) as server:
        url = f"{server.url}/chunk"
        server.delay_s = 0.05
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"y" * 10
        assert time.perf_counter() - t0 >= 0.05
        assert server.requests == 1 and server.busy_s >= 0.05 and server.peak_in_flight == 1
        server.peak_in_flight = 0
        assert server.peak_in_flight == 0
        assert server.cpu_s >= 0  # clock ticks of 10 ms: one request may not show
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_memory_bench_on_a_generated_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--what memory`` generates its gap-free archive once and reports each worker's peak."""
    import json

    from mlcast_pipes.cli import main

    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(tmp_path / "cache"))
    argv = ["bench", "--what", "memory", "--frame-size", "256", "256", "--n-times", "12"]
    argv += ["--n-time-window", "4", "--tile-size", "64", "--workers", "1", "--no-progress"]
    for _ in range(2):
        assert main([*argv, "--json", str(tmp_path / "m.json")]) == 0
        out = json.loads((tmp_path / "m.json").read_text())["memory"]
        assert out["shape"] == [12, 256, 256]
        assert out["samples_checked"] == [out["samples_per_epoch"]] * 2
        assert out["samples_per_epoch"] > 0 and out["samples_per_s"] > 0
        assert out["peak_rss_per_worker_mb"] >= out["peak_uss_per_worker_mb"] > 0
    assert "archive_generated_s" not in out  # the second run reused the archive
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        "bench-itdpc-t12-256x256-seed0.zarr"
    ]
