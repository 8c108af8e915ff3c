"""Fault injection: killed prepare passes, damaged chunks, edited indexes, appended archives, and
hostile inputs (ids that try to leave the index folder, YAML that tries to run code).
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
from mlcast_pipes.errors import (
    CatalogError,
    IndexFileError,
    ParameterError,
    ReadError,
    StaleIndexError,
)
from mlcast_pipes.indexes.format import index_paths
from mlcast_pipes.indexes.index_csv import validate_index
from mlcast_pipes.indexes.plan import prepare_index
from mlcast_pipes.indexes.tiling import TileIndex
from mlcast_pipes.reader import close_readers
from mlcast_pipes.tiling import TilingParams

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore::mlcast_pipes.dataset.MLCastSpecWarning"),
]

VAR = "rainfall_rate"
TILE_KW: dict[str, Any] = {"n_time_window": 6, "tile_size": (64, 64), "max_nan_fraction": 0.5}
PARAMS = TilingParams(**TILE_KW)
PACKAGE = Path(mp.__file__).parent


@pytest.fixture(autouse=True)
def _fresh_readers() -> Iterator[None]:
    """Frames cached by one test must not hide the damage done by the next."""
    close_readers()
    yield
    close_readers()


@pytest.fixture(scope="module")
def reference(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> TileIndex:
    """The tiling index of the intact tiny archive."""
    return prepare_index(
        mp.open_mlcast(str(tiny_archive)), PARAMS, tmp_path_factory.mktemp("faults-ref")
    )


@pytest.fixture
def archive(tiny_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny archive, free to damage."""
    return Path(shutil.copytree(tiny_archive, tmp_path / "copy.zarr"))


def _tiles(source: str, index_dir: Path, **kw: Any) -> Any:
    return IterableWrapper([source]).open_mlcast().tile(index_dir=index_dir, **TILE_KW, **kw)


def _chunk(archive: Path, t: int) -> Path:
    return archive / VAR / f"{t}.0.0"  # zarr v2, one chunk per time step


# --------------------------------------------------------------------------------------------
# a prepare pass killed while it writes
# --------------------------------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import mlcast_pipes.indexes.format as index_mod
    import mlcast_pipes.indexes.index_csv as index_csv

    archive, index_dir, marker, where, recompute = sys.argv[1:6]

    def stop_here():
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)  # the test kills us long before

    if where == "rows":  # after the header and the first rows reached the temporary file
        original = index_mod.AtomicTextFile.write
        calls = [0]

        def write(self, text):
            out = original(self, text)
            calls[0] += 1
            if calls[0] == 2:
                self.flush()
                stop_here()
            return out

        index_mod.AtomicTextFile.write = write
    elif where == "sidecar":  # the CSV is in place, its sidecar not yet
        index_csv.write_sidecar = lambda path, meta: stop_here()

    import mlcast_pipes as mp
    from mlcast_pipes.indexes.plan import prepare_index
    from mlcast_pipes.tiling import TilingParams

    params = TilingParams(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.5)
    prepare_index(mp.open_mlcast(archive), params, index_dir, recompute=recompute == "1")
    """
)


def _prepare_and_kill(
    tmp_path: Path, archive: Path, index_dir: Path, where: str, *, recompute: bool = False
) -> None:
    """Run prepare in a subprocess and SIGKILL it at ``where`` (bounded waits throughout)."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    marker = tmp_path / f"marker-{where}"
    cmd = [sys.executable, str(driver), str(archive), str(index_dir), str(marker), where]
    proc = subprocess.Popen(
        [*cmd, "1" if recompute else "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"prepare exited ({proc.returncode}) before the kill point:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("prepare never reached the kill point")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_prepare_killed_while_writing_rows(
    tmp_path: Path, tiny_archive: Path, reference: TileIndex
) -> None:
    index_dir = tmp_path / "index"
    _prepare_and_kill(tmp_path, tiny_archive, index_dir, "rows")
    tid = reference.tiling_id
    csv, side = index_paths(index_dir, tid)
    temps = list(index_dir.glob(f".{csv.name}.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # half-written, hidden
    assert not csv.exists() and not side.exists()
    with pytest.raises(IndexFileError, match="not found"):
        TileIndex.open(index_dir, tid)
    # the rerun computes the whole index and removes the dead writer's temporary file
    index = prepare_index(mp.open_mlcast(str(tiny_archive)), PARAMS, index_dir)
    assert index.meta["csv_sha256"] == reference.meta["csv_sha256"]
    assert not list(index_dir.glob(".*.tmp"))
    steps = index.steps_path.name  # per-step statistics, written with the rows
    assert _files(index_dir) == sorted([csv.name, side.name, steps, f"{tid}.lock"])


def test_prepare_killed_before_its_sidecar(
    tmp_path: Path, tiny_archive: Path, reference: TileIndex
) -> None:
    index_dir = tmp_path / "index"
    _prepare_and_kill(tmp_path, tiny_archive, index_dir, "sidecar")
    csv, side = index_paths(index_dir, reference.tiling_id)
    assert csv.exists() and not side.exists()  # rows complete, but never vouched for
    with pytest.raises(IndexFileError, match="incomplete"):
        validate_index(csv)
    # the datapipe recomputes it instead of trusting it
    tiles = list(_tiles(str(tiny_archive), index_dir))
    assert len(tiles) == reference.n_tiles
    assert validate_index(csv)["csv_sha256"] == reference.meta["csv_sha256"]


def test_recompute_killed_keeps_the_old_index_usable(
    tmp_path: Path, archive: Path, reference: TileIndex
) -> None:
    index_dir = tmp_path / "index"
    da = mp.open_mlcast(str(archive))
    before = prepare_index(da, PARAMS, index_dir)
    _prepare_and_kill(tmp_path, archive, index_dir, "rows", recompute=True)
    assert list(index_dir.glob(".*.tmp"))
    again = prepare_index(da, PARAMS, index_dir)  # the old, complete index, verified
    assert again.meta["csv_sha256"] == before.meta["csv_sha256"] == reference.meta["csv_sha256"]
    assert len(again.table) == reference.n_tiles


# --------------------------------------------------------------------------------------------
# damaged chunks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_chunk_through_the_chain_names_frame_and_path(
    tmp_path: Path, archive: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fingerprint's chunk sample may already see the damaged chunk (StaleIndexError):
    # leave it out, to test what reading the chunk reports
    monkeypatch.setenv("MLCAST_PIPES_FINGERPRINT_CHUNKS", "0")
    index_dir = tmp_path / "index"
    sampled = _tiles(str(archive), index_dir).binnorm_sample(
        n_scalar_total_bins=5, n_samples=8, seed=1, load=False
    )
    first = next(iter(sampled))  # the index is made while the archive is intact
    t = first.t_start + 1
    chunk = _chunk(archive, t)
    if damage == "garbage":
        chunk.write_bytes(b"not a zstd frame at all" * 8)
    else:
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    pipe = (
        _tiles(str(archive), index_dir)
        .binnorm_sample(n_scalar_total_bins=5, n_samples=8, seed=1)
        .normalize()
        .to_tensor(batch_size=4)
    )
    with pytest.raises(ReadError) as info:
        list(pipe)
    msg = str(info.value)
    assert f"frame {t} " in msg and str(archive) in msg and "corrupted" in msg
    # every tile, in time order, meets it too
    with pytest.raises(ReadError, match=f"frame {t} "):
        list(_tiles(str(archive), index_dir).normalize().to_tensor(batch_size=16))


def test_damaged_chunk_while_preparing_fails_at_once_naming_the_archive(
    tmp_path: Path, archive: Path
) -> None:
    _chunk(archive, 9).write_bytes(b"\x00" * 100)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        prepare_index(mp.open_mlcast(str(archive)), PARAMS, tmp_path / "index")
    assert time.monotonic() - start < 30  # a broken chunk is not retried
    msg = str(info.value)
    assert str(archive) in msg and "frames 0.." in msg and "attempts" not in msg
    assert not list((tmp_path / "index").glob("*.samples.csv"))


# --------------------------------------------------------------------------------------------
# damaged or edited index files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def made(tmp_path: Path, tiny_archive: Path, reference: TileIndex) -> tuple[Path, Path]:
    """A fresh copy of the reference index: (index folder, CSV)."""
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    for path in (reference.path, reference.sidecar):
        shutil.copy(path, index_dir / path.name)
    return index_dir, index_dir / reference.path.name


def test_truncated_index_csv(made: tuple[Path, Path], tiny_archive: Path) -> None:
    index_dir, csv = made
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:-3]))
    da = mp.open_mlcast(str(tiny_archive))
    with pytest.raises(IndexFileError, match="truncated or edited") as info:
        prepare_index(da, PARAMS, index_dir)
    assert str(csv) in str(info.value) and "recompute=True" in str(info.value)
    with pytest.raises(IndexFileError, match="truncated or edited"):
        list(_tiles(str(tiny_archive), index_dir))
    fixed = prepare_index(da, PARAMS, index_dir, recompute=True)
    assert len(fixed.table) == len(lines) - 1


def test_hand_edit_of_the_same_size_is_detected(
    made: tuple[Path, Path], tiny_archive: Path
) -> None:
    index_dir, csv = made
    text = csv.read_text()
    header, first, rest = text.split("\n", 2)
    cells = first.split(",")
    t_col = header.split(",").index("t_start")
    old = cells[t_col]
    cells[t_col] = old[:-1] + str((int(old[-1]) + 1) % 10)  # one digit moved: t_start + 1
    edited = "\n".join([header, ",".join(cells), rest])
    assert len(edited) == len(text) and edited != text
    csv.write_text(edited)
    with pytest.raises(IndexFileError, match="sha256"):
        prepare_index(mp.open_mlcast(str(tiny_archive)), PARAMS, index_dir)
    with pytest.raises(IndexFileError, match="sha256"):
        list(_tiles(str(tiny_archive), index_dir))


def test_broken_sidecar(made: tuple[Path, Path], tiny_archive: Path) -> None:
    index_dir, csv = made
    side = index_dir / csv.name.replace(".samples.csv", ".meta.json")
    side.write_text('{"kind": "tiling", "n_rows": 3')  # cut mid-write by hand
    with pytest.raises(IndexFileError, match="not valid JSON"):
        prepare_index(mp.open_mlcast(str(tiny_archive)), PARAMS, index_dir)


# --------------------------------------------------------------------------------------------
# the archive changed after the index was made
# --------------------------------------------------------------------------------------------


def _append_frames(archive: Path, n: int) -> None:
    """Append ``n`` frames (copies of the last ones, later times) the way xarray appends."""
    ds = xr.open_zarr(archive)
    step = np.timedelta64(5, "m")
    new = ds[[VAR]].isel(time=slice(-n, None)).drop_vars(["lat", "lon", "x", "y"])
    new = new.assign_coords(time=new["time"].values + n * step)
    for var in new.variables.values():
        var.encoding = {}
    new.to_zarr(archive, append_dim="time", mode="a", consolidated=True)


def test_a_chain_notices_frames_appended_between_epochs(tmp_path: Path, archive: Path) -> None:
    index_dir = tmp_path / "index"
    tiles = _tiles(str(archive), index_dir)
    stamp = mp.dataset.metadata_stamp(mp.open_mlcast(str(archive)))
    assert stamp is not None and len(list(tiles)) > 0  # epoch 0 keeps the opened archive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _append_frames(archive, 12)
    assert mp.dataset.metadata_stamp(mp.open_mlcast(str(archive))) != stamp
    with pytest.raises(StaleIndexError, match="fingerprint changed"):
        list(tiles)  # epoch 1 opens the archive again and sees the new frames


def test_appended_archive_makes_the_index_stale(tmp_path: Path, archive: Path) -> None:
    index_dir = tmp_path / "index"
    old = mp.open_mlcast(str(archive))
    made = prepare_index(old, PARAMS, index_dir)
    assert next(iter(_tiles(str(archive), index_dir))).load().shape == (6, 64, 64)  # a reader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _append_frames(archive, 12)
    grown = mp.open_mlcast(str(archive))
    assert grown.sizes["time"] == old.sizes["time"] + 12
    old_fp, new_fp = mp.dataset.fingerprint(old), mp.dataset.fingerprint(grown)
    assert old_fp != new_fp
    with pytest.raises(StaleIndexError) as info:
        prepare_index(grown, PARAMS, index_dir)
    msg = str(info.value)
    assert "fingerprint changed" in msg and old_fp in msg and new_fp in msg
    assert "appended" in msg and "recompute" in msg
    with pytest.raises(StaleIndexError, match="fingerprint changed"):
        list(_tiles(str(archive), index_dir))
    # asked to, the chain rebuilds it and sees the new frames
    tiles = list(_tiles(str(archive), index_dir, recompute=True))
    assert len(tiles) > made.n_tiles
    last = max(tiles, key=lambda t: t.t_start)
    assert last.t_start + last.n_time > old.sizes["time"]
    # the reader this process opened before the append reads the new frames
    ref = grown.isel(time=slice(last.t_start, last.t_start + last.n_time))
    ref = ref.isel(
        y=slice(last.y_start, last.y_start + 64), x=slice(last.x_start, last.x_start + 64)
    )
    np.testing.assert_array_equal(last.load(), ref.values)


# --------------------------------------------------------------------------------------------
# hostile input: ids that try to leave the index folder, YAML that tries to run code
# --------------------------------------------------------------------------------------------

HOSTILE_IDS = [
    "../../evil",
    "/tmp/evil",
    "..",
    "a/../../b",
    "..\\..\\evil",
    "~/evil",
    ".hidden/../../x",
    "evil\x00name",
    "-" * 300,
]


def _inside(folder: Path, root: Path) -> list[Path]:
    """Every file under ``root`` that is not inside ``folder``."""
    return [p for p in root.rglob("*") if p.is_file() and folder not in p.parents]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_dataset_id_cannot_leave_the_index_folder(
    tmp_path: Path, tiny_archive: Path, hostile: str
) -> None:
    root = tmp_path / "root"
    index_dir = root / "a" / "b" / "index"
    da = mp.open_mlcast(str(tiny_archive), dataset_id=hostile)
    did = da.attrs["dataset_id"]
    assert "/" not in did and "\\" not in did and "\x00" not in did
    assert not did.startswith((".", "-")) and ".." not in did
    index = prepare_index(da, PARAMS, index_dir)
    assert index.path.parent == index_dir
    assert _inside(index_dir, root) == []
    assert not list(tmp_path.parent.glob("evil*"))


def test_hostile_names_in_catalog_and_archive_stay_inside(tmp_path: Path, archive: Path) -> None:
    # an archive whose own identifier attribute is a path, opened through a catalog entry whose
    # name holds characters that are not safe in file names (an id with "/" would be taken as a
    # path, not looked up); the whole chain (tiling and sampling indexes) writes inside index_dir
    group = zarr.open_group(str(archive), mode="r+")
    group.attrs["mlcast_dataset_identifier"] = "../../../../evil"
    group.attrs["mlcast_dataset_version"] = "/../../x"
    zarr.consolidate_metadata(str(archive))
    assert "/" not in mp.open_mlcast(str(archive)).attrs["dataset_id"]
    root = tmp_path / "root"
    index_dir = root / "index"
    catalog = tmp_path / "catalog.yml"
    catalog.write_text(
        f"sources:\n  'evil name:*?<>|~':\n    driver: zarr\n    args: {{urlpath: '{archive}'}}\n"
    )
    pipe = (
        IterableWrapper(["evil name:*?<>|~"])
        .open_mlcast(catalog=str(catalog))
        .tile(index_dir=index_dir, **TILE_KW)
        .binnorm_sample(n_scalar_total_bins=5, n_samples=4)
        .normalize()
        .to_tensor(batch_size=4)
    )
    assert len(list(pipe)) == 1
    assert sorted(index_dir.glob("*.samples.csv")) and _inside(index_dir, root) == []
    assert not list(tmp_path.parent.glob("evil*"))


_EVIL_YAML = "sources: !!python/object/apply:os.system ['touch {marker}']\n"


def test_catalog_yaml_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    catalog = tmp_path / "catalog.yml"
    catalog.write_text(_EVIL_YAML.format(marker=marker))
    with pytest.raises(CatalogError, match="not valid YAML"):
        mp.catalog.load_catalog(catalog)
    with pytest.raises(CatalogError):
        mp.open_mlcast("anything", catalog=catalog)
    with pytest.raises(CatalogError):
        list(IterableWrapper(["anything"]).open_mlcast(catalog=str(catalog)))
    nested = tmp_path / "root.yml"
    nested.write_text(
        f"sources:\n  precipitation:\n    driver: yaml_file_cat\n    args: {{path: '{catalog}'}}\n"
    )
    with pytest.raises(CatalogError, match="not valid YAML"):
        mp.catalog.load_catalog(nested)
    assert not marker.exists()


def test_pipeline_yaml_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "pipeline.yml"
    config.write_text(f"steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ParameterError, match="not valid YAML"):
        mp.load_pipeline(config)
    assert not marker.exists()


_UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("torch", "load"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
}
_UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            found += [f"import {n}" for n in names if n.split(".")[0] in _UNSAFE_MODULES]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                found.append(f"{func.id}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in _UNSAFE_CALLS:
                    found.append(f"{func.value.id}.{func.attr}()")
                if func.attr == "load" and func.value.id in ("np", "numpy"):
                    found += [
                        "np.load(allow_pickle=True)"
                        for kw in node.keywords
                        if kw.arg == "allow_pickle"
                        and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
                    ]
    return [f"{path.relative_to(PACKAGE.parent)}:{item}" for item in found]


def test_nothing_unpickles_or_evaluates_untrusted_data() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    unsafe = [u for f in files for u in _unsafe_uses(f)]
    assert unsafe == []
