"""Converters from raw dataset releases to the standard layouts, and the geometry they need.

:func:`convert_nyud_mat` turns the official NYU Depth v2 ``nyu_depth_v2_labeled.mat`` (1,449 frames) into
the ``nyud`` layout (``NYUDv2/``, ``spec/protocols.md`` §2.1) read by :class:`densemtl.data.nyud.NYUD`.
:func:`normals_from_depth` derives surface normals from a depth map and pinhole intrinsics, and
:func:`label_boundaries` derives a binary edge map from a label map.

Camera convention (used by :func:`normals_from_depth` and the whole of densemtl): x to the right, y down,
z forward (into the scene); pixel (u, v) = (column, row) back-projects to
``(X, Y, Z) = ((u - cx) Z / fx, (v - cy) Z / fy, Z)``. Normals are unit vectors in that frame that point
towards the camera (``n . (X, Y, Z) < 0``): a wall facing the camera is ``(0, 0, -1)``, a floor below it
``(0, -1, 0)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densemtl.data.nyud import NYU40_CLASSES, atomic_write, write_nyud_sample, write_split
from densemtl.data.owned import build_folder, write_owner_marker
from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "NYU_COLOR_INTRINSICS",
    "convert_nyud_mat",
    "label_boundaries",
    "load_nyu40_mapping",
    "load_nyu_splits",
    "normals_from_depth",
]

log = logging.getLogger(__name__)

NYU_COLOR_INTRINSICS: dict[str, float] = {"fx": 518.86, "fy": 519.47, "cx": 325.58, "cy": 253.74}
"""Kinect colour-camera intrinsics of NYU Depth v2 (pixels), from the NYU toolbox ``camera_params.m``."""

NYU_FRAME_SIZE = (480, 640)


# ----------------------------------------------------------------------------------------- geometry


def _tangent(points: np.ndarray, valid: np.ndarray, axis: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference tangent of ``points`` (H, W, 3) along ``axis``: central where both neighbours are
    valid, else one-sided. Returns the tangent (H, W, 3) and its validity (H, W)."""
    n = points.shape[axis]
    fwd = np.zeros_like(points)
    bwd = np.zeros_like(points)
    fwd_ok = np.zeros(valid.shape, dtype=bool)
    bwd_ok = np.zeros(valid.shape, dtype=bool)
    if n > step:
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(0, n - step), slice(step, n)
        lo, hi = tuple(lo), tuple(hi)
        diff = points[hi] - points[lo]
        ok = valid[hi] & valid[lo]
        fwd[lo], fwd_ok[lo] = diff, ok  # p[i + step] - p[i], stored at i
        bwd[hi], bwd_ok[hi] = diff, ok  # p[i] - p[i - step], stored at i
    both = fwd_ok & bwd_ok
    tangent = np.where(both[..., None], fwd + bwd, np.where(fwd_ok[..., None], fwd, bwd))
    return tangent, fwd_ok | bwd_ok


def normals_from_depth(
    depth: np.ndarray,
    fx: float = NYU_COLOR_INTRINSICS["fx"],
    fy: float = NYU_COLOR_INTRINSICS["fy"],
    cx: float = NYU_COLOR_INTRINSICS["cx"],
    cy: float = NYU_COLOR_INTRINSICS["cy"],
    step: int = 1,
) -> np.ndarray:
    """Surface normals from a depth map by back-projection and finite differences.

    Each pixel is back-projected to ``P = ((u - cx) Z / fx, (v - cy) Z / fy, Z)`` (x right, y down, z forward).
    The tangents along the rows and the columns are central differences over ``step`` pixels (one-sided
    where a neighbour is invalid or outside the image); the normal is their cross product, normalised and
    oriented towards the camera (``n . P < 0``). No smoothing: depth edges give mixed normals there.

    Args:
        depth: float (H, W) metres; 0, negative or non-finite = invalid.
        fx, fy: focal lengths in pixels (default: NYU colour camera).
        cx, cy: principal point in pixels (column, row), for the frame ``depth`` is in.
        step: finite-difference half-width in pixels (>= 1); larger is smoother.

    Returns:
        float32 (H, W, 3) unit normals; the zero vector where the depth or both neighbours along an axis are
        invalid, or the tangents are degenerate.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if fx <= 0 or fy <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0.0)
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    points = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)
    t_u, ok_u = _tangent(points, valid, axis=1, step=step)
    t_v, ok_v = _tangent(points, valid, axis=0, step=step)
    normals = np.cross(t_v, t_u)  # fronto-parallel plane: (0, 0, -) = towards the camera
    norm = np.linalg.norm(normals, axis=-1)
    ok = valid & ok_u & ok_v & (norm > 1e-12)
    normals = normals / np.where(ok, norm, 1.0)[..., None]
    flip = (normals * points).sum(-1) > 0
    normals[flip] *= -1.0
    normals[~ok] = 0.0
    return normals.astype(np.float32)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Binary boundaries of a label map by the seg2bmap rule (``spec/protocols.md`` §4.5).

    A pixel is a boundary when its label differs from its east, south or south-east neighbour; the last row
    and column compare only along that row or column. Every value (the unlabelled 0 included) counts as a
    label, so boundaries between objects and unlabelled regions are kept. Lines are one pixel wide.

    Args:
        labels: int (H, W).

    Returns:
        uint8 (H, W) in {0, 1}.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :-1] |= labels[1:, 1:] != labels[:-1, :-1]
    return edge.astype(np.uint8)


# -------------------------------------------------------------------------------- metadata files


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return scipy.io.loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as err:
        raise ValueError(f"cannot read MATLAB file {path}: {err}") from err


def _mat_strings(cells: np.ndarray) -> list[str]:
    """A scipy-loaded MATLAB cell array of strings -> list of str (empty cells -> '')."""
    return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in np.asarray(cells).ravel()]


def load_nyu40_mapping(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Read ``classMapping40.mat``: the map from the 894 NYU label ids to the 40 classes.

    Args:
        path: the ``.mat`` file with ``mapClass`` (1, 894) uint8 in 1..40 and, optionally,
            ``allClassName`` (1, 894) cell of the raw class names.

    Returns:
        ``(map_class, names)``: ``map_class[k - 1]`` is the 40-class id (1..40) of raw label ``k``;
        ``names[k - 1]`` the raw class name (None when the file has no names).
    """
    path = Path(path)
    mat = _loadmat(path)
    if "mapClass" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} has no 'mapClass' variable (keys: {keys}); expected classMapping40.mat")
    map_class = np.asarray(mat["mapClass"]).ravel().astype(np.int64)
    if map_class.size == 0 or map_class.min() < 1 or map_class.max() > len(NYU40_CLASSES):
        raise ValueError(f"{path}: 'mapClass' must hold 40-class ids 1..40, got range {map_class.min()}..")
    names = _mat_strings(mat["allClassName"]) if "allClassName" in mat else None
    if names is not None and len(names) != map_class.size:
        raise ValueError(f"{path}: 'allClassName' has {len(names)} entries but 'mapClass' {map_class.size}")
    return map_class, names


def load_nyu_splits(path: str | Path) -> dict[str, list[int]]:
    """Read ``splits.mat`` (``trainNdxs``, ``testNdxs``; 1-based frame indices).

    Returns:
        ``{"train": [...], "val": [...]}`` (1-based indices; ``val`` is the official test split).
    """
    path = Path(path)
    mat = _loadmat(path)
    out = {}
    for split, key in (("train", "trainNdxs"), ("val", "testNdxs")):
        if key not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path} has no {key!r} variable (keys: {keys}); expected NYU splits.mat")
        idx = np.asarray(mat[key]).ravel().astype(np.int64)
        if idx.size and idx.min() < 1:
            raise ValueError(f"{path}: {key!r} must hold 1-based frame indices, found {idx.min()}")
        out[split] = idx.tolist()
    return out


# ------------------------------------------------------------------------------------ the converter


def _h5_names(f: Any) -> list[str] | None:
    """The ``names`` cell array of a v7.3 file (object references to uint16 char arrays), or None."""
    if "names" not in f:
        return None
    names = []
    for ref in np.asarray(f["names"]).ravel():
        chars = np.asarray(f[ref]).ravel()
        # MATLAB stores a char array as uint16 codes; an empty cell as a uint64 placeholder.
        names.append("".join(map(chr, chars)) if chars.dtype == np.uint16 else "")
    return names


def _raw_to_40(map_class: np.ndarray, map_names: list[str] | None, mat_names: list[str] | None) -> np.ndarray:
    """Lookup table raw label id (0..n) -> 40-class id (0 = unlabelled, 1..40)."""
    if mat_names is None or map_names is None or mat_names == map_names:
        if mat_names is not None and len(mat_names) != map_class.size:
            raise ValueError(f"the .mat has {len(mat_names)} class names but the mapping {map_class.size}")
        return np.concatenate([[0], map_class])
    by_name = dict(zip(map_names, map_class.tolist()))
    unknown = [n for n in mat_names if n not in by_name]
    if unknown:
        raise ValueError(f"class names of the .mat missing from the class mapping: {unknown[:5]}")
    return np.asarray([0] + [by_name[n] for n in mat_names], dtype=np.int64)


def _frame(dataset: Any, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of a MATLAB (H, W[, C], N) array read through h5py as (N[, C], W, H):
    returns (H, W[, C])."""
    arr = np.asarray(dataset[index])
    return arr.T if arr.ndim == 2 else arr.transpose(2, 1, 0)


def _check_mat_arrays(f: Any, path: Path) -> int:
    missing = [k for k in ("images", "depths", "labels") if k not in f]
    if missing:
        raise ValueError(
            f"{path} lacks dataset(s) {missing}; expected nyu_depth_v2_labeled.mat with images, depths, labels"
        )
    images, depths, labels = f["images"], f["depths"], f["labels"]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{path}: 'images' has shape {images.shape}; expected (N, 3, W, H) as h5py reads MATLAB's (H, W, 3, N)"
        )
    n, _, w, h = images.shape
    for key, ds in (("depths", depths), ("labels", labels)):
        if ds.shape != (n, w, h):
            raise ValueError(
                f"{path}: {key!r} has shape {ds.shape}; expected {(n, w, h)} to match 'images' {images.shape}"
            )
    return n


_README = """# NYUD-v2 in the `nyud` layout (converted by densemtl)

Converted from `{mat}` by `densemtl.data.convert.convert_nyud_mat`.
Read it with the `nyud` dataset (`densemtl.data.nyud.NYUD`).

- `gt_sets/train.txt`, `gt_sets/val.txt`: ids from `{splits}`: `trainNdxs` ({n_train}),
  `testNdxs` ({n_val}, written as `val`).
- `images/<id>.png`: RGB of the labelled frame; id = 4-digit 1-based index into the 1,449 labelled frames.
- `segmentation/<id>.png`: uint8, 0 = unlabelled, 1..40 = NYU-40 classes, mapped from the 894 raw labels
  by `{mapping}` (`mapClass`).
- `depth/<id>.npy`: float32 (H, W) metres, the hole-filled `depths` of the .mat (not `rawDepths`);
  0 = invalid.
- `normals/<id>.png`: {normals_note}.
- `edge/<id>.png`: uint8 0/255, boundaries of the 40-class labels by the seg2bmap rule (a pixel whose
  label differs from its east, south or south-east neighbour; unlabelled counts as a label), one pixel wide.

Resolution: {resolution}.
The released ATRC archive is 425x560; how it was derived from the 480x640 frames is not documented
(the Eigen et al. border crop, rows 45:471 and columns 41:601, is one guess), so numbers on this conversion
are close to, but not guaranteed identical with, the published tables.
"""


def convert_nyud_mat(
    mat_path: str | Path,
    *,
    out: str | Path,
    class_mapping: str | Path,
    splits: str | Path,
    crop: tuple[int, int, int, int] | None = None,
    frames: Sequence[int] | None = None,
    normals_step: int = 3,
    overwrite: bool = False,
) -> Path:
    """Convert the official ``nyu_depth_v2_labeled.mat`` into the ``nyud`` layout (``NYUDv2/``).

    The .mat (MATLAB v7.3, i.e. HDF5) stores ``images`` (480, 640, 3, 1449) uint8, ``depths`` (480, 640,
    1449) float metres (hole-filled), ``labels`` (480, 640, 1449) uint16 raw class ids (0 = unlabelled,
    1..894) and ``names``; h5py reads MATLAB's column-major arrays with reversed axes, (N, 3, W, H) and
    (N, W, H), so every frame is transposed back to (H, W[, 3]).

    Output, per frame with 1-based index ``i`` (id ``f"{i:04d}"``): RGB png; 40-class labels through
    ``class_mapping`` (``mapClass``; matched by class name when the .mat and the mapping both carry names);
    depth in metres; surface normals derived from the depth with the NYU colour intrinsics
    (:func:`normals_from_depth`, as the .mat has none); edges from the 40-class label boundaries
    (:func:`label_boundaries`). ``gt_sets/train.txt`` and ``gt_sets/val.txt`` come from ``splits``
    (``trainNdxs``/``testNdxs``). A ``README.md`` in ``out`` records all of this.

    Args:
        mat_path: ``nyu_depth_v2_labeled.mat``.
        out: output folder (the ``NYUDv2/`` root); must be empty or absent unless ``overwrite``. It is written
            into a temporary sibling folder and renamed into place when complete, with a ``densemtl.json``
            marker (:mod:`densemtl.data.owned`).
        class_mapping: ``classMapping40.mat`` (``mapClass``, ``allClassName``).
        splits: ``splits.mat`` (``trainNdxs``, ``testNdxs``, 1-based).
        crop: optional ``(top, left, height, width)`` crop of every frame, in pixels, applied after the
            normals are derived on the full frame. Default: the full 480x640 frame.
        frames: optional 1-based frame indices to convert (default: every frame in the splits); the split
            files then list only these.
        normals_step: finite-difference half-width for the derived normals, pixels (3 tames the depth noise:
            on real NYU frames it lifts floor pixels within 30 degrees of vertical from about 60 % to 77 %).
        overwrite: replace a non-empty ``out`` that densemtl wrote (it holds the marker); a folder without it is
            never deleted. The old folder is removed only after the new one is complete, so a bad input
            leaves it untouched.

    Returns:
        ``out`` as a :class:`Path`.
    """
    import h5py

    mat_path, out = Path(mat_path), Path(out)
    map_class, map_names = load_nyu40_mapping(class_mapping)
    split_ids = load_nyu_splits(splits)
    if not mat_path.is_file():
        raise FileNotFoundError(f"missing file {mat_path} (nyu_depth_v2_labeled.mat)")

    def build(folder: Path) -> None:
        try:
            f = h5py.File(mat_path, "r")
        except OSError as err:
            raise ValueError(f"cannot read {mat_path} as a MATLAB v7.3 (HDF5) file: {err}") from err
        with f:
            n = _check_mat_arrays(f, mat_path)
            h, w = f["images"].shape[3], f["images"].shape[2]
            if crop is not None:
                top, left, ch, cw = crop
                if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
                    raise ValueError(f"crop {crop} (top, left, height, width) does not fit the {h}x{w} frames")
            wanted = sorted(set(split_ids["train"]) | set(split_ids["val"]))
            if frames is not None:
                unknown = sorted(set(frames) - set(wanted))
                if unknown:
                    raise ValueError(f"frames {unknown[:5]} are in neither split of {splits}")
                wanted = sorted(set(frames))
            if wanted and wanted[-1] > n:
                raise ValueError(f"{splits} refers to frame {wanted[-1]} but {mat_path} has only {n} frames")
            lut = _raw_to_40(map_class, map_names, _h5_names(f))
            for count, i in enumerate(wanted, 1):
                _convert_frame(f, i, lut, folder, crop, normals_step, mat_path)
                if count % 100 == 0:
                    log.info("converted %d/%d frames", count, len(wanted))
        chosen = set(wanted)
        for split, ids in split_ids.items():
            write_split(folder, split, [f"{i:04d}" for i in ids if i in chosen])
        resolution = f"{h}x{w} full frames" if crop is None else f"{crop[2]}x{crop[3]}, crop (top, left) = {crop[:2]}"
        readme = _README.format(
            mat=mat_path.name,
            splits=Path(splits).name,
            mapping=Path(class_mapping).name,
            n_train=sum(i in chosen for i in split_ids["train"]),
            n_val=sum(i in chosen for i in split_ids["val"]),
            resolution=resolution,
            normals_note=(
                "RGB uint8, n = 2v/255 - 1. **Derived** from the depth (the .mat has no normals) with the NYU colour "
                "intrinsics fx=518.86, fy=519.47, cx=325.58, cy=253.74 on the full frame, by finite differences "
                f"(half-width {normals_step} px), camera frame x right / y down / z forward, pointing towards the "
                "camera; invalid pixels are stored as the zero vector (decodes to about 0.004)"
            ),
        )
        atomic_write(folder / "README.md", lambda fh: fh.write(readme.encode()))

    def mark(folder: Path) -> None:
        write_owner_marker(folder, "convert nyud-mat", {"mat": str(mat_path), "crop": crop, "frames": frames})

    return build_folder(out, build, mark, overwrite=overwrite)


def _convert_frame(
    f: Any, i: int, lut: np.ndarray, out: Path, crop: tuple[int, int, int, int] | None, step: int, path: Path
) -> None:
    """Convert frame ``i`` (1-based) and write it."""
    image = _frame(f["images"], i - 1).astype(np.uint8)
    depth = _frame(f["depths"], i - 1).astype(np.float32)
    raw = _frame(f["labels"], i - 1).astype(np.int64)
    if not np.isfinite(depth).all():
        raise ValueError(f"{path}: frame {i} has non-finite depth values")
    if raw.min() < 0 or raw.max() >= lut.size:
        raise ValueError(f"{path}: frame {i} has raw label {raw.max()} outside 0..{lut.size - 1}")
    labels40 = lut[raw]
    normals = normals_from_depth(depth, **NYU_COLOR_INTRINSICS, step=step)
    if crop is not None:
        top, left, ch, cw = crop
        window = (slice(top, top + ch), slice(left, left + cw))
        image, depth, labels40, normals = image[window], depth[window], labels40[window], normals[window]
    semseg = np.where(labels40 == 0, IGNORE_INDEX, labels40 - 1)
    write_nyud_sample(out, f"{i:04d}", image, semseg, depth, normals, label_boundaries(labels40))
