"""Cityscapes (mtan / Auto-lambda npy layout): hand-written files, the writer round trip, errors, verify-dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densemtl.cli import main
from densemtl.data import DATASETS, DatasetNotFoundError
from densemtl.data.cityscapes import (
    CITYSCAPES7_CLASSES,
    CITYSCAPES19_CLASSES,
    Cityscapes,
    is_cityscapes_root,
    verify_cityscapes,
    write_cityscapes_sample,
)

H, W = 4, 6


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _hand_written(root: Path, split: str = "train", count: int = 2) -> None:
    """Files as mtan distributes them: float images in [0, 1], float labels with -1, depth (H, W, 1)."""
    for i in range(count):
        image = np.full((H, W, 3), 0.5, np.float32)
        image[0, 0] = (1.0, 0.0, 0.2)
        label = np.full((H, W), 18.0, np.float32)
        label[0, :] = -1.0
        label[1, 0] = 0.0
        depth = np.full((H, W, 1), 0.25 * (i + 1), np.float32)
        depth[2, 3, 0] = 0.0
        _npy(root / split / "image" / f"{i}.npy", image)
        _npy(root / split / "label_19" / f"{i}.npy", label)
        _npy(root / split / "label_7" / f"{i}.npy", np.where(label > 6, 6.0, label).astype(np.float32))
        _npy(root / split / "depth" / f"{i}.npy", depth)


def test_reads_hand_written_files(tmp_path):
    _hand_written(tmp_path)
    ds = DATASETS.get("cityscapes")(tmp_path, "train")
    assert isinstance(ds, Cityscapes) and len(ds) == 2 and ds.family == "cityscapes"
    assert ds.num_classes == {"semseg": 19}
    s = ds.load(1)
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, H, W)
    assert s["image"][:, 0, 0].tolist() == [255, 0, 51] and int(s["image"][0, 1, 1]) == 128  # round(0.5·255)
    assert s["semseg"].dtype == torch.int64
    assert (s["semseg"][0] == 255).all() and int(s["semseg"][1, 0]) == 0 and int(s["semseg"][3, 5]) == 18
    assert s["depth"].shape == (1, H, W) and float(s["depth"][0, 0, 0]) == 0.5 and float(s["depth"][0, 2, 3]) == 0
    assert s["meta"]["size"] == (H, W) and s["meta"]["dataset"] == "cityscapes"
    assert set(s) == {"image", "semseg", "depth", "meta"}


def test_seven_class_labels(tmp_path):
    _hand_written(tmp_path)
    ds = Cityscapes(tmp_path, "train", tasks=["semseg"], num_classes=7)
    assert ds.num_classes == {"semseg": 7} and ds.classes["semseg"] == CITYSCAPES7_CLASSES
    assert int(ds.load(0)["semseg"][3, 5]) == 6
    assert Cityscapes.classes["semseg"] == CITYSCAPES19_CLASSES  # the class fact is untouched
    with pytest.raises(ValueError, match="19 .* or 7"):
        Cityscapes(tmp_path, "train", num_classes=20)


def test_writer_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    semseg = rng.integers(0, 19, (H, W))
    semseg[0, 0] = 255
    depth = rng.uniform(0, 1, (H, W)).astype(np.float32)
    depth[1, 1] = 90.0  # outdoor: no 20 m indoor plausibility bound
    write_cityscapes_sample(tmp_path, "val", 0, image, semseg, depth)
    s = Cityscapes(tmp_path, "val").load(0)
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), image)
    np.testing.assert_array_equal(s["semseg"].numpy(), semseg)
    np.testing.assert_allclose(s["depth"][0].numpy(), depth)
    assert np.load(tmp_path / "val" / "label_19" / "0.npy")[0, 0] == -1


def test_errors_name_the_file(tmp_path):
    _hand_written(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="label_19"):
        (tmp_path / "train" / "label_19" / "1.npy").unlink()
        Cityscapes(tmp_path, "train")
    _npy(tmp_path / "train" / "label_19" / "1.npy", np.full((H, W), 19.0, np.float32))
    with pytest.raises(ValueError, match=r"1\.npy has value\(s\) \[19\] out of range; expected 0\.\.18"):
        Cityscapes(tmp_path, "train").load(1)
    with pytest.raises(DatasetNotFoundError, match="root="):
        Cityscapes(tmp_path / "nowhere", "train")


def test_verify_reports_counts_and_is_reachable_from_the_cli(tmp_path, capsys):
    _hand_written(tmp_path, "train", 2)
    _hand_written(tmp_path, "val", 1)
    assert is_cityscapes_root(tmp_path) and not is_cityscapes_root(tmp_path / "train")
    report = str(verify_cityscapes(tmp_path))
    assert "train: 2 samples" in report and "val: 1 samples" in report
    assert "! split 'train' has 2 samples, the standard split has 2975" in report
    assert "! image size 4x6 differs from the released 128x256" in report
    assert main(["verify-dataset", str(tmp_path)]) == 0
    assert "Cityscapes, mtan" in capsys.readouterr().out
    with pytest.raises(DatasetNotFoundError):
        verify_cityscapes(tmp_path / "train")
