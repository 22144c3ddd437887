"""``synth-pascal``: object-centred scenes rendered into the ``PASCAL_MT/`` layout (``spec/protocols.md`` §2.4).

Files per image (read back by the ``synth-pascal`` reader, a :class:`~densemtl.data.pascal.PascalContext`):
``JPEGImages/<id>.jpg``, ``semseg/VOC12/<id>.png`` (21 classes, 255 on a thin band along object
outlines as in VOC), ``human_parts/<id>.mat`` (PASCAL-Part struct: every VOC object with its mask,
persons with their part masks), ``sal_distill/<id>.png`` (foreground objects 255, else 0),
``normals_distill/<id>.png`` (camera frame x right, y down, z forward; the reader masks it by the
``LabelMap``), ``pascal-context/trainval/<id>.mat`` (``LabelMap``: PASCAL-Context 459-class ids), and
``ImageSets/Context/{train,val}.txt``, plus the card ``README.md`` and the marker ``generator.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

from densemtl.data.pascal import (
    PERSON_CLASS_ID,
    VOC_CLASSES,
    PascalObject,
    write_label_map,
    write_normals,
    write_part_annotation,
    write_pascal_image,
    write_pascal_semseg,
    write_saliency,
    write_split,
)
from densemtl.data.synthetic.card import pascal_card
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
from densemtl.data.synthetic.render import render
from densemtl.data.synthetic.scene_pascal import PART_NAMES, make_pascal_scene, pascal_camera

__all__ = ["PascalImage", "generate_synth_pascal", "render_pascal_image"]


@dataclass
class PascalImage:
    """One rendered synthetic PASCAL image.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        semseg: uint8 (H, W) VOC classes 0..20, 255 on the void band along object outlines.
        objects: the annotated VOC objects (persons with parts, except deliberately unannotated ones).
        sal: uint8 (H, W) 255 on foreground objects, else 0.
        normals: float32 (H, W, 3) unit camera-frame normals (all pixels).
        label_map: int64 (H, W) PASCAL-Context class ids (1..459).
        instance: int64 (H, W) instance ids (not written).
    """

    image: np.ndarray
    semseg: np.ndarray
    objects: list[PascalObject]
    sal: np.ndarray
    normals: np.ndarray
    label_map: np.ndarray
    instance: np.ndarray


def _void_band(label: np.ndarray, instance: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of an outline of a foreground (label > 0) instance."""
    if width <= 0:
        return np.zeros(label.shape, dtype=bool)
    change = np.zeros(label.shape, dtype=bool)
    change[:, :-1] |= instance[:, :-1] != instance[:, 1:]
    change[:-1, :] |= instance[:-1, :] != instance[1:, :]
    change[:, 1:] |= change[:, :-1].copy()
    change[1:, :] |= change[:-1, :].copy()
    fg = label > 0
    near_fg = ndimage.binary_dilation(fg, iterations=width)
    return ndimage.binary_dilation(change, iterations=max(width - 1, 0)) & near_fg if width > 1 else change & near_fg


def render_pascal_image(
    rng: np.random.Generator, size: tuple[int, int] = (240, 320), void_border: int = 1
) -> PascalImage:
    """Build a random object scene and render it.

    Args:
        rng: the image's generator.
        size: (H, W) in pixels.
        void_border: width in pixels of the 255 (ignore) band along object outlines in semseg (0: none).
    """
    ps = make_pascal_scene(rng)
    camera = pascal_camera(rng, ps, size)
    brightness = float(np.clip(rng.normal(0.45, 0.07), 0.28, 0.65))
    out = render(ps.scene, camera, rng, brightness=brightness, noise_sigma=rng.uniform(0.003, 0.012))
    inst = out.instance
    context = np.zeros(int(inst.max()) + 1, dtype=np.int64)
    for i, c in ps.context.items():
        if i < len(context):
            context[i] = c
    label = out.label.astype(np.uint8)
    semseg = np.where(_void_band(out.label, inst, void_border), 255, label).astype(np.uint8)
    objects = []
    for i in np.unique(inst[out.label > 0]):
        mask = inst == i
        cls = int(np.bincount(out.label[mask]).argmax())
        parts = []
        if cls == PERSON_CLASS_ID and int(i) not in ps.unannotated:
            for p in np.unique(out.part[mask]):
                if p > 0:
                    parts.append((PART_NAMES[p - 1], mask & (out.part == p)))
        objects.append(PascalObject(cls, mask, parts))
    sal = np.where(out.label > 0, 255, 0).astype(np.uint8)
    return PascalImage(out.rgb, semseg, objects, sal, out.normals, context[inst], inst)


_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by densemtl synth-pascal".ljust(116, b" ")


def _fix_mat_header(path: Path) -> None:
    """Replace the creation time scipy writes into a MAT-file's 116-byte text header by a fixed text.

    The header is descriptive only (readers skip it), so the file stays valid; without this, the same
    arguments would not give byte-identical ``.mat`` files.
    """
    data = path.read_bytes()
    if not data.startswith(b"MATLAB 5.0 MAT-file"):
        raise ValueError(f"{path} is not a MATLAB 5 MAT-file")
    tmp = path.with_name(f".{path.name}.header.tmp")
    tmp.write_bytes(_MAT_HEADER + data[116:])
    tmp.replace(path)


@dataclass(frozen=True)
class _Job:
    root: str
    name: str
    split: str
    index: int
    seed: int
    size: tuple[int, int]
    void_border: int


def _render_and_write(job: _Job) -> ImageStats:
    img = render_pascal_image(image_rng(job.seed, job.split, job.index), job.size, job.void_border)
    write_pascal_image(job.root, job.name, img.image)
    write_pascal_semseg(job.root, job.name, img.semseg, png_level=PNG_LEVEL)
    _fix_mat_header(write_part_annotation(job.root, job.name, img.objects))
    write_saliency(job.root, job.name, img.sal, png_level=PNG_LEVEL)
    write_normals(job.root, job.name, np.clip(img.normals, -1.0, 1.0), png_level=PNG_LEVEL)
    _fix_mat_header(write_label_map(job.root, job.name, img.label_map))
    stats = ImageStats.of(img.image, np.where(img.semseg == 255, 0, img.semseg), len(VOC_CLASSES))
    has_parts = any(o.parts for o in img.objects if o.class_id == PERSON_CLASS_ID)
    stats.extra = {"images with person parts": float(has_parts), "objects": float(len(img.objects))}
    return stats


def _build(
    root: Path, train: int, val: int, size: tuple[int, int], seed: int, workers: int, void_border: int, arguments: dict
) -> None:
    stats: dict[str, ImageStats] = {}
    for split, ids in image_names(train, val).items():
        jobs = [_Job(str(root), n, split, i, seed, size, void_border) for i, n in enumerate(ids)]
        split_stats = total(run_jobs(_render_and_write, jobs, workers))
        if split_stats is not None:
            stats[split] = split_stats
        write_split(root, split, ids)
    write_card(root, pascal_card(arguments, stats))


def generate_synth_pascal(
    out: str | Path,
    train: int = 1000,
    val: int = 500,
    size: tuple[int, int] | str = (240, 320),
    seed: int = 0,
    workers: int = 1,
    void_border: int = 1,
    overwrite: bool = False,
) -> Path:
    """Render synthetic object scenes into the ``PASCAL_MT/`` layout (read with ``synth-pascal``).

    Args:
        out: dataset folder to create (it is the reader's ``root``).
        train: number of train images (the real set has 4,998).
        val: number of val images (the real set has 5,105).
        size: image size (H, W) or ``"HxW"``.
        seed: base seed; image i of a split uses the seed sequence (seed, split, i).
        workers: processes rendering in parallel (the output does not depend on it).
        void_border: width in pixels of the 255 band along object outlines in semseg, as in VOC (0: none).
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError(f"train and val must be >= 0 with at least one image, got train={train}, val={val}")
    if void_border < 0:
        raise ValueError(f"void_border must be >= 0 pixels, got {void_border}")
    size = parse_size(size)
    arguments = json_arguments(train=train, val=val, size=size, seed=seed, void_border=void_border)
    build = partial(
        _build,
        train=train,
        val=val,
        size=size,
        seed=seed,
        workers=workers,
        void_border=void_border,
        arguments=arguments,
    )
    return atomic_dataset(out, "synth-pascal", arguments, build, overwrite=overwrite)
