"""CTAL-family models (spec/ctal.md §5, §9, §12): parameter counts, HRNet branches, FPM grouping, deep-supervision
outputs, the input-size check and tiny-data overfitting."""

from __future__ import annotations

import pytest
import torch

from densemtl.losses import MultiTaskCriterion
from densemtl.models import MODELS
from densemtl.models.ctal.parts import FPM, MultiScaleBackbone

NYU = (["semseg", "depth", "normals"], {"semseg": 13}, (288, 384))
CITY = (["semseg", "depth"], {"semseg": 19}, (128, 256))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name,setting,want",
    [
        ("padnet", NYU, 12.08e6),
        ("ctal", NYU, 6.06e6),
        ("mtinet", NYU, 12.64e6),
        ("ctal_ms", NYU, 11.15e6),
        ("padnet", CITY, 7.01e6),
        ("ctal", CITY, 5.26e6),
        ("mtinet", CITY, 8.57e6),
        ("ctal_ms", CITY, 8.47e6),
    ],
)
def test_whole_model_parameter_counts_within_one_percent_of_spec(name, setting, want):
    tasks, classes, size = setting
    model = MODELS.get(name)(tasks, classes, input_size=size)
    assert abs(_count(model) - want) / want < 0.01
    if name in ("ctal", "ctal_ms"):  # the block exactly (spec §9)
        exact = {("ctal_ms", 3): 1_380_864, ("ctal", 3): 1_375_488, ("ctal_ms", 2): 830_464, ("ctal", 2): 826_880}
        assert _count(model.ctal) == exact[(name, len(tasks))]
    assert model.backbone_label == "hrnet_w18_small_v2 (random init)"


def test_hrnet_features_are_the_raw_branches():
    backbone = MultiScaleBackbone("hrnet_w18_small_v2")
    assert backbone.channels == (18, 36, 72, 144)
    feats = backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(18, 16, 24), (36, 8, 12), (72, 4, 6), (144, 2, 3)]
    assert 3.85e6 < _count(backbone) < 3.87e6  # no 'incre' head modules (spec §9: 3.86 M)


def test_fpm_reference_grouping_is_a_softmax_over_consecutive_channels():
    n, c = 3, 4
    logits = torch.randn(2, n * c, 2, 2)
    ref = FPM(n, c, "reference").mask(logits)
    by_task = FPM(n, c, "task").mask(logits)
    for j in range(c):  # reference: channels j·N .. j·N + N − 1 form one softmax group
        group = slice(j * n, (j + 1) * n)
        torch.testing.assert_close(ref[:, group], torch.softmax(logits[:, group], dim=1))
    for j in range(c):  # task: channels t·c + j for t = 0..N−1
        idx = [t * c + j for t in range(n)]
        torch.testing.assert_close(by_task[:, idx], torch.softmax(logits[:, idx], dim=1))
    with pytest.raises(ValueError, match="fpm_grouping"):
        FPM(n, c, "channels")


def _small(name: str, **kwargs):
    tasks, classes = ["semseg", "depth", "normals"], {"semseg": 3}
    return MODELS.get(name)(tasks, classes, input_size=(64, 96), **kwargs)


@pytest.mark.parametrize("name", ["ctal_ms", "mtinet"])
def test_multiscale_deep_supervision_has_four_scales_per_task(name):
    model = _small(name)
    out = model(torch.rand(2, 3, 64, 96))
    assert sorted(out.aux) == ["scale_0", "scale_1", "scale_2", "scale_3"]
    for s in range(4):
        h, w = 64 // 2 ** (s + 2), 96 // 2 ** (s + 2)
        got = {t: tuple(p.shape) for t, p in out.aux[f"scale_{s}"].items()}
        assert got == {"semseg": (2, 3, h, w), "depth": (2, 1, h, w), "normals": (2, 3, h, w)}
    if name == "ctal_ms":
        assert model.fusion["semseg"].out_channels == 270
        assert model.ctal.affinity.grid == (16, 24)


def test_input_size_mismatch_raises_a_clear_error():
    model = MODELS.get("ctal")(["semseg", "depth"], {"semseg": 4}, input_size=(64, 64))
    with pytest.raises(ValueError, match=r"built for 64x64 images.*got 96x64.*model.arch_args.input_size"):
        model(torch.rand(1, 3, 96, 64))


def test_deep_supervision_loss_weights_quarter_per_scale():
    """L_t = (1/4) Σ_s L_t(up(pred_s)) + L_t(final): the criterion with aux weight 0.25 per scale, by hand."""
    model = _small("ctal_ms").eval()
    images = torch.rand(2, 3, 64, 96)
    out = model(images)
    target = torch.rand(2, 1, 64, 96) + 0.5
    crit = MultiTaskCriterion(["depth"], aux_weights={f"scale_{s}": 0.25 for s in range(4)})
    losses = crit(type(out)(preds={"depth": out.preds["depth"]}, aux=out.aux), {"depth": target})
    hand = (out.preds["depth"] - target).abs().mean()
    for s in range(4):
        up = torch.nn.functional.interpolate(out.aux[f"scale_{s}"]["depth"], size=(64, 96), mode="bilinear")
        hand = hand + 0.25 * (up - target).abs().mean()
    torch.testing.assert_close(losses.task_loss("depth"), hand)


def _overfit(model: torch.nn.Module, steps: int, size=(32, 32), lr: float = 5e-3) -> tuple[float, float]:
    torch.manual_seed(0)
    images = torch.rand(2, 3, *size)
    rows = torch.arange(size[0])[:, None].expand(*size)
    cols = torch.arange(size[1])[None, :].expand(*size)
    semseg = (rows >= size[0] // 2).long() + (cols >= size[1] // 2).long()  # quadrants -> classes 0, 1, 2
    targets = {
        "semseg": torch.stack([semseg, semseg.flip(-1)]),
        "depth": torch.stack([1.0 + rows / size[0], 2.0 - cols / size[1]])[:, None].float(),
    }
    aux_weights = {"initial": 1.0, **{f"scale_{s}": 0.25 for s in range(4)}}
    crit = MultiTaskCriterion(["semseg", "depth"], aux_weights=aux_weights)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = 0.0
    for step in range(steps):
        losses = crit(model(images), targets)
        total = losses.total()
        opt.zero_grad()
        total.backward()
        opt.step()
        if step == 0:
            first = float(total.detach())
        last = float(total.detach())
    return first, last


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SLOW = pytest.mark.slow  # about 8 s each on an idle 2-core machine; run by `make test-all`


@pytest.mark.parametrize(
    "name", ["ctal", pytest.param("ctal_ms", marks=SLOW), pytest.param("padnet", marks=SLOW),
             pytest.param("mtinet", marks=SLOW)]
)
def test_tiny_data_overfit(name, one_thread):
    torch.manual_seed(0)
    kwargs = {"input_size": (32, 32)}  # HRNet-W18-small-v2, random init: the narrowest levels (18..144 channels)
    if name.startswith("ctal"):
        kwargs["ctal_channels"] = 16
    model = MODELS.get(name)(["semseg", "depth"], {"semseg": 3}, **kwargs)
    first, last = _overfit(model, 30)
    assert last < 0.25 * first, (first, last)


def test_level_projection_gives_the_paper_widths_on_another_encoder():
    model = MODELS.get("ctal_ms")(
        ["semseg", "depth"], {"semseg": 3}, input_size=(40, 56), encoder="tf_efficientnet_lite0",
        level_channels=[18, 36, 72, 144], ctal_channels=8,
    )
    assert model.backbone.channels == (18, 36, 72, 144) and model.fusion["depth"].out_channels == 270
    assert "levels projected to [18, 36, 72, 144]" in model.backbone_label
    feats = model.backbone(torch.rand(1, 3, 40, 56))
    assert [tuple(f.shape[1:]) for f in feats] == [(18, 10, 14), (36, 5, 7), (72, 3, 4), (144, 2, 2)]
    with pytest.raises(ValueError, match="4 positive widths"):
        MultiScaleBackbone("tf_efficientnet_lite0", level_channels=[8, 8])


def test_criterion_defaults_are_the_released_deep_supervision_weights():
    assert _small("ctal").criterion_defaults() == {"aux_weights": {"initial": 1.0}}
    quarter = {"aux_weights": {f"scale_{s}": 0.25 for s in range(4)}}
    assert _small("mtinet").criterion_defaults() == quarter


PASCAL_TASKS = ["semseg", "human_parts", "sal", "edge", "normals"]
PASCAL_CLASSES = {"semseg": 21, "human_parts": 7}


def test_transformer_parameters_besides_the_backbone_match_spec():
    """spec §9: CTAL ≈ B + 13.2 M (initial 1.86 M, CTAL 1.98 M exactly at 512x512, heads 9.37 M)."""
    model = MODELS.get("ctal_transformer")(
        PASCAL_TASKS, PASCAL_CLASSES, input_size=(512, 512), backbone_args={"depths": [1, 1, 1, 1]}
    )
    assert model.backbone.out_channels == 768 and model.ctal.affinity.grid == (16, 16)
    assert model.ctal.affinity.impl == "direct"  # P = 256 < 9NC
    assert _count(model.ctal) == 1_982_976
    rest = _count(model) - _count(model.backbone)
    assert abs(rest - 13.2e6) / 13.2e6 < 0.01
    assert abs(_count(model.heads) - 9.37e6) / 9.37e6 < 0.01
    assert model.backbone_label == "swin_v2_s (random init)"


def test_swin_v2_s_backbone_size():
    from densemtl.models.ctal.transformer import SwinV2LastStage

    assert abs(_count(SwinV2LastStage("swin_v2_s")) - 49e6) / 49e6 < 0.01
    with pytest.raises(ValueError, match="swin_v2_s"):
        SwinV2LastStage("swin_v3")


def test_transformer_tiny_overfit(one_thread):
    torch.manual_seed(0)
    model = MODELS.get("ctal_transformer")(
        ["semseg", "depth"], {"semseg": 3}, input_size=(64, 64), ctal_channels=16, aspp_rates=(1, 2, 3),
        backbone_args={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "stochastic_depth_prob": 0},
    )
    for module in model.modules():  # the heads' Dropout(0.5) only adds noise to a 30-step fit
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    first, last = _overfit(model, 30, size=(64, 64), lr=2e-3)  # stride 32: a 2x2 grid holds the four quadrants
    assert last < 0.25 * first, (first, last)
