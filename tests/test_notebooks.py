"""Run the notebooks end to end with nbclient, in a scratch folder, and check what they produce."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 120  # per cell; each notebook takes ~10 s in all


def _text(nb: nbformat.NotebookNode) -> str:
    """All stream and plain-text outputs of an executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def _n_images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def _execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Execute ``notebooks/{name}`` in the python3 kernel; its temp folders go under tmp_path."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:  # stored clean: no outputs, no execution counts
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear outputs"
    cwd = tmp_path / "cwd"
    scratch = tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    env = dict(os.environ)  # MLCAST_PIPES_CACHE / MLCAST_PIPES_INDEX_DIR from conftest
    env["TMPDIR"] = str(scratch)  # tempfile.mkdtemp() in the notebooks lands in tmp_path
    client = NotebookClient(
        nb,
        kernel_name="python3",  # the kernel spec of this environment (runs sys.executable)
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    assert not list(cwd.iterdir()), "the notebook should write to its temp folder only"
    return nb


@pytest.fixture
def cache_env() -> None:
    for key in ("MLCAST_PIPES_CACHE", "MLCAST_PIPES_INDEX_DIR"):
        assert os.environ.get(key), f"conftest should set ${key} for the kernel to inherit"


@pytest.mark.usefixtures("cache_env")
def test_quickstart_runs(tmp_path: Path) -> None:
    nb = _execute("quickstart.ipynb", tmp_path)
    (work,) = (tmp_path / "tmp").glob("mlcast-quickstart-*")
    figures = {p.name for p in (work / "figures").glob("*.png")}
    assert figures == {
        "frame_and_coverage.png",
        "scalar_histogram_binnorm.png",
        "scalar_histogram_ldcast.png",
        "batch_sample.png",
    }
    assert all((work / "figures" / f).stat().st_size > 10_000 for f in figures)
    assert list((work / "index").glob("*.samples.csv")), "tiling and sampling indexes"
    text = _text(nb)
    assert "tiles kept of" in text  # the tiling summary
    assert "inputs  (8, 4, 64, 64)" in text and "targets (8, 8, 64, 64)" in text
    assert text.count("48 samples in") == 2 and "exactly the epoch drawn" in text
    assert _n_images(nb) >= 4


@pytest.mark.usefixtures("cache_env")
def test_your_own_archive_runs(tmp_path: Path) -> None:
    nb = _execute("your_own_archive.ipynb", tmp_path)
    (work,) = (tmp_path / "tmp").glob("mlcast-own-archive-*")
    assert (work / "catalog" / "catalog.yml").is_file()
    assert (work / "catalog" / "precipitation" / "catalog.yml").is_file()
    index = work / "index"
    # named after the archive's own id (its identifier), as when it is opened by path
    did = "zz-mlcastpipes-demo-tiny-seed0-v1.0.0"
    assert (index / f"{did}.64x64.12.samples.csv").is_file()
    (sampling,) = index.glob(f"{did}.64x64.12.12.binnorm.*.samples.csv")
    stem = sampling.name.removesuffix(".samples.csv")
    for kind in ("scalar_histogram", "sample_density", "samples_over_time"):
        assert (work / "figures" / f"{stem}.{kind}.png").stat().st_size > 10_000
    assert (work / "figures" / f"{did}.64x64.12.sample_density.png").is_file()
    text = _text(nb)
    assert "using precipitation.my_radar" in text  # the id resolved through the catalog
    assert "0 warning(s) while opening" in text
    assert "global attributes ['license'] are missing" in text  # the illustrated deviations
    assert f"sampling index: {sampling}" in text  # built by `mlcast-pipes prepare`
    assert "inputs (4, 4, 64, 64), targets (4, 8, 64, 64)" in text
    assert _n_images(nb) >= 4
