"""The MT-CP model (spec/mtcp.md §3.1, §9, §10, §12): shapes, switches, reference mode, overfitting."""

from __future__ import annotations

import pytest
import torch

from densemtl.engine import MultiTaskModule
from densemtl.losses import MultiTaskCriterion
from densemtl.models import MODELS
from densemtl.models.mtcp import MTCP
from densemtl.models.mtcp.model import DEPTH_CAP

NYUD = (["semseg", "depth", "normals"], {"semseg": 40})
PASCAL = (["semseg", "human_parts", "sal"], {"semseg": 21, "human_parts": 7})
TINY = dict(MTCP.smoke_kwargs)


def _model(tasks=NYUD, **kwargs) -> MTCP:
    torch.manual_seed(0)
    return MTCP(tasks[0], tasks[1], **{**TINY, **kwargs})


def test_registered() -> None:
    assert MODELS.get("mtcp") is MTCP


@pytest.mark.parametrize(("tasks", "size"), [(NYUD, (480, 640)), (PASCAL, (512, 512))], ids=["nyud", "pascal"])
def test_shapes_at_paper_resolution(tasks, size) -> None:
    model = _model(tasks, use_cfm=False).eval()  # the CFM at 1/4 of 480x640 is exercised in bench_mtcp.py
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.rep.shape == (1, 32, h // 4, w // 4)
    feats = model.branches[tasks[0][0]].decoder(out.rep)
    expected = [(1, 32 * 2**s, h // 4 // 2**s, w // 4 // 2**s) for s in range(3)]
    assert [tuple(f.shape) for f in feats] == expected
    for t in tasks[0]:
        k = model.out_channels[t]
        assert out.preds[t].shape == (1, k, h, w)
        assert out.aux["inter16"][t].shape == (1, k, h // 16, w // 16)
        assert out.aux["inter8"][t].shape == (1, k, h // 8, w // 8)


@pytest.mark.parametrize(
    "switches",
    [{}, {"reference": True}, {"use_cfm": False}, {"use_srm": False}, {"use_cfm": False, "use_srm": False},
     {"fusion": "fpn"}, {"mask_layers": "all"}, {"attention": "blocked"}],
    ids=["paper", "reference", "no_cfm", "no_srm", "neither", "fpn_fusion", "all_masks", "blocked"],
)
def test_switches_at_odd_size(switches) -> None:
    model = _model(**switches)
    out = model(torch.randn(2, 3, 61, 83))
    assert {t: tuple(p.shape) for t, p in out.preds.items()} == {
        "semseg": (2, 40, 61, 83), "depth": (2, 1, 61, 83), "normals": (2, 3, 61, 83)}
    assert out.rep.shape == (2, 32, 16, 21)
    assert {t: tuple(p.shape[-2:]) for t, p in out.aux["inter16"].items()} == dict.fromkeys(NYUD[0], (4, 6))
    assert {t: tuple(p.shape[-2:]) for t, p in out.aux["inter8"].items()} == dict.fromkeys(NYUD[0], (8, 11))
    has_coherence = model.use_cfm and not switches.get("reference", False)
    assert ("coherence" in out.losses) == has_coherence
    if has_coherence:
        assert 0.0 <= float(out.losses["coherence"].detach()) <= 2.0 * 3


def test_reference_mode_semantics() -> None:
    paper, released = _model(), _model(reference=True)
    for t in NYUD[0]:
        assert paper.branches[t].cfm.main_relu and paper.branches[t].cfm.project is not None
        assert not released.branches[t].cfm.main_relu and released.branches[t].cfm.project is None
    # every row is its own option, and an explicit option wins over reference
    mixed = _model(reference=True, coherence=True, cfm_main_relu=True)
    assert mixed.branches["depth"].cfm.main_relu and mixed.branches["depth"].cfm.project is not None
    # the released losses
    assert paper.criterion_defaults() == {"aux_weights": {"inter16": 0.5, "inter8": 0.5}}
    crit = MultiTaskCriterion(NYUD[0], **released.criterion_defaults())
    assert crit.loss_names["normals"] == "normals_mse"
    assert crit.loss_kwargs["depth"]["max_depth"] == DEPTH_CAP
    # intermediate normals scored with the plain L1 of the raw prediction: |0.5 - 1| + 0 + 0 over 3 elements
    pred = torch.tensor([0.5, 0.0, 0.0]).view(1, 3, 1, 1)
    target = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert float(crit.task_loss("normals", pred, target, crit.aux_losses["inter8"]["normals"])) == pytest.approx(0.5)
    assert float(crit.task_loss("normals", pred, target)) == pytest.approx(0.25 / 3)  # MSE, raw prediction
    # depth: GT beyond the cap is ignored in the released loss only
    d_pred, d_gt = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2), torch.tensor([2.0, 9.0]).view(1, 1, 1, 2)
    assert float(crit.task_loss("depth", d_pred, d_gt)) == pytest.approx(1.0)
    assert float(MultiTaskCriterion(NYUD[0]).task_loss("depth", d_pred, d_gt)) == pytest.approx(4.5)


def test_reference_pascal_parts_keep_only_the_last_intermediate() -> None:
    out = _model(PASCAL, reference=True)(torch.randn(1, 3, 64, 64))
    assert set(out.aux["inter16"]) == {"semseg", "sal"} and set(out.aux["inter8"]) == set(PASCAL[0])
    assert set(_model(PASCAL)(torch.randn(1, 3, 64, 64)).aux["inter16"]) == set(PASCAL[0])


def test_engine_uses_the_model_criterion_defaults() -> None:
    module = MultiTaskModule(tasks=NYUD[0], num_classes=NYUD[1], family="nyud", arch="mtcp",
                             arch_args={**TINY, "reference": True}, weighting="ew")
    assert module.criterion.loss_names["normals"] == "normals_mse"
    assert module.criterion.aux_weights == {"inter16": 0.5, "inter8": 0.5}
    override = MultiTaskModule(tasks=NYUD[0], num_classes=NYUD[1], family="nyud", arch="mtcp",
                               arch_args={**TINY, "reference": True}, weighting="ew",
                               criterion_args={"aux_weights": {"inter16": 1.0}})
    assert override.criterion.aux_weights == {"inter16": 1.0}


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="fusion must be"):
        _model(fusion="unet")
    with pytest.raises(ValueError, match="backbone must be"):
        _model(backbone="resnet50")
    with pytest.raises(ValueError, match="mask_layers"):
        _model(mask_layers="first")
    with pytest.raises(ValueError, match="multiple of 32"):
        _model(channels=48)
    with pytest.raises(ValueError, match="at least two tasks"):
        MTCP(["depth"], **TINY)


def _batch(tasks, size=(32, 32)) -> dict[str, torch.Tensor]:
    """A fixed batch with learnable structure: left/right halves differ in every target."""
    g = torch.Generator().manual_seed(1)
    h, w = size
    right = (torch.arange(w) >= w // 2).expand(2, h, w)
    batch = {"image": torch.randn(2, 3, h, w, generator=g) * 0.1 + right[:, None].float()}
    for t in tasks[0]:
        if t in tasks[1]:
            batch[t] = right.long() * (tasks[1][t] - 1)
        elif t == "depth":
            batch[t] = (1.0 + 2.0 * right.float())[:, None]
        elif t == "normals":
            batch[t] = torch.stack([right.float(), torch.zeros(2, h, w), 1.0 - right.float()], dim=1)
        else:
            batch[t] = right.float()[:, None]
    return batch


def _overfit(tasks, steps: int = 20, **switches) -> tuple[float, float]:
    model = _model(tasks, **switches)
    crit = MultiTaskCriterion(tasks[0], **model.criterion_defaults())
    batch = _batch(tasks)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(steps):
        terms = crit(model(batch["image"]), batch)
        total = terms.total()  # task losses + intermediate losses + coherence
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(sum(float(v.detach()) for v in terms.per_task().values()))
    return losses[0], min(losses[-5:])


def test_overfits_a_fixed_batch_with_config_switches() -> None:
    """Every shipped config uses the paper defaults (Mask2Former fusion, CFM, SRM, coherence term)."""
    first, last = _overfit(NYUD)
    assert last < 0.2 * first, (first, last)


@pytest.mark.slow
def test_overfits_a_fixed_batch_with_pascal_heads() -> None:
    first, last = _overfit(PASCAL)
    assert last < 0.2 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize(
    "switches", [{"reference": True}, {"use_cfm": False}, {"use_srm": False}, {"fusion": "fpn"}],
    ids=["reference", "no_cfm", "no_srm", "fpn_fusion"])
def test_overfits_with_ablation_switches(switches) -> None:
    first, last = _overfit(NYUD, **switches)
    assert last < 0.2 * first, (first, last)
