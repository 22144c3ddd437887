"""Closest-hit and shadow queries over many primitives, with culling so that each is tested on few rays.

Every query shares one ray origin, and a primitive can only be hit by rays that pass through its bounding
box (``Shape.half_extent``). Three cullings, all conservative (tests compare them with brute force):

* camera rays (:func:`closest_hit_image`, used by the renderer): the box is projected into the image
  (clipped at the image plane, :func:`projected_bounds`) and the primitive is intersected with the pixels
  of that rectangle only, as contiguous image slices;
* shadow rays (:func:`occluded`): rays are cast *from* each point light towards the shaded points and
  bucketed on a cube around the light (:class:`CubeIndex`); each primitive gathers the rays of the cells
  its projected box overlaps, keeps those inside the exact face rectangle and ending beyond its bounding
  sphere;
* general rays (:func:`closest_hit`, and :func:`occluded` with bounding ``groups``): bounding-sphere cones
  over an azimuth x elevation bucketing (:class:`DirectionIndex`, :func:`query_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from densemtl.data.synthetic.camera import Camera
from densemtl.data.synthetic.geometry import T_MIN, Shape

__all__ = [
    "CubeIndex",
    "DirectionIndex",
    "ShapeBounds",
    "closest_hit",
    "closest_hit_image",
    "frame_corners",
    "group_shapes",
    "occluded",
    "projected_bounds",
    "query_many",
    "screen_rects",
]


class DirectionIndex:
    """Rays from one origin, bucketed by direction for cone queries.

    Args:
        origin: (3,) common ray origin.
        dirs: (N, 3) ray directions (any length).
        n_el: elevation cells over [-90, 90] degrees.
        n_az: azimuth cells over [-180, 180] degrees.
    """

    def __init__(self, origin: np.ndarray, dirs: np.ndarray, n_el: int = 48, n_az: int = 96) -> None:
        self.origin = np.asarray(origin, dtype=np.float64)
        norm = np.sqrt(np.einsum("ij,ij->i", dirs, dirs))
        self.unit = dirs / np.maximum(norm, 1e-12)[:, None]
        self.unit32 = self.unit.astype(np.float32)
        self.n_el, self.n_az = n_el, n_az
        az = np.arctan2(self.unit[:, 1], self.unit[:, 0])
        el = np.arcsin(np.clip(self.unit[:, 2], -1.0, 1.0))
        az_bin = np.minimum(((az + np.pi) / (2 * np.pi) * n_az).astype(np.int64), n_az - 1)
        el_bin = np.minimum(((el + np.pi / 2) / np.pi * n_el).astype(np.int64), n_el - 1)
        cell = el_bin * n_az + az_bin
        cell = cell.astype(np.int16) if n_el * n_az < 2**15 else cell  # small ints: radix sort
        self.order = np.argsort(cell, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=n_el * n_az))])

    def query(self, center: np.ndarray, radius: float) -> np.ndarray:
        """Sorted indices of the rays that pass within ``radius`` of ``center`` (conservative)."""
        rel = np.asarray(center, dtype=np.float64) - self.origin
        dist = float(np.sqrt(rel @ rel))
        radius = radius * 1.001 + 1e-4
        if dist <= radius:
            return np.arange(len(self.unit))
        axis = rel / dist
        half = float(np.arcsin(radius / dist))
        el = float(np.arcsin(np.clip(axis[2], -1.0, 1.0)))
        el_lo, el_hi = el - half, el + half
        rows = range(
            max(0, int((el_lo + np.pi / 2) / np.pi * self.n_el)),
            min(self.n_el - 1, int((el_hi + np.pi / 2) / np.pi * self.n_el)) + 1,
        )
        cos_el = min(np.cos(el_lo), np.cos(el_hi)) if el_lo > -np.pi / 2 and el_hi < np.pi / 2 else 0.0
        if cos_el <= np.sin(half) + 1e-9:
            spans = [(0, self.n_az - 1)]
        else:
            daz = float(np.arcsin(min(1.0, np.sin(half) / cos_el)))
            az = float(np.arctan2(axis[1], axis[0]))
            lo = int(np.floor((az - daz + np.pi) / (2 * np.pi) * self.n_az))
            hi = int(np.floor((az + daz + np.pi) / (2 * np.pi) * self.n_az))
            if hi - lo >= self.n_az - 1:
                spans = [(0, self.n_az - 1)]
            elif lo < 0:
                spans = [(0, hi), (lo + self.n_az, self.n_az - 1)]
            elif hi >= self.n_az:
                spans = [(lo, self.n_az - 1), (0, hi - self.n_az)]
            else:
                spans = [(lo, hi)]
        rows_arr = np.arange(rows.start, rows.stop)
        lo = np.concatenate([self.starts[rows_arr * self.n_az + a0] for a0, _ in spans])
        hi = np.concatenate([self.starts[rows_arr * self.n_az + a1 + 1] for _, a1 in spans])
        lens = hi - lo
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        shift = np.repeat(lo - (np.cumsum(lens) - lens), lens)
        cand = self.order[np.arange(total) + shift]
        u = self.unit[cand]
        cos = u[:, 0] * axis[0] + u[:, 1] * axis[1] + u[:, 2] * axis[2]
        return cand[cos >= np.cos(half) - 1e-6]


def _multi_arange(lo: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], lo[i] + lens[i])`` for all i, without a Python loop."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.arange(total) + np.repeat(lo - (np.cumsum(lens) - lens), lens)


def query_many(bins: DirectionIndex, centres: np.ndarray, radii: np.ndarray) -> list[np.ndarray]:
    """:meth:`DirectionIndex.query` for many spheres at once (vectorised over spheres).

    Args:
        bins: the bucketed rays.
        centres: (G, 3) sphere centres.
        radii: (G,) sphere radii.

    Returns:
        For each sphere, the indices of the rays that may pass within its radius (conservative).
    """
    g_count = len(centres)
    n_el, n_az = bins.n_el, bins.n_az
    rel = centres - bins.origin
    dist = np.sqrt((rel * rel).sum(1))
    radii = radii * 1.001 + 1e-4
    inside = dist <= radii
    safe = np.where(inside, 1.0, dist)
    axis = rel / safe[:, None]
    half = np.arcsin(np.clip(radii / safe, 0.0, 1.0))
    el = np.arcsin(np.clip(axis[:, 2], -1.0, 1.0))
    el_lo, el_hi = el - half, el + half
    row0 = np.clip(((el_lo + np.pi / 2) / np.pi * n_el).astype(np.int64), 0, n_el - 1)
    row1 = np.clip(((el_hi + np.pi / 2) / np.pi * n_el).astype(np.int64), 0, n_el - 1)
    pole = (el_lo <= -np.pi / 2) | (el_hi >= np.pi / 2)
    cos_el = np.where(pole, 0.0, np.minimum(np.cos(el_lo), np.cos(el_hi)))
    full = pole | (cos_el <= np.sin(half) + 1e-9)
    daz = np.arcsin(np.clip(np.sin(half) / np.where(full, 1.0, cos_el), 0.0, 1.0))
    az = np.arctan2(axis[:, 1], axis[:, 0])
    lo = np.floor((az - daz + np.pi) / (2 * np.pi) * n_az).astype(np.int64)
    hi = np.floor((az + daz + np.pi) / (2 * np.pi) * n_az).astype(np.int64)
    full |= hi - lo >= n_az - 1
    # up to two azimuth spans per sphere (wrapping around +-180 degrees)
    a0 = np.where(full, 0, np.where(lo < 0, 0, lo))
    a1 = np.where(full, n_az - 1, np.where(lo < 0, hi, np.where(hi >= n_az, n_az - 1, hi)))
    second = ~full & ((lo < 0) | (hi >= n_az))
    b0 = np.where(lo < 0, lo + n_az, 0)
    b1 = np.where(lo < 0, n_az - 1, hi - n_az)
    keep = ~inside
    span_g = np.concatenate([np.flatnonzero(keep), np.flatnonzero(keep & second)])
    span_a0 = np.concatenate([a0[keep], b0[keep & second]])
    span_a1 = np.concatenate([a1[keep], b1[keep & second]])
    nrows = np.maximum(row1[span_g] - row0[span_g] + 1, 0)
    seg_g = np.repeat(span_g, nrows)
    seg_r = np.repeat(row0[span_g], nrows) + _multi_arange(np.zeros(len(nrows), dtype=np.int64), nrows)
    seg_lo = bins.starts[seg_r * n_az + np.repeat(span_a0, nrows)]
    seg_hi = bins.starts[seg_r * n_az + np.repeat(span_a1, nrows) + 1]
    lens = seg_hi - seg_lo
    cand = bins.order[_multi_arange(seg_lo, lens)]
    cand_g = np.repeat(seg_g, lens)
    u = bins.unit32[cand]
    ax = axis.astype(np.float32)[cand_g]
    cos = u[:, 0] * ax[:, 0] + u[:, 1] * ax[:, 1] + u[:, 2] * ax[:, 2]
    ok = cos >= (np.cos(half) - 1e-5).astype(np.float32)[cand_g]
    cand, cand_g = cand[ok], cand_g[ok]
    order = np.argsort(cand_g, kind="stable")
    out = np.split(cand[order], np.cumsum(np.bincount(cand_g, minlength=g_count))[:-1])
    everything = np.arange(len(bins.unit))
    for g in np.flatnonzero(inside):
        out[g] = everything
    return out


def group_shapes(shapes: Sequence[Shape], keys: Sequence[int]) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Bounding spheres of groups of shapes (e.g. the primitives of one object instance).

    Args:
        shapes: primitives.
        keys: (len(shapes),) group key per shape.

    Returns:
        (centre (3,), radius, member indices) per group, in order of first appearance.
    """
    members: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(int(key), []).append(i)
    out = []
    for idx in members.values():
        centres = np.stack([shapes[i].center for i in idx])
        radii = np.array([shapes[i].bound_radius for i in idx])
        centre = centres.mean(axis=0)
        out.append((centre, float(np.max(np.linalg.norm(centres - centre, axis=1) + radii)), np.array(idx)))
    return out


def _member_rays(bins: DirectionIndex, rays: np.ndarray, shape: Shape) -> np.ndarray:
    """The rays of a group's candidates that may hit one member (direct cone test)."""
    rel = shape.center - bins.origin
    dist = float(np.sqrt(rel @ rel))
    radius = shape.bound_radius * 1.001 + 1e-4
    if dist <= radius:
        return rays
    axis = rel / dist
    u = bins.unit[rays]
    cos = u[:, 0] * axis[0] + u[:, 1] * axis[1] + u[:, 2] * axis[2]
    return rays[cos >= np.sqrt(max(0.0, 1.0 - (radius / dist) ** 2)) - 1e-6]


def _candidates(bins: DirectionIndex, shapes: Sequence[Shape], groups):
    """(shape index, candidate rays) for every shape that some ray may hit, group by group."""
    if groups is None:
        groups = [(s.center, s.bound_radius, np.array([k])) for k, s in enumerate(shapes)]
    if not groups:
        return
    centres = np.stack([g[0] for g in groups])
    radii = np.array([g[1] for g in groups], dtype=np.float64)
    for (_, _, idx), rays in zip(groups, query_many(bins, centres, radii)):
        if rays.size == 0:
            continue
        for k in idx:
            sub = rays if len(idx) == 1 or rays.size < 2000 else _member_rays(bins, rays, shapes[k])
            if sub.size:
                yield int(k), sub


def closest_hit(
    shapes: Sequence[Shape],
    origin: np.ndarray,
    dirs: np.ndarray,
    t: np.ndarray,
    index: np.ndarray,
    normals: np.ndarray,
    groups: list[tuple[np.ndarray, float, np.ndarray]] | None = None,
) -> None:
    """Update a z-buffer in place with the nearest hits of ``shapes``.

    Args:
        shapes: primitives; a hit on ``shapes[k]`` stores ``k`` in ``index``.
        origin: (3,) ray origin.
        dirs: (N, 3) ray directions (``t`` is in their units).
        t: (N,) current nearest hit parameters (e.g. of the room shell); updated.
        index: (N,) int current hit primitive (-1: none/room); updated.
        normals: (N, 3) current world normals; updated.
        groups: optional bounding groups from :func:`group_shapes` (culled first, then their members).
    """
    if not shapes:
        return
    bins = DirectionIndex(origin, dirs)
    for k, rays in _candidates(bins, shapes, groups):
        tk, nk = shapes[k].intersect(origin, dirs[rays])
        better = tk < t[rays]
        sel = rays[better]
        t[sel] = tk[better]
        index[sel] = k
        normals[sel] = nk[better]


def occluded(
    shapes: Sequence[Shape],
    light: np.ndarray,
    points: np.ndarray,
    tolerance: float = 1e-4,
    groups: list[tuple[np.ndarray, float, np.ndarray]] | None = None,
    bounds: ShapeBounds | None = None,
) -> np.ndarray:
    """Which points are hidden from a point light by any shape.

    Rays run from the light to each point (``t`` in (0, 1)); a hit with ``t < 1 - tolerance`` shadows it.
    The rays of each shape are found with a :class:`CubeIndex` (or, with ``groups``, a
    :class:`DirectionIndex` over the groups' bounding spheres).

    Args:
        shapes: occluders.
        light: (3,) light position in world metres.
        points: (N, 3) shaded points.
        tolerance: relative distance before the point within which hits are ignored (the surface itself).
        groups: optional bounding groups from :func:`group_shapes`.
        bounds: ``ShapeBounds.of(shapes)``, when computed once for many calls.

    Returns:
        bool (N,): True where the point is in shadow.
    """
    dirs = points - light
    shadow = np.zeros(len(points), dtype=bool)
    if not shapes or not len(points):
        return shadow
    if groups is None:
        candidates = CubeIndex(light, dirs).candidates(shapes, bounds)
    else:
        candidates = _candidates(DirectionIndex(light, dirs), shapes, groups)
    for k, rays in candidates:
        rays = rays[~shadow[rays]]
        if rays.size == 0:
            continue
        tk = shapes[k].hit_t(light, dirs[rays])
        shadow[rays[tk < 1.0 - tolerance]] = True
    return shadow


# ------------------------------------------------------------------------------- image-space culling
_SIGNS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=np.float64) * 2.0 - 1.0
"""(8, 3) corner signs of a box; corner k has bits (x, y, z) = (k >> 2, k >> 1, k) & 1."""

_EDGES = np.array([(k, k | b) for b in (4, 2, 1) for k in range(8) if not k & b])
"""(12, 2) corner pairs of the box edges (they differ in one bit)."""


@dataclass(frozen=True)
class ShapeBounds:
    """Bounding volumes of a list of shapes, computed once and shared by many queries.

    Attributes:
        corners: (S, 8, 3) world corners of each shape's bounding box (``Shape.half_extent``); corner k
            has local signs ((k >> 2) & 1, (k >> 1) & 1, k & 1) -> (-1 or +1).
        centres: (S, 3) world centres.
        radii: (S,) bounding sphere radii (``Shape.bound_radius``).
    """

    corners: np.ndarray
    centres: np.ndarray
    radii: np.ndarray

    @classmethod
    def of(cls, shapes: Sequence[Shape]) -> ShapeBounds:
        """The bounds of ``shapes`` (S >= 1)."""
        centres = np.stack([s.center for s in shapes]).astype(np.float64)
        rots = np.stack([s.rotation for s in shapes]).astype(np.float64)
        ext = np.stack([s.half_extent for s in shapes])
        corners = centres[:, None, :] + np.einsum("skj,sij->ski", _SIGNS[None] * ext[:, None, :], rots)
        return cls(corners, centres, np.array([s.bound_radius for s in shapes], dtype=np.float64))


def frame_corners(shapes: Sequence[Shape] | ShapeBounds, origin: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Corners of each shape's bounding box (``Shape.half_extent``) in another frame.

    Args:
        shapes: S primitives, or their precomputed :class:`ShapeBounds`.
        origin: (3,) world position of the frame's origin.
        rotation: (3, 3) frame-to-world rotation (columns are the frame's axes in the world).

    Returns:
        (S, 8, 3) corner coordinates in the frame.
    """
    bounds = shapes if isinstance(shapes, ShapeBounds) else ShapeBounds.of(shapes)
    return (bounds.corners - np.asarray(origin, dtype=np.float64)) @ np.ascontiguousarray(rotation, dtype=np.float64)


def projected_bounds(corners: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounds of the perspective projection (x / z, y / z) of the part of each box in front of ``z = near``.

    The box clipped to ``z >= near`` is a convex polytope whose vertices are the corners in front and the
    points where edges cross the plane; a perspective projection maps it to the convex hull of their
    images, so these bounds contain the projection of every point of the box with ``z >= near``.

    Args:
        corners: (S, 8, 3) box corners (order of :func:`frame_corners`) in a frame looking along +z.
        near: the clipping depth (> 0).

    Returns:
        lo (S, 2), hi (S, 2) bounds of (x / z, y / z), and visible (S,) bool (some part has z >= near).
    """
    # points first (P, S, ...): the reductions over points are then elementwise over contiguous slabs
    corners = np.ascontiguousarray(np.swapaxes(corners, 0, 1))
    a, b = corners[_EDGES[:, 0]], corners[_EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    cross = (za - near) * (zb - near) < 0
    frac = np.where(cross, (near - za) / np.where(cross, zb - za, 1.0), 0.0)
    crossing = a + frac[..., None] * (b - a)
    crossing[..., 2] = near
    pts = np.concatenate([corners, crossing], axis=0)
    ok = np.concatenate([corners[..., 2] >= near, cross], axis=0)
    xy = pts[..., :2] / np.where(ok, pts[..., 2], 1.0)[..., None]
    lo = np.minimum.reduce(np.where(ok[..., None], xy, np.inf), axis=0)
    hi = np.maximum.reduce(np.where(ok[..., None], xy, -np.inf), axis=0)
    return lo, hi, np.logical_or.reduce(ok, axis=0)


def screen_rects(shapes: Sequence[Shape], camera: Camera, margin: int = 1) -> np.ndarray:
    """Pixel rectangles that contain every pixel whose camera ray can hit each shape.

    Args:
        shapes: S primitives.
        camera: the camera (pixel (v, u) samples the direction ((u - cx) / fx, (v - cy) / fy, 1)).
        margin: extra pixels on every side (rounding).

    Returns:
        int64 (S, 4): rows [r0, r1) and columns [c0, c1); empty (r0 = r1 = 0) for a shape out of view.
    """
    intr = camera.intr
    if not shapes:
        return np.zeros((0, 4), dtype=np.int64)
    lo, hi, visible = projected_bounds(frame_corners(shapes, camera.position, camera.rotation), T_MIN)
    cols = np.stack([lo[:, 0], hi[:, 0]], axis=1) * intr.fx + intr.cx
    rows = np.stack([lo[:, 1], hi[:, 1]], axis=1) * intr.fy + intr.cy
    c0 = np.clip(np.floor(cols[:, 0]) - margin, 0, intr.width)
    c1 = np.clip(np.ceil(cols[:, 1]) + margin + 1, 0, intr.width)
    r0 = np.clip(np.floor(rows[:, 0]) - margin, 0, intr.height)
    r1 = np.clip(np.ceil(rows[:, 1]) + margin + 1, 0, intr.height)
    rects = np.stack([r0, r1, c0, c1], axis=1)
    empty = ~visible | (r1 <= r0) | (c1 <= c0)
    rects[empty] = 0
    return rects.astype(np.int64)


def closest_hit_image(
    shapes: Sequence[Shape], camera: Camera, dirs: np.ndarray, t: np.ndarray, index: np.ndarray
) -> None:
    """Update an image z-buffer in place with the nearest hits of ``shapes`` (culled by :func:`screen_rects`).

    Each shape is intersected only with the rays of its pixel rectangle, in shape order, a hit replacing
    the current one when strictly nearer (as :func:`closest_hit`). Normals are not computed: get them from
    the hit points with ``Shape.local_normal``.

    Args:
        shapes: primitives; a hit on ``shapes[k]`` stores ``k`` in ``index``.
        camera: the camera.
        dirs: (H, W, 3) world ray directions of the pixels (``Camera.world_directions``; ``t`` in their units).
        t: (H, W) current nearest hit parameters (e.g. of the room shell); updated.
        index: (H, W) int current hit primitive (-1: none); updated.
    """
    origin = np.asarray(camera.position, dtype=np.float64)
    rects = screen_rects(shapes, camera)
    for k in np.flatnonzero(rects[:, 1] > rects[:, 0]):
        r0, r1, c0, c1 = rects[k]
        sub = dirs[r0:r1, c0:c1]
        tk = shapes[k].hit_t(origin, sub.reshape(-1, 3)).reshape(sub.shape[:2])
        better = tk < t[r0:r1, c0:c1]
        np.copyto(t[r0:r1, c0:c1], tk, where=better)
        np.copyto(index[r0:r1, c0:c1], k, where=better)


_FACE_AXES = np.array([[(m + 1) % 3, (m + 2) % 3, m] for m in range(3) for _ in range(2)])
"""(6, 3) world axes giving (a, b, depth) on each cube face (face = 2 * axis + (sign > 0))."""

_FACE_SIGNS = np.array([[1.0, 1.0, -1.0], [1.0, 1.0, 1.0]] * 3)
"""(6, 3) signs applied to (a, b, depth): the depth axis points out of the face."""


class CubeIndex:
    """Rays from one origin bucketed on the six faces of a cube around it, for box-bounded queries.

    A ray belongs to the face of its direction's largest component (axis m, sign s) and has face
    coordinates ``(d_i, d_j) / |d_m|`` in [-1, 1] (i, j the other axes in cyclic order), bucketed into a
    ``cells`` x ``cells`` grid. A shape's bounding box projected onto a face (:func:`projected_bounds`,
    perspective from the origin) bounds the face coordinates of every ray that can hit it, so its
    candidates are contiguous runs of the bucket order, filtered by the exact face rectangle and by
    distance: a ray whose end point is nearer than the shape's bounding sphere cannot be blocked by it.

    Args:
        origin: (3,) common ray origin (e.g. a light).
        dirs: (N, 3) ray directions; the rays end at ``origin + dirs`` (t in (0, 1]).
        cells: grid cells per face side (6 cells^2 < 2^15 for a 16-bit sort).
    """

    def __init__(self, origin: np.ndarray, dirs: np.ndarray, cells: int = 48) -> None:
        self.origin = np.asarray(origin, dtype=np.float64)
        self.cells = cells
        dx, dy, dz = np.ascontiguousarray(dirs.T)
        ax, ay, az = np.abs(dx), np.abs(dy), np.abs(dz)
        on_x = (ax >= ay) & (ax >= az)
        on_y = ~on_x & (ay >= az)
        major = np.maximum(np.where(on_x, ax, np.where(on_y, ay, az)), 1e-300)
        positive = np.where(on_x, dx, np.where(on_y, dy, dz)) > 0
        face = np.where(on_x, 0, np.where(on_y, 2, 4)) + positive
        coord_a = np.where(on_x, dy, np.where(on_y, dz, dx)) / major
        coord_b = np.where(on_x, dz, np.where(on_y, dx, dy)) / major
        cell_a = np.clip(((coord_a + 1.0) * (0.5 * cells)).astype(np.int64), 0, cells - 1)
        cell_b = np.clip(((coord_b + 1.0) * (0.5 * cells)).astype(np.int64), 0, cells - 1)
        cell = (face * cells + cell_b) * cells + cell_a
        self.order = np.argsort(cell.astype(np.int16) if 6 * cells * cells < 2**15 else cell, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=6 * cells * cells))])
        self.coord_a = coord_a[self.order]
        self.coord_b = coord_b[self.order]
        self.length2 = (dx * dx + dy * dy + dz * dz)[self.order]

    @staticmethod
    def _face_bounds(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """lo (6, S, 2), hi (6, S, 2) face coordinates of the boxes' projections on each face, visible (6, S)."""
        framed = np.moveaxis(corners[..., _FACE_AXES], 2, 0) * _FACE_SIGNS[:, None, None, :]  # (6, S, 8, 3)
        lo, hi, visible = projected_bounds(framed.reshape(-1, 8, 3), 1e-9)
        count = len(corners)
        return lo.reshape(6, count, 2), hi.reshape(6, count, 2), visible.reshape(6, count)

    def candidates(self, shapes: Sequence[Shape], bounds: ShapeBounds | None = None) -> list[tuple[int, np.ndarray]]:
        """(shape index, indices of the rays that may hit it) for every shape with some candidate ray.

        Args:
            shapes: the shapes.
            bounds: ``ShapeBounds.of(shapes)`` if already computed.
        """
        if not shapes:
            return []
        g = self.cells
        bounds = ShapeBounds.of(shapes) if bounds is None else bounds
        corners = bounds.corners - self.origin
        centres = bounds.centres - self.origin
        near = np.sqrt(np.einsum("ij,ij->i", centres, centres)) - bounds.radii
        near2 = np.where(near > 0, near, 0.0) ** 2 * (1.0 - 1e-9)
        seg_k, seg_lo, seg_hi, box = [], [], [], []
        eps = 1e-7
        for face, (lo, hi, visible) in enumerate(zip(*self._face_bounds(corners))):
            lo = np.maximum(lo - eps, -1.0)
            hi = np.minimum(hi + eps, 1.0)
            ok = np.flatnonzero(visible & (lo[:, 0] <= hi[:, 0]) & (lo[:, 1] <= hi[:, 1]))
            a0 = np.clip(((lo[ok, 0] + 1.0) * (0.5 * g)).astype(np.int64), 0, g - 1)
            a1 = np.clip(((hi[ok, 0] + 1.0) * (0.5 * g)).astype(np.int64), 0, g - 1)
            b0 = np.clip(((lo[ok, 1] + 1.0) * (0.5 * g)).astype(np.int64), 0, g - 1)
            b1 = np.clip(((hi[ok, 1] + 1.0) * (0.5 * g)).astype(np.int64), 0, g - 1)
            nrows = b1 - b0 + 1
            rows = np.repeat(b0, nrows) + _multi_arange(np.zeros(len(ok), dtype=np.int64), nrows)
            base = (face * g + rows) * g
            seg_k.append(np.repeat(ok, nrows))
            seg_lo.append(self.starts[base + np.repeat(a0, nrows)])
            seg_hi.append(self.starts[base + np.repeat(a1, nrows) + 1])
            box.append(np.repeat(np.concatenate([lo[ok], hi[ok]], axis=1), nrows, axis=0))
        keys = np.concatenate(seg_k)
        by_shape = np.argsort(keys, kind="stable")
        keys = keys[by_shape]
        lo_pos = np.concatenate(seg_lo)[by_shape]
        lens = np.concatenate(seg_hi)[by_shape] - lo_pos
        rect = np.concatenate(box)[by_shape]
        pos = _multi_arange(lo_pos, lens)
        cand_k = np.repeat(keys, lens)
        rect = np.repeat(rect, lens, axis=0)
        a, b = self.coord_a[pos], self.coord_b[pos]
        keep = (a >= rect[:, 0]) & (b >= rect[:, 1]) & (a <= rect[:, 2]) & (b <= rect[:, 3])
        keep &= self.length2[pos] > near2[cand_k]
        rays, cand_k = self.order[pos[keep]], cand_k[keep]
        counts = np.bincount(cand_k, minlength=len(shapes))
        ends = np.cumsum(counts)
        return [(int(k), rays[ends[k] - counts[k] : ends[k]]) for k in np.flatnonzero(counts)]
