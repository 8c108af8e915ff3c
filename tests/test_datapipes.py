"""Acceptance tests of the datapipes, through the public API, on the tiny demo archive.

Issues covered: Foundation (open), Tiling, Sampling, Normalize/tensor, Splits.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
from mlcast_pipes.errors import ParameterError, PipelineOrderError
from mlcast_pipes.records import TileSample

TILE = (64, 64)
STEP = np.timedelta64(5, "m")


@pytest.fixture(scope="module")
def shared_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One index folder for the module: the tiling is computed once, then loaded."""
    return tmp_path_factory.mktemp("datapipes-index")


def _tiles(archive: Path, index: Path, **kw):
    kw.setdefault("n_time_window", 12)
    kw.setdefault("tile_size", TILE)
    return IterableWrapper([str(archive)]).open_mlcast().tile(index_dir=index, **kw)


def _source(archive: Path) -> xr.DataArray:
    return xr.open_zarr(archive)["rainfall_rate"]


def _window(src: xr.DataArray, r: TileSample) -> xr.DataArray:
    return src.isel(
        time=slice(r.t_start, r.t_start + r.n_time),
        y=slice(r.y_start, r.y_start + r.y_tile),
        x=slice(r.x_start, r.x_start + r.x_tile),
    )


# --------------------------------------------------------------------------------------------
# Foundation: opening archives
# --------------------------------------------------------------------------------------------


def test_open_mlcast_yields_time_y_x_dataarray(tiny_archive: Path) -> None:
    (da,) = list(IterableWrapper([str(tiny_archive)]).open_mlcast())
    assert isinstance(da, xr.DataArray)
    assert da.dims == ("time", "y", "x")
    assert da.shape == (130, 256, 256)
    assert da.attrs["dataset_id"]
    missing = np.asarray(da.attrs["missing_times"]).astype("datetime64[ns]")
    assert missing.size == 2
    assert not np.isin(missing, da["time"].values).any()
    # lazy: nothing read yet
    assert da.chunks is not None


def test_open_with_own_catalog_file(tiny_archive: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yml"
    catalog.write_text(
        f"sources:\n  mytiny:\n    driver: zarr\n    args:\n      urlpath: {tiny_archive}\n"
    )
    (da,) = list(mp.MLCastCatalogDataset("mytiny", catalog=catalog))
    assert da.dims == ("time", "y", "x")
    # the archive's own id, as when opened by path (one index whichever way it is named)
    assert da.attrs["dataset_id"] == mp.open_mlcast(tiny_archive).attrs["dataset_id"]
    (again,) = list(IterableWrapper(["mytiny"]).open_mlcast(catalog=str(catalog)))
    assert again.shape == da.shape


def test_open_xarray_dataset(tiny_archive: Path) -> None:
    dp = mp.OpenXarrayDataset(str(tiny_archive))
    assert len(dp) == 1
    (da,) = list(dp)
    assert da.shape == (130, 256, 256)
    assert da.name == "rainfall_rate"


def test_opener_keeps_its_handle_across_epochs(
    tiny_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from mlcast_pipes.datapipes import source

    calls: list[str] = []
    real = source.open_mlcast

    def counting(src: str, *args: object, **kw: object) -> xr.DataArray:
        calls.append(src)
        return real(src, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "open_mlcast", counting)
    dp = IterableWrapper([str(tiny_archive)]).open_mlcast()
    (first,) = list(dp)
    (second,) = list(dp)  # a later epoch: nothing opened again
    assert second is first and len(calls) == 1
    # a copy for another process (spawned worker) carries no handle and opens its own
    clone = pickle.loads(pickle.dumps(dp))
    (third,) = list(clone)
    assert third is not first and third.shape == first.shape and len(calls) == 2


def test_catalog_demo_generated_on_first_use() -> None:
    # conftest points MLCAST_PIPES_CACHE at a temporary folder: the 'small' demo is made there.
    from mlcast_pipes.catalog import demo_cache_dir

    (da,) = list(mp.MLCastCatalogDataset("demo"))
    assert da.dims == ("time", "y", "x")
    assert min(da.sizes["y"], da.sizes["x"]) >= 256
    assert da.attrs["dataset_id"] == "zz-mlcastpipes-demo-small-seed0-v1.0.0"
    assert any(p.name.startswith("demo-small") for p in demo_cache_dir().iterdir())


def test_catalog_id_and_path_share_one_index(tmp_path: Path) -> None:
    from mlcast_pipes.catalog import demo_cache_dir, demo_store_name

    path = demo_cache_dir() / demo_store_name("small", 0)
    index = tmp_path / "index"
    counts = []
    for source in ("demo", str(path)):
        tiles = (
            IterableWrapper([source])
            .open_mlcast()
            .tile(n_time_window=12, tile_size=(128, 128), index_dir=index)
        )
        counts.append(sum(1 for _ in itertools.islice(tiles, 5)))
    assert counts == [5, 5]
    (csv,) = index.glob("*.samples.csv")  # the second source loaded the first one's index
    assert csv.name.startswith("zz-mlcastpipes-demo-small-seed0-v1.0.0.128x128.12")


def test_a_subset_that_kept_the_identifier_is_named_by_the_error_and_dataset_id(
    tiny_archive: Path, tmp_path: Path
) -> None:
    subset = xr.open_zarr(tiny_archive).isel(time=slice(0, 60))
    for var in subset.variables.values():
        var.encoding.pop("chunks", None)
        var.encoding.pop("preferred_chunks", None)
    subset.to_zarr(tmp_path / "subset.zarr", zarr_format=2, consolidated=True)
    index = tmp_path / "index"

    def tiles(path: Path, **opts: str) -> int:
        pipe = IterableWrapper([str(path)]).open_mlcast(**opts)
        return sum(1 for _ in pipe.tile(n_time_window=4, tile_size=(64, 64), index_dir=index))

    assert tiles(tiny_archive) > 0
    with pytest.raises(mp.StaleIndexError, match=r"made from .*tiny.zarr.*own id.*dataset_id"):
        tiles(tmp_path / "subset.zarr")
    assert 0 < tiles(tmp_path / "subset.zarr", dataset_id="subset") < tiles(tiny_archive)
    assert len(list(index.glob("*.samples.csv"))) == 2
    both = IterableWrapper([str(tiny_archive), str(tmp_path / "subset.zarr")])
    with pytest.raises(ParameterError, match="names one source"):
        list(both.open_mlcast(dataset_id="x"))


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------


def test_tile_records_match_source(tiny_archive: Path, shared_index: Path) -> None:
    records = list(_tiles(tiny_archive, shared_index))
    assert records and all(isinstance(r, TileSample) for r in records)
    assert all((r.n_time, r.y_tile, r.x_tile) == (12, 64, 64) for r in records)
    src = _source(tiny_archive)
    for r in records[:: max(1, len(records) // 6)]:
        tile = r.to_dataarray()
        ref = _window(src, r)
        assert tile.dims == ("time", "y", "x")
        np.testing.assert_array_equal(tile["time"].values, ref["time"].values)
        np.testing.assert_array_equal(tile["y"].values, ref["y"].values)
        np.testing.assert_array_equal(tile["x"].values, ref["x"].values)
        np.testing.assert_array_equal(tile.values, ref.values)  # NaN == NaN here
        assert str(np.datetime_as_string(ref["time"].values[0], unit="s")) == r.time_start


def test_no_tile_crosses_a_gap_or_missing_time(tiny_archive: Path, shared_index: Path) -> None:
    times = _source(tiny_archive)["time"].values
    assert (np.diff(times) > STEP).sum() >= 2  # the archive does have gaps and missing times
    records = list(_tiles(tiny_archive, shared_index))
    for r in records:
        window = times[r.t_start : r.t_start + r.n_time]
        assert (np.diff(window) == STEP).all(), f"tile {r.tile_id} crosses a gap"


def test_second_tile_loads_the_index(
    tiny_archive: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [(r.tile_id, r.t_start, r.y_start, r.x_start) for r in _tiles(tiny_archive, index_dir)]
    (csv,) = index_dir.glob("*.samples.csv")
    stamp = csv.stat().st_mtime_ns

    import mlcast_pipes.indexes.tiling as prepare

    def no_compute(*args, **kwargs):
        raise AssertionError("the tiling index was recomputed")

    monkeypatch.setattr(prepare, "iter_tile_statistics", no_compute)
    second = [(r.tile_id, r.t_start, r.y_start, r.x_start) for r in _tiles(tiny_archive, index_dir)]
    assert second == first
    assert csv.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_time_window": 0}, "n_time_window"),
        ({"tile_size": (0, 64)}, "tile_size"),
        ({"max_nan_fraction": 2.0}, "max_nan_fraction"),
        ({"stride": (0, 64, 64)}, "stride"),
    ],
)
def test_bad_tiling_params_fail_at_construction(
    tiny_archive: Path, index_dir: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        _tiles(tiny_archive, index_dir, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_size": (512, 512)}, "larger than the domain"),
        ({"n_time_window": 1000}, "larger than the archive"),
    ],
)
def test_params_too_big_for_the_archive(
    tiny_archive: Path, index_dir: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        list(_tiles(tiny_archive, index_dir, **kwargs))


def test_tile_after_tile_is_an_order_error(tiny_archive: Path, index_dir: Path) -> None:
    with pytest.raises(PipelineOrderError, match="open"):
        list(_tiles(tiny_archive, index_dir).tile(n_time_window=12, tile_size=TILE))


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def test_binnorm_balances_bins(tiny_archive: Path, shared_index: Path) -> None:
    pipe = _tiles(tiny_archive, shared_index).binnorm_sample(n_scalar_total_bins=5, n_samples=200)
    (pool,) = pipe.sampling_indexes()
    pool_bins = set(pool.table["bin_id"].tolist())
    records = list(pipe)
    assert len(records) == 200
    counts = Counter(r.bin_id for r in records)
    assert set(counts) == pool_bins  # every non-empty bin is drawn
    assert max(counts.values()) - min(counts.values()) <= 1
    # the bins are far from balanced in the pool itself
    pool_counts = Counter(pool.table["bin_id"].tolist())
    assert max(pool_counts.values()) > 2 * min(pool_counts.values())
    assert all(r.data is not None and r.data.shape == (12, 64, 64) for r in records)


def _epoch_ids(pipe) -> list[tuple[int, int]]:
    return [(r.sample_id, r.t_start) for r in pipe]


def test_sampling_order_reproducible_and_fresh_each_epoch(
    tiny_archive: Path, shared_index: Path
) -> None:
    def make(seed: int):
        return _tiles(tiny_archive, shared_index).binnorm_sample(n_scalar_total_bins=5, seed=seed)

    a, b = make(7), make(7)
    a0, a1 = _epoch_ids(a), _epoch_ids(a)
    b0, b1 = _epoch_ids(b), _epoch_ids(b)
    assert a0 == b0 and a1 == b1  # same (seed, epoch): same order
    assert a0 != a1  # iterating again gives the next epoch
    assert _epoch_ids(make(8)) != a0


@pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")
@pytest.mark.parametrize(
    ("functional", "method"),
    [
        ("ldcast_sample", "ldcast"),
        ("importance_sample", "importance"),
        ("uniform_sample", "uniform"),
    ],
)
def test_other_samplers_exist_and_run(
    tiny_archive: Path, shared_index: Path, functional: str, method: str
) -> None:
    pipe = getattr(_tiles(tiny_archive, shared_index), functional)(n_samples=10)
    records = list(pipe)
    assert len(records) == 10
    assert all(r.sample_id is not None and r.data is not None for r in records)
    generic = _tiles(tiny_archive, shared_index).sample(method, n_samples=10)
    assert _epoch_ids(generic) == [(r.sample_id, r.t_start) for r in records]


def test_unknown_sampler_lists_known_ones(tiny_archive: Path, shared_index: Path) -> None:
    with pytest.raises(ParameterError, match=r"binnorm.*importance.*ldcast.*uniform"):
        _tiles(tiny_archive, shared_index).sample("no_such_sampler")
    with pytest.raises(ParameterError, match="binnorm"):
        mp.Sampler("no_such_sampler")


def test_sampler_without_tiles_is_an_order_error(tiny_archive: Path) -> None:
    opened = IterableWrapper([str(tiny_archive)]).open_mlcast()
    with pytest.raises(PipelineOrderError, match=r"\.tile\(\)"):
        opened.binnorm_sample()
    with pytest.raises(PipelineOrderError, match=r"\.tile\(\)"):
        opened.uniform_sample()


def test_sub_windows_of_samples_keep_time_coordinates(
    tiny_archive: Path, shared_index: Path
) -> None:
    pipe = _tiles(tiny_archive, shared_index).uniform_sample(n_time_sample=8, seed=1)
    src = _source(tiny_archive)
    records = list(pipe)
    assert {r.n_time for r in records} == {8}
    for r in records[:5]:
        tile = r.to_dataarray()
        ref = _window(src, r)
        np.testing.assert_array_equal(tile["time"].values, ref["time"].values)
        np.testing.assert_array_equal(tile.values, ref.values)
        assert r.time_start == str(np.datetime_as_string(ref["time"].values[0], unit="s"))


# --------------------------------------------------------------------------------------------
# Normalize and tensors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "valid"),
    [
        ("ldcast", lambda r: (r >= 0.1) & (r <= 300)),
        ("log1p", lambda r: (r >= 0) & (r <= 300)),
        ("mlcast_dbz", lambda r: (r > 0.04) & (r < 200)),
    ],
)
def test_normalize_denormalize_round_trip(
    tiny_archive: Path, shared_index: Path, method: str, valid
) -> None:
    raw = {r.tile_id: r.load().copy() for r in _tiles(tiny_archive, shared_index)}
    normalised = list(_tiles(tiny_archive, shared_index).normalize(method=method))
    checked = 0
    for rec in normalised:
        assert rec.normalization == method
        assert rec.data.dtype == np.float32 and not np.isnan(rec.data).any()
        back = mp.denormalize(rec.data, method, standard_name="rainfall_flux", units="mm h-1")
        r = raw[rec.tile_id]
        ok = np.isfinite(r) & valid(np.nan_to_num(r, nan=-1.0))
        np.testing.assert_allclose(back[ok], r[ok], rtol=2e-5, atol=1e-6)
        checked += int(ok.sum())
    assert checked > 10_000


def test_normalize_auto_is_ldcast_for_rain_rate(tiny_archive: Path, shared_index: Path) -> None:
    rec = next(iter(_tiles(tiny_archive, shared_index).normalize()))
    assert rec.normalization == "ldcast"


def test_tensors_hold_no_nan_unless_asked(tiny_archive: Path, index_dir: Path) -> None:
    tiles = lambda: _tiles(tiny_archive, index_dir, max_nan_fraction=0.5)  # noqa: E731
    raw = [r.load() for r in tiles()]
    assert any(np.isnan(a).any() for a in raw)  # the tiles do hold NaN
    for t in tiles().normalize().to_tensor():
        assert t.dtype == torch.float32 and not torch.isnan(t).any()
    masked = list(tiles().normalize(mask=True).to_tensor())
    for item, source in zip(masked, raw, strict=True):
        assert not torch.isnan(item["data"]).any()
        assert item["mask"].dtype == torch.bool
        np.testing.assert_array_equal(item["mask"].numpy(), ~np.isnan(source))
    kept = list(tiles().to_tensor(allow_nan=True))
    assert any(torch.isnan(t).any() for t in kept)


def test_to_tensor_without_normalize_names_the_fix(tiny_archive: Path, index_dir: Path) -> None:
    pipe = _tiles(tiny_archive, index_dir, max_nan_fraction=0.5).to_tensor()
    with pytest.raises(ParameterError, match=r"\.normalize\(\).*allow_nan=True"):
        list(pipe)


@pytest.mark.parametrize(
    ("kwargs", "shapes"),
    [
        ({}, [(12, 64, 64)]),
        ({"batch_size": 4}, [(4, 12, 64, 64)]),
        ({"batch_size": 4, "n_input": 4, "n_target": 8}, [(4, 4, 64, 64), (4, 8, 64, 64)]),
        (
            {"batch_size": 4, "n_input": 4, "n_target": 8, "layout": "CTYX"},
            [(4, 1, 4, 64, 64), (4, 1, 8, 64, 64)],
        ),
        ({"batch_size": 4, "layout": "TCYX"}, [(4, 12, 1, 64, 64)]),
        ({"n_input": 2, "n_target": 10, "layout": "CTYX"}, [(1, 2, 64, 64), (1, 10, 64, 64)]),
    ],
)
def test_tensor_shapes(tiny_archive: Path, shared_index: Path, kwargs: dict, shapes) -> None:
    pipe = _tiles(tiny_archive, shared_index).normalize().to_tensor(**kwargs)
    first = next(iter(pipe))
    parts = first if isinstance(first, tuple) else (first,)
    assert [tuple(p.shape) for p in parts] == shapes
    assert all(p.dtype == torch.float32 for p in parts)


def test_last_batch_and_drop_last(tiny_archive: Path, shared_index: Path) -> None:
    n = len(list(_tiles(tiny_archive, shared_index)))
    assert n % 4  # a smaller last batch exists
    batches = list(_tiles(tiny_archive, shared_index).normalize().to_tensor(batch_size=4))
    assert sum(b.shape[0] for b in batches) == n
    dropped = list(
        _tiles(tiny_archive, shared_index).normalize().to_tensor(batch_size=4, drop_last=True)
    )
    assert all(b.shape[0] == 4 for b in dropped) and len(dropped) == n // 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_input": 4, "n_target": 4}, r"4 \+ 4 = 8.*12 steps"),
        ({"n_input": 4}, "both n_input and n_target"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -2}, "batch_size"),
        ({"layout": "XYT"}, "layout"),
    ],
)
def test_bad_tensor_params(
    tiny_archive: Path, shared_index: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        _tiles(tiny_archive, shared_index).normalize().to_tensor(**kwargs)


def test_split_length_follows_n_time_sample(tiny_archive: Path, shared_index: Path) -> None:
    pipe = (
        _tiles(tiny_archive, shared_index)
        .uniform_sample(n_time_sample=8)
        .normalize()
        .to_tensor(batch_size=2, n_input=3, n_target=5)
    )
    inputs, targets = next(iter(pipe))
    assert inputs.shape == (2, 3, 64, 64) and targets.shape == (2, 5, 64, 64)
    with pytest.raises(ParameterError, match="n_time_sample"):
        _tiles(tiny_archive, shared_index).uniform_sample(n_time_sample=8).to_tensor(
            n_input=4, n_target=8
        )


def _dihedral_images(a: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(a, k, axes=(-2, -1)) for k in range(4)]
    return rots + [r[..., ::-1] for r in rots]


def test_augment_reproducible_and_fresh_each_epoch(tiny_archive: Path, shared_index: Path) -> None:
    def make(seed: int):
        # no sampler: the order is the same every epoch, only the augmentation changes
        return (
            _tiles(tiny_archive, shared_index)
            .normalize()
            .to_tensor(batch_size=8, augment=True, seed=seed)
        )

    plain = torch.cat(list(_tiles(tiny_archive, shared_index).normalize().to_tensor(batch_size=8)))
    pipe = make(3)
    e0, e1 = torch.cat(list(pipe)), torch.cat(list(pipe))
    again = torch.cat(list(make(3)))
    assert torch.equal(e0, again)  # same seed, same epoch: same augmentation
    assert not torch.equal(e0, e1)  # next epoch: other augmentations
    assert not torch.equal(e0, torch.cat(list(make(4))))
    assert not torch.equal(e0, plain)
    for aug, ref in zip(e0.numpy(), plain.numpy(), strict=True):
        assert any(np.array_equal(aug, img) for img in _dihedral_images(ref))


def test_metadata_dict(tiny_archive: Path, shared_index: Path) -> None:
    pipe = (
        _tiles(tiny_archive, shared_index)
        .binnorm_sample(n_scalar_total_bins=5, seed=2)
        .normalize()
        .to_tensor(batch_size=4, n_input=4, n_target=8, metadata=True)
    )
    records = list(_tiles(tiny_archive, shared_index).binnorm_sample(n_scalar_total_bins=5, seed=2))
    batch = next(iter(pipe))
    assert set(batch) == {"inputs", "targets", "meta"}
    meta = batch["meta"]
    assert {
        "tile_id",
        "sample_id",
        "t_start",
        "y_start",
        "x_start",
        "time_start",
        "dataset_id",
    } <= set(meta)
    assert meta["tile_id"].tolist() == [r.tile_id for r in records[:4]]
    assert meta["sample_id"].tolist() == [r.sample_id for r in records[:4]]
    assert meta["time_start"] == [r.time_start for r in records[:4]]
    assert len(set(meta["dataset_id"])) == 1


def test_normalize_before_tile_is_an_order_error(tiny_archive: Path) -> None:
    with pytest.raises(PipelineOrderError, match="tile"):
        list(IterableWrapper([str(tiny_archive)]).open_mlcast().normalize())
    with pytest.raises(PipelineOrderError, match="tile"):
        list(IterableWrapper([str(tiny_archive)]).open_mlcast().to_tensor())


def test_sampler_after_normalize_is_an_order_error(tiny_archive: Path, shared_index: Path) -> None:
    with pytest.raises(PipelineOrderError, match=r"\.tile\(\)"):
        _tiles(tiny_archive, shared_index).normalize().binnorm_sample()


def test_normalize_twice_is_an_order_error(tiny_archive: Path, shared_index: Path) -> None:
    with pytest.raises(PipelineOrderError, match="one normalize step"):
        list(_tiles(tiny_archive, shared_index).normalize().normalize())


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _frames_of(records) -> set[int]:
    return {t for r in records for t in range(r.t_start, r.t_start + r.n_time)}


def _check_splits(archive: Path, index: Path, splits: dict, **kw) -> None:
    times = _source(archive)["time"].values
    frames = {}
    for name, split in splits.items():
        records = list(_tiles(archive, index, split=split, **kw))
        assert records, f"split {name} is empty"
        frames[name] = _frames_of(records)
        mask = split.frame_mask(times)
        assert mask[sorted(frames[name])].all(), f"{name} holds frames of another split"
    names = list(frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not frames[a] & frames[b], f"{a} and {b} share frames"


def test_split_by_blocks_gives_disjoint_tiles(tiny_archive: Path, index_dir: Path) -> None:
    times = _source(tiny_archive)["time"].values
    splits = mp.split_by_blocks(times, block="2h", seed=0)
    assert set(splits) == {"train", "validation", "test"}
    _check_splits(tiny_archive, index_dir, splits, n_time_window=6)


def test_split_by_ranges_gives_disjoint_tiles(tiny_archive: Path, index_dir: Path) -> None:
    splits = mp.split_by_ranges(
        train=[("2021-06-01", "2021-06-12T14:00")],
        validation=[("2021-06-12T14:00", "2021-07-01")],
        test=[("2021-07-01", "2021-08-01")],
    )
    _check_splits(tiny_archive, index_dir, splits)


def test_split_with_no_tile_says_so(tiny_archive: Path, index_dir: Path) -> None:
    (split,) = mp.split_by_ranges(empty=[("2021-06-12T10:00", "2021-06-12T10:30")]).values()
    with pytest.raises(ParameterError, match="holds no tile"):
        list(_tiles(tiny_archive, index_dir, split=split))


def test_sampler_respects_the_split(tiny_archive: Path, index_dir: Path) -> None:
    times = _source(tiny_archive)["time"].values
    splits = mp.split_by_blocks(times, block="2h", seed=0)
    drawn = {}
    for name in ("train", "test"):
        pipe = _tiles(tiny_archive, index_dir, n_time_window=6, split=splits[name])
        records = list(pipe.binnorm_sample(n_scalar_total_bins=4, n_samples=30))
        drawn[name] = _frames_of(records)
        assert splits[name].frame_mask(times)[sorted(drawn[name])].all()
    assert not drawn["train"] & drawn["test"]


def test_register_sampler_functional_again_replaces_it() -> None:
    """Re-running a notebook cell that registers a sampler works; a foreign name is refused."""
    import pandas as pd
    from torch.utils.data import IterDataPipe, functional_datapipe

    from mlcast_pipes.sampling import register_sampler

    @register_sampler("rerun_test")
    def first_rows(table: pd.DataFrame, *, seed: int) -> pd.DataFrame:
        rows = table.iloc[:2]
        return pd.DataFrame({"source_tile_id": rows["tile_id"], "scalar_value": 0.0, "bin_id": -1})

    a = mp.register_sampler_functional("rerun_test")
    b = mp.register_sampler_functional("rerun_test")
    assert a.__name__ == b.__name__ == "RerunTestSampleDataPipe"
    tiles = IterableWrapper(["demo"]).open_mlcast().tile()
    assert isinstance(tiles.rerun_test_sample(), b)

    @functional_datapipe("foreign_sample")
    class Foreign(IterDataPipe):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from ()

    with pytest.raises(ParameterError, match="already taken by 'Foreign'"):
        mp.register_sampler_functional("foreign")


def test_empty_split_suggests_a_smaller_time_stride(tiny_archive: Path, index_dir: Path) -> None:
    times = _source(tiny_archive)["time"].values
    # 9 consecutive frames starting one step after a window start of the stride-6 lattice
    start, end = str(times[1])[:19], str(times[9])[:19]
    (split,) = mp.split_by_ranges(short=[(start, end)]).values()
    with pytest.raises(ParameterError, match=r"holds no tile.*stride=\(1, 64, 64\).*windows of 6"):
        list(_tiles(tiny_archive, index_dir, n_time_window=6, split=split))


def test_sampler_refuses_the_tiling_order_options(tiny_archive: Path, index_dir: Path) -> None:
    """A sampler draws and orders its epochs: .tile()'s shuffle options would be ignored."""
    opened = IterableWrapper([str(tiny_archive)]).open_mlcast()
    for options in ({"shuffle_windows": True}, {"seed": 3}):
        tiles = opened.tile(n_time_window=12, tile_size=64, index_dir=index_dir, **options)
        with pytest.raises(ParameterError, match=r"sampler's own seed=\.\.\. \(now 5\)"):
            tiles.uniform_sample(seed=5)
    tiles = opened.tile(n_time_window=12, tile_size=64, index_dir=index_dir)
    assert tiles.uniform_sample(seed=5).seed == 5


def test_mix_groups_names_its_replacement(tiny_archive: Path, index_dir: Path) -> None:
    tiles = mp.OpenXarrayDataset(str(tiny_archive)).tile(n_time_window=4, index_dir=index_dir)
    with pytest.raises(ParameterError, match="shuffle_buffer"):
        tiles.uniform_sample(mix_groups=4)
    sampler = tiles.uniform_sample(shuffle_buffer=8, read_ahead=0)
    assert (sampler.shuffle_buffer, sampler.read_ahead) == (8, 0)
