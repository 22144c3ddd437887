"""The nyud-mat converter, normals from depth and label boundaries, on a fake v7.3 .mat and analytic planes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from densemtl.data.convert import (
    NYU_COLOR_INTRINSICS,
    convert_nyud_mat,
    label_boundaries,
    load_nyu40_mapping,
    load_nyu_splits,
    normals_from_depth,
)
from densemtl.data.nyud import NYUD

FX, FY, CX, CY = 500.0, 480.0, 15.3, 11.7


def _plane_depth(normal: np.ndarray, offset: float, h: int = 24, w: int = 32) -> np.ndarray:
    """Depth of the plane {P : normal . P = -offset} seen through the test intrinsics."""
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    ray = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)
    return -offset / (ray @ normal)


@pytest.mark.parametrize(
    "normal",
    [(0.0, 0.0, -1.0), (0.0, -1.0, -0.2), (0.3, -0.5, -0.8), (-0.6, 0.1, -0.75)],
)
def test_normals_from_depth_recovers_a_plane(normal: tuple[float, float, float]) -> None:
    n = np.asarray(normal) / np.linalg.norm(normal)
    depth = _plane_depth(n, offset=2.0)
    assert (depth > 0).all()
    out = normals_from_depth(depth, FX, FY, CX, CY)
    assert out.shape == (24, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(n, out.shape), atol=1e-5)
    np.testing.assert_allclose(normals_from_depth(depth, FX, FY, CX, CY, step=3), out, atol=1e-5)


def test_normals_from_depth_conventions_and_holes() -> None:
    # A floor 1.5 m below the camera (y down): Y = 1.5, so Z = 1.5 fy / (v - cy) for rows below the centre.
    h, w = 10, 12
    cy = CY - 20.0  # the principal point 20 rows above the image: every row sees the floor
    v = np.arange(h, dtype=np.float64)[:, None]
    floor = np.broadcast_to(1.5 * FY / (v - cy), (h, w)).copy()
    out = normals_from_depth(floor, FX, FY, CX, cy)
    np.testing.assert_allclose(out, np.broadcast_to([0.0, -1.0, 0.0], out.shape), atol=1e-5)  # points up
    # A hole: zero at the hole, one-sided differences right beside it, still the plane's normal.
    wall = np.full((h, w), 3.0)
    wall[4, 5] = 0.0
    wall[0, 0] = np.nan
    out = normals_from_depth(wall, FX, FY, CX, CY)
    np.testing.assert_array_equal(out[4, 5], 0.0)
    np.testing.assert_array_equal(out[0, 0], 0.0)
    valid = np.ones((h, w), bool)
    valid[4, 5] = valid[0, 0] = False
    np.testing.assert_allclose(out[valid], np.broadcast_to([0.0, 0.0, -1.0], (valid.sum(), 3)), atol=1e-6)
    # An isolated valid pixel has no tangent: invalid.
    lone = np.zeros((5, 5))
    lone[2, 2] = 1.0
    np.testing.assert_array_equal(normals_from_depth(lone), 0.0)


def test_normals_from_depth_errors() -> None:
    with pytest.raises(ValueError, match=r"depth must be \(H, W\)"):
        normals_from_depth(np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match=r"step must be >= 1"):
        normals_from_depth(np.ones((4, 4)), step=0)


def test_label_boundaries_seg2bmap_rule() -> None:
    labels = np.array(
        [
            [1, 1, 2, 2],
            [1, 1, 2, 2],
            [0, 0, 0, 2],
        ]
    )
    expected = np.array(
        [
            [0, 1, 0, 0],  # (0,1): east is 2; (0,0): east 1, south 1, south-east 1
            [1, 1, 1, 0],  # (1,0): south 0; (1,1): east 2; (1,2): south 0; (1,3): south 2 (same)
            [0, 0, 1, 0],  # last row: east only; (2,2): east is 2
        ]
    )
    np.testing.assert_array_equal(label_boundaries(labels), expected)


def test_metadata_readers_on_real_files(shared_data: Path) -> None:
    meta = shared_data / "nyudv2_mini" / "meta"
    map_class, names = load_nyu40_mapping(meta / "classMapping40.mat")
    assert map_class.shape == (894,) and names is not None and len(names) == 894
    assert (names[20], map_class[20]) == ("wall", 1)
    assert (names[10], map_class[10]) == ("floor", 2)
    assert (names[2], map_class[2]) == ("cabinet", 3)
    splits = load_nyu_splits(meta / "splits.mat")
    assert len(splits["train"]) == 795 and len(splits["val"]) == 654
    assert splits["val"][:8] == [1, 2, 9, 14, 15, 16, 17, 18] and splits["train"][:3] == [3, 4, 5]
    assert not set(splits["train"]) & set(splits["val"])


# ------------------------------------------------------------------------------------- fake .mat

FH, FW, N = 6, 8, 3
RAW_WALL, RAW_FLOOR, RAW_CABINET = 21, 11, 3  # 1-based raw ids: 'wall', 'floor', 'cabinet'


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (N, FH, FW, 3), dtype=np.uint8)
    depths = np.stack([np.full((FH, FW), 1.0 + i, np.float32) for i in range(N)])
    labels = np.full((N, FH, FW), RAW_CABINET, np.uint16)  # rows 0-3: W W W C C C C C; rows 4-5: F
    labels[:, :, :3] = RAW_WALL
    labels[:, 4:, :] = RAW_FLOOR
    labels[:, 2, 5] = 0  # an unlabelled pixel
    return images, depths, labels


def _write_fake_mat(path: Path, names: list[str] | None, skip: str = "", bad_shape: bool = False) -> None:
    """Write arrays the way MATLAB v7.3 stores them: column-major, so h5py sees the axes reversed."""
    images, depths, labels = _frames()
    with h5py.File(path, "w", userblock_size=512) as f:
        if skip != "images":
            f["images"] = images.transpose(0, 3, 2, 1)  # MATLAB (H, W, 3, N) -> h5py (N, 3, W, H)
        if skip != "depths":
            f["depths"] = depths.transpose(0, 2, 1) if not bad_shape else depths
        if skip != "labels":
            f["labels"] = labels.transpose(0, 2, 1)
        if names is not None:
            refs = f.create_group("#refs#")
            dsets = [
                refs.create_dataset(f"n{i}", data=np.array([[ord(c)] for c in n], np.uint16))
                for i, n in enumerate(names)
            ]
            ref_arr = f.create_dataset("names", (1, len(names)), dtype=h5py.ref_dtype)
            for i, d in enumerate(dsets):
                ref_arr[0, i] = d.ref


@pytest.fixture
def meta(shared_data: Path, tmp_path: Path) -> dict[str, Path]:
    splits = tmp_path / "splits.mat"
    scipy.io.savemat(splits, {"trainNdxs": np.array([[1], [3]], np.uint16), "testNdxs": np.array([[2]], np.uint16)})
    return {"mapping": shared_data / "nyudv2_mini" / "meta" / "classMapping40.mat", "splits": splits}


def _names(shared_data: Path) -> list[str]:
    return load_nyu40_mapping(shared_data / "nyudv2_mini" / "meta" / "classMapping40.mat")[1]


def _expected_semseg(labels: np.ndarray, wall: int = 0, floor: int = 1) -> np.ndarray:
    out = np.full(labels.shape, 255, np.int64)
    out[labels == RAW_WALL] = wall
    out[labels == RAW_FLOOR] = floor
    out[labels == RAW_CABINET] = 2
    return out


def test_convert_fake_mat_round_trip(tmp_path: Path, meta: dict[str, Path], shared_data: Path) -> None:
    mat = tmp_path / "nyu.mat"
    _write_fake_mat(mat, _names(shared_data))
    out = convert_nyud_mat(mat, out=tmp_path / "NYUDv2", class_mapping=meta["mapping"], splits=meta["splits"])
    assert (out / "gt_sets" / "train.txt").read_text() == "0001\n0003\n"
    assert (out / "gt_sets" / "val.txt").read_text() == "0002\n"
    readme = (out / "README.md").read_text()
    assert "Derived" in readme and "518.86" in readme and "seg2bmap" in readme and "6x8 full frames" in readme

    images, depths, labels = _frames()
    train = NYUD(out, "train")
    assert len(train) == 2 and len(NYUD(out, "val")) == 1
    for k, frame in enumerate([0, 2]):
        s = train[k]
        assert s["meta"]["name"] == f"{frame + 1:04d}" and s["meta"]["size"] == (FH, FW)
        np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), images[frame])
        np.testing.assert_array_equal(s["depth"][0].numpy(), depths[frame])
        np.testing.assert_array_equal(s["semseg"].numpy(), _expected_semseg(labels[frame]))
        # fronto-parallel depth: normals (0, 0, -1) up to the 8-bit encoding
        assert np.abs(s["normals"].numpy() - np.array([0, 0, -1.0])[:, None, None]).max() <= 1 / 255 + 1e-6
    raw = np.asarray(Image.open(out / "segmentation" / "0001.png"))
    assert raw[0, 0] == 1 and raw[5, 0] == 2 and raw[0, 6] == 3 and raw[2, 5] == 0  # stored 1..40, 0 void
    edge = train[0]["edge"][0].numpy()
    expected_edge = np.zeros((FH, FW))
    expected_edge[:3, 2] = 1  # wall | cabinet to the east
    expected_edge[1, 4] = expected_edge[1, 5] = 1  # the hole at (2, 5) is their south-east / south neighbour
    expected_edge[2, 4] = expected_edge[2, 5] = 1  # the hole is the east neighbour of (2, 4); differs from its own
    expected_edge[3, :] = 1  # every pixel of row 3 has floor to the south
    np.testing.assert_array_equal(edge, expected_edge)


def test_convert_matches_classes_by_name(tmp_path: Path, meta: dict[str, Path], shared_data: Path) -> None:
    names = _names(shared_data)
    names[RAW_WALL - 1], names[RAW_FLOOR - 1] = names[RAW_FLOOR - 1], names[RAW_WALL - 1]
    mat = tmp_path / "swapped.mat"
    _write_fake_mat(mat, names)  # in this file raw 21 means 'floor' and raw 11 'wall'
    out = convert_nyud_mat(mat, out=tmp_path / "o", class_mapping=meta["mapping"], splits=meta["splits"], frames=[2])
    assert (out / "gt_sets" / "train.txt").read_text() == "" and (out / "gt_sets" / "val.txt").read_text() == "0002\n"
    s = NYUD(out, "val", tasks=["semseg"]).load(0)
    np.testing.assert_array_equal(s["semseg"].numpy(), _expected_semseg(_frames()[2][1], wall=1, floor=0))


def test_convert_crop(tmp_path: Path, meta: dict[str, Path]) -> None:
    mat = tmp_path / "nyu.mat"
    _write_fake_mat(mat, None)  # no names: positional mapping
    out = convert_nyud_mat(
        mat, out=tmp_path / "c", class_mapping=meta["mapping"], splits=meta["splits"], crop=(1, 2, 4, 5)
    )
    s = NYUD(out, "train").load(1)
    images, depths, labels = _frames()
    assert s["meta"]["size"] == (4, 5)
    np.testing.assert_array_equal(s["image"].numpy().transpose(1, 2, 0), images[2, 1:5, 2:7])
    np.testing.assert_array_equal(s["semseg"].numpy(), _expected_semseg(labels[2])[1:5, 2:7])
    assert "4x5, crop (top, left) = (1, 2)" in (out / "README.md").read_text()


def test_convert_errors(tmp_path: Path, meta: dict[str, Path], shared_data: Path) -> None:
    args = {"class_mapping": meta["mapping"], "splits": meta["splits"]}
    with pytest.raises(FileNotFoundError, match=r"missing file .*absent\.mat"):
        convert_nyud_mat(tmp_path / "absent.mat", out=tmp_path / "o", **args)
    mat = tmp_path / "nolabels.mat"
    _write_fake_mat(mat, None, skip="labels")
    with pytest.raises(ValueError, match=r"nolabels\.mat lacks dataset\(s\) \['labels'\]"):
        convert_nyud_mat(mat, out=tmp_path / "o", **args)
    mat = tmp_path / "shape.mat"
    _write_fake_mat(mat, None, bad_shape=True)
    with pytest.raises(ValueError, match=r"'depths' has shape \(3, 6, 8\); expected \(3, 8, 6\)"):
        convert_nyud_mat(mat, out=tmp_path / "o", **args)
    not_hdf5 = tmp_path / "v5.mat"
    scipy.io.savemat(not_hdf5, {"images": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"cannot read .*v5\.mat as a MATLAB v7\.3 \(HDF5\) file"):
        convert_nyud_mat(not_hdf5, out=tmp_path / "o", **args)

    good = tmp_path / "good.mat"
    _write_fake_mat(good, None)
    big_split = tmp_path / "big.mat"
    scipy.io.savemat(big_split, {"trainNdxs": np.array([[1], [4]]), "testNdxs": np.array([[2]])})
    with pytest.raises(ValueError, match=r"refers to frame 4 but .*good\.mat has only 3 frames"):
        convert_nyud_mat(good, out=tmp_path / "o", class_mapping=meta["mapping"], splits=big_split)
    no_test = tmp_path / "notest.mat"
    scipy.io.savemat(no_test, {"trainNdxs": np.array([[1]])})
    with pytest.raises(ValueError, match=r"notest\.mat has no 'testNdxs'"):
        convert_nyud_mat(good, out=tmp_path / "o", class_mapping=meta["mapping"], splits=no_test)
    with pytest.raises(ValueError, match=r"splits\.mat has no 'mapClass'"):
        convert_nyud_mat(good, out=tmp_path / "o", class_mapping=meta["splits"], splits=meta["splits"])
    with pytest.raises(ValueError, match=r"frames \[7\] are in neither split"):
        convert_nyud_mat(good, out=tmp_path / "o", **args, frames=[1, 7])
    with pytest.raises(ValueError, match=r"crop \(0, 0, 7, 8\).*6x8"):
        convert_nyud_mat(good, out=tmp_path / "o", **args, crop=(0, 0, 7, 8))
    wrong_names = tmp_path / "names.mat"
    _write_fake_mat(wrong_names, [*_names(shared_data)[:-1], "no such class"])
    with pytest.raises(ValueError, match=r"missing from the class mapping: \['no such class'\]"):
        convert_nyud_mat(wrong_names, out=tmp_path / "o", **args)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"full is not empty"):
        convert_nyud_mat(good, out=tmp_path / "full", **args)
    with pytest.raises(FileExistsError, match=r"full was not written by densemtl"):  # a user's folder: never deleted
        convert_nyud_mat(good, out=tmp_path / "full", **args, overwrite=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_convert_overwrite_replaces_only_its_own_folder_and_only_after_reading_the_input(
    tmp_path: Path, meta: dict[str, Path]
) -> None:
    args = {"class_mapping": meta["mapping"], "splits": meta["splits"]}
    good = tmp_path / "good.mat"
    _write_fake_mat(good, None)
    out = convert_nyud_mat(good, out=tmp_path / "NYUDv2", **args, frames=[2])
    assert json.loads((out / "densemtl.json").read_text())["written_by"] == "densemtl"
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a MATLAB file")
    with pytest.raises(ValueError, match=r"cannot read .*bad\.mat"):
        convert_nyud_mat(bad, out=out, **args, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the converted folder is intact
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    convert_nyud_mat(good, out=out, **args, overwrite=True)  # its own folder: replaced
    assert (out / "gt_sets" / "train.txt").read_text().split() == ["0001", "0003"]


def test_nyu_intrinsics_constant() -> None:
    assert NYU_COLOR_INTRINSICS == {"fx": 518.86, "fy": 519.47, "cx": 325.58, "cy": 253.74}


@pytest.mark.parametrize("name", ["0001", "0009", "0016"])
def test_normals_from_real_nyu_depth_are_plausible(shared_data: Path, name: str) -> None:
    """Derived normals on real frames: floor points up (-y), walls are horizontal, ceiling points down."""
    test = shared_data / "nyudv2_mini" / "test"
    depth = np.asarray(Image.open(test / "depth" / f"{name}.png")).astype(np.float64) / 1000.0
    labels = np.asarray(Image.open(test / "semseg40" / f"{name}.png"))  # 1 wall, 2 floor, 22 ceiling
    normals = normals_from_depth(depth, **NYU_COLOR_INTRINSICS, step=3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)  # dense depth: all valid
    floor, wall = normals[labels == 2], normals[labels == 1]
    assert np.median(floor[:, 1]) < -0.9
    assert np.mean(floor[:, 1] < -np.cos(np.radians(30))) > 0.6
    assert np.median(np.abs(wall[:, 1])) < 0.2
    assert np.median(normals[labels == 22][:, 1]) > 0.3
    points_z = depth  # towards the camera: every normal has a negative component along its viewing ray
    u, v = np.meshgrid(np.arange(640) - 325.58, np.arange(480) - 253.74)
    rays = np.stack([u / 518.86 * points_z, v / 519.47 * points_z, points_z], axis=-1)
    assert ((normals * rays).sum(-1) <= 1e-6).all()
