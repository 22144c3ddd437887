"""Readers refuse what they cannot interpret, naming the file (issue 13, item 8).

A 16-bit image saturated to white, depth in millimetres read as metres, a repeated id, a validation id
also in training and a split file in another encoding were all accepted silently or crashed deep in a
stack trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemtl.data.imageio import read_rgb
from densemtl.data.nyud import NYUD, NYUDMT, write_nyud_mt_sample, write_split
from densemtl.data.splits import check_disjoint_splits, read_split_ids

H, W = 6, 8


def _nyud_mt(root: Path, names: list[str], depth: np.ndarray | None = None) -> Path:
    for name in names:
        image = np.full((H, W, 3), 90, np.uint8)
        write_nyud_mt_sample(root, name, image, np.zeros((H, W), np.int64), np.full((H, W), 2.0), None, None)
    if depth is not None:
        np.save(root / "depth" / f"{names[0]}.npy", depth)
    return root


def test_sixteen_bit_images_are_refused_not_saturated(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((H, W), 30000, np.uint16)).save(path)  # mode I;16
    with pytest.raises(ValueError, match=r"photo\.png has 16-bit integer pixels .*expected an 8-bit"):
        read_rgb(path)
    Image.fromarray(np.full((H, W), 200, np.uint8)).save(tmp_path / "grey.png")
    assert read_rgb(tmp_path / "grey.png").tolist() == np.full((H, W, 3), 200).tolist()  # 8-bit grey is fine


@pytest.mark.parametrize(
    "depth,message",
    [
        (np.full((H, W), 2500, np.uint16), r"holds integers \(uint16, max 2500\).*millimetres"),
        (np.full((H, W), 1e30, np.float32), r"reaches 1e\+30, beyond the 20 m plausible"),
        (np.full((H, W), 1500.0, np.float64), r"reaches 1500, beyond the 20 m"),
    ],
)
def test_implausible_depth_is_refused_with_the_file(tmp_path, depth, message):
    root = _nyud_mt(tmp_path, ["a", "b"], depth=depth)
    write_split(root, "train", ["a", "b"])
    ds = NYUDMT(root, "train", tasks=["depth"])
    with pytest.raises(ValueError, match=message) as err:
        ds.load(0)
    assert "a.npy" in str(err.value)
    assert float(ds.load(1)["depth"].max()) == 2.0


def test_split_files_must_list_each_id_once_in_utf8(tmp_path):
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"twice\.txt lists 1 id\(s\) more than once, e\.g\. \['a'\]"):
        read_split_ids(tmp_path / "twice.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text"):
        read_split_ids(tmp_path / "latin1.txt")
    (tmp_path / "ok.txt").write_text(" a \n\nb\n")
    assert read_split_ids(tmp_path / "ok.txt") == ["a", "b"]


def test_overlapping_train_and_val_splits_are_refused(tmp_path):
    root = _nyud_mt(tmp_path, ["a", "b", "c"])
    write_split(root, "train", ["a", "b"])
    write_split(root, "val", ["b", "c"])
    for split in ("train", "val"):
        with pytest.raises(ValueError, match=r"share 1 id\(s\), e\.g\. \['b'\]"):
            NYUDMT(root, split, tasks=["semseg"])
    write_split(root, "val", ["c"])
    assert len(NYUDMT(root, "val", tasks=["semseg"])) == 1
    check_disjoint_splits("train", ["a"], {"val": tmp_path / "absent.txt"})  # a missing file is no overlap


def test_nyud_reader_uses_the_strict_split_reader(tmp_path):
    (tmp_path / "gt_sets").mkdir()
    (tmp_path / "gt_sets" / "train.txt").write_text("x\nx\n")
    with pytest.raises(ValueError, match="more than once"):
        NYUD(tmp_path, "train")


def test_pascal_reader_refuses_sixteen_bit_images_and_saliency(tmp_path):
    from densemtl.data.pascal import PascalContext
    from densemtl.data.synthetic import generate_synth_pascal

    root = generate_synth_pascal(tmp_path / "PASCAL_MT", train=1, val=1, size=(16, 16))
    name = (root / "ImageSets" / "Context" / "train.txt").read_text().split()[0]
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(root / "sal_distill" / f"{name}.png")
    reader = PascalContext(root, "train", tasks=["sal"], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"saliency file .*{name}\.png has Pillow mode I;16"):
        reader.load(0)  # was: every pixel saturated to 255, i.e. all salient
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(root / "JPEGImages" / f"{name}.jpg", format="PNG")
    with pytest.raises(ValueError, match=rf"{name}\.jpg has 16-bit integer pixels"):
        reader.load(0)
