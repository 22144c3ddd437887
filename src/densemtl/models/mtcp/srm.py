"""MT-CP Spatial Refinement Modules: the coarse-to-fine trace-back chain (``spec/mtcp.md`` §3.6).

SPF(p, b) on a (B, p, *, *) and f (B, b, h, w): a' = CBAM(a), f' = CBAM(f), a'' = bilinear(a' -> h x w),
c = [a''; f'], then two independent branches: P = ReLU(BN(Conv1x1(c))) (width 256, feeds a head) and
Bk = ReLU(BN(Conv1x1(c))) (width b, passed to the next SPF). Convs have biases.

The last SPF's Bk feeds nothing (the released code builds it anyway; ``spec/mtcp.md`` §3.8 counts it,
3 x 0.197 M at C = 256). densemtl does not build it, as it does not build the other unused layers of the
released code: an unused parameter would also force DDP's ``find_unused_parameters``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from densemtl.models.baselines import resize_to
from densemtl.models.blocks import CBAM

__all__ = ["SPF", "TraceBackChain"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SPF(nn.Module):
    """One SRM block: (a (B, p, *, *), f (B, b, h, w)) -> (P (B, width, h, w), Bk (B, b, h, w)).

    Args:
        in_channels: p, the width of the propagated input.
        feat_channels: b, the width of the decoder feature.
        width: P's width (256 in the paper).
        pass_on: build the Bk branch (False for the last SPF of a chain: Bk is then None).
    """

    def __init__(self, in_channels: int, feat_channels: int, width: int = 256, pass_on: bool = True) -> None:
        super().__init__()
        self.gate_in = CBAM(in_channels)
        self.gate_feat = CBAM(feat_channels)
        self.predict = _conv_bn_relu(in_channels + feat_channels, width)
        self.pass_on = _conv_bn_relu(in_channels + feat_channels, feat_channels) if pass_on else None

    def forward(self, a: Tensor, f: Tensor) -> tuple[Tensor, Tensor | None]:
        f = self.gate_feat(f)
        c = torch.cat([resize_to(self.gate_in(a), tuple(f.shape[-2:])), f], dim=1)
        return self.predict(c), None if self.pass_on is None else self.pass_on(c)


class TraceBackChain(nn.Module):
    """Per-task SRM chain: Y (B, width, h, w) and [F0, F1, F2] -> [P1 @ 1/16, P2 @ 1/8, P3 @ 1/4], width each.

    SPF_1(Y, F2) -> P1, Bk1; SPF_2(Bk1, F1) -> P2, Bk2; SPF_3(Bk2, F0) -> P3 (no Bk3). The chain passes Bk,
    never P.

    Args:
        width: the width of Y and of every P.
        feat_channels: C_s of F0, F1, F2 (finest first).
    """

    def __init__(self, width: int, feat_channels: Sequence[int]) -> None:
        super().__init__()
        coarse_to_fine = list(feat_channels)[::-1]
        inputs = [width, *coarse_to_fine[:-1]]
        last = len(coarse_to_fine) - 1
        self.blocks = nn.ModuleList(
            SPF(p, b, width, pass_on=i < last) for i, (p, b) in enumerate(zip(inputs, coarse_to_fine))
        )

    def forward(self, y: Tensor, feats: Sequence[Tensor]) -> list[Tensor]:
        preds, a = [], y
        for block, f in zip(self.blocks, list(feats)[::-1]):
            p, a = block(a, f)
            preds.append(p)
        return preds
