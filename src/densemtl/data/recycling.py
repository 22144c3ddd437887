"""Recycled shared-memory batch buffers for DataLoader workers.

A DataLoader worker stacks every batch into freshly allocated shared memory, and the first write to each
new page is a page fault: for a 448x576 NYUD batch of 8 (25 MB in the compact encoding) that is 6,400
faults, 2.5-4 ms per sample on a virtual machine (``benchmarks/bench_loading.py``), a sixth of a worker's
time. :class:`RecyclingCollate` keeps a few batch buffers per worker and reuses one once the main process
has released it with :func:`release_batch`, after the batch was copied out of it (into pinned memory by
the DataLoader's pin-memory thread, or to the accelerator).

Protocol. ``states`` is an int64 tensor in shared memory with ``slots`` entries per worker, made in the
main process before the workers start; 0 means free. A worker takes a free slot of its own, writes a
fresh nonzero token into it and attaches ``(loader id, slot, token)`` to the batch under
:data:`BUFFER_KEY`. :func:`release_batch` sets the slot back to 0 only if it still holds that token and
no tensor of the batch lives in shared memory any more. Only the worker writes a free slot and only the
main process writes a busy one, and a release with an old token (a batch of a worker that has since been
restarted) changes nothing: a buffer is never reused while a batch can still read it. A worker that finds
no free slot (batches not released, e.g. on CPU, where nothing copies them) allocates as usual.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = ["BUFFER_KEY", "RecyclingCollate", "release_batch"]

BUFFER_KEY = "_buffer"
"""Batch key of ``(loader id, slot, token)`` for a batch stacked into a recycled buffer."""

Batch = dict[str, Any]


class RecyclingCollate:
    """A collate function that stacks batches into recycled shared-memory buffers inside workers.

    Args:
        collate: ``(samples, out=None) -> batch``: stacks a list of samples into a batch dict, into the
            tensors ``out`` (key -> tensor) where their shapes and dtypes fit, else into new ones (in a
            worker, PyTorch's ``default_collate`` puts those in shared memory).
        num_workers: the DataLoader's workers.
        slots: buffers per worker (prefetched batches + the one being built + those in the main process).
        loader_id: tells the loaders of one DataModule apart (each has its own ``states``).
    """

    def __init__(
        self,
        collate: Callable[..., Batch],
        num_workers: int,
        slots: int = 4,
        loader_id: int = 0,
    ) -> None:
        if num_workers < 1 or slots < 1:
            raise ValueError(f"RecyclingCollate needs num_workers >= 1 and slots >= 1, got {num_workers}, {slots}")
        self.collate = collate
        self.slots = slots
        self.loader_id = loader_id
        self.states = torch.zeros(num_workers * slots, dtype=torch.int64).share_memory_()
        self._buffers: dict[int, dict[str, torch.Tensor]] = {}
        self._tokens = itertools.count(1)

    def __getstate__(self) -> dict[str, Any]:  # a worker starts with no buffers of its own
        state = dict(self.__dict__)
        state["_buffers"], state["_tokens"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokens = itertools.count(1)

    def _token(self) -> int:
        """A nonzero token unique across processes: the pid in the high bits, a counter in the low 32."""
        return (os.getpid() << 32) | (next(self._tokens) & 0xFFFFFFFF)

    def __call__(self, samples: list[Any]) -> Batch:
        info = get_worker_info()
        if info is None or (info.id + 1) * self.slots > self.states.numel():
            return self.collate(samples)
        first = info.id * self.slots
        for slot in range(first, first + self.slots):
            if int(self.states[slot]) != 0:
                continue
            batch = self.collate(samples, self._buffers.get(slot))
            self._buffers[slot] = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            token = self._token()
            self.states[slot] = token
            batch[BUFFER_KEY] = (self.loader_id, slot, token)
            return batch
        return self.collate(samples)  # every buffer is still in use


def _in_shared_memory(batch: Batch) -> bool:
    return any(
        isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.untyped_storage().is_shared()
        for v in batch.values()
    )


def release_batch(batch: Batch, states: dict[int, torch.Tensor]) -> tuple[Batch, bool]:
    """Remove :data:`BUFFER_KEY` from a batch and free its buffer when that is safe.

    Args:
        batch: a batch from a loader with a :class:`RecyclingCollate` (a batch without the key passes).
        states: loader id -> that loader's ``RecyclingCollate.states``.

    Returns:
        (the batch without the key, whether a buffer was freed). Nothing is freed while a tensor of the
        batch is still in shared memory (not yet copied to pinned memory or a device), for an unknown
        loader, or when the slot no longer holds the batch's token.
    """
    if BUFFER_KEY not in batch:
        return batch, False
    batch = dict(batch)
    loader_id, slot, token = batch.pop(BUFFER_KEY)
    table = states.get(loader_id)
    if table is None or _in_shared_memory(batch) or not 0 <= slot < table.numel() or int(table[slot]) != token:
        return batch, False
    table[slot] = 0
    return batch, True
