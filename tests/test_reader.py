from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import uuid
import warnings
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from mlcast_pipes import chunkio
from mlcast_pipes.errors import DatasetError, ParameterError, ReadError
from mlcast_pipes.reader import (
    FrameReader,
    TileRequest,
    close_readers,
    get_reader,
    naive_read_tile,
)

T, H, W = 8, 20, 24
VAR = "rainrate"


def _field(t: int = T, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Radar-like frames: mostly zeros, a few positive blobs, NaN outside a circle."""
    rng = np.random.default_rng(seed)
    data = rng.gamma(0.6, 3.0, size=(t, h, w)).astype(np.float64)
    data[rng.random((t, h, w)) < 0.6] = 0.0
    yy, xx = np.mgrid[0:h, 0:w]
    outside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (0.5 * min(h, w)) ** 2
    data[:, outside] = np.nan
    return data


def _write(
    target: str,
    data: np.ndarray,
    fmt: int,
    *,
    tchunk: int = 1,
    encoding: dict[str, Any] | None = None,
) -> None:
    t, h, w = data.shape
    da = xr.DataArray(
        data,
        dims=("time", "y", "x"),
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="5min"),
            "y": np.arange(h)[::-1] * 1000.0,
            "x": np.arange(w) * 1000.0,
        },
        name=VAR,
    )
    compressor = numcodecs.Zstd(level=1) if fmt == 2 else zarr.codecs.ZstdCodec(level=1)
    enc: dict[str, Any] = {"chunks": (tchunk, h, w), "compressors": [compressor]}
    enc.update(encoding or {})
    with warnings.catch_warnings():  # zarr warns that v3 consolidated metadata is not in the spec
        warnings.simplefilter("ignore")
        da.to_dataset().to_zarr(
            target, mode="w", zarr_format=fmt, consolidated=True, encoding={VAR: enc}
        )


def _chunk_file(root: Path, fmt: int, t: int) -> Path:
    return root / VAR / (f"{t}.0.0" if fmt == 2 else f"c/{t}/0/0")


@pytest.fixture(params=[2, 3], ids=["zarr2", "zarr3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, np.ndarray, int]:
    fmt = int(request.param)
    data = _field().astype(np.float32)
    path = tmp_path / f"a{fmt}.zarr"
    _write(str(path), data, fmt)
    return str(path), data, fmt


@pytest.fixture(autouse=True)
def _fresh_readers() -> Any:
    yield
    close_readers()


def test_read_tile_equals_numpy_slicing(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR)
    assert r.shape == (T, H, W)
    assert r.dtype == np.float32
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, ny, nx = rng.integers(1, T + 1), rng.integers(1, H + 1), rng.integers(1, W + 1)
        t0, y0, x0 = (
            rng.integers(0, T - n + 1),
            rng.integers(0, H - ny + 1),
            rng.integers(0, W - nx + 1),
        )
        got = r.read_tile(t0, n, y0, ny, x0, nx)
        assert got.dtype == np.float32 and got.shape == (n, ny, nx)
        np.testing.assert_array_equal(got, data[t0 : t0 + n, y0 : y0 + ny, x0 : x0 + nx])


def test_returned_arrays_are_copies(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR)
    a = r.read_tile(0, 2, 0, 5, 0, 5)
    a[...] = -1.0
    b = r.read_tile(0, 2, 0, 5, 0, 5)  # from the cache
    np.testing.assert_array_equal(b, data[0:2, 0:5, 0:5])
    f = r.read_frames(0, 1)
    f[...] = -2.0
    np.testing.assert_array_equal(r.read_frames(0, 1), data[0:1])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_come_back_as_float32(tmp_path: Path, dtype: type) -> None:
    data = _field().astype(dtype)
    _write(str(tmp_path / "d.zarr"), data, 3)
    r = FrameReader(str(tmp_path / "d.zarr"), VAR)
    assert r.dtype == dtype
    got = r.read_tile(1, 3, 2, 10, 4, 12)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data[1:4, 2:12, 4:16].astype(np.float32))


def test_group_of_tiles_decodes_each_frame_once(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR)
    reqs = [
        TileRequest(t0, 4, y0, 8, x0, 8)
        for t0 in (1, 2, 3)
        for y0 in (0, 6, 12)
        for x0 in (0, 8, 16)
    ]
    out = r.read_tiles(reqs)
    for q, o in zip(reqs, out, strict=True):
        np.testing.assert_array_equal(o, data[q.t0 : q.t0 + 4, q.y0 : q.y0 + 8, q.x0 : q.x0 + 8])
    union = 6  # frames 1..6
    assert r.stats.frames_decoded == union
    assert r.stats.cache_misses == union and r.stats.cache_hits == 0
    assert r.stats.bytes_decoded == union * H * W * 4
    assert r.stats.bytes_delivered == sum(o.nbytes for o in out)
    # the same group again: everything from the cache
    r.read_tiles(reqs)
    assert r.stats.frames_decoded == union
    assert r.stats.cache_hits == union
    assert r.stats.amplification == pytest.approx(union * H * W * 4 / r.stats.bytes_delivered)
    assert r.read_tiles([]) == []


def test_tiles_one_by_one_reuse_cached_frames(archive: tuple[str, np.ndarray, int]) -> None:
    url, _, _ = archive
    r = FrameReader(url, VAR)
    for y0 in (0, 10):
        for x0 in (0, 12):
            r.read_tile(2, 4, y0, 10, x0, 12)
    assert r.stats.frames_decoded == 4
    assert r.stats.cache_hits == 12


def test_cache_is_bounded_and_lru(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    frame = H * W * 4
    r = FrameReader(url, VAR, cache_bytes=3 * frame + 10)
    for t in range(6):
        r.read_tile(t, 1, 0, 2, 0, 2)
        assert r.cache_nbytes <= r.cache_bytes
    assert r.cached_frames == [3, 4, 5]
    r.read_tile(3, 1, 0, 2, 0, 2)  # touch 3: now 4 is least recently used
    assert r.stats.cache_hits == 1
    r.read_tile(6, 1, 0, 2, 0, 2)
    assert r.cached_frames == [5, 3, 6]
    # a group needing more frames than the cache holds: still each frame decoded once
    r.stats.reset()
    reqs = [TileRequest(0, T, 0, H, 0, W), TileRequest(1, 5, 3, 4, 5, 6)]
    out = r.read_tiles(reqs)
    np.testing.assert_array_equal(out[0], data)
    np.testing.assert_array_equal(out[1], data[1:6, 3:7, 5:11])
    assert r.stats.cache_hits == 3  # 3, 5 and 6 were cached
    assert r.stats.frames_decoded == T - 3
    assert r.cache_nbytes <= r.cache_bytes
    assert r.cached_frames == [2, 4, 7]  # the last decoded, in order, 3/5/6 evicted


def test_cache_disabled(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR, cache_bytes=0)
    np.testing.assert_array_equal(r.read_frames(0, 3), data[0:3])
    np.testing.assert_array_equal(r.read_frames(0, 3), data[0:3])
    assert r.cache_nbytes == 0 and r.stats.frames_decoded == 6


def test_read_frames_ranges(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR)
    np.testing.assert_array_equal(r.read_frames(0, T), data)
    np.testing.assert_array_equal(r.read_frames(2, 5), data[2:5])
    np.testing.assert_array_equal(r.read_frames(np.int64(T - 1), np.int64(T)), data[T - 1 :])
    for t0, t1 in [(3, 3), (4, 2), (-1, 2), (0, T + 1)]:
        with pytest.raises(ParameterError, match="time"):
            r.read_frames(t0, t1)


@pytest.mark.parametrize(
    ("args", "dim"),
    [
        ((T - 1, 2, 0, 4, 0, 4), "time"),
        ((0, 0, 0, 4, 0, 4), "time"),
        ((0, 1, -1, 4, 0, 4), "y"),
        ((0, 1, H - 3, 4, 0, 4), "y"),
        ((0, 1, 0, 4, W, 1), "x"),
        ((0, 1, 0, 4, 0, 0), "x"),
    ],
)
def test_out_of_range_requests(
    archive: tuple[str, np.ndarray, int], args: tuple[int, ...], dim: str
) -> None:
    url, _, _ = archive
    r = FrameReader(url, VAR)
    with pytest.raises(ParameterError, match=f"along {dim}") as info:
        r.read_tile(*args)
    assert str((T, H, W)) in str(info.value)
    with pytest.raises(ParameterError, match="integer"):
        r.read_tile(0.5, 1, 0, 1, 0, 1)  # type: ignore[arg-type]


def test_corrupted_chunk_raises_read_error(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, fmt = archive
    _chunk_file(Path(url), fmt, 3).write_bytes(b"this is not zstd data" * 4)
    r = FrameReader(url, VAR, retry_backoff=0.0)
    with pytest.raises(ReadError) as info:
        r.read_tiles([TileRequest(0, 2, 0, 4, 0, 4), TileRequest(2, 3, 5, 4, 6, 4)])
    msg = str(info.value)
    assert "frame 3" in msg and url in msg and "corrupted" in msg
    assert "TileRequest(t0=2, n=3" in msg and "TileRequest(t0=0," not in msg
    assert isinstance(info.value.__cause__, Exception)
    assert not isinstance(info.value.__cause__, ReadError)
    # frames that do not touch the broken chunk still read fine
    np.testing.assert_array_equal(r.read_tile(4, 4, 0, H, 0, W), data[4:8])


def test_missing_chunk_reads_fill_value(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, fmt = archive
    _chunk_file(Path(url), fmt, 5).unlink()
    r = FrameReader(url, VAR)
    got = r.read_frames(4, 7)
    np.testing.assert_array_equal(got[0], data[4])
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[2], data[6])


def _patch_store_get(monkeypatch: pytest.MonkeyPatch, fmt: int, fail: Any) -> dict[str, int]:
    """Make reading frame 1's chunk file raise ``fail(calls)`` (succeed if that is None)."""
    key = f"{VAR}/1.0.0" if fmt == 2 else f"{VAR}/c/1/0/0"
    orig = LocalStore.get
    calls = {"n": 0}

    async def get(self: Any, k: str, *args: Any, **kwargs: Any) -> Any:
        if k == key:
            calls["n"] += 1
            exc = fail(calls["n"])
            if exc is not None:
                raise exc
        return await orig(self, k, *args, **kwargs)

    def read_file(path: Path) -> bytes | None:  # the reader's direct path for local stores
        if path.as_posix().endswith(key):
            calls["n"] += 1
            exc = fail(calls["n"])
            if exc is not None:
                raise exc
        return orig_read_file(path)

    orig_read_file = chunkio._read_file
    monkeypatch.setattr(LocalStore, "get", get)
    monkeypatch.setattr(chunkio, "_read_file", read_file)
    return calls


def test_transient_errors_are_retried(
    archive: tuple[str, np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, data, fmt = archive
    calls = _patch_store_get(
        monkeypatch, fmt, lambda n: ConnectionError("connection reset") if n <= 2 else None
    )
    r = FrameReader(url, VAR, retries=3, retry_backoff=0.0)
    np.testing.assert_array_equal(r.read_frames(0, 4), data[0:4])
    assert calls["n"] == 3
    assert r.stats.frames_decoded == 4  # the failures do not count


def test_transient_errors_give_up_after_retries(
    archive: tuple[str, np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, fmt = archive
    calls = _patch_store_get(monkeypatch, fmt, lambda n: TimeoutError("read timed out"))
    r = FrameReader(url, VAR, retries=2, retry_backoff=0.001)
    with pytest.raises(ReadError) as info:
        r.read_tile(0, 3, 0, 4, 0, 4)
    assert calls["n"] == 3  # first try + 2 retries
    msg = str(info.value)
    assert "frame 1" in msg and url in msg and "3 times" in msg
    assert isinstance(info.value.__cause__, TimeoutError)


def test_permanent_errors_fail_at_once(
    archive: tuple[str, np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, fmt = archive
    calls = _patch_store_get(monkeypatch, fmt, lambda n: PermissionError("access denied"))
    r = FrameReader(url, VAR, retries=3, retry_backoff=0.0)
    with pytest.raises(ReadError, match="frame 1"):
        r.read_frames(0, 2)
    assert calls["n"] == 1


def _child(q: Any, url: str, inherited: FrameReader, parent_id: int) -> None:
    try:
        mine = get_reader(url, VAR)
        tile = mine.read_tile(1, 3, 2, 5, 3, 6)
        frames = inherited.read_tile(0, 2, 0, H, 0, W)
        q.put(
            (
                id(mine) != parent_id,
                mine._pid == os.getpid(),
                tile,
                frames,
                inherited._pid == os.getpid(),
                inherited.stats.frames_decoded,
            )
        )
    except BaseException as exc:  # report instead of hanging the parent
        q.put(repr(exc))


def test_get_reader_is_per_process_and_fork_safe(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    parent = get_reader(url, VAR)
    assert get_reader(url, VAR) is parent
    assert get_reader(url, "other") is not parent
    parent.read_frames(0, 4)  # opened and cached in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, url, parent, id(parent)))
    p.start()
    res = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0, res
    assert not isinstance(res, str), res
    new_reader, child_opened, tile, frames, reopened, decoded = res
    assert new_reader and child_opened and reopened
    np.testing.assert_array_equal(tile, data[1:4, 2:7, 3:9])
    np.testing.assert_array_equal(frames, data[0:2])
    assert decoded == 2  # the inherited reader dropped the parent's cache and stats
    assert parent.stats.frames_decoded == 4 and parent._pid == os.getpid()


def test_reader_pickles_without_state(archive: tuple[str, np.ndarray, int]) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR, cache_bytes=12345, retries=1)
    r.read_frames(0, 2)
    r2 = pickle.loads(pickle.dumps(r))
    assert r2.cache_bytes == 12345 and r2.retries == 1 and r2.cache_nbytes == 0
    np.testing.assert_array_equal(r2.read_frames(0, 2), data[0:2])
    r.close()
    assert r.cache_nbytes == 0
    np.testing.assert_array_equal(r.read_frames(1, 2), data[1:2])  # reopens after close


def test_naive_read_tile_equals_read_tile(archive: tuple[str, np.ndarray, int]) -> None:
    url, _, _ = archive
    r = FrameReader(url, VAR)
    for args in [(0, 3, 0, 8, 0, 8), (2, 6, 5, 15, 7, 17), (T - 1, 1, 0, H, 0, W)]:
        naive = naive_read_tile(url, VAR, *args)
        assert naive.dtype == np.float32
        np.testing.assert_array_equal(naive, r.read_tile(*args))
    with pytest.raises(ParameterError):
        naive_read_tile(url, VAR, 0, T + 1, 0, 1, 0, 1)
    with pytest.raises(DatasetError, match=VAR):
        naive_read_tile(url, "nope", 0, 1, 0, 1, 0, 1)


def test_fsspec_memory_url() -> None:
    import fsspec

    url = f"memory://reader-{uuid.uuid4().hex}.zarr"
    data = _field().astype(np.float32)
    _write(url, data, 2)
    try:
        r = FrameReader(url, VAR, storage_options={})
        out = r.read_tiles([TileRequest(0, 3, 0, 10, 0, 12), TileRequest(2, 4, 10, 10, 12, 12)])
        np.testing.assert_array_equal(out[0], data[0:3, 0:10, 0:12])
        np.testing.assert_array_equal(out[1], data[2:6, 10:20, 12:24])
        assert r.stats.frames_decoded == 6
        np.testing.assert_array_equal(naive_read_tile(url, VAR, 2, 4, 10, 10, 12, 12), out[1])
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def test_cf_encoded_integers_match_xarray(tmp_path: Path) -> None:
    data = np.round(_field(), 1)
    enc = {"dtype": "int16", "scale_factor": 0.1, "add_offset": 0.0, "_FillValue": -1}
    for fmt in (2, 3):
        path = str(tmp_path / f"cf{fmt}.zarr")
        _write(path, data, fmt, encoding=enc)
        r = FrameReader(path, VAR)
        assert r.dtype == np.int16
        got = r.read_tile(1, 4, 2, 15, 3, 20)
        ref = xr.open_zarr(path)[VAR].values[1:5, 2:17, 3:23]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        np.testing.assert_array_equal(got, naive_read_tile(path, VAR, 1, 4, 2, 15, 3, 20))


def test_zarr2_fill_value_is_masked_like_xarray(tmp_path: Path) -> None:
    path = tmp_path / "fv.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    a = g.create_array(
        VAR,
        shape=(3, 4, 5),
        chunks=(1, 4, 5),
        dtype="f4",
        fill_value=0.0,
        attributes={"_ARRAY_DIMENSIONS": ["time", "y", "x"]},
    )
    a[:] = np.arange(60, dtype="f4").reshape(3, 4, 5)
    zarr.consolidate_metadata(str(path))
    got = FrameReader(str(path), VAR).read_frames(0, 3)
    assert np.isnan(got[0, 0, 0]) and got[0, 0, 1] == 1.0
    np.testing.assert_array_equal(got, naive_read_tile(str(path), VAR, 0, 3, 0, 4, 0, 5))


def test_uncached_group_reads_reuse_their_frame_buffers(
    archive: tuple[str, np.ndarray, int],
) -> None:
    url, data, _ = archive
    r = FrameReader(url, VAR)
    requests = [TileRequest(t, 3, 1, 4, 2, 5) for t in (0, 3, 5)]
    for _ in range(2):
        got = r.read_tiles(requests, cache=False)
        for req, tile in zip(requests, got, strict=True):
            np.testing.assert_array_equal(tile, data[req.t0 : req.t0 + 3, 1:5, 2:7])
    assert r.cached_frames == []
    assert r.stats.frames_decoded == 16  # nothing kept: every read decodes its 8 frames again
    assert 0 < len(r._spare) <= 8  # ... into the buffers of the frames it dropped
    r.read_tiles(requests[:1])  # a cached read keeps its frames
    assert r.cached_frames == [0, 1, 2]


def test_multi_frame_time_chunks(tmp_path: Path) -> None:
    data = _field().astype(np.float32)
    path = str(tmp_path / "tc.zarr")
    _write(path, data, 3, tchunk=3)
    r = FrameReader(path, VAR)
    np.testing.assert_array_equal(r.read_tile(2, 3, 0, 5, 0, 5), data[2:5, 0:5, 0:5])
    assert r.stats.frames_decoded == 6  # chunks [0, 3) and [3, 6), each decoded once
    assert r.cached_frames == [2, 3, 4]


def test_open_errors_name_the_fix(archive: tuple[str, np.ndarray, int], tmp_path: Path) -> None:
    url, _, _ = archive
    with pytest.raises(DatasetError, match=r"\['rainrate'.*var_name"):
        _ = FrameReader(url, "precip").shape
    with pytest.raises(DatasetError, match="3-D"):
        _ = FrameReader(url, "time").shape
    with pytest.raises(DatasetError, match="does-not-exist"):
        FrameReader(str(tmp_path / "does-not-exist.zarr"), VAR).read_tile(0, 1, 0, 1, 0, 1)
    with pytest.raises(ParameterError):
        FrameReader(url, VAR, cache_bytes=-1)


def test_a_second_lane_is_another_reader_with_half_the_budget(
    archive: tuple[str, np.ndarray, int],
) -> None:
    from mlcast_pipes.reader import close_readers, get_reader

    url, data, _ = archive
    first = get_reader(url, "rainrate")
    second = get_reader(url, "rainrate", lane=1)
    assert second is not first and second is get_reader(url, "rainrate", lane=1)
    assert second.decode_budget == first.decode_budget // 2 and second.cache_bytes == 0
    np.testing.assert_array_equal(second.read_tile(0, 2, 0, 3, 0, 3), data[:2, :3, :3])
    close_readers()
    assert get_reader(url, "rainrate", lane=1) is not second  # closed with the others


def test_only_network_stores_get_two_read_lanes() -> None:
    from mlcast_pipes.delivery import _is_remote

    assert _is_remote("s3://bucket/radar.zarr") and _is_remote("https://host/radar.zarr")
    assert not _is_remote("/data/radar.zarr") and not _is_remote("file:///data/radar.zarr")
    assert not _is_remote("memory://radar.zarr")


def test_both_read_lanes_take_the_bytes_one_fetched_ahead(tmp_path: Path) -> None:
    import time

    import xarray as xr

    from mlcast_pipes.bench.server import _LatencyServer
    from mlcast_pipes.reader import close_readers, get_reader

    rain = np.random.default_rng(1).gamma(0.5, 2.0, (6, 8, 8)).astype("float32")
    encoding = {"rain": {"chunks": (1, 8, 8)}}
    xr.Dataset({"rain": (("time", "y", "x"), rain)}).to_zarr(
        tmp_path / "r.zarr", zarr_format=2, encoding=encoding
    )
    with _LatencyServer(tmp_path, 20) as server:
        url = f"{server.url}/r.zarr"
        first, second = get_reader(url, "rain"), get_reader(url, "rain", lane=1)
        assert second is not first and second.shape == first.shape
        before = server.requests
        first.fetch_ahead(range(6))
        time.sleep(0.3)
        tiles = second.read_tiles([TileRequest(0, 6, 0, 8, 0, 8)], cache=False)
        np.testing.assert_array_equal(tiles[0], rain)
        assert server.requests - before == 6  # one fetch per frame, made ahead
        close_readers()
