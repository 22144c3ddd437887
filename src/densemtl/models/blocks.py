"""Small reusable blocks: conv units, residual blocks, attention gates, the task branch point, neck and head.

Every module maps (B, C_in, H, W) -> (B, C_out, H', W'); docstrings give the paper and the shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CBAM",
    "SE",
    "BasicBlock",
    "Bottleneck",
    "ChannelGate",
    "ConvBNReLU",
    "DenseHead",
    "FusionNeck",
    "SpatialGate",
    "branch_factors",
    "get_branch_factor",
    "set_branch_factors",
    "detached_branches",
    "task_branch",
]


# --------------------------------------------------------------------------------------------------------------
# Convolution units and residual blocks


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: square kernel size (odd; padding keeps the size at stride 1).
        stride: convolution stride.
        dilation: convolution dilation.
        groups: convolution groups.
        bn_momentum: BatchNorm momentum.
        relu: apply the ReLU (False gives Conv -> BN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bn_momentum: float = 0.1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _shortcut(in_channels: int, out_channels: int, stride: int, bn_momentum: float) -> nn.Module:
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    return ConvBNReLU(in_channels, out_channels, 1, stride, bn_momentum=bn_momentum, relu=False)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two 3x3 ConvBN + shortcut, then ReLU.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride); the shortcut is a 1x1 conv (no bias) + BN when
    the channels or the stride change.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, 3, stride, bn_momentum=bn_momentum)
        self.conv2 = ConvBNReLU(out_channels, out_channels, 3, bn_momentum=bn_momentum, relu=False)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al., CVPR 2016), torchvision style (stride on the 3x3 conv).

    1x1 -> 3x3 -> 1x1 ConvBN with ``planes`` inner channels; (B, C_in, H, W) -> (B, planes * expansion,
    H / stride, W / stride); 1x1 conv + BN shortcut when the shape changes.
    """

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, expansion: int = 4, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        out_channels = planes * expansion
        self.conv1 = ConvBNReLU(in_channels, planes, 1, bn_momentum=bn_momentum)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride, bn_momentum=bn_momentum)
        self.conv3 = ConvBNReLU(planes, out_channels, 1, bn_momentum=bn_momentum, relu=False)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bn_momentum)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


# --------------------------------------------------------------------------------------------------------------
# Attention gates


class SE(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): x * sigmoid(MLP(avgpool(x))), (B, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class ChannelGate(nn.Module):
    """CBAM channel gate (Woo et al., ECCV 2018): x * sigmoid(MLP(avgpool x) + MLP(maxpool x)); shape kept."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        gate = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(gate)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial gate: x * sigmoid(BN(conv_k([max_c x, mean_c x]))), conv without bias; shape kept."""

    def __init__(self, kernel_size: int = 7, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial gate, no residual.

    (B, C, H, W) -> (B, C, H, W). Defaults follow ``spec/mtcp.md`` §3.5 (reduction 16, 7x7, BN momentum 0.01).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(spatial_kernel, bn_momentum)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


# --------------------------------------------------------------------------------------------------------------
# The task branch point (spec/weighting.md §1.4)

_BRANCH_FACTORS: dict[str, float | Tensor] = {}


def set_branch_factors(factors: Mapping[str, float | Tensor] | None) -> None:
    """Set the backward factor of each task's branch (tasks not named get 1); None resets all to 1.

    A factor is a scalar or a tensor broadcastable to the representation, (B, C, h, w). Factors are read
    when the backward pass runs (the engine sets them after computing the weights, before the backward), and
    are process-global by task name.
    """
    _BRANCH_FACTORS.clear()
    if factors:
        _BRANCH_FACTORS.update(factors)


def get_branch_factor(task: str) -> float | Tensor:
    """The backward factor currently set for ``task`` (1.0 by default)."""
    return _BRANCH_FACTORS.get(task, 1.0)


@contextmanager
def branch_factors(factors: Mapping[str, float | Tensor] | None) -> Iterator[None]:
    """Context manager: ``with branch_factors({"depth": 0.5}): loss.backward()``; restores the previous factors."""
    previous = dict(_BRANCH_FACTORS)
    set_branch_factors(factors)
    try:
        yield
    finally:
        set_branch_factors(previous)


class _TaskBranch(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rep: Tensor, task: str) -> Tensor:
        ctx.task = task
        return rep.view_as(rep)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        factor = get_branch_factor(ctx.task)
        if isinstance(factor, Tensor):
            return grad * factor.to(device=grad.device, dtype=grad.dtype), None
        if factor == 1.0:
            return grad, None
        return grad * factor, None


_DETACHED: dict[str, list[tuple[Tensor, Tensor]]] | None = None


@contextmanager
def detached_branches(enabled: bool = True) -> Iterator[dict[str, list[tuple[Tensor, Tensor]]]]:
    """While active, :func:`task_branch` gives each task a new leaf ``rep.detach().requires_grad_()``.

    Yields task -> [(rep, leaf), ...] for the branches taken. The engine uses it for rep-space gradient
    methods on models whose heads are independent (``spec/weighting.md`` §1.4: each head's backward then
    runs once, and the encoder receives the aggregated cotangent through ``rep``). A no-op when not enabled.
    """
    global _DETACHED
    previous = _DETACHED
    _DETACHED = {} if enabled else None
    try:
        yield _DETACHED if _DETACHED is not None else {}
    finally:
        _DETACHED = previous


def task_branch(rep: Tensor, task: str) -> Tensor:
    """Where task ``task`` reads the shared representation ``rep`` (B, C, h, w).

    Identity in the forward pass; the backward pass multiplies the incoming gradient by the factor set with
    :func:`set_branch_factors` / :func:`branch_factors` (default 1), so the encoder receives
    sum_t a_t dL_t/drep while head t still receives its own gradient (``spec/weighting.md`` §1.4).
    Inside :func:`detached_branches` it returns a detached leaf copy of ``rep`` instead.
    """
    if _DETACHED is not None and rep.requires_grad:
        leaf = rep.detach().requires_grad_(True)
        _DETACHED.setdefault(task, []).append((rep, leaf))
        return leaf
    return _TaskBranch.apply(rep, task)


# --------------------------------------------------------------------------------------------------------------
# Neck and head


class FusionNeck(nn.Module):
    """Light multi-scale fusion: project each level to C (1x1 ConvBNReLU), upsample to the finest, sum, 3x3.

    list of (B, C_i, h_i, w_i), finest first -> (B, C, h_0, w_0). Upsampling is bilinear,
    ``align_corners=False``. This is the Panoptic-FPN/SegFormer-style "upsample all and merge" decoder in
    its lightest form (sum instead of concatenation).

    Args:
        in_channels: C_i of the input levels, finest first.
        out_channels: C.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("FusionNeck needs at least one input level")
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = int(out_channels)
        self.lateral = nn.ModuleList(ConvBNReLU(c, out_channels, 1) for c in self.in_channels)
        self.fuse = ConvBNReLU(out_channels, out_channels, 3)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != len(self.lateral):
            raise ValueError(f"FusionNeck built for {len(self.lateral)} levels, got {len(feats)}")
        size = feats[0].shape[-2:]
        out = self.lateral[0](feats[0])
        for lateral, f in zip(self.lateral[1:], feats[1:]):
            out = out + F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
        return self.fuse(out)


class DenseHead(nn.Sequential):
    """Dense prediction head: 3x3 ConvBNReLU x2 then a 1x1 conv with bias; (B, C_in, h, w) -> (B, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64) -> None:
        super().__init__(
            ConvBNReLU(in_channels, mid_channels, 3),
            ConvBNReLU(mid_channels, mid_channels, 3),
            nn.Conv2d(mid_channels, out_channels, 1),
        )
