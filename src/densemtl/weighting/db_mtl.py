"""DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning"), ``spec/weighting.md`` §3.2.

Task objectives f_t = log(L_t + 1e-8) (loss-scale balancing); per committed step k, with β_k = β / k^σ, the EMA
rows ĝ_t ← β_k ĝ_t + (1 − β_k) g_t (ĝ initialised to 0, no bias correction); α_t = max_j ‖ĝ_j‖ / (‖ĝ_t‖ + 1e-8);
u = Σ_t α_t ĝ_t, so every scaled EMA gradient has the largest EMA norm (gradient-magnitude balancing). Heads
receive ∇log L_t with weight 1. Param space only, as in LibMTL. State: ĝ (T, d) fp32 and k, staged and
committed at the end of a taken optimiser step; the new ĝ is written into a second (T, d) buffer, swapped on
commit, so no step allocates (T, d) memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, StepEnd, at_least_fp32, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["DBMTL"]

EPS = 1e-8


@register_weighting("db_mtl")
class DBMTL(GradientWeighting):
    """DB-MTL.

    Args:
        beta: EMA rate β (0.9, LibMTL).
        beta_sigma: decay exponent σ of β_k = β / k^σ (0, LibMTL).
    """

    kind = Kind.TASK_GRADS
    spaces = frozenset({"param"})
    default_space = "param"
    libmtl_name = "DB_MTL"
    arg_aliases = {"DB_beta": "beta", "DB_beta_sigma": "beta_sigma"}

    def __init__(
        self, beta: float = 0.9, beta_sigma: float = 0.0, space: str | None = None, accumulation: str = "exact"
    ) -> None:
        super().__init__(space, accumulation=accumulation)
        if not 0 <= beta <= 1 or beta_sigma < 0:
            raise ValueError(f"DB-MTL needs 0 <= beta <= 1 and beta_sigma >= 0, got {beta}, {beta_sigma}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.ema: Tensor | None = None
        self.steps = 0
        self._staged: Tensor | None = None
        self._spare: Tensor | None = None  # the buffer the next EMA is written into (no (T, d) allocation per step)

    def task_objectives(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.log(at_least_fp32(losses[t]) + EPS) for t in self.tasks}

    def aggregate(self, rows: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        k = self.steps + 1
        beta_k = self.beta / k**self.beta_sigma
        if self.ema is None or self.ema.shape != rows.shape:  # ĝ starts at 0
            ema = rows * (1 - beta_k)
        else:  # β_k ĝ + (1 − β_k) g in one pass over the (T, d) rows, into the spare buffer
            previous = self.ema.to(rows)
            spare = self._spare
            if spare is None or spare.shape != rows.shape or spare.dtype != rows.dtype or spare.device != rows.device:
                spare = self._spare = torch.empty_like(rows)
            ema = torch.lerp(rows, previous, beta_k, out=spare)
        norms = torch.linalg.vector_norm(ema, dim=1)
        alpha = norms.max() / (norms + EPS)
        self._staged = ema
        return Aggregation(weights=alpha, update=alpha @ ema)

    def on_step_end(self, end: StepEnd) -> None:
        staged, self._staged = self._staged, None
        if end.step_taken and staged is not None:
            previous, self.ema = self.ema, staged.detach()
            self._spare = None if previous is None or previous is self.ema else previous  # reused next step
            self.steps += 1

    def method_state(self) -> dict[str, Any]:
        # a copy: the committed buffer becomes the spare one a step later and is overwritten
        return {"ema": None if self.ema is None else self.ema.clone(), "steps": self.steps}

    def load_method_state(self, state: Mapping[str, Any]) -> None:
        self.ema = state.get("ema")
        self.steps = int(state.get("steps", 0))
