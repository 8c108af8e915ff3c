import numpy as np
import pytest
import zarr

import mlcast_pipes as mp
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.indexes.training_copy import ARRAY, TrainingCopy, copy_path, materialize


def _sampler(path, index_dir, **kw):
    return (
        mp.OpenXarrayDataset(str(path))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .uniform_sample(seed=1, **kw)
    )


def test_training_copy_gives_the_same_samples(tiny_archive, index_dir):
    source = _sampler(tiny_archive, index_dir, materialized=False)
    sampling = source.sampling_indexes()[0]
    table = source.plan.table(next(iter(source.source_datapipe)))
    target = copy_path(index_dir, sampling.sampling_id)
    with pytest.raises(ParameterError, match="--materialize"):
        next(iter(_sampler(tiny_archive, index_dir, materialized=True)))
    materialize(sampling.table, sampling.meta, table.info, target)
    assert TrainingCopy(target, sampling.meta["csv_sha256"]).exists()
    assert not TrainingCopy(target, "another-index").exists()
    assert not list(index_dir.glob("*.tmp-*"))  # no temp store left behind
    expected = {s.sample_id: s.data for s in source}
    copied = {s.sample_id: s.data for s in _sampler(tiny_archive, index_dir, materialized=True)}
    auto = [s.sample_id for s in _sampler(tiny_archive, index_dir)]
    assert sorted(copied) == sorted(expected) == sorted(auto)
    for key, data in expected.items():
        np.testing.assert_array_equal(copied[key], data)


def test_cli_prepare_materialize(tiny_archive, index_dir, capsys):
    from mlcast_pipes.cli import main

    args = ["prepare", str(tiny_archive), "--n-time-window", "6", "--tile-size", "64"]
    args += ["--max-nan-fraction", "0.3", "--index-dir", str(index_dir), "--no-progress"]
    assert main([*args, "--materialize"]) == 2  # needs a sampler
    assert "--sampler" in capsys.readouterr().err
    assert main([*args, "--sampler", "uniform", "--seed", "1", "--materialize"]) == 0
    out = capsys.readouterr().out
    assert "training copy:" in out
    copies = list(index_dir.glob("*.zarr"))
    assert len(copies) == 1
    pipe = _sampler(tiny_archive, index_dir, materialized=True)
    assert len(list(pipe)) > 0


def test_read_many_matches_read_and_names_a_corrupted_sample(tiny_archive, index_dir):
    source = _sampler(tiny_archive, index_dir, materialized=False)
    sampling = source.sampling_indexes()[0]
    table = source.plan.table(next(iter(source.source_datapipe)))
    target = materialize(
        sampling.table, sampling.meta, table.info, copy_path(index_dir, sampling.sampling_id)
    )
    copy = TrainingCopy(target)
    rows = [3, 0, 2, 2, 1]
    many = copy.read_many(rows)
    assert len(many) == len(rows)
    for row, data in zip(rows, many, strict=True):
        assert data.dtype == np.float32 and data.flags.writeable
        np.testing.assert_array_equal(data, zarr.open_group(str(target))[ARRAY][row])
        np.testing.assert_array_equal(data, copy.read(row))
    assert many[2] is not many[3]  # the same row asked twice: two arrays
    chunk = next(p for p in (target / "samples").iterdir() if p.name.startswith("1."))
    chunk.write_bytes(b"not zstd")
    with pytest.raises(mp.ReadError, match=r"sample 1 from the training copy"):
        TrainingCopy(target).read_many([0, 1, 2])
