"""DDP exactness: two gloo CPU processes, each updating half the batches, compute the single-process result."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
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


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {p: _run(p, range(rank, NUM_BATCHES, world)) for p in ("default", "mtan")}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_sync_equals_single_process(tmp_path):
    # fork: the children inherit the imported modules (spawn re-imports torch per child, ~10 s on 2 cores)
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 120 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for protocol in ("default", "mtan"):
        single = _run(protocol, range(NUM_BATCHES))
        for result in ranks:
            assert set(result[protocol]) == set(TASKS)
            for task, values in single.items():
                assert result[protocol][task] == pytest.approx(values, rel=1e-9, abs=1e-12), (protocol, task)
