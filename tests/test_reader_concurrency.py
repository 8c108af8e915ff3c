"""Reads in flight: many chunk fetches at once from a remote store, decode buffers within budget."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr

from mlcast_pipes.bench.server import _LatencyServer
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.reader import FrameReader, TileRequest
from mlcast_pipes.reader import frames as frames_module

pytest.importorskip("aiohttp")

T, H, W = 48, 16, 20
VAR = "rain"
FRAME_BYTES = H * W * 4


@pytest.fixture(params=[2, 3], ids=["zarr2", "zarr3"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An archive of T one-frame zstd chunks in ``tmp_path / "a.zarr"`` and its values."""
    fmt = int(request.param)
    data = np.random.default_rng(0).gamma(0.5, 2.0, (T, H, W)).astype(np.float32)
    compressor = numcodecs.Zstd(level=1) if fmt == 2 else zarr.codecs.ZstdCodec(level=1)
    encoding = {VAR: {"chunks": (1, H, W), "compressors": [compressor]}}
    ds = xr.Dataset({VAR: (("time", "y", "x"), data)})
    ds.to_zarr(
        tmp_path / "a.zarr", mode="w", zarr_format=fmt, encoding=encoding, consolidated=False
    )
    return tmp_path / "a.zarr", data


def _remote_peak(folder: Path, name: str, requests: list[TileRequest], **kw: Any) -> int:
    """Most chunk requests the server answered at once while ``requests`` were read."""
    with _LatencyServer(folder, 100) as server:
        reader = FrameReader(f"{server.url}/{name}", VAR, **kw)
        assert reader.shape == (T, H, W)  # opened: metadata requests are not counted below
        with server.lock:
            server.peak_in_flight = 0
        reader.read_tiles(requests, cache=False)
        reader.close()
        return server.peak_in_flight


def test_a_remote_read_has_many_chunk_fetches_in_flight(served: tuple[Path, np.ndarray]) -> None:
    path, data = served
    with _LatencyServer(path.parent, 100) as server:
        reader = FrameReader(f"{server.url}/{path.name}", VAR)
        _ = reader.shape
        with server.lock:
            server.peak_in_flight = 0
        requests = [TileRequest(0, T, 2, 5, 3, 7), TileRequest(10, 12, 0, H, 0, W)]
        tiles = reader.read_tiles(requests, cache=False)
        peak = server.peak_in_flight
    np.testing.assert_array_equal(tiles[0], data[:, 2:7, 3:10])
    np.testing.assert_array_equal(tiles[1], data[10:22])
    # 48 chunks of one read: far more than the 8 of two batches of 4, at most the remote bound
    assert 16 <= peak <= frames_module._REMOTE_IN_FLIGHT


def test_remote_fetches_in_flight_follow_the_decode_budget(
    served: tuple[Path, np.ndarray],
) -> None:
    path, _ = served
    requests = [TileRequest(0, T, 0, 4, 0, 4)]
    assert _remote_peak(path.parent, path.name, requests, decode_budget=3 * FRAME_BYTES) <= 3
    assert _remote_peak(path.parent, path.name, requests, decode_budget=0) == 1


@pytest.mark.parametrize("frames_in_budget", [0, 1, 3, 5, 1000])
@pytest.mark.parametrize("cache", [False, True])
def test_decode_buffers_alive_stay_within_the_budget(
    served: tuple[Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    frames_in_budget: int,
    cache: bool,
) -> None:
    """Buffers lent to reads plus spare ones never exceed budget // frame bytes (at least 1)."""
    path, data = served
    budget = frames_in_budget * FRAME_BYTES + FRAME_BYTES // 2
    allowed = min(max(1, budget // FRAME_BYTES), frames_module._LOCAL_IN_FLIGHT)
    lent: list[weakref.ref[np.ndarray]] = []
    most = 0
    original = FrameReader._lend

    def counting_lend(self: FrameReader) -> np.ndarray:
        nonlocal most
        buffer = original(self)
        if all(ref() is not buffer for ref in lent):
            lent.append(weakref.ref(buffer))
        most = max(most, sum(ref() is not None for ref in lent))
        return buffer

    monkeypatch.setattr(FrameReader, "_lend", counting_lend)
    reader = FrameReader(str(path), VAR, decode_budget=budget, cache_bytes=0)
    requests = [TileRequest(t, 12, 1, 6, 2, 9) for t in (0, 12, 30)] + [
        TileRequest(5, 40, 0, H, 0, W)
    ]
    for _ in range(2):  # the second read reuses the buffers the first one left
        tiles = reader.read_tiles(requests, cache=cache)
        for r, tile in zip(requests, tiles, strict=True):
            np.testing.assert_array_equal(
                tile, data[r.t0 : r.t0 + r.n, r.y0 : r.y0 + r.ny, r.x0 : r.x0 + r.nx]
            )
    assert 1 <= most <= allowed
    assert len(reader._spare) <= allowed and reader._lent == 0


def test_read_tiles_from_several_threads(served: tuple[Path, np.ndarray]) -> None:
    path, data = served
    reader = FrameReader(str(path), VAR, cache_bytes=4 * FRAME_BYTES)
    errors: list[BaseException] = []

    def work(t0: int) -> None:
        try:
            for k in range(6):
                t = (t0 + 5 * k) % (T - 12)
                tile = reader.read_tiles([TileRequest(t, 12, 3, 4, 5, 6)], cache=k % 2 == 0)[0]
                np.testing.assert_array_equal(tile, data[t : t + 12, 3:7, 5:11])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t0,)) for t0 in (0, 7, 19)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_decode_budget_must_not_be_negative() -> None:
    with pytest.raises(ParameterError, match="decode_budget"):
        FrameReader("x.zarr", VAR, decode_budget=-1)
