"""SegmentationMetrics against numpy references, hand cases, invariants and the 654 real NYUv2 test labels."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.metrics.segmentation import SegmentationMetrics


def np_confusion(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int = 255) -> np.ndarray:
    """Direct numpy confusion matrix (rows = GT), counting only valid GT pixels."""
    valid = gt != ignore
    flat = gt[valid].astype(np.int64) * k + pred[valid]
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def np_scores(cm: np.ndarray, absent: str = "zero") -> tuple[float, float, np.ndarray]:
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    if absent == "zero":
        iou = tp / np.maximum(union, 1e-8)
        miou = iou.mean()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        miou = np.nanmean(iou)
    return 100 * miou, 100 * tp.sum() / cm.sum(), 100 * iou


def test_hand_computed_two_classes():
    # GT   [0 0 1 1 | 255]   pred [0 1 1 1 | 0]: TP0 = 1, FN0 = 1, TP1 = 2, FP1 = 1
    gt = torch.tensor([[[0, 0, 1, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0]]])
    m = SegmentationMetrics(2)
    m.update(pred, gt)
    out = m.compute()
    assert out["iou_per_class"].tolist() == pytest.approx([50.0, 200 / 3])
    assert out["miou"].item() == pytest.approx((50 + 200 / 3) / 2)
    assert out["pixel_acc"].item() == pytest.approx(75.0)


def test_absent_zero_and_skip():
    gt = torch.tensor([[[0, 0, 1, 1]]])
    pred = gt.clone()
    zero, skip = SegmentationMetrics(3, absent="zero"), SegmentationMetrics(3, absent="skip")
    zero.update(pred, gt)
    skip.update(pred, gt)
    assert zero.compute()["miou"].item() == pytest.approx(200 / 3)  # class 2 absent counts 0
    assert skip.compute()["miou"].item() == pytest.approx(100.0)
    assert torch.isnan(skip.compute()["iou_per_class"][2])


def test_random_logits_streaming_equals_one_shot_and_numpy():
    g = torch.Generator().manual_seed(0)
    k = 6
    logits = torch.randn(6, k, 9, 11, generator=g)
    gt = torch.randint(0, k, (6, 9, 11), generator=g)
    gt[torch.rand(6, 9, 11, generator=g) < 0.2] = 255
    streamed, one_shot = SegmentationMetrics(k), SegmentationMetrics(k)
    for i in range(0, 6, 2):
        streamed.update(logits[i : i + 2], gt[i : i + 2])
    one_shot.update(logits, gt)
    cm = np_confusion(logits.argmax(1).numpy(), gt.numpy(), k)
    miou, acc, iou = np_scores(cm)
    assert torch.equal(streamed.confmat, one_shot.confmat)
    assert np.array_equal(streamed.confmat.numpy(), cm)
    out = streamed.compute()
    assert out["miou"].item() == pytest.approx(miou)
    assert out["pixel_acc"].item() == pytest.approx(acc)
    assert out["iou_per_class"].numpy() == pytest.approx(iou)


def test_images_without_parts_contribute_nothing():
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 7, (2, 5, 5), generator=g)
    gt = torch.randint(0, 7, (2, 5, 5), generator=g)
    gt[1] = 255  # an image without person parts: the whole map is ignore
    with_empty, alone = SegmentationMetrics(7), SegmentationMetrics(7)
    with_empty.update(pred, gt)
    alone.update(pred[:1], gt[:1])
    assert torch.equal(with_empty.confmat, alone.confmat)


def test_state_size_is_constant():
    m = SegmentationMetrics(5)
    sizes = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        m.update(torch.randint(0, 5, (2, 8, 8), generator=g), torch.randint(0, 5, (2, 8, 8), generator=g))
        sizes.append(sum(v.numel() for v in m.metric_state.values()))
    assert set(sizes) == {25}
    assert int(m.confmat.sum()) == 20 * 2 * 64


def test_bad_labels_are_clear_errors():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="negative"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -3))
    with pytest.raises(ValueError, match="predicted labels"):
        m.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="absent"):
        SegmentationMetrics(3, absent="none")


# ------------------------------------------------------------------------------- real NYUv2 labels
@pytest.fixture(scope="module")
def nyu654(shared_data, tmp_path_factory) -> np.ndarray:
    """The 40-class labels of all 654 NYUv2 test frames in the contract encoding: (654, 480, 640) uint8."""
    archive = shared_data / "nyudv2_mini" / "meta" / "nyuv2_test_class40_labels_all654.tgz"
    out = tmp_path_factory.mktemp("nyu654")
    with tarfile.open(archive) as tf:
        tf.extractall(out, filter="data")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 654
    raw = np.stack([np.array(Image.open(f)) for f in files])
    return np.where(raw == 0, 255, raw - 1).astype(np.uint8)  # 0 = void -> 255; v -> v - 1


def _stream(metric: SegmentationMetrics, pred: np.ndarray, gt: np.ndarray, batch: int = 32) -> None:
    for i in range(0, len(gt), batch):
        metric.update(torch.from_numpy(pred[i : i + batch]), torch.from_numpy(gt[i : i + batch]))  # uint8 maps


def test_real_labels_against_themselves(nyu654):
    m = SegmentationMetrics(40)
    _stream(m, np.where(nyu654 == 255, 0, nyu654), nyu654)
    out = m.compute()
    assert out["miou"].item() == pytest.approx(100.0)  # every class occurs in the 654 test frames
    assert out["pixel_acc"].item() == pytest.approx(100.0)
    assert int(m.confmat.sum()) == int((nyu654 != 255).sum())


def test_real_labels_perturbed_against_numpy(nyu654):
    """Every second frame (327), class 3 (bed) merged into 4 (chair), 5 % of pixels flipped at random."""
    rng = np.random.default_rng(0)
    m = SegmentationMetrics(40)
    cm = np.zeros((40, 40), dtype=np.int64)
    for i in range(0, len(nyu654), 32):
        gt = nyu654[i : i + 32 : 2]
        pred = np.where(gt == 255, 0, gt)
        pred[pred == 3] = 4
        flip = rng.random(pred.shape, dtype=np.float32) < 0.05
        pred[flip] = rng.integers(0, 40, int(flip.sum()))
        m.update(torch.from_numpy(pred), torch.from_numpy(gt))
        cm += np_confusion(pred, gt, 40)
    miou, acc, iou = np_scores(cm)
    assert np.array_equal(m.confmat.numpy(), cm)
    out = m.compute()
    assert out["miou"].item() == pytest.approx(miou, rel=1e-12)
    assert out["pixel_acc"].item() == pytest.approx(acc, rel=1e-12)
    assert out["iou_per_class"][3].item() < 10  # class 3 nearly vanished from the prediction
    assert 70 < out["miou"].item() < 95
