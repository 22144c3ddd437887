"""Aligned-MTL (Senushkin et al., CVPR 2023), ``spec/weighting.md`` §3.2; in rep space Aligned-MTL-UB.

K = VΛVᵀ by ``torch.linalg.eigh`` in float64 (never the removed ``torch.symeig``, LibMTL defect §6 #3); the
eigenvalues λ > λ_max·T·ε_fp32 are kept (rank r); B = √λ_r V_r Λ_r^{-1/2} V_rᵀ with λ_r the smallest kept
eigenvalue (``scale="min"``) or their median / root-mean-square; α = B1, u = Σ α_t g_t. The aligned system BG
has Gram λ_r I_r: every singular value equals the chosen scale. Computed on the device without host syncs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["AlignedMTL", "aligned_weights"]

SCALES = ("min", "median", "rmse")


def aligned_weights(gram: Tensor, scale: str = "min") -> Tensor:
    """α = B1 (T,) float64 from K (T, T)."""
    k = gram.double()
    t = k.shape[0]
    lam, vec = torch.linalg.eigh(0.5 * (k + k.T))
    keep = lam > lam.max() * t * torch.finfo(torch.float32).eps
    kept = torch.where(keep, lam, torch.nan)
    if scale == "min":
        ref = torch.where(keep, lam, torch.inf).min()
    elif scale == "median":
        ref = torch.nanmedian(kept)
    else:
        ref = torch.sqrt(torch.nanmean(kept**2))
    inv_sqrt = torch.where(keep, 1.0 / torch.sqrt(torch.where(keep, lam, 1.0)), 0.0)
    b = torch.sqrt(ref) * (vec * inv_sqrt[None, :]) @ vec.T
    return b.sum(dim=1)


@register_weighting("aligned_mtl")
class AlignedMTL(GradientWeighting):
    """Aligned-MTL.

    Args:
        scale: ``min`` (paper, LibMTL), ``median`` or ``rmse`` (torchjd's options).
        space: ``param`` (default) or ``rep`` (Aligned-MTL-UB).
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    libmtl_name = "Aligned_MTL"

    def __init__(
        self, scale: str = "min", space: str | None = None, rep_reduce: str = "sum_batch", accumulation: str = "exact"
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if scale not in SCALES:
            raise ValueError(f"Aligned-MTL scale must be one of {list(SCALES)}, got {scale!r}")
        self.scale = scale

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        alpha = aligned_weights(gram, self.scale).to(gram.dtype)
        return Aggregation(weights=alpha, coefficients=alpha, effective=alpha)
