"""NYUD-v2 readers and writers: the ATRC/InvPT, MTI-Net and mtan (NYUv2-13) on-disk layouts.

Three variants of the same 1,449 labelled NYU Depth v2 frames (795 train / 654 test) circulate in the
multi-task literature (``spec/protocols.md`` §2.1-§2.3). Each has one reader here that converts its
on-disk encoding, once, to the sample contract of :mod:`densemtl.data.base`, and one writer that
produces exactly that encoding (used by the ``nyud-mat`` converter, the synthetic generator and the
tests):

================  =====================  ==========================  ==========================
registry name     layout                 reader                      writer
================  =====================  ==========================  ==========================
``nyud``          ``NYUDv2/`` (ATRC)      :class:`NYUD`               :func:`write_nyud_sample`
``nyud-mt``       ``NYUD_MT/`` (MTI-Net)  :class:`NYUDMT`             :func:`write_nyud_mt_sample`
``nyuv2-13``      mtan / Auto-lambda      :class:`NYUv2_13`           :func:`write_nyuv2_13_sample`
================  =====================  ==========================  ==========================

:func:`verify_dataset` tells which variant a folder holds and what that means for comparisons (§2.7).

Class names: the 40 classes of Gupta et al. (CVPR 2013) and the 13 classes of Couprie et al. (ICLR 2013),
in the order of ``classMapping40.mat`` / ``class13Mapping.mat`` of github.com/ankurhanda/nyuv2-meta-data
(copied as facts into ``../shared/data/nyudv2_mini/meta``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from densemtl.data.base import DATASETS, DatasetNotFoundError, MultiTaskDataset, Sample, register_dataset
from densemtl.data.imageio import read_gray, read_rgb
from densemtl.data.splits import check_disjoint_splits, read_split_ids
from densemtl.data.verify import DatasetReport, check_splits
from densemtl.io import atomic_write, save_jpg, save_png
from densemtl.tasks import IGNORE_INDEX, TASKS
from densemtl.viz import grid

__all__ = [
    "NYU13_CLASSES",
    "NYU40_CLASSES",
    "NYUD",
    "NYUDMT",
    "NYUv2_13",
    "atomic_write",
    "detect_nyud_variant",
    "encode_normals_png",
    "write_nyud_mt_sample",
    "write_nyud_sample",
    "write_nyuv2_13_sample",
    "verify_dataset",
    "write_split",
]

NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
"""The NYU-40 classes, 0-based in samples (0 = wall ... 39 = otherprop); "refridgerator" as spelt upstream."""

NYU13_CLASSES: tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv",
    "wall", "window",
)  # fmt: skip
"""The NYU-13 classes, 0-based in samples (0 = bed ... 12 = window)."""

NYUD_TRAIN_SIZE = 795
NYUD_TEST_SIZE = 654


# ----------------------------------------------------------------------------------------------- I/O


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _read_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read .npy file {path}: {err}") from err


def _check_finite(arr: np.ndarray, path: Path, what: str) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        return
    if np.isnan(arr).any():
        raise ValueError(f"{what} file {path} contains NaN values")
    if np.isinf(arr).any():
        raise ValueError(f"{what} file {path} contains infinite values")


def _as_hw(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Squeeze a (H, W, 1) or (1, H, W) array to (H, W); anything else but (H, W) raises."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a (H, W) or (H, W, 1) array in {what} file {path}, got shape {arr.shape}")
    return arr


def _as_hw3(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a (H, W, 3) array in {what} file {path}, got shape {arr.shape}")
    return arr


def _depth_tensor(arr: np.ndarray, path: Path, max_depth: float | None = None) -> torch.Tensor:
    """(H, W) float metres -> float32 (1, H, W).

    Raises a ``ValueError`` naming the file for an integer dtype (depth stored as uint16 millimetres reads
    as metres 1000x too far), NaN, inf, negative depths and depths beyond ``max_depth`` metres.
    """
    arr = _as_hw(arr, path, "depth")
    if np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"depth file {path} holds integers ({arr.dtype}, max {arr.max() if arr.size else 0}); expected float "
            "metres: if these are millimetres, store depth / 1000 as float32"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"depth file {path} has non-numeric dtype {arr.dtype}; expected float metres")
    _check_finite(arr, path, "depth")
    arr = arr.astype(np.float32, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"depth file {path} has negative values (min {arr.min()}); expected metres >= 0")
    if max_depth is not None and arr.size and arr.max() > max_depth:
        raise ValueError(
            f"depth file {path} reaches {arr.max():.4g}, beyond the {max_depth:g} m plausible for this dataset; "
            "expected metres (millimetres or another unit?)"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def _normals_tensor(arr: np.ndarray, path: Path) -> torch.Tensor:
    """(H, W, 3) float normals -> float32 (3, H, W), as stored (zero vector = invalid)."""
    arr = _as_hw3(arr, path, "normals")
    _check_finite(arr, path, "normals")
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32, copy=False).transpose(2, 0, 1)))


def _binary_tensor(arr: np.ndarray, path: Path, one: int) -> torch.Tensor:
    """(H, W) with values {0, one} -> uint8 (1, H, W) in {0, 1}; any other value raises."""
    bad = (arr != 0) & (arr != one)
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"edge file {path} has values {values}; expected only 0 and {one}")
    return torch.from_numpy(np.ascontiguousarray(arr != 0).view(np.uint8))[None]


def _shifted_labels(arr: np.ndarray, path: Path, num_classes: int) -> torch.Tensor:
    """Stored 0 = unlabelled, 1..K -> uint8 (H, W) with 255 ignore and 0..K-1; values > K raise."""
    if arr.size and int(arr.max()) > num_classes:
        values = np.unique(arr[arr > num_classes])[:5].tolist()
        raise ValueError(
            f"segmentation file {path} has label value(s) {values} out of range; expected 0 (unlabelled) "
            f"or 1..{num_classes} for {num_classes} classes"
        )
    return torch.from_numpy(arr.astype(np.uint8) - np.uint8(1))  # uint8 arithmetic: 0 -> 255 = ignore


# ------------------------------------------------------------------------------------------ readers


class _NYUDBase(MultiTaskDataset):
    """Shared part of the NYUD readers: facts, ``_verify`` and the per-sample assembly.

    ``uint8_labels=True`` returns the label maps (``semseg``, ``edge``) as uint8 with 255 = ignore instead of
    their contract dtypes (int64, float32): the encoding the DataModule's loaders carry
    (``densemtl.data.transforms.ToContract`` converts it), a quarter or an eighth of the bytes to resample.
    """

    family: ClassVar[str] = "nyud"
    dataset_name: ClassVar[str] = ""
    variant: ClassVar[str] = ""
    available_tasks: ClassVar[tuple[str, ...]] = ("semseg", "depth", "normals", "edge")
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": NYU40_CLASSES}
    layout: ClassVar[str] = ""
    max_depth: ClassVar[float | None] = 20.0
    """Metres: a depth file beyond it is refused as implausible (Kinect frames stay below 10 m)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        uint8_labels: bool = False,
    ) -> None:
        self.uint8_labels = bool(uint8_labels)
        super().__init__(root, split, tasks, transform)
        self.ids: list[str] = self._verify()

    def _verify(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _not_found(self, path: Path, what: str = "") -> DatasetNotFoundError:
        what = f" ({what})" if what else ""
        return DatasetNotFoundError(
            f"{type(self).__name__} ({self.dataset_name!r}): root={self.root} is incomplete: missing "
            f"{path}{what}. Expected layout:\n{self.layout}"
        )

    def _file(self, modality: str, name: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        """Read sample ``index``: uint8 (3, H, W) image, contract targets, ``meta``."""
        name = self.ids[index]
        image = self._load_image(name)
        size = tuple(image.shape[:2])
        sample: Sample = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        for task in self.tasks:
            target = getattr(self, f"_load_{task}")(name)  # label maps: uint8, 255 = ignore
            if TASKS[task].is_label_map and not self.uint8_labels:
                target = target.to(TASKS[task].target_dtype)
            if tuple(target.shape[-2:]) != size:
                raise ValueError(
                    f"{task} target {self._file(task, name)} has shape {tuple(target.shape[-2:])} but the image "
                    f"{self._file('image', name)} has shape {size}"
                )
            sample[task] = target
        sample["meta"] = {"name": name, "size": size, "dataset": self.dataset_name, "variant": self.variant}
        return sample

    def _load_image(self, name: str) -> np.ndarray:
        return read_rgb(self._file("image", name))

    def plot(self, sample: Sample, preds: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """An overview picture of a raw sample (from ``load``) and optional predictions, uint8 (H', W', 3)."""
        image = sample["image"]
        image = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        targets = {t: sample[t] for t in self.tasks if t in sample}
        return grid(image.astype(np.uint8), targets, preds)


class _SplitFileLayout(_NYUDBase):
    """Layouts with ``gt_sets/<split>.txt`` and one folder per modality (``NYUDv2/``, ``NYUD_MT/``)."""

    folders: ClassVar[dict[str, str]] = {
        "image": "images",
        "semseg": "segmentation",
        "depth": "depth",
        "normals": "normals",
        "edge": "edge",
    }
    suffixes: ClassVar[dict[str, str]] = {}

    def _file(self, modality: str, name: str) -> Path:
        return self.root / self.folders[modality] / f"{name}{self.suffixes[modality]}"

    def _verify(self) -> list[str]:
        if not self.root.is_dir():
            raise self._not_found(self.root, "the dataset folder itself")
        split_file = self.root / "gt_sets" / f"{self.split}.txt"
        if not split_file.is_file():
            raise self._not_found(split_file, f"split file of split {self.split!r}")
        ids = read_split_ids(split_file)
        check_disjoint_splits(self.split, ids, {s: self.root / "gt_sets" / f"{s}.txt" for s in self.splits})
        for modality in ("image", *self.tasks):
            folder = self.root / self.folders[modality]
            if not folder.is_dir():
                raise self._not_found(folder, f"folder of {modality!r}, needed for the requested tasks")
            for name in ids:
                path = self._file(modality, name)
                if not path.is_file():
                    raise self._not_found(path, f"{modality} of id {name!r} listed in {split_file}")
        return ids

    def _load_semseg(self, name: str) -> torch.Tensor:
        path = self._file("semseg", name)
        return _shifted_labels(read_gray(path), path, len(self.classes["semseg"]))

    def _load_depth(self, name: str) -> torch.Tensor:
        path = self._file("depth", name)
        return _depth_tensor(_read_npy(path), path, self.max_depth)


_NORMAL_PNG_LUT = (2.0 * np.arange(256, dtype=np.float64) / 255.0 - 1.0).astype(np.float32)


@register_dataset("nyud")
class NYUD(_SplitFileLayout):
    """NYUD-v2, ATRC/InvPT layout ``NYUDv2/`` (``spec/protocols.md`` §2.1); used by InvPT, TaskPrompter, MLoRE.

    795 train / 654 val (the official test split) frames, about 425x560 in the released archive. Tasks:
    ``semseg`` (40 classes), ``depth`` (metres), ``normals``, ``edge``.

    ================================  =============================  ===================================
    file                              stored                         sample
    ================================  =============================  ===================================
    ``gt_sets/{train,val}.txt``       one id per line                ``meta["name"]``
    ``images/<id>.png``               RGB uint8                      ``image`` uint8 (3, H, W)
    ``segmentation/<id>.png``         uint8, 0 unlabelled, 1..K      int64 (H, W): 0 -> 255, v -> v - 1
    ``depth/<id>.npy``                float (H, W) metres, 0 invalid float32 (1, H, W) as is
    ``normals/<id>.png``              RGB uint8                      float32 (3, H, W): 2v/255 - 1
    ``edge/<id>.png``                 uint8 0/255                    float32 (1, H, W) in {0, 1}
    ================================  =============================  ===================================

    An 8-bit normal cannot be exactly zero (127 -> -0.004, 128 -> +0.004), so every normal pixel counts as
    valid on this layout. ``normals_png8=True`` returns the normals as the stored uint8 (3, H, W) codes
    instead (the DataModule's loaders carry them; ``densemtl.data.transforms.ToContract`` decodes them).
    Subclasses with other label sets override ``classes`` (and ``dataset_name``); segmentation values above
    ``len(classes["semseg"])`` raise.
    """

    dataset_name: ClassVar[str] = "nyud"
    variant: ClassVar[str] = "atrc"
    suffixes: ClassVar[dict[str, str]] = {
        "image": ".png",
        "semseg": ".png",
        "depth": ".npy",
        "normals": ".png",
        "edge": ".png",
    }
    layout: ClassVar[str] = (
        "  <root>/gt_sets/{train,val}.txt   ids, one per line\n"
        "  <root>/images/<id>.png           RGB\n"
        "  <root>/segmentation/<id>.png     uint8, 0 = unlabelled, 1..K\n"
        "  <root>/depth/<id>.npy            float (H, W) metres, 0 = invalid\n"
        "  <root>/normals/<id>.png          RGB uint8, n = 2v/255 - 1\n"
        "  <root>/edge/<id>.png             uint8 0/255"
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        normals_png8: bool = False,
        uint8_labels: bool = False,
    ) -> None:
        self.normals_png8 = bool(normals_png8)
        super().__init__(root, split, tasks, transform, uint8_labels)

    def _load_normals(self, name: str) -> torch.Tensor:
        path = self._file("normals", name)
        rgb = read_rgb(path)
        if self.normals_png8:  # the codes v, decoded later (densemtl.data.transforms: 8-bit normals)
            return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return torch.from_numpy(np.ascontiguousarray(_NORMAL_PNG_LUT[rgb.transpose(2, 0, 1)]))

    def _load_edge(self, name: str) -> torch.Tensor:
        path = self._file("edge", name)
        return _binary_tensor(read_gray(path), path, 255)


@register_dataset("nyud-mt")
class NYUDMT(_SplitFileLayout):
    """NYUD-v2, MTI-Net layout ``NYUD_MT/`` (``spec/protocols.md`` §2.2); used by MTI-Net, MT-CP, ATRC (2023).

    Same folders as :class:`NYUD`, 480x640 frames, different file types:

    ================================  =============================  ===================================
    file                              stored                         sample
    ================================  =============================  ===================================
    ``images/<id>.jpg``               RGB                            ``image`` uint8 (3, H, W)
    ``segmentation/<id>.png``         0 unlabelled, 1..40            int64 (H, W): 0 -> 255, v -> v - 1
    ``depth/<id>.npy``                float metres, 0 invalid        float32 (1, H, W) as is
    ``normals/<id>.npy``              float (H, W, 3), 0 invalid     float32 (3, H, W) as is
    ``edge/<id>.npy``                 (H, W) {0, 1}                  float32 (1, H, W) as is
    ================================  =============================  ===================================
    """

    dataset_name: ClassVar[str] = "nyud-mt"
    variant: ClassVar[str] = "mtinet"
    suffixes: ClassVar[dict[str, str]] = {
        "image": ".jpg",
        "semseg": ".png",
        "depth": ".npy",
        "normals": ".npy",
        "edge": ".npy",
    }
    layout: ClassVar[str] = (
        "  <root>/gt_sets/{train,val}.txt   ids, one per line\n"
        "  <root>/images/<id>.jpg           RGB\n"
        "  <root>/segmentation/<id>.png     uint8, 0 = unlabelled, 1..40\n"
        "  <root>/depth/<id>.npy            float (H, W) metres, 0 = invalid\n"
        "  <root>/normals/<id>.npy          float (H, W, 3), zero vector = invalid\n"
        "  <root>/edge/<id>.npy             (H, W) binary {0, 1}"
    )

    def _load_normals(self, name: str) -> torch.Tensor:
        path = self._file("normals", name)
        return _normals_tensor(_read_npy(path), path)

    def _load_edge(self, name: str) -> torch.Tensor:
        path = self._file("edge", name)
        arr = _as_hw(_read_npy(path), path, "edge")
        _check_finite(arr, path, "edge")
        return _binary_tensor(arr, path, 1)


@register_dataset("nyuv2-13")
class NYUv2_13(_NYUDBase):  # noqa: N801 - the dataset's name
    """NYUv2-13, mtan / Auto-lambda layout (``spec/protocols.md`` §2.3); used by CTAL CNN, mtan, Auto-lambda.

    Indices 0..N-1 per split folder, N counted from ``<split>/image``; 288x384 frames (795 train, 654 val).
    Numbers on this variant are not comparable with the 40-class NYUD-v2 tables.

    ================================  ================================  ================================
    file                              stored (HWC)                      sample
    ================================  ================================  ================================
    ``<split>/image/<i>.npy``         float (H, W, 3) in [0, 1]         uint8 (3, H, W) = round(255 x)
    ``<split>/label/<i>.npy``         (H, W) 0..12, -1 ignore           int64 (H, W), -1 -> 255
    ``<split>/depth/<i>.npy``         (H, W, 1), 0 invalid, metres      float32 (1, H, W) as is
    ``<split>/normal/<i>.npy``        (H, W, 3) unit, zero invalid      float32 (3, H, W) as is
    ================================  ================================  ================================

    The float image is quantised to uint8 (error <= 0.5/255) so that it goes through the same transforms
    as every other dataset; CTAL's "as is" and Auto-lambda's 2x - 1 are normalisations of that image.
    A uint8 image array is taken as is.
    """

    family: ClassVar[str] = "nyuv2_13"
    dataset_name: ClassVar[str] = "nyuv2-13"
    variant: ClassVar[str] = "mtan"
    available_tasks: ClassVar[tuple[str, ...]] = ("semseg", "depth", "normals")
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": NYU13_CLASSES}
    folders: ClassVar[dict[str, str]] = {"image": "image", "semseg": "label", "depth": "depth", "normals": "normal"}
    layout: ClassVar[str] = (
        "  <root>/{train,val}/image/<i>.npy    float (H, W, 3) in [0, 1], i = 0..N-1\n"
        "  <root>/{train,val}/label/<i>.npy    (H, W) 0..12, -1 = ignore\n"
        "  <root>/{train,val}/depth/<i>.npy    (H, W, 1) metres, 0 = invalid\n"
        "  <root>/{train,val}/normal/<i>.npy   (H, W, 3) unit vectors, zero = invalid"
    )

    def _file(self, modality: str, name: str) -> Path:
        return self.root / self.split / self.folders[modality] / f"{name}.npy"

    def _verify(self) -> list[str]:
        if not self.root.is_dir():
            raise self._not_found(self.root, "the dataset folder itself")
        image_dir = self.root / self.split / self.folders["image"]
        if not image_dir.is_dir():
            raise self._not_found(image_dir, f"image folder of split {self.split!r}")
        count = sum(1 for p in image_dir.glob("*.npy"))
        if count == 0:
            raise ValueError(f"image folder {image_dir} holds no .npy files")
        ids = [str(i) for i in range(count)]
        for modality in ("image", *self.tasks):
            folder = image_dir.parent / self.folders[modality]
            if not folder.is_dir():
                raise self._not_found(folder, f"folder of {modality!r}, needed for the requested tasks")
            for name in ids:
                path = self._file(modality, name)
                if not path.is_file():
                    raise self._not_found(path, f"{modality} of index {name} (indices run 0..{count - 1})")
        return ids

    def _load_image(self, name: str) -> np.ndarray:
        path = self._file("image", name)
        arr = _as_hw3(_read_npy(path), path, "image")
        if arr.dtype == np.uint8:
            return arr
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image file {path} has dtype {arr.dtype}; expected float in [0, 1] or uint8")
        _check_finite(arr, path, "image")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"image file {path} has values in [{lo:.3g}, {hi:.3g}]; expected floats in [0, 1]")
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)

    def _load_semseg(self, name: str) -> torch.Tensor:
        path = self._file("semseg", name)
        arr = _as_hw(_read_npy(path), path, "label")
        _check_finite(arr, path, "label")
        labels = arr.astype(np.int64)
        if np.issubdtype(arr.dtype, np.floating) and (labels != arr).any():
            raise ValueError(f"label file {path} has non-integer values; expected 0..12 and -1")
        k = len(self.classes["semseg"])
        bad = (labels < -1) | (labels >= k)
        if bad.any():
            values = np.unique(labels[bad])[:5].tolist()
            raise ValueError(f"label file {path} has value(s) {values} out of range; expected 0..{k - 1} or -1")
        labels[labels == -1] = IGNORE_INDEX
        return torch.from_numpy(labels.astype(np.uint8))

    def _load_depth(self, name: str) -> torch.Tensor:
        path = self._file("depth", name)
        return _depth_tensor(_read_npy(path), path, self.max_depth)

    def _load_normals(self, name: str) -> torch.Tensor:
        path = self._file("normals", name)
        return _normals_tensor(_read_npy(path), path)


# ------------------------------------------------------------------------------------------ writers


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _check_hw(name: str, arr: np.ndarray, size: tuple[int, int], channels: int = 0) -> np.ndarray:
    arr = np.asarray(arr)
    want = size if channels == 0 else (*size, channels)
    if arr.shape != want:
        raise ValueError(f"{name} must have shape {want} to match the image, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _stored_labels(semseg: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """0-based labels with 255 ignore -> uint8 with 0 unlabelled and v + 1 for class v."""
    semseg = _check_hw("semseg", semseg, size).astype(np.int64)
    valid = semseg != IGNORE_INDEX
    if ((semseg[valid] < 0) | (semseg[valid] > 253)).any():
        raise ValueError("semseg values must be class ids 0..253 or 255 (ignore)")
    return np.where(valid, semseg + 1, 0).astype(np.uint8)


def _binary(name: str, arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    arr = _check_hw(name, arr, size)
    if ((arr != 0) & (arr != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr != 0


def _depth_array(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    depth = _check_hw("depth", depth, size).astype(np.float32)
    if (depth < 0).any():
        raise ValueError("depth must be metres >= 0 (0 = invalid)")
    return depth


def encode_normals_png(normals: np.ndarray) -> np.ndarray:
    """Unit normals float (H, W, 3) -> uint8 (H, W, 3) = round((n + 1) * 255 / 2), clipped to 0..255."""
    return np.clip(np.rint((np.asarray(normals, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_split(root: str | Path, split: str, names: Sequence[str]) -> Path:
    """Write ``<root>/gt_sets/<split>.txt`` with one id per line (layouts ``nyud`` and ``nyud-mt``)."""
    text = "".join(f"{n}\n" for n in names)
    return atomic_write(Path(root) / "gt_sets" / f"{split}.txt", lambda f: f.write(text.encode()))


def write_nyud_sample(
    root: str | Path,
    name: str,
    image: np.ndarray,
    semseg: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    edge: np.ndarray | None = None,
    png_level: int = 6,
) -> None:
    """Write one sample in the ``nyud`` (ATRC ``NYUDv2/``) encoding; ``None`` targets are not written.

    Args:
        root: dataset folder.
        name: sample id (file stem).
        image: uint8 (H, W, 3) RGB -> ``images/<name>.png``.
        semseg: int (H, W), classes 0-based, 255 ignore -> ``segmentation/<name>.png`` as v + 1, ignore 0.
        depth: float (H, W) metres, 0 invalid -> ``depth/<name>.npy`` float32.
        normals: float (H, W, 3) unit vectors -> ``normals/<name>.png`` as round((n + 1) * 255 / 2).
        edge: (H, W) {0, 1} -> ``edge/<name>.png`` as 0/255.
        png_level: zlib compression level 0..9 of the PNG files (lossless at every level: lower is faster
            and larger, e.g. 1 writes an RGB image about 3x faster than the default 6, 15 % larger).
    """
    if not 0 <= png_level <= 9:
        raise ValueError(f"png_level must be a zlib compression level 0..9, got {png_level}")
    root, image = Path(root), _check_image(image)
    size = image.shape[:2]
    labels = _stored_labels(semseg, size) if semseg is not None else None
    depth_arr = _depth_array(depth, size) if depth is not None else None
    normals_png = encode_normals_png(_check_hw("normals", normals, size, 3)) if normals is not None else None
    edge_png = _binary("edge", edge, size).astype(np.uint8) * 255 if edge is not None else None
    save_png(root / "images" / f"{name}.png", image, png_level)
    if labels is not None:
        save_png(root / "segmentation" / f"{name}.png", labels, png_level)
    if depth_arr is not None:
        _save_npy(root / "depth" / f"{name}.npy", depth_arr)
    if normals_png is not None:
        save_png(root / "normals" / f"{name}.png", normals_png, png_level)
    if edge_png is not None:
        save_png(root / "edge" / f"{name}.png", edge_png, png_level)


def write_nyud_mt_sample(
    root: str | Path,
    name: str,
    image: np.ndarray,
    semseg: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    edge: np.ndarray | None = None,
    jpeg_quality: int = 95,
) -> None:
    """Write one sample in the ``nyud-mt`` (MTI-Net ``NYUD_MT/``) encoding; ``None`` targets are skipped.

    Args:
        root: dataset folder.
        name: sample id (file stem).
        image: uint8 (H, W, 3) RGB -> ``images/<name>.jpg`` (lossy, ``jpeg_quality``).
        semseg: int (H, W), 0-based, 255 ignore -> ``segmentation/<name>.png`` as v + 1, ignore 0.
        depth: float (H, W) metres, 0 invalid -> ``depth/<name>.npy`` float32.
        normals: float (H, W, 3), zero vector invalid -> ``normals/<name>.npy`` float32.
        edge: (H, W) {0, 1} -> ``edge/<name>.npy`` float32.
        jpeg_quality: JPEG quality 1..95.
    """
    root, image = Path(root), _check_image(image)
    size = image.shape[:2]
    labels = _stored_labels(semseg, size) if semseg is not None else None
    depth_arr = _depth_array(depth, size) if depth is not None else None
    normals_arr = _check_hw("normals", normals, size, 3).astype(np.float32) if normals is not None else None
    edge_arr = _binary("edge", edge, size).astype(np.float32) if edge is not None else None
    save_jpg(root / "images" / f"{name}.jpg", image, jpeg_quality)
    if labels is not None:
        save_png(root / "segmentation" / f"{name}.png", labels)
    if depth_arr is not None:
        _save_npy(root / "depth" / f"{name}.npy", depth_arr)
    if normals_arr is not None:
        _save_npy(root / "normals" / f"{name}.npy", normals_arr)
    if edge_arr is not None:
        _save_npy(root / "edge" / f"{name}.npy", edge_arr)


def write_nyuv2_13_sample(
    root: str | Path,
    split: str,
    index: int,
    image: np.ndarray,
    semseg: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    normals: np.ndarray | None = None,
) -> None:
    """Write sample ``index`` of ``split`` in the ``nyuv2-13`` (mtan) encoding; ``None`` targets are skipped.

    Indices must run 0..N-1 in each split (the reader counts the image files).

    Args:
        root: dataset folder.
        split: ``train`` or ``val``.
        index: sample index, 0-based.
        image: uint8 (H, W, 3) RGB -> ``<split>/image/<index>.npy`` float32 (H, W, 3) = image / 255.
        semseg: int (H, W), classes 0..12, 255 ignore -> ``<split>/label/<index>.npy`` float32, ignore -1.
        depth: float (H, W) metres, 0 invalid -> ``<split>/depth/<index>.npy`` float32 (H, W, 1).
        normals: float (H, W, 3), zero vector invalid -> ``<split>/normal/<index>.npy`` float32.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    base, image = Path(root) / split, _check_image(image)
    size = image.shape[:2]
    label_arr = None
    if semseg is not None:
        s = _check_hw("semseg", semseg, size).astype(np.int64)
        if ((s != IGNORE_INDEX) & ((s < 0) | (s > 253))).any():
            raise ValueError("semseg values must be class ids 0..253 or 255 (ignore)")
        label_arr = np.where(s == IGNORE_INDEX, -1, s).astype(np.float32)
    depth_arr = _depth_array(depth, size)[..., None] if depth is not None else None
    normals_arr = _check_hw("normals", normals, size, 3).astype(np.float32) if normals is not None else None
    _save_npy(base / "image" / f"{index}.npy", image.astype(np.float32) / 255.0)
    if label_arr is not None:
        _save_npy(base / "label" / f"{index}.npy", label_arr)
    if depth_arr is not None:
        _save_npy(base / "depth" / f"{index}.npy", depth_arr)
    if normals_arr is not None:
        _save_npy(base / "normal" / f"{index}.npy", normals_arr)


# ------------------------------------------------------------------------------ variant detection

_VARIANT_FACTS: dict[str, dict[str, object]] = {
    "nyud": {
        "size": (425, 560),
        "lineage": "ATRC / InvPT / TaskPrompter / MLoRE / CTAL transformer (spec/protocols.md §2.1)",
        "consequences": (
            "40-class semseg, depth (m), normals, edge; the lineage trains and tests at 448x576 with a "
            "pad-only test transform (§3.1)",
            "normals are 8-bit PNG: no pixel decodes to the zero vector, so every normal pixel counts as valid",
            "edge odsF needs the 654 val ids exported as PNG and MATLAB SEISM (§4.5)",
        ),
    },
    "nyud-mt": {
        "size": (480, 640),
        "lineage": "MTI-Net / MT-CP (spec/protocols.md §2.2)",
        "consequences": (
            "40-class semseg, depth (m), normals (zero vector = invalid), edge; trained and tested at 480x640",
            "frames are larger than InvPT's 448x576: its pad-only test transform cannot batch them (InvPT "
            "issue #22); use the resize-based MTI-Net transforms with this variant",
        ),
    },
    "nyuv2-13": {
        "size": (288, 384),
        "lineage": "mtan / Auto-lambda / CTAL CNN (spec/protocols.md §2.3)",
        "consequences": (
            "13-class semseg, depth, normals; no edge task",
            "numbers on this variant are NOT comparable with the 40-class NYUD-v2 tables",
            "mtan and Auto-lambda average depth/normal metrics per batch; densemtl pools unless pooling='batch' (§4.2)",
        ),
    },
}
_EXPECTED_COUNTS = {"train": NYUD_TRAIN_SIZE, "val": NYUD_TEST_SIZE}


def detect_nyud_variant(root: str | Path) -> str | None:
    """The registry name of the NYUD variant stored in ``root`` (``nyud``, ``nyud-mt``, ``nyuv2-13``) or None.

    Decided by file types (§2.7): ``gt_sets/`` with ``images/*.png`` is ``nyud``, with ``images/*.jpg``
    ``nyud-mt``; ``{train,val}/image/*.npy`` is ``nyuv2-13``.
    """
    root = Path(root)
    images = root / "images"
    if (root / "gt_sets").is_dir() and images.is_dir():
        for suffix, variant in ((".png", "nyud"), (".jpg", "nyud-mt")):
            if next(images.glob(f"*{suffix}"), None) is not None:
                return variant
        return None
    if any(next((root / s / "image").glob("*.npy"), None) is not None for s in ("train", "val")):
        return "nyuv2-13"
    return None


def verify_dataset(root: str | Path, **options: Any) -> DatasetReport:
    """Check a NYUD-v2 folder and report its variant, counts and protocol consequences (spec §2.7).

    Finds the variant from file types and the image size (425x560 png: ATRC; 480x640 jpg: MTI-Net;
    288x384 npy: mtan), opens every split with the variant's reader (which checks that every file of every
    task exists), decodes the first sample, and compares the split sizes with 795 / 654.

    Args:
        root: the dataset folder.
        **options: options of :func:`~densemtl.data.verify.check_splits` (``quick``, ``progress``, ``workers``).

    Returns:
        A :class:`~densemtl.data.verify.DatasetReport` (``str()``: the text report, problems on lines
        with ``!``; ``to_dict()``: the JSON form).

    Raises:
        DatasetNotFoundError: ``root`` holds none of the NYUD variants.
    """
    root = Path(root)
    variant = detect_nyud_variant(root)
    if variant is None:
        raise DatasetNotFoundError(
            f"root={root} holds no NYUD-v2 variant: expected gt_sets/ + images/*.png (nyud, ATRC), "
            f"gt_sets/ + images/*.jpg (nyud-mt, MTI-Net) or {{train,val}}/image/*.npy (nyuv2-13, mtan)"
        )
    cls = DATASETS.get(variant)
    facts = _VARIANT_FACTS[variant]
    splits, errors, warnings = check_splits(lambda split: cls(root, split), _EXPECTED_COUNTS, facts["size"], **options)
    notes = ["val is the official 654-image test split; every lineage selects models on it (§2.5)"]
    return DatasetReport(
        root=str(root),
        dataset=variant,
        description=f"NYUD-v2 variant {variant!r}, {facts['lineage']}",
        splits=splits,
        notes=notes + list(facts["consequences"]),
        errors=errors,
        warnings=warnings,
        quick=bool(options.get("quick", False)),
    )
