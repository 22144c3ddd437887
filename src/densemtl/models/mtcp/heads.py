"""MT-CP prediction heads: final (on P3 at 1/4) and intermediate (on P1 at 1/16, P2 at 1/8) (``spec/mtcp.md`` §3.7).

The model resizes every head output bilinearly (``align_corners=False``) to the input size; the "x2 (ac)"
upsamplings inside the heads are bilinear with ``align_corners=True`` as in the released code.

Final heads by task kind:

- segmentation (semseg, human_parts): Conv1x1 (no bias), BN, ReLU, Conv1x1 -> K, x``seg_upsample`` (ac)
  (2 on NYUD, 4 on PASCAL);
- depth: Conv1x1 -> W/2, x2 (ac), Conv1x1 -> W/8, ReLU, Conv1x1 -> 1, no output activation (raw metres);
- everything else (normals, sal, edge): Conv1x1 (no bias), BN, ReLU, Conv1x1 -> K.

Intermediate heads: Conv1x1 (no bias), Conv1x1 (no bias), BN, ReLU, Conv1x1 -> K; human_parts and sal (the
PASCAL-only tasks) have a single Conv1x1 (no bias) before the BN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.tasks import get_task

__all__ = ["SINGLE_CONV_INTERMEDIATE", "Upsample", "final_head", "intermediate_head"]

SINGLE_CONV_INTERMEDIATE = ("human_parts", "sal")
"""Tasks whose intermediate heads have one 1x1 conv before the BN (the released PASCAL heads)."""


class Upsample(nn.Module):
    """Bilinear upsampling by an integer factor with ``align_corners=True``: (B, C, h, w) -> (B, C, s·h, s·w)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=True)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _classifier(width: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1)]


def final_head(task: str, width: int, out_channels: int, seg_upsample: int = 2) -> nn.Sequential:
    """The final head of ``task``: (B, width, h, w) -> (B, out_channels, s·h, s·w) (s = 1, 2 or ``seg_upsample``)."""
    kind = get_task(task).kind
    if kind == "segmentation":
        return nn.Sequential(*_classifier(width, out_channels), Upsample(seg_upsample))
    if kind == "depth":
        mid, low = max(1, width // 2), max(1, width // 8)
        return nn.Sequential(nn.Conv2d(width, mid, 1), Upsample(2), nn.Conv2d(mid, low, 1), nn.ReLU(inplace=True),
                             nn.Conv2d(low, out_channels, 1))
    return nn.Sequential(*_classifier(width, out_channels))


def intermediate_head(task: str, width: int, out_channels: int) -> nn.Sequential:
    """An intermediate head of ``task``: (B, width, h, w) -> (B, out_channels, h, w)."""
    layers = _classifier(width, out_channels)
    if task not in SINGLE_CONV_INTERMEDIATE:
        layers.insert(0, nn.Conv2d(width, width, 1, bias=False))
    return nn.Sequential(*layers)
