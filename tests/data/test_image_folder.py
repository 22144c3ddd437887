"""Prediction folders: any image size, distinct output names, unreadable files skipped and listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.data.image_folder import FitWithin, ImageFolder, output_names, predict_pipeline, probe_image
from densemtl.data.transforms import build_transform, restore_predictions, split_contract


def _photo(path: Path, h: int, w: int, value: int = 100) -> Path:
    arr = np.full((h, w, 3), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_output_names_are_distinct() -> None:
    files = [Path(n) for n in ("a.png", "a.jpg", "b.png", "A.bmp", "c.png", "c.png.jpg", "c.png.bmp")]
    names = output_names(files)
    assert names == ["a.png", "a.jpg", "b", "A.bmp", "c", "c.png.jpg", "c.png.bmp"]
    tricky = [Path(n) for n in ("x.png", "x.jpg", "x.png.png")]  # the stem of the third is 'x.png' too
    names = output_names(tricky)
    assert len({n.casefold() for n in names}) == 3 and names[:2] == ["x.png", "x.jpg"]


def test_folder_skips_and_lists_unreadable_files_and_ignores_sub_folders(tmp_path: Path, caplog) -> None:
    _photo(tmp_path / "photo.png", 10, 12, 10)
    _photo(tmp_path / "photo.jpg", 20, 30, 200)
    (tmp_path / "album.jpg").mkdir()  # a folder with an image suffix
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = _photo(tmp_path / "cut.jpg", 64, 64)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "notes.txt").write_text("not an image")

    folder = ImageFolder(tmp_path)
    assert [p.name for p in folder.files] == ["cut.jpg", "photo.jpg", "photo.png"]
    assert folder.names == ["cut", "photo.jpg", "photo.png"]
    assert sorted(p.name for p, _ in folder.skipped) == ["broken.jpg", "deep.png", "truncated.jpg"]
    assert "skipping 3 unreadable file(s)" in caplog.text and "truncated.jpg" in caplog.text
    sample = folder[2]
    assert sample["meta"]["name"] == "photo.png" and sample["meta"]["size"] == (10, 12)
    assert sample["image"].shape == (3, 10, 12) and int(sample["image"][0, 0, 0]) == 10

    with pytest.raises(ValueError, match=r"3 file\(s\) cannot be read:\n.*broken\.jpg"):
        ImageFolder(tmp_path, strict=True)
    empty = tmp_path / "album.jpg"
    with pytest.raises(FileNotFoundError, match="holds no readable images"):
        ImageFolder(empty)
    assert probe_image(tmp_path / "photo.png") is None and "16" in probe_image(tmp_path / "deep.png")


def test_pad_only_preset_takes_a_larger_image_and_the_prediction_comes_back_at_its_size() -> None:
    """invpt pads to 48x64 and never resizes: a 200x300 photo is shrunk to fit (aspect kept), then padded."""
    head, _ = split_contract(build_transform("invpt", train=False, size=(48, 64)))
    pipeline = predict_pipeline(head, None)
    image = torch.zeros(3, 200, 300, dtype=torch.uint8)
    image[:, :, 150:] = 200  # right half bright
    out = pipeline({"image": image, "meta": {"name": "p", "size": (200, 300)}})
    scale = min(48 / 200, 64 / 300)
    h, w = round(200 * scale), round(300 * scale)  # 43 x 64
    assert out["image"].shape[-2:] == (48, 64)
    assert out["meta"]["size"] == (200, 300) and out["meta"]["valid_box"] == ((48 - h) // 2, 0, h, w)
    # a prediction equal to the network input's brightness comes back as the photo's two halves
    pred = out["image"][:1].float()
    restored = restore_predictions({"depth": pred}, out["meta"])["depth"]
    assert restored.shape == (1, 200, 300)
    assert float(restored[0, :, :140].max()) < 1 and float(restored[0, :, 160:].min()) > 199


def test_other_presets() -> None:
    mtinet, _ = split_contract(build_transform("mtinet", train=False, size=(48, 64)))
    assert predict_pipeline(mtinet, (48, 64)).transforms == mtinet.transforms  # its own resize takes any size
    plain, _ = split_contract(build_transform("none", train=False))
    fixed = predict_pipeline(plain, (24, 32))
    out = fixed({"image": torch.full((3, 50, 60), 7, dtype=torch.uint8), "meta": {"size": (50, 60)}})
    assert out["image"].shape[-2:] == (24, 32) and out["meta"]["valid_box"] == (0, 0, 24, 32)
    assert predict_pipeline(plain, None).transforms == plain.transforms  # no working size: the image as it is
    small = FitWithin((48, 64))({"image": torch.zeros(3, 10, 20, dtype=torch.uint8), "meta": {}})
    assert small["image"].shape == (3, 10, 20) and small["meta"]["valid_box"] == (0, 0, 10, 20)
    with pytest.raises(ValueError, match="image-only"):
        FitWithin((8, 8))({"image": torch.zeros(3, 16, 16), "semseg": torch.zeros(16, 16)})
