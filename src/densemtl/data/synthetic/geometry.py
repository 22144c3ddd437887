"""Analytic ray-primitive intersection, vectorised over rays (numpy).

Every primitive is a shape in its own local frame, placed in the world by a rotation (local -> world
columns) and a centre. ``intersect(origin, dirs)`` returns, for each ray ``origin + t * dirs``, the
smallest hit parameter ``t > t_min`` (``inf`` for a miss) and the outward unit normal there in world
coordinates. Directions need not be unit length: ``t`` is in units of the direction vector, so camera rays
with unit camera-frame z yield z-depth (``camera.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Box",
    "Cylinder",
    "Ellipsoid",
    "ROOM_FACE_NORMALS",
    "Shape",
    "intersect_room",
    "rotation_x",
    "rotation_y",
    "rotation_z",
]

T_MIN = 1e-6


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the z (up) axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the x axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the y axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class Shape:
    """A primitive placed in the world.

    Attributes:
        center: (3,) origin of the local frame in world metres.
        rotation: (3, 3) local-to-world rotation (columns are the local axes in the world).
    """

    center: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def bound_radius(self) -> float:  # pragma: no cover - abstract
        """Radius of a sphere about ``center`` that contains the shape."""
        raise NotImplementedError

    def _local_hit(self, o: np.ndarray, d: np.ndarray, t_min: float) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> local coordinates (N, 3)."""
        return (points - self.center) @ self.rotation

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t_min: float = T_MIN) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit of rays ``origin + t * dirs``.

        Args:
            origin: (3,) or (N, 3) ray origins in world metres.
            dirs: (N, 3) ray directions (any length).
            t_min: smallest accepted ``t``.

        Returns:
            t (N,) with ``inf`` for a miss, and outward unit normals (N, 3) in the world frame.
        """
        o = (origin - self.center) @ self.rotation
        d = dirs @ self.rotation
        t, n_local = self._local_hit(o, d, t_min)
        return t, n_local @ np.ascontiguousarray(self.rotation.T)


@dataclass(frozen=True)
class Box(Shape):
    """An oriented box with half extents ``half`` (3,) along its local axes."""

    half: np.ndarray = field(default_factory=lambda: np.ones(3))

    @property
    def bound_radius(self) -> float:
        return float(np.linalg.norm(self.half))

    def _local_hit(self, o: np.ndarray, d: np.ndarray, t_min: float) -> tuple[np.ndarray, np.ndarray]:
        o = np.broadcast_to(o, d.shape)
        lo_t, hi_t = [], []
        for k in range(3):
            dk = d[:, k]
            inv = 1.0 / np.where(dk == 0.0, 1e-300, dk)
            ta = (-self.half[k] - o[:, k]) * inv
            tb = (self.half[k] - o[:, k]) * inv
            lo_t.append(np.minimum(ta, tb))
            hi_t.append(np.maximum(ta, tb))
        near_axis = np.where(lo_t[1] > lo_t[0], 1, 0)
        t_near = np.maximum(lo_t[0], lo_t[1])
        near_axis = np.where(lo_t[2] > t_near, 2, near_axis)
        t_near = np.maximum(t_near, lo_t[2])
        far_axis = np.where(hi_t[1] < hi_t[0], 1, 0)
        t_far = np.minimum(hi_t[0], hi_t[1])
        far_axis = np.where(hi_t[2] < t_far, 2, far_axis)
        t_far = np.minimum(t_far, hi_t[2])
        entering = t_near > t_min
        t = np.where(entering, t_near, t_far)
        hit = (t_far >= t_near) & (t > t_min)
        t = np.where(hit, t, np.inf)
        axis = np.where(entering, near_axis, far_axis)
        rows = np.arange(len(d))
        sign = np.sign(d[rows, axis])
        n = np.zeros_like(d)
        n[rows, axis] = np.where(entering, -sign, sign)
        return t, n


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid with semi-axes ``radii`` (3,) along its local axes (a sphere when all are equal)."""

    radii: np.ndarray = field(default_factory=lambda: np.ones(3))

    @property
    def bound_radius(self) -> float:
        return float(np.max(self.radii))

    def _local_hit(self, o: np.ndarray, d: np.ndarray, t_min: float) -> tuple[np.ndarray, np.ndarray]:
        os_ = o / self.radii
        ds = d / self.radii
        a = np.einsum("ij,ij->i", ds, ds)
        b = (ds * os_).sum(-1)
        c = (os_ * os_).sum(-1) - 1.0
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
        t = np.where(t0 > t_min, t0, t1)
        hit = (disc >= 0) & (t > t_min)
        t = np.where(hit, t, np.inf)
        p = o + np.where(hit, t, 0.0)[:, None] * d
        n = p / self.radii**2
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return t, n


@dataclass(frozen=True)
class Cylinder(Shape):
    """A capped cylinder of ``radius`` along the local z axis, from -``half_height`` to +``half_height``."""

    radius: float = 1.0
    half_height: float = 1.0

    @property
    def bound_radius(self) -> float:
        return float(np.hypot(self.radius, self.half_height))

    def _local_hit(self, o: np.ndarray, d: np.ndarray, t_min: float) -> tuple[np.ndarray, np.ndarray]:
        o = np.broadcast_to(o, d.shape)
        ox, oy, oz = o[:, 0], o[:, 1], o[:, 2]
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        r, h = self.radius, self.half_height
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - r * r
        disc = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            sq = np.sqrt(np.maximum(disc, 0.0))
            cand = np.full((len(d), 4), np.inf)
            for j, root in enumerate(((-b - sq) / a, (-b + sq) / a)):
                z = oz + root * dz
                ok = (disc >= 0) & (a > 0) & (np.abs(z) <= h) & (root > t_min)
                cand[:, j] = np.where(ok, root, np.inf)
            for j, zc in ((2, -h), (3, h)):
                root = (zc - oz) / dz
                x = ox + root * dx
                y = oy + root * dy
                ok = (x * x + y * y <= r * r) & (root > t_min)
                cand[:, j] = np.where(ok, root, np.inf)
        which = np.argmin(cand, axis=1)
        rows = np.arange(len(d))
        t = cand[rows, which]
        tt = np.where(np.isfinite(t), t, 0.0)
        n = np.zeros_like(d)
        side = which < 2
        n[:, 0] = np.where(side, (ox + tt * dx) / r, 0.0)
        n[:, 1] = np.where(side, (oy + tt * dy) / r, 0.0)
        n[:, 2] = np.where(side, 0.0, np.where(which == 2, -1.0, 1.0))
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return t, n


def intersect_room(size: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit hit of rays from inside the axis-aligned room box [0, W] x [0, D] x [0, H].

    Args:
        size: (3,) room extents (W, D, H) in metres.
        origin: (3,) a point inside the room.
        dirs: (N, 3) ray directions.

    Returns:
        t (N,) and the face index (N,) int: 0 floor (z = 0), 1 ceiling (z = H), 2 wall x = 0, 3 wall x = W,
        4 wall y = 0, 5 wall y = D.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(dirs > 0, size, 0.0)
        t_axes = (bound - origin) / dirs
    t_axes = np.where(np.isfinite(t_axes) & (t_axes > 0), t_axes, np.inf)
    axis = np.argmin(t_axes, axis=1)
    t = t_axes[np.arange(len(dirs)), axis]
    positive = dirs[np.arange(len(dirs)), axis] > 0
    face_of_axis = np.array([[2, 3], [4, 5], [0, 1]])
    return t, face_of_axis[axis, positive.astype(np.int64)]


ROOM_FACE_NORMALS = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
"""Inward unit normals of the room faces, indexed as in :func:`intersect_room`."""
