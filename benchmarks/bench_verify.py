"""What the user-facing reliability checks cost: ``verify-dataset`` decoding every sample, and the up-front
decode of a prediction folder.

Usage::

    python benchmarks/bench_verify.py            # synth-nyud 200 + 50 at 240x320, 40 JPEG photos 1200x1600
    python benchmarks/bench_verify.py --smoke    # tiny and quick (CI)

Prints Markdown: for ``verify-dataset``, seconds and samples per second for ``--quick`` (first sample per
split), every sample in this process, and every sample with 2 worker processes; for a prediction folder,
milliseconds per photo for the up-front check (:func:`densemtl.data.image_folder.probe_image`: JPEGs decoded
at 1/8 scale, which still reads every byte) against a full decode (``read_rgb``), i.e. what the check adds
to a prediction before the model runs. Timings on a shared machine: report the load average with them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from densemtl.data.image_folder import probe_image
from densemtl.data.imageio import read_rgb
from densemtl.data.synthetic import generate_synth_nyud
from densemtl.data.verify import verify


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_verify(root: Path, samples: int) -> list[str]:
    rows = ["| verify-dataset | seconds | samples/s |", "|---|---:|---:|"]
    for label, kwargs in (
        ("--quick", {"quick": True}),
        ("every sample, in process", {}),
        ("every sample, --workers 2", {"workers": 2}),
    ):
        seconds = _timed(lambda kwargs=kwargs: verify(root, progress=False, **kwargs))
        checked = 2 if kwargs.get("quick") else samples
        rows.append(f"| {label} | {seconds:.2f} | {checked / seconds:.0f} |")
    return rows


def bench_probe(folder: Path, files: list[Path]) -> list[str]:
    probe = _timed(lambda: [probe_image(f) for f in files], repeat=3) / len(files) * 1e3
    full = _timed(lambda: [read_rgb(f) for f in files], repeat=3) / len(files) * 1e3
    return [
        "| prediction folder, per photo | ms |",
        "|---|---:|",
        f"| up-front check (probe_image) | {probe:.1f} |",
        f"| full decode (read_rgb) | {full:.1f} |",
        f"| check / decode | {probe / full:.2f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--photos", type=int, default=40)
    args = parser.parse_args()
    train, val, photos, size, photo = args.train, args.val, args.photos, (240, 320), (1200, 1600)
    if args.smoke:
        train, val, photos, size, photo = 4, 2, 3, (32, 40), (120, 160)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate_synth_nyud(tmp / "synth", train=train, val=val, size=size, workers=min(2, os.cpu_count() or 1))
        rng = np.random.default_rng(0)
        folder = tmp / "photos"
        folder.mkdir()
        files = []
        for i in range(photos):
            smooth = np.cumsum(rng.integers(-3, 4, (photo[0], photo[1], 3)), axis=1).clip(0, 255).astype(np.uint8)
            files.append(folder / f"{i:03d}.jpg")
            Image.fromarray(smooth).save(files[-1], quality=90)
        print(f"synth-nyud {train} + {val} at {size[0]}x{size[1]}; {photos} JPEG photos at {photo[0]}x{photo[1]}")
        print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print()
        print("\n".join(bench_verify(root, train + val)))
        print()
        print("\n".join(bench_probe(folder, files)))


if __name__ == "__main__":
    main()
