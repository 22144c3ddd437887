"""Boundary-matching utilities for edge odsF (``spec/protocols.md`` §4.5), in numpy/scipy.

- :func:`thin`: morphological thinning, identical to ``skimage.morphology.thin`` (the two-subiteration
  algorithm of Guo & Hall, CACM 1989, as in MATLAB ``bwmorph(.., 'thin', Inf)``), but it only revisits
  pixels next to a deletion, so thin maps cost little however large the image.
- :func:`seg2bmap`: BSDS boundary map of a label image (a pixel is a boundary when its label differs from
  its east, south or south-east neighbour).
- :func:`match_counts`: one-to-one matching of predicted to GT boundary pixels within a radius in pixels:
  a **maximum-cardinality** bipartite matching (unit-capacity max flow, Dinic, ``scipy.sparse.csgraph``) on the graph of
  pixel pairs at Euclidean distance ≤ radius (``scipy.spatial.cKDTree``).
- :func:`sweep_counts`: binarise (``>=``, SEISM's ``read_one_png``; or strict ``>``), thin and match at every
  threshold of one image; it builds the pair graph once for the union of the thinned maps and re-uses a
  thinned map when the binarised set did not change.

How the matching differs from BSDS ``correspondPixels`` (used by SEISM): ``correspondPixels`` solves a
minimum-cost perfect assignment in which every pixel may instead go to an outlier node at a high fixed
cost (100 × the radius), so it maximises the number of matched pairs first and then minimises the summed
distance; it therefore returns the maximum cardinality unless trading one pair for two outliers were ever
cheaper, which a cost that high rules out for all practical inputs. Which pixels are matched among equal
cardinalities (ties) may differ, but the counts do not. The distance test here is ``d ≤ radius`` with the
radius = maxDist × image diagonal, unrounded (our reading of ``correspondPixels``; not verified).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow
from scipy.spatial import cKDTree

__all__ = [
    "match_counts",
    "radius_pixels",
    "seg2bmap",
    "sweep_counts",
    "thin",
    "thin_stack",
]


def _guo_hall_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations, indexed by the 8-neighbour code.

    Bit k−1 of the code is neighbour x_k, counter-clockwise from the east: x1 = E, x2 = NE, x3 = N,
    x4 = NW, x5 = W, x6 = SW, x7 = S, x8 = SE. A pixel is deleted when G1 (X_H = 1), G2
    (2 ≤ min(n1, n2) ≤ 3) and G3 (first subiteration) or G3' (second) hold (Guo & Hall 1989, A1).
    """
    code = np.arange(256)
    x = [None] + [((code >> (k - 1)) & 1).astype(bool) for k in range(1, 9)]
    x.append(x[1])  # x9 = x1
    crossings = sum(((~x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1])).astype(int) for i in range(1, 5))
    n1 = sum((x[2 * k - 1] | x[2 * k]).astype(int) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]).astype(int) for k in range(1, 5))
    n_min = np.minimum(n1, n2)
    g12 = (crossings == 1) & (n_min >= 2) & (n_min <= 3)
    g3 = ~((x[2] | x[3] | ~x[8]) & x[1])
    g3p = ~((x[6] | x[7] | ~x[4]) & x[5])
    return g12 & g3, g12 & g3p


_LUTS = _guo_hall_luts()


def _distinct(ids: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """The distinct values of ``ids`` (any order) in O(len(ids)), using ``slot`` as scratch.

    Each value keeps the one position written last into ``slot``: whichever write wins, exactly one
    position per value finds itself there.
    """
    positions = np.arange(len(ids), dtype=slot.dtype)
    slot[ids] = positions
    return ids[slot[ids] == positions]


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary map to one-pixel-wide curves (equal to ``skimage.morphology.thin(mask)``).

    Args:
        mask: (H, W) bool (or anything whose non-zero entries are foreground).

    Returns:
        (H, W) bool.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"thin expects a 2-D map, got shape {mask.shape}")
    return thin_stack(mask[None])[0]


# (row, col) offsets of the neighbours x1..x8: E, NE, N, NW, W, SW, S, SE
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def thin_stack(masks: np.ndarray) -> np.ndarray:
    """Thin N binary maps at once (each exactly as :func:`thin`); cheaper than N separate calls.

    The maps are stacked vertically with a zero row between them, so their neighbourhoods never meet,
    and one loop of subiterations serves all of them.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, H, W) bool.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"thin_stack expects (N, H, W) maps, got shape {masks.shape}")
    n, h, w = masks.shape
    rows, wp = n * (h + 1) + 1, w + 2
    grid = np.zeros((rows, wp), np.uint8)  # zero border and separator rows are background
    grid[1:].reshape(n, h + 1, wp)[:, :h, 1:-1] = masks != 0
    code2d = np.zeros_like(grid)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        code2d[1:-1, 1:-1] |= grid[1 + dy : rows - 1 + dy, 1 + dx : wp - 1 + dx] << k
    img, code = grid.reshape(-1), code2d.reshape(-1)
    offsets = np.array([dy * wp + dx for dy, dx in _NEIGHBOURS])
    # deleting a pixel clears bit ((k + 4) mod 8) of its k-th neighbour's code
    opposite = [np.uint8(1 << ((k + 4) % 8)) for k in range(8)]
    fg = np.flatnonzero(img)
    border = fg[code[fg] != 255]  # interior pixels are never deletable
    # pixels to (re)check under each subiteration: a pixel kept by one table stays kept until a neighbour
    # is deleted, so only neighbours of deletions are revisited
    pending = [border, border]
    j = 0
    slot = np.zeros(img.size, np.int32 if len(fg) < 2**31 else np.int64)  # scratch for de-duplication
    while pending[0].size or pending[1].size:
        cand = pending[j]
        if cand.size:
            cand = _distinct(cand[img[cand] == 1], slot)
            deleted = cand[_LUTS[j][code[cand]]]
            pending[j] = deleted[:0]
            if deleted.size:
                img[deleted] = 0
                neighbours = deleted[:, None] + offsets
                for k in range(8):
                    code[neighbours[:, k]] -= opposite[k]
                neighbours = neighbours.ravel()
                neighbours = neighbours[img[neighbours] == 1]
                pending[j] = neighbours
                pending[1 - j] = np.concatenate((pending[1 - j], neighbours))
        j = 1 - j
    return grid[1:].reshape(n, h + 1, wp)[:, :h, 1:-1].astype(bool)


def seg2bmap(labels: np.ndarray) -> np.ndarray:
    """BSDS boundary map of a label image.

    A pixel is a boundary when its label differs from its east, south or south-east neighbour; in the
    last row only the east neighbour is compared, in the last column only the south one, and the
    bottom-right pixel is never a boundary.

    Args:
        labels: (H, W) integer (or any comparable) labels.

    Returns:
        (H, W) bool.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D label map, got shape {labels.shape}")
    b = np.zeros(labels.shape, bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    b[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    return b


def radius_pixels(max_dist: float, shape: Sequence[int]) -> float:
    """The matching radius in pixels: ``max_dist`` × the diagonal of an (H, W) map."""
    h, w = shape[-2:]
    return float(max_dist) * float(np.hypot(h, w))


_STACK_PIXELS = 1 << 22
"""Pixels thinned together by :func:`sweep_counts` (bounds its scratch memory to ~40 MB)."""


def _coords(mask: np.ndarray) -> np.ndarray:
    """(N, 2) float64 (row, col) coordinates of the foreground of an (H, W) map."""
    return np.argwhere(mask).astype(np.float64)


def _pair_graph(pred_xy: np.ndarray, gt_tree: cKDTree | None, num_gt: int, radius: float) -> csr_matrix:
    """(Np, Ng) CSR incidence of predicted/GT pixel pairs at distance ≤ radius."""
    if gt_tree is None or len(pred_xy) == 0:
        return csr_matrix((len(pred_xy), num_gt), dtype=np.int8)
    pairs = cKDTree(pred_xy).sparse_distance_matrix(gt_tree, radius, output_type="ndarray")
    ones = np.ones(len(pairs), np.int8)
    return csr_matrix((ones, (pairs["i"], pairs["j"])), shape=(len(pred_xy), num_gt))


def _matched(graph: csr_matrix) -> int:
    """Size of a maximum matching of a bipartite incidence matrix (Np, Ng) in CSR form.

    Solved as a unit-capacity maximum flow with Dinic's algorithm on the network source -> predicted ->
    GT -> sink, whose CSR arrays are assembled directly from the incidence matrix. (scipy's
    ``maximum_bipartite_matching`` is avoided on purpose: its Hopcroft-Karp search takes exponential time
    on layered graphs such as parallel pixel chains, scipy issue #26147.)
    """
    if graph.nnz == 0:
        return 0
    n1, n2 = graph.shape
    nnz = graph.nnz
    sink = n1 + n2 + 1  # nodes: 0 source, 1..n1 predicted, n1+1..n1+n2 GT, sink
    indptr = np.concatenate([[0], n1 + graph.indptr, n1 + nnz + np.arange(1, n2 + 1), [n1 + nnz + n2]]).astype(np.int32)
    indices = np.concatenate([np.arange(1, n1 + 1), graph.indices + (n1 + 1), np.full(n2, sink)]).astype(np.int32)
    network = csr_matrix((np.ones(len(indices), np.int32), indices, indptr), shape=(sink + 1, sink + 1))
    return int(maximum_flow(network, 0, sink, method="dinic").flow_value)


def match_counts(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple[int, int, int, int]:
    """One-to-one matching of two boundary maps.

    Args:
        pred: (H, W) bool predicted boundary pixels (already thinned if wanted).
        gt: (H, W) bool GT boundary pixels.
        radius: matching tolerance in pixels (pairs at Euclidean distance ≤ radius may match).

    Returns:
        ``(cntP, sumP, cntR, sumR)``: matched predicted pixels, predicted pixels, matched GT pixels, GT
        pixels. With a single GT map the matching is one-to-one, so cntP == cntR.
    """
    pred_xy, gt_xy = _coords(pred), _coords(gt)
    tree = cKDTree(gt_xy) if len(gt_xy) else None
    matched = _matched(_pair_graph(pred_xy, tree, len(gt_xy), radius))
    return matched, len(pred_xy), matched, len(gt_xy)


def sweep_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    radius: float,
    thin_pred: bool = True,
    inclusive: bool = True,
) -> np.ndarray:
    """Counts of one image at every threshold: binarise ``prob >= τ`` (or ``prob > τ``), thin, match to ``gt``.

    Args:
        prob: (H, W) float edge strength in [0, 1] (pixels to ignore set below every threshold, e.g. -1,
            by the caller).
        gt: (H, W) bool GT boundary map (thinned by the caller).
        thresholds: (T,) float thresholds, any order.
        radius: matching tolerance in pixels.
        thin_pred: thin each binarised map (SEISM does).
        inclusive: ``prob >= τ`` (SEISM's ``read_one_png``: ``png / 255 >= t``) instead of ``prob > τ``.

    Returns:
        (T, 4) int64 rows ``(cntP, sumP, cntR, sumR)`` in the order of ``thresholds``.
    """
    prob = np.asarray(prob, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    gt_xy = _coords(gt)
    num_gt = len(gt_xy)
    out = np.zeros((len(thresholds), 4), np.int64)
    out[:, 3] = num_gt
    values = np.sort(prob, axis=None)
    # the binarised sets are nested, so an equal pixel count means an equal set
    above = values.size - np.searchsorted(values, thresholds, side="left" if inclusive else "right")
    skeletons: dict[int, np.ndarray] = {}
    counts = [int(c) for c in np.unique(above[above > 0])]
    per_chunk = max(1, _STACK_PIXELS // prob.size)
    for start in range(0, len(counts), per_chunk):
        chunk = counts[start : start + per_chunk]
        taus = np.array([thresholds[np.flatnonzero(above == c)[0]] for c in chunk])
        binary = prob[None] >= taus[:, None, None] if inclusive else prob[None] > taus[:, None, None]
        if thin_pred:
            binary = thin_stack(binary)
        for c, skeleton in zip(chunk, binary):
            skeletons[c] = np.flatnonzero(skeleton)
    if not skeletons:
        return out
    union = np.unique(np.concatenate(list(skeletons.values())))
    width = prob.shape[1]
    union_xy = np.stack([union // width, union % width], axis=1).astype(np.float64)
    tree = cKDTree(gt_xy) if num_gt else None
    graph = _pair_graph(union_xy, tree, num_gt, radius)
    matched_by_count: dict[int, int] = {}
    for count, pixels in skeletons.items():
        rows = np.searchsorted(union, pixels)
        matched_by_count[count] = _matched(graph[rows]) if num_gt else 0
    for i, count in enumerate(above):
        if count > 0:
            pixels = skeletons[int(count)]
            out[i, :3] = matched_by_count[int(count)], len(pixels), matched_by_count[int(count)]
    return out
