"""Equal weighting (EW) and static per-task weights: the baselines of every weighting table."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.tasks import get_task
from densemtl.weighting.base import Kind, StepContext, TrainInfo, Weighting, register_weighting

__all__ = ["EqualWeighting", "StaticWeighting"]


@register_weighting("static")
class StaticWeighting(Weighting):
    """Fixed loss weights w_t: objective Σ_t w_t L_t (MTI-Net / InvPT recipes, ``protocols.md`` §5.2).

    Args:
        weights: task -> weight. Tasks not listed get the dataset family's default from the Task
            registry (``Task.loss_weight``) when ``family_defaults`` is true, else 1.
        family_defaults: fill unlisted tasks from the family defaults at ``on_train_start``.
    """

    kind = Kind.LOSSES

    def __init__(self, weights: Mapping[str, float] | None = None, family_defaults: bool = True) -> None:
        super().__init__()
        self.family_defaults = family_defaults
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        for name, w in self.weights.items():
            if not torch.isfinite(torch.tensor(w)):
                raise ValueError(f"loss weight of {name!r} must be finite, got {w}")

    def on_train_start(self, info: TrainInfo) -> None:
        super().on_train_start(info)
        if self.family_defaults and info.family:
            for t in info.tasks:
                self.weights.setdefault(t, get_task(t).loss_weight(info.family))

    def weight(self, task: str) -> float:
        return self.weights.get(task, 1.0)

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        unknown = set(self.weights) - set(losses)
        if unknown:
            raise ValueError(f"loss weights given for {sorted(unknown)}, but the tasks are {sorted(losses)}")
        objective = sum(self.weight(t) * loss for t, loss in losses.items())
        weights = {t: torch.tensor(self.weight(t)) for t in losses}
        return objective, weights


@register_weighting("ew")
class EqualWeighting(StaticWeighting):
    """Equal weighting: objective Σ_t L_t, every w_t = 1."""

    def __init__(self) -> None:
        super().__init__(None, family_defaults=False)
