"""Nash-MTL (Navon et al., ICML 2022), ``spec/weighting.md`` §3.2, without cvxpy.

α > 0 solves the bargaining system α_t (Kα)_t = 1 for all t (unnormalised K). Solver: deterministic float64
damped Newton (``weighting/solvers.py``), warm-started from the previous α (initially 1); accepted when
‖Kα − 1/α‖ ≤ 1e-6 ‖1/α‖, otherwise the previous α is reused and the failure counted. u = Σ α_t g_t; heads are
weighted by α_t; the engine clips the shared gradient norm to ``max_norm``. With ``update_every`` > 1 the
steps in between are of kind ``losses`` with the previous α (objective Σ α_t L_t). α ∝ 1/‖g‖.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, StepEnd, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.solvers import nash_bargaining

__all__ = ["NashMTL"]


@register_weighting("nash_mtl")
class NashMTL(GradientWeighting):
    """Nash-MTL.

    Args:
        update_every: solve for α every this many committed steps (1, LibMTL's reference run).
        max_norm: clip norm of the shared gradient (1.0); 0 disables.
        tol: residual acceptance of the solver.
        max_iter: Newton iteration limit (the reference's CCCP uses ``optim_niter`` = 20 outer iterations).
        space: ``param`` (default) or ``rep``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    heads = "weighted"
    libmtl_name = "Nash_MTL"
    arg_aliases = {"update_weights_every": "update_every", "optim_niter": "max_iter"}

    def __init__(
        self,
        update_every: int = 1,
        max_norm: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 100,
        space: str | None = None,
        rep_reduce: str = "sum_batch",
        accumulation: str = "exact",
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if int(update_every) < 1:
            raise ValueError(f"Nash-MTL update_every must be >= 1, got {update_every}")
        if max_norm < 0 or not tol > 0 or int(max_iter) < 1:
            raise ValueError(f"Nash-MTL needs max_norm >= 0, tol > 0, max_iter >= 1; got {max_norm}, {tol}, {max_iter}")
        self.update_every = int(update_every)
        self.max_norm = float(max_norm)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self._staged: Tensor | None = None
        self.failures = 0
        self._residual = float("nan")
        self._iterations = 0

    def reset_state(self) -> None:
        self.register_buffer("alpha", torch.ones(self.num_tasks, dtype=torch.float64))

    def needs(self, ctx: StepContext) -> Kind:
        return Kind.GRAMIAN if (ctx.step - 1) % self.update_every == 0 else Kind.LOSSES

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        alpha = self.alpha.float()
        objective = sum(alpha[i] * losses[t].float() for i, t in enumerate(self.tasks))
        return objective, {t: alpha[i] for i, t in enumerate(self.tasks)}

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        previous = self.alpha.cpu().numpy()
        alpha, residual, iterations, ok = nash_bargaining(
            gram.double().cpu().numpy(), start=previous, tol=self.tol, max_iter=self.max_iter
        )
        self._residual, self._iterations = residual, iterations
        if not ok or not np.all(np.isfinite(alpha)):
            self.failures += 1
            alpha = previous
        staged = torch.from_numpy(np.asarray(alpha, dtype=np.float64)).to(self.alpha.device)
        self._staged = staged
        a = staged.to(gram.device, gram.dtype)
        return Aggregation(weights=a, coefficients=a, effective=a)

    def on_step_end(self, end: StepEnd) -> None:
        staged, self._staged = self._staged, None
        if end.step_taken and staged is not None:
            self.alpha.copy_(staged)

    def diagnostics(self) -> dict[str, Tensor]:
        return {
            "residual": torch.tensor(self._residual),
            "iterations": torch.tensor(float(self._iterations)),
            "failures": torch.tensor(float(self.failures)),
        }

    def method_state(self) -> dict[str, Any]:
        return {"failures": self.failures}

    def load_method_state(self, state: Mapping[str, Any]) -> None:
        self.failures = int(state.get("failures", 0))
