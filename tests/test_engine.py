"""MultiTaskModule without a Trainer: build errors, the overfit check, weights and losses logged."""

from __future__ import annotations

import pytest
import torch

from densemtl.engine import MultiTaskModule
from densemtl.weighting import TrainInfo

TASKS = ["semseg", "depth", "normals", "edge"]


def _batch(seed: int = 0, b: int = 2, h: int = 32, w: int = 40) -> dict:
    """A fixed batch with structured targets: left/right halves differ in class, depth and normal."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, h, w, generator=g) * 0.1
    right = torch.zeros(b, h, w, dtype=torch.bool)
    right[:, :, w // 2 :] = True
    image[:, 0] += right.float()  # the image tells the halves apart
    semseg = right.long() * 2  # classes 0 and 2
    semseg[:, 0, 0] = 255
    depth = torch.where(right, 3.0, 1.5)[:, None].clone()
    depth[:, :, 0, 0] = 0.0
    normals = torch.zeros(b, 3, h, w)
    normals[:, 2] = -1.0
    normals[:, 0] = torch.where(right, 0.6, 0.0)
    normals = normals / normals.norm(dim=1, keepdim=True)
    edge = torch.zeros(b, 1, h, w)
    edge[:, :, :, w // 2] = 1.0
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge, "meta": []}


def _module(**kwargs) -> MultiTaskModule:
    defaults = dict(
        tasks=TASKS,
        num_classes={"semseg": 3},
        family="nyud",
        arch="hps",
        arch_args={"pretrained": None, "neck_channels": 32, "head_channels": 16},
        weighting="ew",
        scheduler="none",
        lr=3e-3,
        metrics_args={"edge": {"odsf": False}},
    )
    defaults.update(kwargs)
    return MultiTaskModule(**defaults)


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    module = _module()
    batch = _batch()
    optimizer = module.configure_optimizers()
    module.log = module.log_dict = lambda *a, **k: None  # no trainer attached
    module.weighting.on_train_start(TrainInfo(tasks=tuple(TASKS)))
    module.train()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_unknown_model_and_weighting_list_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; available: \[.*'hps'"):
        _module(arch="nope")
    with pytest.raises(ValueError, match=r"unknown weighting 'nope'; available: \[.*'ew'"):
        _module(weighting="nope")
    with pytest.raises(ValueError, match=r"unknown task 'segm'"):
        _module(tasks=["segm"])


def test_wrong_model_argument_lists_valid_arguments():
    expected = r"model 'hps' has no argument\(s\) \['encoderr'\]; valid arguments: \[.*'encoder'"
    with pytest.raises(ValueError, match=expected):
        _module(arch_args={"encoderr": "x"})


def test_static_weighting_uses_family_defaults_in_the_objective():
    module = _module(weighting="static")
    module.log = module.log_dict = lambda *a, **k: None
    module.weighting.on_train_start(TrainInfo(tasks=tuple(TASKS), family="nyud"))
    batch = _batch()
    objective = module.training_step(batch, 0)
    out = module.model(batch["image"])
    losses = module.criterion(out, batch)
    # protocols.md §5.2 NYUD weights: semseg 1, depth 1, normals 10, edge 50 (same init, same batch)
    expected = losses.main["semseg"] + losses.main["depth"] + 10 * losses.main["normals"] + 50 * losses.main["edge"]
    assert objective.item() == pytest.approx(expected.item(), rel=1e-5)


def test_validation_skips_odsf_by_default_and_test_computes_it():
    module = MultiTaskModule(
        tasks=TASKS, num_classes={"semseg": 3}, family="nyud", arch_args={"pretrained": None}, scheduler="none"
    )
    batch = _batch()
    preds = module.model(batch["image"]).preds
    module.val_metrics.update(preds, batch)
    module.test_metrics.update(preds, batch)
    assert "odsf" not in module.val_metrics.compute()["edge"]
    assert "loss" in module.val_metrics.compute()["edge"]
    assert 0.0 <= module.test_metrics.compute()["edge"]["odsf"] <= 100.0


def test_poly_schedule_stepped_per_epoch():
    """MT-CP's recipe: lr_e = lr · (1 − e / E)^0.9, constant within an epoch (scheduler_interval='epoch')."""
    from types import SimpleNamespace

    module = _module(scheduler="poly", scheduler_interval="epoch", lr=5e-5)
    module._trainer = SimpleNamespace(max_epochs=4, estimated_stepping_batches=1000)
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    sched, opt = config["lr_scheduler"]["scheduler"], config["optimizer"]
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([5e-5 * (1 - e / 4) ** 0.9 for e in range(4)], rel=1e-9)
    with pytest.raises(ValueError, match="scheduler_interval"):
        bad = _module(scheduler="poly", scheduler_interval="batch")
        bad._trainer = module._trainer
        bad.configure_optimizers()


def test_cosine_warm_restarts_stepped_per_epoch():
    """CTAL_MS / MTI-Net Cityscapes recipe (SGDR, T_0 = 25, T_mult = 2): cycles of 25 then 50 epochs,
    lr_e = lr · (1 + cos(π · t / T_i)) / 2 with t the epoch within the cycle (hand-derived)."""
    import math
    from types import SimpleNamespace

    module = _module(scheduler="cosine_restarts", scheduler_interval="epoch", lr=5e-4)
    module._trainer = SimpleNamespace(max_epochs=75, estimated_stepping_batches=75 * 371)
    config = module.configure_optimizers()
    sched, opt = config["lr_scheduler"]["scheduler"], config["optimizer"]
    lrs = []
    for _ in range(80):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    expected = []
    for e in range(80):
        t, period = (e, 25) if e < 25 else (e - 25, 50) if e < 75 else (e - 75, 100)
        expected.append(5e-4 * (1 + math.cos(math.pi * t / period)) / 2)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[25] == pytest.approx(5e-4) and lrs[75] == pytest.approx(5e-4)  # the two restarts
    for bad_args in ({"restart_period": 0}, {"restart_mult": 0}, {"restart_period": 2.5}):
        bad = _module(scheduler="cosine_restarts", **bad_args)
        bad._trainer = module._trainer
        with pytest.raises(ValueError, match="restart_"):
            bad.configure_optimizers()
