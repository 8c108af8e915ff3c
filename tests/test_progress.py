"""One progress style (tqdm on stderr) for every long pass; off with progress=False."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlcast_pipes as mp
from mlcast_pipes.bench import run_bench
from mlcast_pipes.cli import main
from mlcast_pipes.demo import ensure_demo

pytestmark = pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")


@pytest.fixture
def show_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars appear at once instead of after two seconds (the passes here are short)."""
    monkeypatch.setattr("mlcast_pipes.progress.DELAY_S", 0.0)


def _bar(err: str, desc: str) -> bool:
    """A finished tqdm bar of ``desc`` is in ``err``."""
    return f"{desc}: 100%" in err and "|" in err


def test_demo_archive_generation_shows_a_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], show_at_once: None
) -> None:
    ensure_demo(tmp_path / "a.zarr", "tiny", 0)
    assert _bar(capsys.readouterr().err, "demo archive tiny")
    ensure_demo(tmp_path / "b.zarr", "tiny", 0, progress=False)
    assert capsys.readouterr().err == ""


def test_index_built_in_a_chain_shows_a_bar(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], show_at_once: None
) -> None:
    def first(index: Path, **kw: object) -> None:
        chain = mp.OpenXarrayDataset(str(tiny_archive)).tile(
            n_time_window=12, tile_size=(64, 64), index_dir=index, **kw
        )
        next(iter(chain))

    first(tmp_path / "a")  # on by default
    err = capsys.readouterr().err
    assert _bar(err, "prepare zz-mlcastpipes-demo-tiny-seed0-v1.0.0.64x64.12") and "frames" in err
    first(tmp_path / "b", progress=False)
    assert capsys.readouterr().err == ""


def test_cli_stats_and_training_copy_show_bars_not_lines(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], show_at_once: None
) -> None:
    args = ["prepare", str(tiny_archive), "--n-time-window", "6", "--tile-size", "64"]
    args += ["--max-nan-fraction", "0.3", "--index-dir", str(tmp_path), "--sampler", "uniform"]
    assert main([*args, "--stats", "--materialize"]) == 0
    captured = capsys.readouterr()
    assert _bar(captured.err, "prepare zz-mlcastpipes-demo-tiny-seed0-v1.0.0.64x64.6.nan0.3")
    assert "statistics " in captured.err and "samples/s]" in captured.err
    assert "training copy " in captured.err
    # stdout holds the summary only: no progress lines
    assert "materialize:" not in captured.out and "samples/s" not in captured.out
    assert main([*args, "--stats", "--materialize", "--recompute", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_bench_prints_a_table_and_a_stage_bar(
    tiny_archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_bench(what="prepare", path=tiny_archive, tile_size=(64, 64), progress=True)
    lines = report.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("prepare ")))
    assert lines[header].split() == ["prepare", "value"]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    rows = {line[: lines[header].index("value")].strip() for line in lines[header + 2 :]}
    assert {"frames", "nansum_s", "prepare_s [12]", "prepare_s [24]", "n_tiles [12]"} <= rows
    err = capsys.readouterr().err
    assert _bar(err, "bench") and "6/6" in err and "stages" in err
