"""Depth: RMSE, log-RMSE, abs_rel, sq_rel, abs_err and δ < 1.25^k, pooled over valid pixels.

``spec/protocols.md`` §4.2. With d = pred − gt over the valid set V:

- ``rmse`` = sqrt(Σ d² / |V|) (metres); ``log_rmse`` = sqrt(Σ (ln gt − ln pred)² / |V|), natural log;
- ``abs_rel`` = Σ |d| / gt / |V|; ``sq_rel`` = Σ d² / gt / |V|; ``abs_err`` = Σ |d| / |V| (metres);
- ``delta{k}`` = % of V with max(gt / pred, pred / gt) < 1.25^k, k = 1, 2, 3.

Predictions ≤ 0 are set to 1e-9 before every statistic (MTI-Net / MT-CP evaluate the clamped prediction
throughout; it matters only for the log and the ratios). Valid sets (option ``valid``):

- ``nonzero`` (default): gt ≠ 0 (MTI-Net, InvPT, CTAL CNN);
- ``range``: 0 < gt < 80 (TaskPrompter, MLoRE);
- ``mtcp_reference``: gt ≠ 0 and gt < 6.5535 m (the released MT-CP evaluation; only to compare with the
  MT-CP paper's depth numbers).

Non-finite GT is never valid. ``pooling="pixel"`` (default) pools over all valid pixels of the set;
``pooling="batch"`` computes every metric per ``update`` call and averages over calls (mtan, Auto-λ;
batches without valid pixels are skipped).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["DEPTH_VALID", "DepthMetrics", "depth_statistics", "depth_valid_mask"]

DEPTH_VALID = ("nonzero", "range", "mtcp_reference")
MTCP_DEPTH_CAP = 6.5535
"""Metres: 65535 / 10000, the cap of MT-CP's released depth mask."""
RANGE_MAX = 80.0

_SUMS = ("n", "sq", "log_sq", "abs_rel", "sq_rel", "abs", "delta1", "delta2", "delta3")
METRICS = ("rmse", "log_rmse", "abs_rel", "sq_rel", "abs_err", "delta1", "delta2", "delta3")


def depth_valid_mask(target: Tensor, valid: str = "nonzero") -> Tensor:
    """Bool mask of valid GT pixels under a protocol (see the module docstring).

    Args:
        target: depth in metres, any shape, 0 = invalid.
        valid: ``nonzero``, ``range`` or ``mtcp_reference``.
    """
    finite = torch.isfinite(target)
    if valid == "nonzero":
        return finite & (target != 0)
    if valid == "range":
        return finite & (target > 0) & (target < RANGE_MAX)
    if valid == "mtcp_reference":
        return finite & (target != 0) & (target < MTCP_DEPTH_CAP)
    raise ValueError(f"depth valid must be one of {DEPTH_VALID}, got {valid!r}")


def depth_statistics(pred: Tensor, target: Tensor, valid: str = "nonzero") -> Tensor:
    """Sufficient statistics of one batch, float64 (9,): n, Σd², Σ(ln gt − ln pred)², Σ|d|/gt, Σd²/gt,
    Σ|d|, and the δ counts for k = 1, 2, 3.

    Args:
        pred: (B, 1, H, W) depth in metres.
        target: (B, 1, H, W) depth in metres, 0 = invalid.
        valid: the valid-set rule.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    mask = depth_valid_mask(target, valid)
    p = pred.double()
    p = torch.where(p > 0, p, torch.full_like(p, 1e-9))
    g = torch.where(mask, target.double(), torch.ones_like(p))  # 1 at invalid pixels, masked out below
    p = torch.where(mask, p, torch.ones_like(p))
    d = p - g
    ratio = torch.maximum(g / p, p / g)
    zero = torch.zeros((), dtype=torch.float64, device=p.device)

    def msum(x: Tensor) -> Tensor:
        return torch.where(mask, x, zero).sum()

    terms = [
        mask.sum().double(),
        msum(d * d),
        msum((torch.log(g) - torch.log(p)) ** 2),
        msum(d.abs() / g),
        msum(d * d / g),
        msum(d.abs()),
    ]
    terms += [msum((ratio < 1.25**k).double()) for k in (1, 2, 3)]
    return torch.stack(terms)


def _metrics_from_sums(s: Tensor) -> Tensor:
    """(9,) sums -> (8,) metrics in the order of ``METRICS``; NaN when n = 0."""
    n = s[0]
    mean = s[1:] / n
    return torch.stack(
        [mean[0].sqrt(), mean[1].sqrt(), mean[2], mean[3], mean[4], 100 * mean[5], 100 * mean[6], 100 * mean[7]]
    )


class DepthMetrics(Metric):
    """Depth metrics with a protocol's valid mask and pooling; DDP-exact (float64 sums, all-reduced).

    Args:
        valid: ``nonzero`` (default), ``range`` or ``mtcp_reference``.
        pooling: ``pixel`` (default) or ``batch``.

    ``update(preds, target)``: (B, 1, H, W) metres each. ``compute()``: dict of ``METRICS`` (metres,
    percent for δ); NaN when no pixel was valid. State: 9 float64 (pixel: the sums; batch: a count of
    batches and 8 sums of per-batch metrics), whatever the number of images.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, valid: str = "nonzero", pooling: str = "pixel", **kwargs) -> None:
        super().__init__(**kwargs)
        if valid not in DEPTH_VALID:
            raise ValueError(f"depth valid must be one of {DEPTH_VALID}, got {valid!r}")
        if pooling not in ("pixel", "batch"):
            raise ValueError(f"pooling must be 'pixel' or 'batch', got {pooling!r}")
        self.valid = valid
        self.pooling = pooling
        self.add_state("sums", torch.zeros(len(_SUMS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        stats = depth_statistics(preds, target, self.valid)
        if self.pooling == "pixel":
            self.sums += stats
            return
        # batch pooling: sums[0] counts batches with valid pixels, sums[1:] accumulate per-batch metrics
        has = stats[0] > 0
        per_batch = torch.where(has, _metrics_from_sums(stats), torch.zeros_like(stats[1:]))
        self.sums += torch.cat([has.double()[None], per_batch])

    def compute(self) -> dict[str, Tensor]:
        if self.pooling == "pixel":
            values = _metrics_from_sums(self.sums)
        else:
            values = self.sums[1:] / self.sums[0]
        return {name: values[i] for i, name in enumerate(METRICS)}
