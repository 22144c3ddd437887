"""Depth: RMSE, log-RMSE, abs_rel, sq_rel, abs_err and δ < 1.25^k, pooled over valid pixels.

``spec/protocols.md`` §4.2. With d = pred − gt over the valid set V:

- ``rmse`` = sqrt(Σ d² / |V|) (metres); ``log_rmse`` = sqrt(Σ (ln gt − ln pred)² / |V|), natural log;
- ``abs_rel`` = Σ |d| / gt / |V|; ``sq_rel`` = Σ d² / gt / |V|; ``abs_err`` = Σ |d| / |V| (metres);
- ``delta{k}`` = % of V with max(gt / pred, pred / gt) < 1.25^k, k = 1, 2, 3.

Predictions ≤ 0 (option ``clamp``):

- ``all`` (default): set to 1e-9 before every statistic (MTI-Net, InvPT, MT-CP and CTAL CNN evaluate the
  clamped prediction throughout);
- ``log``: set to 1e-9 only before the logarithm and the δ ratios; abs/rel errors use the raw prediction
  (mtan's ``depth_error``, Auto-λ's ``TaskMetric``; ``spec/protocols.md`` §4.2).

A NaN prediction is never clamped: it makes the statistics NaN. Valid sets (option ``valid``):

- ``nonzero`` (default): gt ≠ 0 (MTI-Net, InvPT, CTAL CNN);
- ``range``: 0 < gt < 80 (TaskPrompter, MLoRE);
- ``mtcp_reference``: gt ≠ 0 and gt < 6.5535 m (the released MT-CP evaluation; only to compare with the
  MT-CP paper's depth numbers).

Non-finite GT is never valid. ``pooling="pixel"`` (default) pools over all valid pixels of the set;
``pooling="batch"`` computes every metric per ``update`` call and averages over calls (mtan, Auto-λ;
batches without valid pixels are skipped). ``batch_weight`` weights those per-batch values: ``equal``
(mtan) or ``images`` (Auto-λ: the running mean ``m ← r·m + (1 − r)·x`` with ``r = k / (k + b / B)`` gives a
batch of b images against the nominal batch size B the weight b / B; the mean Σ bₖxₖ / Σ bₖ equals that
recurrence whenever only the last batch is short, as with any DataLoader, and is exact under DDP).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from densemtl.metrics.pooling import batch_weight_of, check_batch_weight

__all__ = ["DEPTH_CLAMP", "DEPTH_VALID", "DepthMetrics", "depth_statistics", "depth_valid_mask"]

DEPTH_VALID = ("nonzero", "range", "mtcp_reference")
DEPTH_CLAMP = ("all", "log")
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


def depth_statistics(pred: Tensor, target: Tensor, valid: str = "nonzero", clamp: str = "all") -> Tensor:
    """Sufficient statistics of one batch, float64 (9,): n, Σd², Σ(ln gt − ln pred)², Σ|d|/gt, Σd²/gt,
    Σ|d|, and the δ counts for k = 1, 2, 3.

    Args:
        pred: (B, 1, H, W) depth in metres.
        target: (B, 1, H, W) depth in metres, 0 = invalid.
        valid: the valid-set rule.
        clamp: ``all`` (predictions ≤ 0 set to 1e-9 for every statistic) or ``log`` (only for the
            logarithm and the δ ratios; d uses the raw prediction). A NaN prediction stays NaN.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if clamp not in DEPTH_CLAMP:
        raise ValueError(f"depth clamp must be one of {DEPTH_CLAMP}, got {clamp!r}")
    # the valid pixels only, gathered once (masked_select is several times faster than boolean indexing),
    # then processed in chunks: float64 temporaries of a whole frame cost more in page faults than in
    # arithmetic on CPU, chunks stay in cache (and the sums are as exact)
    cpu = pred.device.type == "cpu"
    mask = _valid_mask_unchecked(target, valid) if cpu else depth_valid_mask(target, valid)
    targets = target.masked_select(mask)
    if cpu and not bool(torch.isfinite(targets.sum())):  # a non-finite GT value: the full rule (rare)
        mask = depth_valid_mask(target, valid)
        targets = target.masked_select(mask)
    preds = pred.masked_select(mask)
    step = _CHUNK if cpu else max(preds.numel(), 1)  # one pass on accelerators
    parts = [_chunk_sums(preds[i : i + step], targets[i : i + step], clamp) for i in range(0, preds.numel(), step)]
    sums = torch.stack(parts).sum(0) if parts else pred.new_zeros(len(_SUMS) - 1, dtype=torch.float64)
    n = torch.tensor([float(preds.numel())], dtype=torch.float64, device=sums.device)
    return torch.cat([n, sums])


def _valid_mask_unchecked(target: Tensor, valid: str) -> Tensor:
    """:func:`depth_valid_mask` without its finiteness test where the comparisons do not already exclude
    NaN and inf; the caller checks the selected values (a finite sum means every value is finite)."""
    if valid == "nonzero":
        return target != 0
    if valid == "mtcp_reference":
        return (target != 0) & (target < MTCP_DEPTH_CAP)
    return depth_valid_mask(target, valid)  # range: 0 < gt < 80 excludes NaN and inf by itself


_CHUNK = 32768
"""Valid pixels per chunk of :func:`depth_statistics` on CPU (float64 temporaries of 256 KB)."""


def _chunk_sums(pred: Tensor, target: Tensor, clamp: str) -> Tensor:
    """(8,) float64 sums of ``_SUMS[1:]`` over 1-D valid predictions and targets (in-place temporaries)."""
    raw, g = pred.double(), target.double()
    p = raw.masked_fill(raw <= 0, 1e-9)  # NaN stays NaN
    d = (p if clamp == "all" else raw) - g
    d2 = d * d
    sq, sq_rel = d2.sum(), d2.div_(g).sum()
    ad = d.abs_()
    abs_sum, abs_rel = ad.sum(), ad.div_(g).sum()
    log_diff = torch.log(g).sub_(torch.log(p))
    ratio = g / p
    ratio = torch.maximum(ratio, p / g, out=ratio)
    sums = [sq, log_diff.mul_(log_diff).sum(), abs_rel, sq_rel, abs_sum]
    sums += [torch.count_nonzero(ratio < 1.25**k).double() for k in (1, 2, 3)]
    return torch.stack(sums)


def _metrics_from_sums(s: Tensor) -> Tensor:
    """(9,) sums -> (8,) metrics in the order of ``METRICS``; NaN when n = 0."""
    n = s[0]
    mean = s[1:] / n
    return torch.stack(
        [mean[0].sqrt(), mean[1].sqrt(), mean[2], mean[3], mean[4], 100 * mean[5], 100 * mean[6], 100 * mean[7]]
    )


class DepthMetrics(Metric):
    """Depth metrics with a protocol's valid mask, clamp and pooling; DDP-exact (float64 sums, all-reduced).

    Args:
        valid: ``nonzero`` (default), ``range`` or ``mtcp_reference``.
        pooling: ``pixel`` (default) or ``batch``.
        clamp: ``all`` (default) or ``log`` (see the module docstring).
        batch_weight: ``equal`` (default) or ``images``; only with ``pooling="batch"``.

    ``update(preds, target)``: (B, 1, H, W) metres each. ``compute()``: dict of ``METRICS`` (metres,
    percent for δ); NaN when no pixel was valid. State: 9 float64 (pixel: the sums; batch: the total batch
    weight and 8 weighted sums of per-batch metrics), whatever the number of images.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        valid: str = "nonzero",
        pooling: str = "pixel",
        clamp: str = "all",
        batch_weight: str = "equal",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if valid not in DEPTH_VALID:
            raise ValueError(f"depth valid must be one of {DEPTH_VALID}, got {valid!r}")
        if pooling not in ("pixel", "batch"):
            raise ValueError(f"pooling must be 'pixel' or 'batch', got {pooling!r}")
        if clamp not in DEPTH_CLAMP:
            raise ValueError(f"depth clamp must be one of {DEPTH_CLAMP}, got {clamp!r}")
        check_batch_weight(batch_weight, pooling)
        self.valid = valid
        self.pooling = pooling
        self.clamp = clamp
        self.batch_weight = batch_weight
        self.add_state("sums", torch.zeros(len(_SUMS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        stats = depth_statistics(preds, target, self.valid, self.clamp)
        if self.pooling == "pixel":
            self.sums += stats
            return
        # batch pooling: sums[0] is the total weight of batches with valid pixels, sums[1:] the weighted
        # sums of per-batch metrics
        weight = batch_weight_of(target, self.batch_weight) if stats[0] > 0 else 0.0
        per_batch = _metrics_from_sums(stats) if weight else torch.zeros_like(stats[1:])
        self.sums += torch.cat([stats.new_tensor([weight]), weight * per_batch])

    def compute(self) -> dict[str, Tensor]:
        if self.pooling == "pixel":
            values = _metrics_from_sums(self.sums)
        else:
            values = self.sums[1:] / self.sums[0]
        return {name: values[i] for i, name in enumerate(METRICS)}
