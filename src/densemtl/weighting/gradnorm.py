"""GradNorm (Chen et al., ICML 2018), ``spec/weighting.md`` §3.2.

Logits p (init 0, LibMTL's init 1 up to a constant), w = T·softmax(p). Epoch 0 is EW (kind ``losses``); it
records the epoch-0 mean training losses L̄(0). From epoch 1: G_t = w_t n_t (n_t = √K_tt), L̃_t = L̄_t / L̄_t(0)
with the rank-averaged step loss, r_t = L̃_t / mean(L̃), target_t = stopgrad(mean(G)·r_t^α),
L_grad = Σ_t |G_t − target_t|; its gradient with respect to p, (∂L_grad/∂p)_j = T z_j (s_j n_j − Σ_t s_t n_t z_t)
with s = sign(G − target) and z = softmax(p), is handed to the engine (no autograd through the rows);
u = Σ_t w_t g_t with w detached. p is trained by the main optimiser in the weighting parameter group.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from densemtl.weighting.base import EpochStats, Kind, StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["GradNorm", "gradnorm_loss_and_grad"]


def gradnorm_loss_and_grad(logits: Tensor, norms: Tensor, ratios: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """L_grad and ∂L_grad/∂p for logits p (T,), gradient norms n (T,) and relative inverse rates r (T,)."""
    t = logits.shape[0]
    z = torch.softmax(logits, dim=0)
    g = t * z * norms
    target = g.mean() * ratios**alpha
    loss = (g - target).abs().sum()
    sn = torch.sign(g - target) * norms
    grad = t * z * (sn - (sn * z).sum())
    return loss, grad


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """GradNorm.

    Args:
        alpha: the asymmetry α (1.5, LibMTL; the paper's range is 0–3).
        space: ``param`` (default, over all shared parameters as LibMTL) or ``rep``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    uses_loss_values = True
    libmtl_name = "GradNorm"
    ddp_ignored_parameters = ("logits",)

    def __init__(
        self, alpha: float = 1.5, space: str | None = None, rep_reduce: str = "sum_batch", accumulation: str = "exact"
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if alpha < 0:
            raise ValueError(f"GradNorm alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._loss_grad = torch.tensor(float("nan"))

    def reset_state(self) -> None:
        self.logits = nn.Parameter(torch.zeros(self.num_tasks))
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    def learnable(self) -> list[nn.Parameter]:
        return []  # p never appears in the task objectives; its gradient is analytic

    def needs(self, ctx: StepContext) -> Kind:
        return Kind.GRAMIAN if bool(self.has_initial) else Kind.LOSSES

    def task_weights(self) -> Tensor:
        return self.num_tasks * torch.softmax(self.logits.detach().float(), dim=0)

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        objective = sum(losses[t] for t in self.tasks)
        return objective, {t: torch.tensor(1.0) for t in self.tasks}

    def epoch_statistics(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"gradnorm_loss": torch.stack([losses[t].detach().float() for t in self.tasks])}

    def on_epoch_end(self, stats: EpochStats) -> None:
        if not bool(self.has_initial) and "gradnorm_loss" in stats.means:
            self.initial_losses.copy_(stats.means["gradnorm_loss"].to(self.initial_losses))
            self.has_initial.fill_(True)

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        if ctx.loss_values is None:
            raise ValueError("GradNorm needs the step loss values")
        norms = torch.sqrt(torch.diagonal(gram).clamp_min(0)).float()
        rel = ctx.loss_values.float().to(norms.device) / self.initial_losses.float().to(norms.device)
        ratios = rel / rel.mean()
        loss, grad = gradnorm_loss_and_grad(self.logits.detach().float().to(norms.device), norms, ratios, self.alpha)
        self._loss_grad = loss.detach()
        w = self.task_weights().to(norms.device)
        return Aggregation(weights=w, coefficients=w, effective=w, param_grads={"logits": grad})

    def diagnostics(self) -> dict[str, Tensor]:
        return {"loss_grad": self._loss_grad}
