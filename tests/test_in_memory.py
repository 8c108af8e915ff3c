"""In-memory xarray objects as sources: open, index keyed by content, workers, errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
from mlcast_pipes.dataset import MLCastSpecWarning, fingerprint, open_source, source_spec
from mlcast_pipes.errors import DatasetError
from mlcast_pipes.loader import Loader

pytestmark = pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")
TILES = {"n_time_window": 6, "tile_size": (64, 64), "max_nan_fraction": 0.3}


@pytest.fixture(scope="module")
def loaded(tiny_archive: Path) -> xr.Dataset:
    """The tiny demo archive as an in-memory, numpy-backed Dataset."""
    return xr.open_zarr(tiny_archive).load()


def _ids_and_data(pipe: object) -> dict[int, np.ndarray]:
    return {int(s.sample_id): s.data for s in pipe}  # type: ignore[attr-defined]


def _sampled(source: object, index: Path) -> object:
    return IterableWrapper([source]).open_mlcast().tile(index_dir=index, **TILES).uniform_sample()


def test_an_object_changed_in_place_is_copied_again(loaded: xr.Dataset) -> None:
    obj = loaded.copy(deep=True)
    first = mp.open_mlcast(obj)
    obj["rainfall_rate"].values[40, 10, 10] = 77.0  # in place: same object, new content
    second = mp.open_mlcast(obj)
    assert second.attrs["dataset_id"] != first.attrs["dataset_id"]
    store = open_source(source_spec(second))
    assert float(store.isel(time=40, y=10, x=10).values) == 77.0


def test_open_numpy_dask_and_dataarray_objects(tiny_archive: Path, loaded: xr.Dataset) -> None:
    on_disk = mp.open_mlcast(tiny_archive)
    mem = mp.open_mlcast(loaded)
    assert mem.dims == ("time", "y", "x") and mem.shape == on_disk.shape
    assert mem.attrs["dataset_id"].startswith("xarray-")
    assert mem.attrs["units"] == "mm h-1" and mem.attrs["missing_times"].size == 2
    np.testing.assert_array_equal(mem.isel(time=40).values, on_disk.isel(time=40).values)
    # the same content, however it is held, gets the same id and fingerprint
    lazy = xr.open_zarr(tiny_archive)  # dask-backed
    assert isinstance(lazy["rainfall_rate"].data, dsa.Array)
    same = [mp.open_mlcast(lazy), mp.open_mlcast(loaded.copy(deep=True))]
    assert {d.attrs["dataset_id"] for d in same} == {mem.attrs["dataset_id"]}
    assert {fingerprint(d) for d in same} == {fingerprint(mem)}
    # another content: another id and fingerprint, though coordinates and attrs are equal
    changed = loaded.copy(deep=True)
    changed["rainfall_rate"][40, 10, 10] = 3.5
    other = mp.open_mlcast(changed)
    assert other.attrs["dataset_id"] != mem.attrs["dataset_id"]
    assert fingerprint(other) != fingerprint(mem)
    # a DataArray, named or not; one that open_mlcast gave keeps its missing times
    plain = mp.open_mlcast(loaded["rainfall_rate"])  # no missing_times: another content
    assert plain.shape == mem.shape and plain.attrs["missing_times"].size == 0
    again = mp.open_mlcast(mem.isel(time=slice(0, 60)))
    assert again.shape[0] == 60 and again.attrs["missing_times"].size == 2
    unnamed = xr.DataArray(
        loaded["rainfall_rate"].values,
        dims=("time", "y", "x"),
        coords={"time": loaded["time"].values},
        attrs={"units": "mm h-1", "standard_name": "rainfall_flux"},
    )
    with pytest.warns(MLCastSpecWarning):
        assert mp.open_mlcast(unnamed).shape == mem.shape
    assert mp.open_mlcast(loaded, dataset_id="my radar").attrs["dataset_id"] == "my_radar"


def test_bad_in_memory_object_is_a_clear_error(loaded: xr.Dataset) -> None:
    bad = loaded["rainfall_rate"].transpose("x", "time", "y")
    with pytest.raises(DatasetError, match=r"in-memory xarray object .*\(time, y, x\)"):
        mp.open_mlcast(bad)
    with pytest.raises(DatasetError, match="in-memory xarray object"):
        mp.open_mlcast(loaded.drop_vars("rainfall_rate"))


def test_chain_on_an_object_gives_the_samples_of_its_archive(
    tiny_archive: Path, loaded: xr.Dataset, tmp_path: Path
) -> None:
    from_disk = _ids_and_data(_sampled(str(tiny_archive), tmp_path / "disk"))
    index = tmp_path / "mem"
    from_memory = _ids_and_data(_sampled(loaded, index))
    assert sorted(from_memory) == sorted(from_disk)
    for key, data in from_disk.items():
        np.testing.assert_array_equal(from_memory[key], data)
    # tiling and sampling index, keyed by the content
    names = sorted(p.name for p in index.glob("*.samples.csv"))
    assert len(names) == 2 and all(n.startswith("xarray-") for n in names)
    assert mp.OpenXarrayDataset(loaded).source is loaded


def test_workers_get_the_object(loaded: xr.Dataset, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    pipe = _sampled(loaded, index).normalize().to_tensor(batch_size=4, metadata=True)
    reference = sorted(int(i) for b in pipe for i in b["meta"]["sample_id"])
    for context in ("fork", "spawn"):
        loader = Loader(pipe, num_workers=2, multiprocessing_context=context)
        try:
            got = sorted(int(i) for b in loader for i in b["meta"]["sample_id"])
        finally:
            loader.shutdown()
        assert got == reference  # every sample exactly once


def test_store_of_another_process_is_a_clear_error(loaded: xr.Dataset, tmp_path: Path) -> None:
    spec = source_spec(mp.open_mlcast(loaded))
    assert open_source(spec).shape == loaded["rainfall_rate"].shape  # here it exists
    blob = tmp_path / "spec.pkl"
    blob.write_bytes(pickle.dumps(spec))
    code = (
        "import pickle, sys\n"
        "from mlcast_pipes.dataset import open_source\n"
        "from mlcast_pipes.errors import DatasetError\n"
        f"spec = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
        "try:\n"
        "    open_source(spec)\n"
        "except DatasetError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "made from an in-memory xarray object in another process" in out
    assert "ds.to_zarr(" in out


def test_the_user_object_is_left_as_it_was(loaded: xr.Dataset) -> None:
    mem = mp.open_mlcast(loaded)
    before = dict(mem.attrs)
    assert mp.open_mlcast(mem).shape == mem.shape
    assert mem.attrs.keys() == before.keys() and mem.attrs["missing_times"].size == 2
    assert loaded["rainfall_rate"].encoding  # the source's encoding is not touched either


def test_dask_object_under_a_distributed_client(tiny_archive: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    lazy = xr.open_zarr(tiny_archive)
    reference = mp.open_mlcast(tiny_archive)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        mem = mp.open_mlcast(lazy)  # the copy is made here, not in the cluster's worker
        tiles = list(IterableWrapper([lazy]).open_mlcast().tile(index_dir=tmp_path, **TILES))
    assert open_source(source_spec(mem)).shape == reference.shape
    np.testing.assert_array_equal(
        tiles[0].load(),
        reference.isel(
            time=slice(tiles[0].t_start, tiles[0].t_start + 6),
            y=slice(tiles[0].y_start, tiles[0].y_start + 64),
            x=slice(tiles[0].x_start, tiles[0].x_start + 64),
        ).values,
    )
