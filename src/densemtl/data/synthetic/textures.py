"""Procedural solid textures: albedo (and emission) as functions of a point in the primitive's local frame.

Each semantic class draws its look from one or more *families* below, with per-instance colours and
parameters (a :class:`Material`). Colours of different classes overlap on purpose: the class must be
inferred from shape, context and texture, not from a colour lookup. Colours are linear albedo in [0, 1].
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FAMILIES", "Material", "albedo", "emission", "make_material", "random_color"]


@dataclass(frozen=True)
class Material:
    """Per-instance appearance.

    Attributes:
        family: texture family name (a key of :data:`FAMILIES`).
        color: (3,) main linear albedo.
        color2: (3,) secondary albedo (grain, stripes, frames, seams).
        scale: pattern period in metres.
        axis: local axis (0, 1, 2) the pattern runs along.
        waves: (K, 4) random plane waves (frequency xyz in 1/m, phase) for smooth noise.
        extent: (3,) half extents of the carrying box in its local frame (frames, borders, panels).
        glow: emitted linear radiance scale (windows, screens); 0 for ordinary surfaces.
    """

    family: str
    color: np.ndarray
    color2: np.ndarray
    scale: float = 0.1
    axis: int = 0
    waves: np.ndarray = field(default_factory=lambda: np.zeros((1, 4)))
    extent: np.ndarray = field(default_factory=lambda: np.ones(3))
    glow: float = 0.0


def random_color(
    rng: np.random.Generator,
    hue: tuple[float, float] = (0.0, 1.0),
    sat: tuple[float, float] = (0.0, 1.0),
    val: tuple[float, float] = (0.2, 0.9),
) -> np.ndarray:
    """A linear-albedo colour drawn uniformly in an HSV box (hue may wrap, e.g. (0.9, 1.1))."""
    h = rng.uniform(*hue) % 1.0
    rgb = np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))
    return rgb**2.2


def make_material(
    rng: np.random.Generator,
    family: str,
    color: np.ndarray,
    color2: np.ndarray | None = None,
    scale: float = 0.1,
    extent: np.ndarray | None = None,
    glow: float = 0.0,
    noise_freq: float = 3.0,
) -> Material:
    """A :class:`Material` with random noise waves and pattern axis.

    Args:
        rng: generator for the random parts.
        family: texture family.
        color: main albedo.
        color2: secondary albedo (default: a darker ``color``).
        scale: pattern period in metres.
        extent: half extents of the carrying box.
        glow: emission scale.
        noise_freq: typical noise frequency in cycles per metre.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown texture family {family!r}; available: {sorted(FAMILIES)}")
    k = 3
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = noise_freq * 2 * np.pi * rng.uniform(0.5, 2.0, size=(k, 1))
    waves = np.concatenate([dirs * freq, rng.uniform(0, 2 * np.pi, size=(k, 1))], axis=1)
    return Material(
        family=family,
        color=np.asarray(color, dtype=np.float64),
        color2=np.asarray(color if color2 is None else color2, dtype=np.float64) * (0.55 if color2 is None else 1.0),
        scale=float(scale),
        axis=int(rng.integers(0, 2)),
        waves=waves,
        extent=np.ones(3) if extent is None else np.asarray(extent, dtype=np.float64),
        glow=float(glow),
    )


def _noise(m: Material, p: np.ndarray, freq_mult: float = 1.0) -> np.ndarray:
    """Smooth noise in [-1, 1], (N,): a sum of the material's random plane waves."""
    waves = np.sin(p @ (m.waves[:, :3].T * freq_mult) + m.waves[:, 3])
    total = waves[:, 0].copy()
    for k in range(1, waves.shape[1]):  # a column sum: a reduction over a short last axis is slow
        total += waves[:, k]
    return total / waves.shape[1] * 1.4


def _hash(i: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell."""
    return np.modf(np.abs(np.sin(i * 12.9898 + 78.233)) * 43758.5453)[0]


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a * (1.0 - w[:, None]) + b * w[:, None]


def _plain(m: Material, p: np.ndarray) -> np.ndarray:
    return m.color * (1.0 + 0.05 * _noise(m, p))[:, None]


def _plaster(m: Material, p: np.ndarray) -> np.ndarray:
    return m.color * (1.0 + 0.05 * _noise(m, p, 0.5))[:, None]


def _stripes(m: Material, p: np.ndarray) -> np.ndarray:
    w = (np.sin(2 * np.pi * p[:, m.axis] / m.scale) > 0.3).astype(np.float64)
    return _mix(m.color, m.color2, w) * (1.0 + 0.03 * _noise(m, p))[:, None]


def _checker(m: Material, p: np.ndarray) -> np.ndarray:
    cell = np.floor(p / m.scale).sum(axis=1)
    return _mix(m.color, m.color2, np.mod(cell, 2.0))


def _wood(m: Material, p: np.ndarray) -> np.ndarray:
    a = (m.axis + 1) % 3
    f = p[:, a] + 0.35 * m.scale * _noise(m, p, 2.0)
    g = (0.5 + 0.5 * np.sin(2 * np.pi * f / m.scale)) ** 3
    return _mix(m.color, m.color2, 0.6 * g)


def _planks(m: Material, p: np.ndarray) -> np.ndarray:
    across = p[:, m.axis]
    along = p[:, 1 - m.axis]
    idx = np.floor(across / m.scale)
    row_off = _hash(idx) * 2.0
    seg = np.floor((along + row_off) / (m.scale * 8))
    shade = 0.8 + 0.4 * _hash(idx * 31.0 + seg)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (across + 0.02 * _noise(m, p, 6.0)) / (m.scale * 0.15))
    col = _mix(m.color, m.color2, 0.35 * grain**4) * shade[:, None]
    frac = np.mod(across / m.scale, 1.0)
    seam = (frac < 0.04) | (np.mod((along + row_off) / (m.scale * 8), 1.0) < 0.005)
    col[seam] *= 0.45
    return col


def _tiles(m: Material, p: np.ndarray) -> np.ndarray:
    u, v = p[:, 0] / m.scale, p[:, 1] / m.scale
    grout = (np.mod(u, 1.0) < 0.05) | (np.mod(v, 1.0) < 0.05)
    shade = 0.9 + 0.2 * _hash(np.floor(u) * 17.0 + np.floor(v))
    col = m.color * shade[:, None] * (1.0 + 0.03 * _noise(m, p, 4.0))[:, None]
    col[grout] = m.color2
    return col


def _carpet(m: Material, p: np.ndarray) -> np.ndarray:
    fine = np.sin(p[:, 0] * 900.0) * np.sin(p[:, 1] * 870.0)
    return m.color * (1.0 + 0.10 * _noise(m, p, 1.5) + 0.06 * fine)[:, None]


def _fabric(m: Material, p: np.ndarray) -> np.ndarray:
    weave = np.sin(p[:, 0] * 2 * np.pi / 0.008) * np.sin(p[:, 1] * 2 * np.pi / 0.008 + p[:, 2] * 300.0)
    col = m.color * (1.0 + 0.07 * weave + 0.08 * _noise(m, p, 1.5))[:, None]
    if m.scale > 0.05:  # patterned fabric: broad soft stripes
        w = 0.5 + 0.5 * np.sin(2 * np.pi * p[:, m.axis] / m.scale)
        col = _mix(col, m.color2, 0.5 * (w > 0.7))
    return col


def _book(m: Material, p: np.ndarray) -> np.ndarray:
    z = np.abs(p[:, 2]) / m.extent[2]
    band = (z > 0.72) & (z < 0.82)
    col = m.color * (1.0 + 0.04 * _noise(m, p, 4.0))[:, None]
    col[band] = m.color2
    return col


def _bookrow(m: Material, p: np.ndarray) -> np.ndarray:
    """A block of books ``scale`` wide each, side by side along local x, each with its own colour."""
    cell = (p[:, 0] + m.extent[0]) / m.scale
    idx = np.floor(cell)
    col = _mix(m.color, m.color2, _hash(idx)) * (0.55 + 0.9 * _hash(idx * 7.31 + 2.0))[:, None]
    col = np.roll(col, 1, axis=1) * (_hash(idx * 3.7) < 0.3)[:, None] + col * (_hash(idx * 3.7) >= 0.3)[:, None]
    z = p[:, 2] / m.extent[2]
    col[(z > 0.7) & (z < 0.78)] *= 0.4
    col[np.mod(cell, 1.0) < 0.07] *= 0.3
    return col


def _border(m: Material, p: np.ndarray, width: float) -> np.ndarray:
    """True near the outline of the (x, z) face of a thin box (frames of pictures, windows, screens)."""
    return (np.abs(p[:, 0]) > m.extent[0] - width) | (np.abs(p[:, 2]) > m.extent[2] - width)


def _picture(m: Material, p: np.ndarray) -> np.ndarray:
    field_ = _noise(m, p, 1.0)
    hue_mix = 0.5 + 0.5 * np.tanh(2.5 * field_)
    second = np.roll(m.color2, 1) * 0.8 + 0.1
    col = _mix(m.color, second, hue_mix) * (1.0 + 0.15 * _noise(m, p, 6.0))[:, None]
    frame = _border(m, p, m.scale)
    col[frame] = m.color2
    return col


def _screen(m: Material, p: np.ndarray) -> np.ndarray:
    col = np.broadcast_to(m.color, (len(p), 3)).copy() * (1.0 + 0.4 * (p[:, 2] / m.extent[2]))[:, None]
    col[_border(m, p, 0.025)] = m.color2
    return col


def _window(m: Material, p: np.ndarray) -> np.ndarray:
    col = np.broadcast_to(m.color2, (len(p), 3)).copy()
    glass = ~_mullions(m, p)
    col[glass] = 0.05
    return col


def _mullions(m: Material, p: np.ndarray) -> np.ndarray:
    w = 0.035
    return _border(m, p, 0.05) | (np.abs(p[:, 0]) < w) | (np.abs(p[:, 2] - m.extent[2] * 0.3) < w * 0.7)


def _panels(m: Material, p: np.ndarray) -> np.ndarray:
    col = _wood(m, p) if m.scale > 0 else _plain(m, p)
    cell = m.extent[m.axis] / 2 if m.extent[m.axis] > 0.35 else m.extent[m.axis] * 2
    seam = np.abs(np.mod(p[:, m.axis] + m.extent[m.axis], cell)) < 0.008
    col[seam] *= 0.35
    return col


FAMILIES: dict[str, Callable[[Material, np.ndarray], np.ndarray]] = {
    "plain": _plain,
    "plaster": _plaster,
    "stripes": _stripes,
    "checker": _checker,
    "wood": _wood,
    "planks": _planks,
    "tiles": _tiles,
    "carpet": _carpet,
    "fabric": _fabric,
    "book": _book,
    "bookrow": _bookrow,
    "picture": _picture,
    "screen": _screen,
    "window": _window,
    "panels": _panels,
}
"""Texture family name -> albedo function ``(material, local points (N, 3)) -> (N, 3)``."""


def albedo(m: Material, local_points: np.ndarray) -> np.ndarray:
    """Linear albedo (N, 3) in [0, 1] of ``m`` at local points (N, 3)."""
    return np.clip(FAMILIES[m.family](m, local_points), 0.0, 1.0)


def emission(m: Material, local_points: np.ndarray) -> np.ndarray:
    """Emitted linear radiance (N, 3): a sky-like gradient behind window glass, a faint glow on screens."""
    out = np.zeros((len(local_points), 3))
    if m.glow <= 0:
        return out
    if m.family == "window":
        glass = ~_mullions(m, local_points)
        height = 0.5 + 0.5 * local_points[:, 2] / m.extent[2]
        sky = _mix(m.color, np.array([0.95, 0.97, 1.0]), np.clip(height, 0, 1))
        sky *= (1.0 + 0.15 * _noise(m, local_points, 1.0))[:, None]
        out[glass] = sky[glass] * m.glow
    else:
        out[:] = m.color * m.glow
    return out
