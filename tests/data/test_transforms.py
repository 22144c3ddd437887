"""Joint transforms: geometry against F.interpolate / hand-derived values, fills, normals, presets, seeds."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemtl.data.transforms import (
    DEFAULT_SIZES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    CentredPad,
    Compose,
    Normalize,
    PhotometricDistortion,
    RandomAffine,
    RandomCropResize,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
    ToCompact,
    ToContract,
    build_transform,
    decode_normals_png8,
    photometric,
    resize_back,
    restore_predictions,
    split_contract,
)
from densemtl.data.transforms import affine as affine_fn
from densemtl.data.transforms import hflip as hflip_fn

TARGET_KEYS = ("semseg", "depth", "normals", "edge")


def make_sample(h: int = 30, w: int = 40, seed: int = 0) -> dict:
    """A reader-like sample: uint8 image, labels with ignore, depth with holes, unit normals with holes."""
    g = torch.Generator().manual_seed(seed)
    semseg = torch.randint(0, 5, (h, w), generator=g)
    semseg[:3] = 255
    depth = 0.5 + 9.5 * torch.rand(1, h, w, generator=g)
    depth[:, :, :2] = 0
    normals = F.normalize(torch.randn(3, h, w, generator=g), dim=0)
    normals[:, -2:] = 0
    edge = (torch.rand(1, h, w, generator=g) > 0.8).float()
    edge[:, :, w // 2] = 255
    return {
        "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
        "semseg": semseg,
        "depth": depth,
        "normals": normals,
        "edge": edge,
        "meta": {"name": f"s{seed}", "size": (h, w)},
    }


def ramp_sample(h: int = 41, w: int = 41, direction: tuple[float, float] = (1.5, 1.0)) -> dict:
    """Image = linear ramp rising along ``direction`` (x right, y down); normals = that direction."""
    a, b = direction
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = 20 + a * x + b * y
    assert float(ramp.max()) < 255
    n = torch.tensor([a, b, 0.0]) / math.hypot(a, b)
    return {
        "image": ramp.expand(3, h, w).clone(),
        "normals": n.view(3, 1, 1).expand(3, h, w).clone(),
        "semseg": torch.zeros(h, w, dtype=torch.int64),
        "meta": {"name": "ramp", "size": (h, w)},
    }


def gradient_direction(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean unit gradient (x, y) of channel 0 by central differences, 3 px away from invalid pixels."""
    valid = F.max_pool2d((~valid)[None, None].float(), 7, stride=1, padding=3)[0, 0] == 0
    img = image[0].double()
    gx = (img[1:-1, 2:] - img[1:-1, :-2]) / 2
    gy = (img[2:, 1:-1] - img[:-2, 1:-1]) / 2
    inner = valid[1:-1, 1:-1] & valid[2:, 1:-1] & valid[:-2, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2]
    v = torch.stack((gx[inner].mean(), gy[inner].mean()))
    return v / v.norm()


def normals_xy(sample: dict, valid: torch.Tensor) -> torch.Tensor:
    n = sample["normals"][:2, valid].double().mean(1)
    return n / n.norm()


# ------------------------------------------------------------------------------------------- helpers


def label_values(t: torch.Tensor) -> set:
    return set(torch.unique(t).tolist())


def valid_normals_are_unit(n: torch.Tensor) -> bool:
    norm = n.norm(dim=0)
    valid = norm > 1e-6
    return bool(torch.allclose(norm[valid], torch.ones_like(norm[valid]), atol=1e-5))


# ----------------------------------------------------------------------------------- scale + crop


@pytest.mark.parametrize("scale", [0.5, 0.77, 1.0, 1.37, 2.0])
def test_scale_crop_equals_resize_then_crop(scale):
    sample = make_sample(30, 40)
    t = RandomScaleCrop((24, 28), scale_range=None, scale_choices=(scale,), cat_max_ratio=1.0)
    out = t(sample, torch.Generator().manual_seed(3))
    hs, ws = int(30 * scale + 0.5), int(40 * scale + 0.5)
    top, left, ch, cw = out["meta"]["augment"]["crop"]
    assert (ch, cw) == (min(hs, 24), min(ws, 28))
    win = (slice(top, top + ch), slice(left, left + cw))

    def resized(x, mode):
        if x.dim() == 2:
            return resized(x[None], mode)[0]
        y = F.interpolate(
            x[None].float(), size=(hs, ws), mode=mode, **({} if mode == "nearest" else {"align_corners": False})
        )
        return y[0][(..., *win)]

    torch.testing.assert_close(out["image"], resized(sample["image"], "bilinear"), atol=1e-3, rtol=0)
    assert torch.equal(out["semseg"], resized(sample["semseg"], "nearest").long())
    assert torch.equal(out["edge"], resized(sample["edge"], "nearest"))
    torch.testing.assert_close(out["depth"], resized(sample["depth"], "nearest") / scale)
    assert torch.equal(out["normals"], resized(sample["normals"], "nearest"))
    assert out["meta"]["valid_box"] == (0, 0, ch, cw)
    assert out["meta"]["size"] == (30, 40)
    assert out["image"].dtype == torch.float32 and out["semseg"].dtype == torch.int64


def test_scale_crop_keeps_label_sets_and_unit_normals():
    sample = make_sample(30, 40)
    t = RandomScaleCrop((20, 20))
    for seed in range(10):
        out = t(sample, torch.Generator().manual_seed(seed))
        assert label_values(out["semseg"]) <= label_values(sample["semseg"])
        assert label_values(out["edge"]) <= {0.0, 1.0, 255.0}
        assert valid_normals_are_unit(out["normals"])


def test_depth_divided_by_zoom_every_transform():
    sample = make_sample(30, 40)
    sample["depth"] = torch.full((1, 30, 40), 3.0)
    out = RandomScaleCrop((20, 20), scale_range=None, scale_choices=(1.5,), cat_max_ratio=1.0)(sample)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 2.0))
    out = RandomCropResize((1.2,))(sample)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 2.5))
    out = affine_fn(sample, 0.0, 1.5)
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 2.0))
    out = Resize((20, 64))(sample)  # a fixed resize changes no distance
    assert torch.allclose(out["depth"], torch.full_like(out["depth"], 3.0))


def _balanced(semseg: torch.Tensor, ratio: float) -> bool:
    values, counts = np.unique(semseg.numpy(), return_counts=True)
    counts = counts[values != 255]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_redraws_crops():
    # left half class 1, right half class 0 (40x40); a 20x20 window is balanced iff its left edge is in 6..14
    semseg = torch.zeros(40, 40, dtype=torch.int64)
    semseg[:, :20] = 1
    sample = {"image": torch.zeros(3, 40, 40, dtype=torch.uint8), "semseg": semseg, "meta": {"size": (40, 40)}}
    ok_check, ok_plain = 0, 0
    for seed in range(60):
        kw = {"scale_range": None, "scale_choices": (1.0,)}
        out = RandomScaleCrop((20, 20), cat_max_ratio=0.75, **kw)(sample, torch.Generator().manual_seed(seed))
        plain = RandomScaleCrop((20, 20), cat_max_ratio=1.0, **kw)(sample, torch.Generator().manual_seed(seed))
        ok_check += _balanced(out["semseg"], 0.75)
        ok_plain += _balanced(plain["semseg"], 0.75)
    # a single window is balanced with probability 9/21; ten draws fail together with probability < 0.4 %
    assert ok_check >= 58
    assert ok_plain <= 40


def test_cat_max_ratio_ignores_ignore_pixels():
    t = RandomScaleCrop((4, 4), scale_range=None, scale_choices=(1.0,))
    crop = torch.tensor([[0, 0, 0, 255]] * 3 + [[1, 255, 255, 255]])  # class 0: 9 of 10 valid pixels
    assert not t._balanced(crop)
    crop[3, 1:3] = 1  # class 0: 9 of 12 = 0.75, not below 0.75
    assert not t._balanced(crop)
    crop[3, 3] = 1  # 9 of 13
    assert t._balanced(crop)


# ------------------------------------------------------------------------------------------- flip


def test_flip_hand_values_and_twice_identity():
    sample = make_sample(6, 7)
    out = hflip_fn(sample)
    assert torch.equal(out["image"][:, :, 0], sample["image"][:, :, 6])
    assert torch.equal(out["semseg"][:, 1], sample["semseg"][:, 5])
    assert torch.equal(out["normals"][0, :, 2], -sample["normals"][0, :, 4])
    assert torch.equal(out["normals"][1:, :, 2], sample["normals"][1:, :, 4])
    back = hflip_fn(out)
    for key in ("image", *TARGET_KEYS):
        assert torch.equal(back[key], sample[key]), key
    assert back["meta"]["valid_box"] == (0, 0, 6, 7)


def test_flip_probability_and_box():
    sample = make_sample(6, 7)
    assert RandomHorizontalFlip(0.0)(sample) is sample
    out = RandomHorizontalFlip(1.0)(CentredPad((6, 11))(sample))
    assert out["meta"]["valid_box"] == (0, 2, 6, 7)  # padded at left 2, right 2: symmetric
    out = RandomHorizontalFlip(1.0)(CentredPad((6, 10))(sample))  # left 1, right 2 -> after flip left 2
    assert out["meta"]["valid_box"] == (0, 2, 6, 7)
    assert torch.all(out["semseg"][:, :2] == 255) and torch.all(out["semseg"][:, -1:] == 255)


# ------------------------------------------------------------------------------------ rotation, zoom


def test_rotation_convention_by_hand():
    # square 21x21, centre (10, 10); a marker 6 px right of the centre, all normals pointing right (+x)
    sample = {
        "image": torch.zeros(3, 21, 21),
        "normals": torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 21, 21).clone(),
        "semseg": torch.zeros(21, 21, dtype=torch.int64),
        "meta": {"size": (21, 21)},
    }
    sample["image"][:, 10, 16] = 200
    sample["semseg"][10, 16] = 3
    out = affine_fn(sample, 90.0, 1.0, image_mode="nearest")
    # counter-clockwise on screen: right of centre -> above the centre (smaller row), +x -> -y (up)
    assert out["semseg"][4, 10] == 3 and int((out["semseg"] == 3).sum()) == 1
    assert out["image"][0, 4, 10] == 200
    torch.testing.assert_close(out["normals"][:, 10, 10], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle,scale", [(20.0, 1.0), (-17.0, 1.2), (35.0, 0.8), (0.0, 1.5)])
@pytest.mark.parametrize("direction", [(1.5, 1.0), (-0.7, 1.6)])
def test_affine_normals_follow_the_image(angle, scale, direction):
    sample = ramp_sample(41, 41, direction)
    out = affine_fn(sample, angle, scale, image_mode="bicubic")
    valid = out["semseg"] != 255  # pixels that came from inside the image
    n = normals_xy(out, valid)
    grad = gradient_direction(out["image"], valid)
    assert float(torch.dot(n, grad)) > math.cos(math.radians(1.0))
    # the normals turned by the angle: (x, y) -> (cos x + sin y, -sin x + cos y)
    a = math.radians(angle)
    d = torch.tensor(direction, dtype=torch.float64) / math.hypot(*direction)
    expect = torch.stack((math.cos(a) * d[0] + math.sin(a) * d[1], -math.sin(a) * d[0] + math.cos(a) * d[1]))
    torch.testing.assert_close(n, expect, atol=1e-6, rtol=0)
    assert valid_normals_are_unit(out["normals"])


@pytest.mark.parametrize(
    "transform",
    [
        RandomHorizontalFlip(1.0),
        RandomScaleCrop((30, 30), cat_max_ratio=1.0),
        RandomCropResize(),
        RandomAffine(),
    ],
    ids=lambda t: type(t).__name__,
)
def test_every_geometric_transform_keeps_normals_on_the_image_gradient(transform):
    sample = ramp_sample(41, 41, (-0.7, 1.6))
    for seed in range(3):
        out = transform(sample, torch.Generator().manual_seed(seed))
        valid = out["semseg"] != 255
        n, grad = normals_xy(out, valid), gradient_direction(out["image"], valid)
        assert float(torch.dot(n, grad)) > math.cos(math.radians(1.0)), seed


def test_rotation_fills_outside_areas():
    sample = make_sample(30, 40)
    out = affine_fn(sample, 30.0, 0.8)
    assert out["semseg"][0, 0] == 255 and out["edge"][0, 0, 0] == 255
    assert out["depth"][0, 0, 0] == 0 and torch.all(out["normals"][:, 0, 0] == 0)
    assert out["image"][:, 0, 0].abs().max() < 1e-3
    assert label_values(out["semseg"]) <= label_values(sample["semseg"])
    assert label_values(out["edge"]) <= {0.0, 1.0, 255.0}
    assert out["semseg"].dtype == torch.int64 and out["semseg"].shape == (30, 40)


def test_crop_resize_equals_crop_then_interpolate():
    sample = make_sample(30, 40)
    out = RandomCropResize((1.5,))(sample, torch.Generator().manual_seed(1))
    top, left, h, w = out["meta"]["augment"]["crop"]
    assert (h, w) == (20, 26)
    crop = {k: v[..., top : top + h, left : left + w] for k, v in sample.items() if k != "meta"}
    near = F.interpolate(crop["semseg"][None, None].float(), size=(30, 40), mode="nearest")[0, 0].long()
    assert torch.equal(out["semseg"], near)
    lin = F.interpolate(crop["normals"][None], size=(30, 40), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["normals"], lin, atol=1e-5, rtol=0)
    img = F.interpolate(crop["image"][None].float(), size=(30, 40), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out["image"], img, atol=1e-3, rtol=0)


def test_fixed_resize_matches_interpolate_and_renormalises():
    sample = make_sample(30, 40)
    out = Resize((45, 50))(sample)
    near = F.interpolate(sample["semseg"][None, None].float(), size=(45, 50), mode="nearest")[0, 0].long()
    assert torch.equal(out["semseg"], near)
    cubic = F.interpolate(sample["image"][None].float(), size=(45, 50), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(out["image"], cubic.clamp(0, 255), atol=1e-3, rtol=0)
    assert valid_normals_are_unit(out["normals"])
    assert out["meta"]["size"] == (30, 40) and out["meta"]["valid_box"] == (0, 0, 45, 50)


# ------------------------------------------------------------------------------------------ padding


def test_centred_pad_fills_per_key():
    sample = make_sample(5, 6)
    out = CentredPad((9, 11))(sample)
    top, left = 2, 2  # (9 - 5) // 2, (11 - 6) // 2
    assert out["meta"]["valid_box"] == (top, left, 5, 6)
    inside = (..., slice(top, top + 5), slice(left, left + 6))
    for key in ("image", *TARGET_KEYS):
        assert torch.equal(out[key][inside], sample[key]), key
        assert out[key].dtype == sample[key].dtype
    border = torch.ones(9, 11, dtype=torch.bool)
    border[top : top + 5, left : left + 6] = False
    assert torch.all(out["image"][:, border] == 0)
    assert torch.all(out["semseg"][border] == 255) and torch.all(out["edge"][:, border] == 255)
    assert torch.all(out["depth"][:, border] == 0) and torch.all(out["normals"][:, border] == 0)


def test_pad_refuses_larger_images():
    with pytest.raises(ValueError, match="pad-only"):
        CentredPad((4, 4))(make_sample(5, 6))
    test = build_transform("invpt", train=False, family="nyud")
    with pytest.raises(ValueError, match="InvPT pad-only"):
        test(make_sample(480, 640))


# -------------------------------------------------------------------------------------- photometric


def test_photometric_matches_colorsys():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=g)
    image[:, 0, 0] = 77  # a grey pixel: hue undefined
    out = photometric(image, saturation=1.4, hue=12.0)
    for i in range(4):
        for j in range(5):
            r, gg, b = (image[:, i, j].double() / 255).tolist()
            h, s, v = colorsys.rgb_to_hsv(r, gg, b)
            expect = colorsys.hsv_to_rgb((h + 12.0 / 180.0) % 1.0, min(1.0, s * 1.4), v)
            torch.testing.assert_close(
                out[:, i, j].double(), torch.tensor(expect, dtype=torch.float64) * 255, atol=1e-3, rtol=0
            )
    out = photometric(image, saturation=0.5)
    for i, j in ((1, 1), (2, 3)):
        h, s, v = colorsys.rgb_to_hsv(*(image[:, i, j].double() / 255).tolist())
        expect = torch.tensor(colorsys.hsv_to_rgb(h, s * 0.5, v), dtype=torch.float64) * 255
        torch.testing.assert_close(out[:, i, j].double(), expect, atol=1e-3, rtol=0)


def test_photometric_brightness_contrast_order():
    image = torch.tensor([10.0, 100.0, 250.0]).view(3, 1, 1)
    torch.testing.assert_close(photometric(image, brightness=20.0).flatten(), torch.tensor([30.0, 120.0, 255.0]))
    first = photometric(image, brightness=-20.0, contrast=2.0, contrast_first=True).flatten()
    torch.testing.assert_close(first, torch.tensor([0.0, 160.0, 255.0]))
    assert torch.equal(image.flatten(), torch.tensor([10.0, 100.0, 250.0]))  # input untouched


def test_photometric_distortion_touches_only_the_image():
    sample = make_sample(12, 14)
    t = PhotometricDistortion(p=1.0)
    out = t(sample, torch.Generator().manual_seed(0))
    for key in TARGET_KEYS:
        assert out[key] is sample[key]
    assert not torch.equal(out["image"], sample["image"].float())
    assert out["image"].dtype == torch.float32 and out["image"].min() >= 0 and out["image"].max() <= 255


# ------------------------------------------------------------------------------------ normalisation


def test_normalize_values():
    image = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1)
    out = Normalize()({"image": image})["image"].flatten()
    expect = [(0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (128 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]]
    expect.append((1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2])
    torch.testing.assert_close(out, torch.tensor(expect), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        Normalize(None, None)({"image": image})["image"].flatten(), torch.tensor([0, 128 / 255, 1.0])
    )
    half = build_transform("autolambda", train=False, family="nyuv2_13")({"image": image})["image"].flatten()
    torch.testing.assert_close(half, torch.tensor([-1.0, 2 * 128 / 255 - 1, 1.0]))


# ------------------------------------------------------------------------------------------ presets


def test_preset_registry_and_errors():
    assert {"invpt", "mtinet", "mtan", "autolambda", "ctal_cnn", "none"} <= set(PRESETS.names())
    with pytest.raises(ValueError, match="available: .*invpt"):
        build_transform("nope", train=True)
    with pytest.raises(ValueError, match="no default size"):
        build_transform("invpt", train=True, family="nyuv2_13")
    with pytest.raises(ValueError, match="unknown normalization"):
        build_transform("none", train=False, normalization="weird")
    assert DEFAULT_SIZES[("invpt", "nyud")] == (448, 576)


def test_invpt_train_output_contract():
    sample = make_sample(42, 56)
    t = build_transform("invpt", train=True, family="nyud", size=(48, 64))
    assert "RandomScaleCrop" in repr(t) and "cat_max_ratio=0.75" in repr(t)
    for seed in range(6):
        out = t(sample, torch.Generator().manual_seed(seed))
        assert out["image"].shape == (3, 48, 64) and out["image"].dtype == torch.float32
        assert out["semseg"].shape == (48, 64) and out["semseg"].dtype == torch.int64
        assert out["depth"].shape == (1, 48, 64) and out["normals"].shape == (3, 48, 64)
        top, left, h, w = out["meta"]["valid_box"]
        outside = torch.ones(48, 64, dtype=torch.bool)
        outside[top : top + h, left : left + w] = False
        assert torch.all(out["semseg"][outside] == 255) and torch.all(out["image"][:, outside] == 0)
        assert valid_normals_are_unit(out["normals"])


def test_invpt_test_is_normalise_and_pad_only():
    sample = make_sample(42, 56)
    out = build_transform("invpt", train=False, family="nyud", size=(48, 64))(sample)
    top, left, h, w = out["meta"]["valid_box"]
    assert (top, left, h, w) == (3, 4, 42, 56)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expect = (sample["image"].float() / 255 - mean) / std
    torch.testing.assert_close(out["image"][:, 3:45, 4:60], expect, atol=1e-5, rtol=0)
    assert torch.equal(out["semseg"][3:45, 4:60], sample["semseg"])
    restored = restore_predictions(
        {"semseg": F.one_hot(out["semseg"].clamp(max=4), 5).permute(2, 0, 1).float()}, out["meta"]
    )
    assert torch.equal(restored["semseg"][sample["semseg"] != 255], sample["semseg"][sample["semseg"] != 255])


def test_mtinet_presets():
    sample = make_sample(30, 40)
    test = build_transform("mtinet", train=False, family="nyud", size=(30, 40))
    out = test(sample)
    assert torch.equal(out["semseg"], sample["semseg"]) and out["meta"]["size"] == (30, 40)
    train = build_transform("mtinet", train=True, family="pascal", size=(32, 32))
    assert "RandomAffine(angle_range=(-20.0, 20.0)" in repr(train)
    out = train(sample, torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 32, 32) and out["semseg"].shape == (32, 32)
    assert valid_normals_are_unit(out["normals"])
    nyud = build_transform("mtinet", train=True, family="nyud")
    assert "scale_choices=(1.0, 1.2, 1.5)" in repr(nyud) and "Resize(size=(480, 640)" in repr(nyud)


def test_mtan_and_ctal_presets():
    sample = make_sample(12, 16)
    plain = build_transform("mtan", train=True, family="nyuv2_13")(sample)
    torch.testing.assert_close(plain["image"], sample["image"].float() / 255)
    assert torch.equal(plain["semseg"], sample["semseg"])
    aug = build_transform("mtan", train=True, family="nyuv2_13", augment=True)
    assert "RandomCropResize" in repr(aug)
    assert aug(sample)["image"].shape == (3, 12, 16)
    ctal = build_transform("ctal_cnn", train=True, family="nyuv2_13")
    assert [type(t).__name__ for t in ctal.transforms] == ["RandomHorizontalFlip", "ToCompact", "ToContract"]
    auto = build_transform("autolambda", train=True, family="nyuv2_13", size=(10, 12))
    out = auto(sample, torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 10, 12) and out["image"].min() >= -1 and out["image"].max() <= 1


# ---------------------------------------------------------------------------------- reproducibility


def test_reproducible_under_global_seed_and_reseed():
    sample = make_sample(30, 40)
    t = build_transform("invpt", train=True, family="nyud", size=(24, 32))
    torch.manual_seed(5)
    a = [t(sample) for _ in range(3)]
    torch.manual_seed(5)
    b = [t(sample) for _ in range(3)]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["semseg"], y["semseg"])
    assert not torch.equal(a[0]["image"], a[1]["image"])  # per-sample draws differ
    torch.manual_seed(6)
    assert not torch.equal(t(sample)["image"], a[0]["image"])
    t.reseed(11)
    c = [t(sample)["image"] for _ in range(2)]
    torch.manual_seed(123)  # the private generator ignores the global one
    t.reseed(11)
    d = [t(sample)["image"] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(c, d))


def test_transforms_do_not_modify_input():
    sample = make_sample(20, 24)
    copy = {k: (v.clone() if isinstance(v, torch.Tensor) else dict(v)) for k, v in sample.items()}
    build_transform("invpt", train=True, size=(24, 32))(sample)
    build_transform("mtinet", train=True, family="pascal", size=(24, 32))(sample)
    hflip_fn(sample)
    for key in ("image", *TARGET_KEYS):
        assert torch.equal(sample[key], copy[key])
    assert sample["meta"] == copy["meta"]


# -------------------------------------------------------------------------------------- predictions


def test_resize_back_hand_values():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 1] = 5  # class 2 at (0, 1), class 0 elsewhere
    depth = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    out = resize_back({"semseg": logits, "depth": depth}, (4, 4))
    assert out["semseg"].dtype == torch.int64 and out["semseg"].shape == (1, 4, 4)
    expect = torch.zeros(4, 4, dtype=torch.int64)
    expect[0:2, 2:4] = 2
    assert torch.equal(out["semseg"][0], expect)
    # bilinear, align_corners=False: output row 1 of 4 samples source row 0.25
    assert out["depth"].shape == (1, 1, 4, 4)
    assert float(out["depth"][0, 0, 0, 0]) == pytest.approx(1.0)
    assert float(out["depth"][0, 0, 1, 1]) == pytest.approx(1 + 0.25 * 2 + 0.25 * 4)
    normals = torch.tensor([3.0, 0.0, 4.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(
        resize_back({"normals": normals}, (3, 3))["normals"][0, :, 1, 1], torch.tensor([0.6, 0.0, 0.8])
    )


def test_fused_flip_equals_crop_then_flip():
    sample = make_sample(30, 40)
    fused = RandomScaleCrop((24, 28), flip=1.0)
    crop, flip = RandomScaleCrop((24, 28)), RandomHorizontalFlip(1.0)
    for seed in range(4):
        a = fused(sample, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        b = flip(crop(sample, g), g)
        for key in ("image", *TARGET_KEYS):
            assert torch.equal(a[key], b[key]), key
        assert a["meta"] == b["meta"]
    assert build_transform("invpt", train=True).transforms[0].flip == 0.5


# --------------------------------------------------------------------------------- compact encoding


def test_to_compact_hand_values():
    sample = {
        "image": torch.tensor([0.4, 12.5, 13.5, 254.7]).view(1, 2, 2).expand(3, 2, 2).clone(),
        "semseg": torch.tensor([[0, 39], [255, 7]]),
        "edge": torch.tensor([[[0.0, 1.0], [255.0, 1.0]]]),
        "depth": torch.tensor([[[0.0, 1.5], [2.25, 9.0]]]),
        "meta": {"name": "x", "size": (2, 2)},
    }
    out = ToCompact()(sample)
    assert out["image"].dtype == torch.uint8 and out["image"][0].tolist() == [[0, 12], [14, 255]]  # half to even
    assert out["semseg"].dtype == torch.uint8 and out["semseg"].tolist() == [[0, 39], [255, 7]]
    assert out["edge"].dtype == torch.uint8 and out["edge"].tolist() == [[[0, 1], [255, 1]]]
    assert out["depth"] is sample["depth"] and out["meta"] is sample["meta"]
    kept = ToCompact(image="keep")(sample)
    assert kept["image"] is sample["image"]
    with pytest.raises(ValueError, match=r"'x': semseg values must lie in 0..255"):
        ToCompact()({**sample, "semseg": torch.tensor([[0, 256], [1, 2]])})


def test_to_contract_hand_values_and_zero_padding():
    image = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1).repeat(1, 4, 5)
    sample = {
        "image": image,
        "semseg": torch.full((4, 5), 3, dtype=torch.uint8),
        "edge": torch.ones(1, 4, 5, dtype=torch.uint8),
        "depth": torch.full((1, 4, 5), 2.0),
        "meta": {"name": "x", "size": (2, 3), "valid_box": (1, 2, 2, 3)},
    }
    out = ToContract(zero_padding=True)(sample)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    expect = (np.array([0, 128, 255]) / 255.0 - mean) / std  # float64 reference
    inside = out["image"][:, 1:3, 2:5]
    np.testing.assert_allclose(inside.numpy(), np.broadcast_to(expect[:, None, None], (3, 2, 3)), atol=1e-6)
    outside = torch.ones(4, 5, dtype=torch.bool)
    outside[1:3, 2:5] = False
    assert torch.equal(out["image"][:, outside], torch.zeros(3, int(outside.sum())))
    assert not torch.signbit(out["image"][:, outside]).any()  # +0, not -0
    assert out["semseg"].dtype == torch.int64 and out["edge"].dtype == torch.float32
    assert out["semseg"].unique().tolist() == [3] and out["edge"].unique().tolist() == [1.0]
    assert out["depth"] is sample["depth"] and out["image"].dtype == torch.float32
    plain = ToContract(zero_padding=False)(sample)["image"]
    np.testing.assert_allclose(plain[:, 0, 0].numpy(), expect, atol=1e-6)
    assert "valid_box" in sample["meta"] and sample["image"].dtype == torch.uint8  # input untouched


def test_to_contract_batch_equals_per_sample():
    t = build_transform("invpt", train=True, family="nyud", size=(48, 64))
    head, finish = split_contract(t)
    samples = [head(make_sample(30 + 4 * i, 40, seed=i), torch.Generator().manual_seed(i)) for i in range(3)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "meta"}
    batch["meta"] = [s["meta"] for s in samples]
    assert len({s["meta"]["valid_box"] for s in samples}) > 1  # different padding per sample
    done = finish(batch)
    for i, s in enumerate(samples):
        single = finish(s)
        for key in ("image", *TARGET_KEYS):
            assert torch.equal(done[key][i], single[key]), key
            assert done[key].dtype == single[key].dtype


@pytest.mark.parametrize(
    "preset,family,size",
    [
        ("invpt", "nyud", (48, 64)),
        ("mtinet", "pascal", (32, 32)),
        ("mtan", "nyuv2_13", None),
        ("autolambda", "nyuv2_13", (24, 32)),
        ("ctal_cnn", "nyuv2_13", None),
        ("none", "nyud", None),
    ],
)
def test_split_contract_reproduces_the_whole_pipeline(preset, family, size):
    sample = make_sample(30, 40)
    for train in (True, False):
        full = build_transform(preset, train=train, family=family, size=size)
        head, finish = split_contract(full)
        assert isinstance(finish, ToContract) and len(head.transforms) == len(full.transforms) - 1
        for seed in range(3):
            a = full(sample, torch.Generator().manual_seed(seed))
            compact = head(sample, torch.Generator().manual_seed(seed))
            assert compact["semseg"].dtype == torch.uint8 and compact["edge"].dtype == torch.uint8
            b = finish(compact)
            for key in ("image", *TARGET_KEYS):
                assert torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype, key
            assert a["meta"] == b["meta"]
    assert split_contract(Compose([Normalize()]))[1] is None


def test_invpt_compact_image_is_uint8_with_padding_zero_after_normalising():
    sample = make_sample(30, 40)
    head, finish = split_contract(build_transform("invpt", train=True, family="nyud", size=(48, 64)))
    compact = head(sample, torch.Generator().manual_seed(1))
    assert compact["image"].dtype == torch.uint8 and compact["image"].shape == (3, 48, 64)
    out = finish(compact)
    top, left, h, w = out["meta"]["valid_box"]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    window = (slice(None), slice(top, top + h), slice(left, left + w))
    augment = compact["meta"]["augment"]
    assert augment["photometric_pending"] and not out["meta"]["augment"]["photometric_pending"]
    distorted = photometric(compact["image"][window], **augment["photometric"]).round().clamp(0, 255)
    expect = (distorted.double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(out["image"][window].double(), expect, atol=1e-6, rtol=0)
    assert out["image"].abs().sum() - out["image"][window].abs().sum() == 0


def test_deferred_photometric_equals_immediate_one_sample_and_batched():
    """Deferring to ToContract gives the numbers of distorting in place and rounding (ToCompact)."""

    def pipeline(defer: bool) -> Compose:
        distort = PhotometricDistortion(p=0.7, defer=defer)
        crop = RandomScaleCrop((24, 32), flip=0.5, uint8_image=True)  # integer image before the distortion
        return Compose([crop, distort, ToCompact(), CentredPad((24, 32))])

    now, later = pipeline(False), pipeline(True)
    finish = ToContract(zero_padding=True)
    deferred, immediate = [], []
    for seed in range(12):
        sample = make_sample(20, 30, seed)
        a = later(sample, torch.Generator().manual_seed(seed))
        b = now(sample, torch.Generator().manual_seed(seed))
        assert a["image"].dtype == torch.uint8 and a["meta"]["augment"]["photometric_pending"]
        assert a["meta"]["augment"]["photometric"] == b["meta"]["augment"]["photometric"]
        assert torch.equal(finish(a)["image"], finish(b)["image"])
        deferred.append(a)
        immediate.append(b)
    deferred[3]["meta"]["augment"]["photometric_pending"] = False  # a batch may mix pending and done samples
    immediate[3] = {**immediate[3], "image": deferred[3]["image"]}
    batch = {key: torch.stack([d[key] for d in deferred]) for key in deferred[0] if key != "meta"}
    batch["meta"] = [d["meta"] for d in deferred]
    out = finish(batch)
    for i, b in enumerate(immediate):
        assert torch.equal(out["image"][i], finish(b)["image"])
    assert all(not m["augment"]["photometric_pending"] for m in out["meta"])
    assert all(d["meta"]["augment"]["photometric_pending"] for i, d in enumerate(deferred) if i != 3)  # input kept


def test_normals_png8_decoding_and_flip_are_exact():
    codes = torch.arange(256, dtype=torch.uint8)
    values = decode_normals_png8(codes)
    np.testing.assert_array_equal(values.numpy(), (2.0 * np.arange(256) / 255.0 - 1.0).astype(np.float32))
    assert values[0] == -1 and values[255] == 1 and values.dtype == torch.float32
    assert torch.equal(decode_normals_png8(255 - codes), -values)  # the flip v -> 255 - v is exactly -n
    floats = torch.rand(3, 2, 2)
    assert decode_normals_png8(floats) is floats


def _png8_sample(h: int = 30, w: int = 40) -> dict:
    sample = make_sample(h, w)
    sample["normals"] = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    return sample


@pytest.mark.parametrize(
    "transform",
    [
        RandomHorizontalFlip(1.0),
        RandomScaleCrop((24, 28), flip=1.0),
        RandomScaleCrop((24, 28), normals_mode="bilinear"),
        RandomCropResize(),
        RandomCropResize(normals_mode="nearest"),
        RandomAffine(),
        Resize((20, 50)),
        build_transform("invpt", train=True, family="nyud", size=(48, 64)),
        build_transform("invpt", train=False, family="nyud", size=(48, 64)),
        build_transform("autolambda", train=True, family="nyuv2_13", size=(24, 32)),
        build_transform("mtinet", train=True, family="pascal", size=(32, 32)),
    ],
)
def test_transforms_on_png8_normals_equal_transforms_on_decoded_normals(transform):
    codes = _png8_sample()
    floats = {**codes, "normals": decode_normals_png8(codes["normals"])}
    for seed in range(3):
        a = transform(codes, torch.Generator().manual_seed(seed))
        b = transform(floats, torch.Generator().manual_seed(seed))
        got = a["normals"] if a["normals"].dtype != torch.uint8 else ToContract()(a)["normals"]
        assert got.dtype == torch.float32 and torch.equal(got, b["normals"]), seed
        assert torch.equal(a["image"], b["image"]) and a["meta"] == b["meta"]


def test_to_contract_zeroes_png8_normals_outside_the_box_batched():
    pad = CentredPad((8, 9))
    samples = [
        pad(
            {"image": torch.zeros(3, h, w, dtype=torch.uint8), "normals": torch.full((3, h, w), 255, dtype=torch.uint8)}
        )
        for h, w in ((8, 9), (6, 5))
    ]
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "normals": torch.stack([s["normals"] for s in samples]),
    }
    batch["meta"] = [s["meta"] for s in samples]
    out = ToContract(zero_padding=False)(batch)["normals"]
    assert out.dtype == torch.float32 and torch.all(out[0] == 1)
    assert torch.all(out[1, :, 1:7, 2:7] == 1) and out[1].sum() == 3 * 6 * 5  # zero vector in the padding


# ----------------------------------------------------- zoom fast path, fixed compact dtypes (issue 9)


@pytest.mark.parametrize("size", [(30, 40), (31, 47), (480, 640)])
@pytest.mark.parametrize("scale", [0.75, 0.9137, 1.0001, 1.2, 1.25, 1.5])
def test_zoom_without_rotation_equals_sampling_the_whole_grid(size, scale):
    """The separable zoom (grid built from its axes, nearest keys gathered) gives exactly the values of
    grid_sample on the full affine grid, for every key and dtype, including the fill outside (zoom < 1)."""
    from densemtl.data.transforms import _affine_grid, _renormalize, _warp

    h, w = size
    sample = make_sample(h, w, seed=3)
    sample["semseg"] = sample["semseg"].to(torch.uint8)
    out = affine_fn(sample, 0.0, scale)
    grid = _affine_grid(size, 0.0, scale)
    assert torch.equal(out["image"], _warp(sample["image"].float(), grid, "bicubic", 0.0).clamp_(0, 255))
    assert out["semseg"].dtype == torch.uint8
    assert torch.equal(out["semseg"], _warp(sample["semseg"], grid, "nearest", 255.0))
    assert torch.equal(out["edge"], _warp(sample["edge"], grid, "nearest", 255.0))
    assert torch.equal(out["depth"], _warp(sample["depth"], grid, "nearest", 0.0) / scale)
    assert torch.equal(out["normals"], _renormalize(_warp(sample["normals"], grid, "nearest", 0.0)))
    if scale < 1:  # the border comes from outside the image: fills
        assert (out["semseg"][0] == 255).all() and (out["depth"][..., 0, :] == 0).all()


def test_renormalize_matches_numpy():
    from densemtl.data.transforms import _renormalize

    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    x[0, :, 1, 1] = 0
    x[1, :, 2, 3] = 1e-8  # shorter than 1e-6: zero
    with np.errstate(invalid="ignore"):
        ref = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    ref[0, :, 1, 1] = 0
    ref[1, :, 2, 3] = 0
    np.testing.assert_allclose(_renormalize(x).numpy(), ref, rtol=1e-15, atol=0)


@pytest.mark.parametrize("image_mode", ["round", "float", "keep"])
def test_to_compact_dtypes_do_not_depend_on_the_draw(image_mode):
    """A uint8 image (zoom 1) and a float one (other zooms) leave ToCompact with one dtype; codes and float
    normals alike leave normals="float" as float32 (codes decoded, zero outside the valid box)."""
    step = ToCompact(image=image_mode, normals="float")
    raw = make_sample(6, 8)
    codes = torch.full((3, 6, 8), 255, dtype=torch.uint8)
    codes[:, :, :2] = 0
    as_uint8 = step({**raw, "normals": codes, "meta": {**raw["meta"], "valid_box": (0, 2, 6, 6)}})
    as_float = step({**raw, "image": raw["image"].float() + 0.25})
    if image_mode == "keep":
        assert as_uint8["image"].dtype == torch.uint8 and as_float["image"].dtype == torch.float32
    else:
        assert as_uint8["image"].dtype == as_float["image"].dtype
        assert as_uint8["image"].dtype == (torch.uint8 if image_mode == "round" else torch.float32)
    assert as_uint8["normals"].dtype == as_float["normals"].dtype == torch.float32
    assert (as_uint8["normals"][:, :, :2] == 0).all() and (as_uint8["normals"][:, :, 2:] == 1).all()
    with pytest.raises(ValueError, match="ToCompact image"):
        ToCompact(image="uint8")
