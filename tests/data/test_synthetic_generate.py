"""Generation of the synthetic datasets: determinism, layouts read back by the standard readers, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from densemtl.data import DATASETS
from densemtl.data.pascal_classes import NYU_COMPATIBLE_CONTEXT_IDS
from densemtl.data.synthetic import SYNTHETIC_DATASETS, generate_synth_nyud, generate_synth_pascal
from densemtl.data.synthetic import synth_nyud as synth_nyud_module

SMALL = {"train": 3, "val": 2, "size": (32, 40)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory) -> Path:
    return generate_synth_nyud(tmp_path_factory.mktemp("g") / "nyud", **SMALL)


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory) -> Path:
    return generate_synth_pascal(tmp_path_factory.mktemp("g") / "pascal", train=4, val=2, size=(40, 48))


def test_nyud_layout_and_card(nyud_root):
    for folder, suffix in (
        ("images", "png"),
        ("segmentation", "png"),
        ("depth", "npy"),
        ("normals", "png"),
        ("edge", "png"),
    ):
        assert len(list((nyud_root / folder).glob(f"*.{suffix}"))) == 5
    assert (nyud_root / "gt_sets" / "train.txt").read_text().split() == ["0000", "0001", "0002"]
    assert (nyud_root / "gt_sets" / "val.txt").read_text().split() == ["0003", "0004"]
    card = (nyud_root / "README.md").read_text()
    assert "real NYUv2" in card and "wall fraction" in card and "depth mean" in card
    marker = json.loads((nyud_root / "generator.json").read_text())
    assert marker["dataset"] == "synth-nyud" and marker["arguments"]["size"] == [32, 40]


def test_nyud_reads_back_with_contract_values(nyud_root):
    ds = DATASETS.get("synth-nyud")(nyud_root, "train")
    assert ds.family == "nyud" and ds.num_classes == {"semseg": 13}
    assert len(ds) == 3
    raw = np.load(nyud_root / "depth" / "0000.npy")
    s = ds[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 32, 40)
    assert s["semseg"].dtype == torch.int64 and int(s["semseg"].min()) >= 0 and int(s["semseg"].max()) <= 12
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(s["depth"][0].numpy(), raw)
    assert float(s["depth"].min()) > 0.3 and float(s["depth"].max()) < 12
    norm = torch.linalg.vector_norm(s["normals"], dim=0)
    assert float((norm - 1).abs().max()) < 0.02  # 8-bit quantisation only
    assert set(torch.unique(s["edge"]).tolist()) <= {0.0, 1.0}


def test_same_seed_same_bytes_other_seed_differs_workers_do_not_matter(tmp_path, nyud_root):
    again = generate_synth_nyud(tmp_path / "again", **SMALL, workers=2)
    assert _files(again) == _files(nyud_root)
    other = generate_synth_nyud(tmp_path / "other", **SMALL, seed=1)
    assert (other / "images" / "0000.png").read_bytes() != (nyud_root / "images" / "0000.png").read_bytes()


def test_pascal_is_deterministic(tmp_path, pascal_root):
    again = generate_synth_pascal(tmp_path / "again", train=4, val=2, size=(40, 48), workers=2)
    assert _files(again) == _files(pascal_root)
    for mat in pascal_root.rglob("*.mat"):  # scipy stamps the creation time; it must not be left in
        assert b"Created on" not in mat.read_bytes()[:116]


def test_pascal_reads_back_with_consistent_tasks(pascal_root):
    from densemtl.data.pascal import read_label_map

    ds = DATASETS.get("synth-pascal")(pascal_root, "train")
    assert ds.num_classes == {"semseg": 21, "human_parts": 7}
    for i in range(len(ds)):
        s = ds[i]
        name = s["meta"]["name"]
        label_map = read_label_map(pascal_root / "pascal-context" / "trainval" / f"{name}.mat")
        keep = np.isin(label_map, sorted(NYU_COMPATIBLE_CONTEXT_IDS))
        zero = (s["normals"] == 0).all(0).numpy()
        np.testing.assert_array_equal(zero, ~keep)  # the normals mask follows the LabelMap classes
        sem, sal = s["semseg"].numpy(), s["sal"][0].numpy()
        valid = sem != 255
        np.testing.assert_array_equal(sal[valid] == 1, sem[valid] > 0)
        parts = s["human_parts"].numpy()
        if s["meta"]["has_parts"]:
            assert ((parts == 0) | (parts == 255) | (sem == 15) | (sem == 255)).all()
        else:
            assert (parts == 255).all()
        assert set(torch.unique(s["edge"]).tolist()) <= {0.0, 1.0}


def test_ensure_generates_once_and_refuses_mismatches(tmp_path):
    spec = SYNTHETIC_DATASETS["synth-nyud"]
    assert spec.reader == "synth-nyud"
    root = spec.ensure(tmp_path / "cache", train=2, val=1, size=(24, 32))
    stamp = (root / "generator.json").stat().st_mtime_ns
    assert spec.ensure(tmp_path / "cache", train=2, val=1, size="24x32", workers=2) == root
    assert (root / "generator.json").stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(ValueError, match="generated with"):
        spec.ensure(root, train=3, val=1, size=(24, 32))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a finished"):
        spec.ensure(foreign, train=2, val=1, size=(24, 32))
    with pytest.raises(ValueError, match="unknown argument"):
        spec.ensure(tmp_path / "x", trian=2)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(job)

    original = synth_nyud_module._render_and_write
    monkeypatch.setattr(synth_nyud_module, "_render_and_write", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synth_nyud(tmp_path / "d", train=3, val=0, size=(24, 32))
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="HxW"):
        generate_synth_nyud(tmp_path / "a", size="240by320")
    with pytest.raises(ValueError, match="train and val"):
        generate_synth_nyud(tmp_path / "b", train=0, val=0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        generate_synth_nyud(tmp_path / "c", train=1, val=0, size=(16, 16))


def test_png_level_is_lossless_and_checked(tmp_path):
    from PIL import Image

    from densemtl.data.nyud import write_nyud_sample
    from densemtl.data.pascal import write_normals, write_saliency

    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(48), np.arange(64)) % 256  # compressible, so the levels differ in size
    image = np.stack([ramp, ramp // 2, 255 - ramp], axis=-1).astype(np.uint8)
    image[::7, ::5] = rng.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    semseg = rng.integers(0, 13, (48, 64))
    sizes = {}
    for level in (1, 9):
        write_nyud_sample(tmp_path / f"l{level}", "a", image, semseg, png_level=level)
        back = np.asarray(Image.open(tmp_path / f"l{level}" / "images" / "a.png"))
        np.testing.assert_array_equal(back, image)
        labels = np.asarray(Image.open(tmp_path / f"l{level}" / "segmentation" / "a.png"))
        np.testing.assert_array_equal(labels, semseg + 1)  # stored as v + 1
        sizes[level] = (tmp_path / f"l{level}" / "images" / "a.png").stat().st_size
    assert sizes[1] >= sizes[9]
    write_saliency(tmp_path / "p", "s", image[..., 0], png_level=0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p" / "sal_distill" / "s.png")), image[..., 0])
    with pytest.raises(ValueError, match="png_level"):
        write_nyud_sample(tmp_path / "bad", "a", image, png_level=10)
    with pytest.raises(ValueError, match="png_level"):
        write_normals(tmp_path / "bad", "a", image, png_level=-1)


def test_overwrite_replaces_only_a_generated_dataset(tmp_path):
    """`generate --overwrite` never deletes a folder densemtl did not write; it replaces one it wrote."""
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not written by densemtl"):
        generate_synth_nyud(user, train=1, val=0, size=(16, 16), overwrite=True)
    assert (user / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in user.iterdir()) == ["holiday.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary folder left behind

    ours = generate_synth_nyud(tmp_path / "d", train=1, val=0, size=(16, 16))
    generate_synth_nyud(ours, train=2, val=0, size=(16, 16), overwrite=True)
    assert len((ours / "gt_sets" / "train.txt").read_text().split()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "photos"]
