"""Per-call cost of MGDA's, UPGrad's and CAGrad's T×T solves: host SciPy (the former per-step path) against the
on-device torch enumeration (``densemtl.weighting.simplex_qp``, ``densemtl.weighting.cagrad``).

Usage::

    python benchmarks/bench_solvers.py                  # T = 3, 5, 10 (and 12), CPU
    python benchmarks/bench_solvers.py --smoke          # quick (CI)
    python benchmarks/bench_solvers.py --device cuda    # the torch solve on a GPU (host column: K copied back)

Figures: median microseconds per call over ``--repeats`` interleaved rounds of ``--calls`` calls each, on random
Gramians of T rows in ℝ^16 (CAGrad: c = 0.4, c_abs = c‖g_0‖ + 1e-8, the host SLSQP at ftol 1e-14). The host
column includes the device-to-host copy of K that the former path made every step (free on CPU); on a GPU the
torch column is timed with a ``synchronize`` after the batch of calls, so it is the real device time,
whereas in training the call itself returns without waiting.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from densemtl.weighting.cagrad import cagrad_weights
from densemtl.weighting.simplex_qp import simplex_min_norm
from densemtl.weighting.solvers import reference_cagrad_weights, reference_min_norm_simplex
from densemtl.weighting.upgrad import reference_upgrad_weights, upgrad_weights


def _per_call_us(fn, calls: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 5, 10, 12])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="quick")
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.repeats, args.calls = [3, 5, 10], 2, 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)

    print(f"device {device}, torch threads {args.threads}; median µs per call")
    print(
        f"{'T':>3}  {'MGDA host':>10}  {'MGDA torch':>10}  {'UPGrad host':>11}  {'UPGrad torch':>12}"
        f"  {'CAGrad host':>11}  {'CAGrad torch':>12}"
    )
    for t in args.tasks:
        g = rng.normal(size=(t, 16))
        k = torch.tensor(g @ g.T, dtype=torch.float32, device=device)
        c_abs = 0.4 * torch.sqrt(k.double().mean() + 1e-8) + 1e-8  # as CAGrad computes it, on the device
        solvers = {
            "mgda_host": lambda k=k: reference_min_norm_simplex(k.double().cpu().numpy()),
            "mgda_torch": lambda k=k: simplex_min_norm(k),
            "upgrad_host": lambda k=k: reference_upgrad_weights(k.double().cpu().numpy()),
            "upgrad_torch": lambda k=k: upgrad_weights(k),
            "cagrad_host": lambda k=k, c=c_abs: reference_cagrad_weights(k.double().cpu().numpy(), float(c)),
            "cagrad_torch": lambda k=k, c=c_abs: cagrad_weights(k, c),
        }
        for fn in solvers.values():  # warm-up (mask cache, kernels)
            fn()
        times: dict[str, list[float]] = {name: [] for name in solvers}
        for _ in range(args.repeats):  # interleaved, so load changes hit every column alike
            for name, fn in solvers.items():
                times[name].append(_per_call_us(fn, args.calls, device))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(
            f"{t:>3}  {med['mgda_host']:>10.0f}  {med['mgda_torch']:>10.0f}  "
            f"{med['upgrad_host']:>11.0f}  {med['upgrad_torch']:>12.0f}"
            f"  {med['cagrad_host']:>11.0f}  {med['cagrad_torch']:>12.0f}"
        )


if __name__ == "__main__":
    main()
