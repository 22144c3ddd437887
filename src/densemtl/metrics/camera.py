"""Pinhole intrinsics for the coherence metrics: the dataset's camera, carried to the working resolution.

Camera convention (the whole of densemtl, :mod:`densemtl.data.convert`): x right, y down, z forward; pixel
(u, v) = (column, row) looks along ``((u - cx) / fx, (v - cy) / fy, 1)``, so a z-depth Z back-projects to
``Z · ((u - cx) / fx, (v - cy) / fy, 1)``.

Which camera a dataset's stored frames (H, W) have (:func:`frame_camera`):

- NYUD family (``nyud``, ``nyuv2_13``; real and ``synth-nyud``): the NYU Depth v2 colour camera
  (fx = 518.86, fy = 519.47, cx = 325.58, cy = 253.74 at 480×640; ``spec/protocols.md`` §7.1):
  - 480×640 (``nyud-mt``, converted .mat): as is;
  - 425×560 (the ATRC/InvPT ``NYUDv2/`` release): **assumed** to be the crop rows 45..469, columns 40..599
    of the 480×640 frame (the common Eigen crop, which gives exactly this size; the spec says the derivation
    is undocumented), so cx − 40, cy − 45;
  - any other size: the 480×640 camera scaled by W/640 and H/480 (``synth-nyud`` renders exactly so, at its
    own size; for mtan's 288×384 NYUv2-13 this is an assumption);
- any other family, or a camera of your own: give ``intrinsics=(fx, fy, cx, cy)`` and ``size=(H, W)``, the
  frame size at which they hold; other frame sizes are scaled.

At test time the network sees a resized and/or padded version of the frame: ``meta["size"]`` is the stored
frame's (H, W) and ``meta["valid_box"] = (top, left, h, w)`` where its content sits in the input
(:mod:`densemtl.data.transforms`). :func:`working_camera` maps the frame camera into that box, with the
half-pixel-centre rule of ``F.interpolate(align_corners=False)``: u' = (u + 0.5) · w / W − 0.5 + left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from densemtl.data.synthetic.camera import NYU_INTRINSICS, NYU_SIZE, Intrinsics

__all__ = ["NYU_CAMERA", "NYUD_CROPS", "PinholeCamera", "frame_camera", "working_camera"]


@dataclass(frozen=True)
class PinholeCamera(Intrinsics):
    """Pinhole intrinsics in pixels of a (height, width) image; pixel index = sampling position.

    The synthetic generator's :class:`~densemtl.data.synthetic.camera.Intrinsics` (same fields and
    convention), validated, and with the scaling and cropping the metrics need.
    """

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive pixels, got fx={self.fx}, fy={self.fy}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"camera image size must be positive, got {self.height}x{self.width}")

    def scaled(self, size: Sequence[int]) -> PinholeCamera:
        """The camera of the same view rendered at ``size`` = (H, W): fx, cx × W/width; fy, cy × H/height."""
        h, w = int(size[0]), int(size[1])
        sx, sy = w / self.width, h / self.height
        return PinholeCamera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, h, w)

    def cropped(self, top: int, left: int, size: Sequence[int]) -> PinholeCamera:
        """The camera of the crop of ``size`` = (H, W) whose top-left pixel is (top, left)."""
        return PinholeCamera(self.fx, self.fy, self.cx - left, self.cy - top, int(size[0]), int(size[1]))


NYU_CAMERA = PinholeCamera(*NYU_INTRINSICS, *NYU_SIZE)
"""NYU Depth v2 colour camera at 480×640 (NYU toolbox ``camera_params.m``; ``spec/protocols.md`` §7.1)."""

NYUD_CROPS: dict[tuple[int, int], tuple[int, int]] = {(425, 560): (45, 40)}
"""Stored NYUD frame size -> (top, left) of its assumed crop of the 480×640 frame (see the module docstring)."""

_NYU_FAMILIES = ("nyud", "nyuv2_13")


def frame_camera(
    family: str | None,
    size: Sequence[int],
    intrinsics: Sequence[float] | None = None,
    intrinsics_size: Sequence[int] | None = None,
) -> PinholeCamera:
    """The camera of a stored frame of ``size`` = (H, W).

    Args:
        family: dataset family (``nyud``, ``nyuv2_13`` have a default camera).
        size: (H, W) of the stored frame (``meta["size"]``).
        intrinsics: ``(fx, fy, cx, cy)`` in pixels, overriding the family's camera.
        intrinsics_size: (H, W) at which ``intrinsics`` hold (required with them).

    Returns:
        The frame's camera.
    """
    h, w = int(size[0]), int(size[1])
    if intrinsics is not None:
        if len(intrinsics) != 4:
            raise ValueError(f"intrinsics must be (fx, fy, cx, cy) in pixels, got {list(intrinsics)}")
        if intrinsics_size is None or len(intrinsics_size) != 2:
            raise ValueError(
                f"intrinsics {list(intrinsics)} need intrinsics_size = (H, W), the image size at which they hold"
            )
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        return PinholeCamera(fx, fy, cx, cy, int(intrinsics_size[0]), int(intrinsics_size[1])).scaled((h, w))
    if family not in _NYU_FAMILIES:
        raise ValueError(
            f"no default camera for dataset family {family!r} (known: {list(_NYU_FAMILIES)}); give the "
            "coherence metrics intrinsics=(fx, fy, cx, cy) and intrinsics_size=(H, W)"
        )
    if (h, w) == (NYU_CAMERA.height, NYU_CAMERA.width):
        return NYU_CAMERA
    if (h, w) in NYUD_CROPS:
        top, left = NYUD_CROPS[(h, w)]
        return NYU_CAMERA.cropped(top, left, (h, w))
    return NYU_CAMERA.scaled((h, w))


def working_camera(frame: PinholeCamera, meta: Mapping[str, Any] | None, input_size: Sequence[int]) -> PinholeCamera:
    """The camera of the network input that holds ``frame``'s content in ``meta["valid_box"]``.

    Args:
        frame: camera of the stored frame (``meta["size"]``).
        meta: the sample's ``meta`` after transforms (``valid_box`` absent: the content fills the input).
        input_size: (H, W) of the network input.

    Returns:
        The camera of the (H, W) input (its principal point is shifted by the padding).
    """
    ih, iw = int(input_size[0]), int(input_size[1])
    top, left, bh, bw = (meta or {}).get("valid_box", (0, 0, ih, iw))
    sx, sy = bw / frame.width, bh / frame.height
    return PinholeCamera(
        frame.fx * sx,
        frame.fy * sy,
        (frame.cx + 0.5) * sx - 0.5 + left,
        (frame.cy + 0.5) * sy - 0.5 + top,
        ih,
        iw,
    )
