"""The loader in training loops: set_epoch, len, equal ranks, a fixed validation set, resuming."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch.multiprocessing as tmp
from torch.utils.data import IterDataPipe

import mlcast_pipes as mp
from mlcast_pipes.datapipes.steps import walk
from mlcast_pipes.errors import ParameterError
from mlcast_pipes.loader import set_resume


def _pipe(
    path: Path,
    index_dir: Path,
    method: str = "uniform",
    batch_size: int = 4,
    drop_last: bool = False,
    **kw: object,
) -> IterDataPipe:
    return (
        mp.OpenXarrayDataset(str(path))
        .tile(n_time_window=6, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .sample(method, seed=5, **kw)
        .normalize()
        .to_tensor(batch_size=batch_size, metadata=True, drop_last=drop_last)
    )


def _batches(loader) -> list[list[int]]:
    return [b["meta"]["sample_id"].tolist() for b in loader]


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_decides_and_an_abandoned_epoch_is_delivered_again(
    tiny_archive, index_dir, workers
):
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir), num_workers=workers)
    try:
        epoch0 = _batches(loader)
        epoch1 = _batches(loader)
        assert loader.epoch == 2 and epoch0 != epoch1
        loader.set_epoch(0)
        for i, _ in enumerate(loader):  # a sanity check: two batches, then left
            if i == 1:
                break
        assert loader.epoch == 0  # not advanced
        assert _batches(loader) == epoch0  # the whole epoch 0, from its start
        assert loader.epoch == 1
        loader.set_epoch(1)
        next(iter(loader))  # left after one batch
        assert _batches(loader) == epoch1
    finally:
        loader.shutdown()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_len_is_the_number_of_batches_before_any_pixel_is_read(
    tiny_archive, index_dir, workers, drop_last
):
    pipe = _pipe(
        tiny_archive, index_dir, "binnorm", batch_size=4, drop_last=drop_last, n_samples=30
    )
    loader = mp.make_dataloader(pipe, num_workers=workers)
    try:
        expected = len(loader)  # planned before the first epoch
        assert expected > 0
        for epoch in range(2):
            assert len(loader) == len(_batches(loader)), f"epoch {epoch}"
    finally:
        loader.shutdown()


def test_len_unknown_for_a_step_that_may_drop_items(tiny_archive, index_dir):
    pipe = _pipe(tiny_archive, index_dir).filter(bool)
    loader = mp.make_dataloader(pipe, num_workers=0)
    with pytest.raises(TypeError, match="len"):
        len(loader)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_shuffle_false_delivers_the_same_batches_every_epoch_whatever_the_workers(
    tiny_archive, index_dir, workers
):
    def val_pipe():
        return _pipe(tiny_archive, index_dir, "binnorm", batch_size=3, n_samples=16)

    reference = _batches(mp.make_dataloader(val_pipe(), num_workers=0, shuffle=False))
    assert len(_flat(reference)) == 16
    loader = mp.make_dataloader(val_pipe(), num_workers=workers, shuffle=False)
    try:
        assert len(loader) == len(reference) == 6
        next(iter(loader))  # a sanity check left early
        for epoch in range(2):
            loader.set_epoch(epoch + 5)
            assert _batches(loader) == reference
    finally:
        loader.shutdown()
    # the draw is the epoch-0 draw of the shuffled loader: the same multiset of samples
    shuffled = mp.make_dataloader(val_pipe(), num_workers=0)
    assert Counter(_flat(_batches(shuffled))) == Counter(_flat(reference))


def test_shuffle_false_ranks_split_one_sequence(tiny_archive, index_dir):
    """Ranks simulated on the datapipe: their parts are consecutive pieces of one sequence."""

    def ids(rank: int, ranks: int) -> list[int]:
        pipe = _pipe(tiny_archive, index_dir, "binnorm", batch_size=3, n_samples=15)
        for dp in walk(pipe):
            if callable(getattr(dp, "configure_epochs", None)):
                dp.configure_epochs(ordered=True, batch_size=3)
                dp.apply_sharding(ranks, rank, 2)
        return [
            (int(i), bool(p))
            for b in pipe
            for i, p in zip(b["meta"]["sample_id"], b["meta"]["padded"], strict=True)
        ]

    whole = ids(0, 1)
    parts = ids(0, 2) + ids(1, 2)
    assert [i for i, p in parts if not p] == [i for i, _ in whole]
    assert len(parts) == 16 and [p for _, p in parts].count(True) == 1


@pytest.mark.parametrize(("workers", "shuffle"), [(0, True), (2, True), (2, False)])
def test_state_dict_resumes_with_exactly_the_remaining_batches(
    tiny_archive, index_dir, workers, shuffle
):
    def pipe():
        return _pipe(tiny_archive, index_dir, "binnorm", batch_size=3, n_samples=30)

    loader = mp.make_dataloader(pipe(), num_workers=workers, shuffle=shuffle)
    try:
        _batches(loader)  # epoch 0
        taken, state = [], None
        for batch in loader:  # epoch 1, interrupted after 5 batches
            taken.append(batch["meta"]["sample_id"].tolist())
            if len(taken) == 5:
                state = loader.state_dict()
                break
        assert state is not None and (state["epoch"], state["batch"]) == (1, 5)
        loader.set_epoch(1)
        full = _batches(loader)
        assert full[:5] == taken
        assert loader.state_dict()["epoch"] == 2
    finally:
        loader.shutdown()
    resumed = mp.make_dataloader(pipe(), num_workers=workers, shuffle=shuffle)
    try:
        resumed.load_state_dict(state)
        assert len(resumed) == len(full)  # the whole epoch's length, as Lightning expects
        assert _batches(resumed) == full[5:]
        assert resumed.epoch == 2
    finally:
        resumed.shutdown()
    other = mp.make_dataloader(pipe(), num_workers=workers + 1)
    with pytest.raises(ParameterError, match="same number of workers"):
        other.load_state_dict(state)
    other.shutdown()


def _rank_main(
    rank: int, world: int, init_file: str, archive: str, index_dir: str, out: str
) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        runs = {}
        for name, drop_last, drop_remainder, workers in _OPTIONS:
            pipe = _pipe(
                Path(archive), Path(index_dir), batch_size=8, drop_last=drop_last, n_samples=63
            )
            loader = mp.make_dataloader(
                pipe, num_workers=workers, distributed=True, drop_remainder=drop_remainder
            )
            epochs = []
            try:
                for _ in range(2):
                    expected = len(loader)
                    batches = list(loader)
                    meta = [b["meta"] for b in batches]
                    epochs.append(
                        {
                            "len": expected,
                            "n": len(batches),
                            "ids": [int(i) for m in meta for i in m["sample_id"]],
                            "padded": [bool(p) for m in meta for p in m["padded"]],
                        }
                    )
            finally:
                loader.shutdown()
            runs[name] = epochs
        Path(out, f"rank{rank}.json").write_text(json.dumps(runs))
    finally:
        dist.destroy_process_group()


# (name, drop_last, drop_remainder, num_workers)
_OPTIONS = [("pad", True, False, 2), ("drop", False, True, 0)]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on loopback, Linux CI")
def test_two_ranks_deliver_equal_batch_counts(tiny_archive, index_dir, tmp_path):
    """The issue's case: 63 samples, batches of 8, 2 ranks (3 and 4 batches before)."""
    _ = list(_pipe(tiny_archive, index_dir, n_samples=63))  # builds the indexes first
    args = (2, str(tmp_path / "init"), str(tiny_archive), str(index_dir), str(tmp_path))
    tmp.start_processes(_rank_main, args=args, nprocs=2, join=True, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, *_ in _OPTIONS:
        for epoch in range(2):
            a, b = ranks[0][name][epoch], ranks[1][name][epoch]
            assert a["n"] == b["n"] == a["len"] == b["len"]  # equal steps, as len() said
            real_a = [i for i, p in zip(a["ids"], a["padded"], strict=True) if not p]
            real_b = [i for i, p in zip(b["ids"], b["padded"], strict=True) if not p]
            assert not set(real_a) & set(real_b)  # disjoint
            if name == "pad":  # 63 + 1 padded = 32 per rank = 4 full batches each
                assert a["n"] == 4 and len(real_a) + len(real_b) == 63
                assert sum(a["padded"] + b["padded"]) == 1
            else:  # 62 of the 63 records, the remainder left out: 31 = 4 batches each
                assert a["n"] == 4 and len(real_a) == len(real_b) == 31
                assert not any(a["padded"] + b["padded"])
        assert ranks[0][name][0]["ids"] != ranks[0][name][1]["ids"]


def test_a_mix_refuses_to_resume_mid_epoch(tiny_archive, index_dir, tmp_path):
    from mlcast_pipes.demo import generate_demo

    other = generate_demo(tmp_path / "other.zarr", preset="tiny", n_times=24, seed=3)

    def pipe() -> IterDataPipe:
        sampled = [
            mp.OpenXarrayDataset(str(p))
            .tile(n_time_window=4, tile_size=(64, 64), index_dir=index_dir)
            .uniform_sample(n_samples=6, seed=k)
            for k, p in enumerate((tiny_archive, other))
        ]
        return mp.mix(sampled, seed=0).normalize().to_tensor(batch_size=2, metadata=True)

    loader = mp.make_dataloader(pipe(), num_workers=0)
    batches = iter(loader)
    next(batches), next(batches)
    state = loader.state_dict()
    assert state["batch"] == 2
    resumed = mp.make_dataloader(pipe(), num_workers=0)
    with pytest.raises(ParameterError, match="cannot resume in the middle of an epoch"):
        resumed.load_state_dict(state)
    with pytest.raises(ParameterError, match="start of an epoch"):
        mp.make_dataloader(pipe(), num_workers=0, start_batch=2)
    with pytest.raises(ParameterError, match="mix"):
        set_resume(pipe(), 2)
    # at an epoch boundary a mix resumes whole
    resumed.load_state_dict({**state, "epoch": 1, "batch": 0})
    assert len(_batches(resumed)) == 6


@pytest.mark.parametrize("batch_size", [1, 2])
def test_several_archives_with_workers_deliver_exactly_once(
    tiny_archive, index_dir, tmp_path, batch_size
):
    from torchdata.datapipes.iter import IterableWrapper

    from mlcast_pipes.demo import generate_demo

    paths = [
        str(generate_demo(tmp_path / f"a{k}.zarr", preset="tiny", n_times=24, seed=k))
        for k in range(3)
    ]

    def pipe() -> IterDataPipe:
        return (
            IterableWrapper(paths)
            .open_mlcast()
            .tile(n_time_window=4, tile_size=(64, 64), index_dir=index_dir)
            .uniform_sample(n_samples=5, seed=5)
            .normalize()
            .to_tensor(batch_size=batch_size, metadata=True)
        )

    def keys(batch) -> list[tuple[str, int]]:
        meta = batch["meta"]
        return [(d, int(i)) for d, i in zip(meta["dataset_id"], meta["sample_id"], strict=True)]

    reference = Counter(k for b in pipe() for k in keys(b))
    assert len(reference) == 15 and set(reference.values()) == {1}
    loader = mp.make_dataloader(pipe(), num_workers=2)
    try:
        full = [keys(b) for b in loader]  # each archive's odd sample went to another worker
        assert Counter(k for b in full for k in b) == reference
        assert len(loader) == len(full)
        loader.set_epoch(0)
        batches = iter(loader)
        taken = [keys(next(batches)) for _ in range(3)]
        state = loader.state_dict()
    finally:
        loader.shutdown()
    resumed = mp.make_dataloader(pipe(), num_workers=2)
    try:
        resumed.load_state_dict(state)
        assert taken + [keys(b) for b in resumed] == full
    finally:
        resumed.shutdown()


@pytest.mark.parametrize(
    ("change", "loader_kw", "pipe_kw"),
    [
        ("seed", {"seed": 1}, {}),
        ("shuffle", {"shuffle": False}, {}),
        ("batch_size", {}, {"batch_size": 3}),
        ("drop_last", {}, {"drop_last": True}),
    ],
)
def test_load_state_dict_refuses_a_state_of_another_draw_or_batching(
    tiny_archive, index_dir, change, loader_kw, pipe_kw
):
    loader = mp.make_dataloader(_pipe(tiny_archive, index_dir, n_samples=12), num_workers=0)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert state["batch"] == 1
    other = mp.make_dataloader(
        _pipe(tiny_archive, index_dir, n_samples=12, **pipe_kw), num_workers=0, **loader_kw
    )
    with pytest.raises(ParameterError, match=f"saved with {change}=.*Resume with {change}="):
        other.load_state_dict(state)
    same = mp.make_dataloader(_pipe(tiny_archive, index_dir, n_samples=12), num_workers=0)
    same.load_state_dict(state)
    assert len(_batches(same)) == len(loader) - 1
