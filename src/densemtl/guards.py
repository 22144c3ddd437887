"""Non-finite training guard: never step on, save or select a model that went NaN/inf.

* :func:`skip_nonfinite_losses` — called by the engine's ``training_step`` right after the criterion: when a
  task loss (or the weighted objective) is NaN/inf it warns, naming the task(s), and the engine returns
  ``None`` (Lightning then skips backward and the parameter update for that batch).
* :class:`NonFiniteGuard` — a callback: drops non-finite gradients before the optimiser step (the step then
  changes no parameter), counts consecutive non-finite steps and stops training with
  :class:`NonFiniteTrainingError` (a non-zero exit status) after ``max_consecutive`` of them.
* :func:`nonfinite_parameters` — names of parameters/buffers holding NaN/inf, used by the checkpoint
  writers (:mod:`densemtl.checkpointing`) to refuse writing or selecting such a model.

Manual optimisation (``automatic_optimization = False``): call :func:`skip_nonfinite_losses` before
``manual_backward`` and return early when it returns a non-empty list; Lightning still calls the
callback's ``on_before_optimizer_step`` from ``optimizer.step()``, so gradient checks and counting work
unchanged. With a gradient scaler (``precision="16-mixed"``) non-finite gradients are the scaler's
business (it skips those steps and lowers its scale) and are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from densemtl.weighting.epoch_stats import distributed_world_size

__all__ = [
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "all_finite",
    "nonfinite_parameters",
    "skip_nonfinite_losses",
]

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because too many consecutive steps had a non-finite loss or gradient."""


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when every floating tensor holds only finite values (one device sync per dtype/device group)."""
    floats = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not floats:
        return True
    # NaN and inf propagate into norms. The L2 foreach norm is the fast kernel (about 25x the max-abs one on
    # CPU); it is used for fp32/fp64, where only a tensor norm above ~1e38 (a diverged value anyway) could
    # overflow; half-precision tensors take the max-abs norm, which never overflows.
    wide = [t for t in floats if t.dtype in (torch.float32, torch.float64)]
    narrow = [t for t in floats if t.dtype not in (torch.float32, torch.float64)]
    norms = list(torch._foreach_norm(wide, 2)) if wide else []
    norms += list(torch._foreach_norm(narrow, float("inf"))) if narrow else []
    return bool(torch.stack([n.float().to(floats[0].device) for n in norms]).isfinite().all())


def nonfinite_parameters(module: torch.nn.Module, limit: int = 5) -> list[str]:
    """Names (at most ``limit``) of the floating parameters and buffers of ``module`` holding NaN/inf."""
    named = [*module.named_parameters(), *module.named_buffers()]
    if all_finite(t for _, t in named):
        return []
    bad = [n for n, t in named if t.is_floating_point() and t.numel() and not bool(t.detach().isfinite().all())]
    return bad[:limit]


def _guard_of(module: L.LightningModule) -> NonFiniteGuard | None:
    trainer = getattr(module, "_trainer", None)
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, NonFiniteGuard):
            return callback
    return None


def _loss_terms(losses: Any) -> dict[str, Tensor]:
    """name -> scalar: a mapping as given; a :class:`~densemtl.losses.TaskLosses` as its main losses,
    ``<task>/aux`` deep-supervision totals and ``extra/<name>`` terms."""
    if isinstance(losses, Mapping):
        return dict(losses)
    terms = dict(losses.main)
    for task in losses.aux:
        total = losses.aux_total(task)
        if total is not None:
            terms[f"{task}/aux"] = total
    terms.update({f"extra/{k}": v for k, v in losses.extra.items()})
    return terms


def skip_nonfinite_losses(module: L.LightningModule, losses: Any, objective: Tensor | None = None) -> list[str]:
    """The tasks whose loss is NaN/inf (``"objective"`` when only the weighted sum is); empty when all are finite.

    Under DDP the check is over all ranks (one all-reduce of the flags): a NaN on one rank skips the step on
    every rank, since a rank that skipped its backward pass would leave the others waiting in DDP's reduction.

    When the list is not empty it warns (step, task names) and tells the trainer's :class:`NonFiniteGuard`
    (if any) that this step is skipped; the caller must then skip the step (``return None`` from
    ``training_step``).

    Args:
        module: the LightningModule (for the step number and the guard callback).
        losses: task -> scalar loss, or the criterion's :class:`~densemtl.losses.TaskLosses`.
        objective: the weighted objective, checked too when given.
    """
    terms = _loss_terms(losses)
    names = list(terms)
    values = [terms[n].detach().float().reshape(()) for n in names]
    if objective is not None:
        names.append("objective")
        values.append(objective.detach().float().reshape(()))
    if not values:
        return []
    finite = torch.stack(values).isfinite()
    if distributed_world_size() > 1:  # every rank must skip together, or the others wait in DDP's all-reduce
        nonfinite = (~finite).to(torch.float32)
        dist.all_reduce(nonfinite, op=dist.ReduceOp.SUM)
        finite = nonfinite == 0
    if bool(finite.all()):
        return []
    bad = [n for n, ok in zip(names, finite.tolist()) if not ok]
    if len(bad) > 1 and "objective" in bad:
        bad.remove("objective")  # the sum of non-finite task losses: the tasks are the news
    step = int(getattr(module, "global_step", 0))
    log.warning("step %d skipped: non-finite loss for %s", step, ", ".join(bad))
    guard = _guard_of(module)
    if guard is not None:
        guard.record_skip(f"non-finite loss for {', '.join(bad)}")
    return bad


class NonFiniteGuard(Callback):
    """Skip optimiser steps with non-finite gradients; stop after ``max_consecutive`` non-finite steps in a row.

    A non-finite step is one whose loss (reported by :func:`skip_nonfinite_losses`) or whose gradient is
    NaN/inf; its parameter update is skipped. A finite step resets the count.

    Args:
        max_consecutive: consecutive non-finite steps after which training stops with
            :class:`NonFiniteTrainingError` (the command exits with a non-zero status); 0 never stops.
        check_gradients: also check the gradients before each optimiser step (one max-abs reduction over
            all gradients per step).
    """

    def __init__(self, max_consecutive: int = 5, check_gradients: bool = True) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.check_gradients = bool(check_gradients)
        self.consecutive = 0
        self.total_skipped = 0
        self._skipped_this_batch: str | None = None

    def record_skip(self, reason: str) -> None:
        """Mark the current batch's step as skipped (``reason`` goes into the stop message)."""
        self._skipped_this_batch = reason

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._skipped_this_batch = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if all_finite(grads):
            return
        bad = [n for n, p in pl_module.named_parameters() if p.grad is not None and not bool(p.grad.isfinite().all())]
        log.warning(
            "step %d skipped: non-finite gradient in %d parameter(s), e.g. %s",
            trainer.global_step,
            len(bad),
            ", ".join(bad[:3]),
        )
        optimizer.zero_grad(set_to_none=True)  # the optimiser then changes no parameter
        self.record_skip(f"non-finite gradient in {', '.join(bad[:3])}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        reason, self._skipped_this_batch = self._skipped_this_batch, None
        if reason is None:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total_skipped += 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"training stopped at step {trainer.global_step}: {self.consecutive} consecutive steps were "
                f"skipped (last: {reason}). Lower the learning rate or check the data; the checkpoints on disk "
                f"hold the last finite model (nonfinite.max_consecutive={self.max_consecutive})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.total_skipped = int(state_dict.get("total_skipped", 0))
