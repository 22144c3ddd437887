"""Metric builders, protocol presets, MultiTaskMetrics and the edge loss meter."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemtl.metrics.collection import PROTOCOLS, MultiTaskMetrics, build_task_metrics, family_of
from densemtl.metrics.depth import DepthMetrics
from densemtl.metrics.edge_loss import EdgeLossMeter
from densemtl.metrics.normals import NormalsMetrics
from densemtl.metrics.segmentation import SegmentationMetrics
from densemtl.tasks import TASKS

HAS_EDGE = importlib.util.find_spec("densemtl.metrics.edge") is not None


def _data(seed: int, b: int = 4, h: int = 8, w: int = 10):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, 1, h, w, generator=g) * 8 + 0.5
    depth[:, :, 0] = 0
    normals = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normals[:, :, -1] = 0
    batch = {
        "semseg": torch.randint(0, 5, (b, h, w), generator=g),
        "depth": depth,
        "normals": normals,
        "sal": (torch.rand(b, 1, h, w, generator=g) < 0.4).float(),
        "edge": (torch.rand(b, 1, h, w, generator=g) < 0.1).float(),
        "meta": [{"name": str(i)} for i in range(b)],
    }
    preds = {
        "semseg": torch.randn(b, 5, h, w, generator=g),
        "depth": depth + torch.randn(b, 1, h, w, generator=g),
        "normals": normals + 0.5 * torch.randn(b, 3, h, w, generator=g),
        "sal": torch.randn(b, 1, h, w, generator=g),
        "edge": torch.randn(b, 1, h, w, generator=g),
    }
    return preds, batch


def test_family_of_every_task():
    assert {t: family_of(t) for t in TASKS} == {
        "semseg": "segmentation",
        "human_parts": "segmentation",
        "depth": "depth",
        "normals": "normals",
        "edge": "edge",
        "sal": "sal",
    }


def test_presets_and_overrides():
    assert {"default", "mtinet", "mtcp_reference", "invpt", "mtan", "autolambda", "ctal_cnn"} <= set(PROTOCOLS)
    seg = build_task_metrics("semseg", 13, protocol="mtan")
    assert isinstance(seg, SegmentationMetrics) and seg.absent == "skip" and seg.num_classes == 13
    depth = build_task_metrics("depth", protocol="mtan")
    assert isinstance(depth, DepthMetrics) and depth.pooling == "batch"
    assert build_task_metrics("depth", protocol="mtan", pooling="pixel").pooling == "pixel"
    normals = build_task_metrics("normals", protocol="mtcp_reference", companions={})
    assert isinstance(normals, NormalsMetrics) and normals.quantize_png
    parts = build_task_metrics("human_parts", 7)
    assert parts.num_classes == 7
    with pytest.raises(ValueError, match="unknown metric protocol 'mtinett'; available"):
        build_task_metrics("depth", protocol="mtinett")
    with pytest.raises(ValueError, match="positive number of classes"):
        build_task_metrics("semseg")


def test_companions_report_both_depth_masks():
    preds, batch = _data(0)
    batch["depth"][0, 0, 1, :3] = 9.0  # beyond the MT-CP cap
    both = build_task_metrics("depth", protocol="mtcp_reference")
    capped, standard = DepthMetrics(valid="mtcp_reference"), DepthMetrics(valid="nonzero")
    for m in (both, capped, standard):
        m.update(preds["depth"], batch["depth"])
    out = both.compute()
    assert out["rmse"].item() == pytest.approx(capped.compute()["rmse"].item())
    assert out["rmse_nonzero"].item() == pytest.approx(standard.compute()["rmse"].item())
    assert out["rmse"].item() != pytest.approx(out["rmse_nonzero"].item())


def test_saliency_presets_use_the_saliency_metrics():
    saliency = pytest.importorskip("densemtl.metrics.saliency")
    preds, batch = _data(1)
    invpt = build_task_metrics("sal", protocol="invpt")
    atrc = saliency.SaliencyMetrics(protocol="atrc")
    compat = saliency.SaliencyMetrics(protocol="invpt")
    for m in (invpt, atrc, compat):
        m.update(preds["sal"], batch["sal"])
    out = invpt.compute()
    assert out["maxf"].item() == pytest.approx(compat.compute()["maxf"].item())
    assert out["maxf_atrc"].item() == pytest.approx(atrc.compute()["maxf"].item())
    assert build_task_metrics("sal", protocol="mtinet").protocol == "mtinet"


def test_edge_loss_meter_matches_numpy():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 6, 7, generator=g) * 2
    y = (torch.rand(3, 1, 6, 7, generator=g) < 0.2).float()
    y[0, 0, 0] = 255
    meter = EdgeLossMeter()
    meter.update(x[:2], y[:2])
    meter.update(x[2:], y[2:])
    xn, yn = x.double().numpy(), y.numpy()
    valid = yn != 255
    pos, neg = valid & (yn == 1), valid & (yn == 0)
    expected = (0.95 * np.logaddexp(0, -xn)[pos].sum() + 0.05 * np.logaddexp(0, xn)[neg].sum()) / valid.sum()
    assert meter.compute()["loss"].item() == pytest.approx(expected, rel=1e-12)
    assert sum(v.numel() for v in meter.metric_state.values()) == 2


def test_multitask_metrics_keys_values_and_resizing():
    tasks = ["semseg", "depth", "normals", "edge"]
    options = {"edge": {"odsf": False}}
    if importlib.util.find_spec("densemtl.metrics.saliency") is not None:
        tasks.append("sal")
    mtm = MultiTaskMetrics(tasks, {"semseg": 5}, options=options)
    seg, depth = SegmentationMetrics(5), DepthMetrics()
    for seed in range(3):
        preds, batch = _data(seed)
        preds["depth"] = preds["depth"][..., ::2, ::2]  # half resolution: resized bilinearly before scoring
        mtm.update(preds, batch)
        seg.update(preds["semseg"], batch["semseg"])
        up = F.interpolate(preds["depth"], size=batch["depth"].shape[-2:], mode="bilinear", align_corners=False)
        depth.update(up, batch["depth"])
    out = mtm.compute()
    assert list(out) == tasks
    for task in ("semseg", "depth", "normals"):
        assert {s.name for s in TASKS[task].metrics} <= set(out[task]), task
    assert set(out["edge"]) == {"loss"}
    if "sal" in out:
        assert {"maxf", "miou"} <= set(out["sal"])
    assert all(isinstance(v, float) for row in out.values() for v in row.values())
    assert out["semseg"]["miou"] == pytest.approx(seg.compute()["miou"].item())
    assert out["depth"]["rmse"] == pytest.approx(depth.compute()["rmse"].item())
    assert len(mtm.compute(vectors=True)["semseg"]["iou_per_class"]) == 5
    fresh = mtm.clone()
    assert int(fresh.metrics["semseg"].confmat.sum()) == 0 and int(mtm.metrics["semseg"].confmat.sum()) > 0
    mtm.reset()
    assert int(mtm.metrics["semseg"].confmat.sum()) == 0


def test_multitask_metrics_errors():
    with pytest.raises(ValueError, match="not in"):
        MultiTaskMetrics(["depth"], options={"semseg": {}})
    with pytest.raises(ValueError, match="unknown metric protocol"):
        MultiTaskMetrics(["depth"], protocol="nope")
    mtm = MultiTaskMetrics(["depth", "normals"])
    preds, batch = _data(0)
    del preds["normals"]
    with pytest.raises(ValueError, match="normals"):
        mtm.update(preds, batch)


@pytest.mark.skipif(not HAS_EDGE, reason="TODO: densemtl.metrics.edge (EdgeMetrics, helper H6) not written yet")
def test_edge_odsf_is_built_beside_the_loss():
    preds, batch = _data(3, b=2, h=16, w=16)
    mtm = MultiTaskMetrics(["edge"], options={"edge": {"max_dist": 0.011}})
    mtm.update(preds, batch)
    out = mtm.compute()["edge"]
    assert {"odsf", "loss"} <= set(out)
    assert 0 <= out["odsf"] <= 100
