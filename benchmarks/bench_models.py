"""Parameter counts and CPU forward / forward+backward time per batch of the registered baselines.

Usage::

    python benchmarks/bench_models.py                 # stl, hps; tf_efficientnet_lite0; 240x320; batch 2
    python benchmarks/bench_models.py --smoke         # tiny and quick (CI)
    python benchmarks/bench_models.py --models hps --size 480 640 --threads 2

Prints a Markdown table: parameters (total, shared, task-specific), and the median wall time of a forward pass
(train mode, no_grad) and of a forward + backward of a sum of per-task losses.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from densemtl.models import MODELS, MultiTaskModel

TASKS = ["semseg", "depth", "normals"]
NUM_CLASSES = {"semseg": 40}


def _median_time(fn: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _millions(params) -> float:
    return sum(p.numel() for p in params) / 1e6


def bench_model(model: MultiTaskModel, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Parameter counts (millions) and median seconds of forward and forward+backward on ``images``."""
    model.train()

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        out = model(images)
        sum(p.float().square().mean() for p in out.preds.values()).backward()

    return {
        "params": _millions(model.parameters()),
        "shared": _millions(model.shared_parameters()),
        "specific": sum(_millions(model.task_parameters(t)) for t in model.tasks),
        "fwd": _median_time(forward, repeats),
        "fwd_bwd": _median_time(forward_backward, repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stl", "hps"], help=f"of {MODELS.names()}")
    parser.add_argument("--encoder", default="tf_efficientnet_lite0")
    parser.add_argument("--size", nargs=2, type=int, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help="64x64, batch 2, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.repeats = [64, 64], 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, *args.size)
    print(
        f"encoder {args.encoder}, tasks {TASKS} (semseg {NUM_CLASSES['semseg']} classes), input "
        f"{args.batch}x3x{args.size[0]}x{args.size[1]}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| model | params (M) | shared (M) | task-specific (M) | forward (s) | forward+backward (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = MODELS.get(name)(tasks=TASKS, num_classes=NUM_CLASSES, encoder=args.encoder)
        r = bench_model(model, images, args.repeats)
        print(
            f"| {name} | {r['params']:.2f} | {r['shared']:.2f} | {r['specific']:.2f} | {r['fwd']:.3f} "
            f"| {r['fwd_bwd']:.3f} |"
        )


if __name__ == "__main__":
    main()
