"""Kinect-like invalid depth: a border band, holes on dark and grazing surfaces, parallax shadows."""

from __future__ import annotations

import numpy as np

__all__ = ["invalid_depth_mask"]

BASELINE = 0.075
"""Kinect v1 projector-camera baseline in metres (parallax shadows beside depth edges)."""


def invalid_depth_mask(
    depth: np.ndarray,
    albedo: np.ndarray,
    grazing: np.ndarray,
    fx: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pixels a structured-light sensor would leave without depth.

    Args:
        depth: (H, W) z-depth in metres.
        albedo: (H, W) albedo luminance in [0, 1] (near-black surfaces return no pattern).
        grazing: (H, W) |cos| between viewing ray and surface normal (near 0 = grazing).
        fx: focal length in pixels (for the parallax width).
        rng: generator for the band widths and the random part of the holes.

    Returns:
        bool (H, W): True where depth is invalid.
    """
    height, width = depth.shape
    mask = np.zeros((height, width), dtype=bool)
    left = int(round(width * rng.uniform(0.02, 0.06)))
    top, bottom, right = (int(round(s * rng.uniform(0.0, 0.02))) for s in (height, height, width))
    mask[:, :left] = True
    mask[:top] = True
    mask[height - bottom :] = True
    mask[:, width - right :] = True
    mask |= (albedo < 0.02) & (rng.random((height, width)) < 0.9)
    mask |= grazing < rng.uniform(0.06, 0.12)
    mask |= depth > 10.0
    # parallax shadow: right of a near-to-far step the projector pattern is occluded
    near, far = depth[:, :-1], depth[:, 1:]
    step = far - near > 0.05 * near
    shadow_px = np.where(step, fx * BASELINE * (1.0 / near - 1.0 / np.maximum(far, 1e-6)), 0.0)
    widest = int(np.ceil(shadow_px.max(initial=0.0)))
    for k in range(1, min(widest, 12) + 1):
        mask[:, k:width] |= np.pad(shadow_px >= k, ((0, 0), (0, 1)))[:, : width - k]
    return mask
