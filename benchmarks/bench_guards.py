"""What the training-reliability machinery costs per step, against the work it guards.

Usage::

    python benchmarks/bench_guards.py            # ResNet-50-sized parameter set (25.6 M), CPU
    python benchmarks/bench_guards.py --smoke    # tiny and quick (CI)
    python benchmarks/bench_guards.py --params 5e6 --repeats 30

Figures (median of ``--repeats`` interleaved rounds, milliseconds):

* ``NonFiniteGuard`` gradient check (:func:`densemtl.guards.all_finite` over every gradient: one L2
  ``_foreach_norm`` and one device sync) against the AdamW step on the same parameters;
* the finiteness check of a checkpoint's weights (``FiniteModelCheckpoint``/``AtomicCheckpointIO``);
* the atomic checkpoint write (temporary file, fsync, rename) against ``torch.save`` to the same folder
  without fsync (what Lightning's default writer does on a local disk);
* the per-sample reseed of the augmentation pipeline (:class:`~densemtl.data.resumable.SeededSamples`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from densemtl.checkpointing import atomic_torch_save
from densemtl.data.transforms import Compose
from densemtl.guards import all_finite


def _params(total: int) -> list[torch.nn.Parameter]:
    """Tensors shaped like a CNN's: a few large, many small, ``total`` floats in all."""
    sizes, left = [], total
    for size in (2_359_296, 1_048_576, 589_824, 262_144, 65_536, 16_384, 2048, 256):
        while left >= size and len(sizes) < 400 and sum(s == size for s in sizes) < 8:
            sizes.append(size)
            left -= size
    if left:
        sizes.append(left)
    return [torch.nn.Parameter(torch.randn(s) * 0.01) for s in sizes]


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=25.6e6, help="parameter count (default: ResNet-50's)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny and quick")
    args = parser.parse_args()
    if args.smoke:
        args.params, args.repeats = 2e5, 3
    torch.set_num_threads(args.threads)
    params = _params(int(args.params))
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    optimizer.step()  # allocate the moment buffers
    grads = [p.grad for p in params]
    state = {f"p{i}": p.detach() for i, p in enumerate(params)}
    transform = Compose([])
    keys = ("grad_check", "adamw", "weights_check", "atomic", "plain", "reseed")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(dir=".") as folder:
        target = Path(folder) / "last.ckpt"
        for _ in range(args.repeats):
            rows["grad_check"].append(_ms(lambda: all_finite(grads)))
            rows["adamw"].append(_ms(optimizer.step))
            rows["weights_check"].append(_ms(lambda: all_finite(state.values())))
            rows["atomic"].append(_ms(lambda: atomic_torch_save({"state_dict": state}, target)))
            rows["plain"].append(_ms(lambda: torch.save({"state_dict": state}, Path(folder) / "plain.ckpt")))
            rows["reseed"].append(_ms(lambda: [transform.reseed(i) for i in range(1000)]) / 1000)
    med = {k: statistics.median(v) for k, v in rows.items()}
    n = sum(p.numel() for p in params)
    print(f"## Reliability overheads ({n / 1e6:.1f} M parameters, {len(params)} tensors, {args.threads} threads)\n")
    print("| what | ms | relative to |")
    print("|---|---:|---|")
    print(f"| gradient finiteness check per step | {med['grad_check']:.2f} | AdamW step {med['adamw']:.2f} ms "
          f"({med['grad_check'] / med['adamw']:.2f}x) |")
    print(f"| weight finiteness check per checkpoint | {med['weights_check']:.2f} | |")
    print(f"| atomic checkpoint write (fsync + rename) | {med['atomic']:.1f} | torch.save without fsync "
          f"{med['plain']:.1f} ms ({med['atomic'] / med['plain']:.2f}x) |")
    print(f"| per-sample augmentation reseed | {med['reseed'] * 1e3:.1f} µs | |")


if __name__ == "__main__":
    main()
