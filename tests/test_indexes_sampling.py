"""Tests of mlcast_pipes.indexes.sampling: sampling ids and sampling index files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_sampling import distributions, make_table

from mlcast_pipes.errors import IndexFileError, ParameterError, StaleIndexError
from mlcast_pipes.indexes.format import sidecar_path
from mlcast_pipes.indexes.sampling import build_sampling_index, load_sampling_index, sampling_id
from mlcast_pipes.sampling import LDCAST_BIN_EDGES, SAMPLES_COLUMNS, draw_epoch

# ---------------------------------------------------------------- sampling ids


def test_sampling_id_collision_free_and_stable() -> None:
    ids = set()
    count = 0
    for method, grid in (
        (
            "binnorm",
            [
                {},
                {"aggregation": "mean"},
                {"n_scalar_total_bins": 8},
                {"bin_edges": "quantile"},
                {"bin_edges": [0.1, 1.0, 10.0]},
                {"bin_edges": [0.1, 1.0, 10.1]},
                {"dry_threshold": 0.1},
            ],
        ),
        ("ldcast", [{}, {"aggregation": "p90"}]),
        ("importance", [{}, {"q_min": 1e-3}, {"m": 0.2}, {"s": 2}]),
        ("uniform", [{}, {"n_tiles": 10}]),
    ):
        for params in grid:
            for seed in (0, 1):
                for n_time_sample in (12, 18):
                    for tiling in ("ds.128x128.24", "ds.128x128.24.train-1"):
                        ids.add(
                            sampling_id(
                                tiling,
                                method=method,
                                n_time_sample=n_time_sample,
                                seed=seed,
                                params=params,
                            )
                        )
                        count += 1
    assert len(ids) == count
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids)
    same = {
        sampling_id("t", method="importance", n_time_sample=12, seed=0, params={"s": 1}),
        sampling_id("t", method="dgmr", n_time_sample=12, seed=0, params={"s": 1.0}),
        sampling_id("t", method="importance", n_time_sample=12, seed=0, params={}),
    }
    assert len(same) == 1
    sid = same.pop()
    assert sid.startswith("t.12.importance.")
    # unsafe characters are replaced, and the hash still tells the raw ids apart
    a = sampling_id("a/b", method="uniform", n_time_sample=1, seed=0, params={})
    b = sampling_id("a:b", method="uniform", n_time_sample=1, seed=0, params={})
    assert "/" not in a and a != b


# ---------------------------------------------------------------- sampling index files


TILING_META = {
    "tiling_id": "demo.64x64.12",
    "csv_sha256": "a" * 64,
    "dataset_fingerprint": "fp1",
    "dataset_id": "demo",
}


def test_build_writes_csv_and_sidecar(tmp_path: Path) -> None:
    t = make_table(distributions()["lognormal"], n_time_window=12)
    idx = build_sampling_index(
        t, TILING_META, method="ldcast", index_dir=tmp_path, n_time_sample=8, seed=3
    )
    assert idx.path == tmp_path / f"{idx.sampling_id}.samples.csv"
    assert idx.sampling_id.startswith("demo.64x64.12.8.ldcast.")
    assert idx.meta_path == sidecar_path(idx.path) and idx.meta_path.exists()
    text = idx.path.read_text().splitlines()
    assert text[0] == ",".join(SAMPLES_COLUMNS)
    tab = idx.table
    assert list(tab.columns) == list(SAMPLES_COLUMNS)
    assert tab["sampled_tile_id"].tolist() == list(range(len(tab)))
    src = t.set_index("tile_id").loc[tab["source_tile_id"]]
    for c in ("t_start", "y_start", "x_start", "y_tile", "x_tile"):
        assert tab[c].tolist() == src[c].tolist()
    assert (tab["time_start"] == pd.to_datetime(src["time_start"]).to_numpy()).all()
    assert tab["scalar_value"].tolist() == src["p99"].tolist()
    assert tab["t_offset"].between(0, 4).all() and tab["t_offset"].nunique() == 5
    assert (tab["n_time_sample"] == 8).all()
    meta = json.loads(idx.meta_path.read_text())
    assert meta["kind"] == "sampling"
    assert meta["method"] == "ldcast" and meta["seed"] == 3 and meta["n_time_sample"] == 8
    assert meta["params"] == {"aggregation": "p99"}
    assert meta["tiling_id"] == "demo.64x64.12"
    assert meta["tiling_csv_sha256"] == "a" * 64 and meta["dataset_fingerprint"] == "fp1"
    assert meta["n_rows"] == len(tab)
    assert meta["csv_bytes"] == idx.path.stat().st_size
    assert np.allclose(meta["bin_edges"], LDCAST_BIN_EDGES)
    assert sum(b["n_tiles"] for b in meta["bins"]) == len(tab)
    assert "package_version" in meta
    # load returns the same table and works as a pool
    again = load_sampling_index(idx.path)
    pd.testing.assert_frame_equal(again.table, tab, check_dtype=False, check_exact=True)
    rows = draw_epoch(again.table, n_samples=110, seed=0, epoch=0)
    assert rows.size == 110


def test_build_reuses_matching_index(tmp_path: Path) -> None:
    t = make_table(distributions()["mostly_dry"])
    a = build_sampling_index(t, TILING_META, method="importance", index_dir=tmp_path, seed=1)
    mtime = a.path.stat().st_mtime_ns
    b = build_sampling_index(t, TILING_META, method="dgmr", index_dir=tmp_path, seed=1, s=1)
    assert b.path == a.path and a.path.stat().st_mtime_ns == mtime
    assert b.table["source_tile_id"].tolist() == a.table["source_tile_id"].tolist()
    assert b.table["source_tile_id"].is_unique
    assert np.allclose(b.table["weight"], np.minimum(1, 1e-4 + 0.1 * b.table["scalar_value"]))
    c = build_sampling_index(t, TILING_META, method="importance", index_dir=tmp_path, seed=2)
    assert c.path != a.path


@pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")
def test_stale_when_tiling_changes(tmp_path: Path) -> None:
    t = make_table(distributions()["lognormal"])
    idx = build_sampling_index(t, TILING_META, method="binnorm", index_dir=tmp_path)
    changed = {**TILING_META, "csv_sha256": "b" * 64}
    with pytest.raises(StaleIndexError, match=r"tiling index CSV \(SHA-256\) changed"):
        build_sampling_index(t, changed, method="binnorm", index_dir=tmp_path)
    with pytest.raises(StaleIndexError, match="dataset fingerprint changed"):
        load_sampling_index(idx.path, tiling_meta={**TILING_META, "dataset_fingerprint": "fp2"})
    moved = t.copy()
    moved.loc[0, "y_start"] += 32
    with pytest.raises(StaleIndexError, match="tile ids / positions"):
        build_sampling_index(moved, TILING_META, method="binnorm", index_dir=tmp_path)
    rebuilt = build_sampling_index(
        moved, changed, method="binnorm", index_dir=tmp_path, recompute=True
    )
    assert rebuilt.path == idx.path
    assert (
        load_sampling_index(idx.path, tiling_table=moved, tiling_meta=changed).meta[
            "tiling_csv_sha256"
        ]
        == "b" * 64
    )


@pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")
def test_stale_when_parameters_differ(tmp_path: Path) -> None:
    t = make_table(distributions()["lognormal"])
    idx = build_sampling_index(
        t, TILING_META, method="binnorm", index_dir=tmp_path, aggregation="max"
    )
    load_sampling_index(idx.path, expected={"method": "binnorm", "params": {"aggregation": "max"}})
    with pytest.raises(
        StaleIndexError, match=r"other parameters \(aggregation: index has 'max', asked 'sum'\)"
    ):
        load_sampling_index(idx.path, expected={"method": "binnorm", "params": {}})
    with pytest.raises(StaleIndexError, match="seed differs"):
        load_sampling_index(idx.path, expected={"seed": 9})


def test_edited_or_incomplete_index_detected(tmp_path: Path) -> None:
    t = make_table(distributions()["lognormal"])
    idx = build_sampling_index(t, TILING_META, method="uniform", index_dir=tmp_path)
    text = idx.path.read_text()
    # a same-size edit: found by the SHA-256 check only
    edited = text.replace("\n0,", "\n7,", 1)
    assert len(edited) == len(text) and edited != text
    idx.path.write_text(edited)
    load_sampling_index(idx.path, verify="size")  # the cheap check misses it
    with pytest.raises(IndexFileError, match="sha256"):
        load_sampling_index(idx.path, verify="sha256")
    lines = text.splitlines(keepends=True)
    idx.path.write_text("".join(lines[:-3]))
    with pytest.raises(IndexFileError, match="truncated or edited"):
        load_sampling_index(idx.path)
    idx.meta_path.unlink()
    with pytest.raises(IndexFileError, match=r"incomplete \(no sidecar"):
        load_sampling_index(idx.path)
    with pytest.raises(IndexFileError, match="not found"):
        load_sampling_index(tmp_path / "missing.samples.csv")


def test_build_bad_inputs(tmp_path: Path) -> None:
    t = make_table(np.linspace(0, 1, 50))
    with pytest.raises(ParameterError, match="unknown sampler"):
        build_sampling_index(t, TILING_META, method="nope", index_dir=tmp_path)
    with pytest.raises(ParameterError, match="longer than the tiles' window n_time_window=12"):
        build_sampling_index(t, TILING_META, method="uniform", index_dir=tmp_path, n_time_sample=13)
    with pytest.raises(ParameterError, match="no 'tiling_id'"):
        build_sampling_index(t, {}, method="uniform", index_dir=tmp_path)
    with pytest.raises(IndexFileError, match=r"lacks the column.*x_tile"):
        build_sampling_index(
            t.drop(columns="x_tile"), TILING_META, method="uniform", index_dir=tmp_path
        )
    with pytest.raises(ParameterError, match="seed must be"):
        build_sampling_index(t, TILING_META, method="uniform", index_dir=tmp_path, seed=-1)
    with pytest.raises(ParameterError, match="kept none of the 50 tiles"):
        build_sampling_index(
            t, TILING_META, method="importance", index_dir=tmp_path, q_min=0.0, m=0.0
        )
    assert list(tmp_path.iterdir()) == []
