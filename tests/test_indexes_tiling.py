from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from mlcast_pipes.errors import IndexFileError, ParameterError, ReadError, StaleIndexError
from mlcast_pipes.indexes.format import sidecar_path
from mlcast_pipes.indexes.tiling import TileIndex, prepare_tiling
from mlcast_pipes.tiling import TilingParams, hist_bin, iter_tile_statistics, time_windows

H, W = 30, 36


def _times() -> np.ndarray:
    """Two 15-min then 5-min regimes, a long gap, a short gap (two dropped steps)."""
    a = pd.date_range("2021-06-01 00:00", periods=8, freq="15min")
    b = pd.date_range(a[-1] + pd.Timedelta("5min"), periods=22, freq="5min")
    c = pd.date_range(b[-1] + pd.Timedelta("40D"), periods=16, freq="5min")
    t = np.concatenate([a.values, b.values, c.values])
    return np.delete(t, [40, 41])  # gap inside the last event


def _data(n_t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.35, 3.0, (n_t, H, W)).astype(np.float32)
    x[x < 0.4] = 0.0
    yy, xx = np.mgrid[0:H, 0:W]
    x[:, (yy - 14) ** 2 + (xx - 17) ** 2 > 17**2] = np.nan  # outside the radar circle
    for f, fill in ((5, None), (12, "patch"), (20, "neg"), (25, "clutter"), (30, "dry")):
        if f >= n_t:
            continue
        if fill is None:
            x[f] = np.nan  # an all-NaN frame
        elif fill == "patch":
            x[f, 3:9, 4:20] = np.nan  # a NaN patch
        elif fill == "neg":
            x[f, 10, 10] = -3.0  # negative value: dry
        elif fill == "clutter":
            x[f, 15, 15] = 4000.0  # clutter
        else:
            x[f, :, :6] = 0.0  # dry stripe
    return x


def _dataarray(x: np.ndarray, times: np.ndarray, **attrs: Any) -> xr.DataArray:
    data = dsa.from_array(x, chunks=(1, x.shape[1], x.shape[2]))
    return xr.DataArray(
        data,
        dims=("time", "y", "x"),
        coords={"time": times, "y": np.arange(x.shape[1])[::-1] * 1000.0},
        attrs=attrs,
    )


def _naive(
    x: np.ndarray,
    times: np.ndarray,
    params: TilingParams,
    missing: Any = None,
    cts: Any = None,
    to_rate: Any = None,
) -> tuple[pd.DataFrame, int, int]:
    """Straightforward loops over windows and tiles (independent of the implementation)."""
    r = x if to_rate is None else to_rate(x)
    n = params.n_time_window
    ty, tx = params.tile_size
    st, sy, sx = params.effective_stride
    t = np.asarray(times, dtype="datetime64[ns]")
    reg = np.zeros(len(t), int) if cts is None else (t >= np.datetime64(cts)).astype(int)
    steps = {}
    for g in set(reg.tolist()):
        d = [t[i + 1] - t[i] for i in range(len(t) - 1) if reg[i] == reg[i + 1] == g]
        steps[g] = min(d) if d else None
    miss = [] if missing is None else [np.datetime64(m) for m in missing]
    rows, gap, nan_rej = [], 0, 0
    positions = [(y0, x0) for y0 in range(0, H - ty + 1, sy) for x0 in range(0, W - tx + 1, sx)]
    for s in range(0, len(t) - n + 1, st):
        ok = len(set(reg[s : s + n].tolist())) == 1
        ok = ok and all(t[i + 1] - t[i] == steps[reg[s]] for i in range(s, s + n - 1))
        ok = ok and not any(t[s] < m < t[s + n - 1] for m in miss)
        if not ok:
            gap += len(positions)
    # valid windows: each regular segment's own lattice, from its first step
    firsts = [
        i
        for i in range(len(t))
        if i == 0
        or reg[i] != reg[i - 1]
        or t[i] - t[i - 1] != steps[reg[i]]
        or any(t[i - 1] < m < t[i] for m in miss)
    ]
    valid = [
        s
        for a, b in zip(firsts, [*firsts[1:], len(t)], strict=True)
        for s in range(a, b - n + 1, st)
    ]
    for s in valid:
        for y0, x0 in positions:
            cube = r[s : s + n, y0 : y0 + ty, x0 : x0 + tx]
            nanc = int(np.isnan(cube).sum())
            if nanc / cube.size > params.max_nan_fraction:
                nan_rej += 1
                continue
            v = cube[~np.isnan(cube)]
            vc = np.maximum(v.astype(np.float64), 0)
            cap = np.inf if params.clip_max is None else params.clip_max
            clipped = int((vc > np.float32(cap)).sum())
            vc = np.minimum(vc, np.float32(cap))
            row: dict[str, Any] = {
                "t_start": s,
                "y_start": y0,
                "x_start": x0,
                "nan_count": nanc,
                "nan_fraction": nanc / cube.size,
                "sum": vc.sum(),
                "mean": vc.mean() if v.size else np.nan,
                "max": vc.max() if v.size else np.nan,
                "frac_wet": (v > np.float32(params.wet_threshold)).mean() if v.size else np.nan,
                "clip_count": clipped,
                "values": vc,
            }
            for sc in params.importance_scales:
                row[f"imp{sc}"] = np.mean(1 - np.exp(-vc / sc)) if v.size else np.nan
            rows.append(row)
    return pd.DataFrame(rows), gap, nan_rej


def _check_against_naive(index: TileIndex, naive: pd.DataFrame, params: TilingParams) -> None:
    table = index.table
    assert len(table) == len(naive) > 0
    assert table["tile_id"].tolist() == list(range(len(table)))
    for c in ("t_start", "y_start", "x_start", "nan_count", "clip_count"):
        np.testing.assert_array_equal(table[c].to_numpy(), naive[c].to_numpy(), err_msg=c)
    for c in ("nan_fraction", "sum", "mean", "max", "frac_wet"):
        np.testing.assert_allclose(table[c], naive[c], rtol=2e-5, atol=1e-6, err_msg=c)
    for sc in params.importance_scales:
        col = "imp_s" + format(sc, "g").replace(".", "_")
        # from the histogram: a bin is 12% wide, so one pixel is off by at most 0.06 / e
        np.testing.assert_allclose(table[col], naive[f"imp{sc}"], atol=1e-2, err_msg=col)
    qcols = [c for c in table.columns if c.startswith("p")]
    for (_, row), (_, ref) in zip(table.iterrows(), naive.iterrows(), strict=True):
        v = ref["values"]
        if v.size == 0:
            assert all(np.isnan(row[c]) for c in qcols)
            continue
        for q, c in zip(params.quantiles, qcols, strict=True):
            lo = hist_bin([np.quantile(v, q, method="lower")])[0]
            hi = hist_bin([np.quantile(v, q, method="higher")])[0]
            assert lo - 1 <= hist_bin([row[c]])[0] <= hi + 1, (c, row[c], lo, hi)
            assert row[c] <= row["max"] * (1 + 1e-6)


CASES = [
    TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3),
    # overlapping strides in time and space (cells of 2 x 4 pixels)
    TilingParams(n_time_window=4, tile_size=(8, 12), stride=(2, 6, 4), max_nan_fraction=0.5),
    # every tile kept, all-NaN tiles included
    TilingParams(n_time_window=2, tile_size=(15, 18), stride=(1, 15, 9), max_nan_fraction=1.0),
    TilingParams(
        n_time_window=1,
        tile_size=(6, 6),
        max_nan_fraction=0.2,
        wet_threshold=1.0,
        quantiles=(0.25, 0.5, 0.75),
        importance_scales=(0.5, 2.0),
    ),
    # no cap: the clutter pixel (4000 mm/h) reaches the statistics
    TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3, clip_max=None),
    # a low cap: many pixels capped and counted
    TilingParams(n_time_window=2, tile_size=(8, 8), stride=(1, 4, 4), clip_max=5.0),
]


@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("block_frames", [1, 4, 512])
def test_statistics_match_naive(tmp_path: Path, params: TilingParams, block_frames: int) -> None:
    times = _times()
    x = _data(len(times))
    missing = np.array([times[33] + np.timedelta64(150, "s")])  # strictly inside a window
    cts = times[8]
    da = _dataarray(x, times)
    idx = prepare_tiling(
        da,
        params,
        tmp_path,
        dataset_id="test",
        fingerprint="fp",
        missing_times=missing,
        consistent_timestep_start=cts,
        block_frames=block_frames,
    )
    naive, gap, nan_rej = _naive(x, times, params, missing=missing, cts=cts)
    _check_against_naive(idx, naive, params)
    assert idx.rejected == {"gap": gap, "nan": nan_rej}
    assert idx.meta["n_rows"] == len(naive)
    # no kept tile crosses a gap, a step change or a missing time
    t = times.astype("datetime64[ns]")
    for s in idx.table["t_start"].unique():
        span = t[s : s + params.n_time_window]
        assert len(set(np.diff(span).tolist())) <= 1
        assert not ((span[0] < missing) & (missing < span[-1])).any()
        assert (span[0] >= cts) == (span[-1] >= cts)
    assert "tiles kept" in idx.summary() and "for time gaps" in idx.summary()


def test_time_start_and_attrs_from_dataarray(tmp_path: Path) -> None:
    times = _times()
    x = _data(len(times))
    missing = np.array([times[33] + np.timedelta64(150, "s")])
    da = _dataarray(x, times, missing_times=missing, consistent_timestep_start=str(times[8]))
    params = TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3)
    idx = prepare_tiling(da, params, tmp_path, dataset_id="test", fingerprint="fp")
    naive, _, _ = _naive(x, times, params, missing=missing, cts=times[8])
    assert idx.table["t_start"].tolist() == naive["t_start"].tolist()
    first = idx.path.read_text().splitlines()[1].split(",")
    s = int(first[2])
    assert first[1] == np.datetime_as_string(times[s], unit="s")
    assert "T" in first[1] and not first[1].endswith("Z")
    assert (idx.table["time_start"].to_numpy() == times[idx.table["t_start"].to_numpy()]).all()


def test_zarr_archive_reload_and_staleness(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=24, freq="10min").values
    x = _data(24, seed=3)
    store = tmp_path / "arch.zarr"
    xr.DataArray(
        x, dims=("time", "y", "x"), coords={"time": times}, name="rr"
    ).to_dataset().to_zarr(store, encoding={"rr": {"chunks": (1, H, W)}}, consolidated=False)
    da = xr.open_zarr(store, chunks={}, consolidated=False)["rr"]
    assert da.data.chunksize == (1, H, W)
    params = TilingParams(n_time_window=4, tile_size=(10, 12), max_nan_fraction=0.3)
    folder = tmp_path / "idx"
    idx = prepare_tiling(da, params, folder, dataset_id="arch", fingerprint="v1")
    naive, _, _ = _naive(x, times, params)
    _check_against_naive(idx, naive, params)
    assert idx.path == folder / "arch.10x12.4.nan0.3.samples.csv"
    mtime = idx.path.stat().st_mtime_ns

    def explode(a: np.ndarray) -> np.ndarray:
        raise AssertionError("must not recompute")

    # matching index: loaded, not recomputed
    again = prepare_tiling(da, params, folder, dataset_id="arch", fingerprint="v1", to_rate=explode)
    assert again.path.stat().st_mtime_ns == mtime and again.n_tiles == idx.n_tiles
    # the dataset changed
    with pytest.raises(StaleIndexError, match="fingerprint changed") as info:
        prepare_tiling(da, params, folder, dataset_id="arch", fingerprint="v2")
    assert "recompute=True" in str(info.value)
    # a changed parameter with the same file name (opened explicitly)
    with pytest.raises(StaleIndexError, match="n_time_window: index has 4, asked 6"):
        TileIndex.open(idx.path, expected_params=TilingParams(n_time_window=6))
    # recompute on request
    new = prepare_tiling(
        da, params, folder, dataset_id="arch", fingerprint="v2", on_stale="recompute"
    )
    assert new.meta["dataset_fingerprint"] == "v2"
    forced = prepare_tiling(da, params, folder, dataset_id="arch", fingerprint="v2", recompute=True)
    assert forced.meta["created"] >= new.meta["created"]
    opened = TileIndex.open(folder, forced.tiling_id, expected_fingerprint="v2", verify="sha256")
    pd.testing.assert_frame_equal(opened.table, forced.table)
    assert opened.params.to_dict() == params.to_dict()


def test_incomplete_and_damaged_index(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=12, freq="5min").values
    da = _dataarray(_data(12), times)
    params = TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3)
    idx = prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f")
    # interrupted pass (no sidecar): prepare recomputes it
    sidecar_path(idx.path).unlink()
    with pytest.raises(IndexFileError, match="incomplete"):
        TileIndex.open(idx.path)
    again = prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f")
    assert again.n_tiles == idx.n_tiles and sidecar_path(idx.path).exists()
    # truncated CSV: error naming the file and how to rebuild
    data = idx.path.read_bytes()
    idx.path.write_bytes(data[:-10])
    with pytest.raises(IndexFileError, match="recompute=True") as info:
        prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f")
    assert str(idx.path) in str(info.value)
    fixed = prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f", recompute=True)
    assert fixed.path.read_bytes() == data


def test_exception_mid_pass_leaves_no_index(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=20, freq="5min").values
    da = _dataarray(_data(20), times)
    params = TilingParams(n_time_window=2, tile_size=(10, 12), max_nan_fraction=0.3)
    calls = {"n": 0}

    def flaky(a: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 9:
            raise OSError("disk went away")
        return a

    with pytest.raises(ReadError, match="disk went away") as info:
        prepare_tiling(
            da, params, tmp_path, dataset_id="d", fingerprint="f", to_rate=flaky, block_frames=4
        )
    assert "fix" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    idx = prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f")
    assert idx.n_tiles > 0


def test_no_valid_tile(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=10, freq="5min").values
    # one odd 1-min step makes 1 min the nominal step: every 3-step window crosses a gap
    gappy = times[::2]
    irregular = np.sort(np.concatenate([gappy, gappy[:1] + np.timedelta64(1, "m")]))
    da = _dataarray(_data(len(irregular)), irregular)
    with pytest.raises(ParameterError, match="rejected for time gaps") as info:
        prepare_tiling(
            da,
            TilingParams(n_time_window=3, tile_size=(10, 12)),
            tmp_path,
            dataset_id="d",
            fingerprint="f",
        )
    assert "n_time_window" in str(info.value)
    x = np.full((6, H, W), np.nan, dtype=np.float32)
    da = _dataarray(x, times[:6])
    with pytest.raises(ParameterError, match=r"27 for NaN fraction > 0.05") as info:
        prepare_tiling(
            da,
            TilingParams(n_time_window=2, tile_size=(10, 12)),
            tmp_path,
            dataset_id="d",
            fingerprint="f",
        )
    assert "max_nan_fraction" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=6, freq="5min").values
    da = _dataarray(_data(6), times)
    with pytest.raises(ParameterError, match=r"larger than the domain \(y=30, x=36\)"):
        prepare_tiling(
            da, TilingParams(tile_size=(64, 64)), tmp_path, dataset_id="d", fingerprint="f"
        )
    with pytest.raises(ParameterError, match="larger than the archive"):
        prepare_tiling(
            da,
            TilingParams(n_time_window=12, tile_size=(8, 8)),
            tmp_path,
            dataset_id="d",
            fingerprint="f",
        )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IndexFileError, match="file") as info:
        prepare_tiling(
            da,
            TilingParams(n_time_window=2, tile_size=(8, 8), max_nan_fraction=1),
            blocker / "index",
            dataset_id="d",
            fingerprint="f",
        )
    assert "fix" in str(info.value)
    # dims in another order are accepted
    yx = da.transpose("y", "time", "x")
    idx = prepare_tiling(
        yx,
        TilingParams(n_time_window=2, tile_size=(8, 8), max_nan_fraction=1),
        tmp_path / "ok",
        dataset_id="d",
        fingerprint="f",
    )
    assert idx.n_tiles == 3 * 3 * 4
    # an in-memory (numpy-backed) DataArray works too and gives the same table
    mem = prepare_tiling(
        yx.compute(),
        TilingParams(n_time_window=2, tile_size=(8, 8), max_nan_fraction=1),
        tmp_path / "mem",
        dataset_id="d",
        fingerprint="f",
    )
    pd.testing.assert_frame_equal(mem.table, idx.table)
    with pytest.raises(ParameterError, match="is a folder"):
        TileIndex.open(tmp_path / "mem")


def test_to_rate_applied(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=8, freq="5min").values
    rng = np.random.default_rng(1)
    dbz = rng.uniform(-10, 55, (8, H, W)).astype(np.float32)
    dbz[:, :4, :4] = np.nan

    def zr(z: np.ndarray) -> np.ndarray:
        out: np.ndarray = (10 ** (z / 10) / 200) ** (1 / 1.6)
        out[z < 0] = 0
        return out

    params = TilingParams(n_time_window=2, tile_size=(10, 12), max_nan_fraction=0.3)
    idx = prepare_tiling(
        _dataarray(dbz, times), params, tmp_path, dataset_id="z", fingerprint="f", to_rate=zr
    )
    naive, _, _ = _naive(dbz, times, params, to_rate=zr)
    _check_against_naive(idx, naive, params)


def test_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    times = pd.date_range("2022-01-01", periods=12, freq="5min").values
    da = _dataarray(_data(12), times)
    params = TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3)
    prepare_tiling(
        da, params, tmp_path, dataset_id="d", fingerprint="f", progress=True, block_frames=4
    )
    assert capsys.readouterr().err == ""  # a pass shorter than two seconds shows no bar
    monkeypatch.setattr("mlcast_pipes.progress.DELAY_S", 0.0)
    prepare_tiling(da, params, tmp_path / "again", dataset_id="d", fingerprint="f", progress=True)
    err = capsys.readouterr().err
    # the tqdm style of every pass
    assert "prepare d.10x12.3.nan0.3: 100%" in err and "12/12 [" in err and "frames/s]" in err
    assert err.endswith("\n")


def test_distributed_client(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    times = _times()
    x = _data(len(times))
    da = _dataarray(x, times)
    params = TilingParams(
        n_time_window=4, tile_size=(8, 12), stride=(2, 6, 4), max_nan_fraction=0.5
    )
    local = prepare_tiling(da, params, tmp_path / "local", dataset_id="d", fingerprint="f")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        dist = prepare_tiling(
            da,
            params,
            tmp_path / "dist",
            dataset_id="d",
            fingerprint="f",
            progress=True,
            block_frames=8,
        )
    pd.testing.assert_frame_equal(local.table, dist.table)


def test_memory_bounded_blocks() -> None:
    """Each block yields only the windows ending in it: rows per block do not grow with T."""
    n_t = 400
    times = pd.date_range("2022-01-01", periods=n_t, freq="5min").values
    x = np.ones((n_t, 16, 16), dtype=np.float32)
    params = TilingParams(n_time_window=3, tile_size=(4, 4), stride=(1, 4, 4))
    windows = time_windows(times, 3, 1)
    sizes, frames = [], []
    for blk in iter_tile_statistics(
        dsa.from_array(x, chunks=(1, 16, 16)), times, params, windows, block_frames=25
    ):
        sizes.append(blk.n_rows)
        frames.append(blk.frames_done)
    assert sum(sizes) == (n_t - 2) * 16
    assert max(sizes) <= 25 * 16
    assert frames[-1] == n_t and len(frames) == n_t // 25


def test_bench_prepare_small(tmp_path: Path) -> None:
    from mlcast_pipes.bench import bench_prepare

    times = pd.date_range("2022-01-01", periods=16, freq="5min").values
    store = tmp_path / "b.zarr"
    xr.DataArray(
        _data(16), dims=("time", "y", "x"), coords={"time": times}, name="rr"
    ).to_dataset().to_zarr(store, encoding={"rr": {"chunks": (1, H, W)}}, consolidated=False)
    out = bench_prepare(store, n_time_windows=(2, 4), tile_size=(10, 12))
    assert out["shape"] == [16, H, W]
    assert set(out["ratio"]) == {"2", "4"} and all(v > 0 for v in out["ratio"].values())
    assert out["nansum_s"] > 0 and "prepare_2" in out["peak_rss_mb"]
    assert set(out["peak_traced_mb_by_frames"]) == {"4", "8", "16"}


def test_index_files_are_complete_after_pass(tmp_path: Path) -> None:
    times = pd.date_range("2022-01-01", periods=12, freq="5min").values
    da = _dataarray(_data(12), times)
    params = TilingParams(n_time_window=3, tile_size=(10, 12), max_nan_fraction=0.3)
    t0 = time.time()
    idx = prepare_tiling(da, params, tmp_path, dataset_id="d", fingerprint="f")
    meta = idx.meta
    assert meta["kind"] == "tiling" and meta["dataset_fingerprint"] == "f"
    assert meta["csv_bytes"] == idx.path.stat().st_size
    assert meta["columns"][:3] == ["tile_id", "time_start", "t_start"]
    assert meta["params"] == params.to_dict()
    assert meta["time_step_s"] == 300 and len(meta["histogram"]["edges"]) == 101
    assert meta["mlcast_pipes_version"] and meta["created"].endswith("Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d.10x12.3.nan0.3.meta.json",
        "d.10x12.3.nan0.3.samples.csv",
        "d.10x12.3.nan0.3.steps.bin",  # per-step statistics of the tiles
    ]
    assert meta["steps"]["bytes"] == idx.steps_path.stat().st_size
    assert time.time() - t0 < 30
    assert os.access(idx.path, os.R_OK)
