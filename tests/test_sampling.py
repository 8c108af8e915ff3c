from __future__ import annotations

import bisect
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.sampling import build_sampling_index, load_sampling_index
from mlcast_pipes.sampling import (
    LDCAST_BIN_EDGES,
    SamplingWarning,
    assign_time_offsets,
    available_samplers,
    draw_epoch,
    epoch_shares,
    get_sampler,
    load_community_csv,
    load_community_stats,
    per_tile_uniform,
    resolve_sampler_params,
    run_sampler,
)


def make_table(scalar: np.ndarray, *, seed: int = 0, n_time_window: int = 12) -> pd.DataFrame:
    """A tiling table whose statistics all derive from one per-tile intensity (mm/h)."""
    n = scalar.size
    rng = np.random.default_rng(seed)
    t_start = np.repeat(np.arange((n + 19) // 20), 20)[:n] * 6
    times = np.datetime64("2021-05-01T00:00") + t_start * np.timedelta64(5, "m")
    frame = pd.DataFrame(
        {
            "tile_id": np.arange(n, dtype=np.int64) * 7 + 3,  # not 0..n-1 on purpose
            "time_start": np.datetime_as_string(times, unit="s"),
            "t_start": t_start,
            "y_start": rng.integers(0, 8, n) * 32,
            "x_start": rng.integers(0, 8, n) * 32,
            "n_time_window": n_time_window,
            "y_tile": 64,
            "x_tile": 64,
            "nan_count": 0,
            "nan_fraction": 0.0,
            "sum": scalar * 64 * 64 * n_time_window,
            "mean": scalar,
            "max": scalar * 5,
            "frac_wet": np.minimum(scalar, 1.0),
            "p50": scalar * 0.5,
            "p90": scalar * 2,
            "p99": scalar * 3,
            "imp_s1": 1 - np.exp(-scalar),
        }
    )
    return frame


def distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n = 4000
    lognormal = rng.lognormal(0.0, 1.5, n)
    mostly_dry = np.where(rng.random(n) < 0.95, 0.0, rng.lognormal(0.0, 1.0, n))
    heavy_tail = (rng.pareto(1.1, n) + 1) * 0.1  # clutter-like values far above 200 mm/h
    heavy_tail[rng.random(n) < 0.3] = 0.0
    return {"lognormal": lognormal, "mostly_dry": mostly_dry, "heavy_tail": heavy_tail}


@pytest.fixture(params=list(distributions()))
def table(request: pytest.FixtureRequest) -> pd.DataFrame:
    return make_table(distributions()[request.param])


def bin_counts(pool: pd.DataFrame, rows: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(pool["bin_id"].to_numpy()[rows], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


# ---------------------------------------------------------------- registry


def test_registry_names_and_aliases() -> None:
    names = available_samplers()
    assert {"binnorm", "ldcast", "importance", "dgmr", "uniform"} <= set(names)
    assert get_sampler("dgmr") is get_sampler("importance")


def test_unknown_sampler_lists_known_names() -> None:
    with pytest.raises(ParameterError, match=r"unknown sampler 'nope'.*binnorm.*ldcast"):
        get_sampler("nope")


def test_unknown_parameter_names_accepted_ones() -> None:
    with pytest.raises(ParameterError, match=r"no parameter\(s\) bins.*aggregation"):
        resolve_sampler_params("binnorm", bins=3)


def test_register_taken_name_fails() -> None:
    from mlcast_pipes.sampling import register_sampler

    with pytest.raises(ParameterError, match="already registered"):

        @register_sampler("uniform")
        def again(table: pd.DataFrame, *, seed: int) -> pd.DataFrame:  # pragma: no cover
            return table


def test_new_sampler_is_one_function() -> None:
    from mlcast_pipes.sampling import register_sampler
    from mlcast_pipes.sampling.registry import _ALIASES, _REGISTRY

    def define(default_step: int) -> None:  # like a notebook cell, run twice
        @register_sampler("test_every_other")
        def every_other(
            table: pd.DataFrame, *, seed: int, step: int = default_step
        ) -> pd.DataFrame:
            rows = table.iloc[::step]
            return pd.DataFrame(
                {"source_tile_id": rows["tile_id"], "scalar_value": rows["mean"], "bin_id": -1}
            )

    try:
        define(2)
        pool = run_sampler("test_every_other", make_table(np.ones(10)), seed=0, step=3)
        assert len(pool) == 4 and (pool["weight"] == 1.0).all()
        assert pool.attrs["params"] == {"step": 3}
        define(5)  # the same function again replaces it
        assert len(run_sampler("test_every_other", make_table(np.ones(10)), seed=0)) == 2
    finally:
        _REGISTRY.pop("test_every_other", None)
        _ALIASES.pop("test_every_other", None)


# ---------------------------------------------------------------- binnorm


@pytest.mark.parametrize("edges", ["log", "linear", "quantile"])
def test_binnorm_epoch_draws_every_bin_equally(table: pd.DataFrame, edges: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)  # linear edges leave tail bins empty
        pool = run_sampler("binnorm", table, seed=0, aggregation="mean", bin_edges=edges)
    present = np.unique(pool["bin_id"])
    for n in (1000, 1003):
        rows = draw_epoch(pool, n_samples=n, seed=1, epoch=0)
        counts = bin_counts(pool, rows)
        assert sorted(counts) == present.tolist()
        assert sum(counts.values()) == n
        assert max(counts.values()) - min(counts.values()) <= 1
        assert min(counts.values()) == n // present.size


def test_binnorm_bins_match_naive_assignment() -> None:
    values = distributions()["lognormal"]
    values[:500] = 0.0
    pool = run_sampler("binnorm", make_table(values), seed=0, aggregation="mean")
    wet = values[values > 0]
    edges = np.geomspace(wet.min(), wet.max(), 10)  # 10 total bins: dry + 9 wet, 10 edges
    expected = []
    for v in values:
        if v <= 0:
            expected.append(0)
        else:
            expected.append(1 + min(bisect.bisect_right(edges.tolist(), v) - 1, 8))
    assert pool["bin_id"].tolist() == expected
    assert np.allclose(pool.attrs["bin_edges"], edges)
    assert [b["n_tiles"] for b in pool.attrs["bins"]] == np.bincount(expected).tolist()
    assert pool["scalar_value"].tolist() == values.tolist()


def test_binnorm_dry_threshold_and_no_dry_bin() -> None:
    values = np.array([0.0, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0])
    t = make_table(values)
    pool = run_sampler(
        "binnorm", t, seed=0, aggregation="mean", dry_threshold=0.1, n_scalar_total_bins=3
    )
    assert pool["bin_id"].tolist()[:3] == [0, 0, 0]
    assert set(pool["bin_id"].tolist()[3:]) == {1, 2}
    pool = run_sampler(
        "binnorm",
        t,
        seed=0,
        aggregation="mean",
        dry_threshold=None,
        bin_edges="linear",
        n_scalar_total_bins=2,
    )
    assert pool["bin_id"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]  # edges 0, 5, 10


def test_binnorm_explicit_edges_and_empty_bin_warning() -> None:
    values = np.array([0.0, 0.0, 0.3, 0.4, 7.0, 8.0, 300.0])
    t = make_table(values)
    with pytest.warns(SamplingWarning, match=r"hold no tile.*2 \[1, 5\)"):
        pool = run_sampler(
            "binnorm", t, seed=0, aggregation="mean", bin_edges=[0.1, 1.0, 5.0, 50.0]
        )
    # dry | below 1 (0.3, 0.4) | [1, 5): empty | [5, inf): 7, 8 and 300 (above the last edge)
    assert pool["bin_id"].tolist() == [0, 0, 1, 1, 3, 3, 3]
    assert [b["n_tiles"] for b in pool.attrs["bins"]] == [2, 2, 0, 3]
    rows = draw_epoch(pool, n_samples=30, seed=0, epoch=0)
    assert bin_counts(pool, rows) == {0: 10, 1: 10, 3: 10}  # the empty bin is left out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregation": "median"}, r"unknown aggregation 'median'.*sum, mean, max, frac_wet"),
        ({"aggregation": "p95"}, r"quantile 'p95' is not stored.*p50, p90, p99"),
        ({"n_scalar_total_bins": 1}, r"n_scalar_total_bins must be an integer >= 2, got 1"),
        ({"n_scalar_total_bins": 50}, r"49 wet bins for only 5 distinct wet"),
        ({"bin_edges": [0.1, 1.0, 1.0, 3.0]}, r"strictly increasing"),
        ({"bin_edges": [3.0, 1.0]}, r"strictly increasing"),
        ({"bin_edges": "geometric"}, r"unknown bin_edges 'geometric'"),
        ({"bin_edges": [1.0, 2.0, 3.0], "n_scalar_total_bins": 5}, r"make 3 bins"),
        ({"dry_threshold": -1.0}, r"dry_threshold must be"),
        ({"dry_threshold": None, "n_scalar_total_bins": 3}, r"log bin edges need positive"),
    ],
)
def test_binnorm_bad_inputs(kwargs: dict[str, object], message: str) -> None:
    t = make_table(np.array([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
    with pytest.raises(ParameterError, match=message):
        run_sampler("binnorm", t, seed=0, **kwargs)


def test_binnorm_nan_scalars_left_out_with_warning() -> None:
    values = np.array([0.0, np.nan, 1.0, 2.0, 3.0])
    with pytest.warns(SamplingWarning, match="1 of 5 tiles have no finite"):
        pool = run_sampler(
            "binnorm", make_table(values), seed=0, aggregation="mean", n_scalar_total_bins=3
        )
    assert len(pool) == 4 and np.isfinite(pool["scalar_value"]).all()


# ---------------------------------------------------------------- ldcast


def test_ldcast_edges_exact() -> None:
    expected = np.exp(np.linspace(np.log(0.2), np.log(50.0), 10))
    assert LDCAST_BIN_EDGES.shape == (10,)
    assert np.allclose(LDCAST_BIN_EDGES, expected, rtol=0, atol=0)
    assert not LDCAST_BIN_EDGES.flags.writeable


def test_ldcast_bisect_left_assignment_at_edges() -> None:
    edges = LDCAST_BIN_EDGES.tolist()
    p99 = np.array([0.0, *edges, *(e * (1 + 1e-9) for e in edges), 1e4])
    t = make_table(np.zeros(p99.size))
    t["p99"] = p99
    pool = run_sampler("ldcast", t, seed=0)
    assert pool["bin_id"].tolist() == [bisect.bisect_left(edges, v) for v in p99]
    assert pool["bin_id"].tolist()[1:11] == list(range(10))  # an edge value: its lower bin
    assert pool["bin_id"].tolist()[11:21] == list(range(1, 11))  # just above: the next bin
    assert len(pool.attrs["bins"]) == 11


def test_ldcast_epoch_balanced(table: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        pool = run_sampler("ldcast", table, seed=0)
    rows = draw_epoch(pool, n_samples=2200, seed=3, epoch=1)
    counts = bin_counts(pool, rows)
    assert len(set(counts.values())) == 1  # 2200 / present bins, exact when divisible
    assert len(counts) == len(np.unique(pool["bin_id"]))


# ---------------------------------------------------------------- importance


def test_importance_acceptance_matches_formula() -> None:
    rng = np.random.default_rng(5)
    values = np.where(rng.random(40000) < 0.6, 0.0, rng.lognormal(0.0, 1.0, 40000))
    t = make_table(values)
    for q_min, m in ((1e-4, 0.1), (0.05, 0.5), (0.3, 1.0)):
        q = np.minimum(1.0, q_min + m * (1 - np.exp(-values)))
        pool = run_sampler("importance", t, seed=11, q_min=q_min, m=m)
        sd = np.sqrt((q * (1 - q)).sum())
        assert abs(len(pool) - q.sum()) < 3 * sd, (q_min, m, len(pool), q.sum())
        kept = np.isin(t["tile_id"], pool["source_tile_id"])
        assert np.allclose(pool["weight"], q[kept])
        assert pool["source_tile_id"].is_unique
        assert (pool["bin_id"] == -1).all()
        # dry tiles are kept at the floor rate q_min
        dry = values == 0
        n_dry = dry.sum()
        assert abs(kept[dry].sum() - q_min * n_dry) < 3 * np.sqrt(n_dry * q_min * (1 - q_min)) + 1


def test_importance_scale_column_and_alias() -> None:
    t = make_table(np.linspace(0, 5, 200))
    with pytest.raises(ParameterError, match=r"no column 'imp_s0_5'.*imp_s1.*prepare"):
        run_sampler("importance", t, seed=0, s=0.5)
    with pytest.raises(ParameterError, match="q_min must be"):
        run_sampler("importance", t, seed=0, q_min=2.0)
    a = run_sampler("dgmr", t, seed=3, q_min=0.5)
    b = run_sampler("importance", t, seed=3, q_min=0.5, s=1.0)
    assert a["source_tile_id"].tolist() == b["source_tile_id"].tolist()


def test_per_tile_streams_independent() -> None:
    ids = np.arange(100000)
    u = per_tile_uniform(ids, seed=0)
    assert np.unique(u).size == u.size  # the community bug gave every tile the same u
    assert ((u >= 0) & (u < 1)).all()
    ecdf = np.arange(1, u.size + 1) / u.size
    assert np.max(np.abs(np.sort(u) - ecdf)) < 1.63 / np.sqrt(u.size)  # KS, 1 % level
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbouring tiles
    assert abs(np.corrcoef(u, per_tile_uniform(ids, seed=1))[0, 1]) < 0.02  # other seed
    assert abs(np.corrcoef(u, per_tile_uniform(ids, seed=0, stream=2))[0, 1]) < 0.02
    # depends only on (seed, tile_id): not on order or on the other tiles
    perm = np.random.default_rng(0).permutation(ids.size)
    assert np.array_equal(per_tile_uniform(ids[perm], seed=0), u[perm])
    assert per_tile_uniform(ids[:10], seed=0).tolist() == u[:10].tolist()
    # string ids work too
    s = per_tile_uniform(np.array(["a", "b", "c"]), seed=0)
    assert np.unique(s).size == 3


def test_importance_keeps_same_tiles_whatever_row_order() -> None:
    t = make_table(np.random.default_rng(1).lognormal(0, 1, 3000))
    pool = run_sampler("importance", t, seed=4)
    shuffled = t.sample(frac=1.0, random_state=2)
    pool2 = run_sampler("importance", shuffled, seed=4)
    assert set(pool["source_tile_id"]) == set(pool2["source_tile_id"])
    assert set(run_sampler("importance", t, seed=5)["source_tile_id"]) != set(
        pool["source_tile_id"]
    )


# ---------------------------------------------------------------- uniform


def test_uniform_all_or_subset_without_replacement() -> None:
    t = make_table(np.linspace(0, 1, 500))
    pool = run_sampler("uniform", t, seed=0)
    assert pool["source_tile_id"].tolist() == t["tile_id"].tolist()
    sub = run_sampler("uniform", t, seed=0, n_tiles=120, aggregation="mean")
    assert len(sub) == 120 and sub["source_tile_id"].is_unique
    assert set(sub["source_tile_id"]) <= set(t["tile_id"])
    assert (
        sub["source_tile_id"].tolist()
        == run_sampler("uniform", t, seed=0, n_tiles=120)["source_tile_id"].tolist()
    )
    assert set(run_sampler("uniform", t, seed=1, n_tiles=120)["source_tile_id"]) != set(
        sub["source_tile_id"]
    )
    with pytest.raises(ParameterError, match="more than the 500 tiles"):
        run_sampler("uniform", t, seed=0, n_tiles=501)
    with pytest.raises(ParameterError, match="n_tiles must be an integer >= 1"):
        run_sampler("uniform", t, seed=0, n_tiles=0)


# ---------------------------------------------------------------- draw_epoch


@pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")
def test_draw_epoch_reproducible_and_different_between_epochs() -> None:
    t = make_table(distributions()["lognormal"])
    for method in ("binnorm", "importance", "uniform"):
        pool = run_sampler(method, t, seed=0)
        a = draw_epoch(pool, n_samples=500, seed=7, epoch=3)
        b = draw_epoch(pool, n_samples=500, seed=7, epoch=3)
        c = draw_epoch(pool, n_samples=500, seed=7, epoch=4)
        d = draw_epoch(pool, n_samples=500, seed=8, epoch=3)
        assert a.dtype == np.int64 and a.size == 500
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
        assert not np.array_equal(a, d)


def test_draw_epoch_unbinned_permutations() -> None:
    pool = pd.DataFrame({"source_tile_id": np.arange(50), "bin_id": -1})
    full = draw_epoch(pool, n_samples=None, seed=0, epoch=0)
    assert sorted(full.tolist()) == list(range(50))
    assert full.tolist() != list(range(50))
    more = draw_epoch(pool, n_samples=120, seed=0, epoch=0)
    assert np.bincount(more, minlength=50).min() == 2
    assert np.bincount(more, minlength=50).max() == 3
    # epochs smaller than the pool continue through it: 5 epochs of 10 cover it exactly once
    chunks = [draw_epoch(pool, n_samples=10, seed=0, epoch=e) for e in range(5)]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(50))
    # without a bin_id column the pool is unbinned
    assert sorted(draw_epoch(pool[["source_tile_id"]], n_samples=None, seed=1, epoch=0)) == list(
        range(50)
    )


def test_draw_epoch_small_bins_repeat_big_bins_subsample() -> None:
    big = 10000  # above the small-bin threshold: numpy permutations
    pool = pd.DataFrame({"bin_id": np.r_[np.zeros(big, int), np.ones(3, int), np.full(40, 2)]})
    rows = draw_epoch(pool, n_samples=3000, seed=0, epoch=0)
    b = pool["bin_id"].to_numpy()[rows]
    assert np.bincount(b).tolist() == [1000, 1000, 1000]
    small = rows[b == 1]
    assert np.bincount(small).max() - np.bincount(small)[np.bincount(small) > 0].min() <= 1
    assert np.unique(rows[b == 0]).size == 1000  # big bin: subsampled, no repeat
    # across epochs the big bin is walked through before any tile repeats
    seen = np.concatenate(
        [
            (r := draw_epoch(pool, n_samples=3000, seed=0, epoch=e))[
                pool["bin_id"].to_numpy()[r] == 0
            ]
            for e in range(10)
        ]
    )
    assert np.unique(seen).size == big
    # the same for a mid-size bin below the threshold (hash-key permutations)
    mid = rows[b == 2]
    assert np.bincount(mid, minlength=big + 43)[big + 3 :].tolist() == [25] * 40


def test_draw_epoch_remainder_rotates_over_bins() -> None:
    pool = pd.DataFrame({"bin_id": np.repeat(np.arange(4), 30)})
    total = np.zeros(4, int)
    for e in range(4):
        counts = np.bincount(
            pool["bin_id"].to_numpy()[draw_epoch(pool, n_samples=9, seed=2, epoch=e)]
        )
        assert sorted(counts.tolist()) == [2, 2, 2, 3]
        total += counts
    assert total.tolist() == [9, 9, 9, 9]  # over n_bins epochs every bin got the same


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0, "seed": 0, "epoch": 0}, "n_samples must be an integer >= 1"),
        ({"n_samples": -5, "seed": 0, "epoch": 0}, "n_samples must be an integer >= 1"),
        ({"n_samples": 2.5, "seed": 0, "epoch": 0}, "n_samples must be an integer >= 1"),
        ({"n_samples": 5, "seed": -1, "epoch": 0}, "seed must be an integer >= 0"),
        ({"n_samples": 5, "seed": 0, "epoch": -1}, "epoch must be an integer >= 0"),
    ],
)
def test_draw_epoch_bad_inputs(kwargs: dict[str, object], message: str) -> None:
    pool = pd.DataFrame({"bin_id": [0, 1, 1]})
    with pytest.raises(ParameterError, match=message):
        draw_epoch(pool, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="pool is empty"):
        draw_epoch(pool.iloc[:0], n_samples=None, seed=0, epoch=0)


# ---------------------------------------------------------------- time offsets


def test_assign_time_offsets() -> None:
    pool = pd.DataFrame({"source_tile_id": np.arange(5000)})
    off = assign_time_offsets(pool, 24, 18, seed=0)
    assert off.min() == 0 and off.max() == 6 and np.unique(off).size == 7
    assert np.array_equal(off, assign_time_offsets(pool, 24, 18, seed=0))
    assert not np.array_equal(off, assign_time_offsets(pool, 24, 18, seed=1))
    assert (assign_time_offsets(pool, 12, 12, seed=0) == 0).all()
    # offset depends on (seed, tile id) only
    assert np.array_equal(assign_time_offsets(pool.iloc[::-1], 24, 18, seed=0), off[::-1])
    with pytest.raises(ParameterError, match="longer than the tiles' window"):
        assign_time_offsets(pool, 12, 13, seed=0)
    with pytest.raises(ParameterError, match="n_time_sample must be an integer >= 1"):
        assign_time_offsets(pool, 12, 0, seed=0)


# ---------------------------------------------------------------- community interop


def test_community_csv_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cubes.csv"
    pd.DataFrame({"t": [0, 3, 6], "x": [16, 32, 48], "y": [100, 116, 132]}).to_csv(
        path, index=False
    )
    times = np.datetime64("2022-01-01T00:00") + np.arange(40) * np.timedelta64(5, "m")
    tab = load_community_csv(path, times=times)
    # their x indexes array axis 1 = our rows (y_start)
    assert tab["y_start"].tolist() == [16, 32, 48]
    assert tab["x_start"].tolist() == [100, 116, 132]
    assert tab["t_start"].tolist() == [0, 3, 6]
    assert tab["time_start"].tolist() == [times[0], times[3], times[6]]
    assert load_community_csv(path)["time_start"].isna().all()
    assert (tab["n_time_window"] == 24).all() and (tab["y_tile"] == 256).all()
    assert (tab["bin_id"] == -1).all() and tab["source_tile_id"].tolist() == [0, 1, 2]
    rows = draw_epoch(tab, n_samples=None, seed=0, epoch=0)
    assert sorted(rows.tolist()) == [0, 1, 2]
    by_name = load_community_csv(path, x_is_axis=2, tile_size=(128, 64))
    assert by_name["x_start"].tolist() == [16, 32, 48]
    assert by_name["y_tile"].tolist() == [128] * 3 and by_name["x_tile"].tolist() == [64] * 3
    with pytest.raises(ParameterError, match="x_is_axis must be 1"):
        load_community_csv(path, x_is_axis=0)
    with pytest.raises(ParameterError, match="runs past the 20 given times"):
        load_community_csv(path, times=times[:20])
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"t": [0], "row": [1], "col": [2]}).to_csv(bad, index=False)
    with pytest.raises(IndexFileError, match=r"lacks the column\(s\) x, y"):
        load_community_csv(bad)
    with pytest.raises(IndexFileError, match="cannot read"):
        load_community_csv(tmp_path / "absent.csv")


def test_community_stats_csv_feeds_samplers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    mean = np.where(rng.random(n) < 0.5, 0.0, rng.lognormal(0, 1, n))
    frame = pd.DataFrame(
        {
            "t": np.arange(n) * 3,
            "x": 0,
            "y": np.arange(n) % 5 * 16,
            "nan_count": rng.integers(0, 1000, n),
            "sum": mean * 24 * 256 * 256,
            "mean": mean,
            "frac_wet": np.minimum(mean, 1),
        }
    )
    path = tmp_path / "stats.csv"
    frame.to_csv(path, index=False)
    tab = load_community_stats(path)
    assert tab["scalar_value"].tolist() == pytest.approx(mean.tolist())
    assert tab["nan_fraction"].tolist() == pytest.approx(
        (frame["nan_count"] / (24 * 256 * 256)).tolist()
    )
    pool = run_sampler("binnorm", tab, seed=0, aggregation="mean", n_scalar_total_bins=4)
    rows = draw_epoch(pool, n_samples=400, seed=0, epoch=0)
    assert set(bin_counts(pool, rows).values()) == {100}
    frame.drop(columns="frac_wet").to_csv(path, index=False)
    with pytest.raises(IndexFileError, match="frac_wet"):
        load_community_stats(path)


def test_community_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: parquet stats untested")
    frame = pd.DataFrame(
        {
            "t": [0, 3],
            "x": [0, 16],
            "y": [0, 0],
            "nan_count": [0, 5],
            "sum": [0.0, 10.0],
            "mean": [0.0, 1.0],
            "frac_wet": [0.0, 0.5],
        }
    )
    path = tmp_path / "stats.parquet"
    frame.to_parquet(path)
    tab = load_community_stats(path)
    assert tab["y_start"].tolist() == [0, 16]


def test_community_parquet_without_pyarrow_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    path = tmp_path / "stats.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(IndexFileError, match="needs pyarrow"):
        load_community_stats(path)


def test_build_from_tiling_index_read_back(tmp_path: Path) -> None:
    """Tiling tables as index.py reads them (int32 positions, float32 stats, datetime64 times)."""
    from mlcast_pipes.indexes.format import tiling_dtypes
    from mlcast_pipes.indexes.index_csv import load_index, write_index

    t = make_table(distributions()["mostly_dry"])
    cols = list(t.columns)
    tiling_csv = tmp_path / "demo.64x64.12.samples.csv"
    tiling_meta = write_index(
        tiling_csv,
        [t],
        {"kind": "tiling", "tiling_id": "demo.64x64.12", "dtypes": tiling_dtypes(cols)},
        columns=cols,
    )
    table, meta = load_index(tiling_csv)
    assert table["time_start"].dtype == "datetime64[ns]" and table["p99"].dtype == np.float32
    idx = build_sampling_index(table, meta, method="ldcast", index_dir=tmp_path, seed=2)
    assert idx.meta["tiling_csv_sha256"] == tiling_meta["csv_sha256"]
    src = t.set_index("tile_id").loc[idx.table["source_tile_id"]]
    assert (idx.table["time_start"] == pd.to_datetime(src["time_start"]).to_numpy()).all()
    assert np.allclose(idx.table["scalar_value"], src["p99"], rtol=1e-5)  # "%.6g" in the CSV
    again = load_sampling_index(idx.path, tiling_table=table, tiling_meta=meta)
    pd.testing.assert_frame_equal(again.table, idx.table, check_exact=True)


# ---------------------------------------------------------------- real-archive traits


def _radar_archive(clutter: bool = True) -> xr.DataArray:
    """Three rain events with gaps of weeks between them, NaN outside a radar circle, light rain
    everywhere inside and, optionally, two clutter pixels of 8646 mm/h (as on OPERA)."""

    step = np.timedelta64(5, "m")
    t0 = np.datetime64("2022-07-01T00:00")
    events = [
        t0 + np.arange(k) * step + np.timedelta64(30 * j, "D") for j, k in enumerate([6, 8, 8])
    ]
    times = np.concatenate(events)
    rng = np.random.default_rng(1)
    data = rng.gamma(0.6, 1.5, (times.size, 128, 128)).astype(np.float32)
    data[data < 0.2] = 0.0
    yy, xx = np.mgrid[0:128, 0:128]
    data[:, (yy - 64) ** 2 + (xx - 64) ** 2 > 70**2] = np.nan
    if clutter:
        data[:, 40, 40] = 8646.0
        data[:, 90, 80] = 2500.0
    return xr.DataArray(data, dims=("time", "y", "x"), coords={"time": times})


def test_clutter_is_capped_counted_and_reported(tmp_path: Path) -> None:
    from mlcast_pipes.indexes.tiling import prepare_tiling
    from mlcast_pipes.tiling import TilingParams

    da = _radar_archive()
    params = TilingParams(n_time_window=4, tile_size=(32, 32), max_nan_fraction=0.2)
    index = prepare_tiling(da, params, tmp_path, dataset_id="radar", fingerprint="fp")
    table = index.table
    # 5 windows (1 + 2 + 2 in the three events), none lost to the gaps
    assert sorted(table["t_start"].unique().tolist()) == [0, 6, 10, 14, 18]
    assert index.meta["params"]["clip_max"] == 300.0
    clutter = table["clip_count"] > 0
    assert clutter.sum() == 2 * 5  # the two clutter tiles of each window
    assert (table.loc[clutter, "clip_count"] == 4).all()  # one pixel x 4 steps
    assert table["max"].max() == 300.0  # capped as .normalize() caps
    with pytest.warns(SamplingWarning, match=r"more than 3% of an epoch.*pixels capped"):
        run_sampler("binnorm", table, seed=0, aggregation="max")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        capped = run_sampler("binnorm", table, seed=0, aggregation="max")
    # without the cap the clutter tiles take bins of their own: a far larger share of an epoch
    raw = TilingParams(n_time_window=4, tile_size=(32, 32), max_nan_fraction=0.2, clip_max=None)
    raw_table = prepare_tiling(da, raw, tmp_path, dataset_id="radar", fingerprint="fp").table
    assert raw_table["max"].max() == 8646.0
    assert (raw_table["clip_count"] == 0).all()
    with pytest.warns(SamplingWarning, match=r"more than 3% of an epoch"):
        uncapped = run_sampler("binnorm", raw_table, seed=0, aggregation="max")
    share_capped = epoch_shares(capped)[capped["scalar_value"].to_numpy() >= 300].sum()
    share_raw = epoch_shares(uncapped)[uncapped["scalar_value"].to_numpy() >= 300].sum()
    assert share_raw > share_capped


def test_dominant_share_warning_names_only_parameters_the_sampler_takes() -> None:
    values = np.concatenate([np.linspace(0.5, 2.0, 400), [900.0]])
    table = make_table(values)
    with pytest.warns(SamplingWarning) as caught:
        run_sampler("binnorm", table, seed=0, aggregation="mean", bin_edges="linear")
    text = " ".join(str(w.message) for w in caught)
    assert "n_scalar_total_bins" in text and "q_min" not in text
    with pytest.warns(SamplingWarning) as caught:
        run_sampler("ldcast", make_table(np.concatenate([np.full(300, 0.05), [80.0]])), seed=0)
    text = " ".join(str(w.message) for w in caught)
    assert "n_scalar_total_bins" not in text and "bin_edges" not in text
    assert "aggregation" in text


def test_importance_warns_on_tiny_pool_with_the_fix() -> None:
    n = 200
    table = make_table(np.full(n, 0.05))
    table["imp_s1"] = 0.02  # little rain: q = 1e-4 + 0.1 * 0.02, a few tiles kept of 200
    table.loc[:2, "imp_s1"] = 1.0  # 3 rainy tiles
    with pytest.warns(SamplingWarning, match=r"importance: kept \d+ of 200 tiles.*q_min=0.1"):
        pool = run_sampler("importance", table, seed=0)
    assert pool.attrs["n_candidates"] == 200
    assert pool.attrs["acceptance_rate"] == pytest.approx(len(pool) / 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        run_sampler("importance", make_table(np.ones(100)).assign(imp_s1=0.9), seed=0, q_min=1.0)
    with pytest.raises(ParameterError, match="raise q_min"):
        run_sampler("importance", table.assign(imp_s1=0.0), seed=0, q_min=0.0)


def test_sampling_index_records_candidates_and_acceptance(tmp_path: Path) -> None:
    table = make_table(np.linspace(0.0, 5.0, 300))
    table["imp_s1"] = np.linspace(0.0, 1.0, 300)
    meta = {"tiling_id": "t", "dataset_id": "d", "dataset_fingerprint": "fp"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        built = build_sampling_index(
            table, meta, method="importance", index_dir=tmp_path, seed=0, q_min=0.2
        )
    assert built.meta["n_candidates"] == 300
    assert built.meta["acceptance_rate"] == pytest.approx(len(built.table) / 300)


def test_sub_window_samples_warn_that_bins_come_from_the_whole_window(tmp_path: Path) -> None:
    table = make_table(np.linspace(0.1, 5.0, 400), n_time_window=12)
    meta = {"tiling_id": "t", "dataset_id": "d", "dataset_fingerprint": "fp"}
    with pytest.warns(SamplingWarning, match=r"whole 12-step window.*n_time_window=4"):
        build_sampling_index(
            table, meta, method="binnorm", index_dir=tmp_path, seed=0, n_time_sample=4,
            aggregation="mean", n_scalar_total_bins=3, dry_threshold=None,
        )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", SamplingWarning)
        build_sampling_index(  # the whole window: nothing to warn about
            table, meta, method="binnorm", index_dir=tmp_path, seed=0, n_time_sample=12,
            aggregation="mean", n_scalar_total_bins=3, dry_threshold=None,
        )  # fmt: skip
        build_sampling_index(  # uniform does not choose by statistics
            table, meta, method="uniform", index_dir=tmp_path, seed=0, n_time_sample=4
        )


# --------------------------------------------------------------------------------------------
# The community sampler's t,x,y CSV as a sampling pool in a chain
# --------------------------------------------------------------------------------------------


def _community_cubes(tiles: pd.DataFrame, rows: list[int], path: Path) -> Path:
    """Write the tiles at ``rows`` as the community tool does: t, x (= our rows), y (= columns)."""
    picked = tiles.iloc[rows]
    frame = pd.DataFrame({"t": picked["t_start"], "x": picked["y_start"], "y": picked["x_start"]})
    frame.to_csv(path, index=False)
    return path


def test_community_csv_is_a_pool_in_a_chain(
    tiny_archive: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    import mlcast_pipes as mp
    from mlcast_pipes.datapipes.sample import SampleDataPipe

    tiles = mp.OpenXarrayDataset(str(tiny_archive)).tile(
        n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=tmp_path / "idx"
    )
    table = tiles.plan.table(next(iter(tiles.source_datapipe))).rows
    picked = [0, 3, 5, 8, 13]
    csv = _community_cubes(table, picked, tmp_path / "cubes.csv")
    sampler = tiles.community_sample(csv=str(csv), seed=2)
    assert isinstance(sampler, SampleDataPipe)
    want = set(table["tile_id"].iloc[picked].tolist())
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = [(s.tile_id, s.t_start, s.y_start, s.x_start) for s in sampler]
        epochs.append([g[0] for g in got])
        assert sorted(epochs[-1]) == sorted(want)  # each cube exactly once per epoch
    assert epochs[0] != epochs[1] or len(want) < 3
    # the sampling id covers the file's content: an edited file gets a new index
    (first,) = sampler.sampling_indexes()
    assert first.meta["params"]["csv_sha256"]
    _community_cubes(table, picked[:3], csv)
    again = tiles.community_sample(csv=str(csv), seed=2)
    (second,) = again.sampling_indexes()
    assert second.sampling_id != first.sampling_id and len(second.table) == 3


def test_community_cubes_off_the_tiling_are_reported(tmp_path: Path) -> None:
    tiles = pd.DataFrame(
        {
            "tile_id": [0, 1],
            "t_start": [0, 4],
            "y_start": [0, 0],
            "x_start": [0, 32],
            "n_time_window": 4,
            "y_tile": 32,
            "x_tile": 32,
        }
    )
    csv = tmp_path / "cubes.csv"
    pd.DataFrame({"t": [4, 1], "x": [0, 0], "y": [32, 0]}).to_csv(csv, index=False)
    with pytest.warns(SamplingWarning, match="1 of the 2 cubes"):
        pool = run_sampler("community", tiles, seed=0, csv=str(csv))
    assert pool["source_tile_id"].tolist() == [1]
    pd.DataFrame({"t": [2], "x": [0], "y": [0]}).to_csv(csv, index=False)
    with pytest.raises(ParameterError, match=r"stride=\(3, 16, 16\)"):
        run_sampler("community", tiles, seed=0, csv=str(csv))
    with pytest.raises(ParameterError, match="is not a file"):
        run_sampler("community", tiles, seed=0, csv=str(tmp_path / "none.csv"))
    with pytest.raises(ParameterError, match="changed since"):
        run_sampler("community", tiles, seed=0, csv=str(csv), csv_sha256="0" * 64)
