"""STL and HPS: output shapes at several input sizes, parameter partition, per-task gradient flow, branch
factors, errors and construction from a jsonargparse config."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser

from densemtl.models import MODELS, MultiTaskOutput
from densemtl.models.baselines import HPS, SingleTaskModel
from densemtl.models.blocks import branch_factors, set_branch_factors

TASKS = ["semseg", "depth", "normals", "edge"]
NUM_CLASSES = {"semseg": 5}
OUT = {"semseg": 5, "depth": 1, "normals": 3, "edge": 1}
SMALL = {"neck_channels": 16, "head_channels": 8}


@pytest.fixture(scope="module")
def hps() -> HPS:
    torch.manual_seed(0)
    return HPS(TASKS, NUM_CLASSES, **SMALL)


@pytest.fixture(scope="module")
def stl() -> SingleTaskModel:
    torch.manual_seed(0)
    return SingleTaskModel(TASKS[:2], NUM_CLASSES, **SMALL)


def test_registered() -> None:
    assert MODELS.get("hps") is HPS and MODELS.get("stl") is SingleTaskModel


@pytest.mark.parametrize("size", [(60, 80), (64, 64), (37, 51)])
def test_hps_shapes(hps: HPS, size: tuple[int, int]) -> None:
    out = hps(torch.randn(2, 3, *size))
    assert isinstance(out, MultiTaskOutput)
    assert list(out.preds) == TASKS
    for t, pred in out.preds.items():
        assert pred.shape == (2, OUT[t], *size)
    # rep: neck width at the stride-4 level (TF "same" padding rounds up)
    assert out.rep is not None and out.rep.shape == (2, 16, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert out.aux == {} and out.losses == {}


@pytest.mark.parametrize("size", [(37, 51)])
def test_stl_shapes(stl: SingleTaskModel, size: tuple[int, int]) -> None:
    out = stl(torch.randn(1, 3, *size))
    assert {t: tuple(p.shape) for t, p in out.preds.items()} == {t: (1, OUT[t], *size) for t in TASKS[:2]}
    assert out.rep is None


def test_hps_partition(hps: HPS) -> None:
    all_ids = {id(p) for p in hps.parameters()}
    shared = {id(p) for p in hps.shared_parameters()}
    per_task = {t: {id(p) for p in hps.task_parameters(t)} for t in TASKS}
    assert shared == {id(p) for p in hps.trunk.parameters()}
    for t in TASKS:
        assert per_task[t] == {id(p) for p in hps.heads[t].parameters()}
        assert not per_task[t] & shared
        for s in TASKS:
            assert s == t or not per_task[t] & per_task[s]
    assert shared | set().union(*per_task.values()) == all_ids


def test_stl_partition(stl: SingleTaskModel) -> None:
    assert list(stl.shared_parameters()) == []
    for t in TASKS[:2]:
        assert {id(p) for p in stl.task_parameters(t)} == {id(p) for p in stl.nets[t].parameters()}
    assert sum(p.numel() for t in TASKS[:2] for p in stl.task_parameters(t)) == sum(p.numel() for p in stl.parameters())


def _loss(pred: torch.Tensor) -> torch.Tensor:
    return pred.square().mean()


def test_hps_heads_get_gradient_only_from_their_task(hps: HPS) -> None:
    out = hps(torch.randn(2, 3, 32, 32))
    for t in TASKS:
        params = [p for s in TASKS for p in hps.heads[s].parameters()]
        grads = torch.autograd.grad(_loss(out.preds[t]), params, allow_unused=True, retain_graph=True)
        owners = [s for s in TASKS for _ in hps.heads[s].parameters()]
        for owner, g in zip(owners, grads):
            assert (g is not None) == (owner == t), (t, owner)
        trunk_grads = torch.autograd.grad(_loss(out.preds[t]), list(hps.trunk.parameters()), retain_graph=True)
        assert all(g is not None for g in trunk_grads)


def test_stl_networks_are_independent(stl: SingleTaskModel) -> None:
    out = stl(torch.randn(2, 3, 32, 32))
    params = list(stl.parameters())
    owner = {id(p): t for t in TASKS[:2] for p in stl.nets[t].parameters()}
    for t in TASKS[:2]:
        grads = torch.autograd.grad(_loss(out.preds[t]), params, allow_unused=True, retain_graph=True)
        assert all((g is not None) == (owner[id(p)] == t) for p, g in zip(params, grads))


def test_hps_branch_factors_weight_the_encoder_gradient(hps: HPS) -> None:
    """With factors a_t, one backward of sum_t L_t gives the trunk sum_t a_t dL_t and each head dL_t."""
    set_branch_factors(None)
    hps.eval()  # fixed BN statistics: the same function in every pass
    try:
        out = hps(torch.randn(1, 3, 32, 32))
        losses = {t: _loss(out.preds[t]) for t in TASKS}
        trunk = list(hps.trunk.parameters())[-4:]  # the neck's last conv + BN are enough
        per_task = {t: torch.autograd.grad(losses[t], trunk, retain_graph=True) for t in TASKS}
        head_ref = torch.autograd.grad(losses["depth"], list(hps.heads["depth"].parameters()), retain_graph=True)
        factors = {"semseg": 0.5, "depth": 2.0, "normals": 0.0, "edge": 1.0}
        with branch_factors(factors):
            total = sum(losses.values())
            got = torch.autograd.grad(total, trunk + list(hps.heads["depth"].parameters()))
        for i, g in enumerate(got[: len(trunk)]):
            expected = sum(factors[t] * per_task[t][i] for t in TASKS)
            torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-7)
        for g, ref in zip(got[len(trunk) :], head_ref):
            torch.testing.assert_close(g, ref)
    finally:
        hps.train()


def test_depth_and_normals_are_raw(hps: HPS) -> None:
    """No output activation: with the depth head's bias at -100 the prediction is negative."""
    head = hps.heads["depth"]
    saved = head[-1].bias.detach().clone()
    with torch.no_grad():
        head[-1].bias.fill_(-100.0)
    try:
        assert (hps(torch.randn(2, 3, 32, 32)).preds["depth"] < 0).all()
    finally:
        with torch.no_grad():
            head[-1].bias.copy_(saved)


def test_mean_std_exposed() -> None:
    model = HPS(["depth"], pretrained="imagenet", **SMALL)
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="positive number of classes"):
        HPS(["semseg"], None, **SMALL)
    with pytest.raises(ValueError, match="unknown task"):
        HPS(["depht"], None, **SMALL)
    with pytest.raises(ValueError, match="min_reduction=64"):
        HPS(["depth"], min_reduction=64, **SMALL)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        HPS(["depth"], **SMALL)(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="unknown timm encoder"):
        SingleTaskModel(["depth"], encoder="resnet_none")


def test_jsonargparse_builds_hps_from_config() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(HPS, "model")
    cfg = parser.parse_args(
        ["--model.tasks=[semseg, depth]", "--model.num_classes={semseg: 3}", "--model.neck_channels=8"]
    )
    model = parser.instantiate_classes(cfg).model
    assert isinstance(model, HPS) and model.out_channels == {"semseg": 3, "depth": 1}
    assert model.trunk.neck.out_channels == 8
