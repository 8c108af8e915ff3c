"""The benchmark behind ``mlcast-pipes bench``: every path delivers the epoch, figures add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcast_pipes.bench import bench_read
from mlcast_pipes.errors import ParameterError


def test_bench_read_tiny(tiny_archive: Path, tmp_path: Path) -> None:
    """All paths deliver the same epoch; the chain decodes each touched frame once."""
    out = bench_read(
        tiny_archive,
        n_time_window=4,
        tile_size=(32, 32),
        fraction=0.3,
        batch_size=4,
        workers=1,
        naive_samples=4,
        epochs=2,
        index_dir=tmp_path,
    )
    n = out["samples_per_epoch"]
    assert n > 0
    # sampler alone, chain, (c) for its 2 epochs and the memory epoch, (d) for its 2 epochs
    assert out["samples_checked"] == [n] * 7
    assert out["amplification_over_minimum"] == pytest.approx(1.0, abs=0.01)
    assert out["amplification_naive"] > out["amplification_chain"]
    assert out["samples_per_window"] >= 1
    mix = out["windows_per_batch_by_mix_groups"]
    assert set(mix) == {"1", "4", "16"}
    assert 1 <= mix["1"] <= mix["16"] <= out["batch_size"]
    for key in ("a_naive_samples_per_s", "b_chain_samples_per_s", "c_dataloader2_samples_per_s"):
        assert out[key] > 0
    assert out["d_copy_size_mb"] > 0
    assert out["peak_rss_per_worker_mb"] > 0


def test_bench_read_twice_in_one_index_dir(tiny_archive: Path, tmp_path: Path) -> None:
    """A training copy left by a first run does not replace the source in the next one."""
    kw = {"n_time_window": 4, "tile_size": (32, 32), "fraction": 0.3, "batch_size": 4}
    kw |= {"workers": 0, "naive_samples": 2, "epochs": 2, "index_dir": tmp_path}
    first = bench_read(tiny_archive, **kw)
    second = bench_read(tiny_archive, **kw)
    for out in (first, second):
        assert out["amplification_over_minimum"] == pytest.approx(1.0, abs=0.01)
        assert out["peak_rss_per_worker_mb"] == 0  # no worker processes: nothing measured


def test_bench_read_rejects_bad_parameters(tiny_archive: Path) -> None:
    """A fraction outside (0, 1] or a single epoch is refused before any work."""
    with pytest.raises(ParameterError, match="fraction"):
        bench_read(tiny_archive, fraction=0)
    with pytest.raises(ParameterError, match="epochs"):
        bench_read(tiny_archive, epochs=1)
