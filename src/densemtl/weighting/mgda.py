"""MGDA (Sener and Koltun, NeurIPS 2018), ``spec/weighting.md`` §3.2; in rep space it is MGDA-UB.

α* = argmin_{α ∈ Δ_T} ‖Σ_t α_t g_t / ν_t‖², computed from K and the normalisers ν (``normalize``: none → 1,
l2 → n_t = ‖g_t‖, loss → L̄_t, loss+ → L̄_t n_t, with L̄_t the rank-averaged step loss); u = Σ_t α_t g_t / ν_t.
Native weights α (Σα = 1), effective coefficients α_t / ν_t. The simplex QP is solved exactly in float64 on
K's device, with no host synchronisation, by batched active-set enumeration (``weighting/simplex_qp.py``; for
T = 2 this reproduces the closed form clip(⟨g_2 − g_1, g_2⟩ / ‖g_1 − g_2‖², 0, 1)). Above
``MAX_ENUMERATION_TASKS`` (12) tasks it falls back to the host NNLS solver (``weighting/solvers.py``), which
copies K to the host every step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.simplex_qp import MAX_ENUMERATION_TASKS, simplex_min_norm
from densemtl.weighting.solvers import reference_min_norm_simplex

__all__ = ["MGDA", "MGDAUB", "gradient_normalisers"]

NORMALIZE = ("none", "l2", "loss", "loss+")


def gradient_normalisers(gram: Tensor, loss_values: Tensor | None, normalize: str) -> Tensor:
    """ν (T,) for MGDA's ``normalize`` option, from K's diagonal and the step losses."""
    norms = torch.sqrt(torch.diagonal(gram).clamp_min(0))
    if normalize == "none":
        return torch.ones_like(norms)
    if normalize == "l2":
        return norms
    if loss_values is None:
        raise ValueError(f"MGDA normalize={normalize!r} needs the step loss values")
    loss = loss_values.to(norms)
    return loss if normalize == "loss" else loss * norms


@register_weighting("mgda")
class MGDA(GradientWeighting):
    """MGDA / MGDA-UB.

    Args:
        normalize: gradient normaliser, one of ``none`` (default, LibMTL), ``l2``, ``loss``, ``loss+``.
        space: ``param`` (default) or ``rep`` (MGDA-UB).
        rep_reduce: rep rows ``sum_batch`` or ``flatten``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    uses_loss_values = True
    libmtl_name = "MGDA"
    arg_aliases = {"mgda_gn": "normalize", "gn": "normalize"}

    def __init__(
        self,
        normalize: str = "none",
        space: str | None = None,
        rep_reduce: str = "sum_batch",
        accumulation: str = "exact",
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if normalize not in NORMALIZE:
            raise ValueError(f"MGDA normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
        self.normalize = normalize

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        nu = gradient_normalisers(gram, ctx.loss_values, self.normalize).double()
        scaled = gram.double() / (nu[:, None] * nu[None, :])
        if scaled.shape[0] <= MAX_ENUMERATION_TASKS:
            alpha = simplex_min_norm(scaled)  # on the device, no host sync
        else:  # host fallback for many tasks: one device-to-host copy of K per step
            alpha = torch.from_numpy(reference_min_norm_simplex(scaled.cpu().numpy())).to(gram.device)
        coef = (alpha / nu).to(gram.dtype)
        return Aggregation(weights=alpha.to(gram.dtype), coefficients=coef, effective=coef)


@register_weighting("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB: MGDA in rep space (the upper-bound variant of the paper)."""

    default_space = "rep"
