"""DDP (2 gloo CPU processes): weights identical on both ranks and equal to one process on the global batch.

Each rank runs the engine's own hooks (``training_step``, ``on_train_batch_end`` with the post-step
forward, ``on_train_epoch_end`` with the all-reduced epoch statistics); gradients are averaged over
ranks as DDP does. Normalisation layers are in eval mode so that per-rank and global batches see the
same per-sample computation. Linear objectives (DWA, LPS without projection) are compared on distinct
halves of the global batch; the non-linear ones (LPS with log1p, FAMO) on a global batch made of two
identical halves, where every rank-local loss equals the global one.
"""

from __future__ import annotations

import pytest
import torch
from engine_steps import average_gradients, start_training, synthetic_batch

from trainers import tiny_module

TASKS = ["semseg", "depth", "normals"]
EPOCHS, STEPS, HALF = 3, 2, 2
CONFIGS = {  # name: (method, arguments, mirrored halves)
    "dwa": ("dwa", {}, False),
    "lps_none": ("lps", {"projection": "none", "beta": 7.5}, False),
    "lps_log1p": ("lps", {}, True),
    "famo": ("famo", {}, True),
}
# fp32 sums over 2 vs 4 samples round differently; FAMO's Adam steps on ξ amplify that to ~2e-6
TOLERANCE = {"dwa": 1e-6, "lps_none": 1e-6, "lps_log1p": 1e-6, "famo": 1e-5}


def _batch(indices) -> dict:
    return synthetic_batch(indices, seed=1000)


def _train(config: str, rank: int, world: int) -> dict:
    name, args, mirrored = CONFIGS[config]
    module = tiny_module(tasks=TASKS, weighting=name, weighting_args=args, lr=1e-3)
    start_training(module, TASKS, world, family="nyud")
    optimizer = module.configure_optimizers()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for step in range(EPOCHS * STEPS):
        first = step * 2 * HALF
        if mirrored:  # the global batch is two copies of one half
            local = list(range(first, first + HALF)) * (2 if world == 1 else 1)
        else:
            local = list(range(first, first + 2 * HALF))
            if world > 1:
                local = local[rank * HALF : (rank + 1) * HALF]
        batch = _batch(local)
        optimizer.zero_grad()
        module.training_step(batch, step).backward()
        average_gradients(params, world)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)
        if step % STEPS == STEPS - 1:
            module.on_train_epoch_end()
    state = module.weighting.state_dict()
    return {
        "steps": module._trajectory.steps.double().tolist(),
        "state": {k: v.double().tolist() for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()},
    }


def _train_all(rank: int, world: int) -> dict:
    return {config: _train(config, rank, world) for config in CONFIGS}


def test_two_ranks_compute_identical_weights_equal_to_one_process(gloo_ranks):
    ranks = gloo_ranks(_train_all, world=2, timeout=180)
    for config in CONFIGS:
        r0, r1 = ranks[0][config], ranks[1][config]
        assert r0 == r1, config  # bitwise identical weights and weighting state on both ranks
        single = _train(config, 0, 1)
        tol = TOLERANCE[config]
        assert torch.tensor(r0["steps"]) == pytest.approx(torch.tensor(single["steps"]), abs=tol), config
        for key, value in single["state"].items():
            got = torch.tensor(r0["state"][key])
            assert got == pytest.approx(torch.tensor(value), abs=tol, rel=tol), (config, key)
    # the weights did change, so the comparison is not between constants
    assert ranks[0]["dwa"]["state"]["weights"] != [1.0, 1.0, 1.0]
    assert ranks[0]["lps_none"]["steps"][-1] != [1.0, 1.0, 1.0]
    assert ranks[0]["lps_log1p"]["steps"][-1] != [1.0, 1.0, 1.0]
    assert ranks[0]["famo"]["state"]["xi"] != [0.0, 0.0, 0.0]
