"""The engine's weighting support: parameter groups, exact resume, post-step forward, weight plots."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from densemtl.engine import WEIGHTS_PNG, MultiTaskModule
from densemtl.weighting import TrainInfo
from densemtl.weighting.epoch_stats import EpochAccumulator
from trainers import quiet_trainer, tiny_module

TASKS = ["semseg", "depth", "normals"]


def _sample(i: int, h: int = 16, w: int = 16) -> dict:
    g = torch.Generator().manual_seed(i)
    right = torch.zeros(h, w, dtype=torch.bool)
    right[:, w // 2 :] = True
    image = torch.randn(3, h, w, generator=g) * 0.1
    image[0] += right.float()
    normals = torch.zeros(3, h, w)
    normals[2] = -1.0
    normals[0] = torch.where(right, 0.6, 0.0)
    return {
        "image": image,
        "semseg": right.long() * 2,
        "depth": torch.where(right, 3.0, 1.5)[None] + 0.1 * torch.rand(1, h, w, generator=g),
        "normals": normals / normals.norm(dim=0, keepdim=True),
    }


class _Samples(Dataset):
    def __init__(self, n: int = 6) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return _sample(i)


class _ResumableLoader(DataLoader):
    """In-order batches; its state (batches yielded in the current pass) lets Lightning resume mid-epoch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._start = 0
        self._yielded = 0

    def __iter__(self):
        start, self._start = self._start, 0
        self._yielded = start
        for i, batch in enumerate(super().__iter__()):
            if i >= start:
                self._yielded = i + 1
                yield batch

    def state_dict(self) -> dict:
        return {"yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._start = state["yielded"]


def _module(weighting: str = "ew", weighting_args: dict | None = None, **kwargs) -> MultiTaskModule:
    return tiny_module(tasks=TASKS, weighting=weighting, weighting_args=weighting_args, lr=1e-3, **kwargs)


def _trainer(root, max_steps: int, **kwargs) -> L.Trainer:
    return quiet_trainer(root, max_steps=max_steps, deterministic=True, **kwargs)


def _tensors(module: MultiTaskModule) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("weighting", ["lps", "uw"])
def test_resume_mid_epoch_is_bit_identical(tmp_path, weighting):
    # 3 batches per epoch; 8 steps straight against 4 steps (mid-epoch 1) + resume + 4 steps
    total, first = 8, 4
    straight = _module(weighting)
    _trainer(tmp_path / "a", total).fit(straight, _ResumableLoader(_Samples(), batch_size=2))
    part = _module(weighting)
    trainer = _trainer(tmp_path / "b", first)
    trainer.fit(part, _ResumableLoader(_Samples(), batch_size=2))
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    assert part._epoch_stats.counts["loss"].item() == 2  # the partial epoch is in the checkpoint
    resumed = _module(weighting)
    _trainer(tmp_path / "b", total).fit(
        resumed, _ResumableLoader(_Samples(), batch_size=2), ckpt_path=tmp_path / "mid.ckpt"
    )
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    if weighting == "lps":  # weights of epoch 2 come from m(1) against m(0): not all 1
        assert int(straight.weighting.epochs_seen) == 2
        assert not torch.equal(straight.weighting.weights, torch.ones(3, dtype=torch.float64))
    else:  # UW's log-variances moved away from their init
        assert not torch.equal(straight.weighting.params, torch.full((3,), -0.5))
    assert torch.equal(straight._trajectory.steps, resumed._trajectory.steps)
    assert straight._trajectory.steps.shape == (total, 3)
    assert (tmp_path / "a" / WEIGHTS_PNG).stat().st_size > 1000


def test_weighting_parameters_get_their_own_group_and_train():
    module = _module("uw", {"weight_lr": 0.01}, weight_decay=0.5)
    module.log = module.log_dict = lambda *a, **k: None
    module.weighting.on_train_start(TrainInfo(tasks=tuple(TASKS)))
    optimizer = module.configure_optimizers()
    groups = optimizer.param_groups
    assert len(groups) == 2
    assert groups[1]["params"] == [module.weighting.params]
    assert (groups[1]["lr"], groups[1]["weight_decay"], groups[0]["weight_decay"]) == (0.01, 0.0, 0.5)
    assert all(p is not module.weighting.params for p in groups[0]["params"])
    batch = {k: torch.stack([_sample(i)[k] for i in range(2)]) for k in _sample(0)}
    before = module.weighting.params.detach().clone()
    optimizer.zero_grad()
    module.training_step(batch, 0).backward()
    optimizer.step()
    assert not torch.equal(module.weighting.params.detach(), before)


def test_famo_post_step_forward_keeps_norm_statistics_and_updates_xi():
    module = _module("famo")
    module.log = module.log_dict = lambda *a, **k: None
    module.weighting.on_train_start(TrainInfo(tasks=tuple(TASKS)))
    module.train()
    optimizer = module.configure_optimizers()
    assert all(p is not module.weighting.xi for g in optimizer.param_groups for p in g["params"])
    batch = {k: torch.stack([_sample(i)[k] for i in range(2)]) for k in _sample(0)}
    optimizer.zero_grad()
    module.training_step(batch, 0).backward()
    optimizer.step()
    buffers = {k: v.clone() for k, v in module.model.named_buffers()}
    post = module._post_step_losses(batch)
    assert all(torch.equal(buffers[k], v) for k, v in module.model.named_buffers())
    assert set(post) == set(TASKS)
    module.on_train_batch_end(None, batch, 0)
    assert module.weighting.xi.abs().sum() > 0
    assert int(module.weighting.adam_steps) == 1


def test_famo_refuses_gradient_accumulation(tmp_path):
    module = _module("famo")
    trainer = _trainer(tmp_path, 2, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches must be 1, got 2"):
        trainer.fit(module, DataLoader(_Samples(4), batch_size=2))


def test_epoch_accumulator_is_sample_weighted_and_round_trips():
    acc = EpochAccumulator()
    acc.update({"x": torch.tensor([1.0, 2.0])}, batch_size=2)
    acc.update({"x": torch.tensor([4.0, 8.0])}, batch_size=1)
    state = acc.state_dict()
    assert acc.reduce()["x"].tolist() == pytest.approx([2.0, 4.0])  # (2*1 + 4)/3, (2*2 + 8)/3
    other = EpochAccumulator()
    other.load_state_dict(state)
    other.update({"x": torch.tensor([0.0, 0.0])}, batch_size=1)
    assert other.reduce()["x"].tolist() == pytest.approx([1.5, 3.0])
    acc.reset()
    assert acc.reduce() == {}


def test_weight_plot_goes_to_the_run_folder_and_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = _module("rlw")
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = quiet_trainer(max_steps=3, logger=logger, log_every_n_steps=1)
    trainer.fit(module, DataLoader(_Samples(4), batch_size=2))
    run_dir = tmp_path / "run" / "version_0"
    assert (run_dir / WEIGHTS_PNG).stat().st_size > 1000
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "weights/trajectory" in events.Tags()["images"]
    logged = [e.value for e in events.Scalars("weight/semseg")]
    assert len(logged) == 3 and all(0 < v < 1 for v in logged)  # RLW: softmax weights, a new draw per step
    assert module._trajectory.steps[:, 0].tolist() == pytest.approx(logged, abs=1e-6)


def test_famo_takes_one_xi_step_per_optimiser_step_under_lightning(tmp_path):
    module = _module("famo")
    _trainer(tmp_path, 3).fit(module, DataLoader(_Samples(8), batch_size=2))
    assert int(module.weighting.adam_steps) == 3
    assert module.weighting.xi.abs().min() > 0
