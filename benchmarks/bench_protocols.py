"""Speed of the protocol hot paths on the 8 real NYUv2 test frames at 480x640 (issue 9's three rows).

* ``normals metric``: :class:`~densemtl.metrics.normals.NormalsMetrics` ``update`` per image (pooled, the
  default), on GT normals derived from the real depth and a prediction that is the GT plus noise;
* ``depth metrics``: :class:`~densemtl.metrics.depth.DepthMetrics` ``update`` per image (pooled, ``nonzero``),
  on the real depth (holes punched) and a noisy prediction;
* ``mtinet preset``: the ``nyud-mt`` reader plus the ``mtinet`` train transform up to the loaders' compact
  encoding (what a DataLoader worker does), per sample, on the frames written in the MTI-Net ``NYUD_MT``
  layout (jpg, npy depth/normals/edge, png labels).

One torch thread; each figure is CPU milliseconds of the process per call (see :func:`per_call`). The
metrics run in one process with the main process's memory settings, the preset in another with those of a
loader worker (glibc keeps freed buffers, ``keep_freed_memory``).
``--baseline DIR`` measures another checkout the same way (``DIR/src`` first on ``PYTHONPATH``, e.g. a
``git worktree`` of an older commit) in a subprocess; the two are run alternately ``--rounds`` times and
the smallest figure of each is kept, which cancels most of the noise of a shared machine. A checksum of
each path's results shows whether the values are identical.

Usage: ``python benchmarks/bench_protocols.py [--seconds 5] [--baseline DIR] [--smoke]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REAL_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyudv2_mini"


def frames(smoke: bool) -> list[dict[str, np.ndarray]]:
    """The 8 real labelled test frames (or 2 synthetic 120x160 ones in smoke mode / without ``../shared``)."""
    from densemtl.data.convert import label_boundaries, normals_from_depth
    from densemtl.data.imageio import read_gray, read_rgb

    out = []
    if smoke or not REAL_FRAMES.is_dir():
        rng = np.random.default_rng(0)
        for _ in range(2):
            depth = rng.uniform(1, 5, (120, 160)).astype(np.float32)
            semseg = rng.integers(0, 40, (120, 160))
            out.append(
                {
                    "image": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
                    "semseg": semseg,
                    "depth": depth,
                    "normals": normals_from_depth(depth),
                    "edge": label_boundaries(semseg),
                }
            )
        return out
    for rgb in sorted((REAL_FRAMES / "test" / "rgb").glob("*.png")):
        depth = read_gray(REAL_FRAMES / "test" / "depth" / rgb.name).astype(np.float32) / 1000.0
        semseg = read_gray(REAL_FRAMES / "test" / "semseg40" / rgb.name).astype(np.int64) - 1
        semseg[semseg < 0] = 255
        out.append(
            {
                "image": read_rgb(rgb),
                "semseg": semseg,
                "depth": depth,
                "normals": normals_from_depth(depth),
                "edge": label_boundaries(semseg),
            }
        )
    return out


def per_call(fn, items: list, seconds: float) -> float:
    """Mean CPU milliseconds of this process per ``fn(item)``, cycling over ``items`` for about ``seconds``.

    CPU time rather than wall clock: with one torch thread it is the work done, and it is far less
    sensitive than the wall clock to other processes on a shared machine.
    """
    for item in items:
        fn(item)  # warm-up
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while calls < len(items) or time.perf_counter() - start < seconds:
        fn(items[calls % len(items)])
        calls += 1
    return 1000.0 * (time.process_time() - cpu) / calls


def measure_metrics(seconds: float, smoke: bool) -> dict[str, float]:
    """ms per image of the normals and depth metrics (main-process memory settings) and checksums."""
    from densemtl.metrics.depth import DepthMetrics
    from densemtl.metrics.normals import NormalsMetrics

    rng = np.random.default_rng(1)
    data = frames(smoke)
    normals = []
    for f in data:
        gt = torch.from_numpy(np.ascontiguousarray(f["normals"].transpose(2, 0, 1)))[None].float()
        normals.append((gt + 0.2 * torch.from_numpy(rng.normal(size=gt.shape)).float(), gt))
    depths = []
    for f in data:
        gt = torch.from_numpy(f["depth"])[None, None].clone()
        gt[..., :20, :] = 0  # invalid border rows, as Kinect frames have
        pred = gt * torch.from_numpy(rng.uniform(0.8, 1.2, gt.shape)).float() - 0.05
        depths.append((pred, gt))
    return {
        **_metric_figures("normals", NormalsMetrics(), normals, seconds),
        **_metric_figures("depth", DepthMetrics(), depths, seconds),
    }


def _metric_figures(name: str, metric, pairs: list, seconds: float) -> dict[str, float]:
    """``<name>_ms`` per ``update`` and ``<name>_check``, the sum of the values computed over ``pairs``."""
    ms = per_call(lambda pg: metric.update(*pg), pairs, seconds)
    metric.reset()
    for pg in pairs:
        metric.update(*pg)
    return {f"{name}_ms": ms, f"{name}_check": float(sum(v for v in metric.compute().values()))}


def measure_preset(seconds: float, smoke: bool) -> dict[str, float]:
    """ms per sample of the ``nyud-mt`` reader + ``mtinet`` train transform as a loader worker runs them
    (glibc keeping freed buffers, as ``seed_worker`` sets), and a checksum."""
    from densemtl.data.datamodule import keep_freed_memory
    from densemtl.data.nyud import NYUDMT, write_nyud_mt_sample, write_split
    from densemtl.data.transforms import build_transform, split_contract

    keep_freed_memory()
    data = frames(smoke)
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{i:04d}" for i in range(len(data))]
        for name, f in zip(names, data):
            write_nyud_mt_sample(tmp, name, **f)
        write_split(tmp, "train", names)
        params = inspect.signature(NYUDMT).parameters
        compact = {k: True for k in ("normals_png8", "uint8_labels") if k in params}  # as the loaders read
        reader = NYUDMT(tmp, split="train", tasks=["semseg", "depth", "normals", "edge"], **compact)
        worker, _ = split_contract(build_transform("mtinet", True, "nyud"))
        gen = torch.Generator().manual_seed(0)
        ms = per_call(lambda i: worker(reader[i], gen), list(range(len(reader))), seconds)
        gen.manual_seed(0)
        check = {"mtinet_check": 0.0, "mtinet_normals_check": 0.0}
        for i in range(len(reader)):
            s = worker(reader[i], gen)
            for key, value in s.items():
                if key != "meta":
                    check["mtinet_normals_check" if key == "normals" else "mtinet_check"] += float(value.double().sum())
    return {"mtinet_ms": ms, **check}


def _child(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The smallest time of each path over runs (checksums from the first run that has them)."""
    keys = dict.fromkeys(k for r in runs for k in r)
    return {
        k: (min(r[k] for r in runs if k in r) if k.endswith("_ms") else next(r[k] for r in runs if k in r))
        for k in keys
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per figure")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same way")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    parser.add_argument("--json", choices=("metrics", "preset"), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic frames, 0.2 s per figure")
    args = parser.parse_args()
    seconds = 0.2 if args.smoke else args.seconds
    if args.json:
        torch.set_num_threads(1)
        measure = measure_metrics if args.json == "metrics" else measure_preset
        print(json.dumps(measure(seconds, args.smoke)))
        return
    here = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    runs: dict[str, list[dict[str, float]]] = {"now": [], "base": []}
    for _ in range(args.rounds if args.baseline else 1):
        for part in ("metrics", "preset"):  # separate processes: the preset's memory setting is process-wide
            cmd = [sys.executable, __file__, "--json", part, "--seconds", str(seconds)]
            cmd += ["--smoke"] if args.smoke else []
            runs["now"].append(_child(cmd, here))
            if args.baseline is not None:
                env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve() / "src")}
                runs["base"].append(_child(cmd, env))
    now = _best(runs["now"])
    base = _best(runs["base"]) if runs["base"] else None
    print(f"load average {os.getloadavg()[0]:.2f}; 1 torch thread; CPU ms per image (per sample for the preset)")
    print(f"{'path':<34}{'this checkout':>16}" + (f"{'baseline':>12}{'speed-up':>10}" if base else ""))
    for key, label in (
        ("normals_ms", "normals metric (update)"),
        ("depth_ms", "depth metrics (update)"),
        ("mtinet_ms", "mtinet preset (reader + worker)"),
    ):
        row = f"{label:<34}{now[key]:>16.2f}"
        if base:
            row += f"{base[key]:>12.2f}{base[key] / now[key]:>9.2f}x"
        print(row)
    # the mtinet normals are re-normalised with a per-channel length instead of Tensor.norm: float32
    # components may differ by 1 ulp (6e-8); every other value is identical
    for key in ("normals_check", "depth_check", "mtinet_check", "mtinet_normals_check"):
        if key not in now:
            continue
        same = (
            ""
            if not base or key not in base
            else ("  (identical)" if base[key] == now[key] else f"  differs: baseline {base[key]!r}")
        )
        print(f"checksum {key[:-6]}: {now[key]!r}{same}")


if __name__ == "__main__":
    main()
