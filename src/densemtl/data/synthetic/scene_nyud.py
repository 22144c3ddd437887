"""Indoor rooms for ``synth-nyud``: a room box with furniture, clutter, wall fixtures, lights and a camera.

Each of the 13 NYUv2-13 classes has its own shape grammar (below, one function per object kind) and
texture family, with per-instance colours drawn from overlapping ranges. The label mapping follows the
NYU 40 -> 13 mapping where it matters: doors are ``wall``, curtains ``window``, desks ``table``,
counters and shelves ``furniture``, pillows and lamps ``objects``, rugs ``floor``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from densemtl.data.synthetic.builder import WALLS, Builder, Frame, wall_frame, wall_length
from densemtl.data.synthetic.camera import Camera, Intrinsics, look_rotation
from densemtl.data.synthetic.geometry import rotation_y
from densemtl.data.synthetic.render import Scene
from densemtl.data.synthetic.shading import Light
from densemtl.data.synthetic.textures import Material, make_material, random_color

__all__ = ["NYU13_CLASSES", "make_nyud_scene", "nyud_camera"]

NYU13_CLASSES = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
"""The NYUv2-13 class names in label order (0-based here; 1..13 on disk). ``picture`` is the name in the
official 13-class list (class13_names of ankurhanda/nyuv2-meta-data); some papers call it ``painting``."""

BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS, PICTURE, SOFA, TABLE, TV, WALL, WINDOW = range(13)


# ----------------------------------------------------------------------------------------------- materials
def _wood(rng: np.random.Generator, extent=None) -> Material:
    if rng.random() < 0.3:  # painted
        col = random_color(rng, (0.0, 1.0), (0.0, 0.25), (0.25, 0.95))
        return make_material(rng, "panels" if extent is not None else "plain", col, col * 0.8, 0.0, extent)
    col = random_color(rng, (0.03, 0.11), (0.35, 0.75), (0.25, 0.8))
    fam = "panels" if extent is not None else "wood"
    return make_material(rng, fam, col, col * rng.uniform(0.6, 0.85), rng.uniform(0.08, 0.2), extent)


def _fabric(rng: np.random.Generator, pale: bool = False) -> Material:
    sat, val = ((0.0, 0.25), (0.6, 0.95)) if pale else ((0.05, 0.8), (0.2, 0.85))
    col = random_color(rng, (0.0, 1.0), sat, val)
    scale = rng.uniform(0.1, 0.3) if rng.random() < 0.3 else 0.0
    return make_material(rng, "fabric", col, random_color(rng, (0.0, 1.0), (0.1, 0.6), (0.3, 0.9)), scale)


def _plastic(rng: np.random.Generator) -> Material:
    fam = rng.choice(["plain", "plain", "stripes", "checker"])
    col = random_color(rng, (0.0, 1.0), (0.0, 0.9), (0.15, 0.95))
    return make_material(rng, str(fam), col, random_color(rng), rng.uniform(0.02, 0.08))


def _metal(rng: np.random.Generator) -> Material:
    return make_material(rng, "plain", random_color(rng, (0.0, 1.0), (0.0, 0.1), (0.1, 0.8)))


# --------------------------------------------------------------------------------------------- object kinds
def _clutter(b: Builder, f: Frame, z: float, hx: float, hy: float) -> None:
    """Small objects (and sometimes a book stack) on a support rectangle of half size (hx, hy) at height z."""
    rng = b.rng
    for _ in range(int(rng.integers(1, 7 if hx > 0.3 else 3))):
        x, y = rng.uniform(-hx * 0.8, hx * 0.8), rng.uniform(-hy * 0.8, hy * 0.8)
        g = f.moved((x, y, z), rng.uniform(0, np.pi))
        if rng.random() < 0.2:
            _book_stack(b, g)
        else:
            _small_object(b, g)


def _small_object(b: Builder, f: Frame) -> None:
    rng, inst, m = b.rng, b.instance(), _plastic(b.rng)
    kind = int(rng.integers(0, 7))
    if kind == 0:  # bottle
        r, h = rng.uniform(0.025, 0.045), rng.uniform(0.15, 0.3)
        b.cylinder(f, (0, 0, h * 0.35), r, h * 0.7, OBJECTS, inst, m)
        b.cylinder(f, (0, 0, h * 0.82), r * 0.4, h * 0.3, OBJECTS, inst, m)
    elif kind == 1:  # cup or can
        r, h = rng.uniform(0.03, 0.05), rng.uniform(0.08, 0.14)
        b.cylinder(f, (0, 0, h / 2), r, h, OBJECTS, inst, m)
    elif kind == 2:  # box
        dims = (rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.3), rng.uniform(0.05, 0.25))
        b.box(f, (0, 0, dims[2] / 2), dims, OBJECTS, inst, m)
    elif kind == 3:  # bowl / fruit
        r = rng.uniform(0.05, 0.12)
        b.ellipsoid(f, (0, 0, r * 0.4), (r, r, r * 0.45), OBJECTS, inst, m)
    elif kind == 4:  # table lamp
        h = rng.uniform(0.3, 0.55)
        b.cylinder(f, (0, 0, 0.015), 0.08, 0.03, OBJECTS, inst, m)
        b.cylinder(f, (0, 0, h * 0.4), 0.012, h * 0.8, OBJECTS, inst, _metal(rng))
        b.cylinder(f, (0, 0, h * 0.85), rng.uniform(0.1, 0.16), h * 0.35, OBJECTS, inst, _fabric(rng, True))
    elif kind == 5:  # vase / plant
        r, h = rng.uniform(0.05, 0.1), rng.uniform(0.1, 0.3)
        b.cylinder(f, (0, 0, h / 2), r, h, OBJECTS, inst, m)
        green = make_material(rng, "fabric", random_color(rng, (0.22, 0.4), (0.4, 0.9), (0.2, 0.6)), None, 0.0)
        rr = rng.uniform(0.1, 0.22)
        b.ellipsoid(f, (0, 0, h + rr * 0.8), (rr, rr, rr * 1.2), OBJECTS, inst, green)
    else:  # ball
        r = rng.uniform(0.04, 0.12)
        b.ellipsoid(f, (0, 0, r), (r, r, r), OBJECTS, inst, m)


def _book_stack(b: Builder, f: Frame) -> None:
    rng, z = b.rng, 0.0
    for _ in range(int(rng.integers(1, 5))):
        dims = (rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.22), rng.uniform(0.02, 0.05))
        col = random_color(rng, (0, 1), (0.2, 0.9), (0.2, 0.9))
        m = make_material(rng, "book", col, random_color(rng), 0.1, extent=np.array(dims) / 2)
        b.box(
            f.moved((rng.uniform(-0.02, 0.02), 0, 0), rng.uniform(-0.3, 0.3)),
            (0, 0, z + dims[2] / 2),
            dims,
            BOOKS,
            b.instance(),
            m,
            rotation_y(np.pi / 2),
        )
        z += dims[2]


def _legs(b: Builder, f: Frame, hx: float, hy: float, h: float, t: float, label: int, inst: int, m: Material) -> None:
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.box(f, (sx * (hx - t), sy * (hy - t), h / 2), (t * 2, t * 2, h), label, inst, m)


def bed(b: Builder, f: Frame, w: float, d: float) -> None:
    rng, inst = b.rng, b.instance()
    frame_m, sheet = _wood(rng), _fabric(rng)
    mh, top = rng.uniform(0.18, 0.28), rng.uniform(0.25, 0.35)
    L = d - 0.08
    y0 = 0.04
    b.box(f, (0, y0, top / 2), (w, L, top), BED, inst, frame_m)
    b.box(f, (0, y0 + 0.01, top + mh / 2), (w - 0.04, L - 0.04, mh), BED, inst, _fabric(rng, True))
    b.box(f, (0, y0 + L * 0.14, top + mh + 0.03), (w + 0.02, L * 0.72, 0.07), BED, inst, sheet)
    hh = rng.uniform(0.8, 1.2)
    b.box(f, (0, -d / 2 + 0.04, hh / 2), (w + 0.04, 0.08, hh), BED, inst, frame_m)
    for sx in (-1, 1) if w > 1.2 else (0,):
        b.ellipsoid(
            f,
            (sx * w / 4.3, -L / 2 + 0.28, top + mh + 0.07),
            (min(w / 4.6, 0.35), 0.17, 0.08),
            OBJECTS,
            b.instance(),
            _fabric(rng, True),
        )


def wardrobe(b: Builder, f: Frame, w: float, d: float) -> None:
    h = b.rng.uniform(1.7, 2.2)
    b.box(f, (0, 0, h / 2), (w, d, h), FURNITURE, b.instance(), _wood(b.rng, np.array([w, d, h]) / 2))


def cabinet(b: Builder, f: Frame, w: float, d: float, h: float | None = None) -> None:
    """Dresser, nightstand, tv stand, sideboard: a panelled box whose top holds objects."""
    h = b.rng.uniform(0.45, 1.0) if h is None else h
    b.box(f, (0, 0, h / 2), (w, d, h), FURNITURE, b.instance(), _wood(b.rng, np.array([w, d, h]) / 2))
    _clutter(b, f, h, w / 2, d / 2)


def counter(b: Builder, f: Frame, w: float, d: float) -> None:
    rng, inst = b.rng, b.instance()
    b.box(f, (0, -0.03, 0.44), (w, d - 0.06, 0.88), FURNITURE, inst, _wood(rng, np.array([w, d, 0.88]) / 2))
    top = make_material(rng, rng.choice(["plain", "tiles"]), random_color(rng, (0, 1), (0, 0.3), (0.2, 0.9)), None, 0.1)
    b.box(f, (0, 0, 0.9), (w + 0.02, d, 0.04), FURNITURE, inst, top)
    if rng.random() < 0.6:
        b.box(
            f,
            (0, -d / 2 + 0.18, rng.uniform(1.75, 1.95)),
            (w, 0.35, 0.7),
            FURNITURE,
            b.instance(),
            _wood(rng, np.array([w, 0.35, 0.7]) / 2),
        )
    _clutter(b, f, 0.92, w / 2, d / 2 - 0.05)


def bookshelf(b: Builder, f: Frame, w: float, d: float) -> None:
    rng, inst = b.rng, b.instance()
    m = _wood(rng)
    h = rng.uniform(1.0, 2.1)
    t = 0.02
    n_shelves = max(2, int(h / rng.uniform(0.3, 0.4)))
    b.box(f, (0, -d / 2 + 0.005, h / 2), (w, 0.01, h), FURNITURE, inst, m)
    for sx in (-1, 1):
        b.box(f, (sx * (w / 2 - t / 2), 0, h / 2), (t, d, h), FURNITURE, inst, m)
    gap = (h - t) / n_shelves
    for i in range(n_shelves + 1):
        b.box(f, (0, 0, i * gap + t / 2), (w, d, t), FURNITURE, inst, m)
    for i in range(n_shelves):
        z0 = i * gap + t
        x = -w / 2 + t + 0.01
        while x < w / 2 - t - 0.05:
            if rng.random() < 0.4:  # a gap or an object
                if rng.random() < 0.5 and x < w / 2 - 0.2:
                    _small_object(b, f.moved((x + 0.08, 0, z0)))
                x += rng.uniform(0.1, 0.25)
                continue
            n_books, bw = int(rng.integers(2, 9)), rng.uniform(0.018, 0.045)
            block = min(n_books * bw, w / 2 - t - x)
            bh = min(gap - 0.02, rng.uniform(0.15, 0.3))
            bd = min(d - 0.04, rng.uniform(0.12, 0.22))
            mat = make_material(
                rng,
                "bookrow",
                random_color(rng, (0, 1), (0.2, 0.9), (0.2, 0.9)),
                random_color(rng, (0, 1), (0.2, 0.9), (0.2, 0.9)),
                bw,
                np.array([block, bd, bh]) / 2,
            )
            b.box(
                f,
                (x + block / 2, d / 2 - bd / 2 - rng.uniform(0.0, 0.03), z0 + bh / 2),
                (block, bd, bh),
                BOOKS,
                b.instance(),
                mat,
            )
            x += block + 0.003


def table(b: Builder, f: Frame, w: float, d: float, h: float | None = None) -> None:
    rng, inst = b.rng, b.instance()
    h = rng.uniform(0.4, 0.78) if h is None else h
    m = _wood(rng) if rng.random() < 0.8 else _plastic(rng)
    if rng.random() < 0.25 and abs(w - d) < 0.3:  # round pedestal table
        r = min(w, d) / 2
        b.cylinder(f, (0, 0, h - 0.02), r, 0.04, TABLE, inst, m)
        b.cylinder(f, (0, 0, (h - 0.04) / 2), 0.04, h - 0.04, TABLE, inst, m)
        b.cylinder(f, (0, 0, 0.015), r * 0.5, 0.03, TABLE, inst, m)
    else:
        b.box(f, (0, 0, h - 0.02), (w, d, 0.04), TABLE, inst, m)
        _legs(b, f, w / 2 - 0.02, d / 2 - 0.02, h - 0.04, 0.025, TABLE, inst, m)
    _clutter(b, f, h, w / 2, d / 2)


def desk(b: Builder, f: Frame, w: float, d: float) -> None:
    rng, inst = b.rng, b.instance()
    h = rng.uniform(0.72, 0.78)
    m = _wood(rng)
    b.box(f, (0, 0, h - 0.015), (w, d, 0.03), TABLE, inst, m)
    for sx in (-1, 1):
        b.box(f, (sx * (w / 2 - 0.015), 0, (h - 0.03) / 2), (0.03, d - 0.04, h - 0.03), TABLE, inst, m)
    if rng.random() < 0.7:  # monitor
        mi, sw = b.instance(), rng.uniform(0.45, 0.7)
        sh = sw * rng.uniform(0.55, 0.65)
        g = f.moved((rng.uniform(-w / 4, w / 4), -d / 4, h))
        b.box(g, (0, 0, 0.01), (0.2, 0.15, 0.02), TV, mi, _metal(rng))
        b.box(g, (0, 0, 0.08), (0.04, 0.03, 0.16), TV, mi, _metal(rng))
        b.box(g, (0, 0.03, 0.1 + sh / 2), (sw, 0.03, sh), TV, mi, _screen(rng, np.array([sw, 0.03, sh]) / 2))
    _clutter(b, f.moved((0, d / 6, 0)), h, w / 2, d / 3)


def _screen(rng: np.random.Generator, extent: np.ndarray) -> Material:
    on = rng.random() < 0.25
    col = random_color(rng, (0, 1), (0, 0.6), (0.3, 0.9)) if on else np.full(3, rng.uniform(0.01, 0.04))
    bezel = random_color(rng, (0, 1), (0, 0.1), (0.02, 0.5))
    return make_material(rng, "screen", col, bezel, 0.0, extent, glow=0.7 if on else 0.0)


def chair(b: Builder, f: Frame) -> None:
    rng, inst = b.rng, b.instance()
    s, h = rng.uniform(0.4, 0.5), rng.uniform(0.42, 0.48)
    seat_m = _fabric(rng) if rng.random() < 0.5 else _wood(rng)
    frame_m = _wood(rng) if rng.random() < 0.6 else _metal(rng)
    if rng.random() < 0.3:  # office chair
        b.box(f, (0, 0, h), (s, s, 0.08), CHAIR, inst, seat_m)
        b.box(f, (0, -s / 2 + 0.03, h + 0.3), (s * 0.9, 0.06, 0.5), CHAIR, inst, seat_m)
        b.cylinder(f, (0, 0, h / 2), 0.025, h, CHAIR, inst, frame_m)
        for a in (0.0, np.pi / 2):
            b.box(f.moved((0, 0, 0), a), (0, 0, 0.04), (0.6, 0.05, 0.04), CHAIR, inst, frame_m)
        return
    b.box(f, (0, 0, h - 0.02), (s, s, 0.04), CHAIR, inst, seat_m)
    _legs(b, f, s / 2, s / 2, h - 0.04, 0.018, CHAIR, inst, frame_m)
    bh = rng.uniform(0.35, 0.5)
    b.box(f, (0, -s / 2 + 0.02, h + bh / 2), (s, 0.04, bh), CHAIR, inst, frame_m)


def sofa(b: Builder, f: Frame, w: float, d: float) -> None:
    rng, inst = b.rng, b.instance()
    m = _fabric(rng)
    seat = rng.uniform(0.38, 0.45)
    arm = 0.18 if w > 1.0 else 0.14
    b.box(f, (0, 0.02, seat / 2), (w, d - 0.04, seat), SOFA, inst, m)
    b.box(f, (0, -d / 2 + 0.11, seat + 0.22), (w, 0.2, 0.45), SOFA, inst, m)
    for sx in (-1, 1):
        b.box(f, (sx * (w / 2 - arm / 2), 0.02, seat * 0.5 + 0.12), (arm, d - 0.04, seat + 0.24), SOFA, inst, m)
    n_cush = max(1, int((w - 2 * arm) / 0.6))
    cw = (w - 2 * arm) / n_cush
    for i in range(n_cush):
        x = -w / 2 + arm + cw * (i + 0.5)
        b.box(f, (x, 0.07, seat + 0.06), (cw - 0.01, d - 0.3, 0.12), SOFA, inst, m)
        if rng.random() < 0.35:
            b.ellipsoid(f, (x, -d / 2 + 0.3, seat + 0.3), (0.2, 0.08, 0.18), OBJECTS, b.instance(), _fabric(rng))


def fridge(b: Builder, f: Frame, w: float, d: float) -> None:
    h = b.rng.uniform(1.6, 1.9)
    col = random_color(b.rng, (0, 1), (0, 0.08), (0.5, 0.95))
    m = make_material(b.rng, "panels", col, col * 0.8, 0.0, np.array([w, d, h]) / 2)
    b.box(f, (0, 0, h / 2), (w, d, h), FURNITURE, b.instance(), m)


def tv_on_stand(b: Builder, f: Frame, w: float, d: float) -> None:
    sh = b.rng.uniform(0.45, 0.6)
    cabinet(b, f, w, d, sh)
    tw = min(w - 0.1, b.rng.uniform(0.8, 1.4))
    th = tw * 9 / 16
    inst = b.instance()
    b.box(f, (0, -0.05, sh + 0.02), (0.3, 0.18, 0.04), TV, inst, _metal(b.rng))
    b.box(f, (0, -0.05, sh + 0.06 + th / 2), (tw, 0.05, th), TV, inst, _screen(b.rng, np.array([tw, 0.05, th]) / 2))


def floor_object(b: Builder, f: Frame) -> None:
    rng, inst = b.rng, b.instance()
    kind = rng.random()
    if kind < 0.3:  # bin or pot plant
        r, h = rng.uniform(0.12, 0.22), rng.uniform(0.25, 0.5)
        b.cylinder(f, (0, 0, h / 2), r, h, OBJECTS, inst, _plastic(rng))
        if rng.random() < 0.5:
            leaf = make_material(rng, "fabric", random_color(rng, (0.2, 0.4), (0.4, 0.9), (0.2, 0.6)), None, 0.0)
            rr = rng.uniform(0.25, 0.4)
            b.ellipsoid(f, (0, 0, h + rr), (rr, rr, rr * 1.3), OBJECTS, inst, leaf)
    elif kind < 0.5:  # bag, clothes pile
        rr = rng.uniform(0.15, 0.35)
        b.ellipsoid(f, (0, 0, rr * 0.5), (rr, rr * rng.uniform(0.6, 1.0), rr * 0.6), OBJECTS, inst, _fabric(rng))
    else:  # boxes, possibly stacked
        z = 0.0
        for _ in range(int(rng.integers(1, 4))):
            dims = (rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.45))
            b.box(f.moved((0, 0, 0), rng.normal(0, 0.2)), (0, 0, z + dims[2] / 2), dims, OBJECTS, inst, _plastic(rng))
            z += dims[2]
            if rng.random() < 0.5:
                break


# ----------------------------------------------------------------------------------------------- placement
def _place_on_wall(b: Builder, w: float, d: float, h: float, tries: int = 20) -> Frame | None:
    """A frame for a floor-standing object of width w, depth d, height h against a random free wall spot."""
    for _ in range(tries):
        wall = int(b.rng.choice(WALLS))
        length = wall_length(b.size, wall)
        if length < w + 0.1:
            continue
        f = wall_frame(b.size, wall, b.rng.uniform(w / 2 + 0.05, length - w / 2 - 0.05), d)
        bounds = b.aabb(f, (0, 0, h / 2), (w, d, h))
        if b.is_free(bounds):
            b.reserve(bounds)
            return f
    return None


def _place_free(b: Builder, w: float, d: float, h: float, tries: int = 20) -> Frame | None:
    """A frame for a floor-standing object anywhere in the room (random yaw)."""
    for _ in range(tries):
        yaw = b.rng.uniform(-np.pi, np.pi) if b.rng.random() < 0.5 else b.rng.integers(0, 4) * np.pi / 2
        x, y = b.rng.uniform(0.3, b.size[0] - 0.3), b.rng.uniform(0.3, b.size[1] - 0.3)
        f = Frame(np.array([x, y, 0.0]), float(yaw))
        bounds = b.aabb(f, (0, 0, h / 2), (w, d, h))
        if b.is_free(bounds):
            b.reserve(bounds)
            return f
    return None


def _chairs_around(b: Builder, f: Frame, w: float, d: float, n: int) -> None:
    spots = [
        ((0, -d / 2 - 0.3), 0.0),
        ((0, d / 2 + 0.3), np.pi),
        ((-w / 2 - 0.3, 0), -np.pi / 2),
        ((w / 2 + 0.3, 0), np.pi / 2),
        ((-w / 4, -d / 2 - 0.3), 0.0),
        ((w / 4, d / 2 + 0.3), np.pi),
    ]
    for (x, y), a in spots[:n]:
        g = f.moved((x, y, 0), a + b.rng.normal(0, 0.25))
        bounds = b.aabb(g, (0, 0, 0.45), (0.5, 0.5, 0.9))
        if b.is_free(bounds, margin=0.0):
            b.reserve(bounds)
            chair(b, g)


def _mount(b: Builder, w: float, h: float, t: float, z: float, clearance: float = 0.0) -> Frame | None:
    """A frame on a random wall for a thin box (w wide, h high, t thick) centred at height z."""
    for _ in range(15):
        wall = int(b.rng.choice(WALLS))
        length = wall_length(b.size, wall)
        if length < w + 0.3:
            continue
        f = wall_frame(b.size, wall, b.rng.uniform(w / 2 + 0.1, length - w / 2 - 0.1), t, gap=0.0)
        bounds = b.aabb(f, (0, clearance / 2, z), (w + 0.1, t + clearance, h))
        if b.is_free(bounds, margin=0.0):
            b.reserve(bounds)
            return f
    return None


def window(b: Builder) -> None:
    rng, H = b.rng, b.size[2]
    w, h = rng.uniform(0.7, 2.2), rng.uniform(0.9, 1.6)
    z = min(rng.uniform(0.75, 1.1) + h / 2, H - 0.12 - h / 2)
    if (f := _mount(b, w + 0.9, h, 0.06, z, clearance=0.4)) is None:
        return
    ext = np.array([w, 0.06, h]) / 2
    frame_col = random_color(rng, (0, 1), (0, 0.15), (0.5, 0.95))
    sky = random_color(rng, (0.5, 0.65), (0.05, 0.5), (0.6, 1.0))
    m = make_material(rng, "window", sky, frame_col, 0.0, ext, glow=rng.uniform(1.2, 2.5))
    b.box(f, (0, 0, z), (w, 0.06, h), WINDOW, b.instance(), m)
    if rng.random() < 0.6:  # curtains or blinds: window class in NYU-13
        cm = _fabric(rng)
        cw, top = rng.uniform(0.25, 0.45), min(H - 0.05, z + h / 2 + 0.25)
        ch = top - rng.uniform(0.02, 0.6)
        for sx in (-1, 1):
            b.box(f, (sx * (w / 2 + cw / 2 - 0.06), 0.08, top - ch / 2), (cw, 0.05, ch), WINDOW, b.instance(), cm)


def picture(b: Builder) -> None:
    rng, H = b.rng, b.size[2]
    w, h = rng.uniform(0.3, 1.4), rng.uniform(0.3, 1.0)
    z = rng.uniform(1.2, max(1.25, min(1.9, H - 0.2 - h / 2)))
    t = rng.uniform(0.015, 0.04)
    if (f := _mount(b, w, h, t, z)) is None:
        return
    col = random_color(rng, (0, 1), (0.2, 0.9), (0.2, 0.9))
    frame_col = random_color(rng, (0, 1), (0, 0.5), (0.05, 0.9))
    m = make_material(rng, "picture", col, frame_col, rng.uniform(0.02, 0.07), np.array([w, t, h]) / 2, noise_freq=2.0)
    b.box(f, (0, 0, z), (w, t, h), PICTURE, b.instance(), m)


def door(b: Builder) -> None:
    rng, H = b.rng, b.size[2]
    w, h = rng.uniform(0.8, 0.95), min(2.05, H - 0.1)
    if (f := _mount(b, w + 0.2, h, 0.04, h / 2, clearance=0.8)) is not None:
        b.box(f, (0, 0, h / 2), (w, 0.04, h), WALL, b.instance(), _wood(rng, np.array([w, 0.04, h]) / 2))


def wall_tv(b: Builder) -> None:
    w = b.rng.uniform(0.8, 1.4)
    h = w * 9 / 16
    z = b.rng.uniform(1.1, 1.5)
    if (f := _mount(b, w, h, 0.05, z)) is not None:
        b.box(f, (0, 0, z), (w, 0.05, h), TV, b.instance(), _screen(b.rng, np.array([w, 0.05, h]) / 2))


def wall_objects(b: Builder) -> None:
    """A mirror, whiteboard or clock (objects), or a wall shelf (furniture) holding objects and books."""
    rng = b.rng
    if rng.random() < 0.5:
        w, h = rng.uniform(0.4, 1.5), rng.uniform(0.4, 1.0)
        z = rng.uniform(1.2, 1.6)
        if (f := _mount(b, w, h, 0.02, z)) is not None:
            col = random_color(rng, (0, 1), (0, 0.1), (0.6, 0.95))
            b.box(f, (0, 0, z), (w, 0.02, h), OBJECTS, b.instance(), make_material(rng, "plain", col))
        return
    w, d, z = rng.uniform(0.6, 1.4), rng.uniform(0.2, 0.3), rng.uniform(1.1, 1.8)
    if (f := _mount(b, w, 0.45, d, z + 0.2)) is None:
        return
    b.box(f, (0, 0, z), (w, d, 0.025), FURNITURE, b.instance(), _wood(rng))
    x = -w / 2 + 0.05
    while x < w / 2 - 0.1:
        g = f.moved((x, 0, z + 0.0125))
        if rng.random() < 0.5:
            _small_object(b, g)
            x += rng.uniform(0.15, 0.3)
        else:
            _book_stack(b, g)
            x += 0.3


def _furniture(w_range: tuple[float, float], d: float, h: float, make: Callable, wall: bool = True) -> Callable:
    """A placement function: draw a width, find a spot (against a wall or free), then build."""

    def place(b: Builder) -> None:
        w = b.rng.uniform(*w_range)
        f = _place_on_wall(b, w, d, h) if wall else _place_free(b, w, d, h)
        if f is not None:
            make(b, f, w, d)

    return place


def _place_desk(b: Builder) -> None:
    w, d = b.rng.uniform(1.0, 1.6), b.rng.uniform(0.6, 0.75)
    if (f := _place_on_wall(b, w, d + 0.7, 1.1)) is not None:
        g = f.moved((0, -0.35, 0))
        desk(b, g, w, d)
        chair(b, g.moved((b.rng.uniform(-0.2, 0.2), d / 2 + 0.2, 0), np.pi + b.rng.normal(0, 0.3)))


def _place_bed(b: Builder) -> None:
    w, d = float(b.rng.choice([0.95, 1.4, 1.6, 1.8])), b.rng.uniform(2.0, 2.2)
    if (f := _place_on_wall(b, w + 0.06, d, 1.1)) is not None:
        bed(b, f, w, d)


def _place_armchair(b: Builder) -> None:
    w, d = b.rng.uniform(0.75, 1.0), b.rng.uniform(0.8, 0.95)
    f = _place_on_wall(b, w, d, 0.9) if b.rng.random() < 0.5 else _place_free(b, w, d, 0.9)
    if f is not None:
        sofa(b, f, w, d)


def _place_table(kind: str) -> Callable[[Builder], None]:
    (w0, d0), h = {"coffee_table": ((1.0, 0.55), 0.42), "side_table": ((0.5, 0.5), 0.55), "table": ((1.2, 0.7), 0.74)}[
        kind
    ]

    def place(b: Builder) -> None:
        w, d = w0 * b.rng.uniform(0.8, 1.2), d0 * b.rng.uniform(0.8, 1.2)
        if (f := _place_free(b, w, d, h)) is not None:
            table(b, f, w, d, h)

    return place


def _place_cabinet(w0: float, d: float, h_range: tuple[float, float]) -> Callable[[Builder], None]:
    def place(b: Builder) -> None:
        w, h = w0 * b.rng.uniform(0.8, 1.2), b.rng.uniform(*h_range)
        if (f := _place_on_wall(b, w, d, h)) is not None:
            cabinet(b, f, w, d, h)

    return place


def _place_counter(b: Builder) -> None:
    w = b.rng.uniform(1.2, min(3.0, max(b.size[:2]) - 0.4))
    if (f := _place_on_wall(b, w, 0.62, 2.0)) is not None:
        counter(b, f, w, 0.62)


def _place_dining(b: Builder) -> None:
    w, d = b.rng.uniform(1.2, 2.0), b.rng.uniform(0.8, 1.0)
    if (f := _place_free(b, w + 1.0, d + 1.0, 0.8)) is not None:
        table(b, f, w, d, 0.75)
        b.release_last()
        b.reserve(b.aabb(f, (0, 0, 0.4), (w, d, 0.8)))
        _chairs_around(b, f, w, d, int(b.rng.integers(2, 7)))


def _place_chair(b: Builder) -> None:
    if (f := _place_free(b, 0.5, 0.5, 0.9)) is not None:
        chair(b, f)


def _place_floor_object(b: Builder) -> None:
    if (f := _place_free(b, 0.6, 0.6, 0.8)) is not None:
        floor_object(b, f)


PLACERS: dict[str, Callable[[Builder], None]] = {
    "bed": _place_bed,
    "nightstand": _place_cabinet(0.45, 0.4, (0.5, 0.6)),
    "dresser": _place_cabinet(1.2, 0.5, (0.7, 1.1)),
    "cabinet": _place_cabinet(0.8, 0.45, (0.7, 1.2)),
    "sideboard": _place_cabinet(1.6, 0.45, (0.75, 0.95)),
    "wardrobe": _furniture((0.9, 2.0), 0.6, 2.2, wardrobe),
    "bookshelf": _furniture((0.6, 1.4), 0.33, 2.1, bookshelf),
    "desk": _place_desk,
    "sofa": _furniture((1.6, 2.4), 0.9, 0.9, sofa),
    "armchair": _place_armchair,
    "coffee_table": _place_table("coffee_table"),
    "side_table": _place_table("side_table"),
    "table": _place_table("table"),
    "tv_stand": _furniture((1.0, 1.8), 0.45, 1.4, tv_on_stand),
    "counter": _place_counter,
    "fridge": _furniture((0.65, 0.8), 0.7, 1.9, fridge),
    "dining": _place_dining,
    "chair": _place_chair,
    "floor_object": _place_floor_object,
    "window": window,
    "picture": picture,
    "door": door,
    "wall_tv": wall_tv,
    "wall_objects": wall_objects,
}
"""Object kind -> placement function (finds free space and builds the object, or gives up)."""

ROOM_TYPES: dict[str, list[tuple[str, float]]] = {
    "bedroom": [
        ("bed", 1.0),
        ("nightstand", 0.7),
        ("nightstand", 0.4),
        ("wardrobe", 0.6),
        ("dresser", 0.5),
        ("bookshelf", 0.3),
        ("desk", 0.3),
        ("tv_stand", 0.15),
        ("chair", 0.3),
    ],
    "living": [
        ("sofa", 1.0),
        ("armchair", 0.5),
        ("coffee_table", 0.8),
        ("tv_stand", 0.7),
        ("bookshelf", 0.5),
        ("side_table", 0.4),
        ("dresser", 0.3),
        ("chair", 0.2),
        ("cabinet", 0.4),
    ],
    "office": [
        ("desk", 1.0),
        ("desk", 0.5),
        ("bookshelf", 0.8),
        ("bookshelf", 0.4),
        ("cabinet", 0.6),
        ("cabinet", 0.4),
        ("sofa", 0.15),
        ("table", 0.3),
    ],
    "kitchen": [("counter", 1.0), ("counter", 0.6), ("fridge", 0.6), ("dining", 0.6), ("cabinet", 0.3)],
    "dining": [
        ("dining", 1.0),
        ("sideboard", 0.7),
        ("bookshelf", 0.3),
        ("sofa", 0.2),
        ("tv_stand", 0.2),
        ("cabinet", 0.4),
    ],
}
"""Room type -> (object kind, probability) of the main furniture, placed in this order."""


def _room_faces(rng: np.random.Generator, size: np.ndarray) -> list[Material]:
    wall_col = random_color(rng, (0.0, 1.0), (0.0, 0.3), (0.55, 0.95))
    walls = make_material(rng, "plaster", wall_col, None, 0.1, noise_freq=1.0)
    if rng.random() < 0.15:
        walls = make_material(rng, "stripes", wall_col, wall_col * 0.85, rng.uniform(0.05, 0.3))
    kind = rng.choice(["planks", "tiles", "carpet"], p=[0.5, 0.25, 0.25])
    if kind == "planks":
        col = random_color(rng, (0.04, 0.11), (0.3, 0.7), (0.3, 0.75))
        floor = make_material(rng, "planks", col, col * 0.6, rng.uniform(0.1, 0.2))
    elif kind == "tiles":
        col = random_color(rng, (0.0, 1.0), (0.0, 0.3), (0.35, 0.9))
        floor = make_material(rng, "tiles", col, col * 0.5, rng.uniform(0.3, 0.6))
    else:
        floor = make_material(rng, "carpet", random_color(rng, (0, 1), (0.05, 0.6), (0.2, 0.75)), None, 0.1)
    ceiling = make_material(
        rng, "plaster", random_color(rng, (0.05, 0.15), (0.0, 0.08), (0.8, 0.98)), None, 0.1, noise_freq=0.5
    )
    accent = walls
    if rng.random() < 0.25:
        accent = make_material(rng, "plaster", random_color(rng, (0, 1), (0.1, 0.5), (0.3, 0.9)), None, 0.1)
    return [floor, ceiling, walls, walls, walls, accent]


def make_nyud_scene(rng: np.random.Generator) -> Scene:
    """A random furnished room.

    Args:
        rng: the image's generator (the scene is a deterministic function of its state).

    Returns:
        A :class:`Scene` with labels in NYUv2-13 order (:data:`NYU13_CLASSES`).
    """
    size = np.array([rng.uniform(3.2, 6.2), rng.uniform(3.8, 7.2), rng.uniform(2.4, 3.0)])
    b = Builder(rng, size)
    room_type = str(rng.choice(list(ROOM_TYPES)))
    plan = ["door"] * int(rng.random() < 0.5) + ["window"] * int(rng.integers(0, 3))
    plan += [k for k, p in ROOM_TYPES[room_type] if rng.random() < p]
    extras = [
        "bookshelf",
        "chair",
        "cabinet",
        "side_table",
        "armchair",
        "desk",
        "dresser",
        "wardrobe",
        "counter",
        "sideboard",
        "floor_object",
        "bed",
        "sofa",
        "tv_stand",
    ]
    plan += [str(k) for k in rng.choice(extras, size=int(rng.integers(2, 7)))]
    plan += ["picture"] * int(rng.integers(0, 5)) + ["wall_tv"] * int(rng.random() < 0.12)
    plan += ["wall_objects"] * int(rng.integers(1, 4)) + ["floor_object"] * int(rng.integers(4, 13))
    for kind in plan:
        PLACERS[kind](b)
    if rng.random() < 0.3:  # rug: floor class, its own instance
        f = Frame(np.array([rng.uniform(1, size[0] - 1), rng.uniform(1, size[1] - 1), 0.0]), rng.uniform(0, np.pi))
        col = random_color(rng, (0, 1), (0.2, 0.8), (0.2, 0.8))
        b.box(
            f,
            (0, 0, 0.005),
            (rng.uniform(1.2, 2.4), rng.uniform(0.8, 1.6), 0.01),
            FLOOR,
            b.instance(),
            make_material(rng, str(rng.choice(["stripes", "carpet"])), col, random_color(rng), 0.15),
        )
    lights = _ceiling_lights(b)
    level = rng.uniform(0.7, 1.3)
    return Scene(
        size=size,
        face_labels=[FLOOR, CEILING, WALL, WALL, WALL, WALL],
        face_instances=[1, 2, 3, 4, 5, 6],
        face_materials=_room_faces(rng, size),
        objects=b.objects,
        lights=lights,
        ambient=np.array([1.0, 0.97, 0.92]) * rng.uniform(0.15, 0.35) * level,
    )


def _ceiling_lights(b: Builder) -> list[Light]:
    rng, (W, D, H) = b.rng, b.size
    lights = []
    for _ in range(1 if rng.random() < 0.65 else 2):
        x, y = rng.uniform(0.8, W - 0.8), rng.uniform(0.8, D - 0.8)
        r = rng.uniform(0.12, 0.3)
        f = Frame(np.array([x, y, 0.0]), 0.0)
        m = make_material(rng, "plain", random_color(rng, (0.08, 0.15), (0.0, 0.2), (0.85, 1.0)), None, glow=0.8)
        b.cylinder(f, (0, 0, H - 0.04), r, 0.08, OBJECTS, b.instance(), m)
        warm = np.array([1.0, rng.uniform(0.85, 0.95), rng.uniform(0.65, 0.85)])
        lights.append(Light(np.array([x, y, H - 0.3]), warm * rng.uniform(0.8, 1.6), rng.uniform(2.0, 3.5)))
    return lights


def nyud_camera(
    rng: np.random.Generator, scene: Scene, intr: Intrinsics, blocked: list[tuple[np.ndarray, np.ndarray]]
) -> Camera:
    """A hand-held-Kinect-like camera: near a wall, 1.0-1.7 m high, looking slightly down, usually at an object.

    Args:
        rng: generator.
        scene: the room.
        intr: intrinsics.
        blocked: world bounds (2, 3) the camera must stay out of (furniture).
    """
    size = scene.size
    pos = np.array([size[0] / 2, size[1] / 2, 1.4])
    blocked_arr = np.asarray(blocked, dtype=np.float64).reshape(-1, 2, 3)
    for _ in range(50):
        wall = int(rng.choice(WALLS))
        length = wall_length(size, wall)
        f = wall_frame(size, wall, rng.uniform(0.4, length - 0.4), 0.0, gap=rng.uniform(0.25, 1.2))
        cand = f.origin + np.array([0.0, 0.0, rng.uniform(1.0, 1.7)])
        if (
            not blocked_arr.size
            or np.any((cand < blocked_arr[:, 0] - 0.55) | (cand > blocked_arr[:, 1] + 0.55), axis=1).all()
        ):
            pos = cand
            break
    inward = f.rotation @ np.array([0.0, 1.0, 0.0])
    yaw = float(np.arctan2(inward[1], inward[0]) + rng.uniform(-0.7, 0.7))
    pitch = float(np.deg2rad(rng.uniform(-24.0, -2.0)))
    targets = [o.shape.center for o in scene.objects if o.label not in (CEILING, WALL, WINDOW, PICTURE)]
    if targets and rng.random() < 0.85:  # people photograph things: aim at an object
        rel = targets[int(rng.integers(len(targets)))] - pos
        dist = float(np.hypot(rel[0], rel[1]))
        if dist > 1.0:
            yaw = float(np.arctan2(rel[1], rel[0]) + rng.normal(0.0, 0.2))
            pitch = float(np.clip(np.arctan2(rel[2], dist) + rng.normal(0.0, 0.08), np.deg2rad(-35), 0.0))
    roll = float(np.deg2rad(rng.normal(0.0, 2.0)))
    return Camera(intr, look_rotation(yaw, pitch, roll), pos)
