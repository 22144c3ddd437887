"""MT-CP pyramid fusion: the plain top-down FPN of the released code, one per task (``spec/mtcp.md`` §3.4).

The paper's "Dynamic FPN" (adaptive weights, concatenation) is not defined precisely enough to build and is
not in the released code (§10 #18).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TaskFPN"]


class TaskFPN(nn.Module):
    """Laterals l_s = Conv1x1(F_s) (bias); u_2 = l_2, u_s = l_s + NN-up(u_{s+1}); X = Conv3x3(u_0) (bias).

    [F0 (B, C0, h, w), F1 (B, C1, h/2, w/2), F2 (B, C2, h/4, w/4)] -> X (B, width, h, w). Upsampling is
    nearest-neighbour to the exact size of the finer level. Only the finest level's output conv is built.

    Args:
        in_channels: C_s of the decoder stages, finest first.
        width: output width (256 in the paper).
    """

    def __init__(self, in_channels: Sequence[int], width: int = 256) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.out = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != len(self.laterals):
            raise ValueError(f"TaskFPN built for {len(self.laterals)} levels, got {len(feats)}")
        u = self.laterals[-1](feats[-1])
        for lateral, f in zip(self.laterals[-2::-1], feats[-2::-1]):
            u = lateral(f) + F.interpolate(u, size=f.shape[-2:], mode="nearest")
        return self.out(u)
