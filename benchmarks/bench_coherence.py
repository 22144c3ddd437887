"""Cost of the cross-task coherence metrics against the accuracy metrics of the same test run.

A test run on synth-nyud updates two things per batch: the accuracy metrics (``MultiTaskMetrics`` with the
default protocol: mIoU, depth, normals, edge odsF over 99 thresholds, as ``densemtl test``) and the
coherence metrics (``CoherenceMetrics``: depth-normal consistency, boundary agreement, floor / wall
agreement, each on the predictions and on the ground truth). Both are timed on the same batches, so the
ratio is what coherence adds to a test run's metric time (issue 15 asks for at most 20 %).

Frames are rendered by densemtl's own generator (the demo's 120×160 and the default 240×320); the
"predictions" are the ground truth degraded the way a trained network's output is (blurred depth with
noise, normals turned by a few degrees, noisy logits, a blurred edge map), so the thinning and matching
work is realistic. Times are CPU seconds of this process (steadier than wall time on a shared machine).

Usage: ``python benchmarks/bench_coherence.py [--smoke] [--images N] [--size HxW ...]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from densemtl.data.synthetic.generate import image_rng
from densemtl.data.synthetic.render import boundaries
from densemtl.data.synthetic.synth_nyud import render_nyud_image
from densemtl.metrics.coherence import CoherenceMetrics
from densemtl.metrics.collection import MultiTaskMetrics

TASKS = ["semseg", "depth", "normals", "edge"]
CLASSES = 13


def _frames(count: int, size: tuple[int, int]) -> list:
    return [render_nyud_image(image_rng(7, "val", i), size, shadows=False) for i in range(count)]


def _batch(frames: list, size: tuple[int, int], rng: np.random.Generator) -> tuple[dict, dict]:
    """(predictions, batch) of a list of rendered frames."""
    semseg = torch.stack([torch.from_numpy(f.semseg) for f in frames])
    depth = torch.stack([torch.from_numpy(f.depth)[None] for f in frames])
    normals = torch.stack([torch.from_numpy(f.normals).permute(2, 0, 1) for f in frames])
    edge = torch.stack([torch.from_numpy(boundaries(f.instance)).float()[None] for f in frames])
    batch = {
        "image": torch.zeros(len(frames), 3, *size),
        "semseg": semseg,
        "depth": depth,
        "normals": normals,
        "edge": edge,
        "meta": [{"size": size, "valid_box": (0, 0, *size)} for _ in frames],
    }
    blur = np.stack([ndimage.gaussian_filter(f.depth, 1.5) for f in frames])[:, None]
    wobble = ndimage.gaussian_filter(rng.standard_normal(blur.shape), (0, 0, 4, 4)) * 0.3  # smooth, about ±3 %
    noisy_depth = torch.from_numpy(blur * (1 + wobble))
    def smooth_noise(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal(shape), (0, 0, 2, 2))).float()

    one_hot = F.one_hot(semseg, CLASSES).permute(0, 3, 1, 2).float()
    preds = {
        "semseg": 3 * one_hot + 4 * smooth_noise((len(frames), CLASSES, *size)),
        "depth": noisy_depth.float(),
        "normals": normals + smooth_noise(tuple(normals.shape)),
        "edge": torch.from_numpy(np.stack([ndimage.gaussian_filter(e[0].numpy(), 1.0) for e in edge])[:, None] * 8 - 3),
    }
    return preds, batch


def bench(size: tuple[int, int], images: int, batch_size: int) -> tuple[float, float]:
    """CPU seconds per image of the accuracy metrics and of the coherence metrics."""
    rng = np.random.default_rng(0)
    frames = _frames(images, size)
    batches = [_batch(frames[i : i + batch_size], size, rng) for i in range(0, images, batch_size)]
    accuracy = MultiTaskMetrics(TASKS, {"semseg": CLASSES}, family="nyud")
    coherence = CoherenceMetrics(TASKS, "nyud", {"semseg": CLASSES})
    times = {}
    for name, metric in (("accuracy", accuracy), ("coherence", coherence)):
        start = time.process_time()
        for preds, batch in batches:
            metric.update(preds, batch)
        values = metric.compute()
        times[name] = (time.process_time() - start) / images
    print(f"  coherence on predictions: {values.get('pred')}")
    return times["accuracy"], times["coherence"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 small frames, a few seconds")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", nargs="*", default=["120x160", "240x320"], help="frame sizes HxW")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.size]
    images = args.images
    if args.smoke:
        sizes, images = [(48, 64)], 2
    torch.set_num_threads(1)
    print(f"torch threads 1; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for size in sizes:
        print(f"{size[0]}x{size[1]}, {images} frames")
        acc, coh = bench(size, images, args.batch_size)
        rows.append((size, acc, coh))
    print()
    print("| frame | accuracy metrics (ms / image) | coherence, pred + GT (ms / image) | ratio |")
    print("|---|---|---|---|")
    for (h, w), acc, coh in rows:
        print(f"| {h}×{w} | {1000 * acc:.1f} | {1000 * coh:.1f} | {100 * coh / acc:.1f} % |")


if __name__ == "__main__":
    main()
