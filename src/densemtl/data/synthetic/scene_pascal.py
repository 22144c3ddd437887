"""Object-centred scenes for ``synth-pascal``: humanoids and the other VOC categories built from primitives.

A scene is a ground plane inside a large box (sky outdoors, walls indoors), one to three foreground
objects of the 20 PASCAL VOC classes (humanoid figures in about half of the images), some background
clutter (trees, buildings, rocks: semseg background but their own PASCAL-Context class), and a camera
framing the foreground. Every primitive also carries a PASCAL-Context (459-class) id for the
``LabelMap``, and humanoid primitives carry a PASCAL-Part part name (``head``, ``torso``, ``luarm`` ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from densemtl.data.pascal import VOC_CLASSES
from densemtl.data.pascal_classes import CONTEXT_CLASSES
from densemtl.data.synthetic.builder import Builder, Frame
from densemtl.data.synthetic.camera import Camera, Intrinsics, look_rotation
from densemtl.data.synthetic.geometry import rotation_x, rotation_y
from densemtl.data.synthetic.render import Scene
from densemtl.data.synthetic.shading import Light
from densemtl.data.synthetic.textures import Material, make_material, random_color

__all__ = ["PART_NAMES", "PascalScene", "context_id", "make_pascal_scene", "pascal_camera"]

PART_NAMES: tuple[str, ...] = (
    "head", "hair", "neck", "torso", "luarm", "ruarm", "llarm", "rlarm", "lhand", "rhand",
    "luleg", "ruleg", "llleg", "rlleg", "lfoot", "rfoot",
)  # fmt: skip
"""PASCAL-Part person part names used by the humanoids; ``SceneObject.part`` is index + 1 (0 = none)."""

VOC = {name: i for i, name in enumerate(VOC_CLASSES)}


def context_id(name: str) -> int:
    """1-based PASCAL-Context ``LabelMap`` id of a class name (``diningtable`` is ``table`` there)."""
    name = {"diningtable": "table"}.get(name, name)
    if name not in CONTEXT_CLASSES:
        raise ValueError(f"{name!r} is not a PASCAL-Context class")
    return CONTEXT_CLASSES.index(name) + 1


@dataclass
class PascalScene:
    """A scene plus what the PASCAL layout needs beyond the render.

    Attributes:
        scene: the geometry, labels (VOC ids) and lights.
        context: instance id -> PASCAL-Context class id (room faces included).
        unannotated: instance ids of persons whose parts are deliberately not annotated.
        centre: (3,) point the camera should look at.
        extent: rough size in metres of the foreground group.
    """

    scene: Scene
    context: dict[int, int]
    unannotated: set[int]
    centre: np.ndarray
    extent: float


class _PascalBuilder(Builder):
    """A :class:`Builder` that also records the PASCAL-Context class of each instance."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.context: dict[int, int] = {}

    def new(self, context_name: str) -> int:
        inst = self.instance()
        self.context[inst] = context_id(context_name)
        return inst

    def segment(self, f: Frame, p0, p1, radius: float, label: int, inst: int, m: Material, part: int = 0) -> None:
        """A capped cylinder between local points ``p0`` and ``p1``."""
        p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
        axis = p1 - p0
        length = float(np.linalg.norm(axis))
        axis /= max(length, 1e-9)
        helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(helper, axis)
        u /= np.linalg.norm(u)
        rot = np.stack([u, np.cross(axis, u), axis], axis=1)
        self.cylinder(f, tuple((p0 + p1) / 2), radius, length, label, inst, m, rot, part)


def _part(name: str) -> int:
    return PART_NAMES.index(name) + 1


def _skin(rng: np.random.Generator) -> Material:
    return make_material(rng, "plain", random_color(rng, (0.02, 0.09), (0.2, 0.6), (0.3, 0.95)))


def _cloth(rng: np.random.Generator) -> Material:
    col = random_color(rng, (0, 1), (0.0, 0.9), (0.1, 0.9))
    fam = str(rng.choice(["fabric", "fabric", "stripes", "checker"]))
    return make_material(rng, fam, col, random_color(rng), rng.uniform(0.04, 0.15))


def person(b: _PascalBuilder, f: Frame) -> None:
    """A humanoid (VOC person) with PASCAL-Part parts; random height, clothes and pose."""
    rng, inst, label = b.rng, b.new("person"), VOC["person"]
    s = rng.uniform(1.5, 1.9) / 1.75 if rng.random() < 0.8 else rng.uniform(1.0, 1.4) / 1.75
    skin, shirt, pants, hair = _skin(rng), _cloth(rng), _cloth(rng), _cloth(rng)
    hair_m = make_material(rng, "plain", random_color(rng, (0.02, 0.12), (0.1, 0.8), (0.02, 0.6)))
    shoe = make_material(rng, "plain", random_color(rng, (0, 1), (0, 0.5), (0.02, 0.5)))
    del hair
    hip_z, shoulder_z = 0.95 * s, 1.45 * s
    stride = rng.uniform(-0.5, 0.5)
    leg1, leg2 = 0.45 * s, 0.45 * s
    ankles = {}
    for side, name in ((-1, "l"), (1, "r")):
        hip = np.array([side * 0.1 * s, 0.0, hip_z])
        flex = stride * side + rng.normal(0, 0.1)
        knee = hip + leg1 * np.array([0.0, np.sin(flex), -np.cos(flex)])
        bend = rng.uniform(0.0, 0.5)
        ankle = knee + leg2 * np.array([0.0, np.sin(flex - bend), -np.cos(flex - bend)])
        ankles[name] = (hip, knee, ankle)
    lift = min(a[2][2] for a in ankles.values()) - 0.07 * s
    drop = np.array([0.0, 0.0, lift])
    for name, (hip, knee, ankle) in ankles.items():
        hip, knee, ankle = hip - drop, knee - drop, ankle - drop
        b.segment(f, hip, knee, 0.075 * s, label, inst, pants, _part(f"{name}uleg"))
        b.segment(f, knee, ankle, 0.055 * s, label, inst, pants, _part(f"{name}lleg"))
        b.box(
            f,
            tuple(ankle + np.array([0, 0.06 * s, -0.035 * s])),
            (0.09 * s, 0.25 * s, 0.07 * s),
            label,
            inst,
            shoe,
            part=_part(f"{name}foot"),
        )
    hip_z, shoulder_z = hip_z - lift, shoulder_z - lift
    b.ellipsoid(
        f,
        (0, 0, (hip_z + shoulder_z) / 2 + 0.02 * s),
        (0.19 * s, 0.12 * s, (shoulder_z - hip_z) / 2 + 0.06 * s),
        label,
        inst,
        shirt,
        part=_part("torso"),
    )
    b.segment(f, (0, 0, shoulder_z), (0, 0, shoulder_z + 0.1 * s), 0.05 * s, label, inst, skin, _part("neck"))
    head_z = shoulder_z + 0.21 * s
    b.ellipsoid(f, (0, 0.01 * s, head_z), (0.08 * s, 0.09 * s, 0.11 * s), label, inst, skin, part=_part("head"))
    if rng.random() < 0.85:
        b.ellipsoid(
            f,
            (0, -0.012 * s, head_z + 0.03 * s),
            (0.085 * s, 0.09 * s, 0.095 * s),
            label,
            inst,
            hair_m,
            part=_part("hair"),
        )
    for side, name in ((-1, "l"), (1, "r")):
        shoulder = np.array([side * 0.2 * s, 0.0, shoulder_z - 0.05 * s])
        abd, flex = rng.uniform(0.05, 0.8), rng.uniform(-0.6, 1.4)
        d1 = np.array([side * np.sin(abd), np.sin(flex) * np.cos(abd), -np.cos(flex) * np.cos(abd)])
        elbow = shoulder + 0.3 * s * d1
        bend = rng.uniform(0.0, 1.6)
        d2 = d1 * np.cos(bend) + np.array([0.0, 1.0, 0.3]) * np.sin(bend)
        d2 /= np.linalg.norm(d2)
        wrist = elbow + 0.26 * s * d2
        b.segment(f, shoulder, elbow, 0.048 * s, label, inst, shirt, _part(f"{name}uarm"))
        b.segment(f, elbow, wrist, 0.04 * s, label, inst, skin if rng.random() < 0.4 else shirt, _part(f"{name}larm"))
        b.ellipsoid(
            f,
            tuple(wrist + 0.05 * s * d2),
            (0.04 * s, 0.04 * s, 0.05 * s),
            label,
            inst,
            skin,
            part=_part(f"{name}hand"),
        )


def _animal_material(rng: np.random.Generator, kind: str) -> Material:
    if kind == "sheep":
        return make_material(rng, "carpet", random_color(rng, (0.05, 0.15), (0.0, 0.2), (0.6, 0.95)), None, 0.1)
    if kind == "cow" and rng.random() < 0.5:
        return make_material(rng, "checker", np.full(3, 0.8), np.full(3, 0.03), rng.uniform(0.3, 0.6))
    if kind == "cat" and rng.random() < 0.4:
        col = random_color(rng, (0.04, 0.1), (0.3, 0.8), (0.3, 0.9))
        return make_material(rng, "stripes", col, col * 0.4, rng.uniform(0.04, 0.08))
    return make_material(rng, "fabric", random_color(rng, (0.02, 0.12), (0.0, 0.8), (0.03, 0.8)), None, 0.0)


def quadruped(kind: str) -> Callable[[_PascalBuilder, Frame], None]:
    """Cat, dog, cow, horse, sheep: ellipsoid body and head, cylinder legs, neck and tail."""
    length = {"cat": 0.45, "dog": 0.75, "cow": 2.0, "horse": 2.1, "sheep": 1.1}[kind]

    def build(b: _PascalBuilder, f: Frame) -> None:
        rng, inst, label = b.rng, b.new(kind), VOC[kind]
        L = length * rng.uniform(0.8, 1.2)
        m = _animal_material(rng, kind)
        leg_h = L * {"cat": 0.35, "dog": 0.45, "cow": 0.42, "horse": 0.55, "sheep": 0.35}[kind]
        body_r = (L * 0.22 if kind != "sheep" else L * 0.3, L / 2, L * 0.2 if kind != "sheep" else L * 0.28)
        body_z = leg_h + body_r[2] * 0.7
        b.ellipsoid(f, (0, 0, body_z), body_r, label, inst, m)
        for sx in (-1, 1):
            for sy in (-1, 1):
                top = (sx * body_r[0] * 0.5, sy * L * 0.33, body_z)
                swing = rng.normal(0, 0.15)
                b.segment(f, top, (top[0], top[1] + leg_h * np.sin(swing), 0.0), L * 0.045, label, inst, m)
        neck_top = np.array([0, L * 0.62, body_z + L * (0.35 if kind == "horse" else 0.18)])
        b.segment(f, (0, L * 0.4, body_z + body_r[2] * 0.3), neck_top, L * 0.08, label, inst, m)
        hr = L * (0.13 if kind in ("cat", "dog") else 0.1)
        b.ellipsoid(
            f,
            tuple(neck_top + np.array([0, hr * 0.6, 0])),
            (hr * 0.8, hr * 1.4, hr),
            label,
            inst,
            m,
            rotation_x(-0.4 if kind == "horse" else 0.0),
        )
        if kind in ("cat", "dog"):
            for sx in (-1, 1):
                b.ellipsoid(
                    f,
                    tuple(neck_top + np.array([sx * hr * 0.55, 0, hr * 0.9])),
                    (hr * 0.25, hr * 0.1, hr * 0.4),
                    label,
                    inst,
                    m,
                )
        tail = np.array([0, -L * 0.5, body_z + body_r[2] * 0.3])
        b.segment(f, tail, tail + L * np.array([0, -0.3, 0.25 * rng.uniform(-1, 1)]), L * 0.03, label, inst, m)

    return build


def bird(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("bird"), VOC["bird"]
    L = rng.uniform(0.15, 0.5)
    m = make_material(rng, "fabric", random_color(rng), None, 0.0)
    z = L * 0.45
    b.ellipsoid(f, (0, 0, z), (L * 0.22, L * 0.5, L * 0.25), label, inst, m, rotation_x(0.3))
    b.ellipsoid(f, (0, L * 0.42, z + L * 0.3), (L * 0.14, L * 0.14, L * 0.14), label, inst, m)
    beak = make_material(rng, "plain", random_color(rng, (0.05, 0.15), (0.5, 1.0), (0.5, 1.0)))
    b.segment(f, (0, L * 0.52, z + L * 0.3), (0, L * 0.7, z + L * 0.28), L * 0.03, label, inst, beak)
    for sx in (-1, 1):
        b.segment(f, (sx * L * 0.06, 0, z - L * 0.2), (sx * L * 0.06, 0.02, 0.0), L * 0.015, label, inst, beak)
        if rng.random() < 0.5:  # spread wing
            b.box(f, (sx * L * 0.5, 0, z + L * 0.1), (L * 0.8, L * 0.35, L * 0.03), label, inst, m)


def _wheel(b: _PascalBuilder, f: Frame, centre, radius: float, width: float, label: int, inst: int) -> None:
    tyre = make_material(b.rng, "plain", np.full(3, b.rng.uniform(0.01, 0.05)))
    b.cylinder(f, centre, radius, width, label, inst, tyre, rotation_y(np.pi / 2))


def car(kind: str) -> Callable[[_PascalBuilder, Frame], None]:
    """Car or bus: a body box, a cabin or window band, four wheels."""

    def build(b: _PascalBuilder, f: Frame) -> None:
        rng, inst, label = b.rng, b.new(kind), VOC[kind]
        paint = random_color(rng, (0, 1), (0.0, 0.9), (0.1, 0.9))
        if kind == "car":
            L, W, H = rng.uniform(3.6, 4.8), rng.uniform(1.6, 1.9), rng.uniform(0.6, 0.8)
            b.box(f, (0, 0, 0.3 + H / 2), (W, L, H), label, inst, make_material(rng, "plain", paint))
            glass = make_material(rng, "stripes", np.full(3, 0.05), paint, 0.4)
            b.box(f, (0, -0.2, 0.3 + H + 0.27), (W * 0.88, L * 0.5, 0.55), label, inst, glass)
            r = 0.32
        else:
            L, W, H = rng.uniform(9, 12), 2.5, rng.uniform(2.8, 3.4)
            m = make_material(rng, "stripes", paint, np.full(3, 0.06), 1.2)
            b.box(f, (0, 0, 0.35 + H / 2), (W, L, H), label, inst, m)
            r = 0.5
        for sx in (-1, 1):
            for sy in (-1, 1):
                _wheel(b, f, (sx * (W / 2 - 0.1), sy * L * 0.32, r), r, 0.22, label, inst)

    return build


def train(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("train"), VOC["train"]
    paint = random_color(rng, (0, 1), (0.2, 0.9), (0.2, 0.9))
    m = make_material(rng, "stripes", paint, np.full(3, 0.08), 1.5)
    for i in range(int(rng.integers(1, 4))):
        b.box(f, (0, -i * 16.0, 2.1), (3.0, 15.5, 3.6), label, inst, m)
        b.cylinder(
            f,
            (0, -i * 16.0, 3.9),
            1.3,
            15.0,
            label,
            inst,
            make_material(rng, "plain", paint * 0.7),
            rotation_x(np.pi / 2),
        )


def aeroplane(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("aeroplane"), VOC["aeroplane"]
    L = rng.uniform(10, 30)
    m = make_material(rng, "plain", random_color(rng, (0, 1), (0, 0.3), (0.5, 0.95)))
    z = L * 0.12 if rng.random() < 0.6 else L * rng.uniform(0.5, 1.5)
    b.ellipsoid(f, (0, 0, z), (L * 0.06, L / 2, L * 0.06), label, inst, m)
    b.box(f, (0, L * 0.05, z - L * 0.02), (L * 0.95, L * 0.12, L * 0.012), label, inst, m)
    b.box(f, (0, -L * 0.43, z + L * 0.08), (L * 0.012, L * 0.1, L * 0.16), label, inst, m)
    b.box(f, (0, -L * 0.43, z + L * 0.02), (L * 0.3, L * 0.07, L * 0.01), label, inst, m)


def boat(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("boat"), VOC["boat"]
    L = rng.uniform(3, 9)
    hull = make_material(rng, "plain", random_color(rng))
    b.ellipsoid(f, (0, 0, 0.1), (L * 0.18, L / 2, L * 0.12), label, inst, hull)
    b.box(
        f,
        (0, -L * 0.1, L * 0.15),
        (L * 0.2, L * 0.3, L * 0.12),
        label,
        inst,
        make_material(rng, "plain", random_color(rng)),
    )
    if rng.random() < 0.5:
        b.segment(f, (0, L * 0.1, 0.1), (0, L * 0.1, L * 0.8), L * 0.01, label, inst, hull)


def cycle(kind: str) -> Callable[[_PascalBuilder, Frame], None]:
    """Bicycle or motorbike: two wheels, frame bars, seat, handlebar."""

    def build(b: _PascalBuilder, f: Frame) -> None:
        rng, inst, label = b.rng, b.new(kind), VOC[kind]
        r, w = (0.34, 0.04) if kind == "bicycle" else (0.32, 0.12)
        frame = make_material(rng, "plain", random_color(rng))
        front, back = np.array([0, 0.55, r]), np.array([0, -0.55, r])
        for c in (front, back):
            _wheel(b, f, tuple(c), r, w, label, inst)
        seat, bar = np.array([0, -0.2, 0.95]), np.array([0, 0.45, 1.0])
        crank = np.array([0, 0.0, 0.3])
        if kind == "bicycle":
            for p, q in ((back, seat), (seat, crank), (crank, back), (seat, bar), (crank, bar), (bar, front)):
                b.segment(f, p, q, 0.018, label, inst, frame)
        else:
            b.ellipsoid(f, (0, 0.05, 0.65), (0.22, 0.55, 0.25), label, inst, frame)
            b.segment(f, bar, front, 0.03, label, inst, frame)
        b.box(
            f,
            tuple(seat + np.array([0, 0, 0.03])),
            (0.12 if kind == "bicycle" else 0.3, 0.25, 0.05),
            label,
            inst,
            make_material(rng, "plain", np.full(3, 0.03)),
        )
        b.segment(f, bar + np.array([-0.3, 0, 0]), bar + np.array([0.3, 0, 0]), 0.015, label, inst, frame)

    return build


def bottle(b: _PascalBuilder, f: Frame) -> None:
    rng, label = b.rng, VOC["bottle"]
    for i in range(int(rng.integers(1, 4))):
        inst = b.new("bottle")
        r, h = rng.uniform(0.03, 0.045), rng.uniform(0.2, 0.32)
        m = make_material(rng, "plain", random_color(rng, (0.1, 0.45), (0.2, 0.9), (0.05, 0.7)))
        g = f.moved((i * 0.12 - 0.12, rng.uniform(-0.05, 0.05), 0))
        b.cylinder(g, (0, 0, h * 0.35), r, h * 0.7, label, inst, m)
        b.cylinder(g, (0, 0, h * 0.85), r * 0.35, h * 0.3, label, inst, m)


def chair(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("chair"), VOC["chair"]
    m = make_material(rng, "wood", random_color(rng, (0.03, 0.11), (0.3, 0.8), (0.2, 0.8)), None, 0.1)
    s, h = 0.45, 0.45
    b.box(f, (0, 0, h), (s, s, 0.04), label, inst, m)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.box(f, (sx * 0.2, sy * 0.2, h / 2), (0.035, 0.035, h), label, inst, m)
    b.box(f, (0, -0.21, h + 0.25), (s, 0.035, 0.5), label, inst, m)


def sofa(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("sofa"), VOC["sofa"]
    m = make_material(rng, "fabric", random_color(rng), None, 0.0)
    w = rng.uniform(1.4, 2.2)
    b.box(f, (0, 0, 0.22), (w, 0.85, 0.44), label, inst, m)
    b.box(f, (0, -0.33, 0.6), (w, 0.2, 0.45), label, inst, m)
    for sx in (-1, 1):
        b.box(f, (sx * (w / 2 - 0.09), 0, 0.33), (0.18, 0.85, 0.66), label, inst, m)


def diningtable(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("diningtable"), VOC["diningtable"]
    m = make_material(rng, "wood", random_color(rng, (0.03, 0.11), (0.3, 0.8), (0.2, 0.8)), None, 0.1)
    w, d = rng.uniform(1.0, 1.8), rng.uniform(0.7, 1.0)
    b.box(f, (0, 0, 0.73), (w, d, 0.04), label, inst, m)
    for sx in (-1, 1):
        for sy in (-1, 1):
            b.box(f, (sx * (w / 2 - 0.05), sy * (d / 2 - 0.05), 0.36), (0.05, 0.05, 0.72), label, inst, m)
    if rng.random() < 0.5:
        bottle(b, f.moved((rng.uniform(-0.2, 0.2), 0, 0.75)))


def pottedplant(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("pottedplant"), VOC["pottedplant"]
    r, h = rng.uniform(0.1, 0.25), rng.uniform(0.15, 0.4)
    b.cylinder(f, (0, 0, h / 2), r, h, label, inst, make_material(rng, "plain", random_color(rng)))
    leaf = make_material(rng, "fabric", random_color(rng, (0.2, 0.4), (0.4, 0.9), (0.15, 0.6)), None, 0.0)
    for _ in range(int(rng.integers(1, 4))):
        rr = rng.uniform(0.6, 1.5) * r
        b.ellipsoid(
            f,
            (rng.normal(0, r * 0.4), rng.normal(0, r * 0.4), h + rr * rng.uniform(0.6, 1.4)),
            (rr, rr, rr * 1.3),
            label,
            inst,
            leaf,
        )


def tvmonitor(b: _PascalBuilder, f: Frame) -> None:
    rng, inst, label = b.rng, b.new("tvmonitor"), VOC["tvmonitor"]
    w = rng.uniform(0.4, 1.2)
    h = w * 0.6
    ext = np.array([w, 0.05, h]) / 2
    on = rng.random() < 0.5
    screen = make_material(
        rng,
        "screen",
        random_color(rng) if on else np.full(3, 0.02),
        np.full(3, rng.uniform(0.02, 0.4)),
        0.0,
        ext,
        glow=0.6 if on else 0.0,
    )
    stand = make_material(rng, "plain", np.full(3, rng.uniform(0.02, 0.4)))
    b.box(f, (0, 0, 0.02), (0.3, 0.2, 0.04), label, inst, stand)
    b.box(f, (0, -0.02, 0.12), (0.05, 0.04, 0.2), label, inst, stand)
    b.box(f, (0, 0, 0.2 + h / 2), (w, 0.05, h), label, inst, screen)


BUILDERS: dict[str, Callable[[_PascalBuilder, Frame], None]] = {
    "aeroplane": aeroplane,
    "bicycle": cycle("bicycle"),
    "bird": bird,
    "boat": boat,
    "bottle": bottle,
    "bus": car("bus"),
    "car": car("car"),
    "cat": quadruped("cat"),
    "chair": chair,
    "cow": quadruped("cow"),
    "diningtable": diningtable,
    "dog": quadruped("dog"),
    "horse": quadruped("horse"),
    "motorbike": cycle("motorbike"),
    "person": person,
    "pottedplant": pottedplant,
    "sheep": quadruped("sheep"),
    "sofa": sofa,
    "train": train,
    "tvmonitor": tvmonitor,
}
"""VOC class name -> builder of one instance (or a small group, for bottles) at a floor frame."""

SIZES = {
    "aeroplane": 20.0,
    "bus": 11.0,
    "train": 16.0,
    "boat": 6.0,
    "car": 4.5,
    "cow": 2.2,
    "horse": 2.4,
    "bicycle": 1.8,
    "motorbike": 2.0,
    "sheep": 1.3,
    "sofa": 2.0,
    "diningtable": 1.6,
    "person": 1.8,
    "dog": 0.9,
    "chair": 1.0,
    "tvmonitor": 1.0,
    "pottedplant": 0.8,
    "cat": 0.6,
    "bird": 0.5,
    "bottle": 0.45,
}
"""Rough size in metres used for spacing and framing."""

INDOOR = {"bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor", "cat"}


def _background_clutter(b: _PascalBuilder, centre: np.ndarray, extent: float, outdoor: bool) -> None:
    rng = b.rng
    for _ in range(int(rng.integers(0, 5))):
        ang, dist = rng.uniform(0, 2 * np.pi), extent * rng.uniform(1.5, 4.0) + 2.0
        f = Frame(centre + np.array([np.cos(ang) * dist, np.sin(ang) * dist, 0.0]), rng.uniform(0, np.pi))
        kind = rng.choice(["tree", "building", "rock"] if outdoor else ["table", "plant", "light"])
        inst = b.new(str(kind))
        col = random_color(rng)
        if kind == "tree":
            h = rng.uniform(3, 8)
            b.cylinder(f, (0, 0, h / 3), 0.2, h * 2 / 3, 0, inst, make_material(rng, "wood", col * 0.3, None, 0.2))
            leaf = make_material(rng, "fabric", random_color(rng, (0.2, 0.4), (0.4, 0.9), (0.1, 0.5)), None, 0.0)
            b.ellipsoid(f, (0, 0, h * 0.75), (h / 4, h / 4, h / 3), 0, inst, leaf)
        elif kind == "building":
            dims = (rng.uniform(4, 15), rng.uniform(4, 15), rng.uniform(4, 15))
            b.box(f, (0, 0, dims[2] / 2), dims, 0, inst, make_material(rng, "tiles", col, col * 0.5, 1.5))
        elif kind == "rock":
            r = rng.uniform(0.3, 1.5)
            b.ellipsoid(f, (0, 0, r * 0.3), (r, r * 0.8, r * 0.6), 0, inst, make_material(rng, "carpet", col, None))
        elif kind == "table":
            b.box(f, (0, 0, 0.4), (1.0, 0.6, 0.8), 0, inst, make_material(rng, "wood", col, None, 0.1))
        elif kind == "plant":
            b.ellipsoid(f, (0, 0, 0.5), (0.3, 0.3, 0.5), 0, inst, make_material(rng, "fabric", col, None, 0.0))
        else:
            b.cylinder(f, (0, 0, 0.8), 0.03, 1.6, 0, inst, make_material(rng, "plain", col))


def make_pascal_scene(rng: np.random.Generator) -> PascalScene:
    """A random object-centred scene (labels are VOC ids; the environment is background 0).

    Args:
        rng: the image's generator.
    """
    names = list(BUILDERS)
    main = "person" if rng.random() < 0.35 else str(rng.choice(names))
    group = [main]
    if main != "person" and rng.random() < 0.4:
        group.append("person")
    for _ in range(int(rng.integers(0, 3))):
        group.append(main if rng.random() < 0.5 else str(rng.choice(names)))
    outdoor = not all(g in INDOOR or g == "person" for g in group) or rng.random() < 0.3
    extent = max(SIZES[g] for g in group) * (1 + 0.3 * (len(group) - 1))
    half = max(30.0, extent * 6) if outdoor else rng.uniform(4.0, 6.0)
    size = np.array([2 * half, 2 * half, half if outdoor else rng.uniform(2.6, 3.5)])
    centre = np.array([half, half, 0.0])
    b = _PascalBuilder(rng, size)
    faces = list(range(1, 7))
    if outdoor:
        ground_name = str(rng.choice(["grass", "road", "ground", "sand", "water" if "boat" in group else "grass"]))
        if "boat" in group:
            ground_name = "water"
        face_names = [ground_name, "sky", "sky", "sky", "sky", "sky"]
    else:
        face_names = ["floor", "ceiling", "wall", "wall", "wall", "wall"]
    b.context.update({i: context_id(n) for i, n in zip(faces, face_names)})
    unannotated: set[int] = set()
    for i, name in enumerate(group):
        offset = np.array([(i - (len(group) - 1) / 2) * SIZES[name] * rng.uniform(0.7, 1.2), rng.normal(0, 0.3), 0.0])
        f = Frame(centre + offset, float(rng.uniform(-np.pi, np.pi)))
        BUILDERS[name](b, f)
        if name == "person" and rng.random() < 0.1:
            unannotated.add(b._next - 1)
    _background_clutter(b, centre, extent, outdoor)
    mats = _environment_materials(rng, face_names)
    lights, ambient = _lights(rng, size, centre, outdoor)
    scene = Scene(size, [0] * 6, faces, mats, b.objects, lights, ambient)
    look = centre + np.array([0.0, 0.0, min(extent * 0.3, 3.0)])
    return PascalScene(scene, b.context, unannotated, look, extent)


def _environment_materials(rng: np.random.Generator, face_names: list[str]) -> list[Material]:
    out = []
    sky = make_material(rng, "plain", random_color(rng, (0.5, 0.65), (0.05, 0.6), (0.6, 1.0)), glow=1.5)
    wall = make_material(rng, "plaster", random_color(rng, (0, 1), (0, 0.3), (0.4, 0.95)), None, 0.1)
    for name in face_names:
        if name == "sky":
            out.append(sky)
        elif name in ("wall", "ceiling"):
            out.append(wall)
        elif name == "grass":
            out.append(make_material(rng, "carpet", random_color(rng, (0.2, 0.35), (0.4, 0.9), (0.2, 0.6)), None))
        elif name == "water":
            out.append(make_material(rng, "plain", random_color(rng, (0.5, 0.62), (0.3, 0.9), (0.2, 0.7))))
        elif name == "floor":
            col = random_color(rng, (0.04, 0.11), (0.2, 0.7), (0.3, 0.8))
            out.append(make_material(rng, "planks", col, col * 0.6, 0.15))
        else:
            col = random_color(rng, (0.05, 0.15), (0.0, 0.4), (0.2, 0.7))
            out.append(make_material(rng, "carpet", col, None))
    return out


def _lights(rng: np.random.Generator, size: np.ndarray, centre: np.ndarray, outdoor: bool):
    if outdoor:
        ang, elev = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.3)
        dist = size[0] * 0.45
        sun = centre + dist * np.array([np.cos(ang) * np.cos(elev), np.sin(ang) * np.cos(elev), np.sin(elev)])
        sun[2] = min(sun[2], size[2] - 0.5)
        return [Light(sun, np.array([1.0, 0.97, 0.9]) * rng.uniform(1.5, 3.0), 1e6)], np.full(3, rng.uniform(0.3, 0.6))
    lights = [
        Light(
            centre + np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), size[2] - 0.3 - centre[2]]),
            np.array([1.0, 0.92, 0.8]) * rng.uniform(0.8, 1.6),
            3.0,
        )
        for _ in range(int(rng.integers(1, 3)))
    ]
    return lights, np.full(3, rng.uniform(0.2, 0.4))


def pascal_camera(rng: np.random.Generator, ps: PascalScene, size: tuple[int, int]) -> Camera:
    """A photographer's camera framing the foreground: 45-65 degree horizontal field of view.

    Args:
        rng: generator.
        ps: the scene.
        size: (H, W) image size.
    """
    height, width = size
    hfov = np.deg2rad(rng.uniform(45.0, 65.0))
    fx = width / 2 / np.tan(hfov / 2)
    intr = Intrinsics(fx, fx, (width - 1) / 2, (height - 1) / 2, height, width)
    vfov = 2 * np.arctan(height / 2 / fx)
    dist = ps.extent / 2 / np.tan(vfov / 2) * rng.uniform(0.7, 1.4) + 0.3
    room = ps.scene.size
    dist = min(dist, 0.45 * min(room[0], room[1]))
    ang = rng.uniform(0, 2 * np.pi)
    cam_h = float(np.clip(ps.centre[2] + rng.normal(0.3, 0.5) * min(ps.extent, 2.0), 0.3, room[2] - 0.2))
    pos = ps.centre + np.array([np.cos(ang) * dist, np.sin(ang) * dist, 0.0])
    pos[2] = cam_h
    rel = ps.centre - pos
    yaw = float(np.arctan2(rel[1], rel[0]) + rng.normal(0, 0.08))
    pitch = float(np.arctan2(rel[2], np.hypot(rel[0], rel[1])) + rng.normal(0, 0.05))
    return Camera(intr, look_rotation(yaw, pitch, float(rng.normal(0, 0.03))), pos)
