"""NormalsMetrics against a numpy arccos reference, hand cases, invariants and real NYUv2 normals (000433)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from densemtl.metrics.normals import METRICS, NormalsMetrics, quantize_png


def np_angles(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Angles (degrees) at valid pixels by the arccos form (MTI-Net, mtan), in float64."""
    p = np.moveaxis(pred.astype(np.float64), 1, -1)
    g = np.moveaxis(gt.astype(np.float64), 1, -1)
    valid = np.linalg.norm(g, axis=-1) != 0
    p = p[valid] / np.linalg.norm(p[valid], axis=-1, keepdims=True)
    g = g[valid] / np.linalg.norm(g[valid], axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((p * g).sum(-1), -1, 1)))


def np_stats(theta: np.ndarray) -> dict[str, float]:
    return {
        "mean": theta.mean(),
        "median": np.median(theta),
        "rmse": np.sqrt(np.mean(theta**2)),
        "within_11.25": 100 * np.mean(theta < 11.25),
        "within_22.5": 100 * np.mean(theta < 22.5),
        "within_30": 100 * np.mean(theta < 30),
    }


def _random(seed: int, n: int = 6, noise: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    gt = F.normalize(torch.randn(n, 3, 8, 10, generator=g, dtype=torch.float64), dim=1)
    gt[torch.rand(n, 1, 8, 10, generator=g).expand(-1, 3, -1, -1) < 0.2] = 0
    pred = (gt + noise * torch.randn(n, 3, 8, 10, generator=g, dtype=torch.float64)) * 3.0  # not unit length
    return pred, gt


def _check(out, expected, median_tol: float, rel: float = 1e-7) -> None:
    assert set(out) == set(METRICS)
    for name in METRICS:
        tol = median_tol if name == "median" else rel * max(1.0, abs(expected[name]))
        assert out[name].item() == pytest.approx(expected[name], abs=tol), name


def test_hand_computed_angles():
    # pixel 1: 90°; pixel 2: 45°; pixel 3: 0°; pixel 4: invalid GT
    pred = torch.tensor([[0.0, 1.0, 1.0, 5.0], [1.0, 1.0, 0.0, 5.0], [0.0, 0.0, 0.0, 5.0]]).reshape(1, 3, 1, 4)
    gt = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 3, 1, 4)
    m = NormalsMetrics()
    m.update(pred, gt)
    out = m.compute()
    assert out["mean"].item() == pytest.approx(45.0)
    assert out["median"].item() == pytest.approx(45.0, abs=0.005 + 1e-9)  # bin centre: exact to ± 0.005°
    assert out["rmse"].item() == pytest.approx(np.sqrt((90**2 + 45**2) / 3))
    assert out["within_11.25"].item() == pytest.approx(100 / 3)
    assert out["within_30"].item() == pytest.approx(100 / 3)


def test_gt_against_itself_is_zero():
    _, gt = _random(0)
    m = NormalsMetrics()
    m.update(gt, gt)
    out = m.compute()
    assert out["mean"].item() == pytest.approx(0.0, abs=1e-6)
    assert 0 <= out["median"].item() <= 0.005  # the centre of the first 0.01° bin
    assert out["within_11.25"].item() == 100


def test_pooled_streaming_equals_one_shot_and_numpy():
    pred, gt = _random(1)
    streamed, one_shot = NormalsMetrics(), NormalsMetrics()
    for i in range(0, 6, 2):
        streamed.update(pred[i : i + 2], gt[i : i + 2])
    one_shot.update(pred, gt)
    theta = np_angles(pred.numpy(), gt.numpy())
    _check(streamed.compute(), np_stats(theta), median_tol=0.005 + 1e-9)
    assert torch.equal(streamed.hist, one_shot.hist)
    assert torch.allclose(streamed.sums, one_shot.sums, rtol=1e-12)


def test_median_is_exact_to_the_bin_width():
    pred, gt = _random(2, noise=1.5)
    theta = np_angles(pred.numpy(), gt.numpy())
    for width in (0.01, 0.1, 1.0):
        m = NormalsMetrics(bin_width=width)
        m.update(pred, gt)
        assert abs(m.compute()["median"].item() - np.median(theta)) <= width / 2 + 1e-9


def test_batch_pooling_is_the_mean_of_batch_metrics():
    pred, gt = _random(3)
    m = NormalsMetrics(pooling="batch")
    per_batch = []
    for i in range(0, 6, 3):
        m.update(pred[i : i + 3], gt[i : i + 3])
        per_batch.append(np_stats(np_angles(pred[i : i + 3].numpy(), gt[i : i + 3].numpy())))
    _check(m.compute(), {k: np.mean([b[k] for b in per_batch]) for k in METRICS}, median_tol=1e-9)


def test_quantize_png_matches_mtinet_round_trip():
    pred, gt = _random(4)
    p = np.moveaxis(pred.numpy(), 1, -1)
    unit = p / np.linalg.norm(p, axis=-1, keepdims=True)
    png = (255 * (unit + 1) / 2).astype(np.uint8)  # what MTI-Net saves
    back = 2 * png.astype(np.float64) / 255 - 1
    back = back / (np.linalg.norm(back, axis=-1, keepdims=True) + 1e-12)
    assert quantize_png(pred).numpy() == pytest.approx(np.moveaxis(back, -1, 1), abs=1e-12)
    m = NormalsMetrics(quantize_png=True)
    m.update(pred, gt)
    _check(m.compute(), np_stats(np_angles(np.moveaxis(back, -1, 1), gt.numpy())), median_tol=0.005 + 1e-9)


def test_state_size_is_constant():
    m = NormalsMetrics()
    for seed in range(20):
        pred, gt = _random(seed, n=1)
        m.update(pred, gt)
        assert sum(v.numel() for v in m.metric_state.values()) == 6 + 18000
    b = NormalsMetrics(pooling="batch")
    b.update(*_random(0, n=1))
    assert sum(v.numel() for v in b.metric_state.values()) == 7


def test_bad_arguments():
    with pytest.raises(ValueError, match="bin_width"):
        NormalsMetrics(bin_width=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        NormalsMetrics().update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))


@pytest.fixture(scope="module")
def real_normals(shared_data) -> np.ndarray:
    """000433 normals as (1, 3, 480, 640) float64 with invalid (mid-grey, norm far from 1) pixels zeroed."""
    v = np.array(Image.open(shared_data / "nyud_mtrefinenet_examples" / "000433" / "normals.png"))
    n = 2 * v.astype(np.float64) / 255 - 1
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 0.5, n / norm, 0.0)
    return np.moveaxis(n, -1, 0)[None]


def test_real_normals(real_normals):
    gt = torch.from_numpy(real_normals)
    valid = (real_normals != 0).any(1)
    assert 0.75 < valid.mean() < 0.8  # about 78 % valid (SOURCE.md)
    itself = NormalsMetrics()
    itself.update(gt.float(), gt.float())
    assert itself.compute()["mean"].item() == pytest.approx(0.0, abs=1e-3)
    assert itself.sums[0].item() == valid.sum()
    rng = np.random.default_rng(0)
    pred = real_normals + 0.3 * rng.standard_normal(real_normals.shape)
    m = NormalsMetrics()
    m.update(torch.from_numpy(pred), gt)
    _check(m.compute(), np_stats(np_angles(pred, real_normals)), median_tol=0.005 + 1e-9, rel=1e-6)
    # the 8-bit round trip of the (already 8-bit) GT itself moves it by well under a degree
    q = NormalsMetrics(quantize_png=True)
    q.update(gt, gt)
    assert q.compute()["mean"].item() < 0.5
