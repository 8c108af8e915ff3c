from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.format import tiling_dtypes
from mlcast_pipes.indexes.index_csv import write_index
from mlcast_pipes.indexes.sampling import build_sampling_index
from mlcast_pipes.plots import (
    _coverage,
    inspect_index,
    plot_batch_sample,
    plot_sample_density,
    plot_samples_over_time,
    plot_scalar_histogram,
    summary_table,
)
from mlcast_pipes.sampling import draw_epoch, run_sampler

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiling_table(n_events: int = 2, seed: int = 0) -> pd.DataFrame:
    """Tiles of a 300x260 domain over two events three months apart (one time axis)."""
    rng = np.random.default_rng(seed)
    step = np.timedelta64(5, "m")
    starts = [
        np.datetime64("2020-06-01T00:00") + k * np.timedelta64(90, "D") for k in range(n_events)
    ]
    times = np.concatenate([s + np.arange(60) * step for s in starts])
    records = []
    for t in range(0, times.size - 12, 6):
        if times[t + 11] - times[t] != 11 * step:
            continue  # window across the gap
        for y in range(0, 300 - 64 + 1, 32):
            for x in range(0, 260 - 64 + 1, 32):
                records.append((np.datetime_as_string(times[t], unit="s"), t, y, x))
    frame = pd.DataFrame(records, columns=["time_start", "t_start", "y_start", "x_start"])
    n = len(frame)
    frame.insert(0, "tile_id", np.arange(n))
    frame["n_time_window"] = 12
    frame["y_tile"] = 64
    frame["x_tile"] = 64
    r = np.where(rng.random(n) < 0.6, 0.0, rng.lognormal(-0.5, 1.5, n))
    frame["mean"] = r
    frame["sum"] = r * 64 * 64 * 12
    frame["p99"] = r * 4
    frame["imp_s1"] = 1 - np.exp(-r)
    return frame


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_summary_table_matches_naive_counts() -> None:
    t = tiling_table()
    pool = run_sampler("ldcast", t, seed=0)
    rows = draw_epoch(pool, n_samples=1100, seed=0, epoch=0)
    s = summary_table(pool, rows)
    assert s["bin_id"].tolist() == list(range(11))  # empty bins are listed too
    bins = pool["bin_id"].to_numpy()
    for rec in s.itertuples():
        assert rec.n_pool == int((bins == rec.bin_id).sum())
        assert rec.n_drawn == int((bins[rows] == rec.bin_id).sum())
        assert rec.n_unique_drawn == np.unique(rows[bins[rows] == rec.bin_id]).size
    assert s["n_pool"].sum() == len(pool) and s["n_drawn"].sum() == 1100
    assert s["share_pool"].sum() == pytest.approx(1.0)
    assert s["share_drawn"].sum() == pytest.approx(1.0)
    assert s.loc[1, "lower"] == pytest.approx(0.2) and np.isnan(s.loc[0, "lower"])
    # unbinned pool without attrs: one row
    imp = run_sampler("importance", t, seed=0, q_min=0.2)
    s2 = summary_table(imp, draw_epoch(imp, n_samples=50, seed=0, epoch=0))
    assert s2["bin_id"].tolist() == [-1] and s2["n_drawn"].tolist() == [50]


def test_plot_scalar_histogram(tmp_path: Path) -> None:
    t = tiling_table()
    for method in ("ldcast", "binnorm", "importance", "uniform"):
        pool = run_sampler(method, t, seed=0)
        rows = draw_epoch(pool, n_samples=2000, seed=0, epoch=0)
        path = tmp_path / f"hist_{method}.png"
        before = t["imp_s1"].to_numpy() if method == "importance" else None
        fig = plot_scalar_histogram(pool, rows, path, all_values=before)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == (1 if method in ("importance", "uniform") else 2)
        assert_png(path)
    fig = plot_scalar_histogram(pool, None, tmp_path / "pool_only.png")
    assert_png(tmp_path / "pool_only.png")
    with pytest.raises(ParameterError, match="outside the pool"):
        plot_scalar_histogram(pool, np.array([len(pool)]), tmp_path / "x.png")


def test_coverage_matches_naive_loop() -> None:
    rng = np.random.default_rng(3)
    y0 = rng.integers(0, 40, 30)
    x0 = rng.integers(0, 30, 30)
    ny = rng.integers(1, 15, 30)
    nx = rng.integers(1, 15, 30)
    expected = np.zeros((45, 35), dtype=np.int64)
    for a, b, c, d in zip(y0, x0, ny, nx, strict=True):
        expected[a : a + c, b : b + d] += 1  # clipped at the domain edge like the fast version
    assert np.array_equal(_coverage(y0, x0, ny, nx, (45, 35)), expected)


def test_plot_sample_density(tmp_path: Path) -> None:
    t = tiling_table()
    pool = run_sampler("ldcast", t, seed=0)
    src = t.set_index("tile_id").loc[pool["source_tile_id"]].reset_index()
    rows = draw_epoch(pool, n_samples=3000, seed=0, epoch=1)
    fig = plot_sample_density(src, (300, 260), tmp_path / "density.png", rows=rows)
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "density.png")
    with pytest.raises(ParameterError, match="needs the column"):
        plot_sample_density(t.drop(columns="y_tile"), (300, 260), tmp_path / "bad.png")


def test_plot_samples_over_time(tmp_path: Path) -> None:
    t = tiling_table()
    pool = run_sampler("binnorm", t, seed=0, aggregation="mean", n_scalar_total_bins=5)
    src = t.set_index("tile_id").loc[pool["source_tile_id"]].reset_index()
    src["bin_id"] = pool["bin_id"].to_numpy()
    rows = draw_epoch(pool, n_samples=1500, seed=0, epoch=0)
    fig = plot_samples_over_time(src, tmp_path / "time.png", rows=rows)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert_png(tmp_path / "time.png")
    # without parseable times: the time-index panel only
    fig = plot_samples_over_time(src.assign(time_start=""), tmp_path / "time_idx.png")
    assert len(fig.axes) == 1
    assert_png(tmp_path / "time_idx.png")
    with pytest.raises(ParameterError, match="time_start or t_start"):
        plot_samples_over_time(src.drop(columns=["time_start", "t_start"]), tmp_path / "b.png")


class FakeTensor:
    """Duck-typed stand-in for a torch tensor (detach / cpu / __array__)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.arr


def test_plot_batch_sample_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((4, 18, 32, 32)).astype(np.float32)
    out = plot_batch_sample(data, tmp_path / "plain.png")
    assert out == tmp_path / "plain.png"
    assert_png(out)
    assert_png(plot_batch_sample((data[:, :6], data[:, 6:]), tmp_path / "split.png", index=3))
    batch = {"inputs": FakeTensor(data[:, None, :6]), "targets": FakeTensor(data[:, None, 6:])}
    assert_png(plot_batch_sample(batch, tmp_path / "dict.png"))
    with pytest.raises(ParameterError, match="none of 'data'"):
        plot_batch_sample({"x": data}, tmp_path / "bad.png")


def test_inspect_index_sampling_and_tiling(tmp_path: Path) -> None:
    t = tiling_table()
    meta = {"tiling_id": "demo.64x64.12"}
    idx = build_sampling_index(t, meta, method="ldcast", index_dir=tmp_path)
    report = inspect_index(idx.path, out_dir=tmp_path / "figs", seed=1, epoch=2)
    assert "method ldcast" in report and "epoch 2" in report
    for name in ("scalar_histogram", "sample_density", "samples_over_time"):
        assert_png(tmp_path / "figs" / f"{idx.sampling_id}.{name}.png")
    tiling_csv = tmp_path / "demo.64x64.12.samples.csv"
    cols = list(t.columns)
    write_index(
        tiling_csv, [t], {"kind": "tiling", **meta, "dtypes": tiling_dtypes(cols)}, columns=cols
    )
    report = inspect_index(tiling_csv)
    assert f"tiling index: {len(t)} tiles" in report
    assert_png(tmp_path / "demo.64x64.12.sample_density.png")
    with pytest.raises(IndexFileError, match="no index file"):
        inspect_index(tmp_path / "nothing.samples.csv")


def test_inspect_maps_span_the_archive_and_outline_its_radar_coverage(
    tiny_archive: Path, tmp_path: Path
) -> None:
    """Coverage maps use the archive's frames, not the box of the tiles, and the importance
    report names the candidates and the acceptance rate."""
    import warnings

    from mlcast_pipes.dataset import open_mlcast
    from mlcast_pipes.indexes.tiling import prepare_tiling
    from mlcast_pipes.sampling import SamplingWarning
    from mlcast_pipes.tiling import TilingParams

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = open_mlcast(str(tiny_archive))
    params = TilingParams(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.0)
    tiling = prepare_tiling(da, params, tmp_path, dataset_id="tiny", fingerprint="fp")
    table = tiling.table
    # the kept tiles do not reach every edge of the 256 x 256 frames
    assert (table["y_start"] + 64).max() < 256 or (table["x_start"] + 64).max() < 256
    report = inspect_index(tiling.path, out_dir=tmp_path / "figs")
    assert "archive frames: 256 x 256 pixels" in report
    radar = ~np.isnan(da.values).all(axis=0)
    assert f"radar coverage: {radar.mean():.0%}" in report
    assert_png(tmp_path / "figs" / f"{tiling.tiling_id}.tile_wetness.png")
    # the share never covered, over the whole archive, as in the figure's title
    fig = plot_sample_density(table, (256, 256), tmp_path / "d.png", coverage=radar)
    count = np.zeros((256, 256), int)
    for y0, x0 in table[["y_start", "x_start"]].itertuples(index=False):
        count[y0 : y0 + 64, x0 : x0 + 64] += 1
    title = fig.axes[0].get_title()
    assert f"{(count == 0).mean():.0%} of the archive never covered" in title
    assert f"{(count[radar] == 0).mean():.0%} of the radar coverage" in title
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        sampling = build_sampling_index(
            table, tiling.meta, method="importance", index_dir=tmp_path, seed=0, q_min=0.05
        )
    report = inspect_index(sampling.path, out_dir=tmp_path / "figs")
    n = len(sampling.table)
    assert f"candidates: {len(table)} tiles, {n} in the pool" in report
    assert "archive frames: 256 x 256 pixels" in report
    assert "all tiles" not in report
