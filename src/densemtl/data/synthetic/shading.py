"""Lambertian shading with ambient light, point lights and cast shadows; camera exposure and sensor noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from densemtl.data.synthetic.geometry import Shape
from densemtl.data.synthetic.raycast import occluded

__all__ = ["Light", "expose", "sensor_noise", "shade"]


@dataclass(frozen=True)
class Light:
    """A point light.

    Attributes:
        position: (3,) world position in metres.
        color: (3,) linear radiance scale; the irradiance falls off as 1 / (1 + (r / falloff)^2).
        falloff: distance in metres where the irradiance has halved.
    """

    position: np.ndarray
    color: np.ndarray
    falloff: float = 2.5


def shade(
    points: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    emitted: np.ndarray,
    lights: Sequence[Light],
    ambient: np.ndarray,
    occluders: Sequence[Shape],
    shadows: bool = True,
) -> np.ndarray:
    """Linear radiance towards the camera (N, 3).

    Args:
        points: (N, 3) world hit points.
        normals: (N, 3) unit world normals facing the camera.
        albedo: (N, 3) linear albedo.
        emitted: (N, 3) emitted radiance.
        lights: point lights.
        ambient: (3,) ambient irradiance (slightly stronger on up-facing surfaces).
        occluders: shapes that cast shadows (the room shell does not: the lights are inside it).
        shadows: cast shadow rays.
    """
    sky = 0.8 + 0.2 * normals[:, 2:3]
    irradiance = np.broadcast_to(ambient * sky, points.shape).copy()
    for light in lights:
        to_light = light.position - points
        dist = np.linalg.norm(to_light, axis=1)
        cos = np.einsum("ij,ij->i", normals, to_light) / np.maximum(dist, 1e-9)
        lit = np.flatnonzero(cos > 0)
        if shadows and len(occluders) and lit.size:
            lit = lit[~occluded(occluders, light.position, points[lit])]
        power = cos[lit] / (1.0 + (dist[lit] / light.falloff) ** 2)
        irradiance[lit] += power[:, None] * light.color
    return albedo * irradiance + emitted


def expose(radiance: np.ndarray, target: float, gamma: float = 2.2) -> np.ndarray:
    """Auto-exposure and gamma: scale so that the mean display value is about ``target``.

    Args:
        radiance: (..., 3) linear radiance.
        target: wanted mean of the gamma-encoded image in [0, 1].
        gamma: display gamma.

    Returns:
        Display values in [0, 1], same shape.
    """
    encoded = np.maximum(radiance, 0.0) ** (1.0 / gamma)
    for _ in range(3):  # clipping lowers the mean: a few fixed-point steps
        mean = float(np.clip(encoded, 0.0, 1.0).mean())
        if mean <= 1e-6:
            break
        encoded = encoded * (target / mean)
    return np.clip(encoded, 0.0, 1.0)


def sensor_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add signal-dependent Gaussian noise and quantise.

    Args:
        image: (H, W, 3) display values in [0, 1].
        rng: random generator.
        sigma: noise standard deviation at mid grey, in [0, 1] units.

    Returns:
        uint8 (H, W, 3).
    """
    std = sigma * (0.5 + np.sqrt(np.clip(image, 0.0, 1.0)))
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * std
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
