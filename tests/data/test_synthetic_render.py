"""Rendered synthetic scenes are geometrically consistent: depth, normals, edges and labels agree."""

from __future__ import annotations

import numpy as np
import pytest

from densemtl.data.nyud import NYU13_CLASSES
from densemtl.data.pascal import PART_NAME_TO_CLASS, PERSON_CLASS_ID, VOC_CLASSES, human_parts_from_objects
from densemtl.data.synthetic.camera import Camera, Intrinsics, look_rotation
from densemtl.data.synthetic.generate import image_rng
from densemtl.data.synthetic.render import Scene, render
from densemtl.data.synthetic.synth_nyud import render_nyud_image
from densemtl.data.synthetic.synth_pascal import render_pascal_image
from densemtl.data.synthetic.textures import make_material

# NYU colour intrinsics at 480x640 (spec/protocols.md §7.1), restated here independently of the code
FX, FY, CX, CY = 518.86, 519.47, 325.58, 253.74


def intrinsics_for(h: int, w: int) -> tuple[float, float, float, float]:
    return FX * w / 640, FY * h / 480, CX * w / 640, CY * h / 480


def normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """Back-project z-depth with the NYU intrinsics; normals from cross products of central differences."""
    h, w = depth.shape
    fx, fy, cx, cy = intrinsics_for(h, w)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    du = np.zeros_like(pts)
    dv = np.zeros_like(pts)
    du[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    dv[1:-1] = pts[2:] - pts[:-2]
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    facing = (n * pts).sum(-1) > 0  # make them face the camera (n . ray < 0)
    n[facing] *= -1
    return n


def locally_smooth(depth: np.ndarray, tol: float = 2e-3) -> np.ndarray:
    """Pixels where the back-projected surface has no crease: small second differences in u and v."""
    h, w = depth.shape
    fx, fy, cx, cy = intrinsics_for(h, w)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1)
    ok = np.zeros((h, w), dtype=bool)
    ddu = np.linalg.norm(pts[1:-1, 2:] + pts[1:-1, :-2] - 2 * pts[1:-1, 1:-1], axis=-1)
    ddv = np.linalg.norm(pts[2:, 1:-1] + pts[:-2, 1:-1] - 2 * pts[1:-1, 1:-1], axis=-1)
    ok[1:-1, 1:-1] = (ddu < tol * depth[1:-1, 1:-1]) & (ddv < tol * depth[1:-1, 1:-1])
    return ok


def interior(ids: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood lies on one instance and inside the image."""
    ok = np.zeros(ids.shape, dtype=bool)
    c = ids[1:-1, 1:-1]
    inner = np.ones(c.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= ids[1 + dy : ids.shape[0] - 1 + dy, 1 + dx : ids.shape[1] - 1 + dx] == c
    ok[1:-1, 1:-1] = inner
    return ok


def test_depth_of_an_empty_room_matches_the_planes():
    h, w = 48, 64
    size = np.array([6.0, 8.0, 3.0])
    pos = np.array([2.0, 3.0, 1.5])
    plain = make_material(np.random.default_rng(0), "plain", np.full(3, 0.5))
    scene = Scene(size, [4, 2, 11, 11, 11, 11], [1, 2, 3, 4, 5, 6], [plain] * 6)
    cam = Camera(Intrinsics.nyu((h, w)), look_rotation(0.0, 0.0, 0.0), pos)  # looking along +x, level
    out = render(scene, cam, np.random.default_rng(0), shadows=False)
    fx, fy, cx, cy = intrinsics_for(h, w)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b = (u - cx) / fx, (v - cy) / fy  # camera right = world -y, camera down = world -z, forward = +x
    cands = np.stack(
        [
            np.where(b > 0, pos[2] / np.where(b > 0, b, 1), np.inf),  # floor z = 0
            np.where(b < 0, (size[2] - pos[2]) / np.where(b < 0, -b, 1), np.inf),  # ceiling
            np.full((h, w), size[0] - pos[0]),  # far wall x = 6: fronto-parallel, z-depth 4
            np.where(a > 0, pos[1] / np.where(a > 0, a, 1), np.inf),  # wall y = 0 (to the right)
            np.where(a < 0, (size[1] - pos[1]) / np.where(a < 0, -a, 1), np.inf),  # wall y = 8
        ]
    )
    np.testing.assert_allclose(out.depth, cands.min(0), rtol=1e-5)
    assert out.depth[h // 2 - 2, w // 2] == pytest.approx(4.0, rel=1e-6)
    # labels follow the nearest plane: floor 4, ceiling 2, walls 11
    expect = np.array([4, 2, 11, 11, 11])[cands.argmin(0)]
    assert (out.label == expect).mean() > 0.99  # ties only on the room's corner lines
    # normals of the planes in the camera frame
    np.testing.assert_allclose(
        out.normals[cands.argmin(0) == 2], np.tile([0, 0, -1], ((cands.argmin(0) == 2).sum(), 1)), atol=1e-6
    )
    floor = cands.argmin(0) == 0
    np.testing.assert_allclose(out.normals[floor], np.tile([0, -1, 0], (floor.sum(), 1)), atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_normals_equal_back_projected_depth_normals(index):
    img = render_nyud_image(image_rng(7, "train", index), (96, 128))
    assert img.depth.min() > 0
    ref = normals_from_depth(img.depth.astype(np.float64))
    keep = interior(img.instance) & locally_smooth(img.depth.astype(np.float64))
    # away from edges and creases (box corners inside one object): curved surfaces keep a small error
    cos = np.clip((ref[keep] * img.normals[keep]).sum(-1), -1, 1)
    angle = np.degrees(np.arccos(cos))
    assert keep.mean() > 0.5
    assert np.median(angle) < 0.5
    assert np.mean(angle < 3.0) > 0.98
    np.testing.assert_allclose(np.linalg.norm(img.normals, axis=-1), 1.0, atol=1e-5)
    # normals face the camera
    h, w = img.depth.shape
    fx, fy, cx, cy = intrinsics_for(h, w)
    v, u = np.mgrid[0:h, 0:w]
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((h, w))], axis=-1)
    assert ((img.normals * rays).sum(-1) <= 1e-6).all()


def test_edges_are_instance_boundaries_and_cover_label_changes():
    img = render_nyud_image(image_rng(3, "val", 0), (60, 80))
    inst = img.instance
    expect = np.zeros(inst.shape, dtype=bool)
    expect[:, :-1] |= np.diff(inst, axis=1) != 0
    expect[:-1, :] |= np.diff(inst, axis=0) != 0
    np.testing.assert_array_equal(img.edge.astype(bool), expect)
    sem_change = np.zeros(inst.shape, dtype=bool)
    sem_change[:, :-1] |= np.diff(img.semseg, axis=1) != 0
    sem_change[:-1, :] |= np.diff(img.semseg, axis=0) != 0
    assert sem_change.any()
    assert (img.edge.astype(bool) >= sem_change).all()  # every class change is an edge
    assert set(np.unique(img.edge)) == {0, 1}


def test_every_nyud_class_appears_in_a_small_set():
    seen = set()
    for i in range(30):
        seen |= set(np.unique(render_nyud_image(image_rng(0, "train", i), (32, 40)).semseg).tolist())
    assert seen == set(range(len(NYU13_CLASSES)))


def test_invalid_depth_is_kinect_like():
    img = render_nyud_image(image_rng(0, "train", 1), (60, 80), invalid_depth=True)
    invalid = img.depth == 0
    assert invalid[:, 0].all()  # the left border band
    assert 0.02 < invalid.mean() < 0.6
    assert np.isfinite(img.depth).all() and (img.depth[~invalid] > 0.3).all()


def test_pascal_parts_saliency_and_labels_are_consistent():
    classes, part_classes = set(), set()
    for i in range(100):
        img = render_pascal_image(image_rng(0, "train", i), (32, 40))
        valid = img.semseg != 255
        classes |= set(np.unique(img.semseg[valid]).tolist())
        fg = img.sal == 255
        # saliency is exactly the foreground objects (outside the void band of semseg)
        np.testing.assert_array_equal(fg[valid], img.semseg[valid] > 0)
        union = np.zeros(img.sal.shape, dtype=bool)
        for obj in img.objects:
            assert 1 <= obj.class_id <= 20
            assert not (union & obj.mask).any()  # instances do not overlap
            union |= obj.mask
            for name, mask in obj.parts:
                assert obj.class_id == PERSON_CLASS_ID and name in PART_NAME_TO_CLASS
                assert not (mask & ~obj.mask).any()  # parts lie inside their person
        np.testing.assert_array_equal(union, fg)
        parts, has = human_parts_from_objects(img.objects, img.sal.shape)
        if has:
            person = np.zeros(img.sal.shape, dtype=bool)
            for obj in img.objects:
                if obj.class_id == PERSON_CLASS_ID:
                    person |= obj.mask
            assert not ((parts > 0) & ~person).any()
            part_classes |= set(np.unique(parts).tolist())
        assert (img.label_map >= 1).all() and (img.label_map <= 459).all()
    assert classes == set(range(len(VOC_CLASSES)))
    assert part_classes == set(range(7))
