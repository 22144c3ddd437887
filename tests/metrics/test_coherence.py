"""Cross-task coherence metrics: analytic planes, the generator's own scenes, real NYUv2 frames, streaming, DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.data.synthetic.camera import Intrinsics
from densemtl.data.synthetic.generate import image_rng
from densemtl.data.synthetic.synth_nyud import render_nyud_image
from densemtl.metrics.boundary import seg2bmap
from densemtl.metrics.camera import PinholeCamera, frame_camera
from densemtl.metrics.coherence import (
    BoundaryAgreement,
    CoherenceMetrics,
    DepthNormalConsistency,
    FloorWallAgreement,
    boundary_counts,
    build_coherence,
    depth_discontinuities,
    floor_wall_ids,
    normals_from_depth,
    semantic_boundaries,
)

CAM = PinholeCamera(60.0, 62.0, 31.5, 23.0, 48, 64)
FLOOR, WALL = 4, 11  # NYU-13 ids (synth-nyud)


def _rays(cam: PinholeCamera) -> np.ndarray:
    """(H, W, 3) camera rays with unit z (numpy, independent of the code under test)."""
    u = (np.arange(cam.width) - cam.cx) / cam.fx
    v = (np.arange(cam.height) - cam.cy) / cam.fy
    r = np.ones((cam.height, cam.width, 3))
    r[..., 0], r[..., 1] = u[None, :], v[:, None]
    return r


def _plane_depth(cam: PinholeCamera, normal: np.ndarray, distance: float) -> np.ndarray:
    """z-depth of the plane n·X = −distance (n unit, facing the camera); inf where the ray misses it."""
    denom = _rays(cam) @ normal
    with np.errstate(divide="ignore"):
        z = -distance / denom
    return np.where(denom < 0, z, np.inf)


def _tilted_room(pitch_deg: float, cam: PinholeCamera = CAM):
    """A floor (0.8 m below) and a wall (3 m ahead) seen by a camera pitched down by ``pitch_deg``.

    Returns depth (1, 1, H, W), normals (1, 3, H, W), labels (1, H, W) and the floor and wall normals.
    """
    b = math.radians(pitch_deg)
    up = np.array([0.0, -math.cos(b), -math.sin(b)])  # world up in the camera frame (y down, z forward)
    wall_n = np.array([0.0, math.sin(b), -math.cos(b)])  # horizontal, facing the camera
    z_floor, z_wall = _plane_depth(cam, up, 0.8), _plane_depth(cam, wall_n, 3.0)
    floor = z_floor < z_wall
    depth = np.where(floor, z_floor, z_wall)
    normals = np.where(floor[..., None], up, wall_n)
    labels = np.where(floor, FLOOR, WALL)
    return (
        torch.from_numpy(depth)[None, None].float(),
        torch.from_numpy(normals).permute(2, 0, 1)[None].float(),
        torch.from_numpy(labels)[None],
        up,
        wall_n,
    )


def _rotate_towards(normals: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Each normal turned by ``angle_deg`` towards a direction perpendicular to it (per-pixel rotation)."""
    n = normals.double()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=n.dtype)[None, :, None, None].expand_as(n)
    t = torch.linalg.cross(n, helper, dim=1)
    t = t / t.norm(dim=1, keepdim=True)
    a = math.radians(angle_deg)
    return (math.cos(a) * n + math.sin(a) * t).float()


# ----------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("normal", [(0.0, 0.0, -1.0), (0.3, -0.5, -0.8), (-0.6, 0.2, -0.5)])
def test_plane_depth_gives_the_analytic_normal(normal):
    n = np.asarray(normal) / np.linalg.norm(normal)
    depth = _plane_depth(CAM, n, 2.5)
    assert np.isfinite(depth).all()
    derived, ok = normals_from_depth(torch.from_numpy(depth)[None, None], [CAM])
    assert ok[0, 1:-1, 1:-1].all() and not ok[0, 0].any() and not ok[0, :, -1].any()
    got = derived[0].permute(1, 2, 0).numpy()[1:-1, 1:-1]
    np.testing.assert_allclose(got, np.broadcast_to(n, got.shape), atol=1e-5)
    jump, stencil = depth_discontinuities(torch.from_numpy(depth)[None, None], [CAM])
    assert not jump.any() and stencil[0, 1:-1, 1:-1].all()


def test_wider_step_gives_the_same_plane_normal():
    n = np.array([0.2, -0.7, -0.6])
    n /= np.linalg.norm(n)
    depth = torch.from_numpy(_plane_depth(CAM, n, 2.0))[None, None]
    derived, ok = normals_from_depth(depth, [CAM], step=3)
    assert ok[0, 3:-3, 3:-3].all() and not ok[0, :3].any()
    got = derived[0, :, 3:-3, 3:-3].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(n, got.shape), atol=1e-5)


def test_occlusion_and_crease_are_discontinuities():
    depth, _, labels, _, _ = _tilted_room(10.0)
    jump, _ = depth_discontinuities(depth, [CAM])
    crease = torch.from_numpy(semantic_boundaries(labels[0].numpy()))
    crease[:, [0, -1]] = False  # the outer columns have no stencil
    # every floor/wall crease pixel is flagged (the crease is a 90° bend), nothing away from it
    assert jump[0][crease].all()
    near = torch.nn.functional.max_pool2d(crease[None, None].float(), 5, 1, 2)[0, 0] > 0
    assert not jump[0][~near].any()
    step = torch.full((1, 1, 48, 64), 2.0)
    step[..., 32:] = 4.0  # an occluding edge: 2 m in front of 4 m
    jump, _ = depth_discontinuities(step, [CAM])
    assert jump[0, 5:-5, 31:33].all() and not jump[0, :, :30].any() and not jump[0, :, 34:].any()


# --------------------------------------------------------------------------------- depth vs normals


def test_known_rotation_raises_the_error_by_that_angle():
    depth, normals, _, _, _ = _tilted_room(15.0)
    exact = DepthNormalConsistency()
    exact.update(normals, depth, [CAM])
    base = exact.compute()
    assert base["mean"] < 1e-4 and base["within_11.25"] == 100.0
    for angle in (5.0, 12.0, 25.0):
        m = DepthNormalConsistency()
        m.update(_rotate_towards(normals, angle), depth, [CAM])
        r = m.compute()
        assert float(r["mean"]) == pytest.approx(angle, abs=1e-3)
        assert float(r["median"]) == pytest.approx(angle, abs=0.01)
        assert float(r["within_11.25"]) == (100.0 if angle < 11.25 else 0.0)
        assert float(r["within_30"]) == 100.0
        assert float(r["coverage"]) == float(base["coverage"])


def test_discontinuities_and_invalid_depth_are_left_out():
    depth, normals, _, _, _ = _tilted_room(0.0)
    m = DepthNormalConsistency(margin=1)
    m.update(normals, depth, [CAM])
    r = m.compute()
    # kept: interior pixels away from the crease (the crease band is 1 row, dilated to 3 or 4 rows)
    kept = float(r["coverage"]) / 100 * 48 * 64
    assert 46 * 62 - 5 * 62 <= kept < 46 * 62
    holes = depth.clone()
    holes[..., 10:20, 10:20] = 0
    m2 = DepthNormalConsistency()
    m2.update(normals, holes, [CAM])
    r2 = m2.compute()
    assert float(r2["mean"]) < 1e-4  # hole rims do not produce errors
    assert float(r2["coverage"]) / 100 * (48 * 64 - 100) < kept - 100  # the rim is left out too


def _synth_batch(count: int, size=(60, 80), first: int = 0):
    images = [render_nyud_image(image_rng(3, "val", i), size, shadows=False) for i in range(first, first + count)]
    batch = {
        "image": torch.zeros(count, 3, *size),
        "semseg": torch.stack([torch.from_numpy(im.semseg) for im in images]),
        "depth": torch.stack([torch.from_numpy(im.depth)[None] for im in images]),
        "normals": torch.stack([torch.from_numpy(im.normals).permute(2, 0, 1) for im in images]),
        "meta": [{"size": size, "valid_box": (0, 0, *size)} for _ in images],
    }
    return batch, images


@pytest.fixture(scope="module")
def synth():
    return _synth_batch(4)


def test_generator_camera_is_the_family_camera(synth):
    _, images = synth
    intr = images[0].camera.intr
    cam = frame_camera("nyud", (60, 80))
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((intr.fx, intr.fy, intr.cx, intr.cy), rel=1e-12)
    assert Intrinsics.nyu((60, 80)).fx == pytest.approx(518.86 / 8)


def test_synthetic_ground_truth_is_coherent(synth):
    batch, _ = synth
    m = CoherenceMetrics(["semseg", "depth", "normals", "edge"], "nyud", {"semseg": 13}, sources=["gt"])
    m.update({"semseg": torch.zeros(4, 13, 60, 80)}, batch)
    gt = m.compute()["gt"]
    dn = gt["depth_normal"]
    assert dn["mean"] < 0.1 and dn["within_11.25"] > 99.9 and dn["coverage"] > 50
    fw = gt["floor_wall"]
    assert fw["floor_mean"] < 0.1 and fw["wall_mean"] < 0.1 and fw["images"] == 4
    assert gt["boundary"]["f"] > 50  # the reference level (not 100: pictures, room corners)


def test_predictions_from_ground_truth_score_like_ground_truth(synth):
    batch, _ = synth
    m = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13})
    logits = torch.nn.functional.one_hot(batch["semseg"], 13).permute(0, 3, 1, 2).float()
    m.update({"semseg": logits, "depth": batch["depth"], "normals": batch["normals"] * 3.0}, batch)
    out = m.compute()
    for family in ("depth_normal", "boundary", "floor_wall"):
        assert out["pred"][family] == pytest.approx(out["gt"][family], rel=1e-5, abs=1e-5)


def test_streaming_in_different_batches_equals_one_pass(synth):
    batch, _ = synth
    tasks = ["semseg", "depth", "normals"]

    def part(idx):
        sub = {k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx]) for k, v in batch.items()}
        preds = {
            "semseg": torch.nn.functional.one_hot(sub["semseg"], 13).permute(0, 3, 1, 2).float(),
            "depth": sub["depth"] * 1.1 + 0.05 * torch.sin(torch.arange(80.0)),
            "normals": _rotate_towards(sub["normals"], 7.0),
        }
        return preds, sub

    one = CoherenceMetrics(tasks, "nyud", {"semseg": 13})
    one.update(*part([0, 1, 2, 3]))
    split = CoherenceMetrics(tasks, "nyud", {"semseg": 13})
    split.update(*part([0]))
    split.update(*part([1, 2, 3]))
    a, b = one.compute(), split.compute()
    assert a.keys() == b.keys() == {"pred", "gt"}
    for source in a:
        for family in a[source]:
            assert b[source][family] == pytest.approx(a[source][family], rel=1e-12, abs=1e-12), (source, family)
    assert a["pred"]["depth_normal"]["mean"] > a["gt"]["depth_normal"]["mean"] + 1


# ------------------------------------------------------------------------------------ floor / wall


@pytest.mark.parametrize("pitch", [0.0, 12.0, 30.0])
def test_floor_wall_gravity(pitch):
    _, normals, labels, _, _ = _tilted_room(pitch)
    level = FloorWallAgreement([FLOOR], [WALL], gravity="level")
    level.update(labels, normals)
    r = level.compute()
    # a level-camera assumption adds the camera tilt to both angles
    assert float(r["floor_mean"]) == pytest.approx(pitch, abs=1e-3)
    assert float(r["wall_mean"]) == pytest.approx(pitch, abs=1e-3)
    est = FloorWallAgreement([FLOOR], [WALL])
    est.update(labels, normals)
    r = est.compute()
    assert float(r["floor_mean"]) < 0.005 and float(r["wall_mean"]) < 0.005  # the level prior's pull
    flipped = FloorWallAgreement([FLOOR], [WALL])
    flipped.update(labels, torch.where(labels[:, None] == FLOOR, -normals, normals))
    assert float(flipped.compute()["floor_mean"]) > 170  # a floor facing down is wrong, not "parallel"


def test_tilted_walls_raise_the_wall_error():
    _, normals, labels, _, _ = _tilted_room(12.0)
    m = FloorWallAgreement([FLOOR], [WALL])
    m.update(labels, torch.where(labels[:, None] == WALL, _rotate_towards(normals, 20.0), normals))
    r = m.compute()
    assert 3.0 < float(r["wall_mean"]) <= 20.0 + 1e-6


def test_floor_wall_ids_of_the_class_tables():
    assert floor_wall_ids("nyud", 40) == ((1, 19), (0,))
    assert floor_wall_ids("nyud", 13) == ((4,), (11,))
    assert floor_wall_ids("nyuv2_13", 13) == ((4,), (11,))
    assert floor_wall_ids("pascal", 21) is None


# -------------------------------------------------------------------------------------- boundaries


def _halves(column: int, shape=(40, 60)) -> np.ndarray:
    labels = np.zeros(shape, np.int64)
    labels[:, column:] = 1
    return labels


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 5])
def test_shifted_label_map_falls_as_the_tolerance_says(shift):
    a = semantic_boundaries(_halves(30))
    b = semantic_boundaries(_halves(30 + shift))
    counts = boundary_counts(a, b, radius=2.2)
    expected = 40 if shift <= 2 else 0  # straight boundaries 40 px long: all within 2.2 px, or none
    assert counts.tolist() == [expected, 40, expected, 40]


def test_boundary_agreement_of_a_label_map_with_itself():
    labels = torch.from_numpy(_halves(30))[None]
    normals = torch.zeros(1, 3, 40, 60)
    normals[:, 2] = -1.0
    right = torch.from_numpy(_halves(30)).bool()
    normals[0, :, right] = torch.tensor([0.6, 0.0, -0.8])[:, None]  # a 37° crease at the label boundary
    m = BoundaryAgreement(max_dist=0.03)
    m.update(labels, normals=normals)
    r = m.compute()  # thinning the 2-px normal-edge band shortens it by an end pixel: 39 of 40 pixels
    assert float(r["semantic_matched"]) >= 97.5 and float(r["geometric_matched"]) == 100.0
    shifted = BoundaryAgreement(max_dist=0.03)  # radius 0.03 × 72.1 = 2.2 px
    shifted.update(torch.from_numpy(_halves(20))[None], normals=normals)
    assert float(shifted.compute()["f"]) == 0.0


def test_semantic_boundaries_are_seg2bmap_without_ignored_pairs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (30, 40))
    np.testing.assert_array_equal(semantic_boundaries(labels), seg2bmap(labels))


def test_ignored_labels_make_no_boundaries():
    labels = _halves(30)
    labels[:, 10:15] = 255
    assert not semantic_boundaries(labels)[:, 8:15].any()
    assert semantic_boundaries(labels)[:, 29].all()


# ------------------------------------------------------------------------------------------- real


def test_real_nyuv2_ground_truth_is_not_perfectly_coherent(shared_data, synth):
    """Real NYUv2 labels against real depth: walls and floors do not share one vertical as the generator's do."""
    ids = ["0001", "0002", "0009", "0014"]
    root = shared_data / "nyudv2_mini" / "test"
    mm = [np.asarray(Image.open(root / "depth" / f"{i}.png")) for i in ids]
    depth = torch.stack([torch.from_numpy(d / 1000.0)[None] for d in mm])
    raw = np.stack([np.asarray(Image.open(root / "semseg40" / f"{i}.png")).astype(np.int64) for i in ids])
    labels = torch.from_numpy(np.where(raw == 0, 255, raw - 1))
    cams = [frame_camera("nyud", (480, 640))] * len(ids)
    normals, _ = normals_from_depth(depth, cams, step=3)  # mm-quantised depth needs a wider baseline
    real = FloorWallAgreement(*floor_wall_ids("nyud", 40))
    real.update(labels, normals)
    r = real.compute()
    batch, _ = synth
    synthetic = FloorWallAgreement(*floor_wall_ids("nyud", 13))
    synthetic.update(batch["semseg"], batch["normals"])
    s = synthetic.compute()
    assert float(r["wall_mean"]) > 5.0 and float(r["floor_mean"]) > 5.0
    assert float(s["wall_mean"]) < 0.1 and float(s["floor_mean"]) < 0.1


def test_real_normals_disagree_with_real_depth(shared_data):
    frame = shared_data / "nyud_mtrefinenet_examples" / "000433"
    depth = torch.from_numpy(np.asarray(Image.open(frame / "depth.png")) / 5000.0)[None, None]
    code = np.asarray(Image.open(frame / "normals.png")).astype(np.float64) * 2 / 255 - 1
    valid = np.abs(np.linalg.norm(code, axis=-1) - 1) < 0.05  # mid-grey = invalid
    # this file stores (x, z, −y) of our camera frame (checked on its floor and walls)
    cam_frame = np.stack([code[..., 0], -code[..., 2], code[..., 1]], -1) * valid[..., None]
    m = DepthNormalConsistency(depth_jump=45.0, step=3)
    m.update(torch.from_numpy(cam_frame).permute(2, 0, 1)[None], depth, [frame_camera("nyud", (480, 640))])
    r = m.compute()
    assert float(r["mean"]) > 10.0 and float(r["within_30"]) < 95.0


# -------------------------------------------------------------------------------------- container


def test_task_sets_and_families():
    assert build_coherence(["semseg", "edge"], "nyud", {"semseg": 40}) is None
    assert build_coherence(["semseg", "depth", "normals"], "nyud", {"semseg": 40}, False) is None
    full = build_coherence(["semseg", "depth", "normals", "edge"], "nyud", {"semseg": 40})
    assert full.families == ("depth_normal", "boundary", "floor_wall")
    pascal = build_coherence(["semseg", "normals", "sal"], "pascal", {"semseg": 21})
    assert pascal.families == ("boundary",) and pascal.metrics["pred"]["boundary"].max_dist == 0.0075
    city = build_coherence(["semseg", "depth"], "cityscapes", {"semseg": 19})
    assert city is None
    city = build_coherence(
        ["semseg", "depth"], "cityscapes", {"semseg": 19}, {"intrinsics": [2262.5, 2265.3, 1096.9, 513.1],
                                                           "intrinsics_size": [1024, 2048]}
    )
    assert city.families == ("boundary",) and city.use_depth
    with pytest.raises(ValueError, match="intrinsics_size"):
        build_coherence(["depth", "normals"], "nyud", None, {"intrinsics": [500, 500, 320, 240]})
    with pytest.raises(ValueError, match="sources"):
        CoherenceMetrics(["depth", "normals"], "nyud", sources=["labels"])


def test_padding_is_ignored_and_the_camera_follows_the_valid_box(synth):
    batch, _ = synth
    padded = {
        "image": torch.zeros(4, 3, 70, 96),
        "meta": [{"size": (60, 80), "valid_box": (4, 10, 60, 80)} for _ in range(4)],
    }
    for key, fill in (("semseg", 255), ("depth", 0.0), ("normals", 0.0)):
        x = batch[key]
        out = torch.full((*x.shape[:-2], 70, 96), fill, dtype=x.dtype)
        out[..., 4:64, 10:90] = x
        padded[key] = out
    m = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13}, sources=["gt"])
    m.update({"depth": torch.zeros(4, 1, 70, 96)}, padded)
    ref = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13}, sources=["gt"])
    ref.update({"depth": torch.zeros(4, 1, 60, 80)}, batch)
    got, want = m.compute()["gt"], ref.compute()["gt"]
    for family in want:
        assert got[family] == pytest.approx(want[family], rel=1e-4, abs=1e-6), family  # float32 geometry


def test_predict_without_targets_reports_predictions_only(synth):
    batch, _ = synth
    m = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13})
    logits = torch.nn.functional.one_hot(batch["semseg"], 13).permute(0, 3, 1, 2).float()
    m.update({"semseg": logits, "depth": batch["depth"], "normals": batch["normals"]}, {"image": batch["image"]})
    out = m.compute()
    assert list(out) == ["pred"] and set(out["pred"]) == {"depth_normal", "boundary", "floor_wall"}


def _ddp_share(rank: int, world: int) -> dict:
    batch, _ = _synth_batch(2, (40, 56), first=rank)
    m = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13}, sources=["gt"])
    m.update({"depth": batch["depth"]}, batch)
    return m.compute()


def test_two_process_sync_equals_single_process(gloo_ranks):
    ranks = gloo_ranks(_ddp_share, world=2, timeout=120)
    single = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": 13}, sources=["gt"])
    for first in (0, 1):
        batch, _ = _synth_batch(2, (40, 56), first=first)
        single.update({"depth": batch["depth"]}, batch)
    want = single.compute()["gt"]
    for result in ranks:
        for family, values in want.items():
            assert result["gt"][family] == pytest.approx(values, rel=1e-9, abs=1e-12), family


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.0, 4.4, 5.0])
def test_grid_pair_matching_equals_kdtree_matching(radius):
    """The grid-offset pair graph of the boundary agreement gives odsF's cKDTree matching counts exactly."""
    from densemtl.metrics.boundary import match_counts
    from densemtl.metrics.coherence import _grid_match_counts

    rng = np.random.default_rng(int(radius * 10))
    for density in (0.0, 0.02, 0.1, 0.4):
        a = rng.random((37, 53)) < density
        b = rng.random((37, 53)) < 0.05
        expected = np.asarray(match_counts(a, b, radius), dtype=np.int64)
        np.testing.assert_array_equal(_grid_match_counts(a, b, radius), expected)
        np.testing.assert_array_equal(_grid_match_counts(b, a, radius), expected[[2, 3, 0, 1]])


def test_argmax_of_classes_equals_torch_argmax():
    """The running-maximum argmax of the predicted labels equals ``torch.argmax``: ties, ±inf and NaN."""
    from densemtl.metrics.coherence import _argmax_classes

    scores = torch.randint(0, 3, (3, 5, 6, 7)).float()  # many ties: the first maximum wins
    scores[0, 2, 3, 4] = float("nan")
    scores[1, :, 1, 1] = float("nan")
    scores[2, 3, 2, 2], scores[2, 1, 4, 4] = float("inf"), -float("inf")
    for s in (scores, scores.to(memory_format=torch.channels_last)):
        labels = _argmax_classes(s)
        assert torch.equal(labels, s.argmax(1))
    assert int(labels[0, 3, 4]) == 2 and int(labels[1, 1, 1]) == 0
