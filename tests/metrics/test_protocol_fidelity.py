"""The protocol details where densemtl once disagreed with the published evaluators (issue 9).

Each case is computed by hand or by a numpy transcription of the reference rule, not by densemtl:
SEISM's ``png / 255 >= t`` edge binarisation, the depth clamp of mtan / Auto-λ (raw prediction in the
abs / rel errors), Auto-λ's size-weighted running mean, mIoU with classes absent from the whole split, and
the edge odsF settings of each dataset family under every preset.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densemtl.metrics.collection import PROTOCOLS, MultiTaskMetrics, build_task_metrics
from densemtl.metrics.depth import DepthMetrics
from densemtl.metrics.edge import EdgeMetrics
from densemtl.metrics.normals import NormalsMetrics
from densemtl.metrics.segmentation import SegmentationMetrics

# ------------------------------------------------------------------------------- 1. edge thresholds


def _line_case(value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-px vertical GT line and a prediction that is the same line at 8-bit PNG value ``value``."""
    target = torch.zeros(1, 1, 16, 16)
    target[..., 8] = 1.0
    pred = torch.zeros(1, 1, 16, 16)
    pred[..., 8] = (value + 0.5) / 255.0  # probability whose exported PNG value is ``value``
    return pred, target


@pytest.mark.parametrize("value,threshold", [(51, 0.2), (102, 0.4), (153, 0.6), (204, 0.8)])
def test_png_values_on_a_threshold_count_as_edges(value, threshold):
    """SEISM's read_one_png keeps png/255 >= t: the PNG value equal to t·255 is an edge at t (F = 1)."""
    pred, target = _line_case(value)
    m = EdgeMetrics(max_dist=0.011, thresholds=[threshold], from_logits=False)
    m.update(pred, target)
    assert float(m.compute()["odsf"]) == 100.0
    below = EdgeMetrics(max_dist=0.011, thresholds=[threshold], from_logits=False)
    below.update(*_line_case(value - 1))
    assert float(below.compute()["odsf"]) == 0.0  # one grey level lower: nothing predicted (P = 1, R = 0)


def test_tie_heavy_prediction_hand_counts():
    """GT: 2 lines of 16 px. Prediction: line A at PNG 51 (true), a false line at PNG 102. At τ = 0.2 both
    lines are predicted: P = 16/32, R = 16/32, F = 0.5; at τ = 0.4 only the false one: F = 0."""
    target = torch.zeros(1, 1, 16, 24)
    target[..., 4] = 1.0
    target[..., 12] = 1.0
    pred = torch.zeros(1, 1, 16, 24)
    pred[..., 4] = 51.5 / 255
    pred[..., 20] = 102.5 / 255
    m = EdgeMetrics(max_dist=1.5 / math.hypot(16, 24), thresholds=[0.2, 0.4], from_logits=False)
    m.update(pred, target)
    curves = m.curves()
    np.testing.assert_allclose(curves["f"].numpy(), [0.5, 0.0])
    np.testing.assert_allclose(curves["precision"].numpy(), [0.5, 0.0])


# ------------------------------------------------------------------------------------ 2. depth clamp


def _depth_case():
    gt = torch.tensor([2.0, 4.0, 0.0, 1.0]).view(1, 1, 2, 2)  # one invalid pixel
    pred = torch.tensor([-1.0, 5.0, 3.0, 1.0]).view(1, 1, 2, 2)
    return pred, gt


def test_depth_clamp_log_uses_the_raw_prediction_in_abs_and_rel_errors():
    """mtan's depth_error / Auto-λ: |d| with the raw prediction: (|-1-2| + |5-4| + 0) / 3 = 4/3;
    rel = (3/2 + 1/4 + 0) / 3; rmse = sqrt((9 + 1) / 3). The log and δ still see the clamped 1e-9."""
    m = DepthMetrics(clamp="log")
    m.update(*_depth_case())
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["abs_err"] == pytest.approx(4 / 3, rel=1e-12)
    assert out["abs_rel"] == pytest.approx((1.5 + 0.25) / 3, rel=1e-12)
    assert out["rmse"] == pytest.approx(math.sqrt(10 / 3), rel=1e-12)
    log_sq = (math.log(2) - math.log(1e-9)) ** 2 + (math.log(4) - math.log(5)) ** 2
    assert out["log_rmse"] == pytest.approx(math.sqrt(log_sq / 3), rel=1e-12)
    assert out["delta1"] == pytest.approx(100 / 3)  # 1e-9 vs 2 is not; 5/4 = 1.25 is not < 1.25; 1/1 is


def test_depth_clamp_all_clamps_every_statistic():
    """MTI-Net / CTAL: the prediction -1 becomes 1e-9 everywhere: |d| = 2 - 1e-9."""
    m = DepthMetrics(clamp="all")
    m.update(*_depth_case())
    assert float(m.compute()["abs_err"]) == pytest.approx((2 - 1e-9 + 1) / 3, rel=1e-12)


def test_nan_predictions_are_not_clamped_into_numbers():
    pred, gt = _depth_case()
    pred[0, 0, 0, 1] = float("nan")
    for clamp in ("all", "log"):
        m = DepthMetrics(clamp=clamp)
        m.update(pred, gt)
        assert math.isnan(float(m.compute()["rmse"]))


@pytest.mark.parametrize("preset", sorted(PROTOCOLS))
def test_every_preset_sets_the_depth_clamp(preset):
    clamp = PROTOCOLS[preset]["depth"]["clamp"]
    assert clamp == ("log" if preset in ("mtan", "autolambda") else "all")
    metric = build_task_metrics("depth", protocol=preset)
    members = [metric] if isinstance(metric, DepthMetrics) else [metric["main"], metric["nonzero"].metric]
    assert all(m.clamp == clamp for m in members)


# --------------------------------------------------------------------------- 3. Auto-λ batch weights


def _autolambda_running_mean(values: list[float], sizes: list[int], batch_size: int) -> float:
    """Auto-λ's TaskMetric.update_metric: r = k / (k + curr_bs / batch_size); m = r m + (1 - r) x."""
    m = 0.0
    for k, (x, b) in enumerate(zip(values, sizes)):
        r = k / (k + b / batch_size)
        m = r * m + (1 - r) * x
    return m


def test_autolambda_depth_weights_a_short_last_batch_by_its_size():
    rng = np.random.default_rng(0)
    sizes = [4, 4, 4, 2]  # 14 = 3 x 4 + 2, as the NYUv2 test loader's 654 = 163 x 4 + 2
    m = build_task_metrics("depth", protocol="autolambda")
    equal = build_task_metrics("depth", protocol="mtan")
    values = []
    for b in sizes:
        gt = torch.from_numpy(rng.uniform(1, 5, (b, 1, 3, 5))).float()
        pred = gt + torch.from_numpy(rng.normal(0, 0.5, (b, 1, 3, 5))).float()
        m.update(pred, gt)
        equal.update(pred, gt)
        values.append(float((pred.double() - gt.double()).abs().mean()))  # every pixel valid
    want = _autolambda_running_mean(values, sizes, batch_size=4)
    assert float(m.compute()["abs_err"]) == pytest.approx(want, rel=1e-12)
    assert float(equal.compute()["abs_err"]) == pytest.approx(np.mean(values), rel=1e-12)
    assert want != pytest.approx(np.mean(values), rel=1e-6)  # the weighting matters here


def test_autolambda_normals_weights_a_short_last_batch_by_its_size():
    rng = np.random.default_rng(1)
    sizes = [3, 3, 1]
    m = NormalsMetrics(pooling="batch", batch_weight="images")
    values = []
    for b in sizes:
        gt = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(b, 3, 4, 4))), dim=1)
        pred = torch.nn.functional.normalize(gt + 0.4 * torch.from_numpy(rng.normal(size=(b, 3, 4, 4))), dim=1)
        m.update(pred, gt)
        cos = np.clip((pred * gt).sum(1).numpy(), -1, 1)
        values.append(float(np.degrees(np.arccos(cos)).mean()))
    want = _autolambda_running_mean(values, sizes, batch_size=3)
    assert float(m.compute()["mean"]) == pytest.approx(want, rel=1e-9)
    assert build_task_metrics("normals", protocol="autolambda").batch_weight == "images"
    with pytest.raises(ValueError, match="needs pooling='batch'"):
        NormalsMetrics(batch_weight="images")


# -------------------------------------------------------------------------------- 4. absent classes


def test_mtan_and_autolambda_treat_absent_classes_alike():
    """Classes 0, 1 occur, class 2 never (not in GT, never predicted). Confusion: GT 0 -> pred 0 twice,
    GT 1 -> pred 0 once, GT 1 -> pred 1 once. IoU_0 = 2/3, IoU_1 = 1/2, IoU_2 = 0/0."""
    pred = torch.tensor([[[0, 0, 0, 1]]])
    gt = torch.tensor([[[0, 0, 1, 1]]])
    results = {}
    for preset in ("mtan", "autolambda", "ctal_cnn", "mtinet"):
        m = build_task_metrics("semseg", 3, protocol=preset)
        m.update(pred, gt)
        results[preset] = float(m.compute()["miou"])
    assert results["mtan"] == results["autolambda"] == results["ctal_cnn"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert results["mtinet"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    plain = SegmentationMetrics(3, absent="nan")
    plain.update(pred, gt)
    assert math.isnan(float(plain.compute()["miou"]))  # the reference code's plain mean
    present = SegmentationMetrics(2, absent="nan")  # every class occurs: the plain mean is the same number
    present.update(pred, gt)
    assert float(present.compute()["miou"]) == pytest.approx(results["mtan"])


# ------------------------------------------------------------------------ 5. edge settings per family


@pytest.mark.parametrize("preset", sorted(PROTOCOLS))
@pytest.mark.parametrize("family,max_dist,gt", [("nyud", 0.011, "seg2bmap"), ("pascal", 0.0075, "thin")])
def test_every_preset_scores_edges_with_the_family_settings(preset, family, max_dist, gt):
    metrics = MultiTaskMetrics(["edge"], protocol=preset, family=family)
    edge = metrics.metrics["edge"]["odsf"]
    assert (edge.max_dist, edge.gt) == (max_dist, gt)
    override = build_task_metrics("edge", protocol=preset, family=family, max_dist=0.02)
    assert override["odsf"].max_dist == 0.02


def test_edge_odsf_without_a_tolerance_is_an_error():
    with pytest.raises(ValueError, match="needs max_dist"):
        MultiTaskMetrics(["edge"])
    with pytest.raises(ValueError, match="no edge odsF settings for dataset family 'cityscapes'"):
        build_task_metrics("edge", family="cityscapes")
    assert MultiTaskMetrics(["edge"], options={"edge": {"odsf": False}}).metrics["edge"] is not None


@pytest.mark.parametrize("valid", ["nonzero", "range", "mtcp_reference"])
def test_non_finite_gt_pixels_are_never_valid(valid):
    """NaN, +inf and -inf GT pixels count as invalid under every rule: the sums equal those of the frame
    without them (the CPU path checks finiteness after gathering the valid pixels)."""
    rng = np.random.default_rng(5)
    gt = torch.from_numpy(rng.uniform(0.5, 6.0, (1, 1, 40, 50))).float()
    pred = gt + torch.from_numpy(rng.normal(0, 0.3, gt.shape)).float()
    bad = gt.clone()
    bad[0, 0, 3, 4], bad[0, 0, 10, 11], bad[0, 0, 20, 30] = float("nan"), float("inf"), float("-inf")
    clean = gt.clone()
    clean[0, 0, 3, 4] = clean[0, 0, 10, 11] = clean[0, 0, 20, 30] = 0.0 if valid != "range" else -1.0
    a, b = DepthMetrics(valid=valid), DepthMetrics(valid=valid)
    a.update(pred, bad)
    b.update(pred, clean)
    assert {k: float(v) for k, v in a.compute().items()} == {k: float(v) for k, v in b.compute().items()}
