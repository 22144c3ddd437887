"""Saliency maxF and max-mIoU in the three protocols of ``spec/protocols.md`` §4.4.

=========  =======================================  =============  ==========  ==================
protocol   positive probability p                   thresholds     B           pooling, β²
=========  =======================================  =============  ==========  ==================
mtinet     σ(logit), 8-bit PNG round trip           linspace(0.2,  p > τ       per image, β² = 1
           (``quantize``, on by default)            0.9, 15) f64
atrc       σ(logit) or softmax channel 1            0.05..0.95     p ≥ τ       pooled, β² = 0.3
           (default, clean)                         (19, float32)
invpt      σ(p_atrc · 255 / 255): the InvPT extra   as atrc        p ≥ τ       pooled, β² = 0.3
           sigmoid (opt-in compat; never default)
=========  =======================================  =============  ==========  ==================

Every protocol keeps a fixed number of sums per threshold, so the state is O(1) in the number of images
and ``dist_reduce_fx="sum"`` makes it exact under DDP. ``compute()`` returns percentages:

- ``maxf``: max over thresholds of F(τ);
- ``miou``: ``mtinet``: max_τ of the per-image Jaccard J_i(τ) averaged over images (MTI-Net's saliency
  "mIoU", used by its Δm); ``atrc``/``invpt``: max_τ of the pooled IoU TP / (PP + AP − TP). The latter is
  a densemtl addition: no reference codebase of that lineage reports a saliency IoU.

Numeric fine points reproduced (§4.4):

- ``mtinet`` compares the float32 value ``png / 255`` with float64 thresholds from ``np.linspace``
  (strict ``>``): PNG values 51, 102, 153, 204 count *above* 0.2, 0.4, 0.6, 0.8.
- ``atrc``/``invpt`` thresholds are float32 values (``torch.arange(0.05, 1, 0.05)``; 0.6 is 0.59999996),
  compared in float32 with ``≥``.

``mtinet`` with ``quantize=True`` reproduces the offline 8-bit path: the prediction is written as
``uint8(255 / (1 + exp(-logit)))`` in float32, a cast that truncates (numpy ``astype(np.uint8)``; inferred
from "stored as uint8 s·255"), and read back as ``float32(png) / 255``. Pixels whose target is 255 are left
out of every count (the reference saliency GT has none, so this only matters for padded inputs); an image
without a valid pixel is skipped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "ATRC_THRESHOLDS",
    "MTINET_THRESHOLDS",
    "SaliencyMetrics",
    "positive_probability",
    "quantize_uint8",
]

Protocol = Literal["atrc", "mtinet", "invpt"]
_PROTOCOLS = ("atrc", "mtinet", "invpt")

MTINET_THRESHOLDS = torch.from_numpy(np.linspace(0.2, 0.9, 15))
"""float64 (15,): ``np.linspace(0.2, 0.9, 15)``, the MTI-Net offline thresholds (compared with ``>``)."""

ATRC_THRESHOLDS = torch.arange(0.05, 1.0, 0.05, dtype=torch.float32)
"""float32 (19,): 0.05, 0.10, ..., 0.95 as float32 values (index 11 is 0.59999996), compared with ``≥``."""


def positive_probability(preds: Tensor, from_logits: bool = True) -> Tensor:
    """The positive-class probability of a 1- or 2-channel saliency output.

    Args:
        preds: (B, 1, H, W) one logit (or probability), or (B, 2, H, W) two-way logits (or probabilities).
        from_logits: True when ``preds`` are logits.

    Returns:
        (B, H, W) float32 in [0, 1]: σ(logit) for one channel, softmax channel 1 for two channels.
    """
    if preds.dim() != 4 or preds.shape[1] not in (1, 2):
        raise ValueError(f"saliency predictions must be (B, 1, H, W) or (B, 2, H, W), got {tuple(preds.shape)}")
    x = preds.float()
    if preds.shape[1] == 1:
        return torch.sigmoid(x[:, 0]) if from_logits else x[:, 0]
    return torch.softmax(x, dim=1)[:, 1] if from_logits else x[:, 1]


def quantize_uint8(preds: Tensor, from_logits: bool = True) -> Tensor:
    """The 8-bit PNG value an offline export writes: ``uint8(255 · p)`` with truncation.

    Args:
        preds: (B, 1, H, W) or (B, 2, H, W) as in :func:`positive_probability`.
        from_logits: True when ``preds`` are logits.

    Returns:
        (B, H, W) uint8. One-logit inputs follow the MTI-Net formula ``255 / (1 + exp(-x))`` in float32.
    """
    if from_logits and preds.dim() == 4 and preds.shape[1] == 1:
        scaled = 255.0 / (1.0 + torch.exp(-preds[:, 0].float()))
    else:
        scaled = positive_probability(preds, from_logits) * 255.0
    return scaled.clamp(0, 255).to(torch.uint8)  # float -> uint8 truncates toward zero


def _check_target(preds: Tensor, target: Tensor) -> Tensor:
    """(B, H, W) target from (B, 1, H, W) or (B, H, W), shape-checked against the predictions."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 3 or target.shape[0] != preds.shape[0] or target.shape[-2:] != preds.shape[-2:]:
        raise ValueError(
            f"saliency target {tuple(target.shape)} does not match predictions {tuple(preds.shape)}; "
            "expected (B, 1, H, W) or (B, H, W) with the same B, H, W"
        )
    return target


def _counts_at_least(values: Tensor, bucket: Tensor, num_images: int, num_thresholds: int) -> Tensor:
    """Per image, how many entries have ``bucket > k`` for every threshold index k.

    Args:
        values: (B, N) bool, which entries to count.
        bucket: (B, N) int64 in [0, T]: the number of thresholds an entry passes.
        num_images: B.
        num_thresholds: T.

    Returns:
        (B, T) int64.
    """
    rows = torch.arange(num_images, device=bucket.device)[:, None] * (num_thresholds + 1)
    flat = (rows + bucket)[values]
    hist = torch.bincount(flat, minlength=num_images * (num_thresholds + 1)).view(num_images, -1)
    # entries passing exactly j thresholds pass thresholds 0..j-1: reverse cumulative sum over j > k
    return hist.flip(1).cumsum(1).flip(1)[:, 1:]


class SaliencyMetrics(Metric):
    """Saliency maxF (and max-mIoU) under one protocol of ``spec/protocols.md`` §4.4, in percent.

    Args:
        protocol: ``"atrc"`` (default: pooled, β² = 0.3, p ≥ τ at 0.05..0.95), ``"mtinet"`` (per-image
            P/R/J averaged, β² = 1, p > τ at linspace(0.2, 0.9, 15)) or ``"invpt"`` (``atrc`` with the
            InvPT extra sigmoid; for comparison with published InvPT/TaskPrompter/MLoRE/CTAL tables only).
        compat: with ``protocol="atrc"``, True selects ``"invpt"`` (the spec's ``compat`` flag).
        quantize: pass the prediction through the 8-bit PNG round trip first. None: the protocol's
            default (True for ``mtinet``, whose reference evaluation reads PNGs; False otherwise).
        from_logits: True when predictions are logits; False for probabilities in [0, 1].
        ignore_index: target value left out of every count.

    ``update(preds, target)``: ``preds`` (B, 1, H, W) one logit or (B, 2, H, W) two-way logits (the
    channel count decides sigmoid vs softmax channel 1); ``target`` (B, 1, H, W) or (B, H, W) in
    {0, 1, ignore_index}.

    ``compute()``: ``{"maxf": %, "miou": %}`` as float64 scalars. :meth:`curves` gives the per-threshold
    values. State: ``mtinet`` 3 × 15 float64 sums of per-image P_i, R_i, J_i plus an image count;
    ``atrc``/``invpt`` 2 × 19 int64 counts (TP, PP) plus AP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        protocol: Protocol = "atrc",
        compat: bool = False,
        quantize: bool | None = None,
        from_logits: bool = True,
        ignore_index: int = IGNORE_INDEX,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in _PROTOCOLS:
            raise ValueError(f"unknown saliency protocol {protocol!r}; available: {sorted(_PROTOCOLS)}")
        if compat:
            if protocol == "mtinet":
                raise ValueError("compat=True selects the InvPT quirk of the 'atrc' protocol, not of 'mtinet'")
            protocol = "invpt"
        self.protocol: str = protocol
        self.quantize = (protocol == "mtinet") if quantize is None else bool(quantize)
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        if protocol == "mtinet":
            self.register_buffer("thresholds", MTINET_THRESHOLDS.clone(), persistent=False)
            t = len(MTINET_THRESHOLDS)
            for name in ("sum_p", "sum_r", "sum_j"):
                self.add_state(name, torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("num_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        else:
            self.register_buffer("thresholds", ATRC_THRESHOLDS.clone(), persistent=False)
            t = len(ATRC_THRESHOLDS)
            self.add_state("tp", torch.zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("pp", torch.zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("ap", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    # -- probability under the protocol ---------------------------------------------------------------
    def _probability(self, preds: Tensor) -> Tensor:
        """(B, H, W) probability compared with the thresholds (float32)."""
        if self.quantize:
            p = quantize_uint8(preds, self.from_logits).float() / 255.0
        else:
            p = positive_probability(preds, self.from_logits)
        if self.protocol == "invpt":
            # the pipeline stores softmax_1 · 255; the meter divides by 255 and applies a sigmoid again
            p = torch.sigmoid((p * 255.0) / 255.0)
        return p

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch: ``preds`` (B, 1|2, H, W), ``target`` (B, 1, H, W) or (B, H, W)."""
        p = self._probability(preds)
        target = _check_target(preds, target)
        b = p.shape[0]
        p = p.reshape(b, -1).contiguous()
        target = target.reshape(b, -1)
        valid = target != self.ignore_index
        positive = valid & (target > 0.5)
        tau = self.thresholds.to(p.device)
        t = tau.numel()
        if self.protocol == "mtinet":
            # strict p > τ in float64: the number of thresholds strictly below p
            bucket = torch.bucketize(p.double(), tau, right=False)
        else:
            # p ≥ τ in float32: the number of thresholds at or below p
            bucket = torch.bucketize(p, tau.float(), right=True)
        pp = _counts_at_least(valid, bucket, b, t)
        tp = _counts_at_least(positive, bucket, b, t)
        ap = positive.sum(1)
        if self.protocol == "mtinet":
            self._update_per_image(tp, pp, ap, valid.any(1))
        else:
            self.tp += tp.sum(0)
            self.pp += pp.sum(0)
            self.ap += ap.sum()

    def _update_per_image(self, tp: Tensor, pp: Tensor, ap: Tensor, has_pixels: Tensor) -> None:
        """Add per-image P_i, R_i, J_i (MTI-Net definitions, §4.4 (a)) of the images with valid pixels."""
        tp, pp, ap = tp[has_pixels].double(), pp[has_pixels].double(), ap[has_pixels].double()[:, None]
        fp = pp - tp
        fn = ap - tp
        precision = tp / (tp + fp + 1e-12)
        recall = tp / (tp + fn + 1e-12)
        union = tp + fp + fn
        jaccard = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(union))
        self.sum_p += precision.sum(0)
        self.sum_r += recall.sum(0)
        self.sum_j += jaccard.sum(0)
        self.num_images += int(has_pixels.sum())

    def curves(self) -> dict[str, Tensor]:
        """Per-threshold values (fractions, not percent), computed from the accumulated state.

        Returns:
            ``threshold``, ``precision``, ``recall``, ``f``, ``iou``: float64 (T,) tensors.
        """
        tau = self.thresholds.double()
        if self.protocol == "mtinet":
            n = self.num_images.double()
            precision, recall, iou = self.sum_p / n, self.sum_r / n, self.sum_j / n
            f = 2 * precision * recall / (precision + recall + 1e-12)
        else:
            tp, pp, ap = self.tp.double(), self.pp.double(), self.ap.double()
            precision, recall = tp / pp, tp / ap
            beta2 = 0.3
            f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
            f = torch.nan_to_num(f, nan=0.0)
            iou = torch.nan_to_num(tp / (pp + ap - tp), nan=0.0)
        return {"threshold": tau, "precision": precision, "recall": recall, "f": f, "iou": iou}

    def compute(self) -> dict[str, Tensor]:
        """``{"maxf": %, "miou": %}`` (NaN for ``mtinet`` when no image was seen)."""
        c = self.curves()
        return {"maxf": 100.0 * c["f"].max(), "miou": 100.0 * c["iou"].max()}
