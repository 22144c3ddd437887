"""The training-time edge *loss* meter: balanced BCE pooled over the evaluation set.

This is a loss, not odsF (``spec/protocols.md`` §4.5): it is what every lineage reports during training,
a trend indicator only. The published edge number is odsF (``densemtl.metrics.edge``).

Unlike the reference meters, the logits go into a logits-based BCE (MTI-Net's and InvPT's meters feed
probabilities into it), so the value equals :func:`densemtl.losses.balanced_bce` pooled over all valid
pixels of the set: Σ [w · y · softplus(−x) + (1 − w) · (1 − y) · softplus(x)] / #valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from densemtl.tasks import IGNORE_INDEX

__all__ = ["EdgeLossMeter"]


class EdgeLossMeter(Metric):
    """Pooled balanced-BCE edge loss (lower is better; reported under the key ``loss``).

    Args:
        pos_weight: w, the positive-class weight (0.95).
        ignore_index: target value excluded.

    ``update(preds, target)``: one logit (B, 1, H, W); target (B, 1, H, W) in {0, 1}, 255 = ignore.
    ``compute()``: ``{"loss": value}`` (NaN when no pixel was valid). State: 2 float64.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, pos_weight: float = 0.95, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 <= pos_weight <= 1:
            raise ValueError(f"pos_weight must lie in [0, 1], got {pos_weight}")
        self.pos_weight = float(pos_weight)
        self.ignore_index = ignore_index
        self.add_state("sums", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if target.dim() == 3:
            target = target[:, None]
        if preds.shape != target.shape:
            raise ValueError(f"edge logits {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        x = preds.double()
        valid = target != self.ignore_index
        positive = valid & (target >= 0.5)
        w = self.pos_weight
        terms = torch.where(positive, w * F.softplus(-x), (1 - w) * F.softplus(x))
        total = torch.where(valid, terms, torch.zeros_like(terms)).sum()
        self.sums += torch.stack([total, valid.sum().double()])

    def compute(self) -> dict[str, Tensor]:
        return {"loss": self.sums[0] / self.sums[1]}
