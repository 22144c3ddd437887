"""Semantic segmentation and human parts: pooled confusion matrix -> mIoU, per-class IoU, pixel accuracy.

``spec/protocols.md`` §4.1. The prediction is the argmax over channels; a pixel counts when its GT is not
the ignore value, so false positives are counted only on valid GT pixels. IoU_c = TP_c / max(TP_c + FP_c +
FN_c, 1e-8) and mIoU is the mean over **all** classes. A class absent from both GT and prediction over the
whole split (TP + FP + FN = 0) counts, by option ``absent``:

- ``zero``: 0 (MTI-Net, InvPT lineage);
- ``skip``: it is left out of the mean (nanmean; CTAL CNN, and the mtan and Auto-λ presets: their code takes
  a plain mean, which equals this whenever every class occurs and is NaN otherwise);
- ``nan``: the plain mean of mtan's / Auto-λ's code, NaN as soon as one class is absent (bit-faithful
  reproduction only).

Human parts: images without part annotations have an all-ignore target (``spec/protocols.md`` §2.4), so
they contribute nothing to the confusion matrix; this "skip images without parts" rule needs no option.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from densemtl.tasks import IGNORE_INDEX

__all__ = ["ABSENT", "SegmentationMetrics", "confusion_matrix", "scores_from_confusion"]

ABSENT = ("zero", "skip", "nan")


def _labels(pred: Tensor, num_classes: int) -> Tensor:
    """Logits (B, K, H, W) -> argmax labels (B, H, W); integer label maps pass through (int64 or int32)."""
    if pred.is_floating_point():
        if pred.dim() != 4 or pred.shape[1] != num_classes:
            raise ValueError(
                f"segmentation logits must be (B, {num_classes}, H, W), got {tuple(pred.shape)}; "
                "pass integer label maps (B, H, W) instead of probabilities of another class count"
            )
        return pred.argmax(dim=1)
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    return pred if pred.dtype == torch.int64 else pred.to(torch.int32)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Confusion matrix of one batch over valid GT pixels.

    Args:
        pred: logits (B, K, H, W) or int labels (B, H, W).
        target: int labels (B, H, W) or (B, 1, H, W), ``ignore_index`` = ignore.
        num_classes: K.
        ignore_index: GT value excluded.

    Returns:
        int64 (K, K), rows = GT class, columns = predicted class.
    """
    labels = _labels(pred, num_classes)
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if labels.shape != target.shape:
        raise ValueError(f"prediction {tuple(labels.shape)} and target {tuple(target.shape)} differ in shape")
    k = num_classes
    # int32 arithmetic for narrow inputs (uint8 label maps): half the memory traffic of int64
    t = target.reshape(-1)
    t = t if t.dtype == torch.int64 else t.to(torch.int32)
    p = labels.reshape(-1)
    if p.numel():
        p_lo, p_hi = torch.stack(torch.aminmax(p)).tolist()
        if p_lo < 0 or p_hi >= k:
            raise ValueError(f"predicted labels must lie in 0..{k - 1}, got {p_lo}..{p_hi}")
    ignore_row = ignore_index
    if ignore_index < k:  # an unusual ignore value (negative or a class id): move it past the classes
        t = torch.where(t == ignore_index, k, t)
        ignore_row = k
    # one bincount over GT * K + pred (a negative GT gives a negative index); the ignore row lands past the
    # K x K block and is dropped; anything else past the block is a GT label out of range
    try:
        counts = torch.bincount(torch.add(p, t, alpha=k), minlength=(ignore_row + 1) * k)
    except RuntimeError as err:
        raise ValueError(f"target holds negative labels other than the ignore value {ignore_index}") from err
    stray = counts[k * k : ignore_row * k].sum() + counts[(ignore_row + 1) * k :].sum()
    if int(stray):
        raise ValueError(
            f"target holds labels outside 0..{k - 1} other than the ignore value {ignore_index} ({int(stray)} pixels)"
        )
    return counts[: k * k].reshape(k, k)


def scores_from_confusion(confmat: Tensor, absent: str = "zero") -> dict[str, Tensor]:
    """mIoU, per-class IoU and pixel accuracy (all in percent) from a (K, K) confusion matrix.

    Args:
        confmat: (K, K) counts, rows = GT.
        absent: ``"zero"``, ``"skip"`` or ``"nan"`` (see the module docstring).

    Returns:
        ``miou`` and ``pixel_acc`` (0-d float64), ``iou_per_class`` (K,) float64 (NaN for absent classes
        under ``"skip"`` and ``"nan"``). pixel_acc is NaN when no pixel was valid.
    """
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    if absent == "zero":
        iou = tp / union.clamp_min(1e-8)
        miou = iou.mean()
    elif absent in ("skip", "nan"):
        iou = torch.where(union > 0, tp / union.clamp_min(1e-8), torch.full_like(tp, float("nan")))
        miou = iou.nanmean() if absent == "skip" else iou.mean()
    else:
        raise ValueError(f"absent must be one of {ABSENT}, got {absent!r}")
    total = cm.sum()
    pixel_acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=cm.dtype)
    return {"miou": 100 * miou, "pixel_acc": 100 * pixel_acc, "iou_per_class": 100 * iou}


class SegmentationMetrics(Metric):
    """Pooled confusion matrix over the whole evaluation set; DDP-exact (the matrix is all-reduced by sum).

    Args:
        num_classes: K (40 NYUD, 13 NYUv2-13, 21 PASCAL, 7 parts).
        ignore_index: GT value excluded (255 in the sample contract).
        absent: ``"zero"`` (default), ``"skip"`` or ``"nan"``.

    ``update(preds, target)``: logits (B, K, H, W) or labels (B, H, W); target int (B, H, W).
    ``compute()``: ``{"miou", "pixel_acc", "iou_per_class"}`` in percent. State: K² int64, constant.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, absent: str = "zero", **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if absent not in ABSENT:
            raise ValueError(f"absent must be one of {ABSENT}, got {absent!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.absent = absent
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.confmat += confusion_matrix(preds, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, Tensor]:
        return scores_from_confusion(self.confmat, self.absent)
