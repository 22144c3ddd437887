"""Cross-task coherence: do a model's depth, normals and semantics agree with each other? (issue 15)

Every number here is computed from one set of maps alone, the predictions (no ground truth needed, so it
works on unlabelled images) or, as the reference level, the ground truth itself. Three families:

**Depth-normal consistency** (:class:`DepthNormalConsistency`). The depth map is back-projected with the
camera (:mod:`densemtl.metrics.camera`), normals are derived by central differences (tangents along the
rows and columns, their cross product, turned towards the camera), and compared with the normals map by
the angular error of :mod:`densemtl.metrics.normals`: mean, median, RMSE, % within 11.25°/22.5°/30°.
Only pixels away from depth discontinuities count: a pixel is dropped when its cross stencil (itself and
its 4 neighbours at ± ``step`` pixels) has an invalid depth, or it lies within ``margin`` pixels of a
discontinuity, a pixel where the back-projected surface bends by more than ``depth_jump`` degrees between
the backward and the forward tangent (:func:`depth_discontinuities`): planes never do however slanted,
occlusion boundaries and sharp creases do, and the derived normal is meaningless there. ``coverage`` is
the % of valid-depth pixels kept. ``step`` = 1 suits exact or smooth depth (synthetic data, network
predictions); sensor depth quantised to millimetres (real NYUD) needs a wider baseline.

**Boundary agreement** (:class:`BoundaryAgreement`). Semantic boundaries (BSDS ``seg2bmap`` of the label
map) against geometric discontinuities (depth discontinuities as above, or normal edges: the angle between
the normals one pixel before and after exceeds ``normal_edge`` degrees), both thinned and matched one to
one within ``max_dist`` × the image diagonal exactly as edge odsF (:mod:`densemtl.metrics.boundary`).
Counts are pooled over images: ``semantic_matched`` = % of semantic boundary pixels with a geometric
partner, ``geometric_matched`` = % of geometric discontinuity pixels with a semantic partner, ``f`` their
harmonic mean (%). Even a perfect scene does not score 100: a picture on a wall is a semantic boundary
without geometry, a room corner geometry without a semantic boundary. Compare with the ground-truth level.

**Floor / wall agreement** (:class:`FloorWallAgreement`, NYUD-family class sets). Floor normals should be
parallel to gravity (pointing up) and wall normals perpendicular to it. The camera tilt is unknown, so by
default gravity g is **estimated per image** from that image's own floor and wall normals: the unit g
minimising Σ_wall (n·g)² − Σ_floor (n·g)² (the smallest eigenvector, with a weak prior towards the level
camera's up, −y, which only matters when floors and walls do not fix g, e.g. one wall alone), signed so
that it points up in the image (g·(−y) ≥ 0, i.e. the camera is tilted less than 90°). The angles then
measure whether floor and walls agree with **one** vertical: ``floor_mean`` = mean angle between floor
normals and g, ``wall_mean`` = mean |90° − angle(n, g)| of wall normals. ``gravity="level"`` assumes a
level camera instead (g = −y), which adds the camera's true tilt (NYU: typically 10°–20° down) to the
floor error.

:class:`CoherenceMetrics` holds the applicable families for a task set, for predictions and ground truth;
``densemtl test`` reports it as the ``coherence`` section of ``test_metrics.json/.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from torch import Tensor, nn
from torchmetrics import Metric

from densemtl.metrics.boundary import _matched, match_counts, radius_pixels, thin_stack
from densemtl.metrics.camera import PinholeCamera, frame_camera, working_camera
from densemtl.metrics.edge import MAX_DIST
from densemtl.metrics.normals import NormalsMetrics
from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "COHERENCE_DIRECTIONS",
    "DEFAULT_DEPTH_JUMP",
    "DEFAULT_NORMAL_EDGE",
    "FLOOR_WALL_NAMES",
    "BoundaryAgreement",
    "CoherenceMetrics",
    "DepthNormalConsistency",
    "FloorWallAgreement",
    "boundary_counts",
    "build_coherence",
    "coherence_markdown",
    "finish_coherence",
    "depth_discontinuities",
    "floor_wall_ids",
    "normal_edges",
    "normals_from_depth",
    "semantic_boundaries",
]

DEFAULT_DEPTH_JUMP = 20.0
"""Bending angle of the back-projected surface (degrees) above which a pixel is a depth discontinuity."""

DEFAULT_NORMAL_EDGE = 30.0
"""Degrees between the normals one pixel before and after above which a pixel is a normal edge."""

FLOOR_WALL_NAMES: dict[str, tuple[str, ...]] = {"floor": ("floor", "floor mat"), "wall": ("wall",)}
"""Class names (NYU-40 and NYU-13 tables) whose normals are vertical (floor) or horizontal (wall)."""

_DTYPE = torch.float32
"""Working precision of the per-pixel geometry (angles to ~1e-4°); sums and the gravity fit use float64."""

_LEVEL_UP = (0.0, -1.0, 0.0)  # gravity "up" of a level camera (y down)
_THRESHOLDS = (11.25, 22.5, 30.0)


# ----------------------------------------------------------------------------------------- geometry


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over dim 1 of (B, 3, ...) tensors, written out (faster than ``torch.linalg.cross`` on CPU)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot product over dim 1 of (B, 3, ...) tensors, written out: the same float32 result as ``(a * b).sum(1)``
    (summed in the same order) without its strided reduction."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _nonzero(n: Tensor) -> Tensor:
    """(B, H, W) bool: the vector field (B, 3, H, W) is not zero (``(n != 0).any(1)``, written out)."""
    return (n[:, 0] != 0) | (n[:, 1] != 0) | (n[:, 2] != 0)


def _argmax_classes(scores: Tensor) -> Tensor:
    """``scores.argmax(1)`` of (B, C, H, W) scores (the first maximum wins; a NaN counts as the maximum).

    On CPU, ``argmax(1)`` of a contiguous (B, C, H, W) tensor is a strided reduction, several times slower than
    a running maximum over the C planes, which is used then; channels-last scores keep ``argmax``.
    """
    if scores.shape[1] < 2 or scores.stride(1) == 1 or scores.device.type != "cpu":
        return scores.argmax(1)
    best = scores[:, 0]
    index = torch.zeros(best.shape, dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[1]):
        higher = scores[:, k] > best
        best = torch.maximum(best, scores[:, k])  # NaN propagates, so pixels with a NaN are found below
        index.masked_fill_(higher, k)
    nan = torch.isnan(best)
    if bool(nan.any()):
        index[nan] = scores.permute(0, 2, 3, 1)[nan].argmax(-1)
    return index


def _stack_cameras(cameras: Sequence[PinholeCamera], like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(B, 1, 1) fx, fy, cx, cy tensors of ``cameras`` (dtype and device of ``like``)."""
    values = torch.tensor([[c.fx, c.fy, c.cx, c.cy] for c in cameras], dtype=like.dtype, device=like.device)
    return tuple(values[:, i, None, None] for i in range(4))  # type: ignore[return-value]


def _check_depth(depth: Tensor, cameras: Sequence[PinholeCamera]) -> Tensor:
    if depth.dim() == 3:
        depth = depth[:, None]
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W) or (B, H, W), got {tuple(depth.shape)}")
    if len(cameras) != depth.shape[0]:
        raise ValueError(f"{depth.shape[0]} depth maps but {len(cameras)} cameras")
    return depth


def _valid_depth(depth: Tensor) -> Tensor:
    """(B, 1, H, W) bool: finite and positive."""
    return torch.isfinite(depth) & (depth > 0)


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """(B, H, W) bool dilated by a (2r+1)² square (separable: along the rows, then the columns)."""
    if radius <= 0:
        return mask
    out = mask.clone()
    for k in range(1, radius + 1):
        out[:, :, k:] |= mask[:, :, :-k]
        out[:, :, :-k] |= mask[:, :, k:]
    rows = out.clone()
    for k in range(1, radius + 1):
        out[:, k:] |= rows[:, :-k]
        out[:, :-k] |= rows[:, k:]
    return out


def _points(depth: Tensor, cameras: Sequence[PinholeCamera]) -> tuple[Tensor, Tensor]:
    """Back-projected points (B, 3, H, W) float32 (zero where invalid) and validity (B, H, W) bool."""
    depth = _check_depth(depth, cameras)
    valid = _valid_depth(depth)[:, 0]
    z = torch.where(valid, depth[:, 0].to(_DTYPE), torch.zeros((), dtype=_DTYPE))
    b, h, w = z.shape
    fx, fy, cx, cy = _stack_cameras(cameras, z)
    u = torch.arange(w, dtype=z.dtype, device=z.device)[None, None, :]
    v = torch.arange(h, dtype=z.dtype, device=z.device)[None, :, None]
    return torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=1), valid


def _bend(steps: Tensor, k: int, cos_limit: float) -> Tensor:
    """(B, H, W) bool: the backward and forward tangents along the last axis bend by more than the limit (or one
    is zero). ``steps`` (B, 3, H, W + k) holds P(j + k) − P(j), so pixel x has the backward tangent ``steps[x]``
    and the forward one ``steps[x + k]``; each difference and squared length is computed once for both."""
    w = steps.shape[-1] - k
    before, after = steps[..., :w], steps[..., k:]
    squared = _dot(steps, steps)
    dot = _dot(before, after)
    norms = torch.sqrt(squared[..., :w] * squared[..., k:])
    return dot <= cos_limit * norms


def _shifted(x: Tensor, k: int, dy: int, dx: int) -> Tensor:
    """The interior [k:-k, k:-k] of x (..., H, W) shifted by (dy, dx) pixels, |dy|, |dx| ≤ k."""
    h, w = x.shape[-2:]
    return x[..., k + dy : h - k + dy, k + dx : w - k + dx]


def depth_discontinuities(
    depth: Tensor,
    cameras: Sequence[PinholeCamera],
    threshold: float = DEFAULT_DEPTH_JUMP,
    step: int = 1,
    points: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Depth discontinuities: where the back-projected surface bends by more than ``threshold`` degrees.

    At p, along the row and along the column, the backward tangent P(p) − P(p−k) and the forward tangent
    P(p+k) − P(p) of the back-projected points (k = ``step``) are compared; p is a discontinuity when their
    angle exceeds ``threshold`` along either axis. Planes (however slanted) and gently curved surfaces never
    are; occlusion boundaries (a tangent along the viewing ray) and sharp creases are. Being an angle, the
    test is independent of the depth scale.

    Args:
        depth: (B, 1, H, W) or (B, H, W) z-depth in metres; ≤ 0 or non-finite = invalid.
        cameras: B cameras of these maps.
        threshold: bending angle in degrees.
        step: tangent baseline k in pixels (1 for exact or smooth depth; more for quantised sensor depth).
        points: ``_points(depth, cameras)`` when already computed.

    Returns:
        ``(jump, stencil_ok)``: (B, H, W) bool discontinuities (an axis whose stencil leaves the valid depth,
        or the image, is not tested), and (B, H, W) bool where the cross stencil (p and its 4 neighbours at
        ±k) has valid depth (false on the outer k rows and columns).
    """
    if not 0 < threshold < 180:
        raise ValueError(f"the depth discontinuity threshold is a bending angle in (0, 180) degrees, got {threshold}")
    _check_step(step)
    k = step
    points, valid = _points(depth, cameras) if points is None else points
    # outside the image counts as invalid depth, exactly as padding or holes (one rule for every pixel)
    points = F.pad(points, (k, k, k, k))
    valid = F.pad(valid, (k, k, k, k))
    cos_limit = math.cos(math.radians(threshold))
    hp, wp = points.shape[-2:]
    ok_u = _shifted(valid, k, 0, -k) & _shifted(valid, k, 0, k)
    ok_v = _shifted(valid, k, -k, 0) & _shifted(valid, k, k, 0)
    rows, cols = points[..., k : hp - k, :], points[..., :, k : wp - k]  # the image rows / columns, padded
    bend_u = _bend(rows[..., k:] - rows[..., :-k], k, cos_limit) & ok_u
    bend_v = _bend((cols[..., k:, :] - cols[..., :-k, :]).transpose(-1, -2), k, cos_limit).transpose(-1, -2) & ok_v
    centre = _shifted(valid, k, 0, 0)
    return (bend_u | bend_v) & centre, centre & ok_u & ok_v


def _check_step(step: int) -> None:
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step (the finite-difference baseline) must be an integer >= 1 pixel, got {step!r}")


def normals_from_depth(
    depth: Tensor, cameras: Sequence[PinholeCamera], step: int = 1, points: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Surface normals of a z-depth map by back-projection and central differences.

    ``P = Z · ((u − cx) / fx, (v − cy) / fy, 1)``; the normal at p is (P(v+k) − P(v−k)) × (P(u+k) − P(u−k))
    (k = ``step``), normalised and turned towards the camera (n·P < 0): a fronto-parallel wall gives
    (0, 0, −1), the floor seen by a level camera (0, −1, 0).

    Args:
        depth: (B, 1, H, W) or (B, H, W) z-depth in metres; ≤ 0 or non-finite = invalid.
        cameras: B cameras of these (H, W) maps.
        step: finite-difference half-width k in pixels.
        points: ``_points(depth, cameras)`` when already computed.

    Returns:
        ``(normals, ok)``: (B, 3, H, W) float32 unit normals (zero where not ok) and (B, H, W) bool where the
        stencil has valid depth.
    """
    _check_step(step)
    points, valid = _points(depth, cameras) if points is None else points
    b, h, w = valid.shape
    normals = torch.zeros_like(points)
    ok = torch.zeros_like(valid)
    k = step
    if h <= 2 * k or w <= 2 * k:
        return normals, ok
    t_u = _shifted(points, k, 0, k) - _shifted(points, k, 0, -k)
    t_v = _shifted(points, k, k, 0) - _shifted(points, k, -k, 0)
    n = _cross(t_v, t_u)
    length = torch.sqrt(_dot(n, n))[:, None]
    stencil = _shifted(valid, k, 0, 0)
    for dy, dx in ((0, -k), (0, k), (-k, 0), (k, 0)):
        stencil = stencil & _shifted(valid, k, dy, dx)
    good = stencil & (length[:, 0] > 0)
    n = n / length.clamp_min(1e-300)
    facing = _dot(n, _shifted(points, k, 0, 0))[:, None]
    n = torch.where(facing > 0, -n, n)
    normals[:, :, k:-k, k:-k] = torch.where(good[:, None], n, torch.zeros((), dtype=n.dtype))
    ok[:, k:-k, k:-k] = good
    return normals, ok


def _unit(normals: Tensor) -> Tensor:
    """(B, 3, H, W) L2-normalised in float32; zero (or non-finite) vectors become zero."""
    n = normals.to(_DTYPE)
    length = torch.sqrt(n[:, 0:1] * n[:, 0:1] + n[:, 1:2] * n[:, 1:2] + n[:, 2:3] * n[:, 2:3])
    good = torch.isfinite(length) & (length > 0)  # a non-finite component makes the length non-finite
    one, zero = torch.ones((), dtype=n.dtype), torch.zeros((), dtype=n.dtype)
    return torch.where(good, n / torch.where(good, length, one), zero)


def normal_edges(normals: Tensor, threshold: float = DEFAULT_NORMAL_EDGE) -> Tensor:
    """Normal discontinuities: the normals one pixel before and after p (along a row or a column) differ by
    more than ``threshold`` degrees.

    Args:
        normals: (B, 3, H, W), any length; zero vectors are invalid (never an edge).
        threshold: degrees.

    Returns:
        (B, H, W) bool.
    """
    return _normal_edges_unit(_unit(normals), threshold)


def _normal_edges_unit(n: Tensor, threshold: float) -> Tensor:
    """:func:`normal_edges` of unit (or zero) normals (B, 3, H, W)."""
    valid = _nonzero(n)
    cos_t = math.cos(math.radians(threshold))
    edge = torch.zeros_like(valid)
    if n.shape[-1] >= 3:
        dot = _dot(n[:, :, :, :-2], n[:, :, :, 2:])
        edge[:, :, 1:-1] |= (dot < cos_t) & valid[:, :, :-2] & valid[:, :, 2:]
    if n.shape[-2] >= 3:
        dot = _dot(n[:, :, :-2], n[:, :, 2:])
        edge[:, 1:-1] |= (dot < cos_t) & valid[:, :-2] & valid[:, 2:]
    return edge


def semantic_boundaries(labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """BSDS ``seg2bmap`` boundaries of an (H, W) label map, comparing only pairs of non-ignored pixels.

    A pixel is a boundary when its label differs from its east, south or south-east neighbour and both are
    labelled; without ignored pixels this is exactly :func:`densemtl.metrics.boundary.seg2bmap`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be an (H, W) map, got shape {labels.shape}")
    ok = labels != ignore_index
    b = np.zeros(labels.shape, bool)
    b[:, :-1] |= (labels[:, :-1] != labels[:, 1:]) & ok[:, :-1] & ok[:, 1:]
    b[:-1, :] |= (labels[:-1, :] != labels[1:, :]) & ok[:-1, :] & ok[1:, :]
    b[:-1, :-1] |= (labels[:-1, :-1] != labels[1:, 1:]) & ok[:-1, :-1] & ok[1:, 1:]
    return b


def boundary_counts(semantic: np.ndarray, geometric: np.ndarray, radius: float, thin: bool = True) -> np.ndarray:
    """Matched and total pixels of two boundary maps, matched one to one within ``radius`` (as odsF).

    Args:
        semantic: (H, W) bool semantic boundary map.
        geometric: (H, W) bool geometric discontinuity map.
        radius: matching tolerance in pixels (pairs at distance ≤ radius may match).
        thin: thin both maps first (odsF thins its binarised maps and the GT).

    Returns:
        int64 (4,) = (matched semantic, semantic, matched geometric, geometric) pixels.
    """
    maps = np.stack([np.asarray(semantic, bool), np.asarray(geometric, bool)])
    if thin:
        maps = thin_stack(maps)
    return np.asarray(match_counts(maps[0], maps[1], radius), dtype=np.int64)


def _grid_match_counts(semantic: np.ndarray, geometric: np.ndarray, radius: float) -> np.ndarray:
    """:func:`boundary_counts` (``thin=False``) of two (H, W) maps, with the pair graph built on the pixel grid.

    The pairs at Euclidean distance ≤ ``radius`` are found by looking up, for each semantic pixel, the
    geometric pixels at the integer offsets (dy, dx) with dy² + dx² ≤ radius² (the test of
    ``cKDTree.sparse_distance_matrix``), and only pixels with a partner enter the flow network. The maximum
    matching, hence the counts, equal those of :func:`densemtl.metrics.boundary.match_counts`.

    Returns:
        int64 (4,) = (matched semantic, semantic, matched geometric, geometric) pixels.
    """
    sem_idx, geo_idx = np.flatnonzero(semantic), np.flatnonzero(geometric)
    out = np.array([0, sem_idx.size, 0, geo_idx.size], np.int64)
    if sem_idx.size == 0 or geo_idx.size == 0:
        return out
    h, w = semantic.shape
    pad = int(math.floor(radius))
    wp = w + 2 * pad
    lookup = np.full((h + 2 * pad) * wp, -1, np.int32)  # padded grid -> geometric pixel id (-1: none)
    lookup[(geo_idx // w + pad) * wp + geo_idx % w + pad] = np.arange(geo_idx.size, dtype=np.int32)
    d = np.arange(-pad, pad + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    near = (dy * dy + dx * dx).astype(np.float64) <= float(radius) * float(radius)
    offsets = (dy[near] * wp + dx[near]).astype(np.int64)
    partners = lookup[((sem_idx // w + pad) * wp + sem_idx % w + pad)[:, None] + offsets]  # (Ns, offsets)
    rows, cols = np.nonzero(partners >= 0)  # row-major: grouped by semantic pixel
    if rows.size == 0:
        return out
    cols = partners[rows, cols]
    sem_used = np.flatnonzero(np.bincount(rows, minlength=sem_idx.size))
    geo_new = np.full(geo_idx.size, -1, np.int32)
    geo_used = np.flatnonzero(np.bincount(cols, minlength=geo_idx.size))
    geo_new[geo_used] = np.arange(geo_used.size, dtype=np.int32)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=sem_idx.size)[sem_used])])
    graph = csr_matrix(
        (np.ones(cols.size, np.int8), geo_new[cols], indptr), shape=(sem_used.size, geo_used.size)
    )
    out[0] = out[2] = _matched(graph)
    return out


def _tower(maps: np.ndarray, radius: float) -> np.ndarray:
    """(N, H, W) maps stacked vertically with more than ``radius`` empty rows between them: (N (H + gap), W).

    No pair of pixels from different maps is within ``radius``, so a maximum matching of the tower is the union
    of the maps' own maximum matchings and its counts are their sums (one graph and one flow per batch).
    """
    n, h, w = maps.shape
    gap = int(math.floor(radius)) + 1
    tower = np.zeros((n, h + gap, w), bool)
    tower[:, :h] = maps
    return tower.reshape(n * (h + gap), w)


def _f_score(counts: Tensor) -> dict[str, Tensor]:
    """%: semantic_matched, geometric_matched and their harmonic mean ``f`` from pooled counts (4,)."""
    c = counts.double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=c.device)
    sem = torch.where(c[1] > 0, c[0] / c[1].clamp_min(1), nan)
    geo = torch.where(c[3] > 0, c[2] / c[3].clamp_min(1), nan)
    total = sem + geo
    f = torch.where(total > 0, 2 * sem * geo / total.clamp_min(1e-300), torch.zeros_like(total))
    f = torch.where(torch.isnan(total), nan, f)
    return {"f": 100 * f, "semantic_matched": 100 * sem, "geometric_matched": 100 * geo}


# ------------------------------------------------------------------------------------------ metrics


class DepthNormalConsistency(NormalsMetrics):
    """Angle between a normals map and the normals derived from a depth map (degrees); pooled, DDP-exact.

    Args:
        depth_jump: discontinuity threshold of :func:`depth_discontinuities` (degrees).
        margin: pixels within this Chebyshev distance of a discontinuity are left out.
        step: finite-difference baseline in pixels (:func:`normals_from_depth`).
        bin_width: histogram bin of the pooled median (degrees, see :class:`NormalsMetrics`).

    ``update(normals, depth, cameras)``: normals (B, 3, H, W) (any length; zero = invalid), depth (B, 1, H, W)
    metres (≤ 0 invalid), one :class:`~densemtl.metrics.camera.PinholeCamera` per map. ``compute()``: the
    :class:`NormalsMetrics` keys (mean, median, rmse, within_*) plus ``coverage``, the % of valid-depth pixels
    that were scored.
    """

    def __init__(
        self,
        depth_jump: float = DEFAULT_DEPTH_JUMP,
        margin: int = 1,
        step: int = 1,
        bin_width: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(bin_width=bin_width, **kwargs)
        if not 0 < depth_jump < 180:
            raise ValueError(f"depth_jump is a bending angle in (0, 180) degrees, got {depth_jump}")
        _check_step(step)
        self.step = step
        if margin < 0:
            raise ValueError(f"margin must be >= 0 pixels, got {margin}")
        self.depth_jump = float(depth_jump)
        self.margin = int(margin)
        self.add_state("pixels", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        normals: Tensor,
        depth: Tensor,
        cameras: Sequence[PinholeCamera],
        jumps: Tensor | None = None,
        normalized: bool = False,
        points: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """``jumps``: this metric's :func:`depth_discontinuities` of ``depth`` when already computed;
        ``normalized``: the normals are already unit (or zero) float32 vectors; ``points``: ``_points(depth,
        cameras)`` when already computed."""
        depth = _check_depth(depth, cameras)
        if normals.dim() != 4 or normals.shape[1] != 3 or normals.shape[-2:] != depth.shape[-2:]:
            raise ValueError(
                f"normals must be (B, 3, H, W) like depth {tuple(depth.shape)}, got {tuple(normals.shape)}"
            )
        n = normals if normalized else _unit(normals)
        points = _points(depth, cameras) if points is None else points
        derived, ok = normals_from_depth(depth, cameras, self.step, points)
        if jumps is None:
            jumps, _ = depth_discontinuities(depth, cameras, self.depth_jump, self.step, points)
        keep = ok & ~_dilate(jumps, self.margin) & _nonzero(n)
        # both unit: θ = 2·atan2(‖n − d‖, ‖n + d‖) (the NormalsMetrics form, without normalising again)
        diff, total = n - derived, n + derived
        # atan2 on the whole maps (its vectorised and scalar paths may differ in the last bit, so a pixel's
        # angle must not depend on where it lands in the tensor), then only the kept pixels: (K,)
        theta = (2.0 * torch.atan2(torch.sqrt(_dot(diff, diff)), torch.sqrt(_dot(total, total))))[keep]
        self._accumulate(torch.rad2deg(theta.double()), torch.ones_like(theta, dtype=torch.bool), n)
        self.pixels += torch.stack([points[1].sum().double(), torch.tensor(float(theta.numel()), dtype=torch.float64)])

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        out["coverage"] = 100 * self.pixels[1] / self.pixels[0]
        return out


class BoundaryAgreement(Metric):
    """F-score (%) between semantic boundaries and geometric discontinuities, pooled over images; DDP-exact.

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (edge odsF's: 0.011 NYUD, 0.0075
            PASCAL, :data:`densemtl.metrics.edge.MAX_DIST`).
        depth_jump: depth discontinuity threshold in degrees (:func:`depth_discontinuities`).
        normal_edge: normal edge threshold in degrees (:func:`normal_edges`).
        step: tangent baseline of the depth discontinuities in pixels.
        ignore_index: label value that is not a class.

    ``update(labels, depth=None, normals=None, cameras=None, sizes=None)``: labels (B, H, W) int, depth
    (B, 1, H, W) metres with one camera per map, normals (B, 3, H, W); at least one of depth and normals;
    ``sizes``: per image the (H, W) of its content, whose diagonal sets the radius (default the map's).
    ``compute()``: ``f``, ``semantic_matched``, ``geometric_matched`` (%). State: 4 int64 counts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        max_dist: float = MAX_DIST["nyud"],
        depth_jump: float = DEFAULT_DEPTH_JUMP,
        normal_edge: float = DEFAULT_NORMAL_EDGE,
        step: int = 1,
        ignore_index: int = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_step(step)
        self.step = step
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal in (0, 1), got {max_dist}")
        if not 0 < normal_edge < 180:
            raise ValueError(f"normal_edge must be in (0, 180) degrees, got {normal_edge}")
        self.max_dist = float(max_dist)
        self.depth_jump = float(depth_jump)
        self.normal_edge = float(normal_edge)
        self.ignore_index = ignore_index
        self.add_state("counts", torch.zeros(4, dtype=torch.int64), dist_reduce_fx="sum")

    def geometric_map(
        self,
        depth: Tensor | None,
        normals: Tensor | None,
        cameras: Sequence[PinholeCamera] | None = None,
        jumps: Tensor | None = None,
    ) -> Tensor:
        """(B, H, W) bool: depth discontinuities (``jumps`` when already computed) ∪ normal edges."""
        return self._geometric(depth, None if normals is None else _unit(normals), cameras, jumps)

    def _geometric(
        self, depth: Tensor | None, n: Tensor | None, cameras: Sequence[PinholeCamera] | None, jumps: Tensor | None
    ) -> Tensor:
        maps = []
        if jumps is not None:
            maps.append(jumps)
        elif depth is not None:
            if cameras is None:
                raise ValueError("depth discontinuities need the cameras of the depth maps")
            maps.append(depth_discontinuities(depth, cameras, self.depth_jump, self.step)[0])
        if n is not None:
            maps.append(_normal_edges_unit(n, self.normal_edge))
        if not maps:
            raise ValueError("boundary agreement needs a depth or a normals map")
        return maps[0] | maps[1] if len(maps) == 2 else maps[0]

    def update(
        self,
        labels: Tensor,
        depth: Tensor | None = None,
        normals: Tensor | None = None,
        cameras: Sequence[PinholeCamera] | None = None,
        sizes: Sequence[Sequence[int]] | None = None,
        jumps: Tensor | None = None,
        normalized: bool = False,
    ) -> None:
        """``jumps``: this metric's :func:`depth_discontinuities` of ``depth`` when already computed;
        ``normalized``: the normals are already unit (or zero) float32 vectors."""
        if labels.dim() != 3:
            raise ValueError(f"labels must be (B, H, W) class ids, got {tuple(labels.shape)}")
        n = normals if normals is None or normalized else _unit(normals)
        geometric = self._geometric(depth, n, cameras, jumps).cpu().numpy()
        lab = labels.cpu().numpy()
        semantic = np.stack([semantic_boundaries(x, self.ignore_index) for x in lab])
        thinned = thin_stack(np.concatenate([semantic, geometric]))  # one pass for the whole batch
        b = len(lab)
        radii = [radius_pixels(self.max_dist, sizes[i] if sizes is not None else lab[i].shape) for i in range(b)]
        total = np.zeros(4, np.int64)
        for radius in sorted(set(radii)):  # images of one radius are matched together
            idx = [i for i in range(b) if radii[i] == radius]
            semantic_tower = _tower(thinned[idx], radius)
            geometric_tower = _tower(thinned[[b + i for i in idx]], radius)
            total += _grid_match_counts(semantic_tower, geometric_tower, radius)
        self.counts += torch.from_numpy(total).to(self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        return _f_score(self.counts)


def _any_of(labels: Tensor, ids: Sequence[int]) -> Tensor:
    """labels ∈ ids, as a few comparisons (cheaper than ``torch.isin`` for one or two ids)."""
    out = labels == ids[0]
    for i in ids[1:]:
        out |= labels == i
    return out


class FloorWallAgreement(Metric):
    """Floor normals along gravity, wall normals across it (degrees); pooled over pixels, DDP-exact.

    Args:
        floor_ids: class ids whose surfaces are horizontal (normals point up).
        wall_ids: class ids whose surfaces are vertical (normals horizontal).
        gravity: ``estimate`` (per image, from its floor and wall normals; module docstring) or ``level``
            (the camera is assumed level: up = −y).
        min_pixels: images with fewer floor + wall pixels (with a valid normal) are skipped.
        prior: weight of the level-camera prior in the gravity fit, per floor/wall pixel.

    ``update(labels, normals)``: labels (B, H, W) int, normals (B, 3, H, W) (zero = invalid). ``compute()``:
    ``floor_mean``, ``floor_within_11.25`` (%), ``wall_mean``, ``wall_within_11.25`` (%), ``images`` (the
    number scored). State: 7 float64 sums.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        floor_ids: Sequence[int],
        wall_ids: Sequence[int],
        gravity: str = "estimate",
        min_pixels: int = 64,
        prior: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if gravity not in ("estimate", "level"):
            raise ValueError(f"gravity must be 'estimate' or 'level', got {gravity!r}")
        if not floor_ids or not wall_ids:
            raise ValueError(f"floor_ids and wall_ids must be non-empty, got {list(floor_ids)} and {list(wall_ids)}")
        self.floor_ids = tuple(int(i) for i in floor_ids)
        self.wall_ids = tuple(int(i) for i in wall_ids)
        self.gravity = gravity
        self.min_pixels = int(min_pixels)
        self.prior = float(prior)
        # floor: n, Σθ, #θ < 11.25; wall: n, Σθ, #θ < 11.25; images scored
        self.add_state("sums", torch.zeros(7, dtype=torch.float64), dist_reduce_fx="sum")

    def _gravity(self, n: Tensor, floor: Tensor, wall: Tensor) -> Tensor:
        """(B, 3) unit up vectors."""
        up = torch.tensor(_LEVEL_UP, dtype=torch.float64, device=n.device)
        if self.gravity == "level":
            return up.expand(n.shape[0], 3).to(n.dtype)
        weight = wall.to(n.dtype) - floor.to(n.dtype)  # minimise Σ_wall (n·g)² − Σ_floor (n·g)²
        m = torch.einsum("bihw,bjhw->bij", n * weight[:, None], n).double()
        count = (floor | wall).sum((1, 2)).double()
        eye = torch.eye(3, dtype=torch.float64, device=n.device) - torch.outer(up, up)
        m = m + (self.prior * count.clamp_min(1))[:, None, None] * eye
        g = torch.linalg.eigh(m)[1][:, :, 0]
        return torch.where((g @ up)[:, None] < 0, -g, g).to(n.dtype)

    def update(self, labels: Tensor, normals: Tensor, normalized: bool = False) -> None:
        """``normalized``: the normals are already unit (or zero) float32 vectors."""
        if labels.dim() != 3 or normals.dim() != 4 or normals.shape[1] != 3 or normals.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"labels (B, H, W) and normals (B, 3, H, W) of one size expected, got {tuple(labels.shape)} "
                f"and {tuple(normals.shape)}"
            )
        n = normals if normalized else _unit(normals)
        has_normal = _nonzero(n)
        floor = _any_of(labels, self.floor_ids) & has_normal
        wall = _any_of(labels, self.wall_ids) & has_normal
        used = (floor | wall).sum((1, 2)) >= self.min_pixels
        if not bool(used.any()):
            return
        n, floor, wall = n[used], floor[used], wall[used]
        g = self._gravity(n, floor, wall)[:, :, None, None]
        dot = _dot(n, g)
        g0, g1, g2 = g[:, 0], g[:, 1], g[:, 2]
        c0, c1, c2 = n[:, 1] * g2 - n[:, 2] * g1, n[:, 2] * g0 - n[:, 0] * g2, n[:, 0] * g1 - n[:, 1] * g0  # n × g
        sin = torch.sqrt(c0 * c0 + c1 * c1 + c2 * c2)  # |n × g|: no cancellation near 0° (unlike sqrt(1 − dot²))
        floor_angle = torch.rad2deg(torch.atan2(sin, dot))  # angle(n, g)
        wall_angle = torch.rad2deg(torch.atan2(dot.abs(), sin))  # |90° − angle(n, g)|
        zero = torch.zeros((), dtype=dot.dtype, device=dot.device)
        stats = []
        for mask, angle in ((floor, floor_angle), (wall, wall_angle)):
            stats += [
                mask.sum().double(),
                torch.where(mask, angle, zero).double().sum(),
                (mask & (angle < _THRESHOLDS[0])).sum().double(),
            ]
        stats.append(used.sum().double())
        self.sums += torch.stack(stats).to(self.sums)

    def compute(self) -> dict[str, Tensor]:
        s = self.sums
        return {
            "floor_mean": s[1] / s[0],
            "floor_within_11.25": 100 * s[2] / s[0],
            "wall_mean": s[4] / s[3],
            "wall_within_11.25": 100 * s[5] / s[3],
            "images": s[6],
        }


# ------------------------------------------------------------------------------------------ container


def floor_wall_ids(family: str | None, num_classes: int | None) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Floor and wall class ids of a NYUD-family class set (NYU-40 or NYU-13), else None."""
    from densemtl.data.nyud import NYU13_CLASSES, NYU40_CLASSES

    if family not in ("nyud", "nyuv2_13"):
        return None
    names = {len(NYU40_CLASSES): NYU40_CLASSES, len(NYU13_CLASSES): NYU13_CLASSES}.get(num_classes or 0)
    if names is None:
        return None
    floor = tuple(names.index(c) for c in FLOOR_WALL_NAMES["floor"] if c in names)
    wall = tuple(names.index(c) for c in FLOOR_WALL_NAMES["wall"] if c in names)
    return floor, wall


SOURCES = ("pred", "gt")


def _metas(batch: Mapping[str, Any], size: int) -> list[Mapping[str, Any]]:
    metas = batch.get("meta")
    if isinstance(metas, Sequence) and len(metas) == size:
        return [m if isinstance(m, Mapping) else {} for m in metas]
    return [{} for _ in range(size)]


def _box_mask(metas: Sequence[Mapping[str, Any]], shape: Sequence[int], device: torch.device) -> Tensor:
    """(B, H, W) bool: True inside each sample's ``meta['valid_box']`` (everywhere without one)."""
    b, h, w = len(metas), int(shape[0]), int(shape[1])
    mask = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    for i, meta in enumerate(metas):
        top, left, bh, bw = meta.get("valid_box", (0, 0, h, w))
        mask[i, top : top + bh, left : left + bw] = True
    return mask


class CoherenceMetrics(nn.Module):
    """The coherence families a task set allows, on predictions and (where targets exist) ground truth.

    Args:
        tasks: task names of the model.
        family: dataset family (camera, class table, boundary tolerance).
        num_classes: task -> class count (``semseg``, for the floor and wall ids).
        sources: ``pred`` and/or ``gt``.
        intrinsics: ``(fx, fy, cx, cy)`` of the dataset's frames, overriding the family's camera.
        intrinsics_size: (H, W) at which ``intrinsics`` hold.
        depth_jump: depth discontinuity threshold in degrees (:func:`depth_discontinuities`).
        step: finite-difference baseline in pixels (1: exact or smooth depth).
        margin: pixels kept away from depth discontinuities by the depth-normal consistency.
        normal_edge: normal edge threshold in degrees (boundary agreement).
        max_dist: boundary matching tolerance (fraction of the diagonal); default edge odsF's for the family.
        gravity: ``estimate`` or ``level`` (floor / wall agreement).
        floor_ids, wall_ids: class ids overriding the NYU tables.

    Families: ``depth_normal`` needs depth, normals and a camera; ``boundary`` semseg and depth or normals;
    ``floor_wall`` semseg, normals and floor / wall classes. Predictions are scored inside each sample's
    ``meta['valid_box']`` at the network resolution, with the frame camera carried there.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        family: str | None = None,
        num_classes: Mapping[str, int] | None = None,
        sources: Sequence[str] = SOURCES,
        intrinsics: Sequence[float] | None = None,
        intrinsics_size: Sequence[int] | None = None,
        depth_jump: float = DEFAULT_DEPTH_JUMP,
        step: int = 1,
        margin: int = 1,
        normal_edge: float = DEFAULT_NORMAL_EDGE,
        max_dist: float | None = None,
        gravity: str = "estimate",
        floor_ids: Sequence[int] | None = None,
        wall_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(f"coherence sources must be a non-empty subset of {SOURCES}, got {list(sources)}")
        self.tasks = tuple(tasks)
        self.family = family
        self.depth_jump = float(depth_jump)
        self.step = step
        self.sources = tuple(dict.fromkeys(sources))
        self.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)
        self.intrinsics_size = None if intrinsics_size is None else tuple(int(v) for v in intrinsics_size)
        if self.intrinsics is not None:  # check early
            frame_camera(family, (1, 1), self.intrinsics, self.intrinsics_size)
        self.notes: list[str] = []
        has = set(self.tasks).__contains__
        ids = None
        if floor_ids is not None or wall_ids is not None:
            if floor_ids is None or wall_ids is None:
                raise ValueError("give both floor_ids and wall_ids (class ids), or neither")
            ids = (tuple(floor_ids), tuple(wall_ids))
        elif has("semseg"):
            ids = floor_wall_ids(family, (num_classes or {}).get("semseg"))
        families: dict[str, Any] = {}
        self.use_depth = has("depth") and self._camera_known()
        if has("depth") and not self.use_depth:
            self.notes.append(f"no camera for family {family!r}: depth is not used; set intrinsics to use it")
        if self.use_depth and has("normals"):
            families["depth_normal"] = lambda: DepthNormalConsistency(depth_jump, margin, step)
        if has("semseg") and (self.use_depth or has("normals")):
            dist = max_dist if max_dist is not None else MAX_DIST.get(family or "", MAX_DIST["nyud"])
            families["boundary"] = lambda: BoundaryAgreement(dist, depth_jump, normal_edge, step)
        if has("semseg") and has("normals"):
            if ids is not None:
                families["floor_wall"] = lambda: FloorWallAgreement(ids[0], ids[1], gravity=gravity)
            else:
                self.notes.append(f"floor_wall: no floor / wall classes known for family {family!r}")
        self.families = tuple(families)
        self.metrics = nn.ModuleDict(
            {s: nn.ModuleDict({name: make() for name, make in families.items()}) for s in self.sources}
        )

    def __bool__(self) -> bool:
        return bool(self.families)

    def _camera_known(self) -> bool:
        if self.intrinsics is not None:
            return True
        try:
            frame_camera(self.family, (480, 640))
        except ValueError:
            return False
        return True

    def _cameras(self, metas: Sequence[Mapping[str, Any]], input_size: Sequence[int]) -> list[PinholeCamera]:
        cams = []
        for meta in metas:
            size = meta.get("size", tuple(input_size))
            frame = frame_camera(self.family, size, self.intrinsics, self.intrinsics_size)
            cams.append(working_camera(frame, meta, input_size))
        return cams

    @staticmethod
    def _maps(source: str, preds: Mapping[str, Tensor], batch: Mapping[str, Any], size: Sequence[int]):
        """task -> map of one source at the input size (None when absent): labels, depth, normals."""
        if source == "gt":
            labels = batch.get("semseg")
            if labels is not None and labels.dim() == 4:
                labels = labels[:, 0]
            return {"semseg": labels, "depth": batch.get("depth"), "normals": batch.get("normals")}
        out: dict[str, Tensor | None] = {}
        for task in ("semseg", "depth", "normals"):
            p = preds.get(task)
            if p is not None:
                p = p.detach()
                if p.shape[-2:] != tuple(size):
                    p = F.interpolate(p.float(), size=tuple(size), mode="bilinear", align_corners=False)
                if task == "semseg":
                    p = _argmax_classes(p)
            out[task] = p
        return out

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        """Accumulate one batch: ``preds`` task -> (B, C, H, W); ``batch`` the sample contract (``meta``
        with ``size`` and ``valid_box``; targets for the ``gt`` source, which is skipped without them)."""
        if not self.families:
            return
        size = tuple(batch["image"].shape[-2:]) if "image" in batch else tuple(next(iter(preds.values())).shape[-2:])
        first = next(iter(preds.values()))
        metas = _metas(batch, first.shape[0])
        box = _box_mask(metas, size, first.device)
        padded = not bool(box.all())  # nothing to mask when every sample fills its input
        cameras = self._cameras(metas, size) if self.use_depth else None
        sizes = [tuple(m.get("valid_box", (0, 0, *size))[2:]) for m in metas]
        for source in self.sources:
            maps = self._maps(source, preds, batch, size)
            labels, normals = maps["semseg"], maps["normals"]
            depth = maps["depth"] if self.use_depth else None
            if padded and labels is not None:
                labels = torch.where(box.to(labels.device), labels, IGNORE_INDEX)
            if padded and depth is not None:
                depth = torch.where(box[:, None].to(depth.device), depth, torch.zeros((), dtype=depth.dtype))
            if padded and normals is not None:
                normals = torch.where(box[:, None].to(normals.device), normals, torch.zeros((), dtype=normals.dtype))
            group = self.metrics[source]
            jumps = points = None  # points and depth discontinuities, shared by the two families that use them
            if depth is not None:
                points = _points(depth, cameras)
                jumps = depth_discontinuities(depth, cameras, self.depth_jump, self.step, points)[0]
            n = None if normals is None else _unit(normals)  # normalised once for the three families
            for name in self.families:  # a missing map (no targets when predicting) skips the family
                if name == "depth_normal" and n is not None and depth is not None:
                    group[name].update(n, depth, cameras, jumps, normalized=True, points=points)
                elif name == "boundary" and labels is not None and (depth is not None or n is not None):
                    group[name].update(labels, depth, n, cameras, sizes, jumps, normalized=True)
                elif name == "floor_wall" and labels is not None and n is not None:
                    group[name].update(labels, n, normalized=True)

    def compute(self) -> dict[str, dict[str, dict[str, float]]]:
        """source -> family -> metric -> float; all ranks synchronised (every rank must call it).

        A family that scored nothing for a source (e.g. ground truth when predicting on unlabelled images)
        is left out."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for source in self.sources:
            group = self.metrics[source]
            row = {}
            for name in self.families:
                with warnings.catch_warnings():  # a metric never updated on this rank still joins the sync
                    warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                    values = {k: float(v) for k, v in group[name].compute().items()}
                if any(math.isfinite(v) for k, v in values.items() if k != "images"):
                    row[name] = values
            if row:
                out[source] = row
        return out

    def reset(self) -> None:
        for group in self.metrics.values():
            for metric in group.values():
                metric.reset()


def build_coherence(
    tasks: Sequence[str],
    family: str | None = None,
    num_classes: Mapping[str, int] | None = None,
    options: bool | Mapping[str, Any] = True,
) -> CoherenceMetrics | None:
    """The :class:`CoherenceMetrics` of a task set, or None when switched off or when no family applies.

    Args:
        tasks: task names.
        family: dataset family.
        num_classes: task -> class count.
        options: True (defaults), False (off), or keyword arguments of :class:`CoherenceMetrics`.
    """
    if options is False or options is None:
        return None
    if options is True:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(f"coherence must be true, false or a mapping of CoherenceMetrics options, got {options!r}")
    metrics = CoherenceMetrics(tasks, family, num_classes, **dict(options))
    return metrics if metrics else None


COHERENCE_DIRECTIONS: dict[str, bool | None] = {
    "mean": False,
    "median": False,
    "rmse": False,
    "within_11.25": True,
    "within_22.5": True,
    "within_30": True,
    "coverage": None,
    "f": True,
    "semantic_matched": True,
    "geometric_matched": True,
    "floor_mean": False,
    "floor_within_11.25": True,
    "wall_mean": False,
    "wall_within_11.25": True,
    "images": None,
}
"""Metric name -> True if higher is better, False if lower, None for a count or a coverage."""

FAMILY_TITLES = {
    "depth_normal": "depth-normal consistency (degrees; % within)",
    "boundary": "boundary agreement, semantic vs geometric (%)",
    "floor_wall": "floor / wall agreement with one vertical (degrees; % within)",
}
SOURCE_TITLES = {"pred": "predictions", "gt": "ground truth (reference level)"}


def coherence_markdown(values: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Markdown lines: one table per family, a row per source (:meth:`CoherenceMetrics.compute` output)."""
    lines = ["## Cross-task coherence", ""]
    families = list(dict.fromkeys(f for row in values.values() for f in row))
    arrows = {True: " ↑", False: " ↓", None: ""}
    for family in families:
        names = list(dict.fromkeys(n for row in values.values() for n in row.get(family, {})))
        lines += [f"**{FAMILY_TITLES.get(family, family)}**", ""]
        lines.append("| source | " + " | ".join(f"{n}{arrows[COHERENCE_DIRECTIONS.get(n)]}" for n in names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for source, row in values.items():
            if family not in row:
                continue
            cells = []
            for n in names:
                v = row[family].get(n)
                cells.append("n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.2f}")
            lines.append(f"| {SOURCE_TITLES.get(source, source)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def finish_coherence(metrics: CoherenceMetrics | None) -> dict[str, dict[str, dict[str, float]]] | None:
    """Compute (all ranks) and reset; None when there is nothing to report."""
    if metrics is None:
        return None
    values = metrics.compute()
    metrics.reset()
    return values or None
