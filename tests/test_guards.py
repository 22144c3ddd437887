"""Non-finite training: skipped steps with the task named, a stop after K in a row, no NaN checkpoint."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from densemtl.checkpointing import AtomicCheckpointIO, FiniteModelCheckpoint
from densemtl.engine import MultiTaskModule
from densemtl.guards import NonFiniteGuard, NonFiniteTrainingError, nonfinite_parameters, skip_nonfinite_losses
from trainers import tiny_fit_args, tiny_module

TASKS = ["semseg", "depth", "normals"]


class _Samples(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        normals = torch.zeros(3, 16, 16)
        normals[2] = 1.0
        return {
            "image": torch.randn(3, 16, 16, generator=g),
            "semseg": torch.randint(0, 3, (16, 16), generator=g),
            "depth": torch.rand(1, 16, 16, generator=g) + 1.0,
            "normals": normals,
        }


def _module() -> MultiTaskModule:
    return tiny_module(tasks=TASKS, lr=1e-3)


def _poison_losses(module: MultiTaskModule, steps: set[int] | None, tasks: tuple[str, ...]) -> None:
    """Fault injection: the criterion returns NaN for ``tasks`` at ``steps`` (None: from step 2 on)."""
    criterion = module.criterion

    class Poisoned(torch.nn.Module):
        def forward(self, output, batch):
            losses = criterion(output, batch)
            step = module.global_step
            if (steps is None and step >= 2) or (steps is not None and step in steps):
                for t in tasks:
                    losses.main[t] = losses.main[t] * math.nan
            return losses

    module.criterion = Poisoned()


class _ParameterLog(L.Callback):
    """Whether each step changed the parameters."""

    def __init__(self) -> None:
        self.changed: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = list(pl_module.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self._before, after)))


def _trainer(root, max_steps: int, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=callbacks,
        **kwargs,
    )


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def _loader() -> DataLoader:
    return DataLoader(_Samples(), batch_size=2)


def test_a_nonfinite_task_loss_skips_the_step_and_names_the_task(tmp_path, caplog):
    module = _module()
    _poison_losses(module, {2}, ("depth",))
    log, guard = _ParameterLog(), NonFiniteGuard(max_consecutive=2)
    with caplog.at_level(logging.WARNING, logger="densemtl.guards"):
        _trainer(tmp_path, 5, [guard, log], enable_checkpointing=False).fit(module, _loader())
    assert log.changed == [True, True, False, True, True]  # step 2: no update; training goes on
    assert "step 2 skipped: non-finite loss for depth" in caplog.text
    assert "semseg" not in caplog.text and guard.total_skipped == 1 and guard.consecutive == 0


def test_a_nonfinite_gradient_skips_the_step(tmp_path, caplog):
    class NaNGradient(L.Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 1:
                next(pl_module.model.parameters()).grad[0].fill_(math.inf)

    module, log = _module(), _ParameterLog()
    with caplog.at_level(logging.WARNING, logger="densemtl.guards"):
        _trainer(tmp_path, 3, [NaNGradient(), NonFiniteGuard(), log], enable_checkpointing=False).fit(module, _loader())
    assert log.changed == [True, False, True]
    assert "step 1 skipped: non-finite gradient" in caplog.text
    assert not nonfinite_parameters(module)


def test_consecutive_nonfinite_steps_stop_training_and_keep_finite_checkpoints(tmp_path):
    module = _module()
    _poison_losses(module, None, TASKS)
    ckpt = FiniteModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive steps were skipped \(last: non-finite loss"):
        _trainer(tmp_path, 50, [NonFiniteGuard(max_consecutive=3), ckpt]).fit(module, _loader())
    assert module.global_step == 5  # steps 2, 3, 4 skipped, then the stop
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert files
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert _finite(state), path


def test_a_model_with_nonfinite_weights_is_never_written_or_selected_as_best(tmp_path, caplog):
    class Overflow(L.Callback):  # an update that overflowed the weights at step 3
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(pl_module.model.parameters()).fill_(math.nan)

    ckpt = FiniteModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=1, monitor="step", mode="max", save_last=True
    )
    module = _module()
    with pytest.raises(NonFiniteTrainingError), caplog.at_level(logging.WARNING):
        _trainer(tmp_path, 50, [Overflow(), NonFiniteGuard(max_consecutive=2), ckpt]).fit(module, _loader())
    assert "checkpoint not written and not considered for best: non-finite weights" in caplog.text
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    # Lightning runs ModelCheckpoint after the other callbacks: step 3's save already saw the NaN weights
    assert best["global_step"] == last["global_step"] == 2
    for state in (best["state_dict"], last["state_dict"]):
        assert _finite(state)


def test_the_checkpoint_writer_refuses_nonfinite_weights(tmp_path):
    from densemtl.checkpointing import NonFiniteCheckpointError

    path = tmp_path / "x.ckpt"
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to write .*x\.ckpt.*\['w'\]"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}}, path)
    assert list(tmp_path.iterdir()) == []


def test_skip_nonfinite_losses_names_only_the_bad_tasks():
    module = _module()
    finite = {"semseg": torch.tensor(1.0), "depth": torch.tensor(2.0)}
    assert skip_nonfinite_losses(module, finite) == []
    assert skip_nonfinite_losses(module, {**finite, "depth": torch.tensor(math.inf)}) == ["depth"]
    assert skip_nonfinite_losses(module, finite, objective=torch.tensor(math.nan)) == ["objective"]


def _skip_decisions(rank: int, world: int) -> dict:
    """Rank 0 sees a NaN depth loss, rank 1 only finite losses."""
    module = torch.nn.Module()
    module.global_step = 3
    bad = float("nan") if rank == 0 else 1.0
    losses = {"semseg": torch.tensor(1.0), "depth": torch.tensor(bad)}
    return {
        "skipped": skip_nonfinite_losses(module, losses),
        "finite": skip_nonfinite_losses(module, {"a": torch.ones(())}),
    }


def test_under_ddp_a_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(gloo_ranks):
    """A rank that skipped its backward pass alone would leave the others waiting in DDP's all-reduce."""
    ranks = gloo_ranks(_skip_decisions, world=2, timeout=120)
    assert ranks[0] == ranks[1] == {"skipped": ["depth"], "finite": []}


def test_fit_with_a_huge_learning_rate_stops_with_an_error_and_no_nonfinite_checkpoint(tmp_path, caplog):
    """The reported reproduction: `densemtl fit --model.lr 1e6` used to exit 0 with a NaN model kept as best."""
    from densemtl.cli import main

    args = [*tiny_fit_args(tmp_path, max_epochs=4), "--model.lr=1e6", "--nonfinite.max_consecutive=3"]
    stop = pytest.raises(NonFiniteTrainingError, match="3 consecutive steps were skipped")
    with stop, caplog.at_level(logging.WARNING):
        main(args)
    assert "skipped: non-finite loss for semseg, depth, normals, edge" in caplog.text
    for path in (tmp_path / "runs").rglob("*.ckpt"):
        assert _finite(torch.load(path, map_location="cpu", weights_only=False)["state_dict"]), path
