"""Losses: hand-computed values, numpy references, exact ignoring of invalid pixels, the criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemtl.losses import (
    LOSSES,
    MultiTaskCriterion,
    TaskLosses,
    balanced_bce,
    cross_entropy,
    default_loss_weights,
    l1,
    normals_cosine,
    normals_l1,
    normals_mse,
    sal_ce2,
)
from densemtl.models.base import MultiTaskOutput

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def _t(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------------------------------- hand values
def test_cross_entropy_hand_value():
    # pixels: logits (0, 0) target 1 -> ln 2; (ln 3, 0) target 0 -> ln(4/3); third pixel ignored
    logits = torch.tensor([[0.0, LN3, 7.0], [0.0, 0.0, -2.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, 255]]])
    assert cross_entropy(logits, target).item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, abs=1e-6)


def test_l1_hand_value_and_depth_cap():
    pred = _t([1, 2, 3, 4], (1, 1, 2, 2))
    gt = _t([1.5, 0, 2, 10], (1, 1, 2, 2))
    assert l1(pred, gt).item() == pytest.approx((0.5 + 1 + 6) / 3)
    assert l1(pred, gt, max_depth=6.5535).item() == pytest.approx((0.5 + 1) / 2)


def test_normals_l1_both_forms():
    # pixel 1: prediction (2, 0, 0) normalises to (1, 0, 0), GT (0, 1, 0): L1 sum = 2; pixel 2: GT zero -> invalid
    pred = torch.tensor([[2.0, 5.0], [0.0, 1.0], [0.0, 1.0]]).reshape(1, 3, 1, 2)
    gt = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    assert normals_l1(pred, gt).item() == pytest.approx(2 / 3)
    assert normals_l1(pred, gt, per_pixel_sum=True).item() == pytest.approx(2.0)
    assert LOSSES.get("normals_l1_sum")(pred, gt).item() == pytest.approx(2.0)


def test_normals_cosine_and_mse_hand_values():
    pred = torch.tensor([[1.0, 3.0], [1.0, 0.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    gt = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    assert normals_cosine(pred, gt).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # raw squared error at the valid pixel: (1-1)^2 + (1-0)^2 + 0 = 1 over 3 elements
    assert normals_mse(pred, gt).item() == pytest.approx(1 / 3)


def test_balanced_bce_hand_values():
    x = _t([0.0, LN3, -LN3, 5.0], (1, 1, 1, 4))
    y = _t([1, 0, 1, 255], (1, 1, 1, 4))
    w = 0.95
    # y=1, x=0: softplus(0) = ln 2; y=0, x=ln 3: softplus(ln 3) = ln 4; y=1, x=-ln 3: softplus(ln 3) = ln 4
    expected = (w * LN2 + (1 - w) * LN4 + w * LN4) / 3
    assert balanced_bce(x, y).item() == pytest.approx(expected, abs=1e-6)
    assert balanced_bce(x, y, denominator="all").item() == pytest.approx(expected * 3 / 4, abs=1e-6)
    wb = 1 / 3  # one negative among three valid pixels
    expected_b = (wb * LN2 + (1 - wb) * LN4 + wb * LN4) / 3
    assert balanced_bce(x, y, batch_balanced=True).item() == pytest.approx(expected_b, abs=1e-6)
    assert balanced_bce(x, y, pos_weight=0.88).item() == pytest.approx((0.88 * (LN2 + LN4) + 0.12 * LN4) / 3, 1e-6)


def test_sal_ce2_hand_value():
    # targets 1, 0, 0, ignore -> w = 2/3 (negatives among valid); class weights (1/3, 2/3)
    logits = torch.tensor([[0.0, LN3, 0.0, 9.0], [0.0, 0.0, LN3, -9.0]]).reshape(1, 2, 1, 4)
    target = _t([1, 0, 0, 255], (1, 1, 1, 4))
    ce = [LN2, math.log(4 / 3), LN4]  # -log softmax at the target class
    expected = (2 / 3 * ce[0] + 1 / 3 * ce[1] + 1 / 3 * ce[2]) / 3
    assert sal_ce2(logits, target).item() == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------- numpy references
def _np_softplus(x):
    return np.logaddexp(0.0, x)


def test_cross_entropy_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[torch.rand(2, 6, 7, generator=g) < 0.3] = 255
    x = logits.double().numpy()
    lse = np.log(np.exp(x).sum(axis=1))
    t = target.numpy()
    valid = t != 255
    picked = np.take_along_axis(x, np.where(valid, t, 0)[:, None], axis=1)[:, 0]
    expected = (lse - picked)[valid].mean()
    assert cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_bce_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 5, 6, generator=g) * 3
    y = (torch.rand(3, 1, 5, 6, generator=g) < 0.2).float()
    y[torch.rand(3, 1, 5, 6, generator=g) < 0.1] = 255
    xn, yn = x.double().numpy(), y.numpy()
    valid = yn != 255
    pos, neg = valid & (yn == 1), valid & (yn == 0)
    for w, kwargs in ((0.95, {}), (neg.sum() / valid.sum(), {"batch_balanced": True})):
        expected = (w * _np_softplus(-xn)[pos].sum() + (1 - w) * _np_softplus(xn)[neg].sum()) / valid.sum()
        assert balanced_bce(x, y, **kwargs).item() == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------------------------------- exact ignoring
def _case(name: str, g: torch.Generator):
    """(loss fn, prediction, target, invalid mask over prediction elements) for each loss."""
    b, h, w = 2, 4, 5
    hole = torch.rand(b, 1, h, w, generator=g) < 0.4
    if name in ("cross_entropy",):
        pred = torch.randn(b, 4, h, w, generator=g)
        tgt = torch.randint(0, 4, (b, h, w), generator=g)
        tgt[hole[:, 0]] = 255
        return cross_entropy, pred, tgt, hole.expand_as(pred)
    if name == "l1":
        pred = torch.rand(b, 1, h, w, generator=g) * 5
        tgt = torch.rand(b, 1, h, w, generator=g) * 5 + 0.5
        tgt[hole] = 0
        return l1, pred, tgt, hole
    if name in ("normals_l1", "normals_l1_sum", "normals_cosine", "normals_mse"):
        pred = torch.randn(b, 3, h, w, generator=g)
        tgt = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        tgt = torch.where(hole, torch.zeros_like(tgt), tgt)
        return LOSSES.get(name), pred, tgt, hole.expand_as(pred)
    if name in ("balanced_bce", "balanced_bce_batch"):
        pred = torch.randn(b, 1, h, w, generator=g)
        tgt = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
        tgt[hole] = 255
        return LOSSES.get(name), pred, tgt, hole
    if name == "sal_ce2":
        pred = torch.randn(b, 2, h, w, generator=g)
        tgt = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
        tgt[hole] = 255
        return sal_ce2, pred, tgt, hole.expand_as(pred)
    raise AssertionError(name)


LOSS_NAMES = [
    "cross_entropy",
    "l1",
    "normals_l1",
    "normals_l1_sum",
    "normals_cosine",
    "normals_mse",
    "balanced_bce",
    "balanced_bce_batch",
    "sal_ce2",
]


def test_every_registered_loss_is_covered():
    assert sorted(LOSS_NAMES) == LOSSES.names()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_invalid_pixels_are_ignored_exactly(name):
    g = torch.Generator().manual_seed(3)
    fn, pred, tgt, invalid = _case(name, g)
    pred = pred.requires_grad_()
    loss = fn(pred, tgt)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    loss.backward()
    assert torch.all(pred.grad[invalid] == 0)
    assert pred.grad[~invalid].abs().sum() > 0
    changed = pred.detach().clone()
    changed[invalid] = torch.randn(int(invalid.sum()), generator=g) * 100
    assert fn(changed, tgt).item() == loss.item()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_no_valid_pixel_gives_zero_with_graph(name):
    g = torch.Generator().manual_seed(4)
    fn, pred, tgt, _ = _case(name, g)
    invalid_value = 0 if name == "l1" or name.startswith("normals") else 255
    empty = torch.full_like(tgt, invalid_value)
    pred = pred.requires_grad_()
    loss = fn(pred, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in size"):
        l1(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------------------------ TaskLosses
def test_task_losses_total_and_logging():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    aux = torch.tensor(4.0, requires_grad=True)
    extra = torch.tensor(0.5, requires_grad=True)
    losses = TaskLosses(main={"semseg": a, "depth": b}, aux={"semseg": [(0.5, aux)]}, extra={"coh": extra})
    assert losses.task_loss("semseg").item() == 2 + 0.5 * 4
    assert losses.total().item() == (2 + 2) + 3 + 0.5
    assert losses.total({"semseg": 2.0, "depth": torch.tensor(10.0)}).item() == 2 * 4 + 10 * 3 + 0.5
    losses.total({"semseg": 2.0}).backward()
    assert a.grad.item() == 2 and aux.grad.item() == 1 and b.grad.item() == 1 and extra.grad.item() == 1
    logged = losses.log_dict()
    assert set(logged) == {"loss/semseg", "loss/semseg/main", "loss/semseg/aux", "loss/depth", "loss/extra/coh"}
    assert all(not v.requires_grad for v in logged.values())
    assert logged["loss/semseg"].item() == 4.0
    with pytest.raises(ValueError, match="normals"):
        losses.total({"normals": 1.0})


def test_default_loss_weights_from_task_registry():
    assert default_loss_weights(["semseg", "human_parts", "sal", "edge", "normals"], "pascal") == {
        "semseg": 1.0,
        "human_parts": 2.0,
        "sal": 5.0,
        "edge": 50.0,
        "normals": 10.0,
    }
    assert default_loss_weights(["depth"], "unknown_family") == {"depth": 1.0}


# ------------------------------------------------------------------------------------- criterion
def _batch(g):
    b, h, w = 2, 8, 8
    depth = torch.rand(b, 1, h, w, generator=g) + 0.5
    depth[:, :, :2] = 0
    sal = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
    return {
        "image": torch.zeros(b, 3, h, w),
        "semseg": torch.randint(0, 5, (b, h, w), generator=g),
        "depth": depth,
        "sal": sal,
        "edge": (torch.rand(b, 1, h, w, generator=g) < 0.1).float(),
        "meta": {},
    }


def test_criterion_main_aux_extra():
    g = torch.Generator().manual_seed(5)
    batch = _batch(g)
    preds = {"semseg": torch.randn(2, 5, 8, 8, generator=g), "depth": torch.rand(2, 1, 8, 8, generator=g)}
    aux_small = {"semseg": torch.randn(2, 5, 4, 4, generator=g), "depth": torch.rand(2, 1, 2, 2, generator=g)}
    aux_full = {"depth": torch.rand(2, 1, 8, 8, generator=g)}
    coherence = torch.tensor(0.25)
    out = MultiTaskOutput(preds=preds, aux={"inter1": aux_small, "inter2": aux_full}, losses={"coh": coherence})
    crit = MultiTaskCriterion(["semseg", "depth"], aux_weights={"inter1": 0.5, "inter2": 0.5})
    res = crit(out, batch)
    assert set(res.main) == {"semseg", "depth"}
    assert res.main["semseg"].item() == pytest.approx(F.cross_entropy(preds["semseg"], batch["semseg"]).item())
    valid = batch["depth"] > 0
    assert res.main["depth"].item() == pytest.approx((preds["depth"] - batch["depth"]).abs()[valid].mean().item())
    up = F.interpolate(aux_small["depth"], size=(8, 8), mode="bilinear", align_corners=False)
    expected_aux = [(0.5, (up - batch["depth"]).abs()[valid].mean().item())]
    expected_aux.append((0.5, (aux_full["depth"] - batch["depth"]).abs()[valid].mean().item()))
    assert [(c, pytest.approx(v)) for c, v in expected_aux] == [(c, v.item()) for c, v in res.aux["depth"]]
    assert len(res.aux["semseg"]) == 1 and res.extra == {"coh": coherence}


def test_criterion_default_and_overridden_binary_losses():
    g = torch.Generator().manual_seed(6)
    batch = _batch(g)
    preds = {"sal": torch.randn(2, 1, 8, 8, generator=g), "edge": torch.randn(2, 1, 8, 8, generator=g)}
    out = MultiTaskOutput(preds=preds)
    res = MultiTaskCriterion(["sal", "edge"], edge_pos_weight=0.88)(out, batch)
    assert res.main["sal"].item() == pytest.approx(balanced_bce(preds["sal"], batch["sal"], batch_balanced=True).item())
    assert res.main["edge"].item() == pytest.approx(balanced_bce(preds["edge"], batch["edge"], pos_weight=0.88).item())
    two = MultiTaskOutput(preds={"sal": torch.randn(2, 2, 8, 8, generator=g)})
    res2 = MultiTaskCriterion(["sal"], losses={"sal": "sal_ce2"})(two, batch)
    assert res2.main["sal"].item() == pytest.approx(sal_ce2(two.preds["sal"], batch["sal"]).item())


def test_criterion_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        MultiTaskCriterion(["depth"], losses={"depth": "nope"})
    with pytest.raises(ValueError, match="not in"):
        MultiTaskCriterion(["depth"], loss_kwargs={"semseg": {}})
    crit = MultiTaskCriterion(["depth", "semseg"])
    with pytest.raises(ValueError, match="semseg"):
        crit(MultiTaskOutput(preds={"depth": torch.zeros(1, 1, 2, 2)}), {"depth": torch.ones(1, 1, 2, 2)})
