"""Pinhole camera with NYU-like intrinsics: ray generation and back-projection.

Conventions (used by every synthetic output):

* World frame: metres, z up; the floor of a room is z = 0.
* Camera frame: x right, y down, z forward (optical axis), right-handed.
* Pixel (row v, column u) looks along the camera-frame direction ((u - cx) / fx, (v - cy) / fy, 1): the
  pixel index is the sampling position (no half-pixel shift). With this un-normalised direction the ray
  parameter t of a hit *is* the z-depth along the optical axis, which is what Kinect depth (and so
  NYUD-v2 depth) measures, not the Euclidean ray length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NYU_INTRINSICS", "NYU_SIZE", "Camera", "Intrinsics", "backproject", "look_rotation"]

NYU_INTRINSICS = (518.86, 519.47, 325.58, 253.74)
"""fx, fy, cx, cy of the NYU Depth v2 colour camera at 480x640 (``spec/protocols.md`` §7.1)."""

NYU_SIZE = (480, 640)
"""(H, W) at which :data:`NYU_INTRINSICS` hold."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of ``height`` x ``width``."""

    fx: float
    fy: float
    cx: float
    cy: float
    height: int
    width: int

    @classmethod
    def nyu(cls, size: tuple[int, int] = NYU_SIZE) -> Intrinsics:
        """The NYU colour intrinsics scaled from 480x640 to ``size`` = (H, W): fx, cx by W/640; fy, cy by H/480."""
        height, width = size
        sx, sy = width / NYU_SIZE[1], height / NYU_SIZE[0]
        fx, fy, cx, cy = NYU_INTRINSICS
        return cls(fx * sx, fy * sy, cx * sx, cy * sy, int(height), int(width))

    def directions(self) -> np.ndarray:
        """Camera-frame ray directions with unit z, (H, W, 3) float64."""
        u = (np.arange(self.width, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy
        d = np.empty((self.height, self.width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        return d


def backproject(depth: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Camera-frame 3D points of a z-depth map.

    Args:
        depth: (H, W) z-depth in metres.
        intr: intrinsics of that image.

    Returns:
        (H, W, 3) points in metres, camera frame.
    """
    return intr.directions() * np.asarray(depth, dtype=np.float64)[..., None]


def look_rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation for a camera looking along yaw/pitch in a z-up world.

    Args:
        yaw: heading in radians, counter-clockwise from the world x axis.
        pitch: elevation in radians (negative looks down).
        roll: rotation about the optical axis in radians.

    Returns:
        (3, 3) matrix whose columns are the camera x (right), y (down), z (forward) axes in world coordinates.
    """
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


@dataclass(frozen=True)
class Camera:
    """A posed pinhole camera.

    Attributes:
        intr: intrinsics.
        rotation: (3, 3) camera-to-world rotation (columns = camera axes in the world).
        position: (3,) camera centre in world metres.
    """

    intr: Intrinsics
    rotation: np.ndarray
    position: np.ndarray

    def world_directions(self) -> np.ndarray:
        """World-frame ray directions (H*W, 3) whose camera-frame z is 1, so the hit parameter is z-depth."""
        return self.intr.directions().reshape(-1, 3) @ np.ascontiguousarray(self.rotation.T)

    def to_camera(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate world-frame vectors (..., 3) into the camera frame."""
        return vectors @ np.ascontiguousarray(self.rotation)
