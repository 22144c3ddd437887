"""Edge odsF (spec/protocols.md §4.5): thinning, seg2bmap, boundary matching and ODS/OIS against hand values
and brute-force references (skimage thinning, Hungarian assignment with scipy.optimize)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.morphology import thin as sk_thin

from densemtl.metrics.boundary import match_counts, radius_pixels, seg2bmap, sweep_counts, thin
from densemtl.metrics.edge import MAX_DIST, EdgeMetrics, edge_probability, edge_thresholds

# -- references ----------------------------------------------------------------------------------------


def _brute_matched(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Maximum one-to-one matching within ``radius`` by a dense Hungarian assignment (cost 0 inside, 1 out)."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(g) == 0:
        return 0
    d = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    cost = (d > radius).astype(float)
    rows, cols = linear_sum_assignment(cost)
    return int(np.sum(cost[rows, cols] == 0))


def _prf(cnt_p, sum_p, cnt_r, sum_r) -> tuple[float, float, float]:
    """P, R, F with the §4.5 conventions, written out by hand."""
    if sum_p == 0:
        p, r = 1.0, 0.0
    elif sum_r == 0 and cnt_p == 0:
        p, r = 0.0, 1.0
    else:
        p, r = cnt_p / sum_p, cnt_r / sum_r
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def _metric_for_radius(radius: float, shape: tuple[int, int], **kwargs) -> EdgeMetrics:
    """EdgeMetrics whose tolerance on an (H, W) image is ``radius`` pixels (+ a hair against rounding)."""
    return EdgeMetrics(max_dist=(radius + 1e-9) / math.hypot(*shape), **kwargs)


def _probs(x: np.ndarray) -> torch.Tensor:
    """(H, W) probabilities -> (1, 1, H, W) float tensor."""
    return torch.from_numpy(np.asarray(x, np.float32))[None, None]


# -- thinning and seg2bmap -----------------------------------------------------------------------------


def test_thin_equals_skimage_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(150):
        m = rng.random((rng.integers(1, 25), rng.integers(1, 25))) < rng.random()
        np.testing.assert_array_equal(thin(m), sk_thin(m))
    for sigma in (0.7, 2.0, 4.0):  # thick blobs: many iterations
        m = ndimage.gaussian_filter(rng.random((90, 120)), sigma) > 0.5
        np.testing.assert_array_equal(thin(m), sk_thin(m))


def test_thin_keeps_a_one_pixel_line_and_shrinks_a_thick_one():
    line = np.zeros((7, 9), bool)
    line[3, 1:8] = True
    np.testing.assert_array_equal(thin(line), line)
    thick = np.zeros((7, 9), bool)
    thick[2:5, 1:8] = True
    out = thin(thick)
    assert out.sum() < thick.sum() and np.all(out.sum(0)[2:7] == 1)


def test_seg2bmap_hand_case():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    expected = np.array(
        [
            [0, 1, 0],  # (0,1): east differs; (0,2): last column compares south only (1 == 1)
            [1, 1, 1],  # (1,0): south 2; (1,1): east 1; (1,2): south 2
            [0, 0, 0],  # last row: east only, all equal
        ],
        bool,
    )
    np.testing.assert_array_equal(seg2bmap(labels), expected)


# -- matching: hand-made cases -------------------------------------------------------------------------


def _vline(shape, col, rows=range(5, 15)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[list(rows), col] = True
    return m


@pytest.mark.parametrize(
    ("shift", "radius", "matched"),
    [(0, 1.0, 10), (1, 1.0, 10), (2, 1.5, 0), (2, 2.0, 10), (3, 2.9, 0), (5, 4.0, 0)],
)
def test_shifted_line(shift, radius, matched):
    gt = _vline((20, 20), 8)
    pred = _vline((20, 20), 8 + shift)
    assert match_counts(pred, gt, radius) == (matched, 10, matched, 10)


def test_spurious_pixels_lower_precision_only():
    gt = _vline((20, 20), 8)
    pred = gt.copy()
    pred[[0, 0, 19, 19, 10], [0, 19, 0, 19, 18]] = True  # 5 isolated pixels far from the line
    counts = match_counts(pred, gt, 2.0)
    assert counts == (10, 15, 10, 10)
    p, r, f = _prf(*counts)
    assert (p, r) == pytest.approx((10 / 15, 1.0)) and f == pytest.approx(0.8)


def test_one_to_one_two_predictions_near_one_gt_pixel_count_once():
    gt = np.zeros((9, 9), bool)
    gt[4, 4] = True
    pred = np.zeros((9, 9), bool)
    pred[4, 3] = pred[4, 5] = True
    assert match_counts(pred, gt, 1.5) == (1, 2, 1, 1)


def test_matching_is_maximum_not_greedy():
    # greedy nearest would pair p0 with g1 (d=0) and leave g0 unmatched; the maximum matching pairs all
    gt = np.zeros((5, 8), bool)
    gt[2, [2, 4]] = True
    pred = np.zeros((5, 8), bool)
    pred[2, [4, 6]] = True
    assert match_counts(pred, gt, 2.0) == (2, 2, 2, 2)


def test_random_maps_match_the_hungarian_reference():
    rng = np.random.default_rng(1)
    for _ in range(40):
        shape = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
        pred = rng.random(shape) < rng.uniform(0.05, 0.5)
        gt = rng.random(shape) < rng.uniform(0.05, 0.5)
        radius = float(rng.choice([1.0, 1.5, 2.0, 3.2]))
        m = _brute_matched(pred, gt, radius)
        assert match_counts(pred, gt, radius) == (m, int(pred.sum()), m, int(gt.sum()))


def test_long_chains_finish_fast():
    # layered pixel chains (two parallel lines next to two others) are where scipy's Hopcroft-Karp blows up
    gt = np.zeros((200, 200), bool)
    gt[:, [50, 51, 120]] = True
    pred = np.zeros((200, 200), bool)
    pred[:, [52, 53, 118]] = True
    cnt = match_counts(pred, gt, 2.5)
    assert cnt == (600, 600, 600, 600)


# -- threshold sweep -------------------------------------------------------------------------------------


@pytest.mark.parametrize("inclusive", [True, False])
def test_sweep_matches_brute_force_per_threshold(inclusive):
    rng = np.random.default_rng(2)
    thresholds = np.array([0.1, 0.3, 0.5, 0.5, 0.7, 0.95, 0.2])
    for _ in range(6):
        prob = ndimage.gaussian_filter(rng.random((12, 14)), 1.0)
        prob = (prob - prob.min()) / (prob.max() - prob.min())
        prob = np.round(prob * 10) / 10  # ties with the thresholds: the comparison rule matters
        gt = sk_thin(rng.random((12, 14)) < 0.3)
        radius = 2.0
        counts = sweep_counts(prob, gt, thresholds, radius, inclusive=inclusive)
        for t, row in zip(thresholds, counts):
            skel = sk_thin(prob >= t if inclusive else prob > t)
            m = _brute_matched(skel, gt, radius)
            assert tuple(row) == (m, int(skel.sum()), m, int(gt.sum())), t


def test_thresholds():
    np.testing.assert_allclose(edge_thresholds(99), np.arange(1, 100) / 100)
    hed = edge_thresholds("hed")
    assert len(hed) == 101 and hed[0] == 0.001 and hed[-1] == 0.999
    with pytest.raises(ValueError):
        edge_thresholds("nope")
    with pytest.raises(ValueError):
        edge_thresholds([1.5])


def test_quantised_probability_is_the_png_value():
    logits = torch.tensor([[0.0, 40.0, -40.0]])
    np.testing.assert_array_equal(edge_probability(logits), np.array([[127, 255, 0]]) / 255.0)
    assert edge_probability(logits, quantize=False)[0, 0] == 0.5


# -- EdgeMetrics end to end ----------------------------------------------------------------------------


def test_metric_hand_case_shifted_line_and_spurious_pixels():
    shape = (20, 20)
    gt = _vline(shape, 8)
    pred = np.where(_vline(shape, 9), 0.9, 0.0)  # shifted by one pixel, strength 0.9
    pred[0, 0] = pred[19, 19] = 0.4  # spurious, weaker
    m = _metric_for_radius(1.5, shape, from_logits=False, thresholds=[0.3, 0.5, 0.95])
    m.update(_probs(pred), _probs(gt))
    # τ = 0.3: P = 10/12, R = 1; τ = 0.5: P = R = 1; τ = 0.95: no prediction (P = 1, R = 0, F = 0)
    np.testing.assert_array_equal(m.counts.numpy(), [[10, 12, 10, 10], [10, 10, 10, 10], [0, 0, 0, 10]])
    curves = m.curves()
    np.testing.assert_allclose(curves["f"].numpy(), [2 * (10 / 12) / (1 + 10 / 12), 1.0, 0.0])
    out = m.compute()
    assert float(out["odsf"]) == pytest.approx(100.0)
    assert float(out["oisf"]) == pytest.approx(100.0)
    assert float(out["ods_threshold"]) == 0.5


@pytest.mark.parametrize(
    ("pred_on", "gt_on", "p", "r"),
    [(False, True, 1.0, 0.0), (True, False, 0.0, 1.0), (False, False, 1.0, 0.0)],
)
def test_empty_prediction_or_gt_conventions(pred_on, gt_on, p, r):
    shape = (16, 16)
    line = _vline(shape, 5, range(2, 12))
    pred = np.where(line, 0.8, 0.0) if pred_on else np.zeros(shape)
    gt = line if gt_on else np.zeros(shape, bool)
    m = _metric_for_radius(1.0, shape, from_logits=False, thresholds=[0.5])
    m.update(_probs(pred), _probs(gt))
    c = m.curves()
    assert (float(c["precision"][0]), float(c["recall"][0])) == (p, r)
    assert float(m.compute()["odsf"]) == 0.0


def test_metric_matches_a_numpy_reference_over_images():
    rng = np.random.default_rng(3)
    shape = (14, 16)
    thresholds = [0.2, 0.4, 0.6, 0.8]
    m = EdgeMetrics(max_dist=MAX_DIST["pascal"] * 10, thresholds=thresholds, from_logits=False, quantize=False)
    radius = radius_pixels(m.max_dist, shape)
    totals = np.zeros((4, 4))
    best_rows = []
    for _ in range(3):
        gt = sk_thin(ndimage.gaussian_filter(rng.random(shape), 1) > 0.5) & (rng.random(shape) < 0.6)
        prob = np.clip(ndimage.gaussian_filter(gt.astype(float), 0.8) * 2.5 + 0.3 * rng.random(shape), 0, 1)
        prob = prob.astype(np.float32).astype(np.float64)  # what the metric sees after the float32 tensor
        rows = []
        for t in thresholds:
            skel = sk_thin(prob >= t)
            k = _brute_matched(skel, gt, radius)
            rows.append((k, skel.sum(), k, gt.sum()))
        rows = np.array(rows, float)
        totals += rows
        best_rows.append(rows[int(np.argmax([_prf(*row)[2] for row in rows]))])
        m.update(_probs(prob), _probs(gt))
    ods = max(_prf(*row)[2] for row in totals)
    ois = _prf(*np.sum(best_rows, 0))[2]
    out = m.compute()
    assert float(out["odsf"]) == pytest.approx(100 * ods, abs=1e-9)
    assert float(out["oisf"]) == pytest.approx(100 * ois, abs=1e-9)


def test_ignored_pixels_are_removed_and_seg2bmap_mode():
    shape = (20, 20)
    target = _vline(shape, 8).astype(np.float32)
    target[:, 15:] = 255  # ignored band
    pred = np.where(_vline(shape, 8) | _vline(shape, 17), 0.9, 0.0)  # the second line lies in the band
    m = _metric_for_radius(1.0, shape, from_logits=False, thresholds=[0.5])
    m.update(_probs(pred), _probs(target))
    assert m.counts[0].tolist() == [10, 10, 10, 10]
    # seg2bmap of a 1-px vertical line marks the column left of it and the line itself; thinning keeps one
    b = EdgeMetrics(family="nyud", gt="seg2bmap")._gt_map(_vline(shape, 8).astype(np.float32), np.ones(shape, bool))
    assert b.sum() >= 10 and set(np.nonzero(b)[1]) <= {7, 8}


def test_streaming_equals_one_shot_state_sums_and_variable_sizes():
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(1, 12 + i, 15, generator=g) * 2 for i in range(4)]
    targets = [(torch.rand(1, 12 + i, 15, generator=g) < 0.15).float() for i in range(4)]
    one = EdgeMetrics(family="nyud", thresholds=9)
    one.update(logits, targets)
    a, b = EdgeMetrics(family="nyud", thresholds=9), EdgeMetrics(family="nyud", thresholds=9)
    a.update(logits[:1], targets[:1])
    b.update(logits[1:], targets[1:])
    stream = EdgeMetrics(family="nyud", thresholds=9)
    sizes = {name: getattr(stream, name).numel() for name in stream._defaults}
    for x, y in zip(logits, targets):
        stream.update(x[None], y[None])  # (1, 1, H, W) batches
    for name in one._defaults:
        assert one._reductions[name].__name__ == "dim_zero_sum"
        assert torch.equal(getattr(a, name) + getattr(b, name), getattr(one, name)), name
        assert torch.equal(getattr(stream, name), getattr(one, name)), name
        assert getattr(stream, name).numel() == sizes[name]  # O(thresholds), not O(images)
    assert int(one.num_images) == 4


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="max_dist"):
        EdgeMetrics(max_dist=2.0)
    with pytest.raises(ValueError, match="nms"):
        EdgeMetrics(family="nyud", nms=True)
    with pytest.raises(ValueError, match="gt mode"):
        EdgeMetrics(family="nyud", gt="other")
    with pytest.raises(ValueError, match="differ in size"):
        EdgeMetrics(family="nyud").update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="must be"):
        EdgeMetrics(family="nyud").update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
