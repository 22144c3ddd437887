"""NYUD-v2 readers and writers: hand-written files of every layout, real NYUv2 frames, every error path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.data import DATASETS, DatasetNotFoundError
from densemtl.data.nyud import (
    NYU13_CLASSES,
    NYU40_CLASSES,
    NYUD,
    NYUDMT,
    NYUv2_13,
    detect_nyud_variant,
    encode_normals_png,
    verify_dataset,
    write_nyud_mt_sample,
    write_nyud_sample,
    write_nyuv2_13_sample,
    write_split,
)

H, W = 4, 5


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# Hand-chosen stored values and what the contract says they decode to.
SEG_STORED = np.array([[0, 1, 2, 40, 0], [5, 5, 0, 39, 1], [1, 1, 1, 1, 1], [40, 40, 3, 3, 0]], np.uint8)
SEG_DECODED = np.array(
    [[255, 0, 1, 39, 255], [4, 4, 255, 38, 0], [0, 0, 0, 0, 0], [39, 39, 2, 2, 255]],
    np.int64,
)
NORMAL_STORED = np.zeros((H, W, 3), np.uint8)
NORMAL_STORED[..., 0], NORMAL_STORED[..., 1], NORMAL_STORED[..., 2] = 255, 0, 128
EDGE_STORED = np.array([[0, 255, 0, 0, 0]] * H, np.uint8)
DEPTH = np.array([[0.0, 0.77, 1.5, 9.96, 2.25]] * H, np.float32)
IMAGE = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3) * 3


def _hand_nyud(root: Path, ids: list[str], split: str = "train") -> Path:
    """Layout 1 written with raw PIL/numpy calls (not the module's writers)."""
    for name in ids:
        _png(root / "images" / f"{name}.png", IMAGE)
        _png(root / "segmentation" / f"{name}.png", SEG_STORED)
        _npy(root / "depth" / f"{name}.npy", DEPTH)
        _png(root / "normals" / f"{name}.png", NORMAL_STORED)
        _png(root / "edge" / f"{name}.png", EDGE_STORED)
    _text(root / "gt_sets" / f"{split}.txt", ids)
    return root


@pytest.fixture
def nyud_root(tmp_path: Path) -> Path:
    root = _hand_nyud(tmp_path / "NYUDv2", ["0001", "0003", "0004"], "train")
    _hand_nyud(root, ["0002"], "val")
    return root


# ----------------------------------------------------------------------------------- layout 1


def test_registry_and_facts() -> None:
    assert DATASETS.get("nyud") is NYUD and DATASETS.get("nyud-mt") is NYUDMT
    assert DATASETS.get("nyuv2-13") is NYUv2_13
    assert len(NYU40_CLASSES) == 40 and NYU40_CLASSES[0] == "wall" and NYU40_CLASSES[39] == "otherprop"
    assert len(NYU13_CLASSES) == 13 and NYU13_CLASSES[0] == "bed" and NYU13_CLASSES[12] == "window"
    assert NYUD.family == NYUDMT.family == "nyud" and NYUv2_13.family == "nyuv2_13"
    assert NYUv2_13.available_tasks == ("semseg", "depth", "normals")


def test_class_names_match_shared_meta(shared_data: Path) -> None:
    meta = shared_data / "nyudv2_mini" / "meta"
    for path, names in (("class40_names.txt", NYU40_CLASSES), ("class13_names.txt", NYU13_CLASSES)):
        rows = [line.split("\t") for line in (meta / path).read_text().splitlines() if line.strip()]
        assert [r[1].strip() for r in rows] == list(names)


def test_nyud_decodes_hand_written_values(nyud_root: Path) -> None:
    ds = NYUD(nyud_root, "train")
    assert len(ds) == 3 and len(NYUD(nyud_root, "val")) == 1
    assert ds.num_classes == {"semseg": 40}
    s = ds[1]
    assert s["meta"] == {"name": "0003", "size": (H, W), "dataset": "nyud", "variant": "atrc"}
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, H, W)
    np.testing.assert_array_equal(s["image"].numpy(), IMAGE.transpose(2, 0, 1))
    assert s["semseg"].dtype == torch.int64
    np.testing.assert_array_equal(s["semseg"].numpy(), SEG_DECODED)
    assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, H, W)
    np.testing.assert_array_equal(s["depth"][0].numpy(), DEPTH)
    assert s["normals"].shape == (3, H, W)
    np.testing.assert_allclose(s["normals"][0].numpy(), 1.0)
    np.testing.assert_allclose(s["normals"][1].numpy(), -1.0)
    np.testing.assert_allclose(s["normals"][2].numpy(), 256 / 255 - 1, rtol=1e-6)  # 2*128/255 - 1
    assert s["edge"].dtype == torch.float32 and s["edge"].shape == (1, H, W)
    np.testing.assert_array_equal(s["edge"][0].numpy(), EDGE_STORED / 255)


def test_uint8_labels_hold_the_same_values(nyud_root: Path, tmp_path: Path) -> None:
    s = NYUD(nyud_root, "train", uint8_labels=True).load(1)
    assert s["semseg"].dtype == torch.uint8 and s["edge"].dtype == torch.uint8
    np.testing.assert_array_equal(s["semseg"].numpy(), SEG_DECODED)  # 255 = ignore fits uint8
    np.testing.assert_array_equal(s["edge"][0].numpy(), EDGE_STORED // 255)
    assert s["depth"].dtype == torch.float32 and s["normals"].dtype == torch.float32  # other keys unchanged
    _hand_mtan(tmp_path, "train", 3)
    a, b = NYUv2_13(tmp_path, uint8_labels=True).load(2), NYUv2_13(tmp_path).load(2)
    assert a["semseg"].dtype == torch.uint8 and torch.equal(a["semseg"].long(), b["semseg"])


def test_nyud_task_subset_and_transform(nyud_root: Path) -> None:
    ds = NYUD(nyud_root, "val", tasks=["depth"], transform=lambda s: {**s, "seen": True})
    s = ds[0]
    assert set(s) == {"image", "depth", "meta", "seen"}
    assert ds.num_classes == {}


def test_nyud_writer_encoding_checked_with_raw_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    semseg = rng.integers(0, 40, (6, 7))
    semseg[0, :3] = 255
    depth = rng.uniform(0.5, 10, (6, 7)).astype(np.float32)
    depth[1, 1] = 0
    normals = rng.normal(size=(6, 7, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    edge = (rng.random((6, 7)) > 0.7).astype(np.uint8)
    write_nyud_sample(tmp_path, "0007", image, semseg, depth, normals, edge)
    write_split(tmp_path, "train", ["0007"])

    assert (tmp_path / "gt_sets" / "train.txt").read_text() == "0007\n"
    seg_png = np.asarray(Image.open(tmp_path / "segmentation" / "0007.png"))
    assert seg_png.dtype == np.uint8
    np.testing.assert_array_equal(seg_png[0, :3], 0)
    np.testing.assert_array_equal(seg_png[semseg != 255], semseg[semseg != 255] + 1)
    nrm_png = np.asarray(Image.open(tmp_path / "normals" / "0007.png")).astype(np.int64)
    assert np.abs(nrm_png - (normals + 1) * 127.5).max() <= 0.5
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "edge" / "0007.png")), edge * 255)
    np.testing.assert_array_equal(np.load(tmp_path / "depth" / "0007.npy"), depth)
    assert not list(tmp_path.rglob("*.tmp"))

    s = NYUD(tmp_path).load(0)
    np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), image)
    np.testing.assert_array_equal(s["semseg"].numpy(), semseg)
    assert np.abs(s["normals"].numpy().transpose(1, 2, 0) - normals).max() <= 1 / 255 + 1e-6
    np.testing.assert_array_equal(s["edge"][0].numpy(), edge)


def test_encode_normals_png_clips_and_rounds() -> None:
    n = np.array([[[-1.0, 0.0, 1.0], [-2.0, 2.0, 0.5]]])
    np.testing.assert_array_equal(encode_normals_png(n), [[[0, 128, 255], [0, 255, 191]]])  # 127.5->128, 191.25


class _Nyud13(NYUD):
    """A layout-1 subclass with 13 classes, as the synthetic dataset registers it."""

    dataset_name: ClassVar[str] = "nyud13-test"
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": NYU13_CLASSES}


def test_subclass_with_fewer_classes(tmp_path: Path) -> None:
    seg = np.array([[0, 1, 13, 7, 2]] * H, np.uint8)
    _hand_nyud(tmp_path, ["a"])
    _png(tmp_path / "segmentation" / "a.png", seg)
    s = _Nyud13(tmp_path, tasks=["semseg"]).load(0)
    np.testing.assert_array_equal(s["semseg"][0].numpy(), [255, 0, 12, 6, 1])
    assert s["meta"]["dataset"] == "nyud13-test"
    _png(tmp_path / "segmentation" / "a.png", np.array([[0, 1, 14, 7, 2]] * H, np.uint8))
    with pytest.raises(ValueError, match=r"a\.png.*\[14\].*1\.\.13"):
        _Nyud13(tmp_path, tasks=["semseg"]).load(0)


# ----------------------------------------------------------------------------------- layout 2


def test_nyud_mt_hand_written(tmp_path: Path) -> None:
    image = np.full((H, W, 3), (200, 30, 90), np.uint8)  # flat colour: JPEG keeps it within a few levels
    normals = np.zeros((H, W, 3), np.float32)
    normals[:2] = (0.0, 0.6, -0.8)
    edge = np.array([[0, 1, 1, 0, 0]] * H, np.float32)
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "x.jpg", quality=95)
    _png(tmp_path / "segmentation" / "x.png", SEG_STORED)
    _npy(tmp_path / "depth" / "x.npy", DEPTH)
    _npy(tmp_path / "normals" / "x.npy", normals)
    _npy(tmp_path / "edge" / "x.npy", edge)
    _text(tmp_path / "gt_sets" / "val.txt", ["x"])
    s = NYUDMT(tmp_path, "val").load(0)
    assert s["meta"]["variant"] == "mtinet" and s["meta"]["dataset"] == "nyud-mt"
    assert np.abs(s["image"].numpy().astype(int) - np.array([200, 30, 90])[:, None, None]).max() <= 3
    np.testing.assert_array_equal(s["semseg"].numpy(), SEG_DECODED)
    np.testing.assert_array_equal(s["depth"][0].numpy(), DEPTH)
    np.testing.assert_array_equal(s["normals"].numpy(), normals.transpose(2, 0, 1))
    np.testing.assert_array_equal(s["edge"][0].numpy(), edge)


def test_nyud_mt_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = np.full((8, 8, 3), 77, np.uint8)
    semseg = rng.integers(0, 40, (8, 8))
    semseg[3] = 255
    normals = rng.normal(size=(8, 8, 3)).astype(np.float32)
    normals[0] = 0
    edge = rng.integers(0, 2, (8, 8))
    write_nyud_mt_sample(tmp_path, "y", image, semseg, np.ones((8, 8)), normals, edge)
    write_split(tmp_path, "train", ["y"])
    assert np.asarray(Image.open(tmp_path / "images" / "y.jpg")).shape == (8, 8, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "normals" / "y.npy"), normals)
    s = NYUDMT(tmp_path).load(0)
    np.testing.assert_array_equal(s["semseg"].numpy(), semseg)
    np.testing.assert_array_equal(s["edge"][0].numpy(), edge)
    np.testing.assert_array_equal(s["depth"].numpy(), 1.0)


# ----------------------------------------------------------------------------------- layout 3


def _hand_mtan(root: Path, split: str, n: int) -> None:
    for i in range(n):
        _npy(root / split / "image" / f"{i}.npy", IMAGE.astype(np.float64) / 255.0)
        label = SEG_DECODED.astype(np.float64) % 13
        label[0, 0] = -1
        _npy(root / split / "label" / f"{i}.npy", label)
        _npy(root / split / "depth" / f"{i}.npy", DEPTH[..., None])
        normal = np.zeros((H, W, 3), np.float32)
        normal[1:] = (1.0, 0.0, 0.0)
        _npy(root / split / "normal" / f"{i}.npy", normal)


def test_nyuv2_13_hand_written(tmp_path: Path) -> None:
    _hand_mtan(tmp_path, "train", 3)
    _hand_mtan(tmp_path, "val", 2)
    ds = NYUv2_13(tmp_path)
    assert len(ds) == 3 and len(NYUv2_13(tmp_path, "val")) == 2
    assert ds.num_classes == {"semseg": 13}
    s = ds.load(2)
    assert s["meta"] == {"name": "2", "size": (H, W), "dataset": "nyuv2-13", "variant": "mtan"}
    np.testing.assert_array_equal(s["image"].numpy(), IMAGE.transpose(2, 0, 1))
    expected = SEG_DECODED % 13
    expected[0, 0] = 255
    np.testing.assert_array_equal(s["semseg"].numpy(), expected)
    np.testing.assert_array_equal(s["depth"].numpy(), DEPTH[None])
    assert s["normals"].shape == (3, H, W)
    np.testing.assert_array_equal(s["normals"][:, 0].numpy(), 0.0)
    np.testing.assert_array_equal(s["normals"][0, 1:].numpy(), 1.0)


def test_nyuv2_13_writer_encoding(tmp_path: Path) -> None:
    image = IMAGE.copy()
    semseg = np.where(SEG_DECODED == 255, 255, SEG_DECODED % 13)
    write_nyuv2_13_sample(tmp_path, "val", 0, image, semseg, DEPTH, np.zeros((H, W, 3)))
    stored_img = np.load(tmp_path / "val" / "image" / "0.npy")
    assert stored_img.dtype == np.float32 and stored_img.max() <= 1.0
    np.testing.assert_allclose(stored_img, IMAGE / 255.0, atol=1e-7)
    label = np.load(tmp_path / "val" / "label" / "0.npy")
    np.testing.assert_array_equal(label[SEG_DECODED == 255], -1)
    assert np.load(tmp_path / "val" / "depth" / "0.npy").shape == (H, W, 1)
    s = NYUv2_13(tmp_path, "val").load(0)
    np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), image)
    np.testing.assert_array_equal(s["semseg"].numpy(), semseg)


# ----------------------------------------------------------------------------- real NYUv2 frames


def _real_frames(shared_data: Path) -> tuple[Path, list[str]]:
    test = shared_data / "nyudv2_mini" / "test"
    ids = sorted(p.stem for p in (test / "rgb").glob("*.png"))
    assert ids == ["0001", "0002", "0009", "0014", "0015", "0016", "0017", "0018"]
    return test, ids


def test_real_frames_through_nyud_reader(shared_data: Path, tmp_path: Path) -> None:
    """The 8 labelled test frames laid out as layout 1 (rgb/semseg40 copied, depth mm -> metres .npy)."""
    test, ids = _real_frames(shared_data)
    for name in ids:
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "segmentation").mkdir(exist_ok=True)
        shutil.copy(test / "rgb" / f"{name}.png", tmp_path / "images" / f"{name}.png")
        shutil.copy(test / "semseg40" / f"{name}.png", tmp_path / "segmentation" / f"{name}.png")
        mm = np.asarray(Image.open(test / "depth" / f"{name}.png")).astype(np.float32)
        _npy(tmp_path / "depth" / f"{name}.npy", mm / 1000.0)
    _text(tmp_path / "gt_sets" / "val.txt", ids)

    ds = NYUD(tmp_path, "val", tasks=["semseg", "depth"])
    assert len(ds) == 8
    union: set[int] = set()
    lo, hi = np.inf, -np.inf
    for i, name in enumerate(ids):
        s = ds[i]
        raw = np.asarray(Image.open(test / "semseg40" / f"{name}.png")).astype(np.int64)
        assert s["meta"]["size"] == (480, 640)
        np.testing.assert_array_equal(
            s["image"].numpy().transpose(1, 2, 0), np.asarray(Image.open(test / "rgb" / f"{name}.png"))
        )
        sem = s["semseg"].numpy()
        np.testing.assert_array_equal(sem == 255, raw == 0)
        np.testing.assert_array_equal(sem[raw > 0], raw[raw > 0] - 1)
        assert 0.05 < (sem == 255).mean() < 0.35  # SOURCE.md: 7-32 % void per frame
        classes = set(np.unique(sem[sem != 255]).tolist())
        assert classes <= set(range(40)) and len(classes) >= 8
        assert 0 in classes  # every one of these indoor frames shows a wall
        union |= classes
        depth = s["depth"].numpy()
        assert (depth > 0).all()  # hole-filled, dense
        lo, hi = min(lo, depth.min()), max(hi, depth.max())
    assert lo >= 0.769 - 1e-6 and hi <= 9.961 + 1e-6  # SOURCE.md: 0.77-9.96 m over all 18 frames
    assert hi > 9.9 and lo < 1.0  # frame 0016 holds both the 0.894 m and the 9.961 m extremes
    assert {0, 1, 2, 21} <= union  # wall, floor, cabinet, ceiling


def test_real_frames_through_nyuv2_13_reader(shared_data: Path, tmp_path: Path) -> None:
    """The same frames as an mtan-style NYUv2-13 split: 288x384 nearest, label = semseg13 - 1."""
    test, ids = _real_frames(shared_data)
    raws = []
    for i, name in enumerate(ids):
        rgb = Image.open(test / "rgb" / f"{name}.png").resize((384, 288), Image.NEAREST)
        s13 = np.asarray(Image.open(test / "semseg13" / f"{name}.png").resize((384, 288), Image.NEAREST))
        depth = Image.open(test / "depth" / f"{name}.png").resize((384, 288), Image.NEAREST)
        _npy(tmp_path / "val" / "image" / f"{i}.npy", np.asarray(rgb, np.float32) / 255.0)
        _npy(tmp_path / "val" / "label" / f"{i}.npy", s13.astype(np.float32) - 1)
        _npy(tmp_path / "val" / "depth" / f"{i}.npy", np.asarray(depth, np.float32)[..., None] / 1000.0)
        raws.append((np.asarray(rgb), s13.astype(np.int64)))
    ds = NYUv2_13(tmp_path, "val", tasks=["semseg", "depth"])
    assert len(ds) == 8
    for i, (rgb, s13) in enumerate(raws):
        s = ds[i]
        assert s["meta"]["size"] == (288, 384)
        np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), rgb)
        sem = s["semseg"].numpy()
        np.testing.assert_array_equal(sem, np.where(s13 == 0, 255, s13 - 1))
        assert set(np.unique(sem).tolist()) <= set(range(13)) | {255}
        depth = s["depth"].numpy()
        assert depth.min() >= 0.769 - 1e-6 and depth.max() <= 9.961 + 1e-6 and (depth > 0).all()


# ---------------------------------------------------------------------------------- error paths


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"root=.*nowhere.*Expected layout"):
        NYUD(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match=r"train/image \(image folder of split 'train'\)"):
        NYUv2_13(tmp_path)


def test_missing_split_file(nyud_root: Path) -> None:
    (nyud_root / "gt_sets" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"gt_sets/val\.txt.*split file"):
        NYUD(nyud_root, "val")


def test_empty_split_file(nyud_root: Path) -> None:
    (nyud_root / "gt_sets" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"val\.txt lists no ids"):
        NYUD(nyud_root, "val")


def test_missing_modality_folder(nyud_root: Path) -> None:
    shutil.rmtree(nyud_root / "normals")
    NYUD(nyud_root, tasks=["semseg", "depth", "edge"])  # not requested: fine
    with pytest.raises(DatasetNotFoundError, match=r"normals.*folder of 'normals'"):
        NYUD(nyud_root, tasks=["semseg", "normals"])


def test_missing_file_of_an_id(nyud_root: Path) -> None:
    (nyud_root / "depth" / "0003.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"depth/0003\.npy.*'0003'.*train\.txt"):
        NYUD(nyud_root)


def test_unknown_split_and_task(nyud_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'test'"):
        NYUD(nyud_root, "test")
    with pytest.raises(ValueError, match=r"does not provide task\(s\) \['sal'\].*'semseg', 'depth'"):
        NYUD(nyud_root, tasks=["semseg", "sal"])
    _hand_mtan(tmp_path / "mtan", "train", 1)
    with pytest.raises(ValueError, match=r"\['edge'\].*\['semseg', 'depth', 'normals'\]"):
        NYUv2_13(tmp_path / "mtan", tasks=["edge"])


def test_corrupt_image(nyud_root: Path) -> None:
    (nyud_root / "images" / "0004.png").write_bytes(b"not a png at all")
    ds = NYUD(nyud_root)
    with pytest.raises(ValueError, match=r"cannot read image file .*images/0004\.png"):
        ds.load(2)
    data = (nyud_root / "segmentation" / "0001.png").read_bytes()
    (nyud_root / "segmentation" / "0001.png").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"cannot read image file .*segmentation/0001\.png"):
        ds.load(0)


def test_corrupt_npy(nyud_root: Path) -> None:
    (nyud_root / "depth" / "0001.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"cannot read \.npy file .*depth/0001\.npy"):
        NYUD(nyud_root).load(0)


def test_shape_mismatch(nyud_root: Path) -> None:
    _npy(nyud_root / "depth" / "0003.npy", np.ones((H + 1, W), np.float32))
    with pytest.raises(ValueError, match=r"depth/0003\.npy has shape \(5, 5\).*images/0003\.png has shape \(4, 5\)"):
        NYUD(nyud_root).load(1)


def test_nan_depth(nyud_root: Path, tmp_path: Path) -> None:
    bad = DEPTH.copy()
    bad[0, 1] = np.nan
    _npy(nyud_root / "depth" / "0001.npy", bad)
    with pytest.raises(ValueError, match=r"depth file .*depth/0001\.npy contains NaN"):
        NYUD(nyud_root).load(0)
    _hand_mtan(tmp_path / "m", "train", 1)
    _npy(tmp_path / "m" / "train" / "depth" / "0.npy", bad[..., None])
    with pytest.raises(ValueError, match=r"depth file .*depth/0\.npy contains NaN"):
        NYUv2_13(tmp_path / "m").load(0)


def test_negative_depth(nyud_root: Path) -> None:
    _npy(nyud_root / "depth" / "0001.npy", -DEPTH)
    with pytest.raises(ValueError, match=r"depth/0001\.npy has negative values"):
        NYUD(nyud_root).load(0)


def test_segmentation_out_of_range(nyud_root: Path) -> None:
    _png(nyud_root / "segmentation" / "0001.png", np.full((H, W), 41, np.uint8))
    with pytest.raises(ValueError, match=r"segmentation file .*0001\.png.*\[41\] out of range.*1\.\.40"):
        NYUD(nyud_root).load(0)


def test_bad_edge_values(nyud_root: Path) -> None:
    _png(nyud_root / "edge" / "0001.png", np.array([[0, 1, 0, 0, 0]] * H, np.uint8))
    with pytest.raises(ValueError, match=r"edge file .*edge/0001\.png has values \[1\]; expected only 0 and 255"):
        NYUD(nyud_root).load(0)


def test_rgb_segmentation_rejected(nyud_root: Path) -> None:
    _png(nyud_root / "segmentation" / "0001.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match=r"single-channel label image in .*0001\.png"):
        NYUD(nyud_root).load(0)


def test_nyuv2_13_errors(tmp_path: Path) -> None:
    _hand_mtan(tmp_path, "train", 2)
    (tmp_path / "train" / "label" / "1.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"label/1\.npy.*indices run 0\.\.1"):
        NYUv2_13(tmp_path)
    shutil.rmtree(tmp_path / "train" / "normal")
    with pytest.raises(DatasetNotFoundError, match=r"train/normal.*folder of 'normals'"):
        NYUv2_13(tmp_path, tasks=["normals"])
    ds = NYUv2_13(tmp_path, tasks=["depth"])
    _npy(tmp_path / "train" / "image" / "0.npy", IMAGE.astype(np.float32))  # 0..255, not [0, 1]
    with pytest.raises(ValueError, match=r"image file .*image/0\.npy has values in \[0, 177\]"):
        ds.load(0)
    _npy(tmp_path / "train" / "image" / "0.npy", np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) array in image file .*0\.npy, got shape \(4, 5\)"):
        ds.load(0)
    _hand_mtan(tmp_path, "train", 2)
    _npy(tmp_path / "train" / "label" / "0.npy", np.full((H, W), 13.0))
    with pytest.raises(ValueError, match=r"label file .*label/0\.npy has value\(s\) \[13\] out of range"):
        NYUv2_13(tmp_path).load(0)
    _npy(tmp_path / "train" / "label" / "0.npy", np.full((H, W), 0.5))
    with pytest.raises(ValueError, match=r"label/0\.npy has non-integer values"):
        NYUv2_13(tmp_path).load(0)


def test_writer_errors(tmp_path: Path) -> None:
    img = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, 3\)"):
        write_nyud_sample(tmp_path, "a", img.astype(np.float32))
    with pytest.raises(ValueError, match=r"semseg must have shape \(4, 5\)"):
        write_nyud_sample(tmp_path, "a", img, semseg=np.zeros((5, 4), int))
    with pytest.raises(ValueError, match=r"semseg values must be class ids"):
        write_nyud_sample(tmp_path, "a", img, semseg=np.full((H, W), -1))
    with pytest.raises(ValueError, match=r"edge must hold only 0 and 1"):
        write_nyud_sample(tmp_path, "a", img, edge=np.full((H, W), 255))
    with pytest.raises(ValueError, match=r"depth contains NaN"):
        write_nyud_sample(tmp_path, "a", img, depth=np.full((H, W), np.nan))
    assert not (tmp_path / "images").exists()  # nothing written when an argument is bad


# ---------------------------------------------------------------------------------- verification


def test_detect_and_verify_each_variant(tmp_path: Path) -> None:
    img = np.zeros((6, 8, 3), np.uint8)
    seg = np.zeros((6, 8), np.int64)
    zeros = np.zeros((6, 8))
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for n in names:
            write_nyud_sample(tmp_path / "atrc", n, img, seg, zeros, np.zeros((6, 8, 3)), zeros)
            write_nyud_mt_sample(tmp_path / "mti", n, img, seg, zeros, np.zeros((6, 8, 3)), zeros)
        write_split(tmp_path / "atrc", split, names)
        write_split(tmp_path / "mti", split, names)
        for i in range(len(names)):
            write_nyuv2_13_sample(tmp_path / "mtan", split, i, img, seg, zeros, np.zeros((6, 8, 3)))
    assert detect_nyud_variant(tmp_path / "atrc") == "nyud"
    assert detect_nyud_variant(tmp_path / "mti") == "nyud-mt"
    assert detect_nyud_variant(tmp_path / "mtan") == "nyuv2-13"
    assert detect_nyud_variant(tmp_path) is None

    report = str(verify_dataset(tmp_path / "atrc"))
    assert "variant 'nyud'" in report and "train: 2 samples  ! expected 795" in report
    assert "val: 1 samples  ! expected 654" in report
    assert "image size 6x8 differs from the released 425x560" in report
    assert "8-bit PNG" in report
    assert "InvPT issue #22" in str(verify_dataset(tmp_path / "mti"))
    assert "NOT comparable with the 40-class" in str(verify_dataset(tmp_path / "mtan"))
    data = verify_dataset(tmp_path / "atrc").to_dict()
    assert data["ok"] and data["dataset"] == "nyud" and data["errors"] == []
    assert data["splits"][0] == {
        "split": "train",
        "samples": 2,
        "expected": 795,
        "image_size": [6, 8],
        "error": None,
        "checked": 2,
        "failed": 0,
        "sizes": None,
    }
    assert "the standard split has 654" in " ".join(data["warnings"])

    (tmp_path / "atrc" / "edge" / "c.png").unlink()
    broken = verify_dataset(tmp_path / "atrc")
    report = str(broken)
    assert "! split 'val':" in report and "edge/c.png" in report
    assert not broken.ok and broken.to_dict()["splits"][1]["error"].count("edge/c.png") == 1
    with pytest.raises(DatasetNotFoundError, match=r"holds no NYUD-v2 variant"):
        verify_dataset(tmp_path)


def test_plot_returns_an_rgb_picture(nyud_root: Path) -> None:
    ds = NYUD(nyud_root)
    picture = ds.plot(ds.load(0))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] >= 5 * W  # image + four task panels side by side
