"""Ray-primitive intersections, culling and camera of the synthetic renderer, against hand-derived values."""

from __future__ import annotations

import numpy as np
import pytest

from densemtl.data.synthetic.camera import Camera, Intrinsics, look_rotation
from densemtl.data.synthetic.geometry import Box, Cylinder, Ellipsoid, intersect_room, rotation_x, rotation_z
from densemtl.data.synthetic.raycast import DirectionIndex, closest_hit, occluded

ORIGIN = np.zeros(3)


def _hit(shape, d, origin=ORIGIN):
    t, n = shape.intersect(np.asarray(origin, float), np.asarray([d], float))
    return float(t[0]), n[0]


def test_box_front_face_and_miss():
    box = Box(np.array([0.0, 0.0, 5.0]), np.eye(3), np.array([1.0, 1.0, 1.0]))
    t, n = _hit(box, [0, 0, 1])
    assert t == pytest.approx(4.0)
    np.testing.assert_allclose(n, [0, 0, -1])
    t, n = _hit(box, [1, 0, 0], origin=[-3, 0.5, 5.5])  # from the side
    assert t == pytest.approx(2.0)
    np.testing.assert_allclose(n, [-1, 0, 0])
    assert np.isinf(_hit(box, [0.3, 0, 1])[0])  # x = 1.2 at the front face z = 4, x = 1 only at z = 3.3 < 4


def test_rotated_box_corner_distance():
    # a unit cube turned 45 degrees about z, centred 5 m along x: the ray along x meets its edge at 5 - sqrt(2)
    box = Box(np.array([5.0, 0.0, 0.0]), rotation_z(np.pi / 4), np.array([1.0, 1.0, 1.0]))
    t, n = _hit(box, [1, 0, 0.0])
    assert t == pytest.approx(5 - np.sqrt(2))
    t, n = _hit(box, [1, 0.05, 0.0])
    assert n[0] < 0 and abs(np.linalg.norm(n) - 1) < 1e-12


def test_sphere_and_ellipsoid():
    sphere = Ellipsoid(np.array([0.0, 0.0, 10.0]), np.eye(3), np.full(3, 2.0))
    t, n = _hit(sphere, [0, 0, 2.0])  # direction of length 2: t is in its units
    assert t == pytest.approx(4.0)
    np.testing.assert_allclose(n, [0, 0, -1], atol=1e-12)
    ell = Ellipsoid(np.array([0.0, 0.0, 10.0]), rotation_x(np.pi / 2), np.array([1.0, 3.0, 0.5]))
    # local y (radius 3) now points along world z: the near point is 10 - 3
    assert _hit(ell, [0, 0, 1])[0] == pytest.approx(7.0)
    # grazing ray 45 deg off a sphere: hit iff the closest approach is below the radius
    d = np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    assert np.isinf(_hit(sphere, d)[0])  # closest approach 10/sqrt(2) > 2


def test_cylinder_side_and_cap():
    cyl = Cylinder(np.array([3.0, 0.0, 0.0]), np.eye(3), 0.5, 1.0)  # axis z, radius 0.5, height 2
    t, n = _hit(cyl, [1, 0, 0])
    assert t == pytest.approx(2.5)
    np.testing.assert_allclose(n, [-1, 0, 0], atol=1e-12)
    t, n = _hit(cyl, [0, 0, -1], origin=[3.2, 0.1, 4.0])  # from above onto the top cap z = 1
    assert t == pytest.approx(3.0)
    np.testing.assert_allclose(n, [0, 0, 1], atol=1e-12)
    assert np.isinf(_hit(cyl, [1, 0, 0], origin=[0, 0, 1.5])[0])  # passes above


def test_room_exit_faces():
    size = np.array([4.0, 6.0, 3.0])
    o = np.array([1.0, 2.0, 1.5])
    d = np.array([[0, 0, -1], [0, 0, 1], [-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [1, 1, 0]], float)
    t, face = intersect_room(size, o, d)
    np.testing.assert_allclose(t, [1.5, 1.5, 1.0, 3.0, 2.0, 4.0, 3.0])
    assert face.tolist() == [0, 1, 2, 3, 4, 5, 3]


def test_direction_index_is_conservative():
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(20000, 3))
    bins = DirectionIndex(ORIGIN, dirs)
    for _ in range(20):
        centre = rng.normal(size=3) * 4
        radius = rng.uniform(0.1, 2.0)
        unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        along = unit @ centre
        miss_dist2 = centre @ centre - along**2
        truth = np.flatnonzero(((along > 0) & (miss_dist2 <= radius**2)) | (centre @ centre <= radius**2))
        got = bins.query(centre, radius)
        assert set(truth.tolist()) <= set(got.tolist())


def test_closest_hit_and_occlusion_agree_with_brute_force():
    rng = np.random.default_rng(1)
    shapes = [
        Box(rng.uniform(-3, 3, 3) + [0, 0, 8], rotation_z(rng.uniform(0, 3)), rng.uniform(0.2, 1, 3)) for _ in range(6)
    ] + [Ellipsoid(rng.uniform(-3, 3, 3) + [0, 0, 8], np.eye(3), rng.uniform(0.2, 1, 3)) for _ in range(4)]
    dirs = np.concatenate([rng.uniform(-0.6, 0.6, (5000, 2)), np.ones((5000, 1))], axis=1)
    t = np.full(5000, np.inf)
    index = np.full(5000, -1)
    normals = np.zeros((5000, 3))
    closest_hit(shapes, ORIGIN, dirs, t, index, normals)
    brute = np.stack([s.intersect(ORIGIN, dirs)[0] for s in shapes])
    np.testing.assert_allclose(t, brute.min(0))
    hit = np.isfinite(t)
    assert (index[hit] == brute.argmin(0)[hit]).all()
    # points beyond the shapes, seen from the origin as a light: shadowed iff some shape is hit before them
    points = dirs * 20.0
    np.testing.assert_array_equal(occluded(shapes, ORIGIN, points), np.isfinite(brute.min(0)))


def test_nyu_intrinsics_and_z_depth_rays():
    intr = Intrinsics.nyu((240, 320))
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((259.43, 259.735, 162.79, 126.87))
    cam = Camera(intr, look_rotation(0.3, -0.2, 0.05), np.array([1.0, 2.0, 1.5]))
    d = cam.world_directions()
    forward = cam.rotation[:, 2]
    np.testing.assert_allclose(d @ forward, 1.0)  # unit z in the camera frame: t is z-depth
    r = cam.rotation
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert r[2, 1] < 0  # image "down" points down in the world for a small roll


def test_query_many_matches_single_queries():
    from densemtl.data.synthetic.raycast import query_many

    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(5000, 3))
    bins = DirectionIndex(ORIGIN, dirs)
    centres = rng.normal(size=(30, 3)) * 3
    centres[0] = [0.1, 0, 0]  # the origin lies inside this one
    radii = rng.uniform(0.05, 1.5, 30)
    many = query_many(bins, centres, radii)
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    for c, r, got in zip(centres, radii, many):
        dist = np.linalg.norm(c)
        if dist <= r:
            assert len(got) == len(dirs)
            continue
        cos = unit @ (c / dist)
        half = np.arcsin(r / dist)
        must = set(np.flatnonzero(cos >= np.cos(half)).tolist())  # rays that pass within r
        may = set(np.flatnonzero(cos >= np.cos(half * 1.01 + 1e-3)).tolist())  # a slightly wider cone
        assert must <= set(got.tolist()) <= may
        assert len(got) == len(set(got.tolist()))  # no duplicates


def test_closest_hit_image_matches_brute_force_with_shapes_beside_and_behind_the_camera():
    from densemtl.data.synthetic.raycast import closest_hit_image, screen_rects

    rng = np.random.default_rng(5)
    h, w = 40, 56
    cam = Camera(Intrinsics.nyu((h, w)), look_rotation(0.4, -0.1, 0.03), np.array([2.0, 2.0, 1.2]))
    shapes = [
        Box(cam.position + rng.uniform(-2.5, 2.5, 3), rotation_z(rng.uniform(0, 3)), rng.uniform(0.1, 0.8, 3))
        for _ in range(10)
    ]
    shapes += [
        Ellipsoid(cam.position + rng.uniform(-2.5, 2.5, 3), np.eye(3), rng.uniform(0.1, 0.6, 3)) for _ in range(4)
    ]
    shapes += [Cylinder(cam.position + rng.uniform(-2.5, 2.5, 3), rotation_x(0.3), 0.3, 0.7) for _ in range(4)]
    # one box straddling the image plane (corners behind the camera), one entirely behind it
    forward = cam.rotation[:, 2]
    shapes.append(Box(cam.position + 0.3 * forward + 0.6 * cam.rotation[:, 0], np.eye(3), np.array([0.4, 0.4, 0.4])))
    shapes.append(Box(cam.position - 2.0 * forward, np.eye(3), np.array([0.3, 0.3, 0.3])))
    dirs = cam.world_directions()
    brute = np.stack([s.intersect(cam.position, dirs)[0] for s in shapes])  # every shape, every ray
    t = np.full(h * w, np.inf)
    index = np.full(h * w, -1)
    closest_hit_image(shapes, cam, dirs.reshape(h, w, 3), t.reshape(h, w), index.reshape(h, w))
    np.testing.assert_array_equal(t, brute.min(0))
    hit = np.isfinite(t)
    assert hit.mean() > 0.2
    assert (index[hit] == brute.argmin(0)[hit]).all()
    # every hit pixel lies inside its shape's rectangle; the shape behind the camera has an empty one
    rects = screen_rects(shapes, cam, margin=0)
    rows, cols = np.divmod(np.arange(h * w), w)
    for k in range(len(shapes)):
        mine = np.isfinite(brute[k])
        r0, r1, c0, c1 = rects[k]
        assert ((rows[mine] >= r0) & (rows[mine] < r1) & (cols[mine] >= c0) & (cols[mine] < c1)).all()
    assert (rects[-1] == 0).all() and np.isfinite(brute[-2]).any()


def test_local_normals_are_the_outward_face_normals():
    box = Box(np.zeros(3), np.eye(3), np.array([1.0, 2.0, 0.5]))
    p = np.array([[1.0, 0.3, 0.1], [0.2, -2.0, 0.4], [-0.5, 1.0, -0.5]])
    np.testing.assert_array_equal(box.local_normal(p), [[1, 0, 0], [0, -1, 0], [0, 0, -1]])
    cyl = Cylinder(np.zeros(3), np.eye(3), 0.5, 1.0)
    p = np.array([[0.3, 0.4, 0.2], [0.1, 0.1, -1.0]])  # on the side (rho = 0.5), on the bottom cap
    np.testing.assert_allclose(cyl.local_normal(p), [[0.6, 0.8, 0], [0, 0, -1]])
    ell = Ellipsoid(np.zeros(3), np.eye(3), np.array([2.0, 1.0, 1.0]))
    p = np.array([[np.sqrt(2), np.sqrt(0.5), 0.0]])  # (x/2)^2 + y^2 = 1: gradient (x/4, y, 0)
    g = np.array([np.sqrt(2) / 4, np.sqrt(0.5), 0.0])
    np.testing.assert_allclose(ell.local_normal(p)[0], g / np.linalg.norm(g))
