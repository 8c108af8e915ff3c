"""Tile records: lazy pixels, coordinates, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes  # noqa: F401  (registers the functionals)
from mlcast_pipes.reader import TileRequest
from mlcast_pipes.records import DatasetInfo, TileSample


@pytest.fixture(scope="module")
def records_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records-index")


def _tiles(archive: Path, index: Path):
    return (
        IterableWrapper([str(archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=index)
    )


@pytest.fixture(scope="module")
def records(tiny_archive: Path, records_index: Path) -> list[TileSample]:
    return list(_tiles(tiny_archive, records_index))


def test_records_are_lazy_until_loaded(records: list[TileSample]) -> None:
    rec = records[3]
    assert isinstance(rec.info, DatasetInfo)
    assert rec.data is None and rec.sample_id is None and rec.normalization is None
    data = rec.load()
    assert data.dtype == np.float32 and data.shape == (12, 64, 64)
    assert rec.load() is data  # read once
    assert rec.request == TileRequest(rec.t_start, 12, rec.y_start, 64, rec.x_start, 64)


def test_to_dataarray_matches_isel(records: list[TileSample], tiny_archive: Path) -> None:
    src = xr.open_zarr(tiny_archive)["rainfall_rate"]
    rec = records[-1]
    tile = rec.to_dataarray()
    ref = src.isel(
        time=slice(rec.t_start, rec.t_start + 12),
        y=slice(rec.y_start, rec.y_start + 64),
        x=slice(rec.x_start, rec.x_start + 64),
    )
    xr.testing.assert_equal(tile.drop_attrs(), ref.reset_coords(drop=True).drop_attrs())
    assert tile.name == "rainfall_rate"
    assert tile.attrs["units"] == "mm h-1" and tile.attrs["tile_id"] == rec.tile_id
    assert tile.attrs["dataset_id"] == rec.info.dataset_id
    assert "normalization" not in tile.attrs


def test_normalised_record_says_so(tiny_archive: Path, records_index: Path) -> None:
    rec = next(iter(_tiles(tiny_archive, records_index).normalize(method="log1p")))
    tile = rec.to_dataarray()
    assert tile.attrs["normalization"] == "log1p" and tile.attrs["units"] == "1"
    assert tile.dtype == np.float32 and not np.isnan(tile.values).any()


def test_metadata(records: list[TileSample]) -> None:
    rec = records[0]
    meta = rec.metadata()
    assert meta == {
        "dataset_id": rec.info.dataset_id,
        "tile_id": rec.tile_id,
        "sample_id": -1,
        "t_start": rec.t_start,
        "y_start": rec.y_start,
        "x_start": rec.x_start,
        "time_start": rec.time_start,
        "padded": False,  # True only for the copies that even out distributed ranks
    }


def test_info_is_hashable_and_shared(records: list[TileSample]) -> None:
    infos = {r.info for r in records}
    assert len(infos) == 1
    (info,) = infos
    assert info.time_step == np.timedelta64(5, "m")
    assert info.standard_name == "rainfall_flux" and info.units == "mm h-1"
