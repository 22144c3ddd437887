"""A training loader whose shuffle, augmentation and position are functions of (seed, epoch, sample), and which
Lightning saves in the checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.

* :class:`EpochSampler` — the order of an epoch is a permutation drawn from ``(seed, epoch)`` (Lightning
  calls ``set_epoch`` at every epoch start); each index comes with its own augmentation seed drawn from the
  same generator. It is a ``DistributedSampler`` (one shard per rank), so Lightning keeps it under DDP.
* :class:`SeededSamples` — dataset wrapper that reseeds the transform pipeline with the sample's seed
  before reading it: augmentation no longer depends on workers, prefetching or where a run was resumed.
* :class:`ResumableLoader` — a ``DataLoader`` with ``state_dict``/``load_state_dict`` (epoch, batches already
  yielded in the pass), which Lightning stores in every checkpoint and restores on ``ckpt_path``; the
  resumed pass skips the consumed batches in the sampler (no data is read for them). Before each batch is
  fetched it checks for a pending SIGTERM/SIGINT (:mod:`densemtl.interrupts`), the point where a checkpoint
  resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from densemtl.interrupts import raise_if_requested

__all__ = ["EpochSampler", "ResumableLoader", "SeededSamples", "mix_seed"]


def mix_seed(seed: int, salt: int) -> int:
    """A 63-bit seed from a base seed and a salt (epoch, rank): distinct salts give distinct streams."""
    return (int(seed) * 6364136223846793005 + 1442695040888963407 * (int(salt) + 1)) % 2**63


class EpochSampler(DistributedSampler):
    """Yield ``(index, sample_seed)`` for one epoch (this rank's shard), from ``(seed, epoch)`` only.

    Args:
        dataset: the dataset (only its length is used).
        seed: base seed of the shuffle and of the per-sample augmentation seeds.
        shuffle: permute the indices (else in order; the augmentation seeds still change per epoch).
        num_replicas: number of distributed ranks.
        rank: this rank.
    """

    def __init__(
        self, dataset: Dataset, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed) % 2**63)
        self.start = 0
        """Positions of this pass to skip (set by :class:`ResumableLoader` when resuming); reset by ``__iter__``."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.dataset)
        start, self.start = self.start, 0
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        seeds = torch.randint(2**62, (n,), generator=g)
        if self.total_size > n:  # pad to a multiple of the ranks (DistributedSampler's rule)
            order = order.repeat(math.ceil(self.total_size / n))[: self.total_size]
        shard = order[self.rank : self.total_size : self.num_replicas].tolist()
        seeds_list = seeds.tolist()
        return iter([(i, seeds_list[i]) for i in shard[start:]])

    def __len__(self) -> int:
        return self.num_samples


class SeededSamples(Dataset):
    """``dataset[index]`` with its transform reseeded by the sample seed given as ``(index, seed)``.

    Args:
        dataset: a dataset whose ``transform`` has ``reseed(seed)`` (:class:`~densemtl.data.transforms.Compose`);
            other datasets are read unchanged.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def transform(self) -> Any:
        return getattr(self.dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        transform = self.transform
        if seed is not None and hasattr(transform, "reseed"):
            transform.reseed(seed)
        return self.dataset[index]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position Lightning checkpoints and restores.

    ``state_dict()`` is ``{"epoch", "batches"}``: the sampler's epoch and the batches yielded in the current
    pass (Lightning does not prefetch from loaders with a length, so yielded = trained on).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise ValueError(f"ResumableLoader needs an EpochSampler, got {type(self.sampler).__name__}")
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_at = self._resume_at, 0
        self.sampler.start = skip * int(self.batch_size or 1)
        self._yielded = skip
        return self._batches(super().__iter__())

    def _batches(self, iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            raise_if_requested()  # a pending SIGTERM/SIGINT stops here, before the next batch is read
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        self._resume_at = int(state["batches"])
