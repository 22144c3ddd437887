"""Dynamic task prioritization (DTP; Guo et al., ECCV 2018), ``spec/weighting.md`` §3.2.

Per epoch, each task's KPI κ_t ∈ [0, 1] (the engine's ``kpi/<task>``: the first higher-is-better
percentage metric of the task over the epoch's training batches, e.g. semseg mIoU, depth δ<1.25,
normals <11.25°) is smoothed κ̄ ← a·κ + (1 − a)·κ̄ (κ̄ starts at the first κ), clamped to [0.01, 0.99],
and w_t = −(1 − κ̄_t)^{γ_t} log κ̄_t for the next epoch. w = 1 during epoch 0 and for tasks without a
KPI (e.g. edge when odsF is off during training). The paper's a and γ are unverified (spec §7).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import EpochStats, Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = ["DynamicTaskPrioritization", "dtp_weights"]


def dtp_weights(kpi_smoothed: Tensor, gamma: Tensor, low: float = 0.01, high: float = 0.99) -> Tensor:
    """w = −(1 − κ̄)^γ log κ̄ with κ̄ clamped to [low, high]."""
    k = kpi_smoothed.clamp(low, high)
    return -((1.0 - k) ** gamma) * torch.log(k)


@register_weighting("dtp")
class DynamicTaskPrioritization(Weighting):
    """DTP.

    Args:
        smoothing: a, the weight of the newest KPI (0.5, ours).
        gamma: focusing parameter γ, one value or task -> value (1, ours).
        clamp: (low, high) bounds of κ̄ (0.01, 0.99).
        normalize: rescale the weights to Σw = T (the paper does not).
    """

    kind = Kind.LOSSES
    needs_train_kpis = True

    def __init__(
        self,
        smoothing: float = 0.5,
        gamma: float | Mapping[str, float] = 1.0,
        clamp: tuple[float, float] = (0.01, 0.99),
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"DTP smoothing must be in (0, 1], got {smoothing}")
        low, high = (float(v) for v in clamp)
        if not 0.0 < low < high < 1.0:
            raise ValueError(f"DTP clamp must satisfy 0 < low < high < 1, got {clamp}")
        self.smoothing = float(smoothing)
        self.gamma = gamma
        self.clamp = (low, high)
        self.normalize = bool(normalize)

    def reset_state(self) -> None:
        if isinstance(self.gamma, Mapping):
            unknown = sorted(set(self.gamma) - set(self.tasks))
            if unknown:
                raise ValueError(f"DTP gamma given for {unknown}, but the tasks are {list(self.tasks)}")
            gamma = [float(self.gamma.get(t, 1.0)) for t in self.tasks]
        else:
            gamma = [float(self.gamma)] * self.num_tasks
        t = self.num_tasks
        self.register_buffer("gammas", torch.tensor(gamma, dtype=torch.float64))
        self.register_buffer("kpi_smoothed", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("kpi_seen", torch.zeros(t, dtype=torch.bool))
        self.register_buffer("weights", torch.ones(t, dtype=torch.float64))

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        total = None
        for i, t in enumerate(self.tasks):
            term = self.weights[i].to(losses[t].dtype) * at_least_fp32(losses[t])
            total = term if total is None else total + term
        return total, {t: self.weights[i] for i, t in enumerate(self.tasks)}

    def update_kpis(self, kpis: Mapping[str, float]) -> None:
        """Smooth new KPIs (task -> κ in [0, 1]) into κ̄ and recompute the weights."""
        for i, t in enumerate(self.tasks):
            if t not in kpis:
                continue
            kappa = float(kpis[t])
            if not 0.0 <= kappa <= 1.0:
                raise ValueError(f"DTP KPI of {t!r} must be in [0, 1], got {kappa}")
            if bool(self.kpi_seen[i]):
                self.kpi_smoothed[i] = self.smoothing * kappa + (1 - self.smoothing) * self.kpi_smoothed[i]
            else:
                self.kpi_smoothed[i] = kappa
                self.kpi_seen[i] = True
        w = torch.where(self.kpi_seen, dtp_weights(self.kpi_smoothed, self.gammas, *self.clamp), 1.0)
        if self.normalize:
            w = self.num_tasks * w / w.sum()
        self.weights.copy_(w)

    def on_epoch_end(self, stats: EpochStats) -> None:
        prefix = "kpi/"
        self.update_kpis({k[len(prefix) :]: v for k, v in stats.metrics.items() if k.startswith(prefix)})

    def epoch_diagnostics(self) -> dict[str, Tensor]:
        return {"kpi_smoothed": self.kpi_smoothed.clone()}
