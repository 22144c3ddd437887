"""Procedural synthetic multi-task datasets (``synth-nyud``, ``synth-pascal``) written in the standard layouts.

Scenes are built from analytic primitives and ray cast in numpy, so RGB, labels, depth, normals and
boundaries all come from the same 3D geometry. Modules, one job each:

* ``camera``: NYU-like pinhole camera, ray generation, back-projection.
* ``geometry``: ray-primitive intersection (boxes, ellipsoids, cylinders, the room shell).
* ``raycast``: culling (image rectangles, light cube maps, direction cones), closest hits, shadow rays.
* ``textures``, ``shading``: procedural albedo per class family; Lambertian shading, exposure, noise.
* ``render``: a scene and a camera -> every task at once.
* ``builder``, ``scene_nyud``, ``scene_pascal``: the scene grammars.
* ``kinect``: Kinect-like invalid depth.
* ``generate``, ``synth_nyud``, ``synth_pascal``, ``card``: parallel deterministic writing, dataset cards.
* ``datasets``: the registered readers ``synth-nyud`` / ``synth-pascal`` and :data:`SYNTHETIC_DATASETS`.
"""

from densemtl.data.synthetic.datasets import SYNTHETIC_DATASETS, SyntheticSpec, SynthNYUD, SynthPascal
from densemtl.data.synthetic.synth_nyud import generate_synth_nyud
from densemtl.data.synthetic.synth_pascal import generate_synth_pascal

__all__ = [
    "SYNTHETIC_DATASETS",
    "SynthNYUD",
    "SynthPascal",
    "SyntheticSpec",
    "generate_synth_nyud",
    "generate_synth_pascal",
]
