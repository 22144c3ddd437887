"""``synth-nyud``: furnished rooms rendered into the ATRC/InvPT ``NYUDv2/`` layout (``spec/protocols.md`` §2.1).

Files per image (read back by the ``synth-nyud`` reader, a :class:`~densemtl.data.nyud.NYUD` with the 13
NYUv2-13 classes): ``images/<id>.png`` RGB, ``segmentation/<id>.png`` (0 unlabelled, 1..13),
``depth/<id>.npy`` float32 z-depth in metres (0 invalid), ``normals/<id>.png`` (v = round((n + 1) 127.5),
camera frame: x right, y down, z forward, facing the camera), ``edge/<id>.png`` (0/255), plus
``gt_sets/{train,val}.txt``, a dataset card ``README.md`` and the marker ``generator.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from densemtl.data.nyud import NYU13_CLASSES, write_nyud_sample, write_split
from densemtl.data.synthetic.camera import Camera, Intrinsics
from densemtl.data.synthetic.card import nyud_card
from densemtl.data.synthetic.generate import (
    PNG_LEVEL,
    ImageStats,
    atomic_dataset,
    image_names,
    image_rng,
    json_arguments,
    parse_size,
    run_jobs,
    total,
    write_card,
)
from densemtl.data.synthetic.kinect import invalid_depth_mask
from densemtl.data.synthetic.render import render
from densemtl.data.synthetic.scene_nyud import make_nyud_scene, nyud_camera

__all__ = ["NYUDImage", "generate_synth_nyud", "render_nyud_image"]


@dataclass
class NYUDImage:
    """One rendered synthetic NYUD frame.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        semseg: int64 (H, W) NYUv2-13 classes 0..12.
        depth: float32 (H, W) z-depth in metres; 0 where Kinect-like invalid.
        normals: float32 (H, W, 3) unit camera-frame normals.
        edge: uint8 (H, W) {0, 1}.
        instance: int64 (H, W) instance ids (not written; for tests and statistics).
        camera: the camera (intrinsics and pose).
    """

    image: np.ndarray
    semseg: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    edge: np.ndarray
    instance: np.ndarray
    camera: Camera


def render_nyud_image(
    rng: np.random.Generator, size: tuple[int, int] = (240, 320), invalid_depth: bool = False, shadows: bool = True
) -> NYUDImage:
    """Build a random room and render it.

    Args:
        rng: the image's generator.
        size: (H, W) in pixels; the NYU intrinsics are scaled from 480x640.
        invalid_depth: zero the depth on Kinect-like invalid pixels (border band, dark/grazing surfaces,
            parallax shadows).
        shadows: trace shadow rays.
    """
    intr = Intrinsics.nyu(size)
    scene = make_nyud_scene(rng)
    blocked = [(o.shape.center - o.shape.bound_radius, o.shape.center + o.shape.bound_radius) for o in scene.objects]
    camera = nyud_camera(rng, scene, intr, blocked)
    brightness = float(np.clip(rng.normal(0.48, 0.06), 0.32, 0.64))
    out = render(scene, camera, rng, brightness=brightness, noise_sigma=rng.uniform(0.004, 0.015), shadows=shadows)
    depth = out.depth
    if invalid_depth:
        depth = np.where(invalid_depth_mask(depth, out.albedo, out.grazing, intr.fx, rng), 0.0, depth)
    return NYUDImage(out.rgb, out.label, depth.astype(np.float32), out.normals, out.edge, out.instance, camera)


@dataclass(frozen=True)
class _Job:
    root: str
    name: str
    split: str
    index: int
    seed: int
    size: tuple[int, int]
    invalid_depth: bool


def _render_and_write(job: _Job) -> ImageStats:
    img = render_nyud_image(image_rng(job.seed, job.split, job.index), job.size, job.invalid_depth)
    write_nyud_sample(job.root, job.name, img.image, img.semseg, img.depth, img.normals, img.edge, PNG_LEVEL)
    return ImageStats.of(img.image, img.semseg, len(NYU13_CLASSES), img.depth)


def _build(
    root: Path,
    train: int,
    val: int,
    size: tuple[int, int],
    seed: int,
    workers: int,
    invalid_depth: bool,
    arguments: dict,
) -> None:
    names = image_names(train, val)
    stats: dict[str, ImageStats] = {}
    for split, ids in names.items():
        jobs = [_Job(str(root), n, split, i, seed, size, invalid_depth) for i, n in enumerate(ids)]
        split_stats = total(run_jobs(_render_and_write, jobs, workers))
        if split_stats is not None:
            stats[split] = split_stats
        write_split(root, split, ids)
    write_card(root, nyud_card(arguments, stats))


def generate_synth_nyud(
    out: str | Path,
    train: int = 795,
    val: int = 654,
    size: tuple[int, int] | str = (240, 320),
    seed: int = 0,
    workers: int = 1,
    invalid_depth: bool = False,
    overwrite: bool = False,
) -> Path:
    """Render synthetic indoor rooms into the ATRC/InvPT ``NYUDv2/`` layout (read with ``synth-nyud``).

    Args:
        out: dataset folder to create (it is the reader's ``root``).
        train: number of train images (NYUD: 795).
        val: number of val images (NYUD: 654).
        size: image size (H, W) or ``"HxW"``; NYU intrinsics scaled from 480x640.
        seed: base seed; image i of a split uses the seed sequence (seed, split, i).
        workers: processes rendering in parallel (the output does not depend on it).
        invalid_depth: zero Kinect-like invalid depth pixels (the real labelled NYUD depth is hole-filled,
            so the default keeps every pixel valid).
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"train and val must be >= 0 with at least one image, got train={train}, val={val}")
    size = parse_size(size)
    arguments = json_arguments(train=train, val=val, size=size, seed=seed, invalid_depth=invalid_depth)
    build = partial(
        _build,
        train=train,
        val=val,
        size=size,
        seed=seed,
        workers=workers,
        invalid_depth=invalid_depth,
        arguments=arguments,
    )
    return atomic_dataset(out, "synth-nyud", arguments, build, overwrite=overwrite)
