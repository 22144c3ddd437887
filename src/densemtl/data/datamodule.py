"""One LightningDataModule for every dataset: reader from the registry, a transform preset, loaders.

``MultiTaskDataModule(dataset="nyud", root="data/NYUDv2", preset="invpt", batch_size=8)`` reads with the
registered reader (:data:`densemtl.data.DATASETS`), applies the preset's training or evaluation pipeline
(:mod:`densemtl.data.transforms`) and batches with :func:`collate` (tensors stacked, ``meta`` kept as a
list of dicts). By default (``compact=True``) the loaders carry a compact encoding (uint8 image where the
preset rounds it, with a deferred photometric distortion; uint8 label maps; 8-bit normal codes from readers
that store them) that the preset's last step, :class:`~densemtl.data.transforms.ToContract`, turns into the
sample contract after the batch reached the device (:meth:`on_after_batch_transfer`, which Lightning calls
before every ``*_step``): a third of the bytes through the workers' shared memory, and the distortion and
normalisation done on the accelerator. With ``recycle_buffers`` the workers reuse their shared-memory batch
buffers (:mod:`densemtl.data.recycling`). Synthetic
datasets (``densemtl.data.synthetic.SYNTHETIC_DATASETS``) are generated into ``root`` by ``prepare_data``
and then read by their reader like any other folder.

The engine can read ``tasks``, ``num_classes``, ``family`` and ``task_channels`` right after
construction (they come from the reader's class attributes), before ``setup``.
"""

from __future__ import annotations

import ctypes
import inspect
import random
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from densemtl.data.base import DATASETS, MultiTaskDataset, Sample
from densemtl.data.image_folder import IMAGE_SUFFIXES, ImageFolder, predict_pipeline
from densemtl.data.recycling import RecyclingCollate, release_batch
from densemtl.data.resumable import EpochSampler, ResumableLoader, SeededSamples
from densemtl.data.transforms import (
    PRESETS,
    Compose,
    ToContract,
    build_transform,
    resolve_normalization,
    split_contract,
)
from densemtl.tasks import TASKS, check_tasks

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "MultiTaskDataModule", "collate", "keep_freed_memory", "seed_worker"]

def collate(batch: list[Sample], out: dict[str, torch.Tensor] | None = None) -> Sample:
    """Stack the tensors of a list of samples; ``meta`` becomes a list of dicts.

    Args:
        batch: samples with the same keys and, per key, the same tensor shape.
        out: key -> (B, ...) tensor to stack into where shape and dtype fit (recycled buffers,
            :mod:`densemtl.data.recycling`); other keys get new tensors.

    Returns:
        key -> (B, ...) tensor; ``meta`` -> list of B dicts.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = list(batch[0])
    for sample in batch[1:]:
        if list(sample) != keys:
            raise ValueError(f"samples in a batch have different keys: {keys} vs {list(sample)}")
    result: Sample = {}
    for key in keys:
        values = [s[key] for s in batch]
        if key == "meta":
            result[key] = values
            continue
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            names = [s.get("meta", {}).get("name", "?") for s in batch]
            raise ValueError(
                f"cannot batch {key!r}: samples {names} have shapes {sorted(shapes)}. Use a preset that pads or "
                f"resizes to one size ('invpt', 'mtinet'), or batch size 1 for evaluation"
            )
        target = (out or {}).get(key)
        if target is not None and target.dtype == values[0].dtype and target.shape == (len(values), *values[0].shape):
            result[key] = torch.stack(values, 0, out=target)
        else:
            result[key] = default_collate(values)  # stacks into shared memory inside workers
    return result


def _mix_seed(seed: int, rank: int) -> int:
    """A 63-bit seed from a base seed and a distributed rank (distinct ranks -> distinct streams)."""
    return (int(seed) * 6364136223846793005 + 1442695040888963407 * (int(rank) + 1)) % 2**63


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large buffers in the heap instead of returning them to the system.

    Transforms allocate and free several MB per sample; by default glibc unmaps such buffers on free, so
    every new one is page-faulted in again (about 2,300 faults, a third of the transform time, per NYUD
    sample). Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps them; the process then holds
    its peak heap. Returns False where glibc's ``mallopt`` is not available (nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one torch thread, :func:`keep_freed_memory`, and torch, numpy,
    ``random`` and the transform reseeded.

    PyTorch seeds each worker's torch generator with ``base_seed + worker_id`` (``base_seed`` drawn from
    the loader's generator, or the global one, when iteration starts); the rank is mixed in here so that
    distributed ranks seeded alike still augment differently.
    """
    torch.set_num_threads(1)
    keep_freed_memory()
    seed = _mix_seed(torch.initial_seed(), rank)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, Compose) and transform.generator is not None:
        transform.reseed(seed)


_PREFETCH = 2  # batches prefetched per worker (PyTorch's default)
_LOADER_IDS = {"train": 0, "val": 1, "test": 2, "predict": 3}


def _synthetic_registry() -> dict[str, Any]:
    """``densemtl.data.synthetic.SYNTHETIC_DATASETS``, or {} when that package is not available."""
    try:
        from densemtl.data.synthetic import SYNTHETIC_DATASETS
    except ImportError:
        return {}
    return dict(SYNTHETIC_DATASETS)


class MultiTaskDataModule(LightningDataModule):
    """Loaders for any registered dataset with a transform preset.

    Args:
        dataset: a reader name in ``densemtl.data.DATASETS`` (``nyud``, ``nyud-mt``, ``nyuv2-13``,
            ``pascal``) or a synthetic dataset name (``synth-nyud``, ``synth-pascal``, ...).
        root: dataset folder; for a synthetic dataset, the folder it is generated into (once, by
            ``prepare_data``; an existing one made with the same ``generate`` arguments is reused).
        tasks: tasks to load (default: all the dataset provides).
        preset: transform preset (``invpt``, ``mtinet``, ``mtan``, ``autolambda``, ``ctal_cnn``, ``none``).
        train_size: (height, width) of the training crop/pad/resize; None: the preset's default.
        test_size: (height, width) for evaluation; None: ``train_size`` (the protocols use one size).
        batch_size: training batch size (the last incomplete training batch is dropped when there is at
            least one full batch).
        eval_batch_size: validation/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes (0: load in the main process).
        normalization: ``imagenet``, ``half`` (2x - 1) or ``unit`` ([0, 1]); None: the preset's default.
        mean: per-channel mean on [0, 1] pixels (overrides ``normalization``).
        std: per-channel std on [0, 1] pixels (overrides ``normalization``).
        train_split: split used for training.
        val_split: split used for validation.
        test_split: split used for testing (default ``val_split``; the NYUD/PASCAL "val" is the test set).
        predict_dir: folder of images to predict on (any size: :mod:`densemtl.data.image_folder`); None:
            predict on ``test_split``.
        predict_strict: stop on an unreadable file in ``predict_dir`` instead of skipping and listing it.
        seed: seed of the training shuffle and augmentation (None: from the global seed, ``seed_everything``).
        generate: keyword arguments of the synthetic generator (synthetic datasets only).
        cache_dir: cache folder handed to readers that take one (e.g. PASCAL's part-category cache).
        preset_options: extra keyword options of the preset builder (e.g. ``{"augment": true}`` for mtan).
        compact: loaders yield the compact encoding, converted to the contract by
            :meth:`on_after_batch_transfer` (the Trainer calls it; call it yourself when iterating a loader
            by hand); False: loaders yield the contract.
        recycle_buffers: worker loaders stack batches into recycled shared-memory buffers
            (:mod:`densemtl.data.recycling`), which :meth:`on_after_batch_transfer` frees once the batch has
            been copied out (pinned memory, accelerator); None: when CUDA is available (the loaders then
            pin memory). On CPU nothing copies the batches, so buffers are not reused there.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        tasks: list[str] | None = None,
        preset: str = "none",
        train_size: tuple[int, int] | None = None,
        test_size: tuple[int, int] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        normalization: str | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        predict_dir: str | None = None,
        predict_strict: bool = False,
        seed: int | None = None,
        generate: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        preset_options: dict[str, Any] | None = None,
        compact: bool = True,
        recycle_buffers: bool | None = None,
    ) -> None:
        super().__init__()
        self.dataset_name = dataset
        self.root = Path(root)
        self.synthetic = self._resolve_synthetic(dataset)
        reader_name = self.synthetic.reader if self.synthetic is not None else dataset
        self.reader_cls: type[MultiTaskDataset] = DATASETS.get(reader_name)
        available = self.reader_cls.available_tasks
        self._tasks = check_tasks(tasks if tasks is not None else available, available, f"dataset {dataset!r}")
        self.save_hyperparameters()
        # the model logs the resolved tasks (linked from here); logging the unresolved `tasks: null` too
        # would make Lightning refuse to merge the two hparams sets
        self._log_hyperparams = False
        PRESETS.get(preset)
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if generate and self.synthetic is None:
            raise ValueError(f"'generate' is only for synthetic datasets; {dataset!r} is read from {root}")
        self.preset = preset
        self.train_size = tuple(train_size) if train_size is not None else None
        self.test_size = tuple(test_size) if test_size is not None else self.train_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.normalization = (normalization, mean, std)
        self.mean, self.std = resolve_normalization(preset, normalization, mean, std)
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.predict_dir = Path(predict_dir) if predict_dir is not None else None
        self.predict_strict = bool(predict_strict)
        self.seed = seed
        self.generate = dict(generate or {})
        self.cache_dir = cache_dir
        self.preset_options = dict(preset_options or {})
        self.datasets: dict[str, Dataset] = {}
        self.recycle_buffers = torch.cuda.is_available() if recycle_buffers is None else bool(recycle_buffers)
        self._buffer_states: dict[int, torch.Tensor] = {}  # loader id -> RecyclingCollate.states
        self._data_root: Path | None = None if self.synthetic is not None else self.root
        # build both pipelines now so that bad sizes/options fail at construction
        train_contract = split_contract(self.transform("train"))[1]
        eval_contract = split_contract(self.transform("val"))[1]
        same = train_contract is not None and repr(train_contract) == repr(eval_contract)
        self.to_contract: ToContract | None = train_contract if compact and same else None
        """The device-side last step of the pipelines (None: the loaders yield the contract)."""

    # ------------------------------------------------------------------ facts for the engine

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks loaded, in order."""
        return self._tasks

    @property
    def family(self) -> str:
        """Dataset family (``nyud``, ``pascal``, ``nyuv2_13``) for default loss weights."""
        return self.reader_cls.family

    @property
    def num_classes(self) -> dict[str, int]:
        """task -> class count for the loaded segmentation-like tasks."""
        return {t: len(self.reader_cls.classes[t]) for t in self._tasks if t in self.reader_cls.classes}

    @property
    def task_channels(self) -> dict[str, int]:
        """task -> output channels a model must produce."""
        return {t: TASKS[t].out_channels(self.num_classes.get(t)) for t in self._tasks}

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """task -> class names for the loaded segmentation-like tasks."""
        return {t: tuple(self.reader_cls.classes[t]) for t in self._tasks if t in self.reader_cls.classes}

    # ------------------------------------------------------------------ data

    @staticmethod
    def _resolve_synthetic(dataset: str) -> Any:
        """The synthetic spec of ``dataset`` (checked first: its reader shares the name), or None."""
        synthetic = _synthetic_registry()
        if dataset in synthetic:
            return synthetic[dataset]
        if dataset in DATASETS:
            return None
        raise ValueError(f"unknown dataset {dataset!r}; available: {sorted({*DATASETS.names(), *synthetic})}")

    def transform(self, stage: str) -> Compose:
        """The pipeline of a stage: ``train`` augments; ``val``/``test``/``predict`` evaluate."""
        train = stage == "train"
        size = self.train_size if train else self.test_size
        normalization, mean, std = self.normalization
        return build_transform(self.preset, train, self.family, size, normalization, mean, std, **self.preset_options)

    def _dataset_transform(self, stage: str) -> Compose:
        """What the datasets of a stage apply: the pipeline, without its last step when ``to_contract`` is set."""
        pipeline = self.transform(stage)
        return split_contract(pipeline)[0] if self.to_contract is not None else pipeline

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The sample contract of a batch from one of the loaders, on the device it was moved to.

        Lightning calls it for every training, validation, test and predict batch.
        """
        batch = self.release_buffers(batch)  # after the copy to the device (or to pinned memory)
        return self.to_contract(batch) if self.to_contract is not None else batch

    def release_buffers(self, batch: Sample) -> Sample:
        """Free the recycled buffer a loader batch was stacked into, if its tensors have been copied out
        of shared memory (see ``recycle_buffers``); returns the batch without the buffer's key."""
        return release_batch(batch, self._buffer_states)[0]

    def prepare_data(self) -> None:
        """Generate a synthetic dataset into ``root`` if it is not there yet (nothing for real datasets)."""
        if self.synthetic is not None:
            self._data_root = Path(self.synthetic.ensure(self.root, **self.generate))

    @property
    def data_root(self) -> Path:
        """The folder the reader reads (for synthetic datasets: the generated dataset folder)."""
        if self._data_root is None:
            self.prepare_data()  # other ranks: the data exist already, ensure() only locates them
        return self._data_root if self._data_root is not None else self.root

    def _reader(self, split: str, transform: Compose | None, loader: bool = False) -> MultiTaskDataset:
        kwargs: dict[str, Any] = {}
        params = inspect.signature(self.reader_cls).parameters
        if self.cache_dir is not None and "cache_dir" in params:
            kwargs["cache_dir"] = self.cache_dir
        for compact in ("normals_png8", "uint8_labels"):  # 8-bit normal codes, uint8 label maps
            if loader and self.to_contract is not None and compact in params:
                kwargs[compact] = True  # they travel to the device; ToContract converts them
        return self.reader_cls(self.data_root, split=split, tasks=self._tasks, transform=transform, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``fit``, ``validate``, ``test``, ``predict``; None: all)."""
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "val", "test"),
        }
        if stage not in wanted:
            raise ValueError(f"unknown stage {stage!r}; expected one of {[s for s in wanted if s]}")
        for name in wanted[stage]:
            if name in self.datasets:
                continue
            if name == "predict" and self.predict_dir is not None:
                pipeline = predict_pipeline(self._dataset_transform("predict"), self.test_size)
                self.datasets[name] = ImageFolder(self.predict_dir, pipeline, strict=self.predict_strict)
            else:
                split = self.splits["test" if name == "predict" else name]
                self.datasets[name] = self._reader(split, self._dataset_transform(name), loader=True)

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "global_rank", 0) or 0)

    def _loader(self, name: str) -> DataLoader:
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[name])
        dataset = self.datasets[name]
        if name == "train":
            return self._train_loader(dataset, self._rank())
        # every loader draws its worker base seed from its own generator, never from torch's global one, so
        # building or iterating a loader does not change the training's random stream (exact resume)
        generator = torch.Generator()
        generator.manual_seed(_mix_seed(self.seed if self.seed is not None else 0, _LOADER_IDS[name] + 1))
        # predict folders may hold images of any size: one image per batch
        batch_size = 1 if name == "predict" else self.eval_batch_size
        options = self._loader_options(name)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=generator, **options)

    def _loader_options(self, name: str) -> dict[str, Any]:
        workers = self.num_workers
        collate_fn: Any = collate
        if workers > 0 and self.recycle_buffers:
            loader_id = _LOADER_IDS[name]
            collate_fn = RecyclingCollate(collate, workers, slots=_PREFETCH + 2, loader_id=loader_id)
            self._buffer_states[loader_id] = collate_fn.states
        return {
            "num_workers": workers,
            "collate_fn": collate_fn,
            "prefetch_factor": _PREFETCH if workers > 0 else None,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": workers > 0,
            "worker_init_fn": partial(seed_worker, rank=self._rank()) if workers > 0 else None,
        }

    def _train_loader(self, dataset: Dataset, rank: int) -> ResumableLoader:
        """The training loader: shuffle and per-sample augmentation seeds from (seed, epoch, sample), its
        position saved in checkpoints (:mod:`densemtl.data.resumable`), one shard per distributed rank."""
        base = self.seed if self.seed is not None else torch.initial_seed()
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1)
        sampler = EpochSampler(dataset, seed=_mix_seed(base, 0), num_replicas=world, rank=rank)
        generator = torch.Generator()
        generator.manual_seed(_mix_seed(base, 1))
        return ResumableLoader(
            SeededSamples(dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(sampler) >= self.batch_size,
            generator=generator,
            **self._loader_options("train"),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def plot(self, sample: Sample, preds: dict[str, torch.Tensor] | None = None) -> Any:
        """The reader's ``plot`` of a raw sample (and predictions), when the reader has one."""
        dataset = next((d for d in self.datasets.values() if isinstance(d, MultiTaskDataset)), None)
        if dataset is None:
            dataset = self._reader(self.splits["val"], None)
        if not hasattr(dataset, "plot"):
            raise ValueError(f"reader {self.reader_cls.__name__} has no plot()")
        return dataset.plot(sample, preds)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset={self.dataset_name!r}, root={str(self.root)!r}, tasks={list(self.tasks)}, "
            f"preset={self.preset!r}, batch_size={self.batch_size})"
        )
