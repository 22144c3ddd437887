"""PASCAL-Context multi-task reader (``PASCAL_MT/`` / ``PASCALContext/``) and writers of that layout.

Layout (``spec/protocols.md`` §2.4; ASTMT's ``PASCAL_MT`` and ATRC's ``PASCALContext`` are the same)::

    ImageSets/Context/{train,val}.txt     one id per line (4,998 / 5,105 ids, e.g. 2008_000002)
    JPEGImages/<id>.jpg                   RGB, about 500x375
    semseg/VOC12/<id>.png                 uint8, 21 classes (0 = background + 20 VOC), 255 = ignore;
    semseg/pascal-context/<id>.png          the fallback when the VOC12 file is missing
    human_parts/<id>.mat                  PASCAL-Part struct ``anno`` (see :func:`read_part_objects`)
    sal_distill/<id>.png                  grey uint8 distilled saliency
    normals_distill/<id>.png              RGB uint8 distilled normals, n = 2v/255 - 1
    pascal-context/trainval/<id>.mat      key ``LabelMap``: the 459-class PASCAL-Context labels

Targets in the sample contract (``densemtl.tasks``):

* ``semseg``: int64 (H, W), values 0..20 loaded raw, 255 = ignore.
* ``human_parts``: int64 (H, W), 7 classes (:data:`PART_CLASSES`); all-255 when the image has no
  annotated person part (such images are excluded from the loss and mIoU; ``meta["has_parts"]`` tells).
* ``sal``: float32 (1, H, W) in {0, 1}: ``png / 255 > 0.5``.
* ``normals``: float32 (3, H, W), ``2v/255 - 1``, set to the zero vector (invalid) on every pixel whose
  ``LabelMap`` class is not NYU-compatible (:data:`densemtl.data.pascal_classes.NYU_COMPATIBLE_CONTEXT_IDS`).
* ``edge``: float32 (1, H, W) in {0, 1}: thinned ``|Laplacian(LabelMap)| > 0``.

The writers (:func:`write_pascal_image`, :func:`write_pascal_semseg`, :func:`write_part_annotation`,
:func:`write_label_map`, :func:`write_saliency`, :func:`write_normals`, :func:`write_split`) write exactly
what the reader reads; every file is written to a temporary name in the target folder and renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import scipy.io
from PIL import Image

from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "LABELMAP_DIR",
    "NORMALS_DIR",
    "PARTS_DIR",
    "PART_CLASSES",
    "PART_NAME_TO_CLASS",
    "PERSON_CLASS_ID",
    "PascalObject",
    "SAL_DIR",
    "SEMSEG_DIRS",
    "SPLIT_DIR",
    "IMAGE_DIR",
    "VOC_CLASSES",
    "write_label_map",
    "write_normals",
    "write_part_annotation",
    "write_pascal_image",
    "write_pascal_semseg",
    "write_saliency",
    "write_split",
]

SPLIT_DIR = "ImageSets/Context"
IMAGE_DIR = "JPEGImages"
SEMSEG_DIRS = ("semseg/VOC12", "semseg/pascal-context")
PARTS_DIR = "human_parts"
SAL_DIR = "sal_distill"
NORMALS_DIR = "normals_distill"
LABELMAP_DIR = "pascal-context/trainval"

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 21 semseg classes: background + the 20 PASCAL VOC classes, in VOC index order (person = 15)."""

PERSON_CLASS_ID = 15
"""PASCAL VOC / PASCAL-Part class index of ``person``."""

PART_CLASSES: tuple[str, ...] = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")
"""The 7 human-part classes (``spec/protocols.md`` §2.4)."""

_PART_GROUPS: dict[int, tuple[str, ...]] = {
    1: ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"),
    2: ("torso", "neck"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
PART_NAME_TO_CLASS: dict[str, int] = {name: cls for cls, names in _PART_GROUPS.items() for name in names}
"""PASCAL-Part person part name -> human-part class (1..6)."""

_LAYOUT_HELP = (
    "expected the PASCAL-Context multi-task layout (PASCAL_MT/ or PASCALContext/): "
    "ImageSets/Context/{train,val}.txt, JPEGImages/<id>.jpg, semseg/VOC12/<id>.png (or semseg/pascal-context/), "
    "human_parts/<id>.mat, sal_distill/<id>.png, normals_distill/<id>.png, pascal-context/trainval/<id>.mat"
)


# ----------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PascalObject:
    """One annotated object of a PASCAL-Part image.

    Attributes:
        class_id: PASCAL VOC class index (1..20; 15 = person).
        mask: (H, W) bool instance mask.
        parts: (part name, (H, W) bool mask) pairs, e.g. ``("lhand", mask)``; empty when unannotated.
    """

    class_id: int
    mask: np.ndarray
    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Create ``path``'s folder, call ``write`` on a temporary file beside it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_png(path: Path, array: np.ndarray) -> Path:
    image = Image.fromarray(np.ascontiguousarray(array))
    return _atomic_write(path, lambda f: image.save(f, format="PNG"))


def _check_2d(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) array, got shape {array.shape}")
    return array


def write_pascal_image(root: str | Path, name: str, image: np.ndarray, quality: int = 95) -> Path:
    """Write ``JPEGImages/<name>.jpg``.

    Args:
        root: dataset folder.
        name: image id.
        image: (H, W, 3) uint8 RGB.
        quality: JPEG quality (chroma subsampling is off, so colours survive closely).

    Returns:
        The written path.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    pil = Image.fromarray(image)
    path = Path(root) / IMAGE_DIR / f"{name}.jpg"
    return _atomic_write(path, lambda f: pil.save(f, format="JPEG", quality=quality, subsampling=0))


def write_pascal_semseg(root: str | Path, name: str, labels: np.ndarray) -> Path:
    """Write ``semseg/VOC12/<name>.png``: (H, W) class ids 0..20, 255 = ignore, stored as uint8 'L'."""
    labels = _check_2d("labels", labels)
    bad = (labels < 0) | ((labels > len(VOC_CLASSES) - 1) & (labels != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"semseg labels must be 0..20 or 255, got {sorted(np.unique(labels[bad]).tolist())[:10]}")
    return _save_png(Path(root) / SEMSEG_DIRS[0] / f"{name}.png", labels.astype(np.uint8))


def _part_struct(parts: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    dtype = [("part_name", object), ("mask", object)]
    if not parts:
        return np.zeros((0, 0), dtype=dtype)  # MATLAB's empty struct, as in the real files
    out = np.zeros((1, len(parts)), dtype=dtype)
    for i, (part_name, mask) in enumerate(parts):
        out[0, i] = (str(part_name), _check_2d(f"mask of part {part_name!r}", mask).astype(np.uint8))
    return out


def write_part_annotation(root: str | Path, name: str, objects: Sequence[PascalObject]) -> Path:
    """Write ``human_parts/<name>.mat`` in the PASCAL-Part struct layout.

    The file holds a 1x1 struct ``anno`` with fields ``imname`` and ``objects``; ``objects`` is a 1xN
    struct array with fields ``class`` (VOC name), ``class_ind`` (double), ``mask`` (uint8 (H, W)) and
    ``parts`` (1xM struct with ``part_name`` and ``mask``, or an empty 0x0 struct). So
    ``loadmat(path)["anno"][0][0][1][0]`` is the object list, and per object ``[1]`` is the class id,
    ``[2]`` the mask and ``[3]`` the parts.
    """
    obj_dtype = [("class", object), ("class_ind", object), ("mask", object), ("parts", object)]
    objs = np.zeros((1, len(objects)), dtype=obj_dtype)
    for i, obj in enumerate(objects):
        if not 1 <= int(obj.class_id) < len(VOC_CLASSES):
            raise ValueError(f"object {i} of {name!r}: class_id must be 1..20, got {obj.class_id}")
        mask = _check_2d(f"mask of object {i}", obj.mask).astype(np.uint8)
        objs[0, i] = (
            VOC_CLASSES[int(obj.class_id)],
            np.array([[float(obj.class_id)]]),
            mask,
            _part_struct(obj.parts),
        )
    anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (str(name), objs)
    path = Path(root) / PARTS_DIR / f"{name}.mat"
    return _atomic_write(path, lambda f: scipy.io.savemat(f, {"anno": anno}, do_compression=True))


def write_label_map(root: str | Path, name: str, label_map: np.ndarray) -> Path:
    """Write ``pascal-context/trainval/<name>.mat`` with key ``LabelMap``: (H, W) 459-class ids (uint16)."""
    label_map = _check_2d("label_map", label_map)
    if label_map.min(initial=0) < 0 or label_map.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"label_map values must be non-negative class ids, got range {label_map.min()}..")
    data = {"LabelMap": label_map.astype(np.uint16)}
    path = Path(root) / LABELMAP_DIR / f"{name}.mat"
    return _atomic_write(path, lambda f: scipy.io.savemat(f, data, do_compression=True))


def write_saliency(root: str | Path, name: str, sal: np.ndarray) -> Path:
    """Write ``sal_distill/<name>.png`` (grey uint8).

    Args:
        sal: (H, W) uint8 (stored as is) or float in [0, 1] (stored as round(255 * sal)).
    """
    sal = _check_2d("sal", sal)
    if sal.dtype != np.uint8:
        sal = sal.astype(np.float64)
        if not np.isfinite(sal).all() or sal.min(initial=0) < 0 or sal.max(initial=0) > 1:
            raise ValueError("float saliency must lie in [0, 1]; pass uint8 for raw 0..255 values")
        sal = np.round(sal * 255.0).astype(np.uint8)
    return _save_png(Path(root) / SAL_DIR / f"{name}.png", sal)


def write_normals(root: str | Path, name: str, normals: np.ndarray) -> Path:
    """Write ``normals_distill/<name>.png`` (RGB uint8, v = round((n + 1) / 2 * 255)).

    Args:
        normals: (H, W, 3) float in [-1, 1] (encoded) or uint8 (stored as is).
    """
    normals = np.asarray(normals)
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise ValueError(f"normals must be (H, W, 3), got {normals.shape}")
    if normals.dtype != np.uint8:
        n = normals.astype(np.float64)
        if not np.isfinite(n).all() or np.abs(n).max(initial=0) > 1 + 1e-6:
            raise ValueError("float normals must lie in [-1, 1]; pass uint8 for encoded 0..255 values")
        normals = np.round((np.clip(n, -1, 1) + 1.0) / 2.0 * 255.0).astype(np.uint8)
    return _save_png(Path(root) / NORMALS_DIR / f"{name}.png", normals)


def write_split(root: str | Path, split: str, names: Sequence[str]) -> Path:
    """Write ``ImageSets/Context/<split>.txt``, one id per line."""
    text = "".join(f"{n}\n" for n in names).encode()
    return _atomic_write(Path(root) / SPLIT_DIR / f"{split}.txt", lambda f: f.write(text))
