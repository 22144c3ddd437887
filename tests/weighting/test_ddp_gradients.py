"""DDP through Lightning (2 gloo CPU processes, ``DDPStrategy``) for gradient methods (``spec/weighting.md`` §1.7).

- Per-task rows are averaged over ranks *before* the Gramian, so both ranks compute bitwise-identical weights
  and parameter updates, equal to one process on the global batch.
- Param space keeps DDP's reducer out of the step: the shared update is written identically on every rank and is
  not all-reduced a second time (a counting communication hook sees no bucket); the task-specific gradients are
  averaged once, explicitly. Rep space uses DDP's ordinary synchronised backward (the hook sees its buckets).
- Exact accumulation under DDP: 2 ranks x 2 micro-batches of 1 sample equal one process on batches of 4.

Normalisation layers are frozen (eval), so per-rank and global batches see the same per-sample computation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import lightning as L
import pytest
import torch
from engine_steps import synthetic_sample
from torch.utils.data import DataLoader

from trainers import quiet_trainer, tiny_module

TASKS = ["semseg", "depth", "normals"]
STEPS, GLOBAL_BATCH = 2, 4
CASES = {
    "mgda": ({"space": "param"}, 1),
    "pcgrad": ({"space": "param"}, 1),
    "nash_mtl": ({"space": "param"}, 1),
    "mgda_rep": ({"space": "rep"}, 1),
    "nash_mtl_accumulated": ({"space": "param"}, 2),
}


class _FrozenNorm(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for m in pl_module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


class _CommCount(L.Callback):
    """Registers a DDP communication hook that counts the buckets DDP's reducer all-reduces (Lightning's own
    ``ddp_comm_hook`` option registers hooks on CUDA only)."""

    def __init__(self) -> None:
        self.buckets = 0

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.strategy.model.register_comm_hook(self, _counting_allreduce)


def _counting_allreduce(state: _CommCount, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.buckets += 1
    return allreduce_hook(None, bucket)


def _samples(rank: int, world: int, accumulate: int) -> tuple[list[dict], int]:
    """This rank's samples in loader order: global step s covers indices [s·G, (s+1)·G), split into
    ``accumulate`` micro-batches and each micro-batch into ``world`` equal rank shares."""
    share = GLOBAL_BATCH // (world * accumulate)
    order = []
    for step in range(STEPS):
        for micro in range(accumulate):
            start = step * GLOBAL_BATCH + micro * share * world + rank * share
            order += range(start, start + share)
    return [synthetic_sample(i, seed=2000) for i in order], share


def _fit(case: str, rank: int, world: int) -> dict:
    args, accumulate = CASES[case]
    if world == 1:
        accumulate = 1  # the reference: one process, the whole global batch in one step
    method = case.split("_rep")[0].split("_accumulated")[0]
    module = tiny_module(
        tasks=TASKS,
        weighting=method,
        weighting_args=args,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        lr=0.1,
        check_rank_weights=world > 1,  # the debug check of §1.7 rule 7 runs in the DDP fits
    )
    params = list(module.model.parameters())
    before = [p.detach().clone() for p in params]
    comm = _CommCount()
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world))
        strategy = DDPStrategy(process_group_backend="gloo")
    else:
        strategy = "auto"
    samples, share = _samples(rank, world, accumulate)
    with tempfile.TemporaryDirectory(prefix="densemtl_ddp_") as root:  # weights.png goes there, not into the cwd
        trainer = _trainer(root, world, strategy, accumulate, comm)
        trainer.fit(module, DataLoader(samples, batch_size=share, shuffle=False))
    module._trajectory.flush()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before)]).double()
    probe = torch.randn(delta.numel(), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return {
        "weights": module._trajectory.steps.double().tolist(),
        "hash": hashlib.sha256(delta.numpy().tobytes()).hexdigest(),
        "norm": float(delta.norm()),
        "probe": float(delta @ probe),
        "buckets": comm.buckets,
    }


def _trainer(root: str, world: int, strategy, accumulate: int, comm: _CommCount) -> L.Trainer:
    callbacks = [_FrozenNorm(), comm] if world > 1 else [_FrozenNorm()]
    return quiet_trainer(
        root,
        devices=world,
        strategy=strategy,
        max_steps=STEPS,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        callbacks=callbacks,
    )


def _fit_all(rank: int, world: int) -> dict:
    torch.set_num_threads(1)
    return {case: _fit(case, rank, world) for case in CASES}


def test_lightning_ddp_identical_ranks_equal_one_process_and_no_second_allreduce(gloo_ranks):
    ranks = gloo_ranks(_fit_all, world=2, timeout=300)
    for case, (args, _) in CASES.items():
        r0, r1 = ranks[0][case], ranks[1][case]
        assert r0 == r1, case  # bitwise identical weights and parameter update on both ranks
        assert len(r0["weights"]) == STEPS, case  # one weight row per optimiser step, also when accumulating
        if args["space"] == "param":
            assert r0["buckets"] == 0, case  # the reducer never ran: u is not all-reduced a second time
        else:
            assert r0["buckets"] > 0, case  # rep space: DDP's ordinary synchronised backward
        single = _fit(case, 0, 1)
        assert torch.tensor(r0["weights"]) == pytest.approx(torch.tensor(single["weights"]), rel=1e-5, abs=1e-7), case
        assert r0["norm"] == pytest.approx(single["norm"], rel=1e-5), case
        assert r0["probe"] == pytest.approx(single["probe"], abs=1e-5 * single["norm"]), case
        assert r0["norm"] > 0


def _rank_dependent(rank: int, world: int) -> dict:
    from densemtl.weighting.ddp_sync import check_same_on_all_ranks

    check_same_on_all_ranks(torch.tensor([0.5, 0.25]), "equal weights")
    try:
        check_same_on_all_ranks(torch.tensor([0.5, 0.25 + rank * 1e-7]), "weights")
    except RuntimeError as error:
        return {"error": str(error)}
    return {"error": None}


def test_the_rank_weight_check_names_the_ranks_that_differ(gloo_ranks):
    ranks = gloo_ranks(_rank_dependent, world=2, timeout=120)
    for result in ranks:
        assert result["error"] is not None and "weights differ across DDP ranks" in result["error"]
        assert "rank 0: [0.5, 0.25]; rank 1: [0.5, 0.2500000" in result["error"]
