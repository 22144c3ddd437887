"""Exact resume: T steps straight == k steps, SIGTERM/SIGINT (checkpoint), resume, T - k steps, bit for bit.

Real synth-nyud data through the datamodule with the invpt augmentation (random scale, crop, flip,
photometric distortion), CPU, deterministic, loader workers 0 and 2; model, optimiser, scheduler and
weighting (DWA: per-epoch loss history) state compared tensor by tensor.
"""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from densemtl.checkpointing import AtomicCheckpointIO, RandomState
from densemtl.data.datamodule import MultiTaskDataModule
from densemtl.engine import MultiTaskModule
from densemtl.interrupts import INTERRUPT_CKPT, GracefulInterrupt
from trainers import quiet_trainer, tiny_module

TASKS = ["semseg", "depth", "normals"]
BATCHES_PER_EPOCH = 3  # 6 training images, batch size 2


def _datamodule(root, workers: int) -> MultiTaskDataModule:
    return MultiTaskDataModule(
        "synth-nyud",
        root=str(root),
        tasks=TASKS,
        preset="invpt",
        train_size=(24, 32),
        batch_size=2,
        num_workers=workers,
        seed=3,
        generate={"train": 6, "val": 2, "size": (24, 32), "seed": 0},
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "synth"
    _datamodule(root, 0).prepare_data()
    return root


def _module() -> MultiTaskModule:
    return tiny_module(tasks=TASKS, num_classes={"semseg": 14}, weighting="dwa", scheduler="poly", lr=1e-3)


class _SignalAt(L.Callback):
    """Send ``signum`` to this process after training step ``step`` (as a scheduler or Ctrl+C would)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _fit(root, data_root, workers: int, max_steps: int, callbacks=(), ckpt_path=None):
    module = _module()
    trainer = quiet_trainer(
        root,
        max_steps=max_steps,
        deterministic=True,
        plugins=[AtomicCheckpointIO()],
        callbacks=[GracefulInterrupt(), RandomState(), *callbacks],
    )
    trainer.fit(module, datamodule=_datamodule(data_root, workers), ckpt_path=ckpt_path)
    return trainer, module


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}/{i}", v, out)
    elif isinstance(value, (torch.Tensor, int, float, bool)):
        out[prefix] = torch.as_tensor(value)


def _state(trainer: L.Trainer, module: MultiTaskModule) -> dict[str, torch.Tensor]:
    """Every tensor and number of the model (weighting included), the optimiser, the scheduler and the
    engine's partial-epoch weighting statistics, flattened."""
    out: dict[str, torch.Tensor] = {}
    _flatten("model", dict(module.state_dict()), out)
    _flatten("optim", trainer.optimizers[0].state_dict(), out)
    _flatten("sched", trainer.lr_scheduler_configs[0].scheduler.state_dict(), out)
    _flatten("epoch_stats", module._epoch_stats.state_dict(), out)
    return out


@pytest.mark.parametrize(
    "workers,stop,signum",
    [
        (0, 4, signal.SIGTERM),  # mid-epoch (epoch 1, batch 1 of 3)
        (0, 3, signal.SIGINT),  # epoch boundary, Ctrl+C
        (2, 4, signal.SIGINT),
        (2, 3, signal.SIGTERM),
    ],
)
def test_interrupt_and_resume_is_bit_identical(tmp_path, data_root, workers, stop, signum):
    total = 2 * stop
    straight = _state(*_fit(tmp_path / "a", data_root, workers, total))

    with pytest.raises(SystemExit) as info:
        _fit(tmp_path / "b", data_root, workers, total, callbacks=[_SignalAt(stop, signum)])
    assert info.value.code == 128 + signum
    ckpt = tmp_path / "b" / "checkpoints" / INTERRUPT_CKPT
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == stop
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers handed back

    resumed = _state(*_fit(tmp_path / "b", data_root, workers, total, ckpt_path=ckpt))
    assert straight.keys() == resumed.keys()
    assert len([k for k in straight if k.startswith("optim/state")]) > 10
    assert any(k.startswith("model/weighting.") for k in straight)
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []


def test_the_training_loader_is_resumable_mid_epoch(data_root):
    """The loader alone: state after 2 batches, a new loader restored from it yields the remaining batches
    of that epoch exactly (augmentation included), and the next epoch differs from the first."""
    dm = _datamodule(data_root, 0)
    loader = dm.train_dataloader()
    epoch0 = [b["image"] for b in loader]
    assert len(epoch0) == BATCHES_PER_EPOCH
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 2}
    other = _datamodule(data_root, 0).train_dataloader()
    other.load_state_dict(state)
    rest = [b["image"] for b in other]
    assert len(rest) == 1 and torch.equal(rest[0], epoch0[2])
    loader.sampler.set_epoch(1)
    epoch1 = [b["image"] for b in loader]
    assert not any(torch.equal(a, b) for a, b in zip(epoch0, epoch1))
