"""CTAL block forward+backward on the CPU: the exact linear-memory form against the published direct form.

Usage::

    python benchmarks/bench_ctal.py            # NYUv2 grid 72x96 (P = 6,912), N = 3, C = 128, C_in = 270, batch 2
    python benchmarks/bench_ctal.py --smoke    # tiny and quick (CI)
    python benchmarks/bench_ctal.py --grid 36 48 --part core --threads 2
    python benchmarks/bench_ctal.py --recompute-out off   # both forms storing conv_out's activations

Every measurement runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is its own:

- ``none``: the same script building the same module and inputs, without running it (the baseline);
- ``direct`` / ``linear``: one warm-up and ``--repeats`` timed forward+backward passes.

"Peak memory attributable" is the process peak minus the baseline's peak. The backward pass is driven by fixed upstream
gradients built with the inputs (part of the baseline), as for any layer benchmark, so no loss keeps the outputs alive.
Workers run with glibc's mmap threshold pinned at 128 KiB (``MALLOC_MMAP_THRESHOLD_``): by default glibc raises it
after the first large free, then serves later activation buffers from the heap and keeps them resident after they are
freed, so peak RSS measures the allocator's retention rather than live tensors. ``--default-malloc`` measures with
glibc's default instead (the README reports both). ``--part block`` measures the whole
:class:`~densemtl.models.ctal.CTALBlock` (conv_in, value convs, affinity, conv_out), ``--part core`` the
affinity core alone (normalisation, grouped-conv fusion, diffusion). The largest grid each form fits in 8 GB
is *estimated* from the attributable peaks at two grids (the given one and half its side): a P² + P model for
the direct form, a linear model for the linear form, at the given aspect ratio and batch (not in ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

GIB = 2**30
RECOMPUTE = {"auto": None, "on": True, "off": False}


def _worker(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from densemtl.models.ctal import CrossTaskAffinity, CTALBlock

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.grid
    n, c, b = args.tasks, args.channels, args.batch
    impl = "linear" if args.impl == "none" else args.impl
    if args.part == "block":
        recompute = RECOMPUTE[args.recompute_out]
        module = CTALBlock(n, args.in_channels, (h, w), channels=c, impl=impl, recompute_out=recompute)
        inputs = [torch.randn(b, args.in_channels, h, w, requires_grad=True) for _ in range(n)]
        upstream = [torch.randn(b, c, 2 * h, 2 * w) for _ in range(n)]

        def step() -> None:
            torch.autograd.backward(module(inputs), upstream)

    else:
        module = CrossTaskAffinity(n, c, (h, w), impl=impl)
        feats = torch.randn(b, n, c, h, w, requires_grad=True)
        values = torch.randn(b, n, c, h, w, requires_grad=True)
        upstream = [torch.randn(b, c, h, w) for _ in range(n)]

        def step() -> None:
            torch.autograd.backward(module(feats, values.unbind(1)), upstream)

    times = []
    if args.impl != "none":
        for i in range(1 + args.repeats):
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step()
            if i:
                times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": statistics.median(times) if times else 0.0, "peak_bytes": peak_kib * 1024.0}


def _measure(args: argparse.Namespace, impl: str, grid: tuple[int, int]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--grid", str(grid[0]), str(grid[1])]
    for key in ("tasks", "channels", "in_channels", "batch", "threads", "repeats", "part"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--recompute-out", args.recompute_out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _largest_grid(points: list[tuple[int, float]], quadratic: bool, aspect: float, budget: float) -> tuple[int, int]:
    """Solve the fitted memory model m(P) = budget for P; return (H, W) with W / H = aspect."""
    (p1, m1), (p2, m2) = points
    if quadratic:  # m = a P² + c P
        det = p1 * p1 * p2 - p2 * p2 * p1
        a = (m1 * p2 - m2 * p1) / det
        c = (p1 * p1 * m2 - p2 * p2 * m1) / det
        p = (-c + math.sqrt(c * c + 4 * a * budget)) / (2 * a) if a > 0 else budget / max(c, 1e-9)
    else:  # m = a P + c0
        a = (m2 - m1) / (p2 - p1)
        c0 = m1 - a * p1
        p = (budget - c0) / a if a > 0 else float("inf")
    h = int(math.sqrt(p / aspect))
    return h, int(h * aspect)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--grid", type=int, nargs=2, default=(72, 96), metavar=("H", "W"))
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--in-channels", type=int, default=270)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after one warm-up")
    parser.add_argument("--part", choices=("block", "core"), default="block")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument(
        "--recompute-out", choices=tuple(RECOMPUTE), default="auto",
        help="the block's recompute_out: auto (its default: with the linear form only), on or off for both forms",
    )
    parser.add_argument("--default-malloc", action="store_true", help="glibc's default (dynamic) mmap threshold")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("none", "direct", "linear"), default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.smoke:
        args.grid, args.channels, args.in_channels, args.batch, args.repeats = (12, 16), 16, 24, 1, 1
    grid = tuple(args.grid)
    half = (max(1, grid[0] // 2), max(1, grid[1] // 2))
    grids = (grid,) if args.smoke else (grid, half)
    print(
        f"# CTAL {args.part} forward+backward, CPU, {args.threads} threads: N={args.tasks}, C={args.channels}, "
        f"C_in={args.in_channels}, batch {args.batch}{', recompute_out ' + args.recompute_out}; "
        f"{'glibc default malloc' if args.default_malloc else 'MALLOC_MMAP_THRESHOLD_=128KiB'}; "
        f"load average {os.getloadavg()}"
    )
    rows, attributable = {}, {}
    for g in grids:
        base = _measure(args, "none", g)
        for impl in ("direct", "linear"):
            r = _measure(args, impl, g)
            rows[(impl, g)] = r
            attributable[(impl, g)] = max(r["peak_bytes"] - base["peak_bytes"], 0.0)
        rows[("none", g)] = base
    print("| grid | P | impl | s / fwd+bwd | process peak | peak attributable to the block |")
    print("|---|---|---|---|---|---|")
    for g in grids:
        for impl in ("direct", "linear"):
            r = rows[(impl, g)]
            print(
                f"| {g[0]}x{g[1]} | {g[0] * g[1]} | {impl} | {r['seconds']:.3f} | {r['peak_bytes'] / GIB:.3f} GiB | "
                f"{attributable[(impl, g)] / 2**20:.0f} MiB |"
            )
    d, li = rows[("direct", grid)], rows[("linear", grid)]
    mem_ratio = attributable[("direct", grid)] / max(attributable[("linear", grid)], 1.0)
    print(f"\nlinear vs direct at {grid[0]}x{grid[1]}: {d['seconds'] / li['seconds']:.2f}x faster, "
          f"{mem_ratio:.1f}x less attributable peak memory")
    aspect = grid[1] / grid[0]
    budget = args.budget_gib * GIB
    for impl, quadratic in (("direct", True), ("linear", False)) if not args.smoke else ():
        pts = [(g[0] * g[1], attributable[(impl, g)]) for g in (half, grid)]
        h, w = _largest_grid(pts, quadratic, aspect, budget)
        print(f"largest grid in {args.budget_gib:g} GiB ({impl}, batch {args.batch}, estimated from the two grids): "
              f"about {h}x{w} (P = {h * w})")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
