"""Saliency maxF / max-mIoU (spec/protocols.md §4.4) against direct numpy implementations and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densemtl.metrics.saliency import ATRC_THRESHOLDS, SaliencyMetrics, quantize_uint8

# -- independent numpy references ---------------------------------------------------------------------


def _np_atrc_thresholds() -> np.ndarray:
    """0.05..0.95 as float32; the spec states 0.6 is 0.59999996 (the only value off k/20 in float32)."""
    tau = (np.arange(1, 20) / 20).astype(np.float32)
    tau[11] = np.float32(0.59999996)
    return tau


def _np_pooled_maxf(p: np.ndarray, gt: np.ndarray, tau: np.ndarray) -> tuple[float, float]:
    """Pooled ATRC form: B = p >= τ over valid pixels (gt != 255), β² = 0.3, NaN -> 0; max F and max IoU."""
    valid = gt != 255
    p, g = p[valid], gt[valid] == 1
    best_f, best_iou = 0.0, 0.0
    for t in tau:
        b = p >= t
        tp, pp, ap = float(np.sum(b & g)), float(np.sum(b)), float(np.sum(g))
        prec = tp / pp if pp else math.nan
        rec = tp / ap if ap else math.nan
        f = 1.3 * prec * rec / (0.3 * prec + rec) if (0.3 * prec + rec) else math.nan
        best_f = max(best_f, 0.0 if math.isnan(f) else f)
        union = pp + ap - tp
        best_iou = max(best_iou, tp / union if union else 0.0)
    return 100 * best_f, 100 * best_iou


def _np_mtinet(png: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """MTI-Net form on uint8 maps (N, H, W): float32 png/255 > float64 linspace, per-image P/R/J averaged."""
    tau = np.linspace(0.2, 0.9, 15)
    ps, rs, js = [], [], []
    for v, g in zip(png, gt):
        s = v.astype(np.float32) / np.float32(255)
        g = g == 1
        prow, rrow, jrow = [], [], []
        for t in tau:
            b = s > t  # float32 array vs float64 scalar: compared in float64 (NumPy 2)
            tp, fp, fn = np.sum(b & g), np.sum(b & ~g), np.sum(~b & g)
            prow.append(tp / (tp + fp + 1e-12))
            rrow.append(tp / (tp + fn + 1e-12))
            jrow.append(1.0 if not b.any() and not g.any() else tp / np.sum(b | g))
        ps.append(prow)
        rs.append(rrow)
        js.append(jrow)
    p, r, j = np.mean(ps, 0), np.mean(rs, 0), np.mean(js, 0)
    f = 2 * p * r / (p + r + 1e-12)
    return 100 * f.max(), 100 * j.max()


def _mid_bin_prob(png: np.ndarray) -> torch.Tensor:
    """Probabilities that quantise to exactly ``png`` (mid-bin, far from truncation boundaries)."""
    return torch.from_numpy((png.astype(np.float64) + 0.5) / 255).float()


# -- thresholds and quantisation ---------------------------------------------------------------------


def test_atrc_thresholds_are_the_spec_float32_values():
    assert ATRC_THRESHOLDS.dtype == torch.float32
    np.testing.assert_array_equal(ATRC_THRESHOLDS.numpy(), _np_atrc_thresholds())


def test_quantize_truncates_like_a_uint8_cast():
    # 255 σ(0) = 127.5 -> 127; σ(large) -> 255; σ(-large) -> 0; the mid-bin 51.5/255 -> 51
    logits = torch.tensor([0.0, 30.0, -30.0, math.log(51.5 / 203.5)]).view(1, 1, 1, 4)
    assert quantize_uint8(logits).flatten().tolist() == [127, 255, 0, 51]
    probs = torch.tensor([0.0, 0.999, 0.2 + 1e-6, 1.0]).view(1, 1, 1, 4)
    assert quantize_uint8(probs, from_logits=False).flatten().tolist() == [0, 254, 51, 255]


# -- atrc (default) ----------------------------------------------------------------------------------


def test_atrc_is_the_default_and_matches_pooled_numpy():
    rng = np.random.default_rng(0)
    p = rng.random((3, 1, 9, 11)).astype(np.float32)
    gt = (rng.random((3, 1, 9, 11)) < 0.4).astype(np.float32)
    gt[0, 0, :2] = 255
    m = SaliencyMetrics(from_logits=False)
    assert m.protocol == "atrc"
    m.update(torch.from_numpy(p), torch.from_numpy(gt))
    out = m.compute()
    f, iou = _np_pooled_maxf(p, gt, _np_atrc_thresholds())
    assert float(out["maxf"]) == pytest.approx(f, abs=1e-9)
    assert float(out["miou"]) == pytest.approx(iou, abs=1e-9)


def test_atrc_uses_sigmoid_for_one_channel_and_softmax_for_two():
    rng = np.random.default_rng(1)
    # probabilities kept away from every threshold so float noise cannot move a pixel across one
    q = (rng.integers(0, 19, size=(2, 6, 7)) * 0.05 + 0.025).astype(np.float64)
    gt = torch.from_numpy((rng.random((2, 1, 6, 7)) < 0.5).astype(np.float32))
    one = torch.from_numpy(np.log(q / (1 - q))).float()[:, None]
    two = torch.stack([torch.zeros_like(one[:, 0]), one[:, 0]], dim=1)  # softmax_1 = σ(x)
    expected, _ = _np_pooled_maxf(q.astype(np.float32)[:, None], gt.numpy(), _np_atrc_thresholds())
    for preds in (one, two):
        m = SaliencyMetrics("atrc")
        m.update(preds, gt)
        assert float(m.compute()["maxf"]) == pytest.approx(expected, abs=1e-9)


def test_atrc_float32_threshold_ties_use_greater_equal():
    # τ_11 = 0.59999996f: p = 0.59999996f and 0.6f count, the float32 just below does not
    below = np.nextafter(np.float32(0.59999996), np.float32(0))
    p = torch.tensor([np.float32(0.59999996), np.float32(0.6), below], dtype=torch.float32).view(1, 1, 1, 3)
    m = SaliencyMetrics("atrc", from_logits=False)
    m.update(p, torch.ones(1, 1, 1, 3))
    assert int(m.pp[11]) == 2 and int(m.pp[12]) == 0 and int(m.pp[10]) == 3


def test_atrc_nan_f_is_zero_and_empty_gt_gives_zero():
    m = SaliencyMetrics("atrc", from_logits=False)
    m.update(torch.full((1, 1, 4, 4), 0.01), torch.zeros(1, 1, 4, 4))
    out = m.compute()
    assert float(out["maxf"]) == 0.0
    assert not torch.isnan(out["maxf"])


# -- invpt quirk (opt-in) ----------------------------------------------------------------------------


def test_invpt_is_opt_in_and_compat_selects_it():
    assert SaliencyMetrics().protocol == "atrc"
    assert SaliencyMetrics("atrc", compat=True).protocol == "invpt"
    with pytest.raises(ValueError, match="compat"):
        SaliencyMetrics("mtinet", compat=True)
    with pytest.raises(ValueError, match="available"):
        SaliencyMetrics("bogus")


def test_invpt_thresholds_act_on_p_at_logit_tau():
    # effective thresholds on p: τ ≤ 0.5 -> all, τ ≥ 0.75 -> none, τ = 0.55..0.70 -> p ≥ logit(τ)
    cuts = [math.log(t / (1 - t)) for t in (0.55, 0.60, 0.65, 0.70)]
    assert cuts == pytest.approx([0.2007, 0.4055, 0.6190, 0.8473], abs=1e-4)
    q = np.array([0.0, 0.19, 0.21, 0.39, 0.42, 0.6, 0.64, 0.84, 0.86, 1.0], np.float32)
    preds = torch.from_numpy(np.stack([1 - q, q])[None, :, None, :])  # (1, 2, 1, 10) probabilities
    m = SaliencyMetrics("invpt", from_logits=False)
    m.update(preds, torch.ones(1, 1, 1, len(q)))
    pp = m.pp.tolist()
    tau = _np_atrc_thresholds()
    for k, t in enumerate(tau):
        if t <= 0.5:
            assert pp[k] == len(q), t
        elif t >= 0.75:
            assert pp[k] == 0, t
    # at τ = 0.55, 0.60, 0.65, 0.70: pixels with q above the cut
    expected = [int(np.sum(q > c)) for c in cuts]
    assert [pp[10], pp[11], pp[12], pp[13]] == expected == [8, 6, 4, 2]


def test_invpt_maxf_equals_pooled_numpy_on_double_sigmoid():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(2, 2, 8, 8)).astype(np.float32)
    gt = (rng.random((2, 1, 8, 8)) < 0.5).astype(np.float32)
    e = np.exp(logits - logits.max(1, keepdims=True))
    soft1 = (e[:, 1] / e.sum(1))[:, None].astype(np.float32)
    p = (1 / (1 + np.exp(-(soft1 * 255 / 255)))).astype(np.float32)
    f, _ = _np_pooled_maxf(p, gt, _np_atrc_thresholds())
    m = SaliencyMetrics("invpt")
    m.update(torch.from_numpy(logits), torch.from_numpy(gt))
    assert float(m.compute()["maxf"]) == pytest.approx(f, abs=1e-6)
    clean = SaliencyMetrics("atrc")
    clean.update(torch.from_numpy(logits), torch.from_numpy(gt))
    assert float(clean.compute()["maxf"]) != pytest.approx(f, abs=1e-6)


# -- mtinet ------------------------------------------------------------------------------------------


def test_mtinet_matches_per_image_numpy_reference():
    rng = np.random.default_rng(3)
    png = rng.integers(0, 256, size=(4, 7, 9)).astype(np.uint8)
    gt = (rng.random((4, 7, 9)) < 0.45).astype(np.uint8)
    gt[2] = 0  # an image without salient pixels
    m = SaliencyMetrics("mtinet", from_logits=False)
    assert m.quantize
    m.update(_mid_bin_prob(png)[:, None], torch.from_numpy(gt).float()[:, None])
    out = m.compute()
    f, iou = _np_mtinet(png, gt)
    assert float(out["maxf"]) == pytest.approx(f, abs=1e-9)
    assert float(out["miou"]) == pytest.approx(iou, abs=1e-9)


def test_mtinet_png_51_counts_above_0_2():
    # float32(51/255) > float64(0.2): recall 1 at τ = 0.2; value 50 does not pass
    ones = torch.ones(1, 1, 2, 2)
    for value, recall0 in ((51, 1.0), (50, 0.0)):
        m = SaliencyMetrics("mtinet", from_logits=False)
        m.update(_mid_bin_prob(np.full((1, 1, 2, 2), value, np.uint8)), ones)
        assert float(m.curves()["recall"][0]) == pytest.approx(recall0, abs=1e-9)
    # a float32 comparison would say otherwise
    assert not np.float32(51) / np.float32(255) > np.float32(0.2)


def test_mtinet_empty_image_conventions():
    # both empty: J = 1, P = R = 0; prediction without GT: J = 0
    m = SaliencyMetrics("mtinet", from_logits=False)
    m.update(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    c = m.curves()
    assert torch.all(c["iou"] == 1) and torch.all(c["precision"] == 0) and torch.all(c["recall"] == 0)
    assert float(m.compute()["maxf"]) == 0.0
    m = SaliencyMetrics("mtinet", from_logits=False)
    m.update(torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    assert torch.all(m.curves()["iou"] == 0)


def test_mtinet_hand_example_two_images():
    # image A: GT left half of 1x4, prediction 0.5 everywhere (png 127 after quantisation: above τ < 0.498)
    # image B: perfect prediction. At τ = 0.2: A P=0.5 R=1 J=0.5, B P=R=J=1 -> P̄=0.75, R̄=1, J̄=0.75.
    # At τ ≥ 0.5 A is empty (P=R=J=0), B still perfect (τ < 0.9) -> P̄ = R̄ = J̄ = 0.5 -> F = 0.5.
    # max F = 2·0.75·1/1.75 = 0.857142..., max mIoU = 0.75.
    gt = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0]]).view(2, 1, 1, 4)
    preds = torch.tensor([[0.5] * 4, [0.99, 0.99, 0.0, 0.0]]).view(2, 1, 1, 4)
    m = SaliencyMetrics("mtinet", from_logits=False)
    m.update(preds, gt)
    out = m.compute()
    assert float(out["maxf"]) == pytest.approx(100 * 1.5 / 1.75, abs=1e-9)
    assert float(out["miou"]) == pytest.approx(75.0, abs=1e-9)


# -- streaming, DDP state, memory, inputs --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["atrc", "mtinet", "invpt"])
def test_streaming_equals_one_shot_and_states_sum(protocol):
    g = torch.Generator().manual_seed(4)
    preds = torch.randn(6, 1, 5, 6, generator=g) * 3
    gt = (torch.rand(6, 1, 5, 6, generator=g) < 0.5).float()
    gt[1, 0, 0] = 255
    one = SaliencyMetrics(protocol)
    one.update(preds, gt)
    stream = SaliencyMetrics(protocol)
    for i in range(0, 6, 2):
        stream.update(preds[i : i + 2], gt[i : i + 2])
    sizes = {name: getattr(stream, name).numel() for name in stream._defaults}
    # two "ranks": the sum of their states is the one-shot state (dist_reduce_fx = "sum")
    a, b = SaliencyMetrics(protocol), SaliencyMetrics(protocol)
    a.update(preds[:3], gt[:3])
    b.update(preds[3:], gt[3:])
    for name in one._defaults:
        assert one._reductions[name].__name__ == "dim_zero_sum"
        torch.testing.assert_close(getattr(a, name) + getattr(b, name), getattr(one, name), rtol=1e-12, atol=1e-12)
        assert getattr(one, name).numel() == sizes[name]  # O(1) in the number of images
    for key, value in one.compute().items():
        assert float(stream.compute()[key]) == pytest.approx(float(value), abs=1e-9)


def test_input_shapes_are_checked():
    m = SaliencyMetrics()
    with pytest.raises(ValueError, match="saliency predictions"):
        m.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    m.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))  # (B, H, W) targets are accepted
