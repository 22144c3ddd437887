"""Metrics given non-finite predictions say so (NaN + a warning naming the task) instead of scoring them."""

from __future__ import annotations

import math

import pytest
import torch

from densemtl.metrics.collection import MultiTaskMetrics
from densemtl.metrics.validity import UndefinedMetricWarning


def _batch(b: int = 2, h: int = 6, w: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    normals = torch.zeros(b, 3, h, w)
    normals[:, 2] = 1.0
    return {
        "semseg": torch.randint(0, 3, (b, h, w), generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g) + 1.0,
        "normals": normals,
    }


def _preds(batch: dict) -> dict:
    """Perfect predictions: one-hot logits, the depth itself, the normals themselves."""
    logits = torch.nn.functional.one_hot(batch["semseg"], 3).permute(0, 3, 1, 2).float() * 10
    return {"semseg": logits, "depth": batch["depth"].clone(), "normals": batch["normals"].clone()}


@pytest.mark.parametrize("task,value", [("semseg", math.nan), ("depth", math.inf), ("normals", math.nan)])
def test_a_task_with_one_nonfinite_prediction_is_not_scored(task, value):
    metrics = MultiTaskMetrics(["semseg", "depth", "normals"], {"semseg": 3}, family="nyud")
    batch = _batch()
    preds = _preds(batch)
    preds[task][1, :, 2, 3] = value  # one pixel of the second image
    with pytest.warns(UndefinedMetricWarning, match=rf"task '{task}': 1 of 2 evaluated image\(s\) have non-finite"):
        values = metrics.compute() if metrics.update(preds, batch) is None else None
    assert values is not None
    assert all(math.isnan(v) for v in values[task].values()), values[task]
    for other in {"semseg", "depth", "normals"} - {task}:  # perfect predictions elsewhere: exact scores
        row = values[other]
        assert row.get("miou", 100.0) == pytest.approx(100.0) and row.get("rmse", 0.0) == pytest.approx(0.0, abs=1e-6)
    metrics.reset()
    metrics.update(_preds(batch), batch)  # reset clears the count
    assert math.isclose(metrics.compute()["semseg"]["miou"], 100.0)
