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

``--reference`` prints instead the ground-truth coherence of the real NYUv2 frames in ``../shared/data``
(the reference level of real data: raw sensor depth and labels are not coherent with each other) next to
synth-nyud frames rendered at the same 480×640 size.

Usage: ``python benchmarks/bench_coherence.py [--smoke] [--images N] [--size HxW ...] [--repeats R] [--reference]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from densemtl.data.synthetic.generate import image_rng
from densemtl.data.synthetic.render import boundaries
from densemtl.data.synthetic.synth_nyud import render_nyud_image
from densemtl.metrics.camera import frame_camera
from densemtl.metrics.coherence import (
    BoundaryAgreement,
    CoherenceMetrics,
    DepthNormalConsistency,
    FloorWallAgreement,
    floor_wall_ids,
    normals_from_depth,
)
from densemtl.metrics.collection import MultiTaskMetrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def bench(size: tuple[int, int], images: int, batch_size: int, repeats: int = 1) -> tuple[float, float]:
    """CPU seconds per image of the accuracy metrics and of the coherence metrics (the fastest of ``repeats``
    passes over the same batches, the two metric sets timed in turn, so both see the same machine load)."""
    rng = np.random.default_rng(0)
    frames = _frames(images, size)
    batches = [_batch(frames[i : i + batch_size], size, rng) for i in range(0, images, batch_size)]
    accuracy = MultiTaskMetrics(TASKS, {"semseg": CLASSES}, family="nyud")
    coherence = CoherenceMetrics(TASKS, "nyud", {"semseg": CLASSES})
    times = {"accuracy": float("inf"), "coherence": float("inf")}
    for _ in range(repeats):
        for name, metric in (("accuracy", accuracy), ("coherence", coherence)):
            metric.reset()
            start = time.process_time()
            for preds, batch in batches:
                metric.update(preds, batch)
            values = metric.compute()
            times[name] = min(times[name], (time.process_time() - start) / images)
    print(f"  coherence on predictions: {values.get('pred')}")
    return times["accuracy"], times["coherence"]


def _show(name: str, values: dict) -> None:
    print(f"  {name}: " + ", ".join(f"{k} {float(v):.2f}" for k, v in values.items()))


def reference(step: int = 3) -> None:
    """GT coherence of the real NYUv2 fixtures (``step``-pixel baseline for their mm-quantised depth)."""
    if not SHARED.is_dir():
        raise FileNotFoundError(f"--reference needs the real NYUv2 fixtures at {SHARED}")
    cam = frame_camera("nyud", (480, 640))
    root = SHARED / "nyudv2_mini" / "test"
    ids = sorted(p.stem for p in (root / "semseg40").glob("*.png"))
    mm = [np.asarray(Image.open(root / "depth" / f"{i}.png")) for i in ids]
    depth = torch.stack([torch.from_numpy(d / 1000.0)[None] for d in mm])
    raw = np.stack([np.asarray(Image.open(root / "semseg40" / f"{i}.png")).astype(np.int64) for i in ids])
    labels = torch.from_numpy(np.where(raw == 0, 255, raw - 1))
    cams = [cam] * len(ids)
    derived, _ = normals_from_depth(depth, cams, step)
    print(f"real NYUv2 labelled test frames {ids} (hole-filled depth, 40 classes; normals derived, step {step}):")
    fw = FloorWallAgreement(*floor_wall_ids("nyud", 40))
    fw.update(labels, derived)
    _show("floor_wall", fw.compute())
    ba = BoundaryAgreement(step=step)
    ba.update(labels, depth, None, cams)
    _show("boundary (semantic vs depth discontinuities)", ba.compute())
    frame = SHARED / "nyud_mtrefinenet_examples" / "000433"
    raw_depth = torch.from_numpy(np.asarray(Image.open(frame / "depth.png")) / 5000.0)[None, None]
    code = np.asarray(Image.open(frame / "normals.png")).astype(np.float64) * 2 / 255 - 1
    valid = np.abs(np.linalg.norm(code, axis=-1) - 1) < 0.05
    normals = np.stack([code[..., 0], -code[..., 2], code[..., 1]], -1) * valid[..., None]  # file: (x, z, -y)
    normals = torch.from_numpy(normals).permute(2, 0, 1)[None]
    seg = torch.from_numpy(np.asarray(Image.open(frame / "semseg40.png")).astype(np.int64))[None]
    print("real frame 000433 (raw Kinect depth with holes, its released normals, 40 classes):")
    for s in (1, step):
        dn = DepthNormalConsistency(step=s)
        dn.update(normals, raw_depth, [cam])
        _show(f"depth_normal (step {s})", dn.compute())
    fw = FloorWallAgreement(*floor_wall_ids("nyud", 40))
    fw.update(seg, normals)
    _show("floor_wall (released normals)", fw.compute())
    print("synth-nyud ground truth at 480x640 (4 frames, float normals):")
    frames = _frames(4, (480, 640))
    _, batch = _batch(frames, (480, 640), np.random.default_rng(0))
    metrics = CoherenceMetrics(["semseg", "depth", "normals"], "nyud", {"semseg": CLASSES}, sources=["gt"])
    metrics.update({"depth": batch["depth"]}, batch)
    for family, values in metrics.compute()["gt"].items():
        _show(family, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 small frames, a few seconds")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the batches; the fastest is kept")
    parser.add_argument("--size", nargs="*", default=["120x160", "240x320"], help="frame sizes HxW")
    parser.add_argument("--reference", action="store_true", help="GT coherence of the real NYUv2 fixtures")
    args = parser.parse_args()
    if args.reference:
        reference()
        return
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.size]
    images, repeats = args.images, args.repeats
    if args.smoke:
        sizes, images, repeats = [(48, 64)], 2, 1
    torch.set_num_threads(1)
    print(f"torch threads 1; load average {os.getloadavg()[0]:.2f}; fastest of {repeats} passes")
    rows = []
    for size in sizes:
        print(f"{size[0]}x{size[1]}, {images} frames")
        acc, coh = bench(size, images, args.batch_size, repeats)
        rows.append((size, acc, coh))
    print()
    print("| frame | accuracy metrics (ms / image) | coherence, pred + GT (ms / image) | ratio |")
    print("|---|---|---|---|")
    for (h, w), acc, coh in rows:
        print(f"| {h}×{w} | {1000 * acc:.1f} | {1000 * coh:.1f} | {100 * coh / acc:.1f} % |")


if __name__ == "__main__":
    main()
