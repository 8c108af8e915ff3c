"""MLCastDataModule under a real lightning.Trainer on CPU: epochs, validation, resume, DDP."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mlcast_pipes as mp

pl = pytest.importorskip("lightning.pytorch")

from mlcast_pipes.lightning import MLCastDataModule  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _pipe(archive: Path, index_dir: Path, n_samples: int, seed: int, batch_size: int = 4):
    return (
        mp.OpenXarrayDataset(str(archive))
        .tile(n_time_window=4, tile_size=(64, 64), max_nan_fraction=0.3, index_dir=index_dir)
        .uniform_sample(n_samples=n_samples, seed=seed)
        .normalize()
        .to_tensor(batch_size=batch_size, metadata=True)
    )


class _Recorder(pl.LightningModule):
    """A one-weight model that records the sample ids of every batch it sees."""

    def __init__(self, out: str | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out = out
        self.train_ids: dict[int, list[list[int]]] = {}
        self.val_ids: list[list[int]] = []
        self.val_runs: list[list[int]] = []
        self.padded: dict[int, list[bool]] = {}

    def training_step(self, batch, batch_idx):
        ids = batch["meta"]["sample_id"].tolist()
        self.train_ids.setdefault(self.current_epoch, []).append(ids)
        self.padded.setdefault(self.current_epoch, []).extend(batch["meta"]["padded"].tolist())
        return ((batch["data"].mean() - self.weight) ** 2).sum()

    def on_validation_epoch_start(self) -> None:
        self.val_ids = []

    def validation_step(self, batch, batch_idx):
        self.val_ids.extend(batch["meta"]["sample_id"].tolist())

    def on_validation_epoch_end(self) -> None:
        self.val_runs.append(list(self.val_ids))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        if self.out is not None:
            record = {"train": self.train_ids, "padded": self.padded}
            Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(record))


def _trainer(tmp_path: Path, **kw) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
    }
    options.update(kw)
    return pl.Trainer(**options)


def test_lightning_is_not_imported_by_the_package():
    import subprocess

    code = "import sys, mlcast_pipes; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_fit_three_epochs_with_reloads_and_the_sanity_check(tiny_archive, index_dir, tmp_path):
    dm = MLCastDataModule(
        train=_pipe(tiny_archive, index_dir, n_samples=20, seed=1),
        val=_pipe(tiny_archive, index_dir, n_samples=10, seed=2),
        num_workers=2,
    )
    model = _Recorder()
    trainer = _trainer(tmp_path, max_epochs=3, reload_dataloaders_every_n_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert sorted(model.train_ids) == [0, 1, 2]
    epochs = [[i for b in model.train_ids[e] for i in b] for e in range(3)]
    plain = mp.make_dataloader(_pipe(tiny_archive, index_dir, 20, 1), num_workers=0)
    for e, ids in enumerate(epochs):  # each training epoch exactly once: epoch e's draw
        plain.set_epoch(e)
        reference = [int(i) for b in plain for i in b["meta"]["sample_id"]]
        assert len(ids) == 20 and sorted(ids) == sorted(reference)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # a new order every epoch
    # len() known to Lightning: 2 workers of 10 samples, 3 batches of up to 4 each
    assert trainer.num_training_batches == len(model.train_ids[2]) == 6
    # the sanity check (2 batches) and every epoch's validation see the same samples in order
    sanity, *per_epoch = model.val_runs
    assert len(per_epoch) == 3 and len(per_epoch[0]) == 10
    assert all(run == per_epoch[0] for run in per_epoch)
    assert sanity == per_epoch[0][: len(sanity)] and len(sanity) == 8


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint(tiny_archive, index_dir, tmp_path):
    def datamodule() -> MLCastDataModule:
        return MLCastDataModule(
            train=_pipe(tiny_archive, index_dir, n_samples=24, seed=3), num_workers=2
        )

    checkpoints = tmp_path / "ckpt"
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=checkpoints, every_n_train_steps=8, save_top_k=-1, filename="{step}"
    )
    full = _Recorder()
    _trainer(
        tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[saver], enable_checkpointing=True
    ).fit(full, datamodule=datamodule())
    assert [len(full.train_ids[e]) for e in range(3)] == [6, 6, 6]
    # step 8: epoch 1 after its 2nd batch
    resumed = _Recorder()
    _trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(
        resumed, datamodule=datamodule(), ckpt_path=str(checkpoints / "step=8.ckpt")
    )
    assert resumed.train_ids[1] == full.train_ids[1][2:]  # exactly the remaining batches
    assert resumed.train_ids[2] == full.train_ids[2]
    assert 0 not in resumed.train_ids


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on loopback, Linux CI")
def test_ddp_two_cpu_processes_equal_steps_disjoint_shares(tiny_archive, index_dir, tmp_path):
    n = 21  # odd: one rank is padded with a copy
    dm = MLCastDataModule(
        train=_pipe(tiny_archive, index_dir, n_samples=n, seed=4, batch_size=4),
        val=_pipe(tiny_archive, index_dir, n_samples=6, seed=2, batch_size=4),
        num_workers=0,
    )
    dm.prepare_data()
    trainer = _trainer(
        tmp_path, max_epochs=2, devices=2, strategy="ddp_spawn", num_sanity_val_steps=0
    )
    trainer.fit(_Recorder(out=str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    plain = mp.make_dataloader(_pipe(tiny_archive, index_dir, n, 4, 4), num_workers=0)
    orders = []
    for epoch in ("0", "1"):
        a, b = (r["train"][epoch] for r in ranks)
        assert len(a) == len(b) == 3  # equal steps: 11 samples per rank, batches of 4
        ids = [[i for batch in r["train"][epoch] for i in batch] for r in ranks]
        flags = [r["padded"][epoch] for r in ranks]
        real = [[i for i, p in zip(ids[r], flags[r], strict=True) if not p] for r in range(2)]
        assert not set(real[0]) & set(real[1])  # disjoint
        plain.set_epoch(int(epoch))
        reference = [int(i) for batch in plain for i in batch["meta"]["sample_id"]]
        assert sorted(real[0] + real[1]) == sorted(reference)  # covering the epoch
        assert sum(flags[0]) + sum(flags[1]) == 1
        orders.append(ids[0])
    assert orders[0] != orders[1]
