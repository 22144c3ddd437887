"""DepthMetrics against a numpy reference, hand cases, invariants and the real NYUv2 depth frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.metrics.depth import METRICS, DepthMetrics

MTCP_CAP = 6.5535


def np_depth(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Direct numpy form of spec/protocols.md §4.2 (predictions <= 0 set to 1e-9)."""
    pred = pred.astype(np.float64)
    p = np.where(pred > 0, pred, 1e-9)[valid]
    g = gt[valid].astype(np.float64)
    d = p - g
    ratio = np.maximum(g / p, p / g)
    return {
        "rmse": np.sqrt(np.mean(d**2)),
        "log_rmse": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
        "abs_rel": np.mean(np.abs(d) / g),
        "sq_rel": np.mean(d**2 / g),
        "abs_err": np.mean(np.abs(d)),
        "delta1": 100 * np.mean(ratio < 1.25),
        "delta2": 100 * np.mean(ratio < 1.25**2),
        "delta3": 100 * np.mean(ratio < 1.25**3),
    }


def _random(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 1, 7, 9, generator=g) * 10 + 0.3
    gt[torch.rand(n, 1, 7, 9, generator=g) < 0.2] = 0
    pred = gt + torch.randn(n, 1, 7, 9, generator=g)
    pred[0, 0, 0, :3] = torch.tensor([-1.0, 0.0, 0.5])  # non-positive predictions are clamped
    return pred, gt


def _check(out: dict, expected: dict, rel: float = 1e-9) -> None:
    assert set(out) == set(METRICS)
    for name in METRICS:
        assert out[name].item() == pytest.approx(expected[name], rel=rel), name


def test_hand_computed():
    pred = torch.tensor([2.0, 1.0, 5.0]).reshape(1, 1, 1, 3)
    gt = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 3)  # third pixel invalid
    m = DepthMetrics()
    m.update(pred, gt)
    out = m.compute()
    assert out["rmse"].item() == pytest.approx(np.sqrt(0.5))
    assert out["abs_err"].item() == pytest.approx(0.5)
    assert out["abs_rel"].item() == pytest.approx(0.5)
    assert out["sq_rel"].item() == pytest.approx(0.5)
    assert out["log_rmse"].item() == pytest.approx(np.sqrt(np.log(2) ** 2 / 2))
    assert out["delta1"].item() == pytest.approx(50.0)
    assert out["delta3"].item() == pytest.approx(50.0)  # ratio 2 > 1.25^3 = 1.953


def test_gt_against_itself():
    _, gt = _random(0)
    m = DepthMetrics()
    m.update(gt, gt)
    out = m.compute()
    assert out["rmse"].item() == 0 and out["abs_rel"].item() == 0 and out["log_rmse"].item() == 0
    assert out["delta1"].item() == 100


@pytest.mark.parametrize("valid", ["nonzero", "range", "mtcp_reference"])
def test_pixel_pooling_streaming_equals_one_shot_and_numpy(valid):
    pred, gt = _random(1)
    gt[1, 0, 0, :4] = torch.tensor([85.0, 79.0, 6.5535, 6.5534])
    streamed, one_shot = DepthMetrics(valid=valid), DepthMetrics(valid=valid)
    for i in range(0, 6, 2):
        streamed.update(pred[i : i + 2], gt[i : i + 2])
    one_shot.update(pred, gt)
    g = gt.numpy()
    mask = {"nonzero": g != 0, "range": (g > 0) & (g < 80), "mtcp_reference": (g != 0) & (g < MTCP_CAP)}[valid]
    expected = np_depth(pred.numpy(), g, mask)
    _check(streamed.compute(), expected)
    assert torch.allclose(streamed.sums, one_shot.sums, rtol=1e-12)
    assert streamed.sums[0].item() == mask.sum()


def test_batch_pooling_is_the_mean_of_batch_metrics():
    pred, gt = _random(2)
    gt[4:6] = 0  # a batch without valid pixels is skipped
    m = DepthMetrics(pooling="batch")
    per_batch = []
    for i in range(0, 6, 2):
        m.update(pred[i : i + 2], gt[i : i + 2])
        valid = gt[i : i + 2].numpy() != 0
        if valid.any():
            per_batch.append(np_depth(pred[i : i + 2].numpy(), gt[i : i + 2].numpy(), valid))
    assert len(per_batch) == 2
    _check(m.compute(), {k: np.mean([b[k] for b in per_batch]) for k in METRICS})


def test_state_size_is_constant_and_empty_is_nan():
    m = DepthMetrics()
    for seed in range(25):
        pred, gt = _random(seed, n=2)
        m.update(pred, gt)
        assert sum(v.numel() for v in m.metric_state.values()) == 9
    empty = DepthMetrics()
    empty.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert torch.isnan(empty.compute()["rmse"])


def test_bad_options_and_shapes():
    with pytest.raises(ValueError, match="valid"):
        DepthMetrics(valid="eigen")
    with pytest.raises(ValueError, match="pooling"):
        DepthMetrics(pooling="image")
    with pytest.raises(ValueError, match="differ in shape"):
        DepthMetrics().update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 4, 4))


def test_mtcp_reference_excludes_exactly_the_far_pixels_of_real_frames(shared_data):
    """nyudv2_mini test depth (uint16 mm, dense, up to 9.96 m): the capped mask drops exactly gt >= 6.5535 m."""
    files = sorted((shared_data / "nyudv2_mini" / "test" / "depth").glob("*.png"))
    assert len(files) == 8
    gt = np.stack([np.array(Image.open(f)) for f in files]).astype(np.float32)[:, None] / 1000.0
    far = gt >= MTCP_CAP
    assert far.any() and (gt > 0).all()
    rng = np.random.default_rng(0)
    pred = gt * rng.uniform(0.8, 1.2, gt.shape).astype(np.float32)
    standard, capped = DepthMetrics(), DepthMetrics(valid="mtcp_reference")
    for i in range(0, 8, 4):
        p, t = torch.from_numpy(pred[i : i + 4]), torch.from_numpy(gt[i : i + 4])
        standard.update(p, t)
        capped.update(p, t)
    assert standard.sums[0].item() == gt.size
    assert capped.sums[0].item() == gt.size - far.sum()
    _check(capped.compute(), np_depth(pred, gt, ~far), rel=1e-6)
    _check(standard.compute(), np_depth(pred, gt, np.ones_like(far)), rel=1e-6)
