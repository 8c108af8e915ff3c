from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import (
    atomic_write,
    cleanup_stale_temps,
    ensure_writable_dir,
    importance_column,
    index_paths,
    quantile_column,
    read_sidecar,
    sanitize_id,
    sidecar_path,
    tiling_columns,
    tiling_dtypes,
    write_sidecar,
)
from mlcast_pipes.indexes.index_csv import load_index, validate_index, write_index

COLUMNS = tiling_columns((0.5, 0.99), (1.0,))
PARAMS = {"n_time_window": 4, "tile_size": [8, 8], "stride": [4, 8, 8], "max_nan_fraction": 0.05}


def _chunk(start: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    data: dict[str, object] = {
        "tile_id": np.arange(start, start + n),
        "time_start": np.datetime_as_string(
            np.datetime64("2020-01-01T00:00")
            + np.arange(start, start + n) * np.timedelta64(5, "m"),
            unit="s",
        ),
    }
    for c in COLUMNS[2:]:
        data[c] = (
            rng.integers(0, 100, n)
            if c
            in {
                "t_start",
                "y_start",
                "x_start",
                "n_time_window",
                "y_tile",
                "x_tile",
                "nan_count",
                "clip_count",
            }
            else rng.random(n) * 10
        )
    return pd.DataFrame(data, columns=COLUMNS)


def _meta() -> dict[str, object]:
    return {
        "kind": "tiling",
        "dataset_id": "ds",
        "dataset_fingerprint": "fp1",
        "params": PARAMS,
        "dtypes": tiling_dtypes(COLUMNS),
    }


def _write(folder: Path, n_chunks: int = 3, rows: int = 50) -> Path:
    csv, _ = index_paths(folder, "ds.8x8.4")
    write_index(csv, (_chunk(i * rows, rows) for i in range(n_chunks)), _meta(), columns=COLUMNS)
    return csv


def test_names_and_ids() -> None:
    assert [quantile_column(q) for q in (0.5, 0.9, 0.95, 0.99, 0.999)] == [
        "p50",
        "p90",
        "p95",
        "p99",
        "p999",
    ]
    assert importance_column(1.0) == "imp_s1" and importance_column(0.5) == "imp_s0_5"
    assert sanitize_id("precipitation.it dpc/5min") == "precipitation.it_dpc_5min"
    with pytest.raises(ParameterError):
        sanitize_id("...", fallback=None)
    assert sidecar_path("/a/x.samples.csv") == Path("/a/x.meta.json")


def test_roundtrip_with_compact_dtypes(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    table, meta = load_index(csv, expected_params=PARAMS, expected_fingerprint="fp1")
    assert meta["n_rows"] == 150 and meta["columns"] == COLUMNS
    assert list(table.columns) == COLUMNS
    assert table["tile_id"].dtype == np.int32 and table["p99"].dtype == np.float32
    assert str(table["time_start"].dtype).startswith("datetime64")
    assert table["time_start"].iloc[1] == pd.Timestamp("2020-01-01T00:05:00")
    assert table["tile_id"].tolist() == list(range(150))
    expected = pd.concat([_chunk(0, 50), _chunk(50, 50), _chunk(100, 50)], ignore_index=True)
    np.testing.assert_allclose(table["mean"], expected["mean"], rtol=1e-5)
    # by folder + id, and a subset of columns
    sub, _ = load_index(tmp_path, "ds.8x8.4", columns=["p99", "tile_id"])
    assert list(sub.columns) == ["tile_id", "p99"]
    with pytest.raises(ParameterError, match="choose from"):
        load_index(csv, columns=["nope"])
    assert "2020-01-01T00:05:00," in csv.read_text().splitlines()[2]


def test_missing_sidecar_is_incomplete(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    sidecar_path(csv).unlink()
    with pytest.raises(IndexFileError, match=r"incomplete \(no sidecar\) - rerun prepare"):
        load_index(csv)


def test_truncated_csv_detected(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    data = csv.read_bytes()
    csv.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="truncated") as info:
        load_index(csv)
    assert str(csv) in str(info.value)


def test_same_size_edit_detected_with_sha256(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    text = csv.read_text()
    lines = text.splitlines(keepends=True)
    lines[5] = lines[5].replace("1", "2", 1) if "1" in lines[5] else lines[5].replace("3", "4", 1)
    csv.write_text("".join(lines))
    assert csv.stat().st_size == len(text.encode())
    load_index(csv, verify="size")  # same size: not seen by the cheap check
    with pytest.raises(IndexFileError, match="sha256"):
        load_index(csv, verify="sha256")


def test_stale_param_and_fingerprint(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    with pytest.raises(StaleIndexError, match=r"n_time_window: index has 4, asked 6") as info:
        validate_index(csv, expected_params={**PARAMS, "n_time_window": 6})
    assert "recompute=True" in str(info.value)
    with pytest.raises(StaleIndexError, match=r"max_nan_fraction: index has 0.05, asked 0.1"):
        validate_index(csv, expected_params={**PARAMS, "max_nan_fraction": 0.1})
    with pytest.raises(StaleIndexError, match="fingerprint changed") as info:
        validate_index(csv, expected_fingerprint="fp2")
    assert "appended" in str(info.value)
    meta = read_sidecar(sidecar_path(csv))
    meta["format_version"] = 0
    write_sidecar(sidecar_path(csv), meta)
    with pytest.raises(StaleIndexError, match="format version"):
        validate_index(csv)


def test_header_mismatch_and_kind(tmp_path: Path) -> None:
    csv = _write(tmp_path)
    with pytest.raises(IndexFileError, match="'tiling' index"):
        validate_index(csv, kind="sampling")
    meta = read_sidecar(sidecar_path(csv))
    meta["columns"] = COLUMNS[::-1]
    write_sidecar(sidecar_path(csv), meta)
    with pytest.raises(IndexFileError, match="columns"):
        validate_index(csv)


def test_exception_mid_write_leaves_no_complete_index(tmp_path: Path) -> None:
    csv, side = index_paths(tmp_path, "ds.8x8.4")

    def chunks() -> Iterator[pd.DataFrame]:
        yield _chunk(0, 10)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_index(csv, chunks(), _meta(), columns=COLUMNS)
    assert not csv.exists() and not side.exists()
    assert list(tmp_path.iterdir()) == []  # temp file removed
    # with an old complete index: it stays complete and unchanged
    _write(tmp_path)
    before = csv.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        write_index(csv, chunks(), _meta(), columns=COLUMNS)
    assert csv.read_bytes() == before
    load_index(csv, verify="sha256")


def test_atomic_write_and_sidecar(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with atomic_write(target) as fh:
        fh.write("hello\n")
        assert not target.exists()
    assert target.read_text() == "hello\n" and fh.nbytes == 6
    with pytest.raises(ValueError), atomic_write(target) as fh:
        fh.write("partial")
        raise ValueError
    assert target.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
    write_sidecar(tmp_path / "m.meta.json", {"a": np.int64(3), "b": (1, 2), "c": np.float32(0.5)})
    assert read_sidecar(tmp_path / "m.meta.json") == {"a": 3, "b": [1, 2], "c": 0.5}
    (tmp_path / "bad.meta.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not valid JSON"):
        read_sidecar(tmp_path / "bad.meta.json")


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(IndexFileError, match="a_file") as info:
        ensure_writable_dir(blocker / "index")
    assert "fix" in str(info.value)
    with pytest.raises(IndexFileError, match="not a folder"):
        ensure_writable_dir(blocker)
    with pytest.raises(IndexFileError, match="a_file"):
        write_index(blocker / "sub" / "x.samples.csv", [_chunk(0, 2)], _meta(), columns=COLUMNS)


def test_stale_temp_cleanup(tmp_path: Path) -> None:
    import socket

    host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())[:40]
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(proc.stdout)
    dead = tmp_path / f".x.samples.csv.{host}.{dead_pid}.abcd1234.tmp"
    live = tmp_path / f".x.samples.csv.{host}.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / "keep.csv"
    for p in (dead, live, other):
        p.write_text("x")
    removed = cleanup_stale_temps(tmp_path)
    assert removed == [dead]
    assert live.exists() and other.exists()
    old = time.time() - 3 * 24 * 3600
    os.utime(live, (old, old))
    assert cleanup_stale_temps(tmp_path) == [live]


def test_kill_mid_write_leaves_no_complete_index(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_indexes_format import _chunk, _meta, COLUMNS
        from mlcast_pipes.indexes.index_csv import write_index
        def chunks():
            yield _chunk(0, 20)
            print("started", flush=True)
            time.sleep(60)
            yield _chunk(20, 20)
        write_index({str(tmp_path / "k.samples.csv")!r}, chunks(), _meta(), columns=COLUMNS)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "k.samples.csv").exists()
    assert not (tmp_path / "k.meta.json").exists()
    with pytest.raises(IndexFileError, match="not found"):
        load_index(tmp_path / "k.samples.csv")
    leftovers = list(tmp_path.glob(".k.samples.csv.*.tmp"))
    assert len(leftovers) == 1
    assert cleanup_stale_temps(tmp_path) == leftovers


def test_streaming_write_memory_bounded(tmp_path: Path) -> None:
    rows = 500
    seen_sizes: list[int] = []

    def chunks(n_chunks: int, name: str) -> Iterator[pd.DataFrame]:
        for i in range(n_chunks):
            tmp = list(tmp_path.glob(f".{name}.samples.csv.*.tmp"))
            seen_sizes.append(tmp[0].stat().st_size if tmp else -1)
            yield _chunk(i * rows, rows)

    def peak_of(n_chunks: int, name: str) -> int:
        write_index(tmp_path / "warm.samples.csv", [_chunk(0, rows)], _meta(), columns=COLUMNS)
        tracemalloc.start()
        try:
            meta = write_index(
                tmp_path / f"{name}.samples.csv", chunks(n_chunks, name), _meta(), columns=COLUMNS
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert meta["n_rows"] == n_chunks * rows
        return peak

    small = peak_of(2, "small")
    seen_sizes.clear()
    large = peak_of(20, "large")
    # earlier rows were on disk (not held in memory) while later ones were produced
    assert seen_sizes[-1] > seen_sizes[1] > 0
    # 10x the rows, about the same peak memory
    assert large < 1.5 * small + 200_000, (small, large)
