"""The dataset contract shared by every reader, and the dataset registry.

A reader is a :class:`MultiTaskDataset` subclass that states its facts as class attributes and converts
its on-disk encoding to the sample contract (``DESIGN.md`` §2, ``densemtl.tasks``) in ``load``. The
only difference to the final contract is the image, which ``load`` returns as raw pixels:

* ``image``: uint8 (3, H, W), RGB. A transform preset (``densemtl.data.transforms``) turns it into
  the normalised float32 image.
* targets: exactly the contract (``semseg`` int64 (H, W) ignore 255; ``depth`` float32 (1, H, W)
  metres, 0 invalid; ``normals`` float32 (3, H, W), zero vector invalid; ``edge``/``sal`` float32
  (1, H, W) in {0, 1}, 255 ignore; ``human_parts`` int64 (H, W)).
* ``meta``: dict with ``name`` (str id), ``size`` (H, W) of the original image, and extras.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from densemtl.registry import Registry
from densemtl.tasks import check_tasks

__all__ = ["DATASETS", "DatasetNotFoundError", "MultiTaskDataset", "Sample", "register_dataset"]

Sample = dict[str, Any]

DATASETS: Registry[type] = Registry("dataset")
register_dataset = DATASETS.register


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or one of its files is missing; the message names the path and the layout."""


class MultiTaskDataset(Dataset):
    """Base class of every reader.

    Class attributes (facts, set by subclasses):
        family: dataset family for default loss weights (``nyud``, ``pascal``, ``nyuv2_13``).
        available_tasks: tasks this layout provides.
        classes: task -> class names for segmentation-like tasks.
        splits: split names accepted by ``split``.

    Args:
        root: dataset folder.
        split: one of ``splits``.
        tasks: tasks to load (default: all ``available_tasks``).
        transform: a callable ``Sample -> Sample`` applied after ``load`` (e.g. a transform preset).
    """

    family: ClassVar[str] = ""
    available_tasks: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[dict[str, tuple[str, ...]]] = {}
    splits: ClassVar[tuple[str, ...]] = ("train", "val")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        self.root = Path(root)
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for {type(self).__name__}; expected one of {self.splits}")
        self.split = split
        self.tasks = check_tasks(
            tasks if tasks is not None else self.available_tasks,
            self.available_tasks,
            f"dataset {type(self).__name__} at {self.root}",
        )
        self.transform = transform

    @property
    def num_classes(self) -> dict[str, int]:
        """task -> class count for the requested segmentation-like tasks."""
        return {t: len(names) for t, names in self.classes.items() if t in self.tasks}

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        """Read sample ``index`` from disk in the contract encoding (raw uint8 image)."""
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample
