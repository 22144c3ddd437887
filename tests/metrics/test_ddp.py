"""DDP exactness: two gloo CPU processes, each updating half the batches, compute the single-process result."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from densemtl.metrics.collection import MultiTaskMetrics

NUM_BATCHES = 4
HAS_SAL = importlib.util.find_spec("densemtl.metrics.saliency") is not None
TASKS = ["semseg", "depth", "normals", "edge"] + (["sal"] if HAS_SAL else [])
OPTIONS = {"edge": {"odsf": False}}


def _batch(i: int):
    g = torch.Generator().manual_seed(100 + i)
    b, h, w = 2, 6, 8
    depth = torch.rand(b, 1, h, w, generator=g) * 9 + 0.2
    depth[:, :, 0] = 0
    normals = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    target = {
        "semseg": torch.randint(0, 4, (b, h, w), generator=g),
        "depth": depth,
        "normals": normals,
        "edge": (torch.rand(b, 1, h, w, generator=g) < 0.2).float(),
        "sal": (torch.rand(b, 1, h, w, generator=g) < 0.4).float(),
    }
    preds = {
        "semseg": torch.randn(b, 4, h, w, generator=g),
        "depth": depth + torch.randn(b, 1, h, w, generator=g),
        "normals": normals + torch.randn(b, 3, h, w, generator=g),
        "edge": torch.randn(b, 1, h, w, generator=g),
        "sal": torch.randn(b, 1, h, w, generator=g),
    }
    return preds, target


def _run(protocol: str, batches) -> dict:
    m = MultiTaskMetrics(TASKS, {"semseg": 4}, protocol=protocol, options=OPTIONS)
    for i in batches:
        m.update(*_batch(i))
    return m.compute()


def _run_share(rank: int, world: int) -> dict:
    return {p: _run(p, range(rank, NUM_BATCHES, world)) for p in ("default", "mtan")}


def test_two_process_sync_equals_single_process(gloo_ranks):
    ranks = gloo_ranks(_run_share, world=2, timeout=120)
    for protocol in ("default", "mtan"):
        single = _run(protocol, range(NUM_BATCHES))
        for result in ranks:
            assert set(result[protocol]) == set(TASKS)
            for task, values in single.items():
                assert result[protocol][task] == pytest.approx(values, rel=1e-9, abs=1e-12), (protocol, task)
