"""Speed of the synthetic generators, the real-NYUv2 reference statistics, and the sample pictures.

* speed (default): generates ``--images`` synth-nyud images at 240x320 with ``--workers`` processes
  (default 1) into a temporary folder and prints images/s, with the render-only rate beside it; then the
  same for synth-pascal.
* ``--real-stats``: the real NYUv2 statistics embedded in ``densemtl.data.synthetic.card`` (depth,
  brightness, class fractions), recomputed from ``../shared/data/nyudv2_mini``.
* ``--grid``: writes ``benchmarks/results/synth_{nyud,pascal}_grid.png`` (a few samples, every task
  coloured with ``densemtl.viz.grid``), read back through the registered readers.

Usage: ``python benchmarks/bench_synthetic.py [--images 40] [--workers 1] [--real-stats] [--grid] [--smoke]``.
"""

from __future__ import annotations

import argparse
import io
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


def speed(images: int, workers: int, size: tuple[int, int]) -> None:
    """Print images/s of rendering alone and of full generation (rendering + writing files)."""
    for name, gen, render in (
        ("synth-nyud", generate_synth_nyud, lambda i: render_nyud_image(image_rng(0, "train", i), size)),
        ("synth-pascal", generate_synth_pascal, lambda i: render_pascal_image(image_rng(0, "train", i), size)),
    ):
        render(10_000)  # warm-up
        t = time.process_time()
        for i in range(images):
            render(i)
        render_rate = images / max(time.process_time() - t, 1e-9)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            gen(Path(tmp) / "d", train=images, val=0, size=size, workers=workers)
            rate = images / (time.perf_counter() - t)
        print(
            f"{name}: {size[0]}x{size[1]}, {images} images, {workers} worker(s): {rate:.1f} images/s generated "
            f"(render + write, wall clock); rendering alone {render_rate:.1f} images/s per core (CPU time)"
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
    parser.add_argument("--workers", type=int, default=1)
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
        speed(4, 1, (60, 80))
    elif not (args.real_stats or args.grid):
        speed(args.images, args.workers, size)


if __name__ == "__main__":
    main()
