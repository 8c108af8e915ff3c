"""Tests of mlcast_pipes.chunkio: whole-chunk reads equal zarr's, on every codec path."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, TransposeCodec, ZstdCodec

from mlcast_pipes.chunkio import ChunkReader

DATA = (np.arange(5 * 6 * 7, dtype="float32").reshape(5, 6, 7) / 7.0).astype("float32")
DATA[1, 2:4, 3] = np.nan


def _v2(
    path: Path, compressor: Any, dtype: str = "float32", chunks: tuple[int, ...] = (1, 6, 7)
) -> Any:
    arr = zarr.create_array(
        str(path),
        shape=DATA.shape,
        chunks=chunks,
        dtype=dtype,
        zarr_format=2,
        compressors=compressor,
        fill_value=np.nan if dtype.startswith(("<f", ">f", "f")) else 0,
    )
    arr[:] = (
        DATA.astype(dtype) if np.dtype(dtype).kind == "f" else np.nan_to_num(DATA).astype(dtype)
    )
    return arr


def _check_same(arr: Any) -> ChunkReader:
    chunks = ChunkReader(arr)
    got = chunks.read(list(range(chunks.n_chunks)))
    for i, block in enumerate(got):
        assert not isinstance(block, BaseException), block
        np.testing.assert_array_equal(block, arr[chunks.rows(i)])
    return chunks


@pytest.mark.parametrize(
    "compressor",
    [
        numcodecs.Zstd(level=1),
        numcodecs.Blosc(cname="lz4"),
        numcodecs.LZ4(),
        numcodecs.GZip(),
        None,
    ],
    ids=["zstd", "blosc", "lz4", "gzip", "none"],
)
def test_v2_codecs_decode_directly_like_zarr(tmp_path: Path, compressor: Any) -> None:
    chunks = _check_same(_v2(tmp_path / "a.zarr", compressor))
    assert chunks.direct


@pytest.mark.parametrize(
    "codecs",
    [
        [BytesCodec(), ZstdCodec(level=1, checksum=True)],
        [BytesCodec(endian="big"), GzipCodec()],
        [BytesCodec(), BloscCodec(cname="zstd", typesize=4)],
        [BytesCodec()],
    ],
    ids=["zstd", "gzip-big-endian", "blosc", "raw"],
)
def test_v3_codecs_decode_directly_like_zarr(tmp_path: Path, codecs: list[Any]) -> None:
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=DATA.shape,
        chunks=(2, 6, 7),
        dtype="float32",
        serializer=codecs[0],
        compressors=codecs[1:] or None,
        fill_value=np.nan,
    )
    arr[:] = DATA
    chunks = _check_same(arr)
    assert chunks.direct
    assert chunks.out_shape(2) == (1, 6, 7)  # the edge chunk holds the last row only


def test_big_endian_and_integer_dtypes(tmp_path: Path) -> None:
    _check_same(_v2(tmp_path / "be.zarr", numcodecs.Zstd(), dtype=">f4"))
    _check_same(_v2(tmp_path / "i2.zarr", numcodecs.Zstd(), dtype="int16"))


def test_other_layouts_are_read_through_zarr(tmp_path: Path) -> None:
    tiled = _v2(tmp_path / "tiled.zarr", numcodecs.Zstd(), chunks=(1, 3, 7))
    assert not _check_same(tiled).direct  # chunked along y too
    shuffled = zarr.create_array(
        str(tmp_path / "t.zarr"),
        shape=DATA.shape,
        chunks=(1, 6, 7),
        dtype="float32",
        filters=[TransposeCodec(order=(0, 2, 1))],
        fill_value=np.nan,
    )
    shuffled[:] = DATA
    assert not _check_same(shuffled).direct


def test_decodes_into_given_buffers_only_when_they_fit(tmp_path: Path) -> None:
    arr = _v2(tmp_path / "a.zarr", numcodecs.Zstd(), chunks=(2, 6, 7))
    chunks = ChunkReader(arr)
    fits = np.empty((2, 6, 7), dtype="float32")
    wrong_dtype = np.empty((2, 6, 7), dtype="float64")
    edge = np.empty((1, 6, 7), dtype="float32")
    got = chunks.read([0, 1, 2], out=[fits, wrong_dtype, edge])
    assert got[0] is fits and got[1] is not wrong_dtype and got[2] is not edge
    for i, block in enumerate(got):
        np.testing.assert_array_equal(block, DATA[chunks.rows(i)])
    with pytest.raises(ValueError, match="2 buffers given for 1 chunks"):
        chunks.read([0], out=[fits, fits])


def test_missing_chunk_reads_as_fill_value(tmp_path: Path) -> None:
    arr = _v2(tmp_path / "a.zarr", numcodecs.Zstd())
    (tmp_path / "a.zarr" / "3.0.0").unlink()
    got = ChunkReader(arr).read([3, 4])
    assert np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1], DATA[4:5])


def test_corrupted_and_foreign_chunks_are_errors_not_data(tmp_path: Path) -> None:
    arr = _v2(tmp_path / "a.zarr", numcodecs.Zstd())
    (tmp_path / "a.zarr" / "1.0.0").write_bytes(b"garbage" * 10)
    # a valid zstd frame of the wrong size must not fill part of a buffer silently
    (tmp_path / "a.zarr" / "2.0.0").write_bytes(numcodecs.Zstd().encode(DATA[2, :3].copy()))
    buffers = [np.full((1, 6, 7), 7.0, dtype="float32") for _ in range(3)]
    got = ChunkReader(arr).read([1, 2, 0], out=buffers)
    assert isinstance(got[0], Exception)
    assert isinstance(got[1], ValueError) and "truncated or foreign" in str(got[1])
    np.testing.assert_array_equal(got[2], DATA[0:1])
    assert (buffers[1] == 7.0).all()


def test_out_of_range_index_is_returned_as_error(tmp_path: Path) -> None:
    got = ChunkReader(_v2(tmp_path / "a.zarr", numcodecs.Zstd())).read([9, -1])
    assert all(isinstance(g, IndexError) for g in got)


def test_store_that_is_not_local_goes_through_the_store_api() -> None:
    arr = zarr.create_array({}, shape=DATA.shape, chunks=(1, 6, 7), dtype="float32")
    arr[:] = DATA
    chunks = _check_same(arr)
    assert chunks.direct
    pending = chunks.submit([4, 0])
    pending.cancel()  # a cancelled batch never raises
    np.testing.assert_array_equal(chunks.submit([4, 0]).result()[1], DATA[0:1])


def _read_in_child(reader: ChunkReader, queue: Any) -> None:
    queue.put(float(np.nansum(reader.read([0, 1, 2])[1])))


def test_reader_made_before_fork_reads_in_the_child(tmp_path: Path) -> None:
    chunks = ChunkReader(_v2(tmp_path / "a.zarr", numcodecs.Zstd()))
    chunks.read([0])  # the parent's thread pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(chunks, queue))
    child.start()
    value = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert value == pytest.approx(float(np.nansum(DATA[1])))


def test_then_runs_on_each_decoded_chunk_and_its_error_is_the_outcome(tmp_path: Path) -> None:
    chunks = ChunkReader(_v2(tmp_path / "a.zarr", numcodecs.Zstd()))
    seen: dict[int, float] = {}

    def then(index: int, block: np.ndarray) -> None:
        if index == 4:
            raise RuntimeError("cut failed")
        seen[index] = float(np.nansum(block))

    got = chunks.read([0, 2, 4], then=then)
    assert seen == {0: pytest.approx(float(DATA[0].sum())), 2: pytest.approx(float(DATA[2].sum()))}
    assert isinstance(got[2], RuntimeError)


def _served_array(tmp_path: Path, server: Any) -> Any:
    """The v2 zstd array of ``tmp_path / "a.zarr"``, opened over ``server``'s HTTP."""
    from mlcast_pipes.reader.requests import _open_store

    _v2(tmp_path / "a.zarr", numcodecs.Zstd(level=1))
    store = _open_store(f"{server.url}/a.zarr", {"skip_instance_cache": True})
    return zarr.open_array(store, mode="r")


def _until(condition: Any, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (things done on zarr's event loop), at most ``timeout``."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "not reached in time"
        time.sleep(0.01)


def test_bytes_fetched_ahead_are_taken_by_the_read_not_fetched_twice(tmp_path: Path) -> None:
    from mlcast_pipes.bench.server import _LatencyServer
    from mlcast_pipes.chunkio import FetchAhead

    with _LatencyServer(tmp_path, 50) as server:
        arr = _served_array(tmp_path, server)
        ahead = FetchAhead(max_chunks=3)
        chunks = ChunkReader(arr, ahead=ahead)
        before = server.requests
        chunks.fetch_ahead([0, 1, 2, 3, 4])  # bounded: three are asked for
        _until(lambda: ahead.held == 3 and ahead._pending == 0)
        assert server.requests - before == 3 and ahead.nbytes > 0
        got = chunks.read([2, 1, 0])  # already here: taken, not asked for again
        np.testing.assert_array_equal(np.concatenate([got[2], got[1], got[0]]), DATA[:3])
        assert (ahead.taken, ahead.held, ahead.nbytes) == (3, 0, 0)
        assert server.requests - before == 3
        got = chunks.read([4])  # not fetched ahead: read as usual
        np.testing.assert_array_equal(got[0], DATA[4:5])
        assert server.requests - before == 4


def test_fetch_ahead_counts_the_bytes_in_flight_against_its_bound(tmp_path: Path) -> None:
    from mlcast_pipes.bench.server import _LatencyServer
    from mlcast_pipes.chunkio import FetchAhead

    with _LatencyServer(tmp_path, 100) as server:
        arr = _served_array(tmp_path, server)
        decoded = 6 * 7 * 4  # the size hint of a chunk until some arrived
        ahead = FetchAhead(max_bytes=2 * decoded)
        chunks = ChunkReader(arr, ahead=ahead)
        chunks.fetch_ahead(range(5))
        _until(lambda: ahead.held > 0)
        assert ahead.held == 2  # two in flight already fill the bound: no more started
        _until(lambda: ahead._pending == 0)
        assert 0 < ahead.nbytes <= 2 * decoded


def test_bytes_fetched_ahead_too_long_ago_are_read_again(tmp_path: Path) -> None:
    import time

    from mlcast_pipes.bench.server import _LatencyServer
    from mlcast_pipes.chunkio import FetchAhead

    with _LatencyServer(tmp_path, 0) as server:
        arr = _served_array(tmp_path, server)
        ahead = FetchAhead(ttl=0.3)
        chunks = ChunkReader(arr, ahead=ahead)
        chunks.fetch_ahead([0])
        _until(lambda: ahead.held == 1 and ahead._pending == 0)
        time.sleep(0.4)
        zarr.open_array(str(tmp_path / "a.zarr"), mode="r+")[0] = 7.0  # rewritten since
        assert float(chunks.read([0])[0][0, 0, 0]) == 7.0
        assert (ahead.taken, ahead.dropped, ahead.nbytes) == (0, 1, 0)


def test_a_failed_fetch_ahead_is_read_again_and_reported_as_usual(tmp_path: Path) -> None:
    import time

    from mlcast_pipes.bench.server import _LatencyServer
    from mlcast_pipes.chunkio import FetchAhead

    with _LatencyServer(tmp_path, 0) as server:
        arr = _served_array(tmp_path, server)
        ahead = FetchAhead(ttl=0.2)
        chunks = ChunkReader(arr, ahead=ahead, known_absent=())
        (tmp_path / "a.zarr" / "3.0.0").unlink()  # gone after opening: FileNotFoundError
        chunks.fetch_ahead([3, 4])
        _until(lambda: ahead.held == 2 and ahead._pending == 0)
        assert isinstance(chunks.read([3])[0], FileNotFoundError)
        time.sleep(0.3)
        chunks.fetch_ahead([0])  # the 0.2 s old fetch of chunk 4 is dropped unread
        _until(lambda: ahead.dropped == 1)
        assert ahead.held == 1


def test_a_process_exits_while_its_remote_reads_are_in_flight(tmp_path: Path) -> None:
    """The decoding pool shuts down at exit: reads still fetching end instead of hanging it."""
    import subprocess
    import sys
    import textwrap
    import time

    script = textwrap.dedent(
        """
        import threading, time
        import numpy as np, zarr
        from zarr.storage import MemoryStore
        from mlcast_pipes.chunkio import ChunkReader
        arr = zarr.create_array(MemoryStore(), shape=(64, 256, 256), chunks=(1, 256, 256),
                                dtype="float32")
        arr[:] = 1.0
        def loop():
            end = time.monotonic() + 2
            while time.monotonic() < end:
                ChunkReader(arr).read(range(64))
        threading.Thread(target=loop).start()
        time.sleep(0.2)
        """
    )
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert time.monotonic() - t0 < 30


def test_cancelled_remote_reads_neither_raise_nor_deliver(tmp_path: Path) -> None:
    from mlcast_pipes.bench.server import _LatencyServer

    with _LatencyServer(tmp_path, 200) as server:
        chunks = ChunkReader(_served_array(tmp_path, server))
        seen: list[int] = []
        pending = chunks.submit([0, 1, 2], then=lambda i, block: seen.append(i))
        pending.cancel()  # while fetching: dropped when their bytes come
        later = chunks.read([4], then=lambda i, block: seen.append(i))
        np.testing.assert_array_equal(later[0], DATA[4:5])
        assert seen == [4]
