"""Edge odsF in Python (``spec/protocols.md`` §4.5): **approximate** until validated against SEISM.

The published odsF comes from MATLAB SEISM. :class:`EdgeMetrics` re-implements its steps, per image:

1. E = σ(logit), by default through the 8-bit PNG the export writes (``uint8(255 / (1 + exp(-x)))``,
   truncated, read back as ``png / 255`` in float64);
2. GT boundary map G from the target edge map: ``gt="thin"`` thins ``target == 1``; ``gt="seg2bmap"`` reads
   the target as a label image, applies BSDS seg2bmap and thins (what SEISM does with NYUD ``edge/*.png``);
3. for every threshold τ: ``E >= τ`` (SEISM's ``read_one_png``, MTI-Net's reader: ``png / 255 >= t`` with t the
   threshold's two-decimal value, so PNG values 51, 102, 153, 204 count at 0.2, 0.4, 0.6, 0.8; no NMS), thinned;
4. one-to-one matching of predicted to GT boundary pixels within maxDist × the image diagonal
   (:mod:`densemtl.metrics.boundary`), giving cntP, sumP, cntR, sumR;
5. the counts are summed over images (state: T × 4 integers), and
   ODS F = max_τ F(τ) with P = ΣcntP / ΣsumP, R = ΣcntR / ΣsumR (if ΣsumR = 0 and ΣcntP = 0: R = 1, P = 0;
   if ΣsumP = 0: P = 1, R = 0; F = 0 when P + R = 0). OIS picks each image's best threshold.

Differences from SEISM (why the number is approximate):

- matching: maximum-cardinality matching of pixel pairs at distance ≤ radius, instead of BSDS
  ``correspondPixels``' minimum-cost assignment with outlier costs; the matched counts agree unless that
  solver trades a pair for two outliers (see :mod:`densemtl.metrics.boundary`); which pixels pair up
  among equally large matchings (ties) does not change the counts;
- thinning: ``skimage.morphology.thin`` semantics (Guo-Hall), believed equal to MATLAB ``bwmorph`` 'thin',
  not verified;
- no NMS: SEISM's InvPT reader (``read_one_cont_png``) applies Dollár's structured-edge NMS first, so scores
  are comparable with MTI-Net-reader numbers only (``nms=True`` is not implemented);
- thresholds: float64 ``k / 100``, the correctly rounded two-decimal values SEISM compares with;
- ODS is the maximum over the sampled thresholds (no interpolation between them); AP is not computed;
- image size: the diagonal is that of the target given to ``update``: pass the unpadded original-size
  maps (the engine crops padding before updating); pixels whose target is 255 are removed from both maps.

Cost: thinning and matching run on the CPU (numpy/scipy, one core) for every image and threshold:
about 0.5 s per 240×320 image and 1.6–2.2 s per 480×640 image at 99 thresholds on a slow shared CPU
(``benchmarks/bench_odsf.py``). For per-epoch validation use the loss meter only (``odsf=False`` in
:func:`densemtl.metrics.collection.build_task_metrics`) or fewer ``thresholds``; keep 99 for reported numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from densemtl.metrics.boundary import radius_pixels, seg2bmap, sweep_counts, thin
from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "EDGE_SETTINGS",
    "MAX_DIST",
    "EdgeMetrics",
    "edge_probability",
    "edge_thresholds",
    "ods_curves",
]

MAX_DIST: dict[str, float] = {"pascal": 0.0075, "nyud": 0.011}
"""Matching tolerance as a fraction of the image diagonal per dataset family (§4.5)."""

EDGE_SETTINGS: dict[str, dict[str, object]] = {
    # SEISM reads NYUD's edge/<id>.png as a label image: seg2bmap, then thinning
    "nyud": {"max_dist": MAX_DIST["nyud"], "gt": "seg2bmap"},
    # PASCAL's GT is seg2bmap of the LabelMap; the sample contract carries its thinned boundaries
    "pascal": {"max_dist": MAX_DIST["pascal"], "gt": "thin"},
}
"""odsF settings of each dataset family (``spec/protocols.md`` §4.5), used by every protocol preset."""


def edge_thresholds(thresholds: int | Sequence[float] | str = 99) -> np.ndarray:
    """The threshold list.

    Args:
        thresholds: an int n gives ``k / (n + 1)`` for k = 1..n (99: 0.01..0.99, MTI-Net's reader);
            ``"hed"`` gives SEISM's HED list 0.001, 0.01..0.99, 0.999 (101 values); a sequence is used as is.

    Returns:
        (T,) float64.
    """
    if isinstance(thresholds, str):
        if thresholds != "hed":
            raise ValueError(f"unknown threshold list {thresholds!r}; expected an int, a sequence or 'hed'")
        return np.concatenate([[0.001], np.arange(1, 100) / 100, [0.999]])
    if isinstance(thresholds, int):
        if thresholds < 1:
            raise ValueError(f"the number of thresholds must be positive, got {thresholds}")
        return np.arange(1, thresholds + 1) / (thresholds + 1)
    out = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if out.size == 0 or not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"thresholds must be a non-empty list of values in [0, 1], got {thresholds!r}")
    return out


def edge_probability(logits: Tensor, from_logits: bool = True, quantize: bool = True) -> np.ndarray:
    """Edge strength E in [0, 1] as SEISM reads it.

    Args:
        logits: (H, W) or (1, H, W) one logit (or probability when ``from_logits`` is False).
        from_logits: True for logits.
        quantize: pass through the exported uint8 PNG: ``uint8(255 / (1 + exp(-x)))`` (float32, truncated),
            then ``png / 255`` in float64.

    Returns:
        (H, W) float64.
    """
    x = logits.detach().float().reshape(logits.shape[-2:])
    if quantize:
        scaled = 255.0 / (1.0 + torch.exp(-x)) if from_logits else x * 255.0
        png = scaled.clamp(0, 255).to(torch.uint8).cpu().numpy()
        return png.astype(np.float64) / 255.0
    prob = torch.sigmoid(x) if from_logits else x
    return prob.cpu().double().numpy()


def _rates(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """P, R, F (float64) of count rows (..., 4) = (cntP, sumP, cntR, sumR) with the §4.5 conventions."""
    c = counts.double()
    cnt_p, sum_p, cnt_r, sum_r = c.unbind(-1)
    precision = cnt_p / sum_p.clamp_min(1)
    recall = cnt_r / sum_r.clamp_min(1)
    no_gt = (sum_r == 0) & (cnt_p == 0)
    recall = torch.where(no_gt, torch.ones_like(recall), recall)
    precision = torch.where(no_gt, torch.zeros_like(precision), precision)
    no_pred = sum_p == 0
    precision = torch.where(no_pred, torch.ones_like(precision), precision)
    recall = torch.where(no_pred, torch.zeros_like(recall), recall)
    total = precision + recall
    f = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), torch.zeros_like(total))
    return precision, recall, f


def ods_curves(counts: Tensor) -> dict[str, Tensor]:
    """Precision, recall and F per threshold of pooled counts (T, 4) (fractions, float64)."""
    precision, recall, f = _rates(counts)
    return {"precision": precision, "recall": recall, "f": f}


def _as_maps(x: Tensor | Sequence[Tensor], what: str) -> list[Tensor]:
    """A list of (H, W) maps from a (B, 1, H, W) / (B, H, W) tensor or a sequence of (1, H, W) / (H, W)."""
    if isinstance(x, Tensor):
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3:
            raise ValueError(f"edge {what} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
        return list(x)
    maps = []
    for item in x:
        if item.dim() == 3 and item.shape[0] == 1:
            item = item[0]
        if item.dim() != 2:
            raise ValueError(f"each edge {what} map must be (1, H, W) or (H, W), got {tuple(item.shape)}")
        maps.append(item)
    return maps


class EdgeMetrics(Metric):
    """Edge odsF (and oisF) in percent, computed in Python; **approximate** (module docstring).

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (0.0075 PASCAL, 0.011 NYUD;
            :data:`MAX_DIST`). Required, directly or through ``family``: there is no silent default.
        thresholds: an int n (``k / (n + 1)``, 99 = 0.01..0.99), ``"hed"`` or an explicit list; see
            :func:`edge_thresholds`.
        nms: structured-edge NMS before binarising (SEISM's InvPT reader); not implemented, must be False.
        from_logits: True when predictions are logits, False for probabilities in [0, 1].
        quantize: score the 8-bit PNG the export writes (default, as SEISM sees it).
        gt: ``"thin"`` (thinned ``target == 1``) or ``"seg2bmap"`` (target read as a label image, BSDS
            seg2bmap, thinned: SEISM's treatment of NYUD ``edge/*.png``). Default: the family's, else thin.
        family: dataset family (``nyud``, ``pascal``) whose :data:`EDGE_SETTINGS` fill ``max_dist`` and
            ``gt`` where they are not given.
        ignore_index: target value removed from both maps.

    ``update(preds, target)``: ``preds`` (B, 1, H, W) logits and ``target`` (B, 1, H, W) in {0, 1, 255}
    (or (B, H, W), or sequences of per-image (1, H, W) maps of varying sizes). The diagonal is that of each
    target: give unpadded, original-size maps.

    ``compute()``: ``{"odsf": %, "oisf": %, "ods_threshold": τ}`` (float64 scalars). State: T × 4 int64
    pooled counts, 4 int64 OIS counts and an image count, whatever the number of images.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        max_dist: float | None = None,
        thresholds: int | Sequence[float] | str = 99,
        nms: bool = False,
        from_logits: bool = True,
        quantize: bool = True,
        gt: Literal["thin", "seg2bmap"] | None = None,
        family: str | None = None,
        ignore_index: int = IGNORE_INDEX,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if family and family not in EDGE_SETTINGS:
            raise ValueError(
                f"no edge odsF settings for dataset family {family!r} (known: {sorted(EDGE_SETTINGS)}); "
                "give max_dist (a fraction of the image diagonal) and gt explicitly"
            )
        settings = EDGE_SETTINGS.get(family or "", {})
        max_dist = settings.get("max_dist") if max_dist is None else max_dist
        gt = settings.get("gt", "thin") if gt is None else gt
        if max_dist is None:
            raise ValueError(
                "edge odsF needs max_dist, the matching tolerance as a fraction of the image diagonal: 0.011 for "
                "NYUD-v2, 0.0075 for PASCAL-Context (spec/protocols.md §4.5); set it, or the dataset family"
            )
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal in (0, 1), got {max_dist}")
        if nms:
            raise ValueError("nms=True (structured-edge NMS of SEISM's InvPT reader) is not implemented")
        if gt not in ("thin", "seg2bmap"):
            raise ValueError(f"unknown gt mode {gt!r}; expected 'thin' or 'seg2bmap'")
        self.max_dist = float(max_dist)
        self.thresholds = edge_thresholds(thresholds)
        self.nms = nms
        self.from_logits = from_logits
        self.quantize = quantize
        self.gt = gt
        self.ignore_index = ignore_index
        t = len(self.thresholds)
        self.add_state("counts", torch.zeros(t, 4, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("ois_counts", torch.zeros(4, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _gt_map(self, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(H, W) bool thinned GT boundary map of one target (ignored pixels count as background)."""
        if self.gt == "thin":
            return thin((target > 0.5) & valid)
        labels = np.where(valid, target > 0.5, False).astype(np.uint8)
        return thin(seg2bmap(labels))

    def image_counts(self, pred: Tensor, target: Tensor) -> np.ndarray:
        """Counts (T, 4) = (cntP, sumP, cntR, sumR) per threshold of one image.

        Args:
            pred: (H, W) logit (or probability) map.
            target: (H, W) target in {0, 1, ignore_index}.
        """
        if pred.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"edge prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
        prob = edge_probability(pred, self.from_logits, self.quantize)
        tgt = target.detach().cpu().float().numpy()
        valid = tgt != self.ignore_index
        prob[~valid] = -1.0  # below every threshold, 0 included
        gt = self._gt_map(tgt, valid)
        return sweep_counts(prob, gt, self.thresholds, radius_pixels(self.max_dist, tgt.shape))

    def update(self, preds: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor]) -> None:
        """Accumulate images: ``preds`` (B, 1, H, W) logits, ``target`` (B, 1, H, W) (or per-image lists)."""
        pred_maps, target_maps = _as_maps(preds, "predictions"), _as_maps(target, "targets")
        if len(pred_maps) != len(target_maps):
            raise ValueError(f"{len(pred_maps)} edge predictions but {len(target_maps)} targets")
        for pred, tgt in zip(pred_maps, target_maps):
            counts = torch.from_numpy(self.image_counts(pred, tgt)).to(self.counts.device)
            self.counts += counts
            _, _, f = _rates(counts)
            self.ois_counts += counts[int(torch.argmax(f))]
            self.num_images += 1

    def curves(self) -> dict[str, Tensor]:
        """Pooled per-threshold ``threshold``, ``precision``, ``recall``, ``f`` (fractions, float64)."""
        return {"threshold": torch.from_numpy(self.thresholds), **ods_curves(self.counts.cpu())}

    def compute(self) -> dict[str, Tensor]:
        """``{"odsf": %, "oisf": %, "ods_threshold": τ}``."""
        c = self.curves()
        best = int(torch.argmax(c["f"]))
        _, _, ois = _rates(self.ois_counts.cpu())
        return {
            "odsf": 100.0 * c["f"][best],
            "oisf": 100.0 * ois,
            "ods_threshold": c["threshold"][best],
        }
