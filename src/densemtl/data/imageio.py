"""Reading image files for the dataset readers: every failure names the file.

8-bit RGB and greyscale PNGs (and 16-bit greyscale) are decoded by libpng through ``imagecodecs``, which
is 10-40 % faster than Pillow's own PNG decoder (SIMD un-filtering, zlib-ng): PNG decoding is most of a
reader's time (``benchmarks/bench_loading.py``). Everything else (palette, alpha, transparency keys,
1-bit, JPEG, BMP, ...) goes through Pillow, as does every file the fast decoder refuses, so both paths
give the same arrays and Pillow's errors. Without ``imagecodecs`` installed, Pillow decodes everything.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # optional at import time: the readers fall back to Pillow
    from imagecodecs import png_decode as _png_decode
except ImportError:  # pragma: no cover - imagecodecs is a dependency; exercised by monkeypatching
    _png_decode = None

__all__ = ["FAST_PNG", "open_image", "read_gray", "read_rgb"]

FAST_PNG: bool = _png_decode is not None
"""Whether 8-bit RGB/grey PNGs are decoded by libpng (``imagecodecs``) rather than Pillow."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _GREY = 2, 0  # PNG colour types (IHDR byte 25)


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a non-interlaced PNG's IHDR chunk; None when ``data`` is not a PNG or
    is interlaced (Adam7: libpng decodes it, but warns on stderr, so Pillow does those)."""
    if len(data) < 29 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[28] != 0:
        return None
    return data[24], data[25]


def _fast_png(data: bytes, colour_type: int, depths: tuple[int, ...], channels: int) -> np.ndarray | None:
    """The pixels decoded by libpng when ``data`` is a PNG of ``colour_type`` and a bit depth in ``depths``
    and the result has ``channels`` channels (1: an (H, W) array); None otherwise (also on any decoding
    error: Pillow then decodes the file, or raises its error)."""
    if _png_decode is None or _png_header(data) not in {(d, colour_type) for d in depths}:
        return None
    try:
        pixels = _png_decode(data)
    except Exception:  # noqa: BLE001 - imagecodecs.PngError & co.: let Pillow decide and report
        return None
    shape_ok = pixels.ndim == 2 if channels == 1 else pixels.ndim == 3 and pixels.shape[-1] == channels
    return pixels if shape_ok else None  # e.g. a tRNS chunk makes libpng add an alpha channel


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"missing {what} file {path}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {what} file {path}: {err}") from err


def _pillow(data: bytes, path: Path, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read {what} file {path}: {err}") from err


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode an image file with Pillow.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message says ``missing <what> file <path>``).
        ValueError: the file is unreadable, truncated or not an image (``cannot read <what> file <path>``).
    """
    path = Path(path)
    return _pillow(_read_bytes(path, what), path, what)


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB; other modes (L, P, RGBA, CMYK, ...) are converted as Pillow's
    ``convert("RGB")`` does (alpha dropped). Errors as :func:`open_image`."""
    path = Path(path)
    data = _read_bytes(path, what)
    pixels = _fast_png(data, _RGB, (8,), 3)
    if pixels is not None:
        return pixels
    im = _pillow(data, path, what)
    if im.mode in _WIDE_MODES:  # convert("RGB") would saturate them: a 16-bit photo turns all white
        raise ValueError(
            f"{what} file {path} has {_WIDE_MODES[im.mode]} pixels (Pillow mode {im.mode}); expected an 8-bit RGB, "
            "grey or palette image: convert it to 8 bits per channel first"
        )
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


_WIDE_MODES = {
    "I;16": "16-bit integer",
    "I;16L": "16-bit integer",
    "I;16B": "16-bit integer",
    "I;16N": "16-bit integer",
    "I": "32-bit integer",
    "F": "32-bit float",
}
"""Pillow modes of single-channel images wider than 8 bits, which an RGB image must not have."""


def read_gray(path: str | Path, what: str = "image") -> np.ndarray:
    """A single-channel image file (L, P, I;16, I, 1) as stored: (H, W) uint8, uint16, int32 or bool; a
    palette image gives its indices. Errors as :func:`open_image`; a multi-channel file raises."""
    path = Path(path)
    data = _read_bytes(path, what)
    pixels = _fast_png(data, _GREY, (8, 16), 1)
    if pixels is None:
        im = _pillow(data, path, what)
        pixels = np.asarray(im)
        if pixels.ndim != 2:
            raise ValueError(
                f"expected a single-channel label image in {path}, got mode {im.mode} shape {pixels.shape}"
            )
    return pixels
