"""MT-CP on the CPU: the CFM's hw x hw attention paths, and the whole model's forward+backward.

Usage::

    python benchmarks/bench_mtcp.py            # CFM at 120x160 (hw = 19,200, 480x640 input), C = 256, batch 1
    python benchmarks/bench_mtcp.py --smoke    # tiny and quick (CI)
    python benchmarks/bench_mtcp.py --threads 1 --skip-model

Every measurement runs in its own subprocess, so that its peak resident memory (``ru_maxrss``) is its own:

- ``cfm:none``: the same script building the CFM and its inputs without running it (the baseline);
- ``cfm:<path>``: one forward+backward of :class:`~densemtl.models.mtcp.CoherenceFusion` (C = 256, two
  auxiliary tasks: q/k width 512, value width 256, batch 1) with ``attention=<path>``: ``naive`` (the
  explicit softmax(QKᵀ)V, the published module's form), ``sdpa`` (forced flash kernel on CPU, value
  zero-padded to 512) and ``blocked`` (exact query blocks of 1,024 rows);
- ``--smoke`` runs everything in one process at tiny sizes (a check that the script works; its memory
  figures are not separated per path);
- ``model:<name>``: one warm-up and one timed forward+backward of the whole MT-CP model: ``synthetic`` (the
  configs/synth-nyud/mtcp.yaml widths, batch 8 at 120x160) and ``480x640`` (the same narrow widths, batch 1 at
  the paper's NYUD resolution, hw = 19,200 in each of the three CFMs); random weights, baseline = built model.

"Attributable peak" is the process peak minus its baseline's peak. Timings depend on the machine's load: the
script prints the load average, and ratios between paths measured in the same run are the robust figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 2**20
SYNTH_WIDTHS = dict(channels=32, width=32, num_queries=16, encoder_layers=1, decoder_layers=3, feedforward=128)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def _worker(args: argparse.Namespace) -> dict[str, float]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kind, _, name = args.worker.partition(":")
    if kind == "cfm":
        from densemtl.models.mtcp import CoherenceFusion

        h, w = args.grid
        module = CoherenceFusion(args.channels, 2, attention="naive" if name == "none" else name)
        x, a1, a2 = (torch.randn(1, args.channels, h, w, requires_grad=True) for _ in range(3))

        def step() -> None:
            y, coherence = module(x, [a1, a2])
            (y.square().mean() + coherence).backward()

        repeats = 1
    else:
        from densemtl.models.mtcp import MTCP

        size, batch = ((120, 160), 8) if name in ("synthetic", "none-synthetic") else ((480, 640), 1)
        if args.smoke:
            size, batch = (64, 96), 2
        model = MTCP(["semseg", "depth", "normals"], {"semseg": 40}, pretrained=None, **SYNTH_WIDTHS)
        images = torch.randn(batch, 3, *size)

        def step() -> None:
            out = model(images)
            total = sum(p.float().square().mean() for p in out.preds.values())
            total = total + sum(p.float().square().mean() for d in out.aux.values() for p in d.values())
            (total + sum(out.losses.values())).backward()

        repeats = 0 if name.startswith("none") else 1
        if repeats:
            step()  # warm-up
            model.zero_grad(set_to_none=True)
    if name.startswith("none"):
        return {"seconds": 0.0, "peak_mib": _peak_mib()}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mib": _peak_mib()}


def _run(args: argparse.Namespace, worker: str) -> dict[str, float]:
    if args.smoke:  # one process (seconds, not minutes of imports): timings only, peaks are not separated
        args.worker = worker
        try:
            return _worker(args)
        finally:
            args.worker = None
    cmd = [sys.executable, __file__, "--worker", worker, "--threads", str(args.threads), "--grid", *map(str, args.grid),
           "--channels", str(args.channels)]
    if args.smoke:
        cmd.append("--smoke")
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--grid", type=int, nargs=2, default=None, help="CFM grid h w (default 120 160)")
    parser.add_argument("--channels", type=int, default=256, help="CFM width C (q/k width 2C)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=["naive", "sdpa", "blocked"])
    parser.add_argument("--skip-model", action="store_true", help="CFM paths only")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grid is None:
        args.grid = [12, 16] if args.smoke else [120, 160]
    if args.worker:
        print(json.dumps(_worker(args)))
        return

    h, w = args.grid
    print(f"MT-CP benchmark, CPU, {args.threads} thread(s); load average {os.getloadavg()}")
    print(f"\nCFM forward+backward, batch 1, C = {args.channels}, grid {h}x{w} (hw = {h * w:,}), "
          f"q/k width {2 * args.channels}, value width {args.channels}")
    base = _run(args, "cfm:none")
    print(f"  baseline (module and inputs built): peak {base.get('peak_mib', float('nan')):.0f} MiB")
    results = {}
    for path in args.paths:
        results[path] = r = _run(args, f"cfm:{path}")
        if "error" in r:
            print(f"  {path:8s} failed: {r['error']}")
            continue
        print(f"  {path:8s} {r['seconds']:8.2f} s   attributable peak {r['peak_mib'] - base['peak_mib']:8.0f} MiB")
    naive = results.get("naive", {})
    for path in args.paths:
        r = results[path]
        if path != "naive" and "error" not in r and "error" not in naive:
            mem = (r["peak_mib"] - base["peak_mib"]) / max(naive["peak_mib"] - base["peak_mib"], 1e-9)
            print(f"  {path} / naive: memory {100 * mem:.1f} %, time {r['seconds'] / naive['seconds']:.2f}x")
    print(f"  load average after: {os.getloadavg()}")
    if args.skip_model:
        return
    print(f"\nWhole MT-CP forward+backward (EfficientNet-Lite0 Mask2Former variant, widths {SYNTH_WIDTHS})")
    for name, label in (("synthetic", "synthetic config, batch 8 at 120x160"),
                        ("480x640", "batch 1 at 480x640 (hw = 19,200 per CFM)")):
        if args.smoke:
            label = "smoke: batch 2 at 64x96"
        model_base = _run(args, f"model:none-{name}")
        r = _run(args, f"model:{name}")
        if "error" in r or "error" in model_base:
            print(f"  {label}: failed: {r.get('error') or model_base.get('error')}")
        else:
            extra = r["peak_mib"] - model_base["peak_mib"]
            print(f"  {label}: {r['seconds']:.2f} s, attributable peak {extra:.0f} MiB "
                  f"(process peak {r['peak_mib']:.0f} MiB)")
        if args.smoke:
            break
    print(f"  load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
