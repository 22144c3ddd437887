"""Fast adaptive multitask optimisation (FAMO; Liu et al., NeurIPS 2023), ``spec/weighting.md`` §3.2.

Logits ξ (init 0), z = softmax(ξ), D_t = L_t − L*_t + 1e-8. Objective Σ_t z_t log D_t / c with
c = Σ_t z_t / D_t detached, so the effective weights z_t / (c·D_t) sum to 1; z is a constant in the
objective. After the optimiser step the engine recomputes the losses on the same batch (``no_grad``,
normalisation statistics frozen); δ_t = log D_t(before) − log D_t(after) is averaged over DDP ranks,
ξ.grad = J_softmax(ξ)ᵀ δ, and ξ takes one Adam step (lr ``w_lr``, coupled L2 ``gamma``). ξ and the
Adam moments are buffers: updated outside the backward pass and outside DDP's reducer (§1.7 rule 8).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, StepEnd, Weighting, at_least_fp32, register_weighting

__all__ = ["FAMO"]

EPS = 1e-8
POST_STEP_BN = ("freeze", "update")


@register_weighting("famo")
class FAMO(Weighting):
    """FAMO.

    Args:
        w_lr: Adam learning rate of ξ (0.025).
        gamma: coupled L2 weight decay of ξ (1e-3: the official NYUv2 script and LibMTL).
        max_norm: clip norm of the shared parameters' gradient (1.0, official); 0 disables.
        min_losses: L*_t, one value or task -> value (0).
        post_step_bn: ``freeze`` (default: normalisation running statistics are restored after the
            post-step forward) or ``update`` (both reference implementations).
        betas: Adam (β1, β2).
        adam_eps: Adam ε.
    """

    kind = Kind.LOSSES_POST_STEP
    owns_optimizer = True
    libmtl_name = "FAMO"

    def __init__(
        self,
        w_lr: float = 0.025,
        gamma: float = 1e-3,
        max_norm: float = 1.0,
        min_losses: float | Mapping[str, float] = 0.0,
        post_step_bn: str = "freeze",
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if not w_lr > 0:
            raise ValueError(f"FAMO w_lr must be > 0, got {w_lr}")
        if gamma < 0 or max_norm < 0:
            raise ValueError(f"FAMO gamma and max_norm must be >= 0, got {gamma}, {max_norm}")
        if post_step_bn not in POST_STEP_BN:
            raise ValueError(f"FAMO post_step_bn must be one of {list(POST_STEP_BN)}, got {post_step_bn!r}")
        self.w_lr = float(w_lr)
        self.gamma = float(gamma)
        self.max_norm = float(max_norm)
        self.min_losses = min_losses
        self.post_step_bn = post_step_bn
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = float(adam_eps)
        self._pre: Tensor | None = None

    def reset_state(self) -> None:
        t = self.num_tasks
        if isinstance(self.min_losses, Mapping):
            unknown = sorted(set(self.min_losses) - set(self.tasks))
            if unknown:
                raise ValueError(f"FAMO min_losses given for {unknown}, but the tasks are {list(self.tasks)}")
            mins = [float(self.min_losses.get(name, 0.0)) for name in self.tasks]
        else:
            mins = [float(self.min_losses)] * t
        self.register_buffer("min_loss_values", torch.tensor(mins, dtype=torch.float32))
        self.register_buffer("xi", torch.zeros(t, dtype=torch.float32))
        self.register_buffer("adam_m", torch.zeros(t, dtype=torch.float32))
        self.register_buffer("adam_v", torch.zeros(t, dtype=torch.float32))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))

    def _gaps(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        return [
            at_least_fp32(losses[t]) - self.min_loss_values[i].to(losses[t].dtype) + EPS
            for i, t in enumerate(self.tasks)
        ]

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        gaps = self._gaps(losses)
        d = torch.stack([g.detach() for g in gaps])
        z = torch.softmax(self.xi.to(d.dtype), dim=0)
        c = (z / d).sum()
        objective = sum(z[i] * torch.log(g) for i, g in enumerate(gaps)) / c
        self._pre = d
        w = z / (c * d)
        return objective, {t: w[i] for i, t in enumerate(self.tasks)}

    def xi_gradient(self, delta: Tensor) -> Tensor:
        """J_softmax(ξ)ᵀ δ: (ξ.grad)_t = z_t (δ_t − z·δ)."""
        z = torch.softmax(self.xi.to(delta.dtype), dim=0)
        return z * (delta - (z * delta).sum())

    def adam_step(self, grad: Tensor) -> None:
        """One Adam step on ξ with coupled L2 weight decay ``gamma`` (as ``torch.optim.Adam``)."""
        grad = grad.to(self.xi) + self.gamma * self.xi
        b1, b2 = self.betas
        self.adam_steps += 1
        k = int(self.adam_steps)
        self.adam_m.mul_(b1).add_(grad, alpha=1 - b1)
        self.adam_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.adam_v / (1 - b2**k)).sqrt() + self.adam_eps
        self.xi.sub_(self.w_lr / (1 - b1**k) * self.adam_m / denom)

    def on_step_end(self, end: StepEnd) -> None:
        pre, self._pre = self._pre, None
        if not end.step_taken or end.post_losses is None or pre is None:
            return
        post = torch.stack(self._gaps(end.post_losses)).to(pre)
        delta = end.reduce_mean(torch.log(pre) - torch.log(post))
        self.adam_step(self.xi_gradient(delta))

    def diagnostics(self) -> dict[str, Tensor]:
        z = torch.softmax(self.xi, dim=0)
        return {f"z/{t}": z[i] for i, t in enumerate(self.tasks)}
