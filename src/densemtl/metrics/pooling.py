"""Per-batch pooling shared by the depth and normals metrics (mtan, Auto-λ; ``spec/protocols.md`` §4.2-4.3).

With ``pooling="batch"`` a metric is computed per ``update`` call and the values are averaged over calls.
``batch_weight`` says how a call counts:

- ``equal``: every batch counts 1 (mtan: the mean of per-batch values);
- ``images``: a batch counts its number of images (Auto-λ: its running mean ``m ← r·m + (1 − r)·x`` with
  ``r = k / (k + b / B)`` weights a batch of b images by b / B against the nominal batch size B; the
  weighted mean Σ bₖxₖ / Σ bₖ, where B cancels, equals that recurrence whenever every batch but the last
  is full, as with any DataLoader, and unlike the recurrence it is independent of order, so exact under DDP).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["BATCH_WEIGHTS", "batch_weight_of", "check_batch_weight"]

BATCH_WEIGHTS = ("equal", "images")


def check_batch_weight(batch_weight: str, pooling: str) -> None:
    """Raise a ``ValueError`` for an unknown ``batch_weight`` or one that has no effect under ``pooling``."""
    if batch_weight not in BATCH_WEIGHTS:
        raise ValueError(f"batch_weight must be one of {BATCH_WEIGHTS}, got {batch_weight!r}")
    if batch_weight != "equal" and pooling != "batch":
        raise ValueError(f"batch_weight={batch_weight!r} weights per-batch values; it needs pooling='batch'")


def batch_weight_of(target: Tensor, batch_weight: str) -> float:
    """The weight of one batch: 1 (``equal``) or its number of images, ``target.shape[0]`` (``images``)."""
    return 1.0 if batch_weight == "equal" else float(target.shape[0])
