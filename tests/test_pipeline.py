"""The list form (``compose``), YAML pipelines and the order checks of the steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchdata.datapipes.iter import IterableWrapper

import mlcast_pipes as mp
from mlcast_pipes.errors import ParameterError, PipelineOrderError

TILE = (64, 64)


@pytest.fixture(scope="module")
def shared_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline-index")


@pytest.fixture(scope="module")
def catalog(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog file of our own with one entry: the tiny archive."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.yml"
    path.write_text(
        yaml.safe_dump(
            {"sources": {"tiny": {"driver": "zarr", "args": {"urlpath": str(tiny_archive)}}}}
        )
    )
    return path


def _functional(archive: Path | str, index: Path, seed: int, **open_kw):
    return (
        IterableWrapper([str(archive)])
        .open_mlcast(**open_kw)
        .tile(n_time_window=12, tile_size=TILE, index_dir=index)
        .binnorm_sample(aggregation="sum", n_scalar_total_bins=5, seed=seed)
        .normalize()
        .to_tensor(batch_size=4, n_input=4, n_target=8, seed=seed, augment=True)
    )


def _steps(source, index: Path, seed: int) -> list:
    return [
        source,
        mp.TilingSampler(n_time_window=12, tile_size=TILE, index_dir=index),
        mp.BinNormSampler(aggregation="sum", n_scalar_total_bins=5, seed=seed),
        mp.NormalizeForTraining(),
        mp.ToTorchTensor(batch_size=4, n_input=4, n_target=8, seed=seed, augment=True),
    ]


def _epochs(pipe, n: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(pipe) for _ in range(n)]


def _assert_same(a, b) -> None:
    assert len(a) == len(b) and len(a) > 0
    for epoch_a, epoch_b in zip(a, b, strict=True):
        assert len(epoch_a) == len(epoch_b)
        for (ia, ta), (ib, tb) in zip(epoch_a, epoch_b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(ta, tb)


@pytest.mark.parametrize("source_kind", ["catalog", "xarray"])
def test_list_form_gives_identical_batches(
    tiny_archive: Path, shared_index: Path, catalog: Path, source_kind: str
) -> None:
    if source_kind == "catalog":
        source = mp.MLCastCatalogDataset("tiny", catalog=catalog)
        functional = _functional("tiny", shared_index, seed=5, catalog=catalog)
    else:
        source = mp.OpenXarrayDataset(str(tiny_archive))
        functional = _functional(tiny_archive, shared_index, seed=5)
    composed = mp.compose(_steps(source, shared_index, seed=5))
    assert type(composed).__name__ == "ToTensorDataPipe"
    reference = _epochs(functional)
    _assert_same(_epochs(composed), reference)
    # a different seed gives other batches
    other = _epochs(_functional(tiny_archive, shared_index, seed=6), 1)[0]
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(reference[0], other, strict=False))


def test_seed_example_without_sampler(catalog: Path, shared_index: Path) -> None:
    # the design discussion's second example: no sampling step, ToTorchTensor() without batching
    pipe = mp.compose(
        [
            mp.MLCastCatalogDataset("tiny", catalog=catalog),
            mp.TilingSampler(n_time_window=12, tile_size=TILE, index_dir=shared_index),
            mp.NormalizeForTraining(),
            mp.ToTorchTensor(),
        ]
    )
    items = list(pipe)
    assert items and all(t.shape == (12, 64, 64) for t in items)
    assert all(t.dtype == torch.float32 and not torch.isnan(t).any() for t in items)


def test_tiles_straight_to_tensors(tiny_archive: Path, shared_index: Path) -> None:
    pipe = mp.compose(
        [
            mp.OpenXarrayDataset(str(tiny_archive)),
            mp.TilingSampler(n_time_window=12, tile_size=TILE, index_dir=shared_index),
            mp.ToTorchTensor(batch_size=2, allow_nan=True),
        ]
    )
    assert next(iter(pipe)).shape == (2, 12, 64, 64)


def test_generic_sampler_step(tiny_archive: Path, shared_index: Path) -> None:
    pipe = mp.compose(
        [
            mp.OpenXarrayDataset(str(tiny_archive)),
            mp.TilingSampler(n_time_window=12, tile_size=TILE, index_dir=shared_index),
            mp.Sampler("importance", n_samples=6),
            mp.NormalizeForTraining(method="log1p"),
            mp.ToTorchTensor(batch_size=3),
        ]
    )
    batches = list(pipe)
    assert [b.shape[0] for b in batches] == [3, 3]


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        (["tiny", "BinNormSampler"], r"needs tiles.*put TilingSampler before it"),
        (["tiny", "NormalizeForTraining"], r"needs tiles or samples.*put TilingSampler"),
        (["tiny", "ToTorchTensor"], r"needs tiles or samples or normalized"),
        (
            ["tiny", "TilingSampler", "NormalizeForTraining", "BinNormSampler"],
            r"BinNormSampler.*needs tiles.*NormalizeForTraining.*directly after TilingSampler",
        ),
        (
            ["tiny", "TilingSampler", "ToTorchTensor", "NormalizeForTraining"],
            r"NormalizeForTraining.*needs tiles or samples.*ToTorchTensor",
        ),
        (["tiny", "TilingSampler", "TilingSampler"], r"already has TilingSampler"),
        (["TilingSampler"], r"first step must be a source"),
        (["tiny", "not a step"], r"not a pipeline step"),
    ],
)
def test_impossible_orders_raise(tiny_archive: Path, steps: list[str], match: str) -> None:
    makers = {
        "tiny": lambda: mp.OpenXarrayDataset(str(tiny_archive)),
        "TilingSampler": lambda: mp.TilingSampler(n_time_window=12, tile_size=TILE),
        "BinNormSampler": mp.BinNormSampler,
        "NormalizeForTraining": mp.NormalizeForTraining,
        "ToTorchTensor": mp.ToTorchTensor,
    }
    objects = [makers[s]() if s in makers else s for s in steps]
    with pytest.raises(PipelineOrderError, match=match):
        mp.compose(objects)


def test_empty_pipeline() -> None:
    with pytest.raises(ParameterError, match="source step"):
        mp.compose([])


def _yaml_config(archive: Path, index: Path, seed: int) -> dict:
    return {
        "steps": [
            {"OpenXarrayDataset": {"url": str(archive)}},
            {
                "TilingSampler": {
                    "n_time_window": 12,
                    "tile_size": list(TILE),
                    "index_dir": str(index),
                }
            },
            {"BinNormSampler": {"aggregation": "sum", "n_scalar_total_bins": 5, "seed": seed}},
            {"NormalizeForTraining": {}},
            {
                "ToTorchTensor": {
                    "batch_size": 4,
                    "n_input": 4,
                    "n_target": 8,
                    "seed": seed,
                    "augment": True,
                }
            },
        ]
    }


def test_load_pipeline_from_yaml_file(
    tiny_archive: Path, shared_index: Path, tmp_path: Path
) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(_yaml_config(tiny_archive, shared_index, seed=5)))
    loaded = mp.load_pipeline(path)
    _assert_same(_epochs(loaded), _epochs(_functional(tiny_archive, shared_index, seed=5)))
    # the parsed mapping works too
    mapping = mp.load_pipeline(_yaml_config(tiny_archive, shared_index, seed=5))
    _assert_same(_epochs(mapping, 1), _epochs(_functional(tiny_archive, shared_index, seed=5), 1))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps: []", "non-empty list"),
        ("nothing: 1", "non-empty list"),
        ("steps:\n  - NoSuchStep: {}", r"unknown step 'NoSuchStep'.*TilingSampler"),
        ("steps:\n  - TilingSampler: {}\n    BinNormSampler: {}", "one-key mapping"),
        ("steps:\n  - MLCastCatalogDataset: {no_such_arg: 1}", "bad arguments"),
        ("steps: [unclosed", "not valid YAML"),
    ],
)
def test_bad_yaml_pipelines(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ParameterError, match=match):
        mp.load_pipeline(path)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="does not exist"):
        mp.load_pipeline(tmp_path / "nope.yml")


def test_yaml_order_error(tiny_archive: Path) -> None:
    config = {
        "steps": [
            {"OpenXarrayDataset": {"url": str(tiny_archive)}},
            {"NormalizeForTraining": {}},
            {"TilingSampler": {"n_time_window": 12}},
        ]
    }
    with pytest.raises(PipelineOrderError, match="put TilingSampler before it"):
        mp.load_pipeline(config)
