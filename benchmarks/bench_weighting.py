"""Per-step training time of every loss-based weighting method relative to EW (``spec/weighting.md`` §4.3).

Usage::

    python benchmarks/bench_weighting.py            # HPS, 3 and 5 tasks, 128x160, batch 2, 20 timed steps
    python benchmarks/bench_weighting.py --smoke    # tiny and quick (CI)
    python benchmarks/bench_weighting.py --size 240 320 --steps 30 --threads 2

One step is the engine's own path: ``training_step`` (forward, criterion, weighting objective, epoch
statistics), backward, optimiser step and ``on_train_batch_end`` (FAMO's post-step forward), with
``on_train_epoch_end`` every ``--epoch-steps`` steps. Every method starts from the same initial model
(seed 0) and sees the same batches. Methods are timed in interleaved rounds (one step of each per
round) and the reported ratio is the median over rounds of (method step time / EW step time in the
same round), which cancels most of the drift of a shared machine. A second table gives each method's
own per-step work on scalar losses (no model), which is what it adds to EW's step. Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from densemtl.engine import MultiTaskModule
from densemtl.tasks import get_task
from densemtl.weighting import TrainInfo

METHODS = ["ew", "lps", "uw", "dwa", "dtp", "gls", "rlw", "si", "famo"]
SETUPS = {
    3: ("nyud", ["semseg", "depth", "normals"], {"semseg": 40}),
    5: ("pascal", ["semseg", "human_parts", "normals", "sal", "edge"], {"semseg": 21, "human_parts": 7}),
}


def make_batch(tasks, num_classes, batch: int, size: tuple[int, int], seed: int) -> dict:
    """Random inputs and valid targets for ``tasks`` in the sample contract."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = {"image": torch.randn(batch, 3, h, w, generator=g)}
    for t in tasks:
        kind = get_task(t).kind
        if kind == "segmentation":
            out[t] = torch.randint(0, num_classes[t], (batch, h, w), generator=g)
        elif kind == "depth":
            out[t] = torch.rand(batch, 1, h, w, generator=g) * 5 + 0.5
        elif kind == "normals":
            out[t] = torch.nn.functional.normalize(torch.randn(batch, 3, h, w, generator=g), dim=1)
        else:
            out[t] = (torch.rand(batch, 1, h, w, generator=g) < 0.3).float()
    return out


class Runner:
    """One method's module, optimiser and step counter."""

    def __init__(self, method: str, family: str, tasks, num_classes, epoch_steps: int) -> None:
        torch.manual_seed(0)
        self.module = MultiTaskModule(
            tasks=tasks,
            num_classes=num_classes,
            family=family,
            arch="hps",
            arch_args={"pretrained": None},
            weighting=method,
            scheduler="none",
            metrics_args={"edge": {"odsf": False}} if "edge" in tasks else None,
            log_images=0,
        )
        self.module.log = self.module.log_dict = lambda *a, **k: None
        self.module.weighting.on_train_start(TrainInfo(tasks=tuple(tasks), family=family, seed=0))
        self.module.train()
        self.optimizer = self.module.configure_optimizers()
        self.epoch_steps = epoch_steps
        self.steps = 0

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.training_step(batch, self.steps).backward()
        self.optimizer.step()
        self.module.on_train_batch_end(None, batch, self.steps)
        self.steps += 1
        if self.steps % self.epoch_steps == 0:
            self.module.on_train_epoch_end()
        return time.perf_counter() - start


def bench(num_tasks: int, methods, size, batch: int, steps: int, warmup: int, epoch_steps: int) -> dict:
    family, tasks, num_classes = SETUPS[num_tasks]
    runners = {m: Runner(m, family, tasks, num_classes, epoch_steps) for m in methods}
    batches = [make_batch(tasks, num_classes, batch, size, seed=i) for i in range(4)]
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup + steps):
        for m in methods:
            elapsed = runners[m].step(batches[i % len(batches)])
            if i >= warmup:
                times[m].append(elapsed)
    ew = times["ew"]
    return {
        m: {
            "ms": 1000 * statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, ew)),
        }
        for m, t in times.items()
    }


def weighting_overhead_us(method: str, tasks, family: str, reps: int) -> float:
    """Median µs of the method's own per-step work on scalar losses: objective + its backward to the
    losses, statistics, accumulation and ``on_step_end`` (no model), i.e. what it adds to a step."""
    from densemtl.weighting import StepContext, StepEnd, build_weighting
    from densemtl.weighting.epoch_stats import EpochAccumulator

    weighting = build_weighting(method, tasks=tasks)
    weighting.on_train_start(TrainInfo(tasks=tuple(tasks), family=family, seed=0))
    acc = EpochAccumulator()
    post = {t: torch.tensor(0.9) for t in tasks}
    times = []
    for k in range(reps):
        main = {t: torch.tensor(1.0 + 0.1 * i, requires_grad=True) for i, t in enumerate(tasks)}
        start = time.perf_counter()
        objective, weights = weighting.objective(main, {}, StepContext(epoch=0, step=k + 1))
        objective.backward()
        acc.update({**weighting.statistics(main, {}), "loss": torch.stack([main[t].detach() for t in tasks])}, 2)
        weighting.on_step_end(StepEnd(step_taken=True, post_losses=post))
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 steps")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 160))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--epoch-steps", type=int, default=5, help="on_train_epoch_end every N steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.steps, args.warmup, args.epoch_steps = (32, 32), 2, 1, 2
    methods = ["ew"] + [m for m in args.methods if m != "ew"]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"HPS (tf_efficientnet_lite0, random init), {args.size[0]}x{args.size[1]}, batch {args.batch}, "
        f"AdamW, fp32, CPU, {args.threads} thread(s), {args.steps} timed steps after {args.warmup} warm-up, "
        f"load average {load:.2f} at start"
    )
    results = {
        t: bench(t, methods, tuple(args.size), args.batch, args.steps, args.warmup, args.epoch_steps) for t in SETUPS
    }
    print()
    print("| method | T=3 ms/step | T=3 ×EW | T=5 ms/step | T=5 ×EW |")
    print("|---|---|---|---|---|")
    for m in methods:
        r3, r5 = results[3][m], results[5][m]
        print(f"| {m} | {r3['ms']:.1f} | {r3['ratio']:.3f} | {r5['ms']:.1f} | {r5['ratio']:.3f} |")
    reps = 20 if args.smoke else 500
    print(f"\nThe methods' own work per step (scalar losses, no model; median of {reps}), µs:\n")
    print("| method | T=3 µs | T=5 µs |")
    print("|---|---|---|")
    for m in methods:
        us = [weighting_overhead_us(m, SETUPS[t][1], SETUPS[t][0], reps) for t in SETUPS]
        print(f"| {m} | {us[0]:.0f} | {us[1]:.0f} |")
    if hasattr(os, "getloadavg"):
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
