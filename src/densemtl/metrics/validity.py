"""Undefined metrics say so: a task with no valid target pixel gets NaN metrics and a warning, never a score.

Without valid pixels (every label ignored, no valid depth) the metric formulas divide zero by zero: some
gave NaN silently, others a plausible-looking 0 (mIoU over empty confusion matrices, odsF without ground
truth). :class:`ValidPixels` counts, per task, the target pixels that the task's ignore rule keeps
(label maps: not 255; depth: > 0 and finite; normals: not the zero vector), synchronised across ranks like
any torchmetrics state. :class:`NonFinitePredictions` counts the images whose prediction holds NaN/inf
(a diverged model): such a task is not scored. :func:`mark_undefined` then sets every metric of a task that
saw no valid pixel or a non-finite prediction to NaN and warns, naming the task; any other NaN value is
warned about by name too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from densemtl.tasks import get_task

__all__ = ["NonFinitePredictions", "UndefinedMetricWarning", "ValidPixels", "mark_undefined", "valid_mask"]


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is NaN: nothing valid was evaluated, or the statistics themselves were not finite."""


def valid_mask(task: str, target: Tensor) -> Tensor:
    """Bool mask of the valid pixels of ``task``'s target: (B, H, W) for label maps, (B, 1, H, W) or (B, H, W)
    for depth and binary maps, (B, H, W) for normals (B, 3, H, W)."""
    kind = get_task(task).kind
    if kind == "normals":
        return (target != 0).any(dim=1) & torch.isfinite(target).all(dim=1)
    if kind == "depth":
        return (target > 0) & torch.isfinite(target)
    return target != get_task(task).ignore_value


class ValidPixels(Metric):
    """Number of valid target pixels of one task seen since the last reset (summed over ranks).

    Args:
        task: task name (its ignore rule decides what is valid).
    """

    full_state_update = False

    def __init__(self, task: str) -> None:
        super().__init__()
        get_task(task)
        self.task = task
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, target: Tensor) -> None:
        self.count += valid_mask(self.task, target).sum()

    def compute(self) -> Tensor:
        return self.count


class NonFinitePredictions(Metric):
    """Number of images whose prediction holds a NaN or inf since the last reset (summed over ranks)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor) -> None:
        """Args: pred: (B, ...) prediction of one task."""
        finite = torch.isfinite(pred.reshape(pred.shape[0], -1)).all(dim=1)
        self.count += (~finite).sum()
        self.images += pred.shape[0]

    def compute(self) -> Tensor:
        """(2,) int64: images with a non-finite prediction, images evaluated."""
        return torch.stack([self.count, self.images])


def _all_nan(value: Any) -> Any:
    """NaN for a float, a list of NaN for a list (per-class vectors), anything else unchanged."""
    if isinstance(value, float):
        return math.nan
    if isinstance(value, list):
        return [math.nan] * len(value)
    return value


def mark_undefined(
    values: Mapping[str, Mapping[str, Any]],
    valid: Mapping[str, int],
    nonfinite: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``values`` (task -> metric -> float) with the metrics of tasks without valid pixels set to NaN.

    Warns (:class:`UndefinedMetricWarning`) once per task without valid pixels, and once for the other
    NaN scalar values, naming them.

    Args:
        values: computed metrics.
        valid: task -> valid target pixels evaluated.
        nonfinite: task -> (images with a NaN/inf prediction, images evaluated); a task with any such image
            is not scored: every metric NaN, with a warning.
    """
    out = {t: dict(row) for t, row in values.items()}
    diverged = [t for t in out if (nonfinite or {}).get(t, (0, 0))[0] > 0]
    for task in diverged:
        out[task] = {m: _all_nan(v) for m, v in out[task].items()}
        bad, seen = nonfinite[task]  # type: ignore[index]
        warnings.warn(
            f"task {task!r}: {bad} of {seen} evaluated image(s) have non-finite (NaN/inf) predictions; the task is "
            "not scored and its metrics are reported as NaN (the model diverged?)",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    empty = [t for t in out if valid.get(t, 1) == 0 and t not in diverged]
    for task in empty:
        out[task] = {m: (math.nan if isinstance(v, float) else v) for m, v in out[task].items()}
        warnings.warn(
            f"task {task!r}: no valid target pixel in the evaluated images (every label ignored, or no valid depth "
            "/ normal); its metrics are undefined and reported as NaN",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    nan = [
        f"{t}/{m}"
        for t, row in out.items()
        if t not in empty and t not in diverged
        for m, v in row.items()
        if isinstance(v, float) and math.isnan(v)
    ]
    if nan:
        warnings.warn(
            f"metric(s) {nan} are NaN (non-finite predictions, or a class or threshold without samples)",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    return out
