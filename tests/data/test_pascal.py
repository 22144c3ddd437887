"""PASCAL-Context reader and writers (``densemtl.data.pascal``) on tiny fixtures written here.

Expected values are derived by hand (part classes, Laplacian masks, normal decoding) or taken from public
facts (class lists, the real NYU name list in ``../shared/data``), never from the reader's own output.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from skimage.morphology import thin

from densemtl.data import DATASETS, DatasetNotFoundError
from densemtl.data import pascal as pascal_mod
from densemtl.data.pascal import (
    PascalContext,
    PascalObject,
    edge_from_label_map,
    saliency_from_png,
    write_label_map,
    write_normals,
    write_part_annotation,
    write_pascal_image,
    write_pascal_semseg,
    write_saliency,
    write_split,
)
from densemtl.data.pascal_classes import CONTEXT_CLASSES, NYU_CLASSES, NYU_COMPATIBLE_CONTEXT_IDS

H, W = 6, 8

# PASCAL-Context 1-based LabelMap ids (labels.txt order), checked against the 59-class subset below.
CHAIR, SKY, TVMONITOR, UNKNOWN, WALL, GRASS = 72, 360, 427, 431, 440, 187


# ------------------------------------------------------------------------------------------------------
# Fixture helpers
# ------------------------------------------------------------------------------------------------------


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _raw_part_mat(path: Path) -> dict[str, np.ndarray]:
    """A PASCAL-Part .mat built directly with savemat (not with the writer under test).

    Objects: person 1 with parts (hair, neck, lhand, luleg, rfoot), person 2 without parts, a car with a
    part. Returns the part masks for the expected map.
    """
    masks = {
        "hair": _box(0, 1, 0, 2),
        "neck": _box(1, 2, 0, 2),
        "lhand": _box(2, 3, 0, 2),
        "luleg": _box(3, 4, 0, 2),
        "rfoot": _box(4, 5, 0, 2),
    }
    part_t = np.dtype([("part_name", "O"), ("mask", "O")])
    parts = np.empty((1, len(masks)), dtype=part_t)
    for j, (name, m) in enumerate(masks.items()):
        parts[0, j]["part_name"] = name
        parts[0, j]["mask"] = m.astype(np.uint8)
    car_parts = np.empty((1, 1), dtype=part_t)
    car_parts[0, 0]["part_name"] = "frontside"
    car_parts[0, 0]["mask"] = _box(0, 2, 6, 8).astype(np.uint8)
    obj_t = np.dtype([("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    objs = np.empty((1, 3), dtype=obj_t)
    objs[0, 0] = ("person", np.array([[15.0]]), _box(0, 6, 0, 3).astype(np.uint8), parts)
    objs[0, 1] = ("person", np.array([[15.0]]), _box(0, 6, 3, 5).astype(np.uint8), np.zeros((0, 0)))
    objs[0, 2] = ("car", np.array([[7.0]]), _box(0, 3, 5, 8).astype(np.uint8), car_parts)
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("a", objs)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"anno": anno})
    return masks


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _make_dataset(root: Path) -> dict[str, np.ndarray]:
    """Three train ids (a, b, c) and two val ids (d, e).

    a: raw PASCAL-Part .mat with person parts; b: person without parts; c: only a car with parts.
    """
    write_split(root, "train", ["a", "b", "c"])
    write_split(root, "val", ["d", "e"])
    facts: dict[str, np.ndarray] = {}
    for k, name in enumerate("abcde"):
        write_pascal_image(root, name, _image(k))
        write_pascal_semseg(root, name, np.full((H, W), k))
        write_label_map(root, name, np.full((H, W), WALL))
        write_saliency(root, name, np.full((H, W), 200, dtype=np.uint8))
        write_normals(root, name, np.zeros((H, W, 3)))
    facts.update(_raw_part_mat(root / "human_parts" / "a.mat"))
    write_part_annotation(root, "b", [PascalObject(15, _box(0, 6, 0, 4))])
    write_part_annotation(root, "c", [PascalObject(7, _box(0, 3, 0, 3), [("frontside", _box(0, 1, 0, 3))])])
    for name in "de":
        write_part_annotation(root, name, [PascalObject(15, _box(0, 2, 0, 2), [("head", _box(0, 2, 0, 2))])])
    return facts


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "PASCAL_MT"
    _make_dataset(r)
    return r


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _ds(root: Path, cache: Path, **kw) -> PascalContext:
    return PascalContext(root, cache_dir=cache, **kw)


# ------------------------------------------------------------------------------------------------------
# Class lists
# ------------------------------------------------------------------------------------------------------


def test_nyu_names_match_the_real_nyu_file(shared_data: Path) -> None:
    mat = scipy.io.loadmat(shared_data / "nyudv2_mini" / "meta" / "classMapping40.mat")
    names = tuple(str(np.asarray(a).ravel()[0]) for a in mat["allClassName"].ravel())
    assert len(names) == 894
    assert names == NYU_CLASSES


def test_context_classes_facts() -> None:
    assert len(CONTEXT_CLASSES) == 459
    assert len(set(CONTEXT_CLASSES)) == 459
    assert list(CONTEXT_CLASSES) == sorted(CONTEXT_CLASSES)  # labels.txt is alphabetical
    assert CONTEXT_CLASSES[0] == "accordion" and CONTEXT_CLASSES[-1] == "wool"
    # The 59-class subset as 1-based full-label ids (PASCAL-Context 59 conversion, e.g. the Detail API and
    # mmsegmentation's converter) must name exactly the 59 classes.
    ids59 = [2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162]
    ids59 += [420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72]
    ids59 += [458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]
    names59 = [
        "aeroplane",
        "bag",
        "bed",
        "bedclothes",
        "bench",
        "bicycle",
        "bird",
        "boat",
        "book",
        "bottle",
        "building",
        "bus",
        "cabinet",
        "car",
        "cat",
        "ceiling",
        "chair",
        "cloth",
        "computer",
        "cow",
        "cup",
        "curtain",
        "dog",
        "door",
        "fence",
        "floor",
        "flower",
        "food",
        "grass",
        "ground",
        "horse",
        "keyboard",
        "light",
        "motorbike",
        "mountain",
        "mouse",
        "person",
        "plate",
        "platform",
        "pottedplant",
        "road",
        "rock",
        "sheep",
        "shelves",
        "sidewalk",
        "sign",
        "sky",
        "snow",
        "sofa",
        "table",
        "track",
        "train",
        "tree",
        "truck",
        "tvmonitor",
        "wall",
        "water",
        "window",
        "wood",
    ]
    assert sorted(CONTEXT_CLASSES[i - 1] for i in ids59) == sorted(names59)
    for name, idx in {"chair": CHAIR, "sky": SKY, "tvmonitor": TVMONITOR, "wall": WALL, "grass": GRASS}.items():
        assert CONTEXT_CLASSES[idx - 1] == name
    assert CONTEXT_CLASSES[UNKNOWN - 1] == "unknown"


def test_nyu_compatible_ids() -> None:
    assert CHAIR in NYU_COMPATIBLE_CONTEXT_IDS and WALL in NYU_COMPATIBLE_CONTEXT_IDS
    assert TVMONITOR in NYU_COMPATIBLE_CONTEXT_IDS  # added explicitly (NYU: "television")
    assert "tvmonitor" not in NYU_CLASSES
    assert UNKNOWN not in NYU_COMPATIBLE_CONTEXT_IDS  # in both lists, excluded
    assert "unknown" in NYU_CLASSES
    assert SKY not in NYU_COMPATIBLE_CONTEXT_IDS and GRASS not in NYU_COMPATIBLE_CONTEXT_IDS
    assert 0 not in NYU_COMPATIBLE_CONTEXT_IDS
    # independent recount of the exact-name intersection
    expected = {i + 1 for i, n in enumerate(CONTEXT_CLASSES) if n in set(NYU_CLASSES) and n != "unknown"}
    assert frozenset(expected | {TVMONITOR}) == NYU_COMPATIBLE_CONTEXT_IDS
    assert len(NYU_COMPATIBLE_CONTEXT_IDS) == 170


# ------------------------------------------------------------------------------------------------------
# Writers: raw layout
# ------------------------------------------------------------------------------------------------------


def test_part_writer_real_struct_layout(tmp_path: Path) -> None:
    hand = _box(1, 2, 1, 3)
    path = write_part_annotation(
        tmp_path,
        "x",
        [PascalObject(15, _box(0, 4, 0, 4), [("lhand", hand), ("hair", _box(0, 1, 0, 1))]), PascalObject(12, hand)],
    )
    assert path == tmp_path / "human_parts" / "x.mat"
    objects = scipy.io.loadmat(path)["anno"][0][0][1][0]
    assert len(objects) == 2
    assert objects[0][1][0][0] == 15 and objects[1][1][0][0] == 12
    np.testing.assert_array_equal(objects[0][2].astype(bool), _box(0, 4, 0, 4))
    assert len(objects[0][3][0]) == 2
    assert objects[0][3][0][0][0][0] == "lhand" and objects[0][3][0][1][0][0] == "hair"
    np.testing.assert_array_equal(objects[0][3][0][0][1].astype(bool), hand)
    assert len(objects[1][3]) == 0  # empty parts as in the real files
    assert [p.name for p in tmp_path.joinpath("human_parts").iterdir()] == ["x.mat"]  # no temp left


def test_other_writers_raw_values(tmp_path: Path) -> None:
    write_saliency(tmp_path, "s", np.array([[0.0, 0.5, 1.0]]))
    assert np.asarray(Image.open(tmp_path / "sal_distill" / "s.png")).tolist() == [[0, 128, 255]]
    write_normals(tmp_path, "n", np.array([[[-1.0, 0.0, 1.0]]]))
    assert np.asarray(Image.open(tmp_path / "normals_distill" / "n.png")).tolist() == [[[0, 128, 255]]]
    write_label_map(tmp_path, "l", np.array([[0, 459]]))
    assert scipy.io.loadmat(tmp_path / "pascal-context" / "trainval" / "l.mat")["LabelMap"].tolist() == [[0, 459]]
    write_pascal_semseg(tmp_path, "g", np.array([[0, 20, 255]]))
    assert np.asarray(Image.open(tmp_path / "semseg" / "VOC12" / "g.png")).tolist() == [[0, 20, 255]]
    write_split(tmp_path, "train", ["2008_000002", "2008_000003"])
    assert (tmp_path / "ImageSets" / "Context" / "train.txt").read_text() == "2008_000002\n2008_000003\n"
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(tmp_path / "ImageSets" / "Context" / "train.txt").st_mode)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: write_pascal_semseg(r, "x", np.array([[21]])), "0..20 or 255"),
        (lambda r: write_pascal_image(r, "x", np.zeros((2, 2), np.uint8)), r"uint8 \(H, W, 3\)"),
        (lambda r: write_part_annotation(r, "x", [PascalObject(0, np.zeros((2, 2), bool))]), "class_id must be"),
        (lambda r: write_saliency(r, "x", np.array([[1.5]])), r"\[0, 1\]"),
        (lambda r: write_normals(r, "x", np.full((1, 1, 3), 2.0)), r"\[-1, 1\]"),
        (lambda r: write_label_map(r, "x", np.array([[-1]])), "non-negative"),
    ],
)
def test_writer_errors(tmp_path: Path, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


# ------------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------------


def test_registry_facts_and_split_sizes(root: Path, cache: Path) -> None:
    assert DATASETS.get("pascal") is PascalContext
    train, val = _ds(root, cache, split="train"), _ds(root, cache, split="val")
    assert (len(train), len(val)) == (3, 2)
    assert train.ids == ["a", "b", "c"] and val.ids == ["d", "e"]
    assert train.family == "pascal"
    assert train.num_classes == {"semseg": 21, "human_parts": 7}
    assert train.classes["semseg"][15] == "person" and train.classes["semseg"][20] == "tvmonitor"


def test_sample_contract(root: Path, cache: Path) -> None:
    s = _ds(root, cache)[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, H, W)
    assert s["semseg"].dtype == torch.int64 and s["semseg"].shape == (H, W)
    assert s["human_parts"].dtype == torch.int64 and s["human_parts"].shape == (H, W)
    for key, c in (("sal", 1), ("normals", 3), ("edge", 1)):
        assert s[key].dtype == torch.float32 and s[key].shape == (c, H, W)
    assert s["meta"] == {"name": "a", "size": (H, W), "dataset": "pascal", "has_parts": True}
    # JPEG is lossy: the decoded image stays close to what was written (quality 95, no subsampling)
    assert np.abs(s["image"].permute(1, 2, 0).numpy().astype(int) - _image(0).astype(int)).mean() < 12


def test_human_parts_from_raw_mat(root: Path, cache: Path, tmp_path: Path) -> None:
    masks = _raw_part_mat(tmp_path / "raw.mat")
    parts = _ds(root, cache, tasks=["human_parts"])[0]["human_parts"].numpy()
    expected = np.zeros((H, W), dtype=np.int64)  # person 2 and the car's part stay background
    for name, cls in {"hair": 1, "neck": 2, "lhand": 4, "luleg": 5, "rfoot": 6}.items():
        expected[masks[name]] = cls
    np.testing.assert_array_equal(parts, expected)


def test_images_without_parts_are_all_ignore_and_dropped_when_alone(root: Path, cache: Path) -> None:
    ds = _ds(root, cache, tasks=["semseg", "human_parts"])
    assert len(ds) == 3
    for i in (1, 2):  # b: person without parts; c: a car with parts, no person
        s = ds[i]
        assert s["meta"]["has_parts"] is False
        assert (s["human_parts"] == 255).all()
    parts_only = _ds(root, cache, tasks=["human_parts"])
    assert parts_only.ids == ["a"]
    assert _ds(root, cache, split="val", tasks=["human_parts"]).ids == ["d", "e"]


def test_saliency_binarised_at_half(root: Path, cache: Path) -> None:
    out = saliency_from_png(np.array([[0.0, 127.0, 127.5, 128.0, 255.0]]))
    np.testing.assert_array_equal(out, [[[0, 0, 0, 1, 1]]])  # 127.5/255 == 0.5 exactly -> 0
    grey = np.zeros((H, W), np.uint8)
    grey[0, :4] = [127, 128, 0, 255]
    write_saliency(root, "a", grey)
    sal = _ds(root, cache, tasks=["sal"])[0]["sal"][0].numpy()
    expected = np.zeros((H, W), np.float32)
    expected[0, 1] = expected[0, 3] = 1.0
    np.testing.assert_array_equal(sal, expected)


def test_normals_decoded_and_masked_by_label_map(root: Path, cache: Path) -> None:
    label_map = np.full((H, W), CHAIR)
    label_map[:, 2] = SKY  # not an NYU class
    label_map[:, 3] = TVMONITOR  # kept explicitly
    label_map[:, 4] = UNKNOWN  # excluded although NYU has "unknown"
    label_map[:, 5] = 0  # unlabelled
    label_map[:, 6] = WALL
    write_label_map(root, "a", label_map)
    encoded = np.zeros((H, W, 3), np.uint8)
    encoded[...] = [0, 128, 255]
    write_normals(root, "a", encoded)
    n = _ds(root, cache, tasks=["normals"])[0]["normals"].numpy()
    v = np.array([-1.0, 2 * 128 / 255 - 1, 1.0], dtype=np.float32)  # n = 2v/255 - 1, by hand
    for col in (0, 1, 3, 6, 7):
        np.testing.assert_allclose(n[:, :, col], np.repeat(v[:, None], H, axis=1), atol=1e-6)
    for col in (2, 4, 5):
        assert (n[:, :, col] == 0).all()


def _edges_numpy(label_map: np.ndarray) -> np.ndarray:
    """Independent re-implementation: numpy 'reflect' pad (= OpenCV BORDER_REFLECT_101), 4-neighbour sum."""
    p = np.pad(label_map.astype(np.float64), 1, mode="reflect")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
    return thin(np.abs(lap) > 0).astype(np.float32)


def test_edges_hand_derived() -> None:
    # Columns 1..5: interior Laplacians cancel (left + right = 2 * centre); at the borders the mirrored
    # neighbour repeats the inner one, so columns 0 and 4 are edges. Straight one-pixel lines survive thin.
    ramp = np.tile(np.arange(1, 6), (4, 1))
    expected = np.zeros((4, 5), np.float32)
    expected[:, [0, 4]] = 1
    np.testing.assert_array_equal(edge_from_label_map(ramp), expected)
    # Border mode: at (0, 1) the mirrored up-neighbour is row 1, 3 + 3 + 1 + 1 - 4 * 2 = 0 (no edge), while
    # edge replication would give 3 + 3 + 2 + 1 - 8 = 1. Row 2 is flat under mirroring.
    small = np.array([[3, 2, 3], [1, 1, 1], [1, 1, 1]])
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=bool)  # |Laplacian| > 0 by hand
    out = edge_from_label_map(small)
    np.testing.assert_array_equal(out, thin(mask).astype(np.float32))
    assert out[0, 1] == 0 and not out[2].any()
    # A vertical step: both sides of the step respond; thinning keeps a one-pixel line.
    step = np.zeros((5, 6), int)
    step[:, 3:] = 2
    band = np.zeros((5, 6), bool)
    band[:, 2:4] = True
    np.testing.assert_array_equal(edge_from_label_map(step), thin(band).astype(np.float32))
    assert set(np.unique(edge_from_label_map(step))) == {0.0, 1.0}


def test_edges_match_numpy_reimplementation() -> None:
    rng = np.random.default_rng(0)
    label_map = rng.integers(1, 5, (12, 15)).repeat(2, axis=0)
    np.testing.assert_array_equal(edge_from_label_map(label_map), _edges_numpy(label_map))


def test_edge_task_from_label_map_file(root: Path, cache: Path) -> None:
    label_map = np.full((H, W), WALL)
    label_map[2:4, 3:6] = CHAIR
    write_label_map(root, "a", label_map)
    edge = _ds(root, cache, tasks=["edge"])[0]["edge"]
    assert edge.shape == (1, H, W)
    np.testing.assert_array_equal(edge[0].numpy(), _edges_numpy(label_map))
    assert edge.sum() > 0


def test_semseg_raw_and_fallback(root: Path, cache: Path) -> None:
    labels = np.zeros((H, W), np.uint8)
    labels[0, :3] = [20, 255, 7]
    write_pascal_semseg(root, "a", labels)
    fallback = np.full((H, W), 3, np.uint8)
    fallback[1, 1] = 255
    (root / "semseg" / "VOC12" / "b.png").unlink()
    (root / "semseg" / "pascal-context").mkdir(parents=True)
    Image.fromarray(fallback).save(root / "semseg" / "pascal-context" / "b.png")
    ds = _ds(root, cache, tasks=["semseg"])
    np.testing.assert_array_equal(ds[0]["semseg"].numpy(), labels.astype(np.int64))
    np.testing.assert_array_equal(ds[1]["semseg"].numpy(), fallback.astype(np.int64))
    # only the fallback folder present is enough
    os.rename(root / "semseg" / "VOC12", root / "semseg" / "old")
    (root / "semseg" / "pascal-context" / "a.png").write_bytes((root / "semseg" / "old" / "a.png").read_bytes())
    assert _ds(root, cache, tasks=["semseg"])[0]["semseg"][0, 0] == 20


# ------------------------------------------------------------------------------------------------------
# Parts cache
# ------------------------------------------------------------------------------------------------------


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_cache_outside_read_only_root_and_reused(root: Path, cache: Path, monkeypatch) -> None:
    before = _tree(root)
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    for p in modes:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        assert _ds(root, cache, tasks=["human_parts"]).ids == ["a"]
        assert _tree(root) == before  # nothing written into the dataset (root can write anyway)
        assert not (root / "ImageSets" / "Parts").exists()
        files = list(cache.iterdir())
        assert len(files) == 1 and files[0].suffix == ".json"

        def fail(path):
            raise AssertionError(f"parsed {path} although the cache is valid")

        monkeypatch.setattr(pascal_mod, "read_part_objects", fail)
        assert _ds(root, cache, tasks=["human_parts"]).ids == ["a"]
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    # a changed file is parsed again
    monkeypatch.undo()
    write_part_annotation(root, "b", [PascalObject(15, _box(0, 2, 0, 2), [("torso", _box(0, 2, 0, 2))])])
    assert _ds(root, cache, tasks=["human_parts"]).ids == ["a", "b"]


def test_cache_default_location_and_unwritable(root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DENSEMTL_CACHE_DIR", str(tmp_path / "envcache"))
    assert PascalContext(root, tasks=["human_parts"]).ids == ["a"]
    assert len(list((tmp_path / "envcache").glob("pascal-parts-train-*.json"))) == 1
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not write the PASCAL parts cache"):
        ds = PascalContext(root, tasks=["human_parts"], cache_dir=blocker / "sub")
    assert ds.ids == ["a"]
    assert PascalContext(root, tasks=["human_parts"], cache_dir=blocker / "x", use_cache=False).ids == ["a"]


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------


def test_missing_root_and_split(tmp_path: Path, root: Path, cache: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"dataset root .*nowhere.*ImageSets/Context"):
        _ds(tmp_path / "nowhere", cache)
    (root / "ImageSets" / "Context" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"split file of 'val' .*val\.txt"):
        _ds(root, cache, split="val")
    write_split(root, "val", [])
    with pytest.raises(ValueError, match="lists no ids"):
        _ds(root, cache, split="val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        _ds(root, cache, split="test")
    with pytest.raises(ValueError, match=r"does not provide task\(s\) \['depth'\]"):
        _ds(root, cache, tasks=["depth"])


@pytest.mark.parametrize(
    ("folder", "task"),
    [
        ("sal_distill", "sal"),
        ("normals_distill", "normals"),
        ("pascal-context", "edge"),
        ("human_parts", "human_parts"),
    ],
)
def test_missing_task_folder(root: Path, cache: Path, folder: str, task: str) -> None:
    os.rename(root / folder, root / f"{folder}_gone")
    with pytest.raises(DatasetNotFoundError, match=rf"folder of task '{task}' .*{folder}"):
        _ds(root, cache, tasks=[task])
    assert len(_ds(root, cache, tasks=["semseg"])) == 3  # other tasks do not need it


def test_missing_semseg_folders_and_files(root: Path, cache: Path) -> None:
    (root / "semseg" / "VOC12" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither .*VOC12/b\.png nor .*pascal-context/b\.png"):
        _ds(root, cache, tasks=["semseg"])[1]
    os.rename(root / "semseg", root / "semseg_gone")
    with pytest.raises(DatasetNotFoundError, match=r"folder of task 'semseg'.*semseg/VOC12"):
        _ds(root, cache, tasks=["semseg"])
    (root / "sal_distill" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"saliency file .*sal_distill/a\.png"):
        _ds(root, cache, tasks=["sal"])[0]


def test_semseg_values_out_of_range(root: Path, cache: Path) -> None:
    bad = np.zeros((H, W), np.uint8)
    bad[0, 0] = 21
    Image.fromarray(bad).save(root / "semseg" / "VOC12" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png has values \[21\]; expected class ids 0\.\.20 or 255"):
        _ds(root, cache, tasks=["semseg"])[0]


def test_corrupt_and_truncated_jpg(root: Path, cache: Path) -> None:
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*JPEGImages/a\.jpg"):
        _ds(root, cache, tasks=["semseg"])[0]
    data = (root / "JPEGImages" / "b.jpg").read_bytes()
    (root / "JPEGImages" / "b.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read image file .*JPEGImages/b\.jpg"):
        _ds(root, cache, tasks=["semseg"])[1]


def test_shape_mismatch(root: Path, cache: Path) -> None:
    write_saliency(root, "a", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=rf"sal_distill/a\.png has shape \({H + 1}, {W}\) but the image .*a\.jpg"):
        _ds(root, cache, tasks=["sal"])[0]
    write_label_map(root, "b", np.ones((H, W + 2), int))
    with pytest.raises(ValueError, match=r"trainval/b\.mat has shape"):
        _ds(root, cache, tasks=["edge"])[1]
    write_part_annotation(root, "a", [PascalObject(15, _box(0, 1, 0, 1)[:, :3], [("hair", np.ones((2, 3), bool))])])
    with pytest.raises(ValueError, match=r"a\.mat: mask of part 'hair' of object 0 has shape \(2, 3\)"):
        _ds(root, cache, tasks=["semseg", "human_parts"])[0]


def test_malformed_part_mat(root: Path, cache: Path) -> None:
    path = root / "human_parts" / "a.mat"
    scipy.io.savemat(path, {"anno": np.array([[1.0]])})
    with pytest.raises(ValueError, match=r"malformed PASCAL-Part annotation .*a\.mat: .*anno\[0\]\[0\]\[1\]\[0\]"):
        _ds(root, cache, tasks=["semseg", "human_parts"])[0]
    scipy.io.savemat(path, {"objects": np.zeros(2)})
    with pytest.raises(ValueError, match=r"a\.mat: no 'anno' variable \(found \['objects'\]\)"):
        _ds(root, cache, tasks=["semseg", "human_parts"])[0]
    path.write_bytes(b"garbage, not MATLAB")
    with pytest.raises(ValueError, match=r"cannot read PASCAL-Part annotation .*a\.mat"):
        _ds(root, cache, tasks=["human_parts"])  # parsed at construction for the parts-only filter
    write_part_annotation(root, "a", [PascalObject(15, _box(0, 1, 0, 1), [("tail", _box(0, 1, 0, 1))])])
    with pytest.raises(ValueError, match=r"a\.mat: person object 0 has an unknown part name 'tail'"):
        _ds(root, cache, tasks=["semseg", "human_parts"])[0]


def test_missing_part_file_and_bad_label_map(root: Path, cache: Path) -> None:
    (root / "human_parts" / "c.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing human_parts file .*c\.mat"):
        _ds(root, cache, tasks=["human_parts"])
    scipy.io.savemat(root / "pascal-context" / "trainval" / "a.mat", {"Labels": np.ones((H, W))})
    with pytest.raises(ValueError, match=r"a\.mat has no 'LabelMap' variable"):
        _ds(root, cache, tasks=["normals"])[0]
    write_normals(root, "b", np.zeros((H, W, 3)))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "normals_distill" / "b.png")
    with pytest.raises(ValueError, match=r"normals .*b\.png must be an RGB png"):
        _ds(root, cache, tasks=["normals"])[1]


def test_plot(root: Path, cache: Path) -> None:
    ds = _ds(root, cache)
    picture = ds.plot(ds[0])
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] >= 6 * W  # image + five task panels side by side
