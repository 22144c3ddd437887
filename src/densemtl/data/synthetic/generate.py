"""Generate the synthetic datasets into the standard layouts, in parallel processes, deterministically.

Every image has its own random stream, seeded by ``(seed, split, index)``, so the files do not depend on
the number of workers or on the order in which they finish. PNG and ``.npy`` writing is deterministic,
and nothing time-dependent is recorded, so the same arguments give byte-identical folders.

A dataset is written into a temporary sibling folder and renamed into place when complete, so an
interrupted run never leaves a folder that looks like a finished dataset.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densemtl.data.owned import build_folder

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "PNG_LEVEL",
    "ImageStats",
    "atomic_dataset",
    "image_rng",
    "image_names",
    "json_arguments",
    "parse_size",
    "read_marker",
    "run_jobs",
    "total",
    "write_card",
]

GENERATOR_VERSION = "1.1"
"""Bumped whenever the output for given arguments changes (1.1: PNG files written at zlib level 1, same pixels)."""

PNG_LEVEL = 1
"""zlib level of the written PNG files: lossless like any level, about 3x faster than PIL's default 6 for an
RGB image (the largest file), about 15 % larger. Part of the output format: changing it changes the bytes."""

MARKER = "generator.json"
"""File, written last, that records the generator, version and arguments of a finished dataset."""

_SPLIT_CODES = {"train": 0, "val": 1}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split`` (independent of workers and order)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split], int(index)]))


def image_names(train: int, val: int) -> dict[str, list[str]]:
    """Zero-padded ids, train first then val, e.g. ``{"train": ["0000", ...], "val": [...]}``."""
    width = max(4, len(str(train + val - 1)))
    names = [f"{i:0{width}d}" for i in range(train + val)]
    return {"train": names[:train], "val": names[train:]}


@dataclass
class ImageStats:
    """Per-image statistics a worker returns (summed over the dataset for the card).

    Attributes:
        class_pixels: (K,) pixel count per class.
        depth_hist: (B,) counts of valid depth in 0.25 m bins from 0 to 12 m (last bin: beyond).
        depth_sum: sum of valid depth in metres.
        depth_min: smallest valid depth.
        depth_max: largest valid depth.
        depth_valid: valid depth pixels.
        pixels: all pixels.
        brightness: sum of RGB values in [0, 1] over pixels and channels.
        extra: named counts (e.g. images with persons).
    """

    class_pixels: np.ndarray
    depth_hist: np.ndarray
    depth_sum: float = 0.0
    depth_min: float = np.inf
    depth_max: float = 0.0
    depth_valid: int = 0
    pixels: int = 0
    brightness: float = 0.0
    extra: dict[str, float] | None = None

    DEPTH_BINS = np.linspace(0.0, 12.0, 49)

    @classmethod
    def of(cls, rgb: np.ndarray, labels: np.ndarray, num_classes: int, depth: np.ndarray | None = None) -> ImageStats:
        """Statistics of one image: uint8 (H, W, 3) ``rgb``, (H, W) labels, optional (H, W) depth (0 invalid)."""
        stats = cls(
            class_pixels=np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(np.int64),
            depth_hist=np.zeros(len(cls.DEPTH_BINS), dtype=np.int64),
            pixels=int(labels.size),
            brightness=float(rgb.astype(np.float64).sum() / 255.0),
        )
        if depth is not None:
            valid = depth[depth > 0].astype(np.float64)
            if valid.size:
                idx = np.minimum((valid / 0.25).astype(np.int64), len(cls.DEPTH_BINS) - 1)
                stats.depth_hist = np.bincount(idx, minlength=len(cls.DEPTH_BINS)).astype(np.int64)
                stats.depth_sum, stats.depth_valid = float(valid.sum()), int(valid.size)
                stats.depth_min, stats.depth_max = float(valid.min()), float(valid.max())
        return stats

    def __add__(self, other: ImageStats) -> ImageStats:
        extra = dict(self.extra or {})
        for key, value in (other.extra or {}).items():
            extra[key] = extra.get(key, 0.0) + value
        return ImageStats(
            class_pixels=self.class_pixels + other.class_pixels,
            depth_hist=self.depth_hist + other.depth_hist,
            depth_sum=self.depth_sum + other.depth_sum,
            depth_min=min(self.depth_min, other.depth_min),
            depth_max=max(self.depth_max, other.depth_max),
            depth_valid=self.depth_valid + other.depth_valid,
            pixels=self.pixels + other.pixels,
            brightness=self.brightness + other.brightness,
            extra=extra,
        )

    def depth_percentile(self, q: float) -> float:
        """Approximate q-th percentile (0..100) of valid depth from the 0.25 m histogram (bin centre)."""
        if self.depth_valid == 0:
            return float("nan")
        cum = np.cumsum(self.depth_hist)
        i = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
        return float(self.DEPTH_BINS[min(i, len(self.DEPTH_BINS) - 1)] + 0.125)


def _pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_jobs(job: Callable[[Any], ImageStats], args: Sequence[Any], workers: int) -> list[ImageStats]:
    """Run ``job`` over ``args`` in ``workers`` processes (in this process when 1); results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(args) <= 1:
        return [job(a) for a in args]
    chunk = max(1, min(16, len(args) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        return list(pool.map(job, args, chunksize=chunk))


def read_marker(root: Path) -> dict[str, Any] | None:
    """The marker of a finished dataset at ``root``, or None."""
    path = Path(root) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _marker_text(dataset: str, arguments: dict[str, Any]) -> str:
    return json.dumps({"dataset": dataset, "version": GENERATOR_VERSION, "arguments": arguments}, indent=2) + "\n"


def atomic_dataset(
    out: str | Path,
    dataset: str,
    arguments: dict[str, Any],
    build: Callable[[Path], None],
    overwrite: bool = False,
) -> Path:
    """Build a dataset in a temporary sibling folder, write the marker last and rename it to ``out``.

    Args:
        out: final dataset folder.
        dataset: dataset name for the marker (``synth-nyud``, ``synth-pascal``).
        arguments: generator arguments recorded in the marker (JSON-serialisable).
        build: writes the dataset into the folder it is given.
        overwrite: replace an existing ``out`` that densemtl wrote (it holds a marker,
            :func:`densemtl.data.owned.is_densemtl_folder`); any other non-empty ``out`` raises, and the old
            folder is removed only once the new one is complete (:func:`densemtl.data.owned.build_folder`).

    Returns:
        ``out`` as a Path.
    """

    def mark(folder: Path) -> None:
        (folder / MARKER).write_text(_marker_text(dataset, arguments))

    return build_folder(out, build, mark, overwrite=overwrite)


def json_arguments(**kwargs: Any) -> dict[str, Any]:
    """Arguments as JSON values (tuples become lists), for the marker and the card."""
    return json.loads(json.dumps(kwargs, default=list))


def parse_size(size: tuple[int, int] | str) -> tuple[int, int]:
    """``(H, W)`` from a pair or an ``"HxW"`` string; both at least 8 pixels."""
    if isinstance(size, str):
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"size must look like 240x320 (HxW), got {size!r}") from None
    else:
        if len(size) != 2:
            raise ValueError(f"size must be (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8 pixels, got {h}x{w}")
    return h, w


def write_card(root: str | Path, text: str) -> Path:
    """Write the dataset card ``README.md`` into ``root``."""
    path = Path(root) / "README.md"
    path.write_text(text)
    return path


def total(stats: Sequence[ImageStats]) -> ImageStats | None:
    """Sum of per-image statistics in order (None when empty)."""
    if not stats:
        return None
    out = stats[0]
    for s in stats[1:]:
        out = out + s
    return out
