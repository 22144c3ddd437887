"""Shared fixtures: the path of the real NYUv2 fixtures in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

# before any test imports torch: passive OpenMP waiting (see densemtl/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project root (real NYUv2 frames, see its SOURCE.md files)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real fixtures not found at {SHARED_DATA}; ../shared must sit beside the project")
    return SHARED_DATA


def _gloo_worker(rank: int, world: int, port: int, out_dir: str, compute) -> None:
    """One forked rank: join a gloo group, write ``compute(rank, world)`` as JSON, leave the group."""
    import json

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = compute(rank, world)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def gloo_ranks(tmp_path):
    """``run(compute, world=2, timeout=180)``: ``compute(rank, world)`` in ``world`` forked gloo processes
    (fork: the children inherit the imported modules; spawn re-imports torch per child, ~10 s on 2 cores);
    returns each rank's JSON-decoded result, in rank order."""
    import json
    import socket
    import time

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")

    def run(compute, world: int = 2, timeout: float = 180.0) -> list:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = (world, port, str(tmp_path), compute)
        ctx = mp.start_processes(_gloo_worker, args=args, nprocs=world, join=False, start_method="fork")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"DDP workers did not finish within {timeout:.0f} s")
        return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    return run
