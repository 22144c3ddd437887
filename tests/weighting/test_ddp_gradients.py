"""DDP (2 gloo CPU processes) for gradient methods: per-task rows are averaged over ranks *before* the Gramian,
so every rank computes the same weights and the same parameter update, equal to one process on the global batch.

Each rank runs the engine's ``training_step`` (rows, all-reduce, Gramian, aggregation) and the backward of the
returned objective; gradients are then averaged over ranks as DDP's reducer does (the shared update is identical
on both ranks, so the average leaves it unchanged). Normalisation layers are in eval mode, so per-rank and global
batches see the same per-sample computation; per-rank batches are equal halves of the global batch.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from engine_steps import average_gradients, start_training, synthetic_batch

from densemtl.engine import MultiTaskModule

TASKS = ["semseg", "depth", "normals"]
STEPS, HALF = 2, 2
METHODS = ["mgda", "pcgrad", "nash_mtl"]


def _batch(indices) -> dict:
    return synthetic_batch(indices, seed=2000)


def _train(name: str, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    module = MultiTaskModule(
        tasks=TASKS,
        num_classes={"semseg": 3},
        family="nyud",
        arch="hps",
        arch_args={"pretrained": None, "neck_channels": 8, "head_channels": 8},
        weighting=name,
        scheduler="none",
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        lr=0.1,
        log_images=0,
    )
    start_training(module, TASKS, world)
    optimizer = module.configure_optimizers()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for step in range(STEPS):
        local = list(range(step * 2 * HALF, (step + 1) * 2 * HALF))
        if world > 1:
            local = local[rank * HALF : (rank + 1) * HALF]
        batch = _batch(local)
        optimizer.zero_grad()
        module.training_step(batch, step).backward()
        average_gradients(params, world)
        max_norm = float(getattr(module.weighting, "max_norm", 0.0) or 0.0)
        if max_norm > 0:  # the engine's configure_gradient_clipping (Nash-MTL's built-in clipping)
            torch.nn.utils.clip_grad_norm_(list(module.model.shared_parameters()), max_norm)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)
    module._trajectory.flush()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]).double()
    probe = torch.randn(delta.numel(), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return {
        "weights": module._trajectory.steps.double().tolist(),
        "hash": hashlib.sha256(delta.numpy().tobytes()).hexdigest(),
        "norm": float(delta.norm()),
        "probe": float(delta @ probe),
    }


def _train_all(rank: int, world: int) -> dict:
    return {name: _train(name, rank, world) for name in METHODS}


def test_two_ranks_identical_weights_and_update_equal_to_one_process(gloo_ranks):
    ranks = gloo_ranks(_train_all, world=2, timeout=240)
    for name in METHODS:
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0 == r1, name  # bitwise identical weights and parameter update on both ranks
        single = _train(name, 0, 1)
        assert torch.tensor(r0["weights"]) == pytest.approx(torch.tensor(single["weights"]), rel=1e-5, abs=1e-7), name
        assert r0["norm"] == pytest.approx(single["norm"], rel=1e-5), name
        assert r0["probe"] == pytest.approx(single["probe"], abs=1e-5 * single["norm"]), name
        assert r0["norm"] > 0
