"""Tests of mlcast_pipes.dataset: opening, variable/coordinate recognition, validation, ids."""

from __future__ import annotations

import pickle
import re
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as dask_array
import numcodecs
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec

from mlcast_pipes.dataset import (
    MLCastSpecWarning,
    SourceSpec,
    dataset_id,
    fingerprint,
    metadata_stamp,
    missing_times,
    nominal_time_step,
    open_mlcast,
    open_source,
    select_variable,
    source_spec,
    validate,
)
from mlcast_pipes.errors import CatalogError, DatasetError
from mlcast_pipes.indexes.format import sanitize_id

SPEC_ATTRS = {
    "license": "CC-BY-4.0",
    "mlcast_dataset_identifier": "zz-test-rainrate",
    "mlcast_dataset_version": "0.3.1",
    "mlcast_created_on": "2025-01-01T00:00:00Z",
    "mlcast_created_by": "tests",
    "mlcast_created_with": "xarray",
}
WKT = 'PROJCRS["test laea",BASEGEOGCRS["WGS 84",DATUM["World Geodetic System 1984"]]]'


def build_dataset(
    *,
    n_times: int = 6,
    shape: tuple[int, int] = (256, 256),
    var: str = "rainfall_rate",
    standard_name: str | None = "rainfall_flux",
    units: str | None = "mm h-1",
    times: Any = None,
    missing: Any = ("2020-06-01T00:30",),
    resolution: float = 1000.0,
    dims: tuple[str, str, str] = ("time", "y", "x"),
    dtype: str = "float32",
    global_attrs: dict[str, Any] | None = None,
    grid_mapping: bool = True,
    lat_lon: bool = True,
    seed: int = 0,
) -> xr.Dataset:
    """A small MLCast-structured dataset: rain field with NaN outside a radar circle."""
    ny, nx = shape
    if times is None:
        times = pd.date_range("2020-06-01T00:00", periods=n_times, freq="5min").values
        if missing:
            keep = ~np.isin(times, np.array(missing, dtype="datetime64[ns]"))
            extra = pd.date_range(times[-1], periods=int((~keep).sum()) + 1, freq="5min")[1:]
            times = np.concatenate([times[keep], extra.values])
    times = np.asarray(times, dtype="datetime64[ns]")
    nt = times.size
    rng = np.random.default_rng(seed)
    data = rng.gamma(0.3, 2.0, size=(nt, ny, nx)).astype(dtype)
    yy, xx = np.mgrid[0:ny, 0:nx]
    outside = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2 > (0.45 * min(ny, nx)) ** 2
    if np.issubdtype(np.dtype(dtype), np.floating):
        data[:, outside] = np.nan
    x = (np.arange(nx) - nx / 2 + 0.5) * resolution
    y = (ny / 2 - 0.5 - np.arange(ny)) * resolution  # decreasing: row 0 is north
    var_attrs: dict[str, Any] = {"long_name": "rain rate"}
    if standard_name is not None:
        var_attrs["standard_name"] = standard_name
    if units is not None:
        var_attrs["units"] = units
    if grid_mapping:
        var_attrs["grid_mapping"] = "crs"
    data_vars: dict[str, Any] = {var: (("time", "y", "x"), data, var_attrs)}
    if grid_mapping:
        data_vars["crs"] = ((), np.int32(0), {"crs_wkt": WKT, "spatial_ref": WKT})
    if missing is not None:
        data_vars["missing_times"] = (
            ("missing_time",),
            np.array(missing or [], dtype="datetime64[ns]"),
        )
    coords: dict[str, Any] = {
        "time": ("time", times, {"standard_name": "time", "axis": "T"}),
        "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}),
        "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}),
    }
    if lat_lon:
        lat = 45.0 + y[:, None] / 111e3 + 0 * x[None, :]
        lon = 10.0 + x[None, :] / 80e3 + 0 * y[:, None]
        coords["lat"] = (("y", "x"), lat.astype("float32"), {"standard_name": "latitude"})
        coords["lon"] = (("y", "x"), lon.astype("float32"), {"standard_name": "longitude"})
    ds = xr.Dataset(
        data_vars, coords=coords, attrs=dict(SPEC_ATTRS if global_attrs is None else global_attrs)
    )
    if dims != ("time", "y", "x"):
        ds[var] = ds[var].transpose(*dims)
    return ds


def write_archive(
    ds: xr.Dataset,
    path: str | Path,
    *,
    zarr_format: int = 2,
    chunks: tuple[int, ...] | None = None,
    compress: bool = True,
    **kwargs: Any,
) -> str:
    """Write ``ds`` as zarr with one zstd chunk per time step (by default)."""
    encoding: dict[str, dict[str, Any]] = {}
    for name, v in ds.data_vars.items():
        if v.ndim == 3:
            enc: dict[str, Any] = {
                "chunks": chunks or tuple(1 if d == "time" else n for d, n in v.sizes.items())
            }
            codec: Any = numcodecs.Zstd(level=1) if zarr_format == 2 else ZstdCodec(level=1)
            enc["compressors"] = (codec,) if compress else None
            encoding[str(name)] = enc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(
            path,
            mode="w",
            zarr_format=zarr_format,
            consolidated=True,
            encoding=encoding,
            **kwargs,
        )
    return str(path)


def make_archive(
    tmp_path: Path,
    name: str = "radar.zarr",
    *,
    zarr_format: int = 2,
    chunks: tuple[int, ...] | None = None,
    compress: bool = True,
    **variations: Any,
) -> Path:
    """Write a small MLCast-structured archive under ``tmp_path``; ``variations`` go to build."""
    path = tmp_path / name
    write_archive(
        build_dataset(**variations), path, zarr_format=zarr_format, chunks=chunks, compress=compress
    )
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return make_archive(tmp_path)


@pytest.fixture
def no_spec_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MLCastSpecWarning)
        yield


def open_quiet(*args: Any, **kwargs: Any) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MLCastSpecWarning)
        return open_mlcast(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# happy paths


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_local_path(tmp_path: Path, zarr_format: int, no_spec_warnings: None) -> None:
    ds = build_dataset()
    path = tmp_path / "radar.zarr"
    write_archive(ds, path, zarr_format=zarr_format)
    da = open_mlcast(path)
    assert da.dims == ("time", "y", "x")
    assert da.name == "rainfall_rate"
    assert isinstance(da.data, dask_array.Array)
    assert da.data.chunks[0] == (1,) * da.sizes["time"]
    assert da.data.chunks[1:] == ((256,), (256,))
    assert da.time.dtype == np.dtype("datetime64[ns]")
    assert set(da.coords) == {"time", "y", "x", "lat", "lon"}
    np.testing.assert_array_equal(da.values, ds["rainfall_rate"].values)
    np.testing.assert_array_equal(da.y.values, ds.y.values)
    assert da.attrs["units"] == "mm h-1"
    assert da.attrs["standard_name"] == "rainfall_flux"
    assert da.attrs["dataset_id"] == "zz-test-rainrate-v0.3.1"
    assert da.attrs["crs_wkt"] == WKT
    np.testing.assert_array_equal(
        missing_times(da), np.array(["2020-06-01T00:30"], dtype="datetime64[ns]")
    )
    assert da.attrs["missing_times"].dtype == np.dtype("datetime64[ns]")
    spec = source_spec(da)
    assert spec == SourceSpec(str(path), "rainfall_rate", "zz-test-rainrate-v0.3.1")
    assert dataset_id(da) == spec.dataset_id


def test_open_string_path_and_file_url(archive: Path) -> None:
    a = open_quiet(str(archive))
    b = open_quiet(f"file://{archive}")
    assert source_spec(a).url == source_spec(b).url == str(archive)


def test_open_memory_url(no_spec_warnings: None) -> None:
    import fsspec

    url = "memory://mlcast-tests/mem-radar.zarr"
    ds = build_dataset()
    write_archive(ds, url)
    try:
        da = open_mlcast(url, dataset_id="mem radar/../x")
        assert da.dims == ("time", "y", "x")
        np.testing.assert_array_equal(
            da.isel(time=2).values, ds["rainfall_rate"].isel(time=2).values
        )
        assert da.attrs["dataset_id"] == "mem_radar_x"
        assert source_spec(da).url == url
        again = open_source(source_spec(da))
        assert fingerprint(again) == fingerprint(da)
        assert metadata_stamp(da) is None  # remote stores are not stat-ed
    finally:
        fsspec.filesystem("memory").rm("/mlcast-tests", recursive=True)


def test_var_selected_by_standard_name(tmp_path: Path) -> None:
    ds = build_dataset(var="precip_now")  # name outside the table, standard_name decides
    ds["quality"] = ds["precip_now"] * 0 + 1
    ds["quality"].attrs = {"long_name": "quality index"}
    path = tmp_path / "q.zarr"
    write_archive(ds, path)
    da = open_quiet(path)
    assert da.name == "precip_now"
    assert select_variable(xr.open_zarr(path), None) == "precip_now"


def test_var_selected_by_name_without_standard_name(tmp_path: Path) -> None:
    path = make_archive(tmp_path, var="RR", standard_name=None)
    with pytest.warns(MLCastSpecWarning, match="no 'standard_name'"):
        da = open_mlcast(path)
    assert da.name == "RR"
    assert da.attrs["standard_name"] == "rainfall_flux"  # inferred from the units


def test_several_candidates_need_var_name_or_hint(tmp_path: Path) -> None:
    ds = build_dataset(var="rr")
    ds["dbz"] = ds["rr"].copy()
    ds["dbz"].attrs.update(standard_name="equivalent_reflectivity_factor", units="dBZ")
    path = tmp_path / "two.zarr"
    write_archive(ds, path)
    with pytest.raises(DatasetError) as info:
        open_quiet(path)
    msg = str(info.value)
    assert "several precipitation variables" in msg and "'rr'" in msg and "'dbz'" in msg
    assert "var_name" in msg
    assert open_quiet(path, "dbz").attrs["units"] == "dBZ"
    raw = xr.open_zarr(path)
    assert select_variable(raw, None, hint="dbz") == "dbz"
    # a user catalog's variable hint decides
    catalog = tmp_path / "cat.yml"
    catalog.write_text(
        f"sources:\n  two:\n    driver: zarr\n    args: {{urlpath: '{path}'}}\n"
        "    metadata: {variable: dbz}\n"
    )
    assert open_quiet("two", catalog=catalog).name == "dbz"


def test_dbz_archive(tmp_path: Path, no_spec_warnings: None) -> None:
    path = make_archive(
        tmp_path,
        "dmi.zarr",
        var="dbz",
        standard_name="equivalent_reflectivity_factor",
        units="dBZ",
        resolution=500.0,
    )
    da = open_mlcast(path)
    assert da.name == "dbz" and da.attrs["units"] == "dBZ"
    assert da.attrs["standard_name"] == "equivalent_reflectivity_factor"


def test_units_spelling_is_canonicalised(tmp_path: Path) -> None:
    da = open_quiet(make_archive(tmp_path, units=" MM/H "))
    assert da.attrs["units"] == "mm h-1" and da.attrs["units_original"] == " MM/H "


def test_coordinates_recognised_by_name_and_attributes(tmp_path: Path) -> None:
    ds = build_dataset(lat_lon=False).rename(time="t", y="northing", x="easting")
    ds["latitude"] = (("northing", "easting"), np.zeros((256, 256), "f4"))
    ds["longitude"] = (("northing", "easting"), np.ones((256, 256), "f4"))
    ds["latitude"].attrs["units"] = "degrees_north"
    path = tmp_path / "named.zarr"
    write_archive(ds, path)
    da = open_quiet(path)
    assert da.dims == ("time", "y", "x")
    assert "lat" in da.coords and "lon" in da.coords
    assert float(da.lon[0, 0]) == 1.0

    ds2 = build_dataset(lat_lon=False).rename(time="a", y="b", x="c")  # only attrs tell
    ds2["a"].attrs = {"standard_name": "time"}
    ds2["b"].attrs = {"axis": "Y", "units": "km"}
    ds2["c"].attrs = {"standard_name": "projection_x_coordinate", "units": "m"}
    path2 = tmp_path / "attrs.zarr"
    write_archive(ds2, path2)
    assert open_quiet(path2).dims == ("time", "y", "x")


def test_user_catalog_with_nested_file(tmp_path: Path) -> None:
    path = make_archive(tmp_path / "data", "it_sri.zarr", var="RR")
    (tmp_path / "cat" / "precipitation").mkdir(parents=True)
    (tmp_path / "cat" / "precipitation" / "catalog.yml").write_text(
        textwrap.dedent(
            """
        sources:
          it_sri:
            description: local copy
            driver: zarr
            args:
              urlpath: "{{ CATALOG_DIR }}/../../data/it_sri.zarr"
              consolidated: true
            metadata: {variable: RR}
        """
        )
    )
    root = tmp_path / "cat" / "catalog.yml"
    root.write_text(
        textwrap.dedent(
            """
        sources:
          precipitation:
            driver: yaml_file_cat
            args: {path: "{{ CATALOG_DIR }}/precipitation/catalog.yml"}
        """
        )
    )
    full = open_quiet("precipitation.it_sri", catalog=root)
    short = open_quiet("it_sri", catalog=str(root))
    assert full.name == short.name == "RR"
    # the id comes from the archive's identifier, whichever way it was named
    assert full.attrs["dataset_id"] == open_quiet(path).attrs["dataset_id"]
    assert full.attrs["dataset_id"] == "zz-test-rainrate-v0.3.1"
    assert source_spec(full).url == str(path)
    assert source_spec(full).consolidated is True
    assert open_quiet("it_sri", catalog=root, dataset_id="custom").attrs["dataset_id"] == "custom"


def test_demo_via_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "c.yml"
    root.write_text(
        "sources:\n  demo:\n    driver: mlcast_demo\n    args: {preset: tiny, seed: 0}\n"
    )
    da = open_quiet("demo", catalog=root)
    assert da.dims == ("time", "y", "x")
    store = tmp_path / "cache" / "demo-tiny-seed0.zarr"
    # the archive's own identifier, as for its path: one index for both
    assert da.attrs["dataset_id"] == "zz-mlcastpipes-demo-tiny-seed0-v1.0.0"
    assert open_quiet(store).attrs["dataset_id"] == da.attrs["dataset_id"]
    assert fingerprint(open_quiet(store)) == fingerprint(da)
    assert source_spec(da).url == str(store)
    assert missing_times(da).size > 0


def test_open_source_reopens_in_another_process_form(archive: Path) -> None:
    da = open_quiet(archive)
    spec = pickle.loads(pickle.dumps(source_spec(da)))
    again = open_source(spec)
    assert again.attrs["dataset_id"] == da.attrs["dataset_id"]
    xr.testing.assert_identical(again.drop_attrs(), da.drop_attrs())
    plain = open_source(spec, chunks=None)
    assert not isinstance(plain.variable._data, dask_array.Array)
    np.testing.assert_array_equal(plain.isel(time=1).values, da.isel(time=1).values)


def test_storage_options_excluded_from_spec_equality() -> None:
    a = SourceSpec("s3://b/x.zarr", "rr", "x", {"anon": True})
    b = SourceSpec("s3://b/x.zarr", "rr", "x", {"anon": False})
    assert a == b and hash(a) == hash(b)


# ----------------------------------------------------------------------------------------------
# bad input


def test_unknown_catalog_id_suggests() -> None:
    with pytest.raises(CatalogError) as info:
        open_mlcast("dmi_10_minuts")
    msg = str(info.value)
    assert "unknown dataset id 'dmi_10_minuts'" in msg and "'dmi_10_minutes'" in msg
    assert "precipitation.it_dpc_sri_5min" in msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        open_mlcast(tmp_path / "nope.zarr")
    assert str(tmp_path / "nope.zarr") in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        open_mlcast("./nope.zarr")


def test_folder_that_is_not_zarr(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    make_archive(folder, "inner.zarr")
    with pytest.raises(DatasetError) as info:
        open_mlcast(folder)
    msg = str(info.value)
    assert "is not a zarr store" in msg and ".zgroup" in msg and "zarr.json" in msg
    assert "inner.zarr" in msg  # points to the store inside


def test_file_is_not_a_store(tmp_path: Path) -> None:
    f = tmp_path / "radar.nc"
    f.write_bytes(b"CDF")
    with pytest.raises(DatasetError, match="is a file, not a zarr store"):
        open_mlcast(f)


def test_missing_variable_lists_data_variables(archive: Path) -> None:
    with pytest.raises(DatasetError) as info:
        open_mlcast(archive, "precip")
    msg = str(info.value)
    assert "'precip' is not in" in msg and "'rainfall_rate'" in msg and "var_name" in msg
    with pytest.raises(DatasetError, match="Did you mean 'rainfall_rate'"):
        open_mlcast(archive, "RAINFALL_RATE")


def test_transposed_dims(tmp_path: Path) -> None:
    path = make_archive(tmp_path, dims=("y", "x", "time"), chunks=(256, 256, 1))
    with pytest.raises(DatasetError) as info:
        open_mlcast(path)
    msg = str(info.value)
    assert "('y', 'x', 'time')" in msg and "(time, y, x)" in msg
    assert "transpose('time', 'y', 'x')" in msg


def test_wrong_number_of_dims(tmp_path: Path) -> None:
    ds = build_dataset().expand_dims(member=2)
    ds["rainfall_rate"] = ds["rainfall_rate"].transpose("time", "member", "y", "x")
    path = tmp_path / "ens.zarr"
    write_archive(ds, path, chunks=(1, 1, 256, 256))
    with pytest.raises(DatasetError, match=r"4 dims \('time', 'member', 'y', 'x'\)"):
        open_mlcast(path)


def test_unrecognised_dims(tmp_path: Path) -> None:
    ds = build_dataset(lat_lon=False).rename(y="row", x="col")
    ds = ds.drop_vars(["row", "col"])
    path = tmp_path / "rc.zarr"
    write_archive(ds, path)
    with pytest.raises(DatasetError) as info:
        open_mlcast(path)
    msg = str(info.value)
    assert "row->unknown" in msg and "Name the dims time, y and x" in msg


def test_duplicate_times_named(tmp_path: Path) -> None:
    times = pd.to_datetime(
        ["2020-06-01T00:00", "2020-06-01T00:05", "2020-06-01T00:05", "2020-06-01T00:10"]
    ).values
    path = make_archive(tmp_path, times=times, missing=[])
    with pytest.raises(DatasetError) as info:
        open_mlcast(path)
    msg = str(info.value)
    assert "duplicate" in msg and "2020-06-01T00:05:00 then 2020-06-01T00:05:00" in msg
    assert "indices 1 and 2" in msg and "sortby('time')" in msg


def test_decreasing_times_named(tmp_path: Path) -> None:
    times = pd.to_datetime(
        ["2020-06-01T00:00", "2020-06-01T00:10", "2020-06-01T00:05", "2020-06-01T00:15"]
    ).values
    path = make_archive(tmp_path, times=times, missing=[])
    with pytest.raises(DatasetError) as info:
        open_mlcast(path)
    msg = str(info.value)
    assert "decreasing" in msg and "2020-06-01T00:10:00 then 2020-06-01T00:05:00" in msg


def test_unknown_units(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        open_mlcast(make_archive(tmp_path, units="inch/h"))
    msg = str(info.value)
    assert "'inch/h'" in msg and "mm h-1" in msg and "dBZ" in msg and "kg m-2" in msg


def test_missing_units(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no 'units' attribute"):
        open_mlcast(make_archive(tmp_path, units=None))


def test_integer_dtype(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dtype int16"):
        open_mlcast(make_archive(tmp_path, dtype="int16"))


def test_unreachable_url_fails_fast() -> None:
    url = "http://127.0.0.1:9/x.zarr"
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        open_mlcast(url)
    assert time.monotonic() - start < 20
    assert url in str(info.value)
    assert "could not reach" in str(info.value) or "no zarr store" in str(info.value)


def test_missing_memory_store() -> None:
    with pytest.raises(DatasetError, match=r"memory://nowhere/x.zarr"):
        open_mlcast("memory://nowhere/x.zarr")


def test_bad_source_type() -> None:
    with pytest.raises(DatasetError, match="catalog id, a local path or a URL"):
        open_mlcast(123)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# spec deviations: warnings, strict mode


@pytest.mark.parametrize(
    ("kwargs", "write_kwargs", "needle"),
    [
        ({}, {"chunks": (2, 256, 256)}, "chunked (2, 256, 256)"),
        ({}, {"compress": False}, "without compression"),
        ({"grid_mapping": False}, {}, "no 'grid_mapping'"),
        ({"global_attrs": {}}, {}, "'mlcast_dataset_identifier'"),
        ({"shape": (64, 300)}, {}, "y=64"),
        ({"resolution": 2000.0}, {}, "2000 m"),
        ({"lat_lon": False}, {}, "lat'/'lon"),
        ({"missing": None}, {}, "no 'missing_times'"),
    ],
)
def test_spec_deviations_warn_and_strict_raises(
    tmp_path: Path, kwargs: dict[str, Any], write_kwargs: dict[str, Any], needle: str
) -> None:
    path = tmp_path / "dev.zarr"
    write_archive(build_dataset(**kwargs), path, **write_kwargs)
    with pytest.warns(MLCastSpecWarning) as record:
        da = open_mlcast(path)
    assert any(needle in str(w.message) for w in record), [str(w.message) for w in record]
    assert all(str(path) in str(w.message) for w in record)
    assert da.dims == ("time", "y", "x")
    with pytest.raises(DatasetError) as info:
        open_mlcast(path, strict=True)
    assert needle in str(info.value) and "strict=True" in str(info.value)


def test_validate_returns_messages_for_raw_dataset() -> None:
    ds = build_dataset(shape=(32, 32))
    with pytest.warns(MLCastSpecWarning):
        messages = validate(ds)
    assert len(messages) == 1 and "smaller than 256" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MLCastSpecWarning)
        assert validate(build_dataset()) == []
    with pytest.raises(DatasetError, match="smaller than 256"):
        validate(ds, strict=True)


def test_missing_times_overlapping_time_warns(tmp_path: Path) -> None:
    times = pd.date_range("2020-06-01", periods=4, freq="5min").values
    path = make_archive(tmp_path, times=times, missing=[times[2]])
    with pytest.warns(MLCastSpecWarning, match="disjoint"):
        open_mlcast(path)


def test_undecodable_missing_times(tmp_path: Path) -> None:
    ds = build_dataset()
    ds["missing_times"] = ("missing_time", np.array([1, 2], dtype="int64"))
    path = tmp_path / "mt.zarr"
    write_archive(ds, path)
    with pytest.raises(DatasetError, match=r"'missing_times'.*CF\s+time units"):
        open_quiet(path)


# ----------------------------------------------------------------------------------------------
# ids, fingerprints, time steps


def test_dataset_id_derivation(tmp_path: Path) -> None:
    with_attrs = make_archive(tmp_path, "a.zarr")
    assert open_quiet(with_attrs).attrs["dataset_id"] == "zz-test-rainrate-v0.3.1"
    ds = build_dataset(global_attrs={})
    path = tmp_path / "My Radar (2020).zarr"
    write_archive(ds, path)
    assert open_quiet(path).attrs["dataset_id"] == "My_Radar_2020"
    assert open_quiet(path, dataset_id="../../etc").attrs["dataset_id"] == "etc"
    ident_only = build_dataset(global_attrs={"mlcast_dataset_identifier": "dk-dmi-dbz"})
    write_archive(ident_only, tmp_path / "i.zarr")
    assert open_quiet(tmp_path / "i.zarr").attrs["dataset_id"] == "dk-dmi-dbz"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("precipitation.dmi_10_minutes", "precipitation.dmi_10_minutes"),
        ("../../etc", "etc"),
        ("../../etc/passwd", "etc_passwd"),
        ("/abs/path/x.zarr", "abs_path_x.zarr"),
        ("a/../b", "a_b"),
        ("C:\\data\\radar", "C_data_radar"),
        ("..", "dataset"),
        ("", "dataset"),
        (".hidden", "hidden"),
        ("dk-dmi-dbz v0.1.1", "dk-dmi-dbz_v0.1.1"),
        ("a...b", "a_b"),
    ],
)
def test_sanitize_id(raw: str, expected: str) -> None:
    assert sanitize_id(raw) == expected


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_sanitize_id_is_always_safe(text: str) -> None:
    out = sanitize_id(text)
    assert out and len(out) <= 120
    assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in out)
    assert ".." not in out and not out.startswith(".") and "/" not in out and "\\" not in out
    assert sanitize_id(out) == out


def test_long_ids_are_shortened_uniquely() -> None:
    a, b = sanitize_id("x" * 300 + "a"), sanitize_id("x" * 300 + "b")
    assert len(a) <= 120 and a != b


def test_fingerprint_stable_and_changes_on_append(tmp_path: Path) -> None:
    ds = build_dataset(n_times=6, missing=[])
    path = tmp_path / "grow.zarr"
    write_archive(ds.isel(time=slice(0, 4)), path)
    first = open_quiet(path)
    fp = fingerprint(first)
    assert re.fullmatch(r"[0-9a-f]{16}", fp), fp  # 16 lower-case hex digits
    assert fingerprint(open_quiet(path)) == fp
    assert fingerprint(open_source(source_spec(first))) == fp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.isel(time=slice(4, 6)).drop_vars(["crs", "lat", "lon"]).to_zarr(
            path, append_dim="time", consolidated=True
        )
    grown = open_quiet(path)
    assert grown.sizes["time"] == 6
    assert fingerprint(grown) != fp


def test_fingerprint_reads_no_pixels_and_tracks_coords(archive: Path) -> None:
    da = open_quiet(archive)
    fp = fingerprint(da)

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("pixels were read")

    poisoned = da.copy(data=da.data.map_blocks(boom, dtype=da.dtype))
    assert fingerprint(poisoned) == fp
    shifted = da.assign_coords(x=da.x.values + 1.0)
    assert fingerprint(shifted) != fp
    fewer_missing = da.copy()
    fewer_missing.attrs = {**da.attrs, "missing_times": np.array([], "datetime64[ns]")}
    assert fingerprint(fewer_missing) != fp


def test_nominal_time_step() -> None:
    t = pd.to_datetime(
        [
            "2020-01-01T00:00",
            "2020-01-01T00:15",
            "2020-01-01T00:30",
            "2020-01-01T00:35",
            "2020-01-01T00:40",
            "2020-03-01T00:00",
        ]
    ).values
    assert nominal_time_step(t) == np.timedelta64(5, "m")
    assert nominal_time_step(t[:3]) == np.timedelta64(15, "m")
    regime = (
        pd.date_range("2020-01-01", periods=4, freq="15min")
        .append(pd.date_range("2020-01-01T01:00", periods=4, freq="5min"))
        .values
    )
    assert nominal_time_step(regime, "2020-01-01T01:00:00") == np.timedelta64(5, "m")
    assert nominal_time_step(regime, "2020-01-01T01:00:00Z") == np.timedelta64(5, "m")
    assert nominal_time_step(regime, "") == np.timedelta64(5, "m")
    assert nominal_time_step(regime).dtype == np.dtype("timedelta64[ns]")
    with pytest.raises(DatasetError, match="at least two"):
        nominal_time_step(t[:1])
    with pytest.raises(DatasetError, match="not a date/time"):
        nominal_time_step(t, "yesterday-ish")
    with pytest.raises(DatasetError, match="datetime64"):
        nominal_time_step(np.arange(3))


def test_consistent_timestep_start_is_carried(tmp_path: Path) -> None:
    attrs = {**SPEC_ATTRS, "consistent_timestep_start": "2020-06-01T00:10:00"}
    da = open_quiet(make_archive(tmp_path, global_attrs=attrs))
    assert da.attrs["consistent_timestep_start"] == "2020-06-01T00:10:00"
    assert nominal_time_step(
        da.time.values, da.attrs["consistent_timestep_start"]
    ) == np.timedelta64(5, "m")


def test_source_spec_requires_opened_array() -> None:
    with pytest.raises(DatasetError, match="open_mlcast"):
        source_spec(xr.DataArray(np.zeros((1, 2, 2)), dims=("time", "y", "x")))
    assert missing_times(xr.DataArray(np.zeros(2))).size == 0


def test_unreachable_s3_endpoint_fails_fast() -> None:
    url = "s3://bucket/radar.zarr"
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        open_mlcast(
            url,
            storage_options={
                "anon": True,
                "endpoint_url": "http://127.0.0.1:9",
                "config_kwargs": {"retries": {"max_attempts": 1}},  # keep the test short
            },
        )
    assert time.monotonic() - start < 20
    assert url in str(info.value) and "could not reach" in str(info.value)


def test_default_timeouts_merge_with_user_options() -> None:
    from mlcast_pipes.dataset import with_timeouts

    s3 = with_timeouts("s3://b/x.zarr", {"anon": True, "config_kwargs": {"read_timeout": 5}})
    assert s3["anon"] is True
    assert s3["config_kwargs"]["read_timeout"] == 5
    assert s3["config_kwargs"]["connect_timeout"] > 0
    assert s3["config_kwargs"]["retries"]["total_max_attempts"] >= 1
    http = with_timeouts("https://h/x.zarr", {})
    assert http["client_kwargs"]["timeout"].sock_connect > 0
    mine = object()
    kept = with_timeouts("http://h/x.zarr", {"client_kwargs": {"timeout": mine}})
    assert kept["client_kwargs"]["timeout"] is mine
    assert with_timeouts("memory://x.zarr", {"a": 1}) == {"a": 1}


def test_catalog_entry_with_other_driver(tmp_path: Path) -> None:
    root = tmp_path / "c.yml"
    root.write_text("sources:\n  nc:\n    driver: netcdf\n    args: {urlpath: data.nc}\n")
    with pytest.raises(CatalogError, match=r"driver 'netcdf'.*zarr"):
        open_mlcast("nc", catalog=root)


def test_bare_name_of_local_store_outside_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_archive(tmp_path, "myradar")
    monkeypatch.chdir(tmp_path)
    da = open_quiet("myradar")
    assert source_spec(da).url == str(tmp_path / "myradar")


@pytest.mark.parametrize(
    ("written", "canonical", "factor"),
    [
        ("mm/hr", "mm h-1", 1.0),
        ("mm hr-1", "mm h-1", 1.0),
        ("mm h^-1", "mm h-1", 1.0),
        ("kg m-2 s-1", "kg m-2 s-1", 3600.0),
        ("kg m**-2 s**-1", "kg m-2 s-1", 3600.0),
    ],
)
def test_common_rain_rate_spellings_are_read(
    tmp_path: Path, written: str, canonical: str, factor: float
) -> None:
    """Archives of other services spell rain rate their own way: read, noted, converted."""
    from mlcast_pipes.transforms import to_rain_rate_fn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MLCastSpecWarning)
        da = open_mlcast(make_archive(tmp_path, units=written))
    assert da.attrs["units"] == canonical
    assert da.attrs.get("units_original", canonical) == written
    notes = [str(w.message) for w in caught if issubclass(w.category, MLCastSpecWarning)]
    assert any(f"units {written!r} are read as {canonical!r}" in n for n in notes), notes
    convert = to_rain_rate_fn(da.attrs["standard_name"], da.attrs["units"], None)
    got = 1.0 if convert is None else float(convert(np.array([1.0]))[0])
    assert got == factor


def test_spec_units_spelling_gives_no_units_note(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MLCastSpecWarning)
        open_mlcast(make_archive(tmp_path, units="mm/h"))
    assert not [w for w in caught if "units" in str(w.message)]
