"""Cost of the Python edge odsF (``densemtl.metrics.EdgeMetrics``) per image, in ms.

GT boundaries come from the real NYUv2 40-class test labels in ``../shared/data/nyudv2_mini`` (seg2bmap,
thinned); when they are missing, from a random label image. Two kinds of prediction are timed:

- ``trained``: a blurred, one-pixel-shifted copy of the GT with weak noise (a trained network's edge map);
- ``untrained``: σ of smooth noise around 0 (a network early in training: most pixels pass low thresholds,
  the worst case for thinning).

Usage: ``python benchmarks/bench_odsf.py [--smoke] [--images N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from densemtl.metrics.boundary import seg2bmap, thin
from densemtl.metrics.edge import MAX_DIST, EdgeMetrics

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyudv2_mini" / "test" / "semseg40"


def _label_images() -> list[np.ndarray]:
    files = sorted(LABELS.glob("*.png")) if LABELS.is_dir() else []
    if files:
        return [np.array(Image.open(f)) for f in files]
    rng = np.random.default_rng(0)
    return [ndimage.zoom(rng.integers(0, 8, size=(12, 16)), 40, order=0) for _ in range(4)]


def _gt(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    rows = np.arange(h) * labels.shape[0] // h
    cols = np.arange(w) * labels.shape[1] // w
    return thin(seg2bmap(labels[np.ix_(rows, cols)]))


def _prediction(gt: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W) logits."""
    if kind == "trained":
        soft = ndimage.gaussian_filter(np.roll(gt, 1, axis=1).astype(float), 1.5) * 4
        prob = np.clip(soft + 0.03 * rng.random(gt.shape), 1e-4, 1 - 1e-4)
    else:
        prob = 1 / (1 + np.exp(-ndimage.gaussian_filter(rng.normal(size=gt.shape), 3) * 3))
    return np.log(prob / (1 - prob))


def bench(size: tuple[int, int], kind: str, images: int, thresholds: int | str) -> float:
    """Mean ms per image of ``EdgeMetrics.update`` (NYUD tolerance): wall time and this process's CPU time
    (the CPU figure is the steadier one on a shared machine). Returns the CPU ms."""
    rng = np.random.default_rng(0)
    labels = _label_images()
    metric = EdgeMetrics(max_dist=MAX_DIST["nyud"], thresholds=thresholds)
    total, cpu = 0.0, 0.0
    for i in range(images):
        gt = _gt(labels[i % len(labels)], size)
        logits = torch.from_numpy(_prediction(gt, kind, rng)).float()[None, None]
        target = torch.from_numpy(gt.astype(np.float32))[None, None]
        start, start_cpu = time.perf_counter(), time.process_time()
        metric.update(logits, target)
        total += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    odsf = float(metric.compute()["odsf"])
    print(
        f"{size[0]}x{size[1]:<4} {kind:<9} thresholds={thresholds!s:<4} "
        f"wall {1000 * total / images:7.1f} ms/image  cpu {1000 * cpu / images:7.1f} ms/image  odsF={odsf:.2f}"
    )
    return 1000 * cpu / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny image, for CI")
    parser.add_argument("--images", type=int, default=3, help="images per configuration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.smoke:
        bench((60, 80), "trained", 1, 99)
        return
    for size in ((240, 320), (480, 640)):
        for kind in ("trained", "untrained"):
            bench(size, kind, args.images, 99)
    bench((480, 640), "trained", args.images, "hed")


if __name__ == "__main__":
    main()
