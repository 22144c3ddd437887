"""Datasets: readers of the standard on-disk layouts, transforms, the DataModule."""

from densemtl.data import (
    cityscapes,  # noqa: F401  (registers cityscapes)
    nyud,  # noqa: F401  (registers nyud, nyud-mt, nyuv2-13)
    pascal,  # noqa: F401  (registers pascal)
    synthetic,  # noqa: F401  (registers synth-nyud, synth-pascal)
)
from densemtl.data.base import DATASETS, DatasetNotFoundError, MultiTaskDataset, register_dataset

__all__ = ["DATASETS", "DatasetNotFoundError", "MultiTaskDataset", "register_dataset"]
