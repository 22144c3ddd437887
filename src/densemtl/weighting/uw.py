"""Uncertainty weighting (UW; Kendall, Gal and Cipolla, CVPR 2018), ``spec/weighting.md`` §3.2.

``form="kendall"``: learnable s_t = log σ_t², objective Σ_t [c_t e^{−s_t} L_t + ½ s_t] with c_t = ½ for
regression tasks and 1 for tasks in ``classification_tasks``; native weight c_t e^{−s_t}.
``form="log1p_sigma2"``: learnable σ_t, objective Σ_t [L_t / (2σ_t²) + log(1 + σ_t²)]; weight 1/(2σ_t²).
The parameters are trained by the main optimiser in their own group (``weight_lr``, weight decay 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from densemtl.weighting.base import Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = ["UncertaintyWeighting"]

FORMS = ("kendall", "log1p_sigma2")


@register_weighting("uw")
class UncertaintyWeighting(Weighting):
    """UW with learnable log-variances (or σ for ``log1p_sigma2``).

    Args:
        form: ``kendall`` (default) or ``log1p_sigma2``.
        init: initial s_t (``kendall``; default −0.5 as LibMTL, initial weight 0.824361) or σ_t
            (``log1p_sigma2``; default 1).
        classification_tasks: tasks using Kendall's classification form e^{−s} L + ½ s.
        weight_lr: learning rate of the parameters (default: the model's base LR).
    """

    kind = Kind.LOSSES
    libmtl_name = "UW"

    def __init__(
        self,
        form: str = "kendall",
        init: float | None = None,
        classification_tasks: Sequence[str] = (),
        weight_lr: float | None = None,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"UW form must be one of {list(FORMS)}, got {form!r}")
        if weight_lr is not None and not weight_lr > 0:
            raise ValueError(f"UW weight_lr must be > 0, got {weight_lr}")
        self.form = form
        self.init = float(init) if init is not None else (-0.5 if form == "kendall" else 1.0)
        if form == "log1p_sigma2" and self.init == 0:
            raise ValueError("UW log1p_sigma2 needs a non-zero initial sigma")
        self.classification_tasks = tuple(classification_tasks)
        self.weight_lr = weight_lr

    def reset_state(self) -> None:
        unknown = sorted(set(self.classification_tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"UW classification_tasks {unknown} are not among the tasks {list(self.tasks)}")
        self.params = nn.Parameter(torch.full((self.num_tasks,), self.init, dtype=torch.float32))

    def weight_values(self) -> Tensor:
        """Native weights (T,), detached."""
        p = self.params.detach()
        if self.form == "kendall":
            coef = torch.tensor([1.0 if t in self.classification_tasks else 0.5 for t in self.tasks], dtype=p.dtype)
            return coef.to(p.device) * torch.exp(-p)
        return 1.0 / (2.0 * p**2)

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        total = None
        for i, t in enumerate(self.tasks):
            loss = at_least_fp32(losses[t])
            p = self.params[i]
            if self.form == "kendall":
                coef = 1.0 if t in self.classification_tasks else 0.5
                term = coef * torch.exp(-p) * loss + 0.5 * p
            else:
                term = loss / (2.0 * p**2) + torch.log1p(p**2)
            total = term if total is None else total + term
        w = self.weight_values()
        return total, {t: w[i] for i, t in enumerate(self.tasks)}

    def diagnostics(self) -> dict[str, Tensor]:
        return {
            f"{'s' if self.form == 'kendall' else 'sigma'}/{t}": self.params[i].detach()
            for i, t in enumerate(self.tasks)
        }
