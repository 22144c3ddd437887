"""Datasets: readers of the standard on-disk layouts, transforms, the DataModule."""

from densemtl.data.base import DATASETS, DatasetNotFoundError, MultiTaskDataset, register_dataset

__all__ = ["DATASETS", "DatasetNotFoundError", "MultiTaskDataset", "register_dataset"]
