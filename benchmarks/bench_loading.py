"""Loading speed of the ``invpt`` training pipeline on an NYUD-v2 ``nyud`` (ATRC) layout at 425x560.

Writes (once) a small dataset with the ``nyud`` writer, then measures samples/s, reading from disk
included. The content is real where it can be: the 18 real NYUv2 frames of ``../shared/data/nyudv2_mini``
(RGB, dense depth, the 40-class labels of the 8 labelled frames, reused for the others), centre-cropped from
480x640 to 425x560, normals derived from the depth and label edges; real photos decode about twice as
slowly as smooth synthetic images. Without ``../shared`` (or with ``--synthetic``), textured synthetic
frames (Voronoi labels, planar depth) are written instead.

* ``read``: the reader alone (PNG/npy decoding and conversion), with the contract's float normals and
  int64/float32 labels (``dataset[i]``) and with the loaders' encoding (8-bit normal codes, uint8 labels);
* ``transform``: the ``invpt`` training preset alone, on samples held in memory: the whole pipeline (the
  sample contract) and without its last step (the compact encoding the loader workers produce; the
  photometric distortion and the normalisation run on the device);
* ``in-process``: reader + preset, one torch thread, no DataLoader: the contract, and the loader workers'
  share of the work (compact);
* ``loader, N workers``: a DataLoader (``MultiTaskDataModule``) with N workers, batch 8, after start-up;
  compact encoding (the default) and, with ``--plain``, ``compact=False`` (the contract through shared
  memory). The device-side conversion (``on_after_batch_transfer``) is not included.

Each figure is given per wall-clock second and per CPU second of the process doing the work (the
workers for a DataLoader): on a shared machine the second tells what one free core would do.

Usage: ``python benchmarks/bench_loading.py [--root DIR] [--samples 32] [--seconds 10] [--synthetic]
[--profile] [--smoke]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from densemtl.data.convert import NYU_COLOR_INTRINSICS, label_boundaries, normals_from_depth
from densemtl.data.datamodule import MultiTaskDataModule, keep_freed_memory
from densemtl.data.imageio import FAST_PNG, read_gray, read_rgb
from densemtl.data.nyud import NYUD, write_nyud_sample, write_split
from densemtl.data.transforms import build_transform, split_contract

SIZE = (425, 560)
REAL_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyudv2_mini"


def synth_frame(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> dict[str, np.ndarray]:
    """One frame: Voronoi label regions, planar depth per region, normals from depth, textured image."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    seeds = rng.uniform((0, 0), (h, w), size=(14, 2)).astype(np.float32)
    dist = (y[None] - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2
    region = dist.argmin(0)
    classes = rng.integers(0, 40, size=14)
    semseg = classes[region].astype(np.int64)
    semseg[rng.random((h, w)) < 0.02] = 255
    # planar depth per region: d = a + b x + c y, clipped to 0.5..10 m, a few invalid holes
    coef = rng.uniform((1.0, -0.004, -0.004), (8.0, 0.004, 0.004), size=(14, 3)).astype(np.float32)
    depth = np.clip(coef[region, 0] + coef[region, 1] * x + coef[region, 2] * y, 0.5, 10.0)
    depth[(x - w * 0.8) ** 2 + (y - h * 0.2) ** 2 < 300] = 0.0
    gy, gx = np.gradient(depth)
    normals = np.stack([-gx * 50, -gy * 50, -np.ones_like(depth)], -1)
    normals += rng.normal(0, 0.03, normals.shape)  # sensor noise: real normal PNGs compress like photos
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    edge = np.zeros((h, w), np.uint8)
    edge[:, 1:] |= region[:, 1:] != region[:, :-1]
    edge[1:, :] |= region[1:, :] != region[:-1, :]
    base = rng.uniform(40, 220, size=(14, 3)).astype(np.float32)[region]
    shade = 20 * np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40))[..., None]
    image = np.clip(base + shade + rng.normal(0, 2.5, (h, w, 3)), 0, 255).astype(np.uint8)
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


def real_frames(folder: Path = REAL_FRAMES, size: tuple[int, int] = SIZE) -> list[dict[str, np.ndarray]]:
    """The real NYUv2 frames of ``folder`` centre-cropped to ``size``: RGB, depth (mm -> m), labels (the
    labelled frames' own; unlabelled frames borrow them in turn), normals from the depth, label edges."""
    labelled = sorted((folder / "test" / "semseg40").glob("*.png"))
    labels = [read_gray(p).astype(np.int64) for p in labelled]  # stored 0 = void, 1..40
    h, w = size
    top, left = (480 - h) // 2, (640 - w) // 2
    crop = (slice(top, top + h), slice(left, left + w))
    frames = []
    for i, rgb in enumerate(
        sorted((folder / "test" / "rgb").glob("*.png")) + sorted((folder / "train" / "rgb").glob("*.png"))
    ):
        depth = read_gray(rgb.parent.parent / "depth" / rgb.name).astype(np.float32)[crop] / 1000.0
        semseg = labels[i % len(labels)][crop] - 1  # writer convention: 0-based, 255 (here -1 -> 255) ignore
        semseg[semseg < 0] = 255
        cx, cy = NYU_COLOR_INTRINSICS["cx"] - left, NYU_COLOR_INTRINSICS["cy"] - top
        frames.append(
            {
                "image": read_rgb(rgb)[crop],
                "semseg": semseg,
                "depth": depth,
                "normals": normals_from_depth(depth, cx=cx, cy=cy),
                "edge": label_boundaries(semseg),
            }
        )
    return frames


def ensure_dataset(root: Path, samples: int, seed: int = 0, synthetic: bool = False) -> tuple[Path, str]:
    """Write ``samples`` frames (split ``train``) into ``root`` unless it holds them already.

    Returns:
        (``root``, what the frames are: ``real`` or ``synthetic``).
    """
    kind = "synthetic" if synthetic or not REAL_FRAMES.is_dir() else "real"
    split, stamp = root / "gt_sets" / "train.txt", root / "gt_sets" / f"bench-v4-{kind}"
    names = [f"{i:04d}" for i in range(samples)]
    if split.is_file() and split.read_text().split() == names and stamp.is_file():
        return root, kind
    rng = np.random.default_rng(seed)
    real = real_frames() if kind == "real" else []
    for i, name in enumerate(names):
        write_nyud_sample(root, name, **(real[i % len(real)] if real else synth_frame(rng)))
    val = [f"v{i:04d}" for i in range(2)]  # splits must be disjoint (densemtl.data.splits)
    for i, name in enumerate(val):
        write_nyud_sample(root, name, **(real[i % len(real)] if real else synth_frame(rng)))
    write_split(root, "train", names)
    write_split(root, "val", val)
    for old in (root / "gt_sets").glob("bench-*"):
        old.unlink()
    stamp.write_text("content version of this benchmark\n")
    return root, kind


def rate(fn, seconds: float, min_calls: int = 3) -> tuple[float, float]:
    """(calls per wall second, calls per CPU second of this process) of ``fn()`` over about ``seconds``."""
    fn()  # warm-up
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start), calls / (time.process_time() - cpu)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def loader_rate(
    root: Path, workers: int, seconds: float, batch_size: int = 8, compact: bool = True, recycle: bool = True
) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of the workers) through the DataModule's
    training loader, after the first batch (in-process CPU time when ``workers`` is 0).

    With ``recycle`` each batch is copied into a preallocated tensor, as the pin-memory thread does when
    training on a GPU, and its shared-memory buffer released for reuse (``recycle_buffers``).
    """
    dm = MultiTaskDataModule(
        "nyud",
        root=str(root),
        preset="invpt",
        batch_size=batch_size,
        num_workers=workers,
        seed=0,
        compact=compact,
        recycle_buffers=recycle,
    )
    loader = dm.train_dataloader()
    it = iter(loader)
    pinned: dict[str, torch.Tensor] = {}

    def consume(batch: dict) -> int:
        if recycle:  # the pin-memory thread's copy, then the release on_after_batch_transfer does
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    pinned.setdefault(key, torch.empty_like(value)).copy_(value)
            dm.release_buffers({**batch, **pinned})
        return len(batch["meta"])

    consume(next(it))
    pids = [w.pid for w in getattr(it, "_workers", [])]

    def cpu() -> float:
        return sum(_cpu_seconds(p) for p in pids) if pids else time.process_time()

    count, start, cpu0 = 0, time.perf_counter(), cpu()
    while time.perf_counter() - start < seconds or count < 2 * batch_size:
        try:
            batch = next(it)
        except StopIteration:  # persistent workers: a new epoch reuses them
            it = iter(loader)
            continue
        count += consume(batch)
    wall, used = time.perf_counter() - start, cpu() - cpu0
    del it, loader  # shut the workers down now
    return count / wall, count / used if used > 0 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (written once; default: a temp folder)")
    parser.add_argument("--samples", type=int, default=32, help="frames to write")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per figure")
    parser.add_argument("--workers", type=int, nargs="*", default=[1], help="DataLoader worker counts to measure")
    parser.add_argument("--plain", action="store_true", help="also measure loaders with compact=False")
    parser.add_argument("--synthetic", action="store_true", help="synthetic frames even when real ones exist")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loader workers' work")
    parser.add_argument("--smoke", action="store_true", help="tiny quick run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.seconds = min(args.samples, 8), 0.5

    torch.set_num_threads(1)
    keep_freed_memory()  # as DataLoader workers do (seed_worker)
    with tempfile.TemporaryDirectory() as tmp:
        root, kind = ensure_dataset(args.root or Path(tmp) / "NYUDv2", args.samples, synthetic=args.synthetic)
        reader, coded = NYUD(root, "train"), NYUD(root, "train", normals_png8=True, uint8_labels=True)
        transform = build_transform("invpt", train=True, family="nyud")
        compact = split_contract(transform)[0]
        torch.manual_seed(0)
        loaded = [reader.load(i) for i in range(min(len(reader), 8))]
        loaded_coded = [coded.load(i) for i in range(min(len(coded), 8))]
        index = iter(range(10**9))

        def read(r: NYUD = reader) -> None:
            r.load(next(index) % len(r))

        def trans(t=transform, samples=loaded) -> None:
            t(samples[next(index) % len(samples)])

        def both(r: NYUD = reader, t=transform) -> None:
            t(r.load(next(index) % len(r)))

        rows = [
            ("read (nyud reader)", rate(read, args.seconds)),
            ("read (loader encoding)", rate(lambda: read(coded), args.seconds)),
            ("transform (invpt train, contract)", rate(trans, args.seconds)),
            ("transform (compact, loaders)", rate(lambda: trans(compact, loaded_coded), args.seconds)),
            ("in-process read + transform (contract)", rate(both, args.seconds)),
            ("in-process read + transform (compact)", rate(lambda: both(coded, compact), args.seconds)),
        ]
        for workers in args.workers:
            rate_recycled = loader_rate(root, workers, args.seconds)
            rows.append((f"DataLoader, {workers} worker(s), batch 8", rate_recycled))
            rate_fresh = loader_rate(root, workers, args.seconds, recycle=False)
            rows.append((f"DataLoader, {workers} worker(s), no recycling", rate_fresh))
            if args.plain:
                rate_plain = loader_rate(root, workers, args.seconds, compact=False)
                rows.append((f"DataLoader, {workers} worker(s), compact=False", rate_plain))

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"invpt train preset, NYUD 'nyud' layout {SIZE[0]}x{SIZE[1]} -> 448x576, torch threads = 1")
        decoder = "libpng (imagecodecs)" if FAST_PNG else "Pillow"
        print(f"frames: {kind} ({len(reader)} samples in {root}); PNG decoding: {decoder}")
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} (figures per CPU second are less sensitive)")
        print(f"{'measure':42s} {'samples/s':>10s} {'ms/sample':>10s} {'per CPU s':>10s}")
        for name, (wall, per_cpu) in rows:
            print(f"{name:42s} {wall:10.1f} {1000 / wall:10.2f} {per_cpu:10.1f}")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(40 if not args.smoke else 4):
                both(coded, compact)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
