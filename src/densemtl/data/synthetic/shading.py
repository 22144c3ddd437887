"""Lambertian shading with ambient light, point lights and cast shadows; camera exposure and sensor noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from densemtl.data.synthetic.geometry import Shape
from densemtl.data.synthetic.raycast import ShapeBounds, occluded

__all__ = ["Light", "adaptive_shadow", "expose", "sensor_noise", "shade"]


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


def adaptive_shadow(
    occluders: Sequence[Shape],
    light: np.ndarray,
    points: np.ndarray,
    lit: np.ndarray,
    surface: np.ndarray,
    shape: tuple[int, int],
    groups: list | None = None,
    bounds: ShapeBounds | None = None,
) -> np.ndarray:
    """Shadow test on a pixel grid: every second pixel first, exact rays only where it is ambiguous.

    Shadow rays are traced for the pixels of even row and column. A pixel whose four surrounding traced
    pixels are lit-facing, on its own surface and agree takes their answer; every other pixel (shadow
    borders, object borders, thin objects) is traced itself. Shadows thinner than two pixels that fall
    between traced pixels can be missed; labels and geometry are unaffected (shading only).

    Args:
        occluders: shapes that cast shadows.
        light: (3,) light position.
        points: (H*W, 3) world points of the pixels.
        lit: bool (H*W,) pixels facing the light.
        surface: int (H*W,) surface id per pixel.
        shape: (H, W).
        groups: bounding groups of the occluders.
        bounds: ``ShapeBounds.of(occluders)`` when computed once for several lights.

    Returns:
        bool (H*W,): True where the pixel is in shadow (False where not ``lit``).
    """
    h, w = shape
    lit2, surf2 = lit.reshape(h, w), surface.reshape(h, w)
    shadow = np.zeros((h, w), dtype=bool)
    known = np.zeros((h, w), dtype=bool)
    coarse = np.zeros((h, w), dtype=bool)
    coarse[::2, ::2] = True
    trace = np.flatnonzero((coarse & lit2).ravel())
    shadow.ravel()[trace] = occluded(occluders, light, points[trace], groups=groups, bounds=bounds)
    known.ravel()[trace] = True
    # the four traced neighbours of each pixel: rows 2i, 2i+2 and columns 2j, 2j+2 (clamped)
    r0 = (np.arange(h) // 2) * 2
    r1 = np.minimum(r0 + 2, (h - 1) // 2 * 2)
    c0 = (np.arange(w) // 2) * 2
    c1 = np.minimum(c0 + 2, (w - 1) // 2 * 2)
    ok = lit2.copy()
    votes = np.zeros((h, w), dtype=np.int8)
    for rr in (r0, r1):
        for cc in (c0, c1):
            k = known[rr][:, cc]
            ok &= k & (surf2[rr][:, cc] == surf2)
            votes += shadow[rr][:, cc]
    agree = ok & ((votes == 0) | (votes == 4))
    fill = agree & ~known
    shadow[fill] = votes[fill] == 4
    rest = np.flatnonzero((lit2 & ~known & ~agree).ravel())
    shadow.ravel()[rest] = occluded(occluders, light, points[rest], groups=groups, bounds=bounds)
    return shadow.ravel()


def shade(
    points: np.ndarray,
    normals: np.ndarray,
    albedo: np.ndarray,
    emitted: np.ndarray,
    lights: Sequence[Light],
    ambient: np.ndarray,
    occluders: Sequence[Shape],
    shadows: bool = True,
    groups: list | None = None,
    grid: tuple[np.ndarray, tuple[int, int]] | None = None,
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
        groups: bounding groups of the occluders (``raycast.group_shapes``), for faster culling.
        grid: (surface ids (N,), (H, W)) when the points are an image's pixels: shadows are traced
            adaptively (:func:`adaptive_shadow`); otherwise every lit point is traced.
    """
    sky = 0.8 + 0.2 * normals[:, 2:3]
    irradiance = np.broadcast_to(ambient * sky, points.shape).copy()
    bounds = ShapeBounds.of(occluders) if shadows and len(occluders) and groups is None else None
    for light in lights:
        to_light = light.position - points
        dist = np.sqrt(np.einsum("ij,ij->i", to_light, to_light))
        cos = np.einsum("ij,ij->i", normals, to_light) / np.maximum(dist, 1e-9)
        facing = cos > 0
        if shadows and len(occluders) and facing.any():
            if grid is not None:
                facing &= ~adaptive_shadow(occluders, light.position, points, facing, grid[0], grid[1], groups, bounds)
            else:
                idx = np.flatnonzero(facing)
                facing[idx[occluded(occluders, light.position, points[idx], groups=groups, bounds=bounds)]] = False
        power = np.where(facing, cos / (1.0 + (dist / light.falloff) ** 2), 0.0)
        irradiance += power[:, None] * light.color
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
    image = image.astype(np.float32)
    std = np.float32(sigma) * (np.float32(0.5) + np.sqrt(np.clip(image, 0.0, 1.0)))
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * std
    return np.clip(np.rint(noisy * np.float32(255.0)), 0, 255).astype(np.uint8)
