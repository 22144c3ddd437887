"""Atomic file writing: every file densemtl writes is either complete or absent, never half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

__all__ = ["atomic_write", "atomic_write_text", "save_jpg", "save_png"]


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through a temporary name in the same folder, then rename it into place.

    Args:
        path: the final file path; parent folders are created.
        write: called with a binary file object open for writing.

    Returns:
        ``path`` as a :class:`Path`. On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_png(path: str | Path, array: np.ndarray, png_level: int = 6) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG atomically.

    Args:
        path: output file.
        array: the pixels.
        png_level: zlib level 0..9 (lossless at every level; lower is faster, larger).
    """
    if not 0 <= png_level <= 9:
        raise ValueError(f"png_level must be a zlib compression level 0..9, got {png_level}")
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format="PNG", compress_level=png_level))


def save_jpg(path: str | Path, array: np.ndarray, quality: int = 95, **pil_options: Any) -> Path:
    """Write a uint8 (H, W, 3) array as JPEG atomically (``pil_options`` go to ``PIL.Image.save``)."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format="JPEG", quality=quality, **pil_options))
