"""Cityscapes in the mtan / Auto-lambda ``.npy`` layout (128x256, 19 classes, depth): reader, writer, verify.

CTAL's CNN tables (``spec/ctal.md`` §8) use the preprocessed Cityscapes release of mtan (Liu et al., CVPR 2019)
as re-used by Auto-lambda: ``{train,val}/{image,label_7,label_19,depth}/<i>.npy``, indices 0..N-1 per split,
2,975 train and 500 val frames at 128x256. The folder structure and encodings are those of the ``nyuv2-13``
layout (:class:`~densemtl.data.nyud.NYUv2_13`), so the reader shares its per-file decoding; only the facts
differ (classes, label folder, tasks, family).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from densemtl.data.base import DatasetNotFoundError, Sample, register_dataset
from densemtl.data.nyud import NYUv2_13, _check_hw, _check_image, _depth_array, _save_npy
from densemtl.data.verify import DatasetReport, check_splits
from densemtl.tasks import IGNORE_INDEX

__all__ = [
    "CITYSCAPES19_CLASSES",
    "CITYSCAPES7_CLASSES",
    "Cityscapes",
    "is_cityscapes_root",
    "verify_cityscapes",
    "write_cityscapes_sample",
]

CITYSCAPES19_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
"""The 19 Cityscapes evaluation classes in train-id order (0 = road ... 18 = bicycle)."""

CITYSCAPES7_CLASSES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
"""The 7 Cityscapes categories of mtan's ``label_7`` (void excluded)."""

CITYSCAPES_SIZE = (128, 256)
_EXPECTED_COUNTS = {"train": 2975, "val": 500}


@register_dataset("cityscapes")
class Cityscapes(NYUv2_13):
    """Cityscapes, mtan / Auto-lambda layout; used by CTAL CNN (19 classes), mtan and Auto-lambda (7 classes).

    ================================  ================================  ================================
    file                              stored (HWC)                      sample
    ================================  ================================  ================================
    ``<split>/image/<i>.npy``         float (H, W, 3) in [0, 1]         uint8 (3, H, W) = round(255 x)
    ``<split>/label_19/<i>.npy``      (H, W) 0..18, -1 ignore           int64 (H, W), -1 -> 255
    ``<split>/depth/<i>.npy``         (H, W, 1), 0 invalid              float32 (1, H, W) as is
    ================================  ================================  ================================

    Depth is kept as distributed (mtan's disparity-derived values); CTAL's config bounds are unused.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``train`` or ``val``.
        tasks: ``semseg`` and/or ``depth`` (default both).
        transform: applied to each sample.
        uint8_labels: label maps as uint8 with 255 = ignore (the loaders' compact encoding).
        num_classes: 19 (``label_19``, CTAL) or 7 (``label_7``, mtan / Auto-lambda).
    """

    family: ClassVar[str] = "cityscapes"
    dataset_name: ClassVar[str] = "cityscapes"
    variant: ClassVar[str] = "mtan"
    available_tasks: ClassVar[tuple[str, ...]] = ("semseg", "depth")
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": CITYSCAPES19_CLASSES}
    folders: ClassVar[dict[str, str]] = {"image": "image", "semseg": "label_19", "depth": "depth"}
    max_depth: ClassVar[float | None] = None  # depth as distributed (not Kinect metres): no plausibility bound
    layout: ClassVar[str] = (
        "  <root>/{train,val}/image/<i>.npy      float (H, W, 3) in [0, 1], i = 0..N-1\n"
        "  <root>/{train,val}/label_19/<i>.npy   (H, W) 0..18, -1 = ignore (label_7: 0..6 with num_classes=7)\n"
        "  <root>/{train,val}/depth/<i>.npy      (H, W, 1), 0 = invalid"
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        uint8_labels: bool = False,
        num_classes: int = 19,
    ) -> None:
        if num_classes not in (19, 7):
            raise ValueError(f"Cityscapes num_classes must be 19 (label_19) or 7 (label_7), got {num_classes!r}")
        if num_classes == 7:  # instance-level facts shadow the class defaults
            self.classes = {"semseg": CITYSCAPES7_CLASSES}
            self.folders = {**type(self).folders, "semseg": "label_7"}
        super().__init__(root, split, tasks, transform, uint8_labels)


def write_cityscapes_sample(
    root: str | Path,
    split: str,
    index: int,
    image: np.ndarray,
    semseg: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    label_folder: str = "label_19",
) -> None:
    """Write sample ``index`` of ``split`` in the mtan Cityscapes encoding; ``None`` targets are skipped.

    Args:
        root: dataset folder.
        split: ``train`` or ``val``.
        index: 0-based; indices must run 0..N-1 per split.
        image: uint8 (H, W, 3) RGB -> ``image/<i>.npy`` float32 = image / 255.
        semseg: int (H, W) class ids, 255 ignore -> ``<label_folder>/<i>.npy`` float32 with ignore -1.
        depth: float (H, W), 0 invalid -> ``depth/<i>.npy`` float32 (H, W, 1).
        label_folder: ``label_19`` or ``label_7``.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    base, image = Path(root) / split, _check_image(image)
    size = image.shape[:2]
    if semseg is not None:
        s = _check_hw("semseg", semseg, size).astype(np.int64)
        if ((s != IGNORE_INDEX) & ((s < 0) | (s > 253))).any():
            raise ValueError("semseg values must be class ids 0..253 or 255 (ignore)")
    depth_arr = _depth_array(depth, size)[..., None] if depth is not None else None
    _save_npy(base / "image" / f"{index}.npy", image.astype(np.float32) / 255.0)
    if semseg is not None:
        _save_npy(base / label_folder / f"{index}.npy", np.where(s == IGNORE_INDEX, -1, s).astype(np.float32))
    if depth_arr is not None:
        _save_npy(base / "depth" / f"{index}.npy", depth_arr)


def is_cityscapes_root(root: str | Path) -> bool:
    """True when ``root`` has the mtan Cityscapes layout (``{train,val}/label_19`` or ``label_7`` folders)."""
    root = Path(root)
    return any((root / s / f).is_dir() for s in ("train", "val") for f in ("label_19", "label_7"))


def verify_cityscapes(root: str | Path, **options: Any) -> DatasetReport:
    """Check a mtan-layout Cityscapes folder: every file of every split, sizes and split counts (``options``:
    those of :func:`~densemtl.data.verify.check_splits`, e.g. ``quick``).

    Returns:
        A :class:`~densemtl.data.verify.DatasetReport` (``str()``: the text report, problems on lines
        with ``!``; ``to_dict()``: the JSON form).

    Raises:
        DatasetNotFoundError: ``root`` is not a mtan Cityscapes folder.
    """
    root = Path(root)
    if not is_cityscapes_root(root):
        raise DatasetNotFoundError(f"root={root} is not a mtan Cityscapes folder: expected {{train,val}}/label_19/")
    splits, errors, warnings = check_splits(
        lambda split: Cityscapes(root, split), _EXPECTED_COUNTS, CITYSCAPES_SIZE, **options
    )
    return DatasetReport(
        root=str(root),
        dataset="cityscapes",
        description="Cityscapes, mtan / Auto-lambda layout (CTAL CNN, spec/ctal.md §8)",
        splits=splits,
        notes=["19-class semseg (label_19) and depth as distributed; val is the official 500-image split"],
        errors=errors,
        warnings=warnings,
        quick=bool(options.get("quick", False)),
    )
