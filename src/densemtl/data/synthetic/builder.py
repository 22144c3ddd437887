"""Scene-building helpers shared by the scene grammars: object frames, primitive placement, free space."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from densemtl.data.synthetic.geometry import Box, Cylinder, Ellipsoid, rotation_z
from densemtl.data.synthetic.render import SceneObject
from densemtl.data.synthetic.textures import Material

__all__ = ["Builder", "Frame", "WALLS", "wall_frame"]

WALLS = (2, 3, 4, 5)
"""Room face indices of the four walls (``geometry.intersect_room``)."""


@dataclass(frozen=True)
class Frame:
    """An object frame on the floor: local x to the object's right, y to its front, z up.

    Attributes:
        origin: (3,) world position of the local origin (metres).
        yaw: rotation about z in radians (local y points along (-sin yaw, cos yaw)).
    """

    origin: np.ndarray
    yaw: float

    @property
    def rotation(self) -> np.ndarray:
        return rotation_z(self.yaw)

    def point(self, local: np.ndarray) -> np.ndarray:
        """Local (3,) -> world (3,)."""
        return self.origin + self.rotation @ np.asarray(local, dtype=np.float64)

    def moved(self, local: np.ndarray, dyaw: float = 0.0) -> Frame:
        """A frame at local offset ``local``, turned by ``dyaw`` radians."""
        return Frame(self.point(local), self.yaw + dyaw)


def wall_frame(size: np.ndarray, wall: int, along: float, depth: float, gap: float = 0.01) -> Frame:
    """Frame of an object standing with its back on ``wall``, facing into the room.

    Args:
        size: (3,) room extents (W, D, H).
        wall: wall face index (2: x = 0, 3: x = W, 4: y = 0, 5: y = D).
        along: position along the wall in metres, from the wall's lower-coordinate end.
        depth: object depth (its extent away from the wall) in metres; the origin sits at its middle.
        gap: distance between object back and wall.
    """
    w, d, _ = size
    point, normal = {
        2: (np.array([0.0, along, 0.0]), np.array([1.0, 0.0])),
        3: (np.array([w, along, 0.0]), np.array([-1.0, 0.0])),
        4: (np.array([along, 0.0, 0.0]), np.array([0.0, 1.0])),
        5: (np.array([along, d, 0.0]), np.array([0.0, -1.0])),
    }[wall]
    origin = point + np.array([normal[0], normal[1], 0.0]) * (depth / 2 + gap)
    return Frame(origin, float(np.arctan2(-normal[0], normal[1])))


def wall_length(size: np.ndarray, wall: int) -> float:
    """Length in metres of a wall."""
    return float(size[1] if wall in (2, 3) else size[0])


@dataclass
class Builder:
    """Collects :class:`SceneObject` primitives and the space they occupy.

    Args:
        rng: the scene's random generator.
        size: (3,) room extents.
        first_instance: first free instance id (ids below are the room faces).
    """

    rng: np.random.Generator
    size: np.ndarray
    first_instance: int = 7
    objects: list[SceneObject] = field(default_factory=list)
    boxes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    supports: list[tuple[Frame, float, float]] = field(default_factory=list)
    labels_used: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._next = self.first_instance
        self._stacked: np.ndarray | None = None

    def instance(self) -> int:
        """A new instance id."""
        self._next += 1
        return self._next - 1

    def _add(self, shape, label: int, inst: int, material: Material, part: int = 0) -> None:
        self.objects.append(SceneObject(shape, label, inst, material, part))
        self.labels_used.add(label)

    def box(
        self,
        f: Frame,
        center: tuple[float, float, float],
        dims: tuple[float, float, float],
        label: int,
        inst: int,
        material: Material,
        local_rot: np.ndarray | None = None,
        part: int = 0,
    ) -> None:
        """A box of full size ``dims`` (x, y, z) at local ``center`` of frame ``f``."""
        rot = f.rotation if local_rot is None else f.rotation @ local_rot
        self._add(Box(f.point(center), rot, np.asarray(dims, dtype=np.float64) / 2), label, inst, material, part)

    def cylinder(
        self,
        f: Frame,
        center: tuple[float, float, float],
        radius: float,
        height: float,
        label: int,
        inst: int,
        material: Material,
        local_rot: np.ndarray | None = None,
        part: int = 0,
    ) -> None:
        """A capped cylinder (vertical unless ``local_rot``) of ``height`` centred at local ``center``."""
        rot = f.rotation if local_rot is None else f.rotation @ local_rot
        self._add(Cylinder(f.point(center), rot, float(radius), float(height) / 2), label, inst, material, part)

    def ellipsoid(
        self,
        f: Frame,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        label: int,
        inst: int,
        material: Material,
        local_rot: np.ndarray | None = None,
        part: int = 0,
    ) -> None:
        """An ellipsoid with semi-axes ``radii`` at local ``center``."""
        rot = f.rotation if local_rot is None else f.rotation @ local_rot
        self._add(Ellipsoid(f.point(center), rot, np.asarray(radii, dtype=np.float64)), label, inst, material, part)

    @staticmethod
    def aabb(f: Frame, center: tuple[float, float, float], dims: tuple[float, float, float]) -> np.ndarray:
        """World axis-aligned bounds (2, 3) of a local box."""
        c = f.point(center)
        half = np.abs(f.rotation) @ (np.asarray(dims, dtype=np.float64) / 2)
        return np.stack([c - half, c + half])

    def is_free(self, bounds: np.ndarray, margin: float = 0.02) -> bool:
        """True when ``bounds`` (2, 3) lies in the room and overlaps no reserved volume."""
        lo, hi = bounds
        if np.any(lo < -1e-6) or np.any(hi > self.size + 1e-6):
            return False
        if not self.boxes:
            return True
        if self._stacked is None:
            self._stacked = np.asarray(self.boxes)  # (K, 2, 3), rebuilt only after changes
        both = self._stacked
        overlap = ((lo < both[:, 1] + margin) & (hi > both[:, 0] - margin)).all(axis=1)
        return not overlap.any()

    def reserve(self, bounds: np.ndarray) -> None:
        """Mark a world volume (2, 3) as occupied."""
        self.boxes.append((bounds[0].copy(), bounds[1].copy()))
        self._stacked = None

    def release_last(self) -> None:
        """Forget the most recently reserved volume."""
        self.boxes.pop()
        self._stacked = None
