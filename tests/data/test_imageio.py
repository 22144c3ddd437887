"""densemtl.data.imageio: the libpng fast path gives Pillow's arrays; everything else goes through Pillow."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemtl.data import imageio
from densemtl.data.imageio import FAST_PNG, open_image, read_gray, read_rgb

RNG = np.random.default_rng(0)


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def _palette_image() -> Image.Image:
    im = Image.fromarray(RNG.integers(0, 21, (6, 9), dtype=np.uint8), "P")
    im.putpalette([(7 * i) % 256 for i in range(768)])
    return im


@pytest.fixture
def count_fast(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the libpng decoder (and keeps decoding with it)."""
    calls: list[int] = []
    real = imageio._png_decode

    def counting(data: bytes) -> np.ndarray:
        calls.append(1)
        return real(data)

    monkeypatch.setattr(imageio, "_png_decode", counting)
    return calls


def test_fast_png_is_available() -> None:
    assert FAST_PNG, "imagecodecs is a dependency: the readers should decode PNGs with libpng"


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("RGB", RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
        ("L", RNG.integers(0, 256, (37, 53), dtype=np.uint8)),
    ],
)
def test_fast_path_decodes_what_pillow_decodes(tmp_path: Path, count_fast: list[int], mode, array) -> None:
    path = _save(tmp_path / "x.png", Image.fromarray(array, mode))
    got = read_rgb(path) if mode == "RGB" else read_gray(path)
    assert count_fast == [1]
    assert got.dtype == np.uint8 and np.array_equal(got, array)
    assert np.array_equal(got, np.asarray(Image.open(path)))


def test_16_bit_grey_fast_path(tmp_path: Path, count_fast: list[int]) -> None:
    array = RNG.integers(0, 65536, (11, 13), dtype=np.uint16)
    path = _save(tmp_path / "d.png", Image.fromarray(array))
    got = read_gray(path)
    assert count_fast == [1] and got.dtype == np.uint16 and np.array_equal(got, array)


def test_palette_labels_are_indices_not_colours(tmp_path: Path, count_fast: list[int]) -> None:
    im = _palette_image()
    path = _save(tmp_path / "p.png", im)
    got = read_gray(path)
    assert count_fast == []  # libpng would expand the palette to RGB
    assert np.array_equal(got, np.asarray(im))


def _adam7_png(pixels: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit PNG of a (H, W) or (H, W, 3) uint8 array, written by hand (Pillow cannot)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = pixels.shape[:2]
    raw = b""
    for y0, x0, dy, dx in [
        (0, 0, 8, 8),
        (0, 4, 8, 8),
        (4, 0, 8, 4),
        (0, 2, 4, 4),
        (2, 0, 4, 2),
        (0, 1, 2, 2),
        (1, 0, 2, 1),
    ]:
        sub = pixels[y0::dy, x0::dx]
        for row in sub.reshape(sub.shape[0], -1) if sub.size else []:
            raw += b"\0" + row.tobytes()  # filter type 0
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if pixels.ndim == 3 else 0, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_interlaced_png_goes_to_pillow(tmp_path: Path, count_fast: list[int]) -> None:
    rgb = RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    path = tmp_path / "i.png"
    path.write_bytes(_adam7_png(rgb))
    assert np.array_equal(read_rgb(path), rgb) and count_fast == []
    path.write_bytes(_adam7_png(rgb[..., 1]))
    assert np.array_equal(read_gray(path), rgb[..., 1]) and count_fast == []


@pytest.mark.parametrize("kind", ["palette", "rgba", "grey", "trns", "jpeg"])
def test_read_rgb_converts_other_modes_as_pillow(tmp_path: Path, kind: str) -> None:
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    if kind == "palette":
        path = _save(tmp_path / "a.png", _palette_image())
    elif kind == "rgba":
        path = _save(tmp_path / "a.png", Image.fromarray(RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8), "RGBA"))
    elif kind == "grey":
        path = _save(tmp_path / "a.png", Image.fromarray(rgb[..., 0]))
    elif kind == "trns":  # colour type 2 with a transparency key: libpng adds alpha, so Pillow decodes
        path = _save(tmp_path / "a.png", Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[0, 0]))
    else:
        path = _save(tmp_path / "a.jpg", Image.fromarray(rgb), quality=90)
    got = read_rgb(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == (*expected.shape[:2], 3) and got.dtype == np.uint8 and np.array_equal(got, expected)


def test_without_imagecodecs_pillow_decodes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    grey = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    a = _save(tmp_path / "a.png", Image.fromarray(rgb))
    b = _save(tmp_path / "b.png", Image.fromarray(grey))
    monkeypatch.setattr(imageio, "_png_decode", None)
    assert np.array_equal(read_rgb(a), rgb) and np.array_equal(read_gray(b), grey)


@pytest.mark.parametrize("cut", [60, 0.5, -40])
def test_truncated_png_names_the_file(tmp_path: Path, cut) -> None:
    path = _save(tmp_path / "t.png", Image.fromarray(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match=r"cannot read image file .*t\.png"):
        read_rgb(path)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing normals file .*absent\.png"):
        read_rgb(tmp_path / "absent.png", what="normals")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match=r"cannot read label file .*junk\.png"):
        read_gray(junk, what="label")
    with pytest.raises(ValueError, match=r"cannot read image file .*junk\.png"):
        open_image(junk)
    rgb = _save(tmp_path / "rgb.png", Image.fromarray(np.zeros((4, 5, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"single-channel label image in .*rgb\.png, got mode RGB"):
        read_gray(rgb)
