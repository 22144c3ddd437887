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

    @property
    def half_extent(self) -> np.ndarray:  # pragma: no cover - abstract
        """(3,) half sizes of a box about ``center``, along the local axes, that contains the shape."""
        raise NotImplementedError

    def _local_t(self, o: np.ndarray, d: np.ndarray, t_min: float) -> np.ndarray:
        """Hit parameters (N,) of local rays: ``o`` (3, 1) or (3, N) origins, ``d`` (3, N) directions.

        Coordinates are rows (structure of arrays): per-axis operations run on contiguous rows.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def _local_rays(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World rays -> local origins (3, 1) or (3, N) and directions (3, N) (coordinates as rows)."""
        rel = np.asarray(origin, dtype=np.float64) - self.center
        o = (rel @ self.rotation)[:, None] if rel.ndim == 1 else self.rotation.T @ rel.T
        return o, self.rotation.T @ dirs.T

    def local_normal(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Outward unit normals (N, 3), local frame, at local points (N, 3) on the surface."""
        raise NotImplementedError

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> local coordinates (N, 3)."""
        return (points - self.center) @ self.rotation

    def to_world(self, vectors: np.ndarray) -> np.ndarray:
        """Local-frame vectors (N, 3) -> world-frame vectors (N, 3) (rotation only)."""
        return vectors @ np.ascontiguousarray(self.rotation.T)

    def hit_t(self, origin: np.ndarray, dirs: np.ndarray, t_min: float = T_MIN) -> np.ndarray:
        """Nearest hit parameter of rays ``origin + t * dirs`` (N,), ``inf`` for a miss (no normals).

        Args:
            origin: (3,) or (N, 3) ray origins in world metres.
            dirs: (N, 3) ray directions (any length).
            t_min: smallest accepted ``t``.
        """
        return self._local_t(*self._local_rays(origin, dirs), t_min)

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, t_min: float = T_MIN) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit of rays ``origin + t * dirs``.

        Args:
            origin: (3,) or (N, 3) ray origins in world metres.
            dirs: (N, 3) ray directions (any length).
            t_min: smallest accepted ``t``.

        Returns:
            t (N,) with ``inf`` for a miss, and outward unit normals (N, 3) in the world frame (meaningless
            for a miss).
        """
        o, d = self._local_rays(origin, dirs)
        t = self._local_t(o, d, t_min)
        p = o + np.where(np.isfinite(t), t, 0.0) * d
        return t, self.to_world(self.local_normal(np.ascontiguousarray(p.T)))


def _face_normal(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Unit normals along the local axis where ``q`` (N, 3), a point's relative position, is largest."""
    axis = np.argmax(q, axis=1)
    n = np.zeros_like(p)
    rows = np.arange(len(p))
    n[rows, axis] = np.where(p[rows, axis] < 0, -1.0, 1.0)
    return n


@dataclass(frozen=True)
class Box(Shape):
    """An oriented box with half extents ``half`` (3,) along its local axes."""

    half: np.ndarray = field(default_factory=lambda: np.ones(3))

    @property
    def bound_radius(self) -> float:
        return float(np.linalg.norm(self.half))

    @property
    def half_extent(self) -> np.ndarray:
        return np.asarray(self.half, dtype=np.float64)

    def _local_t(self, o: np.ndarray, d: np.ndarray, t_min: float) -> np.ndarray:
        # slab test, all three axes at once: t of the near and far planes per axis
        inv = 1.0 / np.where(d == 0.0, 1e-300, d)
        half = np.asarray(self.half, dtype=np.float64)[:, None]
        ta = (-half - o) * inv
        tb = (half - o) * inv
        lo = np.minimum(ta, tb)
        hi = np.maximum(ta, tb, out=ta)
        t_near = np.maximum(np.maximum(lo[0], lo[1]), lo[2])
        t_far = np.minimum(np.minimum(hi[0], hi[1]), hi[2])
        t = np.where(t_near > t_min, t_near, t_far)
        return np.where((t_far >= t_near) & (t > t_min), t, np.inf)

    def local_normal(self, p: np.ndarray) -> np.ndarray:
        return _face_normal(np.abs(p) / self.half, p)


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid with semi-axes ``radii`` (3,) along its local axes (a sphere when all are equal)."""

    radii: np.ndarray = field(default_factory=lambda: np.ones(3))

    @property
    def bound_radius(self) -> float:
        return float(np.max(self.radii))

    @property
    def half_extent(self) -> np.ndarray:
        return np.asarray(self.radii, dtype=np.float64)

    def _local_t(self, o: np.ndarray, d: np.ndarray, t_min: float) -> np.ndarray:
        inv_r = 1.0 / np.asarray(self.radii, dtype=np.float64)[:, None]
        os_ = o * inv_r
        ds = d * inv_r
        a = ds[0] * ds[0] + ds[1] * ds[1] + ds[2] * ds[2]
        b = ds[0] * os_[0] + ds[1] * os_[1] + ds[2] * os_[2]
        c = os_[0] * os_[0] + os_[1] * os_[1] + os_[2] * os_[2] - 1.0
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
        t = np.where(t0 > t_min, t0, t1)
        return np.where((disc >= 0) & (t > t_min), t, np.inf)

    def local_normal(self, p: np.ndarray) -> np.ndarray:
        n = p / self.radii**2
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Cylinder(Shape):
    """A capped cylinder of ``radius`` along the local z axis, from -``half_height`` to +``half_height``."""

    radius: float = 1.0
    half_height: float = 1.0

    @property
    def bound_radius(self) -> float:
        return float(np.hypot(self.radius, self.half_height))

    @property
    def half_extent(self) -> np.ndarray:
        return np.array([self.radius, self.radius, self.half_height], dtype=np.float64)

    def _local_t(self, o: np.ndarray, d: np.ndarray, t_min: float) -> np.ndarray:
        ox, oy, oz = o
        dx, dy, dz = d
        r, h = self.radius, self.half_height
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - r * r
        disc = b * b - a * c
        best = np.full(d.shape[1], np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            sq = np.sqrt(np.maximum(disc, 0.0))
            side = (disc >= 0) & (a > 0)
            for root in ((-b - sq) / a, (-b + sq) / a):
                ok = side & (np.abs(oz + root * dz) <= h) & (root > t_min)
                best = np.where(ok & (root < best), root, best)
            for zc in (-h, h):
                root = (zc - oz) / dz
                x = ox + root * dx
                y = oy + root * dy
                ok = (x * x + y * y <= r * r) & (root > t_min)
                best = np.where(ok & (root < best), root, best)
        return best

    def local_normal(self, p: np.ndarray) -> np.ndarray:
        rho = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
        cap = np.abs(p[:, 2]) / self.half_height >= rho / self.radius
        n = np.zeros_like(p)
        safe = np.maximum(rho, 1e-12)
        n[:, 0] = np.where(cap, 0.0, p[:, 0] / safe)
        n[:, 1] = np.where(cap, 0.0, p[:, 1] / safe)
        n[:, 2] = np.where(cap, np.where(p[:, 2] < 0, -1.0, 1.0), 0.0)
        return n


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
    per_axis, positive = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            dk = dirs[:, k]
            up = dk > 0
            tk = np.where(up, size[k] - origin[k], -origin[k]) / dk
            per_axis.append(np.where(np.isfinite(tk) & (tk > 0), tk, np.inf))
            positive.append(up)
    t0, t1, t2 = per_axis
    on_x = (t0 <= t1) & (t0 <= t2)  # first minimum, as argmin
    on_y = ~on_x & (t1 <= t2)
    t = np.where(on_x, t0, np.where(on_y, t1, t2))
    up = np.where(on_x, positive[0], np.where(on_y, positive[1], positive[2]))
    face = np.where(on_x, 2, np.where(on_y, 4, 0)) + up
    return t, face


ROOM_FACE_NORMALS = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
"""Inward unit normals of the room faces, indexed as in :func:`intersect_room`."""
