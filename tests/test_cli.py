"""The ``mlcast-pipes`` command: prepare, inspect, demo (called through ``cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes  # noqa: F401  (registers the functionals)
from mlcast_pipes.cli import main
from mlcast_pipes.indexes.stats import read_stats_csv

# The tiny archive leaves some of the default 10 BinNorm bins empty; the warning says so.
pytestmark = pytest.mark.filterwarnings("ignore::mlcast_pipes.sampling.SamplingWarning")

PREPARE = ["--n-time-window", "12", "--tile-size", "64", "--no-progress"]


def _prepare(archive: Path, index: Path, *extra: str) -> int:
    return main(["prepare", str(archive), *PREPARE, "--index-dir", str(index), *extra])


def test_prepare_and_tile_write_the_same_index(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_cli, by_pipe = tmp_path / "cli", tmp_path / "pipe"
    assert _prepare(tiny_archive, by_cli) == 0
    out = capsys.readouterr().out
    assert "tiles kept" in out and "tiling index:" in out
    records = list(
        IterableWrapper([str(tiny_archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=by_pipe)
    )
    (cli_csv,) = by_cli.glob("*.samples.csv")
    (pipe_csv,) = by_pipe.glob("*.samples.csv")
    assert cli_csv.name == pipe_csv.name
    assert cli_csv.read_bytes() == pipe_csv.read_bytes()
    assert len(pd.read_csv(cli_csv)) == len(records)
    meta_cli = json.loads(
        cli_csv.with_name(cli_csv.name.replace(".samples.csv", ".meta.json")).read_text()
    )
    meta_pipe = json.loads(
        pipe_csv.with_name(pipe_csv.name.replace(".samples.csv", ".meta.json")).read_text()
    )
    for key in ("tiling_id", "params", "dataset_fingerprint", "n_rows", "csv_sha256", "rejected"):
        assert meta_cli[key] == meta_pipe[key]
    # a datapipe over the folder the CLI wrote loads it instead of recomputing it
    stamp = cli_csv.stat().st_mtime_ns
    again = list(
        IterableWrapper([str(tiny_archive)])
        .open_mlcast()
        .tile(n_time_window=12, tile_size=(64, 64), index_dir=by_cli)
    )
    assert len(again) == len(records) and cli_csv.stat().st_mtime_ns == stamp


def test_prepare_with_sampler_and_inspect(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "idx"
    rc = _prepare(tiny_archive, index, "--sampler", "binnorm", "--param", "n_scalar_total_bins=5")
    assert rc == 0
    assert "sampling index:" in capsys.readouterr().out
    (sampling_csv,) = index.glob("*.binnorm.*.samples.csv")
    figures = tmp_path / "figures"
    assert main(["inspect", str(sampling_csv), "--out", str(figures)]) == 0
    report = capsys.readouterr().out
    assert "method binnorm" in report and "n_drawn" in report and "bin_id" in report
    pngs = sorted(figures.glob("*.png"))
    assert {p.name.split(".")[-2] for p in pngs} == {
        "scalar_histogram",
        "sample_density",
        "samples_over_time",
    }
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
        assert str(png) in report
    # a tiling index can be inspected too
    (tiling_csv,) = [p for p in index.glob("*.samples.csv") if ".binnorm." not in p.name]
    assert main(["inspect", str(tiling_csv), "--out", str(figures / "tiling")]) == 0
    assert "tiling index:" in capsys.readouterr().out


def test_prepare_stats(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "idx"
    assert _prepare(tiny_archive, index, "--sampler", "binnorm", "--stats") == 0
    out = capsys.readouterr().out
    (stats_csv,) = index.glob("*.binnorm.*.stats.csv")
    assert f"statistics: {stats_csv}" in out
    assert stats_csv.read_text().splitlines()[0] == "variable,mean,std"
    ((variable, (mean, std)),) = read_stats_csv(stats_csv).items()
    assert variable == "rainfall_rate" and mean > 0 and std > 0


def test_stats_needs_a_sampler(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _prepare(tiny_archive, tmp_path, "--stats") == 2
    assert "--sampler" in capsys.readouterr().err


def test_prepare_reports_errors(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["prepare", str(tiny_archive), "--tile-size", "512", "--index-dir", str(tmp_path)])
    assert rc == 2
    assert "larger than the domain" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing.zarr"), "--index-dir", str(tmp_path)]) == 2
    assert main(["prepare", str(tiny_archive), "--tile-size", "1", "2", "3"]) == 2


def test_inspect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "none.samples.csv")]) == 2
    assert "no index file" in capsys.readouterr().err


def test_demo_tiny_prints_shapes_and_writes_a_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "demo",
            "--preset",
            "tiny",
            "--workers",
            "0",
            "--batches",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--index-dir",
            str(tmp_path / "idx"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "inputs: (4, 4, 64, 64) torch.float32" in text
    assert "targets: (4, 8, 64, 64) torch.float32" in text
    assert "8 samples" in text
    figure = out / "demo_sample.png"
    assert figure.is_file() and figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_demo_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "demo",
            "--preset",
            "tiny",
            "--workers",
            "2",
            "--batches",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path),
            "--index-dir",
            str(tmp_path / "idx"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2 worker processes" in text and "inputs: (4, 4, 64, 64)" in text
    assert (tmp_path / "demo_sample.png").is_file()


def test_demo_summary_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--preset", "tiny", "--summary-only"]) == 0
    text = capsys.readouterr().out
    assert "130 x 256 x 256" in text and "batch:" not in text


def test_bench_read_options(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench --what read`` takes the sampled share, workers and epochs; --json has the figures."""
    out_json = tmp_path / "bench.json"
    args = ["bench", "--what", "read", "--path", str(tiny_archive), "--json", str(out_json)]
    args += ["--tile-size", "32", "--n-time-window", "4"]
    assert main([*args, "--fraction", "0.5", "--workers", "0", "--epochs", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["c_workers", "0"] in rows  # bench prints a table
    read = json.loads(out_json.read_text())["read"]
    assert read["fraction_sampled"] == 0.5 and read["epochs"] == 2
    assert len(set(read["samples_checked"])) == 1


def test_demo_config_describes_the_configured_archive(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pipe.yaml"
    config.write_text(
        "steps:\n"
        f"  - OpenXarrayDataset: {{url: '{tiny_archive}'}}\n"
        "  - TilingSampler: {n_time_window: 4, tile_size: [64, 64]}\n"
    )
    assert main(["demo", "--config", str(config), "--summary-only"]) == 0
    text = capsys.readouterr().out
    assert f"configured archive: {tiny_archive.resolve()}" in text
    assert "demo archive:" not in text
    assert "(demo preset tiny, seed 0)" in text and "130 x 256 x 256" in text


def test_help_shows_every_default_and_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    from mlcast_pipes.sampling import available_samplers

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 12)", "(default: [128])", "(default: 0.05)", "(default: 0)"):
        assert default in text
    assert "{" + ",".join(available_samplers()) + "}" in text
    assert "None: the tile's n_time_window" in text and "None: by CF standard_name" in text
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.1)" in text and "(default: itdpc)" in text and "tiny" in text


def test_a_stale_index_asks_for_recompute(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "idx"
    assert _prepare(tiny_archive, index) == 0
    (side,) = index.glob("*.meta.json")
    meta = json.loads(side.read_text())
    meta["dataset_fingerprint"] = "0" * 16  # as if the archive had changed since
    side.write_text(json.dumps(meta))
    capsys.readouterr()
    assert _prepare(tiny_archive, index) == 2
    err = capsys.readouterr().err
    assert "is stale" in err and "rerun this command with --recompute" in err
    assert "rerun `mlcast-pipes prepare`" not in err
    assert _prepare(tiny_archive, index, "--recompute") == 0


def test_prepare_on_dask_distributed_writes_the_same_bytes(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed = pytest.importorskip("distributed")
    assert _prepare(tiny_archive, tmp_path / "threads") == 0
    (reference,) = (tmp_path / "threads").glob("*.samples.csv")
    assert _prepare(tiny_archive, tmp_path / "local", "--n-workers", "2") == 0
    assert "dask cluster:" in capsys.readouterr().out
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        address = cluster.scheduler_address
        assert _prepare(tiny_archive, tmp_path / "remote", "--scheduler", address) == 0
    for folder in ("local", "remote"):
        (csv,) = (tmp_path / folder).glob("*.samples.csv")
        assert csv.name == reference.name and csv.read_bytes() == reference.read_bytes()


def test_prepare_with_the_community_sampler(
    tiny_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "idx"
    assert _prepare(tiny_archive, index) == 0
    (tiling,) = index.glob("*.samples.csv")
    tiles = pd.read_csv(tiling).iloc[[1, 4, 6]]
    cubes = tmp_path / "cubes.csv"
    pd.DataFrame({"t": tiles["t_start"], "x": tiles["y_start"], "y": tiles["x_start"]}).to_csv(
        cubes, index=False
    )
    assert _prepare(tiny_archive, index, "--sampler", "community", "--param", f"csv={cubes}") == 0
    assert "(3 samples in the pool)" in capsys.readouterr().out
    (sampling,) = index.glob("*.community.*.samples.csv")
    assert sorted(pd.read_csv(sampling)["source_tile_id"]) == sorted(tiles["tile_id"])


def test_the_help_lists_the_registry_s_built_in_samplers() -> None:
    import subprocess
    import sys

    from mlcast_pipes.cli import _BUILTIN_SAMPLERS

    code = "from mlcast_pipes.sampling import available_samplers; print(available_samplers())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(list(_BUILTIN_SAMPLERS))
