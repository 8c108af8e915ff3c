"""Reliability: dead workers between epochs, orphaned workers, silent servers, edited or
rewritten archives and indexes, read-only index folders, unchecked arguments, untrusted
catalogs and leftovers of killed runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlcast_pipes as mp
from mlcast_pipes.loader import _processes, prepare_indexes


def _pipe(path: Path, index_dir: Path, batch_size: int = 4):  # type: ignore[no-untyped-def]
    return (
        mp.OpenXarrayDataset(str(path))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .sample("uniform", seed=5)
        .normalize()
        .to_tensor(batch_size=batch_size)
    )


# ------------------------------------------------------------------ workers
@pytest.mark.timeout(60)
def test_worker_killed_between_epochs_raises_within_a_second(tiny_archive, index_dir):
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=2)
    try:
        assert sum(1 for _ in loader) > 0
        victim = _processes(loader.dataloader.reading_service)[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=5)
        start = time.monotonic()
        with pytest.raises(mp.WorkerDiedError, match=f"pid {victim.pid}"):
            for _ in loader:
                pass
        assert time.monotonic() - start < 2.0
    finally:
        loader.shutdown()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


_TRAINER = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import mlcast_pipes as mp
from mlcast_pipes.loader import _processes, prepare_indexes
pipe = (mp.OpenXarrayDataset(sys.argv[1])
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=sys.argv[2])
        .sample("uniform", seed=5).normalize().to_tensor(batch_size=4))
loader = mp.make_dataloader(pipe, num_workers=2)
batches = iter(loader)
next(batches)
print(" ".join(str(p.pid) for p in _processes(loader.dataloader.reading_service)), flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_training_process_dies(tiny_archive, index_dir, tmp_path, sig):
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(_TRAINER))
    env = {**os.environ, "PYTHONPATH": str(Path(mp.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_archive), str(index_dir)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "a worker outlived the training process"
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ indexes and archives
def _sampling_csv(index_dir: Path) -> Path:
    (csv,) = [p for p in index_dir.glob("*.samples.csv") if ".uniform." in p.name]
    return csv


def test_hand_edited_sampling_index_is_rejected(tiny_archive, index_dir):
    prepare_indexes(_pipe(tiny_archive, index_dir))
    csv = _sampling_csv(index_dir)
    lines = csv.read_text().splitlines(keepends=True)
    col = lines[0].rstrip("\n").split(",").index("y_start")
    for k, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        if fields[col] == "0":
            fields[col] = "7"  # off the tile grid, same file size
            lines[k] = ",".join(fields)
            break
    size = csv.stat().st_size
    csv.write_text("".join(lines))
    assert csv.stat().st_size == size
    with pytest.raises(mp.IndexFileError, match="sha256"):
        list(_pipe(tiny_archive, index_dir))


def test_missing_times_on_its_own_dimension(tiny_archive, tmp_path):
    import xarray as xr

    ds = xr.open_zarr(tiny_archive).isel(time=slice(0, 40))
    ds = ds.swap_dims({ds["missing_times"].dims[0]: "missing_times"})
    for var in ds.variables.values():
        var.encoding.pop("chunks", None)
        var.encoding.pop("preferred_chunks", None)
    ds.to_zarr(tmp_path / "own_dim.zarr", mode="w", zarr_format=2, consolidated=True)
    da = mp.open_mlcast(tmp_path / "own_dim.zarr")
    assert mp.dataset.missing_times(da).size == ds.sizes["missing_times"] > 0


_READER = """
import sys, warnings
warnings.filterwarnings("ignore")
import mlcast_pipes as mp
pipe = (mp.OpenXarrayDataset(sys.argv[1])
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=sys.argv[2])
        .sample("uniform", seed=5).normalize().to_tensor(batch_size=4))
try:
    print(sum(1 for _ in pipe))
except mp.IndexFileError as exc:
    print("IndexFileError", exc)
"""


def _run_read_only(folder: Path, script: Path, *args: str) -> str:
    """Run ``script`` with ``folder`` read-only (a read-only bind mount when run as root)."""
    env = {**os.environ, "PYTHONPATH": str(Path(mp.__file__).parents[1])}
    cmd = [sys.executable, str(script), *args]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        finally:
            folder.chmod(0o755)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root without user namespaces: no read-only folder to test")
    quoted = " ".join(f"'{c}'" for c in cmd)
    shell = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && {quoted}"
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(60)
def test_index_folder_read_only(tiny_archive, index_dir, tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(_READER))
    n_batches = sum(1 for _ in _pipe(tiny_archive, index_dir))
    assert list(index_dir.glob("*.lock"))
    out = _run_read_only(index_dir, script, str(tiny_archive), str(index_dir))
    assert out.strip() == str(n_batches)  # a complete index loads read-only
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _run_read_only(empty, script, str(tiny_archive), str(empty))
    assert out.startswith("IndexFileError") and "not writable" in out


def _copy(archive: Path, folder: Path) -> Path:
    import shutil

    return Path(shutil.copytree(archive, folder / archive.name))


def test_rewritten_pixels_make_the_index_stale(tiny_archive, tmp_path, monkeypatch):
    import numpy as np
    import zarr

    archive = _copy(tiny_archive, tmp_path)
    index_dir = tmp_path / "index"
    assert sum(1 for _ in _pipe(archive, index_dir)) > 0
    arr = zarr.open_array(str(archive / "rainfall_rate"), mode="r+")
    arr[:] = np.nan_to_num(arr[:]) * 10 + 1  # same coordinates, other pixels
    with pytest.raises(mp.StaleIndexError, match="fingerprint changed"):
        list(_pipe(archive, index_dir))
    monkeypatch.setenv("MLCAST_PIPES_FINGERPRINT_CHUNKS", "0")  # the option to skip it
    with pytest.raises(mp.StaleIndexError, match="fingerprint changed"):
        list(_pipe(archive, index_dir))  # the index recorded the chunk sample
    assert sum(1 for _ in _pipe(archive, tmp_path / "metadata-only")) > 0


# ------------------------------------------------------------------ arguments
def test_batch_size_and_start_batch_are_checked(tiny_archive, index_dir):
    tiles = mp.OpenXarrayDataset(str(tiny_archive)).tile(
        n_time_window=6, tile_size=(64, 64), index_dir=index_dir
    )
    for bad in (2.5, "4", True, 0):
        with pytest.raises(mp.ParameterError, match="batch_size"):
            tiles.normalize().to_tensor(batch_size=bad)
    with pytest.raises(mp.ParameterError, match="start_batch must be >= 0"):
        mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=0, start_batch=-1)


def test_tile_size_as_text_is_named_whole(tiny_archive, index_dir):
    with pytest.raises(mp.ParameterError, match="tile_size='32'"):
        mp.OpenXarrayDataset(str(tiny_archive)).tile(tile_size="32", index_dir=index_dir)


def test_unknown_and_list_valued_step_arguments(tiny_archive, index_dir):
    with pytest.raises(mp.ParameterError, match=r"unknown tiling argument.*'tile_sise'"):
        mp.compose([mp.OpenXarrayDataset(str(tiny_archive)), mp.TilingSampler(tile_sise=64)])
    steps = [
        {"OpenXarrayDataset": {"url": str(tiny_archive)}},
        {"TilingSampler": {"n_time_window": 6, "tile_size": [64, 64], "index_dir": str(index_dir)}},
        {"NormalizeForTraining": {}},
        {"ToTorchTensor": {"batch_size": [4]}},
    ]
    with pytest.raises(mp.ParameterError, match="batch_size"):
        mp.load_pipeline({"steps": steps})


def _tiles_with_an_infinite_pixel(tiny_archive, tmp_path):
    """.tile() over a copy of the tiny archive whose pixel (10, 10) is +inf in every frame."""
    import numpy as np
    import zarr

    archive = _copy(tiny_archive, tmp_path)
    arr = zarr.open_array(str(archive / "rainfall_rate"), mode="r+")
    data = np.nan_to_num(arr[:])
    data[:, 10, 10] = np.inf
    arr[:] = data
    return mp.OpenXarrayDataset(str(archive)).tile(
        n_time_window=6, tile_size=(64, 64), index_dir=tmp_path / "index"
    )


def test_infinite_values_never_reach_a_tensor_or_vanish_from_a_pool(tiny_archive, tmp_path):
    import numpy as np
    import pandas as pd

    from mlcast_pipes.sampling import run_sampler

    tiles = _tiles_with_an_infinite_pixel(tiny_archive, tmp_path)
    with pytest.raises(mp.ParameterError, match="infinite values"):
        list(tiles.to_tensor(batch_size=4))
    table = pd.DataFrame({"tile_id": range(4), "mean": [0.0, 1.0, np.inf, 2.0]})
    with pytest.raises(mp.DatasetError, match=r"infinite mean.*tile ids 2"):
        run_sampler("binnorm", table, seed=0, aggregation="mean", n_scalar_total_bins=2)


def test_infinite_values_are_not_passed_off_as_the_clip_value(tiny_archive, tmp_path):
    import numpy as np

    from mlcast_pipes.transforms import make_normalizer

    tiles = _tiles_with_an_infinite_pixel(tiny_archive, tmp_path)
    table = tiles.plan.table(next(iter(tiles.source_datapipe))).rows
    corner = table[(table["y_start"] == 0) & (table["x_start"] == 0)]
    assert np.isinf(corner["max"]).all()  # not the clip value: the pools refuse it
    with pytest.raises(mp.DatasetError, match="infinite"):
        tiles.binnorm_sample(aggregation="max").sampling_indexes()
    norm = make_normalizer("ldcast", standard_name="rainfall_flux", units="mm h-1")
    with pytest.raises(mp.DatasetError, match=r"1 infinite pixel.*mask them to NaN"):
        norm(np.array([[1.0, np.inf]], dtype=np.float32))


def test_full_disk_is_an_index_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    from mlcast_pipes.indexes import index_csv as index

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index.os, "fsync", full)
    with pytest.raises(mp.IndexFileError, match=r"No space left.*free space"):
        index.write_index(tmp_path / "a.samples.csv", [pd.DataFrame({"x": [1]})], {}, columns=["x"])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ untrusted catalogs
def test_catalog_reads_only_environment_variables_the_user_names(tmp_path, monkeypatch):
    from mlcast_pipes.catalog import load_catalog

    monkeypatch.setenv("MY_TOKEN", "s3cr3t")
    monkeypatch.delenv("MLCAST_PIPES_CATALOG_ENV", raising=False)
    catalog = tmp_path / "c.yml"
    catalog.write_text(
        "sources:\n  e:\n    driver: zarr\n"
        '    args: {urlpath: "http://127.0.0.1:9/{{ env(MY_TOKEN) }}/e.zarr"}\n'
    )
    with pytest.raises(mp.CatalogError, match="MLCAST_PIPES_CATALOG_ENV") as info:
        load_catalog(catalog)
    assert "s3cr3t" not in str(info.value)
    monkeypatch.setenv("MLCAST_PIPES_CATALOG_ENV", "MY_TOKEN")
    assert "s3cr3t" in load_catalog(catalog)["e"].urlpath


def test_demo_preset_cannot_leave_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("MLCAST_PIPES_CACHE", str(cache))
    catalog = tmp_path / "c.yml"
    catalog.write_text(
        'sources:\n  evil:\n    driver: mlcast_demo\n    args: {preset: "../../..", seed: 0}\n'
    )
    with pytest.raises(mp.CatalogError, match="preset"):
        mp.open_mlcast("evil", catalog=catalog)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.yml"]  # nothing created


# ------------------------------------------------------------------ damaged data, leftovers
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _uniform(path: Path, index_dir: Path, **kw):  # type: ignore[no-untyped-def]
    return (
        mp.OpenXarrayDataset(str(path))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .uniform_sample(seed=1, **kw)
    )


def test_training_copy_chunk_deleted_raises_and_killed_copies_are_cleaned(tiny_archive, index_dir):
    from mlcast_pipes.indexes.training_copy import TrainingCopy, copy_path, materialize

    source = _uniform(tiny_archive, index_dir, materialized=False)
    sampling = source.sampling_indexes()[0]
    table = source.plan.table(next(iter(source.source_datapipe)))
    target = copy_path(index_dir, sampling.sampling_id)
    killed = target.with_name(f"{target.name}.tmp-{_dead_pid()}-0123abcd")
    (killed / "samples").mkdir(parents=True)  # as a killed --materialize leaves it
    materialize(sampling.table, sampling.meta, table.info, target)
    assert not killed.exists()
    copy = TrainingCopy(target, sampling.meta["csv_sha256"])
    assert copy.read(0).shape == (6, 64, 64)
    next(p for p in (target / "samples").iterdir() if p.name.startswith("3.")).unlink()
    with pytest.raises(mp.ReadError, match=r"sample 3 .*missing"):
        TrainingCopy(target).read(3)
    with pytest.raises(mp.ReadError, match="sample 3 "):
        list(_uniform(tiny_archive, index_dir, materialized=True))


def test_killed_stats_writes_leave_nothing_behind(tmp_path):
    import socket

    from mlcast_pipes.indexes.stats import write_stats_csv

    host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())[:40]
    left = tmp_path / f".a.stats.csv.{host}.{_dead_pid()}.ab12.tmp"
    left.write_text("variable,mean\n")
    write_stats_csv(tmp_path / "b.stats.csv", {"rainfall_rate": (0.5, 1.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.stats.csv"]


def test_chunk_deleted_after_indexing_raises_or_warns_by_option(
    tiny_archive, tmp_path, monkeypatch
):
    import json

    from mlcast_pipes.reader import close_readers

    archive = _copy(tiny_archive, tmp_path)
    index_dir = tmp_path / "index"
    monkeypatch.setenv("MLCAST_PIPES_FINGERPRINT_CHUNKS", "0")  # let the read see it
    tiles = list(_pipe(archive, index_dir, batch_size=1000))
    assert tiles
    (side,) = [p for p in index_dir.glob("*.meta.json") if ".uniform." not in p.name]
    assert json.loads(side.read_text())["absent_chunks"] == []
    first = next(
        iter(
            mp.OpenXarrayDataset(str(archive)).tile(
                n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir
            )
        )
    )
    (archive / "rainfall_rate" / f"{first.t_start + 2}.0.0").unlink()
    close_readers()
    with pytest.raises(mp.ReadError, match=rf"frame {first.t_start + 2} .*missing.*Restore"):
        list(_pipe(archive, index_dir))
    monkeypatch.setenv("MLCAST_PIPES_MISSING_CHUNKS", "warn")
    with pytest.warns(RuntimeWarning, match="missing from the store"):
        assert sum(1 for _ in _pipe(archive, index_dir)) > 0
