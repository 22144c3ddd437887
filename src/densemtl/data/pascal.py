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

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io
import torch
from scipy import ndimage
from skimage.morphology import thin

from densemtl.data.base import DatasetNotFoundError, MultiTaskDataset, Sample, register_dataset
from densemtl.data.imageio import open_image, read_rgb
from densemtl.data.pascal_classes import NYU_COMPATIBLE_CONTEXT_IDS
from densemtl.data.splits import check_disjoint_splits, read_split_ids
from densemtl.io import atomic_write, save_jpg, save_png
from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "LABELMAP_DIR",
    "NORMALS_DIR",
    "PARTS_DIR",
    "PART_CLASSES",
    "PART_NAME_TO_CLASS",
    "PERSON_CLASS_ID",
    "PascalContext",
    "PascalObject",
    "SAL_DIR",
    "SEMSEG_DIRS",
    "SPLIT_DIR",
    "IMAGE_DIR",
    "VOC_CLASSES",
    "default_cache_dir",
    "edge_from_label_map",
    "human_parts_from_objects",
    "normals_from_png",
    "read_label_map",
    "read_part_objects",
    "saliency_from_png",
    "write_label_map",
    "write_normals",
    "write_part_annotation",
    "write_pascal_image",
    "write_pascal_semseg",
    "write_saliency",
    "write_split",
]

_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
"""Pillow modes with at most 8 bits per channel."""

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
    return save_jpg(Path(root) / IMAGE_DIR / f"{name}.jpg", image, quality, subsampling=0)


def write_pascal_semseg(root: str | Path, name: str, labels: np.ndarray, png_level: int = 6) -> Path:
    """Write ``semseg/VOC12/<name>.png``: (H, W) class ids 0..20, 255 = ignore, stored as uint8 'L'.

    ``png_level`` is the PNG zlib level 0..9 (lossless at every level; lower is faster, larger).
    """
    labels = _check_2d("labels", labels)
    bad = (labels < 0) | ((labels > len(VOC_CLASSES) - 1) & (labels != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"semseg labels must be 0..20 or 255, got {sorted(np.unique(labels[bad]).tolist())[:10]}")
    return save_png(Path(root) / SEMSEG_DIRS[0] / f"{name}.png", labels.astype(np.uint8), png_level)


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
    return atomic_write(path, lambda f: scipy.io.savemat(f, {"anno": anno}, do_compression=True))


def write_label_map(root: str | Path, name: str, label_map: np.ndarray) -> Path:
    """Write ``pascal-context/trainval/<name>.mat`` with key ``LabelMap``: (H, W) 459-class ids (uint16)."""
    label_map = _check_2d("label_map", label_map)
    if label_map.min(initial=0) < 0 or label_map.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"label_map values must be non-negative class ids, got range {label_map.min()}..")
    data = {"LabelMap": label_map.astype(np.uint16)}
    path = Path(root) / LABELMAP_DIR / f"{name}.mat"
    return atomic_write(path, lambda f: scipy.io.savemat(f, data, do_compression=True))


def write_saliency(root: str | Path, name: str, sal: np.ndarray, png_level: int = 6) -> Path:
    """Write ``sal_distill/<name>.png`` (grey uint8).

    Args:
        sal: (H, W) uint8 (stored as is) or float in [0, 1] (stored as round(255 * sal)).
        png_level: PNG zlib level 0..9 (lossless at every level; lower is faster, larger).
    """
    sal = _check_2d("sal", sal)
    if sal.dtype != np.uint8:
        sal = sal.astype(np.float64)
        if not np.isfinite(sal).all() or sal.min(initial=0) < 0 or sal.max(initial=0) > 1:
            raise ValueError("float saliency must lie in [0, 1]; pass uint8 for raw 0..255 values")
        sal = np.round(sal * 255.0).astype(np.uint8)
    return save_png(Path(root) / SAL_DIR / f"{name}.png", sal, png_level)


def write_normals(root: str | Path, name: str, normals: np.ndarray, png_level: int = 6) -> Path:
    """Write ``normals_distill/<name>.png`` (RGB uint8, v = round((n + 1) / 2 * 255)).

    Args:
        normals: (H, W, 3) float in [-1, 1] (encoded) or uint8 (stored as is).
        png_level: PNG zlib level 0..9 (lossless at every level; lower is faster, larger).
    """
    normals = np.asarray(normals)
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise ValueError(f"normals must be (H, W, 3), got {normals.shape}")
    if normals.dtype != np.uint8:
        n = normals.astype(np.float64)
        if not np.isfinite(n).all() or np.abs(n).max(initial=0) > 1 + 1e-6:
            raise ValueError("float normals must lie in [-1, 1]; pass uint8 for encoded 0..255 values")
        normals = np.round((np.clip(n, -1, 1) + 1.0) / 2.0 * 255.0).astype(np.uint8)
    return save_png(Path(root) / NORMALS_DIR / f"{name}.png", normals, png_level)


def write_split(root: str | Path, split: str, names: Sequence[str]) -> Path:
    """Write ``ImageSets/Context/<split>.txt``, one id per line."""
    text = "".join(f"{n}\n" for n in names).encode()
    return atomic_write(Path(root) / SPLIT_DIR / f"{split}.txt", lambda f: f.write(text))


# ----------------------------------------------------------------------------------------------------------
# Decoding (pure functions of arrays, shared by the reader and its tests)
# ----------------------------------------------------------------------------------------------------------

_LAPLACIAN_4 = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def edge_from_label_map(label_map: np.ndarray) -> np.ndarray:
    """Semantic boundaries of a label map: thinned ``|Laplacian| > 0`` (``spec/protocols.md`` §2.4).

    The Laplacian is the 4-neighbour 3x3 kernel (OpenCV's default aperture) in float64. Borders are
    extended with scipy's ``mode="mirror"`` (``d c b | a b c d | c b a``), which is OpenCV's default
    ``BORDER_REFLECT_101``, so a label region touching the image border makes no edge there.

    Args:
        label_map: (H, W) integer class ids.

    Returns:
        (H, W) float32 in {0, 1}.
    """
    label_map = _check_2d("label_map", label_map)
    lap = ndimage.convolve(label_map.astype(np.float64), _LAPLACIAN_4, mode="mirror")
    return thin(np.abs(lap) > 0).astype(np.float32)


def human_parts_from_objects(objects: Iterable[PascalObject], size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """The 7-class human-part map of one image (``spec/protocols.md`` §2.4).

    Starts from background 0; for every person object (class 15) with parts, each part's pixels get the
    part's class (:data:`PART_NAME_TO_CLASS`; later parts overwrite earlier ones).

    Args:
        objects: the image's PASCAL-Part objects.
        size: (H, W) of the image.

    Returns:
        (labels, has_parts): int64 (H, W) labels, all 255 when no person part is annotated, and whether
        any person part was found.
    """
    labels = np.zeros(size, dtype=np.int64)
    has_parts = False
    for i, obj in enumerate(objects):
        if int(obj.class_id) != PERSON_CLASS_ID:
            continue
        for part_name, mask in obj.parts:
            if part_name not in PART_NAME_TO_CLASS:
                raise ValueError(
                    f"person object {i} has an unknown part name {part_name!r}; expected one of "
                    f"{sorted(PART_NAME_TO_CLASS)}"
                )
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != tuple(size):
                raise ValueError(f"mask of part {part_name!r} of object {i} has shape {mask.shape}, image {size}")
            labels[mask] = PART_NAME_TO_CLASS[part_name]
            has_parts = True
    if not has_parts:
        labels.fill(IGNORE_INDEX)
    return labels, has_parts


def saliency_from_png(grey: np.ndarray) -> np.ndarray:
    """Binarise distilled saliency: ``grey / 255 > 0.5``.

    Args:
        grey: (H, W) grey values in 0..255 (any numeric dtype).

    Returns:
        float32 (1, H, W) in {0, 1}; exactly 0.5 (127.5 / 255) maps to 0.
    """
    grey = _check_2d("saliency", grey)
    return ((grey.astype(np.float64) / 255.0) > 0.5).astype(np.float32)[None]


def normals_from_png(encoded: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Decode distilled normals and mask them to NYU-compatible classes.

    Args:
        encoded: (H, W, 3) uint8, n = 2v/255 - 1.
        label_map: (H, W) PASCAL-Context ``LabelMap`` (1..459).

    Returns:
        float32 (3, H, W); the zero vector (invalid) wherever the label is not in
        :data:`~densemtl.data.pascal_classes.NYU_COMPATIBLE_CONTEXT_IDS`.
    """
    normals = encoded.astype(np.float32).transpose(2, 0, 1) * np.float32(2.0 / 255.0) - np.float32(1.0)
    keep = np.isin(label_map, np.fromiter(NYU_COMPATIBLE_CONTEXT_IDS, dtype=np.int64))
    normals[:, ~keep] = 0.0
    return normals


# ----------------------------------------------------------------------------------------------------------
# File readers
# ----------------------------------------------------------------------------------------------------------


class _MalformedPartsError(ValueError):
    """A PASCAL-Part ``.mat`` that does not have the expected struct layout."""


def _malformed(path: Path, detail: str) -> _MalformedPartsError:
    return _MalformedPartsError(
        f"malformed PASCAL-Part annotation {path}: {detail}; expected a struct 'anno' whose anno[0][0][1][0] is "
        "the object list, each object (class, class_ind, mask (H, W), parts) with parts a list of "
        "(part_name, mask (H, W))"
    )


def _loadmat(path: Path, what: str) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, ... on bad files
        raise ValueError(f"cannot read {what} {path}: {err}") from err


def _parse_part(path: Path, obj_index: int, part: Any) -> tuple[str, np.ndarray]:
    name = np.asarray(part[0]).ravel()
    mask = np.asarray(part[1])
    if name.size != 1 or not isinstance(name[0], str) or mask.ndim != 2:
        raise _malformed(path, f"part of object {obj_index} is not (name, 2-D mask)")
    return str(name[0]), mask.astype(bool)


def read_part_objects(path: str | Path) -> list[PascalObject]:
    """Parse a PASCAL-Part ``.mat`` into :class:`PascalObject` s.

    ``loadmat(path)["anno"][0][0][1][0]`` is the object list; per object ``[1]`` is the VOC class id,
    ``[2]`` the instance mask and ``[3]`` the (part name, mask) list (empty when unannotated).
    """
    path = Path(path)
    mat = _loadmat(path, "PASCAL-Part annotation")
    if "anno" not in mat:
        raise _malformed(path, f"no 'anno' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    try:
        objects = mat["anno"][0][0][1]
        records = [] if objects.size == 0 else list(objects[0])
        out = []
        for i, obj in enumerate(records):
            class_ind = np.asarray(obj[1]).ravel()
            mask = np.asarray(obj[2])
            if class_ind.size != 1 or mask.ndim != 2:
                raise _malformed(
                    path, f"object {i} has class_ind of size {class_ind.size} and mask of shape {mask.shape}"
                )
            parts_arr = np.asarray(obj[3])
            parts = [_parse_part(path, i, p) for p in parts_arr.ravel()] if parts_arr.size else []
            out.append(PascalObject(int(class_ind[0]), mask.astype(bool), parts))
    except _MalformedPartsError:
        raise
    except (IndexError, TypeError, KeyError, ValueError) as err:
        raise _malformed(path, f"{type(err).__name__}: {err}") from err
    return out


def read_label_map(path: str | Path) -> np.ndarray:
    """Read ``LabelMap`` from a PASCAL-Context ``.mat``: int64 (H, W), values 0..459."""
    path = Path(path)
    mat = _loadmat(path, "PASCAL-Context label map")
    if "LabelMap" not in mat:
        raise ValueError(
            f"{path} has no 'LabelMap' variable (found {sorted(k for k in mat if not k.startswith('__'))})"
        )
    label_map = np.asarray(mat["LabelMap"])
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.number):
        raise ValueError(
            f"'LabelMap' in {path} must be a numeric (H, W) array, got {label_map.dtype} {label_map.shape}"
        )
    return label_map.astype(np.int64)


def default_cache_dir() -> Path:
    """``$DENSEMTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/densemtl``, else ``~/.cache/densemtl``."""
    if os.environ.get("DENSEMTL_CACHE_DIR"):
        return Path(os.environ["DENSEMTL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "densemtl"


# ----------------------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------------------


@register_dataset("pascal")
class PascalContext(MultiTaskDataset):
    """PASCAL-Context multi-task (ASTMT ``PASCAL_MT/``, ATRC/InvPT ``PASCALContext/``).

    10,103 images of PASCAL VOC 2010 trainval (4,998 train / 5,105 val), variable size (about 500x375),
    with 21-class semseg, 7-class human parts, and distilled saliency and normals; edges come from the
    459-class PASCAL-Context ``LabelMap``. See the module docstring for the layout and the decoding.

    When ``human_parts`` is the only task, images without annotated person parts are dropped (as the
    MTI-Net and InvPT loaders do). Which images have parts is read from the ``.mat`` files once and kept
    in a JSON cache under ``cache_dir`` (never inside ``root``), keyed by the resolved root and the split
    and revalidated by each file's size and modification time. (Parsing one part file costs about
    15-45 ms on a slow CPU, i.e. a few minutes for the 5,105 val ids on first use; a warm cache costs
    about 10 us per id.) The filter keeps images with at least one annotated person part; the reference
    loaders keep images whose object list contains a person, which also keeps persons without parts,
    whose maps are all-255 and contribute nothing.

    Args:
        root: dataset folder.
        split: ``train`` or ``val``.
        tasks: tasks to load (default: all five).
        transform: ``Sample -> Sample`` callable applied after ``load``.
        cache_dir: folder of the parts cache (default :func:`default_cache_dir`); an unwritable folder
            only costs a warning.
        use_cache: set False to parse every part file on construction without reading or writing a cache.
    """

    family: ClassVar[str] = "pascal"
    available_tasks: ClassVar[tuple[str, ...]] = ("semseg", "human_parts", "sal", "normals", "edge")
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": VOC_CLASSES, "human_parts": PART_CLASSES}
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    expected_sizes: ClassVar[dict[str, int]] = {"train": 4998, "val": 5105}
    task_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        "semseg": SEMSEG_DIRS,
        "human_parts": (PARTS_DIR,),
        "sal": (SAL_DIR,),
        "normals": (NORMALS_DIR, LABELMAP_DIR),
        "edge": (LABELMAP_DIR,),
    }
    """Folders each task reads; for ``semseg`` either of the two suffices."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(root, split, tasks, transform)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        ids = self._verify()
        if self.tasks == ("human_parts",):
            has_parts = self._parts_index(ids)
            ids = [name for name in ids if has_parts[name]]
        self.ids: list[str] = ids

    # -- layout ------------------------------------------------------------------------------------------

    def _not_found(self, path: Path, what: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"PascalContext: missing {what} {path} (root={self.root}); {_LAYOUT_HELP}; the archive is "
            "PASCAL_MT.tgz (ASTMT) or PASCALContext.tar.gz (ATRC)"
        )

    def _verify(self) -> list[str]:
        """Check the root, the split file and the requested tasks' folders; return the split's ids."""
        if not self.root.is_dir():
            raise self._not_found(self.root, "dataset root")
        split_file = self.root / SPLIT_DIR / f"{self.split}.txt"
        if not split_file.is_file():
            raise self._not_found(split_file, f"split file of {self.split!r}")
        ids = read_split_ids(split_file)
        check_disjoint_splits(self.split, ids, {s: self.root / SPLIT_DIR / f"{s}.txt" for s in self.splits})
        if not (self.root / IMAGE_DIR).is_dir():
            raise self._not_found(self.root / IMAGE_DIR, "image folder")
        for task in self.tasks:
            folders = [self.root / d for d in self.task_dirs[task]]
            if task == "semseg":
                if not any(f.is_dir() for f in folders):
                    raise self._not_found(folders[0], f"folder of task 'semseg' (or {folders[1]})")
                continue
            for folder in folders:
                if not folder.is_dir():
                    raise self._not_found(folder, f"folder of task {task!r}")
        return ids

    def _file(self, what: str, name: str) -> Path:
        """Path of one file: ``what`` is ``image``, ``human_parts``, ``sal``, ``normals`` or ``label_map``."""
        sub, ext = {
            "image": (IMAGE_DIR, "jpg"),
            "human_parts": (PARTS_DIR, "mat"),
            "sal": (SAL_DIR, "png"),
            "normals": (NORMALS_DIR, "png"),
            "label_map": (LABELMAP_DIR, "mat"),
        }[what]
        return self.root / sub / f"{name}.{ext}"

    def _semseg_file(self, name: str) -> Path:
        candidates = [self.root / d / f"{name}.png" for d in SEMSEG_DIRS]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(f"missing semseg file for {name!r}: neither {candidates[0]} nor {candidates[1]}")

    # -- parts cache -------------------------------------------------------------------------------------

    def _cache_path(self) -> Path:
        key = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        return self.cache_dir / f"pascal-parts-{self.split}-{key}.json"

    def _parts_index(self, ids: Sequence[str]) -> dict[str, bool]:
        """id -> whether the image has an annotated person part, from the cache or the ``.mat`` files."""
        cache_path = self._cache_path()
        cached: dict[str, list] = {}
        if self.use_cache and cache_path.is_file():
            try:
                data = json.loads(cache_path.read_text())
                if data.get("root") == str(self.root.resolve()):
                    cached = data.get("entries", {})
            except (OSError, ValueError, AttributeError):
                cached = {}
        entries: dict[str, list] = {}
        changed = False
        for name in ids:
            path = self._file("human_parts", name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise FileNotFoundError(f"missing human_parts file {path}") from None
            entry = cached.get(name)
            if not (isinstance(entry, list) and entry[:2] == [stat.st_mtime_ns, stat.st_size]):
                objects = read_part_objects(path)
                has = any(int(o.class_id) == PERSON_CLASS_ID and o.parts for o in objects)
                entry = [stat.st_mtime_ns, stat.st_size, bool(has)]
                changed = True
            entries[name] = entry
        if self.use_cache and (changed or set(cached) != set(entries)):
            self._write_cache(cache_path, entries)
        return {name: bool(e[2]) for name, e in entries.items()}

    def _write_cache(self, path: Path, entries: dict[str, list]) -> None:
        text = json.dumps({"version": 1, "root": str(self.root.resolve()), "split": self.split, "entries": entries})
        try:
            atomic_write(path, lambda f: f.write(text.encode()))
        except OSError as err:
            warnings.warn(f"could not write the PASCAL parts cache {path}: {err}", stacklevel=3)

    # -- loading -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        """Read sample ``index``: uint8 (3, H, W) image, contract targets and ``meta``.

        ``meta`` holds ``name``, ``size`` (H, W), ``dataset`` (``"pascal"``), and ``has_parts`` when
        ``human_parts`` is loaded.
        """
        name = self.ids[index]
        image = self._load_image(name)
        size = image.shape[:2]
        sample: Sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        meta: dict[str, Any] = {"name": name, "size": tuple(size), "dataset": "pascal"}
        label_map = None
        if "normals" in self.tasks or "edge" in self.tasks:
            label_map = self._checked(
                read_label_map(self._file("label_map", name)), size, self._file("label_map", name)
            )
        for task in self.tasks:
            if task == "semseg":
                sample[task] = self._load_semseg(name, size)
            elif task == "human_parts":
                sample[task], meta["has_parts"] = self._load_human_parts(name, size)
            elif task == "sal":
                sample[task] = self._load_sal(name, size)
            elif task == "normals":
                sample[task] = self._load_normals(name, size, label_map)
            elif task == "edge":
                sample[task] = torch.from_numpy(edge_from_label_map(label_map))[None]
        sample["meta"] = meta
        return sample

    def _checked(self, array: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
        if tuple(array.shape[:2]) != tuple(size):
            raise ValueError(
                f"{path} has shape {tuple(array.shape[:2])} but the image {self._file('image', path.stem)} has "
                f"shape {tuple(size)}"
            )
        return array

    def _load_image(self, name: str) -> np.ndarray:
        return read_rgb(self._file("image", name), "image")  # refuses 16-bit pixels instead of saturating them

    def _load_semseg(self, name: str, size: tuple[int, int]) -> torch.Tensor:
        path = self._semseg_file(name)
        labels = self._checked(np.asarray(open_image(path, "semseg")), size, path)
        if labels.ndim != 2:
            raise ValueError(f"semseg {path} must be a single-channel label image, got shape {labels.shape}")
        bad = (labels > len(VOC_CLASSES) - 1) & (labels != IGNORE_INDEX)
        if bad.any():
            raise ValueError(
                f"semseg {path} has values {sorted(np.unique(labels[bad]).tolist())[:10]}; expected class ids "
                f"0..{len(VOC_CLASSES) - 1} or {IGNORE_INDEX} (ignore)"
            )
        return torch.from_numpy(labels.astype(np.int64))

    def _load_human_parts(self, name: str, size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
        path = self._file("human_parts", name)
        if not path.is_file():
            raise FileNotFoundError(f"missing human_parts file {path}")
        objects = read_part_objects(path)
        try:
            labels, has_parts = human_parts_from_objects(objects, size)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        return torch.from_numpy(labels), has_parts

    def _load_sal(self, name: str, size: tuple[int, int]) -> torch.Tensor:
        path = self._file("sal", name)
        image = open_image(path, "saliency")
        if image.mode not in _EIGHT_BIT_MODES:  # convert("L") would saturate 16-bit or float values
            raise ValueError(
                f"saliency file {path} has Pillow mode {image.mode}; expected an 8-bit grey (or RGB) PNG"
            )
        sal = self._checked(np.asarray(image if image.mode == "L" else image.convert("L")), size, path)
        return torch.from_numpy(saliency_from_png(sal))

    def _load_normals(self, name: str, size: tuple[int, int], label_map: np.ndarray) -> torch.Tensor:
        path = self._file("normals", name)
        image = open_image(path, "normals")
        if image.mode != "RGB":
            raise ValueError(f"normals {path} must be an RGB png, got mode {image.mode!r}")
        encoded = self._checked(np.asarray(image), size, path)
        return torch.from_numpy(normals_from_png(encoded, label_map))

    def plot(self, sample: Sample, preds: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """An overview picture of a raw sample (from ``load``) and optional predictions, uint8 (H', W', 3)."""
        from densemtl.viz import grid

        image = sample["image"]
        image = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        targets = {t: sample[t] for t in self.tasks if t in sample}
        return grid(image.astype(np.uint8), targets, preds)
