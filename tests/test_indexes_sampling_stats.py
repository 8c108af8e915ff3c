"""Index resolution and the "fitted" normalisation: ``{sampling_id}.stats.csv``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
import mlcast_pipes.indexes.sampling_stats as sampling_stats_mod
from mlcast_pipes.cli import main
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.indexes.plan import TilingPlan, iso_time, iter_tables
from mlcast_pipes.indexes.sampling_stats import (
    compute_sampling_stats,
    epoch_weights,
    sampling_stats,
    stats_path,
)
from mlcast_pipes.indexes.stats import read_stats_csv
from mlcast_pipes.tiling import TilingParams

PARAMS = TilingParams(n_time_window=12, tile_size=(64, 64))
SAMPLER = {"n_scalar_total_bins": 5}


def _table_and_pool(archive: Path, index: Path):
    da = mp.open_mlcast(str(archive))
    table = TilingPlan(PARAMS, index).table(da)
    pool = table.sampling_index("binnorm", SAMPLER, n_time_sample=None, seed=0, index_dir=index)
    return table, pool


def _reference_stats(archive: Path, pool: pd.DataFrame, weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean/std of the pool's windows, read with xarray, clipped to [0, 300] mm/h."""
    src = xr.open_zarr(archive)["rainfall_rate"].values  # the whole tiny archive: 34 MB
    values, w = [], []
    for row, weight in zip(pool.itertuples(), weights, strict=True):
        t0 = row.t_start + row.t_offset
        v = src[
            t0 : t0 + row.n_time_sample,
            row.y_start : row.y_start + row.y_tile,
            row.x_start : row.x_start + row.x_tile,
        ].astype(np.float64)
        v = np.clip(v[~np.isnan(v)], 0.0, 300.0)
        values.append(v)
        w.append(np.full(v.size, weight))
    x, wx = np.concatenate(values), np.concatenate(w)
    mean = np.average(x, weights=wx)
    return float(mean), float(np.sqrt(np.average((x - mean) ** 2, weights=wx)))


def test_epoch_weights() -> None:
    binned = pd.DataFrame({"bin_id": [0, 0, 0, 1, 2, 2, -1]})
    w = epoch_weights(binned)
    assert w.sum() == pytest.approx(1.0)
    assert w[-1] == 0  # never drawn
    np.testing.assert_allclose(w[:6], [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])
    unbinned = epoch_weights(pd.DataFrame({"bin_id": [-1, -1, -1, -1]}))
    np.testing.assert_allclose(unbinned, 0.25)
    np.testing.assert_allclose(epoch_weights(pd.DataFrame({"x": [1, 2]})), 0.5)


def test_sampling_stats_values_file_and_reload(
    tiny_archive: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, pool = _table_and_pool(tiny_archive, index_dir)
    stats = sampling_stats(table, pool)
    # the numbers: the epoch-weighted (BinNorm-balanced) mean/std of the sampled windows
    mean, std = _reference_stats(tiny_archive, pool.table, epoch_weights(pool.table))
    assert stats.mean == pytest.approx(mean, rel=1e-9)
    assert stats.std == pytest.approx(std, rel=1e-9)
    # pool weighting counts every sampled tile once
    pool_mean, pool_std = compute_sampling_stats(table, pool, weighting="pool")
    ref = _reference_stats(tiny_archive, pool.table, np.ones(len(pool.table)))
    assert (pool_mean, pool_std) == pytest.approx(ref, rel=1e-9)
    assert pool_mean != pytest.approx(stats.mean, rel=1e-3)
    # the file: {sampling_id}.stats.csv beside the sampling CSV, variable,mean,std
    assert stats.path == stats_path(pool) == pool.path.with_name(f"{pool.sampling_id}.stats.csv")
    assert stats.path.read_text().splitlines()[0] == "variable,mean,std"
    assert read_stats_csv(stats.path) == {"rainfall_rate": (stats.mean, stats.std)}
    assert not list(index_dir.glob("*.tmp"))
    # a second call loads the file instead of reading pixels again
    stamp = stats.path.stat().st_mtime_ns

    def no_compute(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr(sampling_stats_mod, "compute_sampling_stats", no_compute)
    again = sampling_stats(table, pool)
    assert again == stats and stats.path.stat().st_mtime_ns == stamp
    # a sampling CSV newer than the statistics (a rebuilt pool) makes them stale
    future = stamp + 10_000_000_000
    os.utime(pool.path, ns=(future, future))
    with pytest.raises(AssertionError, match="recomputed"):
        sampling_stats(table, pool)
    monkeypatch.undo()
    assert sampling_stats(table, pool) == stats


def test_sampling_stats_recomputed_when_parameters_change(
    tiny_archive: Path, index_dir: Path
) -> None:
    """A statistics file made with another clip_max (or weighting) is not reused."""
    table, pool = _table_and_pool(tiny_archive, index_dir)
    clipped = sampling_stats(table, pool, clip_max=1.0)
    meta = stats_path(pool).with_name(f"{pool.sampling_id}.stats.meta.json")
    assert json.loads(meta.read_text())["clip_max"] == 1.0
    default = sampling_stats(table, pool)
    assert default.mean > clipped.mean  # heavier rain counted again
    assert default == sampling_stats(table, pool)
    assert sampling_stats(table, pool, weighting="pool") != default
    meta.unlink()  # unknown parameters: computed again, sidecar written
    assert sampling_stats(table, pool, weighting="pool").path.exists() and meta.exists()


def test_sampling_stats_max_tiles_and_bad_options(tiny_archive: Path, index_dir: Path) -> None:
    table, pool = _table_and_pool(tiny_archive, index_dir)
    a = compute_sampling_stats(table, pool, max_tiles=5, seed=1)
    assert a == compute_sampling_stats(table, pool, max_tiles=5, seed=1)
    assert a != compute_sampling_stats(table, pool, max_tiles=5, seed=2)
    with pytest.raises(ParameterError, match="max_tiles"):
        compute_sampling_stats(table, pool, max_tiles=0)
    with pytest.raises(ParameterError, match="weighting"):
        compute_sampling_stats(table, pool, weighting="tiles")  # type: ignore[arg-type]


def _fitted_pipe(archive: Path, index: Path, **normalize_kw):
    return (
        IterableWrapper([str(archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=index)
        .binnorm_sample(**SAMPLER)
        .normalize(method="fitted", **normalize_kw)
    )


def test_fitted_normalize_uses_the_samplers_stats(tiny_archive: Path, index_dir: Path) -> None:
    pipe = _fitted_pipe(tiny_archive, index_dir)
    records = list(pipe)
    (stats_file,) = index_dir.glob("*.binnorm.*.stats.csv")
    ((_, (mean, std)),) = read_stats_csv(stats_file).items()
    (stats,) = pipe.fitted_stats().values()
    assert (stats.mean, stats.std, stats.path) == (mean, std, stats_file)
    raw = {
        r.sample_id: r.load()
        for r in IterableWrapper([str(tiny_archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=index_dir)
        .binnorm_sample(**SAMPLER)
    }
    for rec in records:
        assert rec.normalization == "fitted" and not np.isnan(rec.data).any()
        expected = (np.clip(np.nan_to_num(raw[rec.sample_id]), 0, 300) - mean) / std
        np.testing.assert_allclose(rec.data, expected, rtol=1e-5, atol=1e-5)
        back = mp.denormalize(rec.data, "fitted", stats_file=stats_file)
        r = raw[rec.sample_id]
        ok = np.isfinite(r) & (r >= 0) & (r <= 300)
        np.testing.assert_allclose(back[ok], r[ok], rtol=1e-4, atol=1e-4)


def _valid_moments(records, raw_by_id) -> tuple[float, float]:
    """Mean and std of the normalised pixels that had data, over an epoch."""
    n = s1 = s2 = 0.0
    for rec in records:
        v = rec.data[np.isfinite(raw_by_id[rec.tile_id])].astype(np.float64)
        n, s1, s2 = n + v.size, s1 + v.sum(), s2 + np.square(v).sum()
    mean = s1 / n
    return mean, float(np.sqrt(s2 / n - mean**2))


def test_fitted_standardises_what_the_model_sees(tiny_archive: Path, index_dir: Path) -> None:
    def tiles():
        return (
            IterableWrapper([str(tiny_archive)])
            .open_mlcast()
            .tile(n_time_window=12, tile_size=(64, 64), index_dir=index_dir)
        )

    raw = {r.tile_id: r.load() for r in tiles()}
    # uniform: an epoch is every tile once, so the standardisation is exact
    mean, std = _valid_moments(list(tiles().uniform_sample().normalize(method="fitted")), raw)
    assert mean == pytest.approx(0.0, abs=1e-4) and std == pytest.approx(1.0, abs=1e-4)
    # binnorm: the statistics weigh tiles as the balanced draws do (close over a long epoch)
    epoch = tiles().binnorm_sample(**SAMPLER, n_samples=250).normalize(method="fitted")
    mean, std = _valid_moments(list(epoch), raw)
    assert mean == pytest.approx(0.0, abs=0.05) and std == pytest.approx(1.0, abs=0.1)


def test_fitted_stats_from_cli_are_the_same(tiny_archive: Path, tmp_path: Path) -> None:
    by_pipe, by_cli = tmp_path / "pipe", tmp_path / "cli"
    list(_fitted_pipe(tiny_archive, by_pipe))
    args = ["prepare", str(tiny_archive), "--n-time-window", "12", "--tile-size", "64"]
    args += ["--index-dir", str(by_cli), "--sampler", "binnorm", "--stats", "--no-progress"]
    args += ["--param", "n_scalar_total_bins=5"]
    assert main(args) == 0
    (pipe_stats,) = by_pipe.glob("*.stats.csv")
    (cli_stats,) = by_cli.glob("*.stats.csv")
    assert pipe_stats.name == cli_stats.name
    assert pipe_stats.read_bytes() == cli_stats.read_bytes()
    # a pipeline over the CLI's folder loads that file
    stamp = cli_stats.stat().st_mtime_ns
    list(_fitted_pipe(tiny_archive, by_cli))
    assert cli_stats.stat().st_mtime_ns == stamp


def test_fitted_with_explicit_stats_needs_no_sampler(tiny_archive: Path, index_dir: Path) -> None:
    tiles = (
        IterableWrapper([str(tiny_archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=index_dir)
    )
    rec = next(iter(tiles.normalize(method="fitted", mean=1.0, std=2.0)))
    assert rec.normalization == "fitted"
    assert not list(index_dir.glob("*.stats.csv"))


def test_fitted_without_stats_or_sampler_is_explained(tiny_archive: Path, index_dir: Path) -> None:
    tiles = (
        IterableWrapper([str(tiny_archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=index_dir)
    )
    with pytest.raises(ParameterError, match=r"mean=.*stats_file=.*sampler"):
        tiles.normalize(method="fitted")
    with pytest.raises(ParameterError, match="stats_weighting"):
        _fitted_pipe(tiny_archive, index_dir, stats_weighting="nope")


def test_fitted_in_the_list_form(tiny_archive: Path, index_dir: Path) -> None:
    pipe = mp.compose(
        [
            mp.OpenXarrayDataset(str(tiny_archive)),
            mp.TilingSampler(n_time_window=12, tile_size=(64, 64), index_dir=index_dir),
            mp.BinNormSampler(**SAMPLER),
            mp.NormalizeForTraining(method="fitted", stats_weighting="pool"),
            mp.ToTorchTensor(batch_size=4, n_input=4, n_target=8),
        ]
    )
    inputs, targets = next(iter(pipe))
    assert inputs.shape == (4, 4, 64, 64) and targets.shape == (4, 8, 64, 64)
    assert len(list(index_dir.glob("*.stats.csv"))) == 1


# --------------------------------------------------------------------------------------------
# Tiling plans and tables
# --------------------------------------------------------------------------------------------


def test_plan_table_cached_and_split(tiny_archive: Path, index_dir: Path) -> None:
    da = mp.open_mlcast(str(tiny_archive))
    plan = TilingPlan(PARAMS, index_dir)
    table = plan.table(da)
    assert plan.table(da) is table
    assert len(table.rows) == table.index.n_tiles
    rec = table.record(0)
    assert (rec.tile_id, rec.n_time, rec.y_tile) == (int(table.rows["tile_id"][0]), 12, 64)
    split = mp.split_by_ranges(first=[("2021-06-01", "2021-07-01")])["first"]
    part = TilingPlan(PARAMS, index_dir, split=split).table(da)
    assert 0 < len(part.rows) < len(table.rows)
    assert part.name == f"{table.name}.{split.token}"
    assert (pd.to_datetime(part.rows["time_start"]) < "2021-07-01").all()


def test_iter_tables_needs_opened_archives(index_dir: Path) -> None:
    with pytest.raises(PipelineOrderError, match="open"):
        list(iter_tables(TilingPlan(PARAMS, index_dir), iter(["not an archive"])))


def test_iso_time() -> None:
    t = np.datetime64("2021-06-12T10:00")
    assert iso_time(t) == "2021-06-12T10:00:00"
    assert iso_time(t, 3, np.timedelta64(5, "m")) == "2021-06-12T10:15:00"


def test_fitted_with_worker_processes(tiny_archive: Path, index_dir: Path) -> None:
    def make():
        return _fitted_pipe(tiny_archive, index_dir).to_tensor(batch_size=4, metadata=True)

    reference = [i for b in make() for i in b["meta"]["sample_id"].tolist()]
    loader = mp.make_dataloader(make(), num_workers=2)
    try:
        drawn = [i for b in loader for i in b["meta"]["sample_id"].tolist()]  # a whole epoch
    finally:
        loader.shutdown()
    assert sorted(drawn) == sorted(reference)
    assert len(list(index_dir.glob("*.stats.csv"))) == 1
