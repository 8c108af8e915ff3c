"""Samples shorter than the tile window: the sampler sees the drawn sub-window's statistics.

The tiling index keeps per-step statistics per tile (``{tiling_id}.steps.bin``); the sampling
index reduces the ``n_time_sample`` steps drawn at ``t_offset``. Checked against numpy.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mlcast_pipes as mp
from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.plan import TilingPlan
from mlcast_pipes.indexes.sampling import build_sampling_index, load_sampling_index
from mlcast_pipes.indexes.tiling import prepare_tiling
from mlcast_pipes.sampling import SamplingWarning
from mlcast_pipes.tiling import (
    TilingParams,
    hist_bin,
    hist_importance,
    importance_weights,
    sub_window_statistics,
)
from mlcast_pipes.tiling.kernels import N_BINS

pytestmark = pytest.mark.filterwarnings("ignore:.*would each take:UserWarning")

S = 3  # samples of 3 steps from windows of 8
CLIP = 5.0  # low enough that the demo's rain is capped


def _reference(cube: np.ndarray, params: TilingParams) -> dict[str, float]:
    """The tiling's statistics of a (t, y, x) cube of rates, recomputed with numpy."""
    v = cube[~np.isnan(cube)].astype(np.float64)
    v = np.where(v > 0, v, 0.0)  # negative rates count as dry
    if params.clip_max is not None:
        v = np.minimum(v, params.clip_max)
    n = v.size
    hist = np.bincount(hist_bin(v), minlength=N_BINS)[None, :]
    return {
        "sum": float(v.sum()),
        "mean": float(v.sum() / n) if n else np.nan,
        "max": float(v.max()) if n else np.nan,
        "frac_wet": float((v > params.wet_threshold).sum() / n) if n else np.nan,
        "imp_s1": float(hist_importance(hist, importance_weights([1.0]))[0, 0]),
        "nan_fraction": float(np.isnan(cube).mean()),
    }


@pytest.fixture(scope="module")
def demo_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, np.ndarray, Path]:
    from mlcast_pipes.demo import generate_demo

    folder = tmp_path_factory.mktemp("subwin")
    archive = generate_demo(folder / "tiny.zarr", preset="tiny", seed=0)
    da = mp.open_mlcast(archive)
    params = TilingParams(n_time_window=8, tile_size=(64, 64), max_nan_fraction=0.5, clip_max=CLIP)
    plan = TilingPlan(params, folder / "idx")
    return plan.table(da), np.asarray(da.values), folder / "idx"


@pytest.mark.parametrize(
    ("method", "params", "stat"),
    [
        ("binnorm", {"aggregation": "sum", "n_scalar_total_bins": 3}, "sum"),
        ("binnorm", {"aggregation": "mean", "bin_edges": "quantile"}, "mean"),
        ("binnorm", {"aggregation": "max", "n_scalar_total_bins": 3}, "max"),
        ("binnorm", {"aggregation": "frac_wet", "bin_edges": "linear"}, "frac_wet"),
        ("importance", {"q_min": 1.0}, "imp_s1"),
        ("uniform", {"aggregation": "sum"}, "sum"),
    ],
)
def test_scalar_is_the_drawn_sub_window_statistic(
    demo_table: tuple[object, np.ndarray, Path], method: str, params: dict, stat: str
) -> None:
    table, raw, index_dir = demo_table
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*whole", category=SamplingWarning)
        pool = table.sampling_index(  # type: ignore[attr-defined]
            method, params, n_time_sample=S, seed=0, index_dir=index_dir
        )
    tiling = table.rows.set_index("tile_id")  # type: ignore[attr-defined]
    tp = table.index.params  # type: ignore[attr-defined]
    t = pool.table
    assert pool.meta["scalar_steps"] == "sample" and (t["n_time_sample"] == S).all()
    assert t["t_offset"].nunique() > 1
    moved = 0
    for r in t.itertuples():
        t0 = r.t_start + r.t_offset
        cube = raw[t0 : t0 + S, r.y_start : r.y_start + r.y_tile, r.x_start : r.x_start + r.x_tile]
        want = _reference(cube, tp)[stat]
        assert r.scalar_value == pytest.approx(want, rel=1e-6, abs=1e-9), r
        moved += not np.isclose(tiling.loc[r.source_tile_id, stat], r.scalar_value)
    assert moved > len(t) // 4  # whole-window statistics would differ for many tiles


def test_sub_window_ids_and_quantiles(demo_table: tuple[object, np.ndarray, Path]) -> None:
    table, _, index_dir = demo_table
    rows, meta = table.rows, dict(table.index.meta)  # type: ignore[attr-defined]
    binned = {"aggregation": "sum", "n_scalar_total_bins": 3}
    exact = table.sampling_index(  # type: ignore[attr-defined]
        "binnorm", binned, n_time_sample=S, seed=0, index_dir=index_dir
    )
    with pytest.warns(SamplingWarning, match=r"whole 8-step window.*steps=TileIndex.read_steps"):
        whole = build_sampling_index(
            rows, meta, method="binnorm", index_dir=index_dir, n_time_sample=S, **binned
        )
    assert whole.sampling_id != exact.sampling_id and whole.meta["scalar_steps"] == "window"
    with pytest.raises(StaleIndexError, match="whole windows, asked: of the drawn samples"):
        load_sampling_index(whole.path, tiling_meta=meta, expected={"scalar_steps": "sample"})
    changed = {**meta, "steps": {**meta["steps"], "sha256": "0" * 64}}
    with pytest.raises(StaleIndexError, match="per-step statistics changed"):
        load_sampling_index(exact.path, tiling_meta=changed)
    for method, params in (("binnorm", {"aggregation": "p99"}), ("ldcast", {})):
        with pytest.raises(ParameterError, match=r"'p99' is a quantile.*n_time_window=3"):
            table.sampling_index(  # type: ignore[attr-defined]
                method, params, n_time_sample=S, seed=0, index_dir=index_dir
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        full = table.sampling_index(  # type: ignore[attr-defined]
            "ldcast", {}, n_time_sample=8, seed=0, index_dir=index_dir
        )
    assert full.meta["scalar_steps"] == "window"  # whole windows: quantiles as stored


def _synthetic(tmp_path: Path) -> tuple[xr.DataArray, TilingParams]:
    rng = np.random.default_rng(3)
    rain = rng.gamma(0.4, 3.0, size=(16, 64, 64)).astype(np.float32)
    rain[rain < 1.0] = 0.0
    rain[2, :20, :20] = -1.0  # negative: dry
    rain[5, :32, :32] = np.nan  # one frame of the top-left tile missing
    rain[9, 40, 40] = 900.0  # clutter, capped
    rain[12:, :, 32:] *= 4.0
    times = np.datetime64("2024-05-01T00:00") + np.arange(16) * np.timedelta64(5, "m")
    da = xr.DataArray(rain, dims=("time", "y", "x"), coords={"time": times})
    params = TilingParams(n_time_window=8, tile_size=(32, 32), max_nan_fraction=0.2)
    return da, params


def test_steps_file_reduces_to_the_numpy_statistics(tmp_path: Path) -> None:
    da, params = _synthetic(tmp_path)
    index = prepare_tiling(da, params, tmp_path, dataset_id="syn", fingerprint="v1")
    steps = index.read_steps()
    rows = index.table
    assert steps.shape == (len(rows), 8)
    assert index.steps_path.name == f"{index.tiling_id}.steps.bin"
    raw = da.values
    for length, offset in ((8, 0), (3, 0), (3, 5), (1, 4)):
        got = sub_window_statistics(steps, rows["tile_id"], offset, length, 32 * 32)
        for i, r in enumerate(rows.itertuples()):
            t0 = r.t_start + offset
            want = _reference(
                raw[t0 : t0 + length, r.y_start : r.y_start + 32, r.x_start : r.x_start + 32],
                params,
            )
            for key in ("sum", "mean", "max", "frac_wet", "imp_s1", "nan_fraction"):
                assert got[key][i] == pytest.approx(want[key], rel=1e-6, abs=1e-12, nan_ok=True)
    whole = sub_window_statistics(steps, rows["tile_id"], 0, 8, 32 * 32)
    for key in ("sum", "mean", "max", "frac_wet", "imp_s1", "nan_count", "clip_count"):
        assert np.allclose(whole[key], rows[key], rtol=1e-5, equal_nan=True), key  # CSV: 6 digits


def test_sub_windows_over_the_nan_limit_are_left_out(tmp_path: Path) -> None:
    da, params = _synthetic(tmp_path)
    index = prepare_tiling(da, params, tmp_path, dataset_id="syn", fingerprint="v1")
    rows = index.table
    pool = build_sampling_index(
        rows, index.meta, method="uniform", index_dir=tmp_path, n_time_sample=2, seed=1,
        steps=index.read_steps,
    )  # fmt: skip
    raw = da.values
    kept = set(pool.table["source_tile_id"])
    t = pool.table.set_index("source_tile_id")
    for r in rows.itertuples():
        if r.tile_id in kept:
            t0 = r.t_start + t.loc[r.tile_id, "t_offset"]
            cube = raw[t0 : t0 + 2, r.y_start : r.y_start + 32, r.x_start : r.x_start + 32]
            assert np.isnan(cube).mean() <= params.max_nan_fraction
    dropped = len(rows) - len(kept)
    assert dropped == pool.meta["rejected_sub_window_nan"] > 0  # a drawn step is the NaN frame


def test_index_without_steps_is_stale_when_samples_are_shorter(tmp_path: Path) -> None:
    da, params = _synthetic(tmp_path)
    index = prepare_tiling(da, params, tmp_path, dataset_id="syn", fingerprint="v1")
    changed = index.steps_path.read_bytes()
    index.steps_path.write_bytes(changed[:8] + bytes([changed[8] ^ 1]) + changed[9:])
    with pytest.raises(IndexFileError, match=r"steps.bin changed.*recompute=True"):
        index.read_steps()
    index.steps_path.unlink()
    with pytest.raises(IndexFileError, match=r"steps.bin is missing.*recompute=True"):
        index.read_steps()
    side = json.loads(index.sidecar.read_text())
    del side["steps"]  # as written before per-step statistics existed
    index.sidecar.write_text(json.dumps(side))
    old = type(index).open(index.path)
    assert not old.has_steps
    with pytest.raises(StaleIndexError, match=r"no per-step statistics.*recompute=True"):
        old.read_steps()
    rebuilt = prepare_tiling(
        da, params, tmp_path, dataset_id="syn", fingerprint="v1", recompute=True
    )
    assert rebuilt.has_steps and rebuilt.read_steps().shape == (rebuilt.n_tiles, 8)


def test_subset_of_tiles_and_mismatched_steps(tmp_path: Path) -> None:
    da, params = _synthetic(tmp_path)
    index = prepare_tiling(da, params, tmp_path, dataset_id="syn", fingerprint="v1")
    subset = index.table.iloc[1::2].reset_index(drop=True)  # e.g. a split: tile ids kept
    meta = {**index.meta, "tiling_id": f"{index.tiling_id}.half"}
    steps = index.read_steps()
    pool = build_sampling_index(
        subset, meta, method="uniform", index_dir=tmp_path, n_time_sample=4, seed=2,
        steps=steps, aggregation="mean",
    )  # fmt: skip
    t = pool.table
    assert set(t["source_tile_id"]) <= set(subset["tile_id"])
    want = sub_window_statistics(steps, t["source_tile_id"], t["t_offset"], 4, 32 * 32)["mean"]
    assert np.array_equal(t["scalar_value"].to_numpy(), want, equal_nan=True)
    with pytest.raises(IndexFileError, match="do not match the tiling table"):
        build_sampling_index(
            index.table, index.meta, method="uniform", index_dir=tmp_path / "other",
            n_time_sample=4, steps=steps[:3],
        )  # fmt: skip
