"""Prediction on a user's folder of images: any size, every output name distinct, unreadable files listed.

:class:`ImageFolder` lists the image files of a folder (sub-folders are ignored, even one named
``album.jpg``), decodes each once up front so that unreadable ones (corrupt, truncated, 16-bit, not an
image) are skipped and listed, or raise with ``strict``, before any prediction is made, and gives every
image an output name that no other image of the folder shares (``photo.png`` and ``photo.jpg`` become
``photo.png`` and ``photo.jpg`` instead of both ``photo``).

:func:`predict_pipeline` brings any image to the model's working resolution with the run's own evaluation
pipeline: a preset that resizes (``mtinet``) takes any size as it is; a pad-only preset (``invpt``) gets
the image shrunk, aspect ratio kept, to fit in its pad size first (:class:`FitWithin`); a preset without
a geometric step (``mtan``, ``none``, ...) gets the image resized to the working size when one is known.
``meta["size"]`` keeps the original size, so :func:`densemtl.data.transforms.restore_predictions` brings
each prediction back to the original image.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from densemtl.data.base import Sample
from densemtl.data.imageio import read_rgb
from densemtl.data.transforms import CentredPad, Compose, Resize, Transform

__all__ = ["IMAGE_SUFFIXES", "FitWithin", "ImageFolder", "output_names", "predict_pipeline", "probe_image"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes (any case) read as images."""


def probe_image(path: str | Path) -> str | None:
    """None when ``path`` decodes as an 8-bit image, else why not (one line).

    JPEGs are decoded at reduced scale (libjpeg's DCT scaling), which still reads every byte of the
    file, so truncation is found at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            mode = im.mode
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a bad file; report them all
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'cannot decode'}"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return f"Pillow mode {mode} (more than 8 bits per pixel); convert it to 8 bits per channel"
    return None


def output_names(files: Sequence[Path]) -> list[str]:
    """A distinct output name per file: the stem, or the whole file name where stems collide (ignoring case).

    ``a.png, a.jpg, b.png`` -> ``a.png, a.jpg, b``. A name still shared after that (e.g. a file named
    ``a.png.jpg`` next to ``a.png``) gets ``-2``, ``-3``, ... appended. Names are compared case-insensitively
    so that outputs stay distinct on case-insensitive filesystems too.
    """
    stems = Counter(f.stem.casefold() for f in files)
    used: set[str] = set()
    unique = []
    for f in files:
        name = f.stem if stems[f.stem.casefold()] == 1 else f.name
        candidate, k = name, 1
        while candidate.casefold() in used:
            k += 1
            candidate = f"{name}-{k}"
        used.add(candidate.casefold())
        unique.append(candidate)
    return unique


class ImageFolder(Dataset):
    """The image files of a folder (sorted by name) as image-only samples.

    Args:
        root: the folder (not searched recursively; sub-folders are ignored whatever their name).
        transform: applied to each sample ``{"image": uint8 (3, H, W), "meta": {name, size, path}}``.
        strict: raise when a file cannot be decoded (the error lists every such file) instead of skipping it.

    Attributes:
        files: the readable image files, in order.
        names: their output names (:func:`output_names`), distinct.
        skipped: ``(file, reason)`` of every unreadable file.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or it holds no readable image.
        ValueError: with ``strict``, a file that cannot be decoded.
    """

    def __init__(self, root: str | Path, transform: Any = None, strict: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"predict_dir {self.root} is not a folder")
        candidates = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.skipped: list[tuple[Path, str]] = []
        readable = []
        for path in candidates:
            problem = probe_image(path)
            if problem is None:
                readable.append(path)
            else:
                self.skipped.append((path, problem))
        listing = "".join(f"\n  {p}: {why}" for p, why in self.skipped)
        if self.skipped and strict:
            raise ValueError(f"predict_dir {self.root}: {len(self.skipped)} file(s) cannot be read:{listing}")
        if self.skipped:
            log.warning("predict_dir %s: skipping %d unreadable file(s):%s", self.root, len(self.skipped), listing)
        if not readable:
            raise FileNotFoundError(
                f"predict_dir {self.root} holds no readable images ({', '.join(IMAGE_SUFFIXES)}){listing}"
            )
        self.files = readable
        self.names = output_names(readable)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        arr = read_rgb(path, "image")  # names the file if it changed since it was probed
        sample: Sample = {
            "image": torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))),
            "meta": {"name": self.names[index], "size": tuple(arr.shape[:2]), "path": str(path)},
        }
        return self.transform(sample) if self.transform is not None else sample


class FitWithin(Transform):
    """Shrink the image, aspect ratio kept, to fit in ``size`` (smaller images are left as they are), or with
    ``stretch`` resize it to exactly ``size``.

    Antialiased bilinear resampling, rounded back to uint8 when the input is uint8. Only image-only samples
    (prediction): targets would need their own resampling rules. ``meta["size"]`` keeps the original size and
    ``meta["valid_box"]`` becomes the resized image.

    Args:
        size: (height, width) to fit in.
        stretch: resize to exactly ``size`` (up or down, aspect ratio not kept), as a model trained on one
            fixed size expects.
    """

    _fields = ("size", "stretch")

    def __init__(self, size: Sequence[int], stretch: bool = False) -> None:
        h, w = (int(v) for v in size)
        if h < 1 or w < 1:
            raise ValueError(f"FitWithin size must be positive, got {tuple(size)}")
        self.size = (h, w)
        self.stretch = bool(stretch)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        others = [k for k in sample if k not in ("image", "meta")]
        if others:
            raise ValueError(f"FitWithin resizes image-only samples (prediction); got targets {others}")
        image = sample["image"]
        h, w = (int(v) for v in image.shape[-2:])
        meta = dict(sample.get("meta", {}))
        meta.setdefault("size", (h, w))
        scale = min(self.size[0] / h, self.size[1] / w)
        if self.stretch:
            out_size = self.size
        elif scale < 1.0:
            out_size = (max(1, min(self.size[0], round(h * scale))), max(1, min(self.size[1], round(w * scale))))
        else:
            out_size = (h, w)
        if out_size == (h, w):
            meta.setdefault("valid_box", (0, 0, h, w))
            return {**sample, "meta": meta}
        x = F.interpolate(image[None].float(), size=out_size, mode="bilinear", align_corners=False, antialias=True)[0]
        if image.dtype == torch.uint8:
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        meta["valid_box"] = (0, 0, *out_size)
        return {"image": x, "meta": meta}


def predict_pipeline(pipeline: Compose, working_size: Sequence[int] | None) -> Compose:
    """The evaluation ``pipeline`` made to take images of any size (see the module docstring).

    Args:
        pipeline: the run's evaluation pipeline (or its loader part, before ``ToContract``).
        working_size: (height, width) the model works at when the pipeline has no geometric step
            (``data.test_size``); None leaves such images at their own size.
    """
    steps = list(pipeline.transforms)
    if any(isinstance(t, Resize) for t in steps):
        head: list[Transform] = []
    else:
        pads = [t for t in steps if isinstance(t, CentredPad)]
        if pads:
            head = [FitWithin(pads[0].size)]
        elif working_size is not None:
            head = [FitWithin(working_size, stretch=True)]
        else:
            head = []
    out = Compose([*head, *steps])
    out.generator = pipeline.generator
    return out
