"""Tests of mlcast_pipes.demo: structure, time axis, realism, determinism, caching, memory."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest
import xarray as xr

import mlcast_pipes.demo as demo
import mlcast_pipes.demo_events as demo_events
from mlcast_pipes.demo import PRESETS, DemoPreset, describe, ensure_demo, generate_demo
from mlcast_pipes.errors import ParameterError

STEP = np.timedelta64(5, "m")
CLUTTER_CAP = 200.0  # mm/h: anything above is clutter in the demo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "tiny.zarr", "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_ds(tiny: pathlib.Path) -> xr.Dataset:
    return xr.open_zarr(tiny, chunks=None).load()


def _zmeta(path: pathlib.Path) -> dict[str, Any]:
    with open(path / ".zmetadata", encoding="utf-8") as fh:
        meta: dict[str, Any] = json.load(fh)["metadata"]
    return meta


def _chunk_bytes(path: pathlib.Path) -> dict[str, bytes]:
    var = path / "rainfall_rate"
    return {p.name: p.read_bytes() for p in sorted(var.iterdir()) if not p.name.startswith(".")}


def _leftovers(folder: pathlib.Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------------------- structure


def test_zarr_layout_one_chunk_per_step_zstd_v2(tiny: pathlib.Path) -> None:
    meta = _zmeta(tiny)
    zarray = meta["rainfall_rate/.zarray"]
    ny, nx = PRESETS["tiny"].shape
    assert zarray["zarr_format"] == 2
    assert zarray["shape"] == [PRESETS["tiny"].n_times, ny, nx]
    assert zarray["chunks"] == [1, ny, nx]
    assert zarray["dtype"] == "<f4"
    assert zarray["compressor"]["id"] == "zstd"
    assert meta["rainfall_rate/.zattrs"]["_ARRAY_DIMENSIONS"] == ["time", "y", "x"]
    # every time step has its own chunk file
    assert len(_chunk_bytes(tiny)) == PRESETS["tiny"].n_times
    assert not (tiny / "zarr.json").exists()


def test_variables_coordinates_and_attributes(tiny_ds: xr.Dataset) -> None:
    da = tiny_ds["rainfall_rate"]
    assert da.dims == ("time", "y", "x")
    assert da.dtype == np.float32
    assert da.attrs["standard_name"] == "rainfall_flux"
    assert da.attrs["units"] == "mm h-1"
    assert da.attrs["long_name"]
    assert da.attrs["grid_mapping"] == "crs"
    assert np.issubdtype(tiny_ds["time"].dtype, np.datetime64)

    x, y = tiny_ds["x"].values, tiny_ds["y"].values
    np.testing.assert_allclose(np.diff(x), 1000.0)
    np.testing.assert_allclose(np.diff(y), -1000.0)  # y decreasing: row 0 is north
    assert tiny_ds["x"].attrs["standard_name"] == "projection_x_coordinate"
    assert tiny_ds["y"].attrs["standard_name"] == "projection_y_coordinate"
    assert tiny_ds["x"].attrs["units"] == tiny_ds["y"].attrs["units"] == "m"
    assert (tiny_ds["x"].attrs["axis"], tiny_ds["y"].attrs["axis"]) == ("X", "Y")

    lat, lon = tiny_ds["lat"], tiny_ds["lon"]
    assert lat.dims == lon.dims == ("y", "x")
    assert lat.attrs["standard_name"] == "latitude"
    assert lat.attrs["units"] == "degrees_north"
    assert lon.attrs["standard_name"] == "longitude"
    assert lon.attrs["units"] == "degrees_east"
    assert 35.0 < float(lat.min()) < float(lat.max()) < 50.0  # around Italy
    assert 5.0 < float(lon.min()) < float(lon.max()) < 20.0
    assert float(lat[0].mean()) > float(lat[-1].mean())  # row 0 north

    crs = tiny_ds["crs"]
    assert crs.ndim == 0
    from pyproj import CRS, Transformer

    parsed = CRS.from_wkt(crs.attrs["crs_wkt"])
    assert crs.attrs["spatial_ref"] == crs.attrs["crs_wkt"]
    # lat/lon agree with the stored projection at a corner
    to_geo = Transformer.from_crs(parsed, CRS.from_epsg(4326), always_xy=True)
    lon0, lat0 = to_geo.transform(float(x[0]), float(y[0]))
    assert lat0 == pytest.approx(float(lat[0, 0]), abs=1e-4)
    assert lon0 == pytest.approx(float(lon[0, 0]), abs=1e-4)

    attrs = tiny_ds.attrs
    assert attrs["license"] == "CC-BY-4.0"
    assert attrs["mlcast_dataset_identifier"] == "zz-mlcastpipes-demo-tiny-seed0"
    for key in ("mlcast_dataset_version", "mlcast_created_on", "mlcast_created_by"):
        assert attrs[key]
    assert attrs["mlcast_created_with"].startswith("mlcast-pipes")
    assert attrs["title"]
    assert (attrs["demo_preset"], attrs["demo_seed"]) == ("tiny", 0)
    assert "consistent_timestep_start" not in attrs


def test_time_axis_events_gaps_and_missing_times(tiny_ds: xr.Dataset) -> None:
    times = tiny_ds["time"].values
    missing = tiny_ds["missing_times"].values
    assert tiny_ds["missing_times"].dims == ("missing_time",)
    assert np.issubdtype(missing.dtype, np.datetime64)
    diffs = np.diff(times)
    assert (diffs > np.timedelta64(0)).all()
    assert diffs.min() == STEP
    # exactly one long gap (two events), weeks long, not listed in missing_times
    long_gaps = np.flatnonzero(diffs > np.timedelta64(1, "D"))
    assert long_gaps.size == 1
    assert diffs[long_gaps[0]] > np.timedelta64(20, "D")
    # missing times: disjoint from time, single steps on the 5-min grid inside an event
    assert 1 <= missing.size <= 2
    assert not np.isin(missing, times).any()
    for m in missing:
        i = np.searchsorted(times, m)
        assert 0 < i < times.size
        assert times[i - 1] + STEP == m
        assert times[i] - STEP == m
    # every hole that is not the long gap is explained by missing_times
    holes = np.flatnonzero((diffs > STEP) & (diffs <= np.timedelta64(1, "D")))
    assert holes.size == missing.size


def test_stepchange_preset_marks_consistent_timestep_start(tmp_path: pathlib.Path) -> None:
    path = generate_demo(tmp_path / "sc.zarr", "tiny_stepchange", seed=1, shape=(64, 64))
    ds = xr.open_zarr(path, chunks=None)
    start = np.datetime64(ds.attrs["consistent_timestep_start"], "ns")
    times = ds["time"].values
    before, after = times[times < start], times[times >= start]
    assert after[0] == start
    assert np.diff(before).min() == np.timedelta64(15, "m")
    assert np.diff(after).min() == STEP
    assert "2 events" in describe(path)


# ---------------------------------------------------------------------------- content


def test_quantized_levels_follow_marshall_palmer() -> None:
    levels = demo.quantized_rates()
    dbz = 10 * np.log10(200.0 * levels.astype(np.float64) ** 1.6)
    np.testing.assert_allclose(dbz * 2, np.round(dbz * 2), atol=1e-4)  # 0.5 dBZ steps
    assert dbz[0] == pytest.approx(5.0, abs=1e-4)
    assert (np.diff(levels) > 0).all()


def test_content_is_radar_like(tiny_ds: xr.Dataset) -> None:
    a = tiny_ds["rainfall_rate"].values
    valid = np.isfinite(a)
    # NaN outside fixed radar circles: same mask every frame, 20-50 % of the grid
    assert (valid == valid[0]).all()
    nan_fraction = 1.0 - valid[0].mean()
    assert 0.2 <= nan_fraction <= 0.5
    # not a single rectangle: the coverage edge is curved (rows of different valid widths)
    row_widths = valid[0].sum(axis=1)
    assert len(np.unique(row_widths)) > 10

    vals = a[valid]
    clutter = vals > CLUTTER_CAP
    rain = vals[~clutter]
    # mostly dry, exact zeros, wet share of valid pixels 5-40 %
    assert (rain == 0.0).mean() > 0.5
    wet_share = (rain > 0.1).mean()
    assert 0.05 <= wet_share <= 0.4
    per_frame = np.nansum(a > 0.1, axis=(1, 2)) / valid.sum(axis=(1, 2))
    assert per_frame.max() <= 0.5 and per_frame.min() > 0.0
    # meteorological rain: heavy tail but bounded
    assert 20.0 < rain.max() <= 160.0
    assert np.quantile(rain[rain > 0.1], 0.5) < 5.0
    # quantised: every non-zero value is a 0.5 dBZ Marshall-Palmer level (clutter too)
    dbz = 10 * np.log10(200.0 * vals[vals > 0].astype(np.float64) ** 1.6)
    np.testing.assert_allclose(dbz * 2, np.round(dbz * 2), atol=1e-3)
    assert np.isin(vals[vals > 0], demo.quantized_rates()).all()
    assert vals.min() == 0.0

    # clutter: a few fixed pixels, huge values, in every frame
    hot = np.nan_to_num(a) > CLUTTER_CAP
    assert (hot == hot[0]).all()
    assert 1 <= hot[0].sum() <= 10
    assert float(np.nanmax(a)) < 10000.0


def _best_shift(prev: np.ndarray, nxt: np.ndarray, reach: int = 7) -> tuple[int, int, float]:
    """Integer shift (dy, dx) with nxt[y, x] ~ prev[y - dy, x - dx], and its correlation."""
    m = reach
    target = nxt[m:-m, m:-m]
    best = (0, 0, -2.0)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            src = prev[m - dy : prev.shape[0] - m - dy, m - dx : prev.shape[1] - m - dx]
            c = float(np.corrcoef(src.ravel(), target.ravel())[0, 1])
            if c > best[2]:
                best = (dy, dx, c)
    return best


def test_rain_moves_between_consecutive_frames(tiny_ds: xr.Dataset) -> None:
    a = tiny_ds["rainfall_rate"].values[:16]
    times = tiny_ds["time"].values[:16]
    field = np.log1p(np.where(np.nan_to_num(a) > CLUTTER_CAP, 0.0, np.nan_to_num(a)))
    shifts = []
    for k in range(len(field) - 1):
        if times[k + 1] - times[k] != STEP:
            continue
        dy, dx, corr = _best_shift(field[k], field[k + 1])
        assert corr > 0.7  # coherent in time ...
        shifts.append((dy, dx))
        assert not np.array_equal(a[k], a[k + 1], equal_nan=True)
    moved = [math.hypot(dy, dx) for dy, dx in shifts]
    assert len(moved) >= 10
    assert np.mean([d >= 1 for d in moved]) >= 0.8  # ... and advected
    assert 1.0 <= float(np.median(moved)) <= 6.0
    # one steering wind per event: the shift direction is consistent
    mean_dir = np.mean(shifts, axis=0)
    assert np.hypot(*mean_dir) >= 1.0


def test_cells_grow_and_decay() -> None:
    model = demo_events._EventModel(
        seed=0, index=0, shape=(96, 96), duration_min=120.0, density=1.0
    )
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    model.cells = demo_events._Cells(
        birth=one(0.0),
        life=one(100.0),
        y0=one(48.0),
        x0=one(20.0),
        vy=one(0.0),
        vx=one(0.5),
        peak=one(60.0),
        sig_a=one(5.0),
        sig_b=one(3.0),
        cos_t=one(1.0),
        sin_t=one(0.0),
    )
    stats = []
    for t in (5.0, 30.0, 90.0):
        out = np.zeros((96, 96), dtype=np.float32)
        model.add_cells(out, t)
        _, cx = np.unravel_index(np.argmax(out), out.shape)
        stats.append((float(out.max()), int((out > 1.0).sum()), int(cx)))
    (p0, a0, x0), (p1, a1, x1), (p2, a2, x2) = stats
    assert p1 > p0 and p1 > p2 and p1 <= 60.0  # intensity peaks mid-life
    assert a1 > a0 and a1 > a2  # so does the area
    assert x0 < x1 < x2  # and the cell moves with its velocity
    assert x2 - x0 == pytest.approx(0.5 * 85, abs=1.5)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_chunks(tmp_path: pathlib.Path, tiny: pathlib.Path) -> None:
    again = generate_demo(tmp_path / "again.zarr", "tiny", seed=0)
    assert _chunk_bytes(again) == _chunk_bytes(tiny)
    a = xr.open_zarr(tiny, chunks=None)["rainfall_rate"].values
    b = xr.open_zarr(again, chunks=None)["rainfall_rate"].values
    np.testing.assert_array_equal(a, b)


def test_different_seed_differs(tmp_path: pathlib.Path, tiny_ds: xr.Dataset) -> None:
    other = generate_demo(tmp_path / "other.zarr", "tiny", seed=1)
    b = xr.open_zarr(other, chunks=None)["rainfall_rate"].values
    a = tiny_ds["rainfall_rate"].values
    assert a.shape == b.shape
    assert not np.array_equal(a, b, equal_nan=True)
    # same layout (preset), different weather
    np.testing.assert_array_equal(np.isnan(a[0]), np.isnan(b[0]))


# ---------------------------------------------------------------------------- parameters


def test_overrides_n_times_and_shape(tmp_path: pathlib.Path) -> None:
    path = generate_demo(tmp_path / "o.zarr", "tiny", seed=2, n_times=40, shape=(64, 96))
    ds = xr.open_zarr(path, chunks=None)
    assert ds["rainfall_rate"].shape == (40, 64, 96)
    assert _zmeta(path)["rainfall_rate/.zarray"]["chunks"] == [1, 64, 96]
    # another content, another identifier (readers derive dataset ids from it)
    assert ds.attrs["mlcast_dataset_identifier"] == "zz-mlcastpipes-demo-tiny-seed2-40x64x96"
    assert np.diff(ds["time"].values).max() > np.timedelta64(1, "D")  # still two events
    single = generate_demo(tmp_path / "one.zarr", "tiny", seed=2, n_times=1, shape=(32, 32))
    ds1 = xr.open_zarr(single, chunks=None)
    assert ds1["rainfall_rate"].shape == (1, 32, 32)
    assert ds1["missing_times"].size == 0


def test_custom_preset_without_clutter(tmp_path: pathlib.Path) -> None:
    preset = DemoPreset(
        name="custom",
        shape=(64, 64),
        event_starts=("2020-01-01T00:00",),
        event_lengths=(20,),
        missing_per_event=(0,),
        clutter=False,
    )
    path = generate_demo(tmp_path / "c.zarr", preset, seed=0)
    a = xr.open_zarr(path, chunks=None)["rainfall_rate"].values
    assert a.shape == (20, 64, 64)
    assert float(np.nanmax(a)) <= 160.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "huge"}, "tiny"),
        ({"n_times": 0}, "n_times"),
        ({"shape": (16, 256)}, "shape"),
        ({"shape": (256,)}, "shape"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters(tmp_path: pathlib.Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        generate_demo(tmp_path / "bad.zarr", **kwargs)
    assert not (tmp_path / "bad.zarr").exists()


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ParameterError) as err:
        ensure_demo("/nonexistent/x.zarr", "nope")
    for name in PRESETS:
        assert name in str(err.value)


def test_existing_path_needs_overwrite(tmp_path: pathlib.Path) -> None:
    path = generate_demo(tmp_path / "d.zarr", "tiny", seed=0, n_times=3, shape=(32, 32))
    with pytest.raises(ParameterError, match="overwrite=True"):
        generate_demo(path, "tiny", seed=1, n_times=3, shape=(32, 32))
    generate_demo(path, "tiny", seed=1, n_times=5, shape=(32, 32), overwrite=True)
    assert xr.open_zarr(path, chunks=None)["rainfall_rate"].shape == (5, 32, 32)
    # overwrite never deletes a folder that is not a zarr store
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(ParameterError, match="not a zarr store"):
        generate_demo(precious, "tiny", n_times=2, shape=(32, 32), overwrite=True)
    assert (precious / "thesis.tex").exists()
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- ensure_demo


def test_ensure_demo_generates_then_reuses(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache" / "demo-tiny-seed4.zarr"
    assert ensure_demo(path, "tiny", 4) == path
    before = _chunk_bytes(path)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_demo regenerated an existing archive")

    monkeypatch.setattr(demo, "_write_store", boom)
    assert ensure_demo(str(path), "tiny", 4) == path
    assert _chunk_bytes(path) == before
    with pytest.raises(ParameterError, match="seed"):
        ensure_demo(path, "tiny", 5)  # another seed at this path: refuse, never clobber


def test_ensure_demo_replaces_outdated_store(tmp_path: pathlib.Path) -> None:
    path = ensure_demo(tmp_path / "d.zarr", "tiny", 0)
    meta_file = path / ".zmetadata"
    meta = json.loads(meta_file.read_text())
    meta["metadata"][".zattrs"]["demo_format_version"] = 0
    meta_file.write_text(json.dumps(meta))
    ensure_demo(path, "tiny", 0)
    assert json.loads(meta_file.read_text())["metadata"][".zattrs"]["demo_format_version"] == (
        demo.DEMO_FORMAT_VERSION
    )
    assert _leftovers(tmp_path) == []


def test_ensure_demo_refuses_foreign_folder(tmp_path: pathlib.Path) -> None:
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(ParameterError, match="not a demo archive"):
        ensure_demo(tmp_path / "x.zarr", "tiny", 0)


def test_ensure_demo_thread_race(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, tiny: pathlib.Path
) -> None:
    # both threads finish generating before either renames: a guaranteed race
    barrier = threading.Barrier(2)
    original = demo._write_store

    def write_then_wait(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        barrier.wait(timeout=60)

    monkeypatch.setattr(demo, "_write_store", write_then_wait)
    target = tmp_path / "race.zarr"
    results: list[object] = []

    def call() -> None:
        try:
            results.append(ensure_demo(target, "tiny", 0))
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [target, target]
    assert _chunk_bytes(target) == _chunk_bytes(tiny)
    assert _leftovers(tmp_path) == []


def test_ensure_demo_process_race(tmp_path: pathlib.Path, tiny: pathlib.Path) -> None:
    # the children load mlcast_pipes.demo without the package __init__ (torch) to stay fast
    pkg_dir = pathlib.Path(demo.__file__).parent
    target = tmp_path / "race.zarr"
    code = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("mlcast_pipes")
        pkg.__path__ = [{str(pkg_dir)!r}]
        sys.modules["mlcast_pipes"] = pkg
        from mlcast_pipes.demo import ensure_demo
        print(ensure_demo({str(target)!r}, "tiny", 0))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(pkg_dir.parent))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        assert out.decode().strip() == str(target)
    assert _chunk_bytes(target) == _chunk_bytes(tiny)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- streaming, describe


def test_generation_streams_frames(tmp_path: pathlib.Path) -> None:
    generate_demo(tmp_path / "warm.zarr", "tiny", n_times=2, shape=(256, 256))  # imports, caches
    n_times, shape = 384, (256, 256)
    full_bytes = n_times * shape[0] * shape[1] * 4
    tracemalloc.start()
    try:
        generate_demo(tmp_path / "long.zarr", "tiny", seed=0, n_times=n_times, shape=shape)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.35 * full_bytes, (
        f"peak {peak / 1e6:.1f} MB for a {full_bytes / 1e6:.0f} MB archive"
    )
    assert len(_chunk_bytes(tmp_path / "long.zarr")) == n_times


def test_describe_summarises(tiny: pathlib.Path, tiny_ds: xr.Dataset) -> None:
    text = describe(tiny)
    assert "130 x 256 x 256" in text
    assert "step 5 min" in text
    assert "2 events, 1 gap," in text
    assert "2 missing times" in text
    assert "2021-06-12T10:00" in text
    nan_pct = float(text.split("NaN ")[1].split("%")[0])
    a = tiny_ds["rainfall_rate"].values
    assert nan_pct == pytest.approx(100 * np.isnan(a).mean(), abs=0.1)
    assert "wet" in text and "max" in text
    pick = np.unique(np.linspace(0, len(a) - 1, 64).round().astype(int))  # frames describe reads
    assert f"max {float(np.nanmax(a[pick])):.1f}" in text
    assert "(from 64 of 130 frames)" in text
    with pytest.raises(demo.DatasetError, match="cannot open"):
        describe(tiny.parent / "missing.zarr")
