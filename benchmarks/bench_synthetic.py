"""Speed of the synthetic generators, the real-NYUv2 reference statistics, and the sample pictures.

* speed (default): renders ``--images`` synth-nyud images at 240x320 in this process (CPU ms per image),
  then generates them (render + write files) with each ``--workers`` count (default ``1 2``) into a
  temporary folder and prints wall-clock images/s and images/s per core from CPU time (this process and
  its worker processes, user + system), with the load average (the machine may be shared: CPU time is the
  figure that does not depend on the other load); then the same for synth-pascal.
* ``--real-stats``: the real NYUv2 statistics embedded in ``densemtl.data.synthetic.card`` (depth,
  brightness, class fractions), recomputed from ``../shared/data/nyudv2_mini``.
* ``--grid``: writes ``benchmarks/results/synth_{nyud,pascal}_grid.png`` (a few samples, every task
  coloured with ``densemtl.viz.grid``), read back through the registered readers.

Usage: ``python benchmarks/bench_synthetic.py [--images 40] [--workers 1 2] [--real-stats] [--grid] [--smoke]``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from densemtl.data import DATASETS
from densemtl.data.synthetic import generate_synth_nyud, generate_synth_pascal
from densemtl.data.synthetic.generate import image_rng
from densemtl.data.synthetic.synth_nyud import render_nyud_image
from densemtl.data.synthetic.synth_pascal import render_pascal_image

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "nyudv2_mini"
RESULTS = ROOT / "benchmarks" / "results"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def speed(images: int, workers: list[int], size: tuple[int, int]) -> None:
    """Print the CPU time of rendering alone and the rates of full generation (rendering + writing files)."""
    for name, gen, render in (
        ("synth-nyud", generate_synth_nyud, lambda i: render_nyud_image(image_rng(0, "train", i), size)),
        ("synth-pascal", generate_synth_pascal, lambda i: render_pascal_image(image_rng(0, "train", i), size)),
    ):
        render(10_000)  # warm-up
        t = time.process_time()
        for i in range(images):
            render(i)
        render_ms = 1000 * (time.process_time() - t) / images
        print(f"{name} {size[0]}x{size[1]}: rendering alone {render_ms:.1f} ms CPU per image ({images} images)")
        for k in workers:
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()[0]
                cpu, wall = _cpu_seconds(), time.perf_counter()
                gen(Path(tmp) / "d", train=images, val=0, size=size, workers=k)
                wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
            print(
                f"  generate, {k} worker(s): {images / wall:.1f} images/s wall clock, {1000 * cpu / images:.1f} ms "
                f"CPU per image = {images / cpu:.1f} images/s per core (load average {load:.2f} before)"
            )


def real_stats() -> None:
    """Print the real NYUv2 statistics of ../shared/data/nyudv2_mini (the constants of card.py)."""
    if not REAL.is_dir():
        raise FileNotFoundError(f"real NYUv2 fixtures not found at {REAL}")
    depths, rgbs = [], []
    for split in ("test", "train"):
        for f in sorted((REAL / split / "depth").glob("*.png")):
            depths.append(np.asarray(Image.open(f), dtype=np.float64) / 1000.0)
            rgbs.append(np.asarray(Image.open(REAL / split / "rgb" / f.name).convert("RGB"), dtype=np.float64) / 255)
    d = np.stack(depths)
    print(
        f"depth over {len(depths)} frames: min {d.min():.3f} max {d.max():.3f} mean {d.mean():.3f} "
        f"median {np.median(d):.3f} p5 {np.percentile(d, 5):.3f} p95 {np.percentile(d, 95):.3f}"
    )
    print(f"brightness (mean RGB in [0, 1]): {np.mean([r.mean() for r in rgbs]):.3f}")
    counts = np.zeros(14, dtype=np.int64)
    with tarfile.open(REAL / "meta" / "nyuv2_test_class13_labels_all654.tgz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                labels = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())))
                counts += np.bincount(labels.ravel(), minlength=14)[:14]
    names = [line.split("\t")[1].strip() for line in (REAL / "meta" / "class13_names.txt").read_text().splitlines()]
    print(f"void fraction: {counts[0] / counts.sum():.3f}; class fractions of labelled pixels:")
    for name, c in zip(names, counts[1:]):
        print(f"  {name}: {c / counts[1:].sum():.4f}")


def pictures(size: tuple[int, int], n: int) -> None:
    """Write a grid of ``n`` generated samples per dataset, read back through the registered readers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, gen in (("synth-nyud", generate_synth_nyud), ("synth-pascal", generate_synth_pascal)):
            root = gen(Path(tmp) / name, train=n, val=0, size=size, seed=1)
            ds = DATASETS.get(name)(root, "train")
            rows = [ds.plot(ds[i]) for i in range(n)]
            width = max(r.shape[1] for r in rows)
            rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
            out = RESULTS / f"{name.replace('-', '_')}_grid.png"
            Image.fromarray(np.concatenate(rows, axis=0)).save(out)
            print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--size", type=str, default="240x320")
    parser.add_argument("--real-stats", action="store_true")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="4 tiny images, quick")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.real_stats:
        real_stats()
    if args.grid:
        pictures(size, 4)
    if args.smoke:
        speed(4, [1], (60, 80))
    elif not (args.real_stats or args.grid):
        speed(args.images, args.workers, size)


if __name__ == "__main__":
    main()
