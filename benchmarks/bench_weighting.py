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

Gradient methods (``spec/weighting.md`` §4.3) are timed the same way, per space (``mgda@rep``,
``mgda@param``, ...), against the targets: rep space within 1.2x EW, param space within (1 + 2T)/3 x EW. A
third table compares each method with the peers' implementations of the same rule, LibMTL 1.1.5 and
torchjd 0.18 (``make bench-peers`` installs them; without them the table says "peer not installed"), on the
same model copy, inputs and seeds: the per-step time ratio (ours / peer, interleaved rounds) and the
agreement of the shared-parameter update of the first step (relative difference; 1e-5 is "same update").

``--agreement`` prints only the agreement evidence (``weighting_agreement.py``): per peer row and task set, the
update difference at the peer's default settings, at matched settings (a tighter peer stopping rule, the same
PCGrad projection orders) and in float64, each side's distance to densemtl's rule solved in fp64, and the
optimality certificates (MGDA and CAGrad Frank–Wolfe gaps, IMTL projection spread, Nash-MTL bargaining
residual) of both sides' weights. ``--smoke`` runs two of its rows at T = 3, tiny.
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
GRADIENT_METHODS = [
    "mgda@rep",
    "mgda@param",
    "pcgrad@param",
    "cagrad@rep",
    "cagrad@param",
    "imtl@rep",
    "imtl@param",
    "nash_mtl@rep",
    "nash_mtl@param",
    "aligned_mtl@rep",
    "aligned_mtl@param",
    "upgrad@rep",
    "upgrad@param",
    "gradnorm@rep",
    "gradnorm@param",
    "db_mtl@param",
]
SMOKE_AGREEMENT = {("libmtl", "pcgrad", "param"), ("torchjd", "nash_mtl", "param")}
"""The agreement rows ``--smoke`` runs (T = 3, tiny)."""
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

    def __init__(
        self, method: str, family: str, tasks, num_classes, epoch_steps: int, weighting_args: dict | None = None
    ) -> None:
        torch.manual_seed(0)
        method, _, space = method.partition("@")
        space, _, route = space.partition("_")  # "param_graph": force the per-task graph route
        args = dict(weighting_args or {})
        if space:
            args["space"] = space
        self.module = MultiTaskModule(
            tasks=tasks,
            num_classes=num_classes,
            family=family,
            arch="hps",
            arch_args={"pretrained": None},
            weighting=method,
            weighting_args=args,
            scheduler="none",
            metrics_args={"edge": {"odsf": False}} if "edge" in tasks else None,
            log_images=0,
        )
        self.module.log = self.module.log_dict = lambda *a, **k: None
        self.module.weighting.on_train_start(TrainInfo(tasks=tuple(tasks), family=family, seed=0))
        self.module.train()
        if route == "graph":
            self.module.model.independent_branches = False
        weighting = self.module.weighting
        if hasattr(weighting, "initial_losses"):  # GradNorm: time its gradient steps, not its EW epoch 0
            weighting.initial_losses.fill_(1.0)
            weighting.has_initial.fill_(True)
        self.max_norm = float(getattr(weighting, "max_norm", 0.0) or 0.0)
        self.shared = list(self.module.model.shared_parameters())
        self.optimizer = self.module.configure_optimizers()
        self.epoch_steps = epoch_steps
        self.steps = 0

    def shared_update(self, batch: dict) -> torch.Tensor:
        """The gradient written into the shared parameters for ``batch`` (no optimiser step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.module.training_step(batch, self.steps).backward()
        return torch.cat([p.grad.flatten() for p in self.shared]).detach().clone()

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.training_step(batch, self.steps).backward()
        if self.max_norm > 0:  # the engine's configure_gradient_clipping (Nash-MTL, FAMO)
            torch.nn.utils.clip_grad_norm_(self.shared, self.max_norm)
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


def compare_peer(peer: str, method: str, space: str, num_tasks: int, size, batch: int, steps: int, warmup: int) -> dict:
    """Per-step time ratio ours / peer (median over interleaved rounds) and the relative difference of the
    first step's shared update, on the same model copy and batches."""
    from weighting_peers import PEERS, UPDATE_SCALE, PeerRunner

    family, tasks, num_classes = SETUPS[num_tasks]
    args = PEERS[(peer, method, space)][1]
    ours = Runner(f"{method}@{space}", family, tasks, num_classes, 10**9, args)
    try:
        theirs = PeerRunner(peer, method, space, ours.module)
        batches = [make_batch(tasks, num_classes, batch, size, seed=i) for i in range(4)]
        a, b = ours.shared_update(batches[0]), theirs.shared_update(batches[0])
        a = a * UPDATE_SCALE.get((peer, method, space), lambda t: 1.0)(num_tasks)
        agreement = float((a - b).norm() / b.norm().clamp_min(1e-30))
        ratios = []
        for i in range(warmup + steps):
            elapsed = ours.step(batches[i % len(batches)])
            start = time.perf_counter()
            theirs.step(batches[i % len(batches)])
            if i >= warmup:
                ratios.append(elapsed / (time.perf_counter() - start))
    except Exception as exc:  # a peer that cannot run this case (e.g. LibMTL's CAGrad at T != 3)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
    return {"ratio": statistics.median(ratios), "agreement": agreement}


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
    parser.add_argument("--gradient-methods", nargs="*", default=GRADIENT_METHODS, help="method@space entries")
    parser.add_argument("--peer-steps", type=int, default=10, help="timed steps per peer comparison")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer comparison")
    parser.add_argument(
        "--agreement", action="store_true", help="only the agreement evidence against the peers (no timing)"
    )
    args = parser.parse_args(argv)
    smoke_peers = None
    if args.smoke:
        args.size, args.steps, args.warmup, args.epoch_steps = (32, 32), 2, 1, 2
        args.gradient_methods = [m for m in args.gradient_methods if m in ("mgda@rep", "mgda@param")]
        args.peer_steps = 1
        smoke_peers = {("libmtl", "imtl", "rep"), ("torchjd", "upgrad", "param")}
    if args.agreement:
        from weighting_agreement import report_agreement

        torch.set_num_threads(args.threads)
        print(
            f"HPS (tf_efficientnet_lite0, random init), {args.size[0]}x{args.size[1]}, batch {args.batch}, CPU, "
            f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f} at start"
        )
        report_agreement(
            tuple(args.size), args.batch, (3,) if args.smoke else tuple(SETUPS), SMOKE_AGREEMENT if args.smoke else None
        )
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
        return
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
    if args.gradient_methods:
        report_gradient_methods(args)
    if not args.no_peers:
        report_peers(args, smoke_peers)
        if args.smoke:  # the agreement evidence, two rows, T = 3
            from weighting_agreement import report_agreement

            report_agreement(tuple(args.size), args.batch, (3,), SMOKE_AGREEMENT)
    if hasattr(os, "getloadavg"):
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


def report_gradient_methods(args) -> None:
    methods = ["ew"] + [m for m in args.gradient_methods if m != "ew"]
    results = {
        t: bench(t, methods, tuple(args.size), args.batch, args.steps, args.warmup, args.epoch_steps) for t in SETUPS
    }
    print(f"\nGradient methods, per-step time relative to EW (load average {os.getloadavg()[0]:.2f} now):\n")
    print("| method | space | T=3 ms/step | T=3 ×EW | T=5 ms/step | T=5 ×EW | target T=3 / T=5 |")
    print("|---|---|---|---|---|---|---|")
    for m in methods[1:]:
        name, _, space = m.partition("@")
        target = "1.20 / 1.20" if space.startswith("rep") else f"{(1 + 2 * 3) / 3:.2f} / {(1 + 2 * 5) / 3:.2f}"
        r3, r5 = results[3][m], results[5][m]
        print(
            f"| {name} | {space} | {r3['ms']:.1f} | {r3['ratio']:.2f} | {r5['ms']:.1f} | {r5['ratio']:.2f} | {target} |"
        )


def report_peers(args, only=None) -> None:
    from weighting_peers import PEERS, peer_available

    print("\nAgainst peer implementations (same model copy, inputs, seeds; AdamW; first-step update agreement):\n")
    print(
        "| method | space | peer | T=3 ours/peer time | T=3 update rel. diff | T=5 ours/peer time "
        "| T=5 update rel. diff | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (peer, method, space), (peer_name, _, note) in PEERS.items():
        if only is not None and (peer, method, space) not in only:
            continue
        label = f"{'LibMTL 1.1.5' if peer == 'libmtl' else 'torchjd 0.18'} `{peer_name}`"
        if not peer_available(peer):
            print(f"| {method} | {space} | {label} | peer not installed | | | | `make bench-peers` |")
            continue
        cells = []
        for t in SETUPS:
            r = compare_peer(peer, method, space, t, tuple(args.size), args.batch, args.peer_steps, 1)
            cells += [r["error"], ""] if "error" in r else [f"{r['ratio']:.2f}", f"{r['agreement']:.1e}"]
        print(f"| {method} | {space} | {label} | {' | '.join(cells)} | {note} |")


if __name__ == "__main__":
    main()
