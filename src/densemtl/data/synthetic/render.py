"""Render a :class:`Scene` into every task at once: RGB, labels, z-depth, normals, boundaries.

All outputs come from one ray cast, so they are geometrically consistent: the normal of a pixel is the
normal of the surface whose distance is its depth, and its class is that surface's class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from densemtl.data.synthetic.camera import Camera
from densemtl.data.synthetic.geometry import ROOM_FACE_NORMALS, Shape, intersect_room
from densemtl.data.synthetic.raycast import closest_hit_image, group_shapes
from densemtl.data.synthetic.shading import Light, expose, sensor_noise, shade
from densemtl.data.synthetic.textures import Material, albedo, emission

__all__ = ["Render", "Scene", "SceneObject", "boundaries", "render"]


@dataclass(frozen=True)
class SceneObject:
    """One primitive of a scene with its labels.

    Attributes:
        shape: the primitive.
        label: semantic class id (dataset-specific, 0-based).
        instance: instance id (> 0); boundaries are drawn where it changes.
        material: appearance.
        part: sub-label (human part class, 0 = none).
    """

    shape: Shape
    label: int
    instance: int
    material: Material
    part: int = 0


@dataclass
class Scene:
    """A closed box "room" (the background) plus primitives and lights.

    Attributes:
        size: (3,) room extents (W, D, H) in metres; the room spans [0, W] x [0, D] x [0, H].
        face_labels: class id of the 6 room faces (order of ``geometry.intersect_room``).
        face_instances: instance id of the 6 faces.
        face_materials: material of the 6 faces (texture coordinates are world coordinates).
        objects: primitives inside the room.
        lights: point lights inside the room.
        ambient: (3,) ambient irradiance.
    """

    size: np.ndarray
    face_labels: list[int]
    face_instances: list[int]
    face_materials: list[Material]
    objects: list[SceneObject] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)
    ambient: np.ndarray = field(default_factory=lambda: np.full(3, 0.3))


@dataclass
class Render:
    """Everything rendered from one camera, all (H, W)-aligned.

    Attributes:
        rgb: uint8 (H, W, 3).
        label: int64 (H, W) semantic class ids.
        instance: int64 (H, W) instance ids.
        part: int64 (H, W) part ids (0 = none).
        depth: float32 (H, W) z-depth in metres (along the optical axis, not the ray length).
        normals: float32 (H, W, 3) unit normals in the camera frame (x right, y down, z forward), facing the
            camera (n . ray < 0).
        edge: uint8 (H, W) in {0, 1}: instance boundaries (see :func:`boundaries`).
        albedo: float32 (H, W) albedo luminance (for Kinect-like holes on dark surfaces).
        grazing: float32 (H, W) |cos| between the viewing ray and the normal.
    """

    rgb: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    part: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    edge: np.ndarray
    albedo: np.ndarray
    grazing: np.ndarray


def boundaries(ids: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a label map: a pixel is marked where its id differs from its east or south neighbour.

    Args:
        ids: (H, W) integer labels (instances).

    Returns:
        uint8 (H, W) in {0, 1}.
    """
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge.astype(np.uint8)


def _group(ids: np.ndarray, count: int) -> list[np.ndarray]:
    """Pixel indices per id 0..count-1, from one stable sort."""
    order = np.argsort(ids.astype(np.int16) if count < 2**15 else ids, kind="stable")  # int16: radix sort
    splits = np.cumsum(np.bincount(ids, minlength=count))[:-1]
    return np.split(order, splits)


def render(
    scene: Scene,
    camera: Camera,
    rng: np.random.Generator,
    brightness: float = 0.48,
    noise_sigma: float = 0.01,
    shadows: bool = True,
    group: bool = False,
) -> Render:
    """Ray cast ``scene`` from ``camera``.

    Args:
        scene: the scene.
        camera: a camera inside the room.
        rng: generator for sensor noise.
        brightness: target mean of the display image in [0, 1].
        noise_sigma: sensor noise at mid grey in [0, 1] units.
        shadows: trace shadow rays.
        group: cull whole objects before their primitives in the shadow queries (``raycast.group_shapes``).
    """
    height, width = camera.intr.height, camera.intr.width
    origin = np.asarray(camera.position, dtype=np.float64)
    dirs = camera.world_directions()
    t, face = intersect_room(np.asarray(scene.size, dtype=np.float64), origin, dirs)
    index = np.full(len(dirs), -1, dtype=np.int64)
    shapes = [o.shape for o in scene.objects]
    groups = group_shapes(shapes, [o.instance for o in scene.objects]) if group else None
    closest_hit_image(
        shapes, camera, dirs.reshape(height, width, 3), t.reshape(height, width), index.reshape(height, width)
    )
    normals = ROOM_FACE_NORMALS[face]

    n_obj = len(scene.objects)
    surface = np.where(index >= 0, index, n_obj + face)
    obj_label = np.array([o.label for o in scene.objects] + list(scene.face_labels), dtype=np.int64)
    obj_inst = np.array([o.instance for o in scene.objects] + list(scene.face_instances), dtype=np.int64)
    obj_part = np.array([o.part for o in scene.objects] + [0] * 6, dtype=np.int64)

    points = origin + t[:, None] * dirs
    alb = np.zeros((len(dirs), 3))
    emit = np.zeros((len(dirs), 3))
    materials = [o.material for o in scene.objects] + list(scene.face_materials)
    for sid, pix in enumerate(_group(surface, n_obj + 6)):
        if pix.size == 0:
            continue
        if sid < n_obj:
            shape = scene.objects[sid].shape
            local = shape.to_local(points[pix])
            normals[pix] = shape.to_world(shape.local_normal(local))
        else:
            local = points[pix]
        alb[pix] = albedo(materials[sid], local)
        if materials[sid].glow > 0:
            emit[pix] = emission(materials[sid], local)
    facing = np.einsum("ij,ij->i", normals, dirs)
    normals = np.where((facing > 0)[:, None], -normals, normals)

    radiance = shade(
        points, normals, alb, emit, scene.lights, scene.ambient, shapes, shadows, groups, (surface, (height, width))
    )
    rgb = sensor_noise(expose(radiance.reshape(height, width, 3), brightness), rng, noise_sigma)

    instance = obj_inst[surface].reshape(height, width)
    return Render(
        rgb=rgb,
        label=obj_label[surface].reshape(height, width),
        instance=instance,
        part=obj_part[surface].reshape(height, width),
        depth=t.reshape(height, width).astype(np.float32),
        normals=camera.to_camera(normals).reshape(height, width, 3).astype(np.float32),
        edge=boundaries(instance),
        albedo=(alb @ np.array([0.2126, 0.7152, 0.0722])).reshape(height, width).astype(np.float32),
        grazing=(np.abs(facing) / np.sqrt(np.einsum("ij,ij->i", dirs, dirs))).reshape(height, width).astype(np.float32),
    )
