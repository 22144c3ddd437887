"""Atomic writing: a failed write leaves neither a partial file nor a temporary file behind."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from densemtl.io import atomic_write, atomic_write_text, save_png


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_written_files_get_the_usual_permissions_and_parents(tmp_path):
    path = atomic_write_text(tmp_path / "x" / "y" / "b.txt", "ü")
    assert path.read_text(encoding="utf-8") == "ü"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_png_round_trip_and_level_check(tmp_path):
    array = (np.arange(12 * 8 * 3) % 256).astype(np.uint8).reshape(12, 8, 3)
    for level in (0, 1, 9):
        with Image.open(save_png(tmp_path / f"{level}.png", array, level)) as im:
            np.testing.assert_array_equal(np.asarray(im), array)
    with pytest.raises(ValueError, match="png_level must be a zlib compression level 0..9, got 10"):
        save_png(tmp_path / "bad.png", array, 10)
