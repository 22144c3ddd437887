"""Parts of the CTAL-family models (``spec/ctal.md`` §5): multi-scale backbone, scale fusion, PAD-Net modules,
MTI-Net's feature propagation module (FPM) and per-scale task paths, the CTAL decoder and the DeepLab head.

All upsampling is bilinear with ``align_corners=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.models.blocks import SE, BasicBlock, Bottleneck, ConvBNReLU
from densemtl.models.encoders import build_encoder

__all__ = [
    "FPM",
    "FPM_GROUPINGS",
    "CTALDecoder",
    "DeepLabHead",
    "InitialPrediction",
    "MultiScaleBackbone",
    "ScaleFusion",
    "SpatialAttentionDistillation",
    "TaskScaleBlock",
    "upsample_to",
]

FPM_GROUPINGS = ("reference", "task")
STRIDES = (4, 8, 16, 32)


def upsample_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (B, C, h, w) -> (B, C, *size), ``align_corners=False``; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class MultiScaleBackbone(nn.Module):
    """A timm encoder narrowed to its stride 4, 8, 16 and 32 levels: images -> 4 maps, finest first.

    ``hrnet_w18_small_v2`` (the CTAL CNNs) is built with ``feature_location=""``: the raw 18/36/72/144-channel
    branches of its last stage, not the 'incre' head features timm returns by default (``spec/ctal.md`` §5.1).
    Any other timm encoder works too (e.g. ``tf_efficientnet_lite0``: 24/40/112/320 channels).

    Args:
        encoder: timm model name.
        pretrained: weights, as for :func:`~densemtl.models.encoders.build_encoder` (None: random init).
        encoder_kwargs: extra ``timm.create_model`` arguments.
        level_channels: optional 4 widths to project the levels to (1x1 ConvBNReLU each), e.g. HRNet's
            (18, 36, 72, 144) on top of EfficientNet-Lite0's (24, 40, 112, 320), so that the task modules keep
            the paper's sizes on another encoder. None: the encoder's own widths.

    Attributes:
        channels: the 4 level widths; ``weights``: where the weights came from, or None (random init).
    """

    def __init__(
        self,
        encoder: str,
        pretrained: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        level_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        kwargs = dict(encoder_kwargs or {})
        if encoder.startswith("hrnet"):
            kwargs.setdefault("feature_location", "")
        kwargs.setdefault("out_indices", (1, 2, 3, 4))  # timm CNNs: level 0 is stride 2
        self.encoder = build_encoder(encoder, pretrained, **kwargs)
        if tuple(self.encoder.reductions) != STRIDES:
            raise ValueError(
                f"encoder {encoder!r} with out_indices={kwargs['out_indices']} gives strides "
                f"{self.encoder.reductions}; "
                f"CTAL models need {STRIDES} (set model.arch_args.encoder_kwargs.out_indices)"
            )
        self.channels: tuple[int, ...] = self.encoder.channels
        self.project: nn.ModuleList | None = None
        if level_channels is not None:
            if len(level_channels) != 4 or min(int(c) for c in level_channels) < 1:
                raise ValueError(f"level_channels must be 4 positive widths, got {list(level_channels)}")
            self.project = nn.ModuleList(ConvBNReLU(a, int(b), 1) for a, b in zip(self.channels, level_channels))
            self.channels = tuple(int(c) for c in level_channels)
        self.weights = self.encoder.weights

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [(B, c_s, H / 4·2^s, W / 4·2^s) for s = 0..3]."""
        feats = self.encoder(images)
        if self.project is not None:
            feats = [proj(f) for proj, f in zip(self.project, feats)]
        return feats


class ScaleFusion(nn.Module):
    """Upsample the 4 levels to the finest, concatenate (Σ c_s channels), Conv1x1 (bias) + BN + ReLU.

    list of (B, c_s, h_s, w_s) -> (B, Σ c_s, h_0, w_0) (270 channels for HRNet-W18).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        total = int(sum(channels))
        self.out_channels = total
        self.fuse = nn.Sequential(nn.Conv2d(total, total, 1), nn.BatchNorm2d(total), nn.ReLU(inplace=True))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        return self.fuse(torch.cat([upsample_to(f, size) for f in feats], dim=1))


class InitialPrediction(nn.Module):
    """PAD-Net-style initial module of one task: Bottleneck(C_in -> 4·planes) -> Bottleneck -> features,
    plus a 1x1 conv (bias) giving the initial prediction.

    (B, C_in, h, w) -> (features (B, 4·planes, h, w), prediction (B, K, h, w)).
    """

    def __init__(self, in_channels: int, out_channels: int, planes: int = 64) -> None:
        super().__init__()
        first = Bottleneck(in_channels, planes)
        self.features = nn.Sequential(first, Bottleneck(first.out_channels, planes))
        self.out_channels = first.out_channels
        self.predict = nn.Conv2d(first.out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        return feats, self.predict(feats)


class _SABlock(nn.Module):
    """PAD-Net spatial-attention message: conv3x3(x) * sigmoid(conv3x3(x)), both without bias; (B, C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.attention = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.sigmoid(self.attention(x))


class SpatialAttentionDistillation(nn.Module):
    """PAD-Net multi-modal distillation (Xu et al., CVPR 2018; MTI-Net's form): out_t = f_t + Σ_{a≠t} SA_{a→t}(f_a).

    ``messages[t]`` holds the N − 1 blocks feeding task t (used by task t alone). N x (B, C, h, w) -> same.
    """

    def __init__(self, num_tasks: int, channels: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.messages = nn.ModuleList(
            nn.ModuleList(_SABlock(channels) for _ in range(num_tasks - 1)) for _ in range(num_tasks)
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for t in range(self.num_tasks):
            others = [feats[a] for a in range(self.num_tasks) if a != t]
            out.append(feats[t] + sum((sa(f) for sa, f in zip(self.messages[t], others)), torch.zeros_like(feats[t])))
        return out


class FPM(nn.Module):
    """MTI-Net Feature Propagation Module for N tasks of c channels each (``spec/ctal.md`` §5.2).

    X = concat of the task features (N·c channels, task-major); A = Conv1x1(BasicBlock(BasicBlock(X))) with
    N·c/4 inner channels; a softmax over groups of N channels gives the mask; s = BasicBlock(N·c -> c)(mask ⊙ X);
    out_t = SE_t(s) + features_t.

    Args:
        num_tasks: N.
        channels: c.
        grouping: ``"reference"``: softmax over N *consecutive* channels of the task-major concat (viewing it as
            (c, N), MTI-Net's released code); ``"task"``: softmax across the N tasks at equal channel index.
    """

    def __init__(self, num_tasks: int, channels: int, grouping: str = "reference") -> None:
        super().__init__()
        if grouping not in FPM_GROUPINGS:
            raise ValueError(f"fpm_grouping must be one of {FPM_GROUPINGS}, got {grouping!r}")
        shared = num_tasks * channels
        self.num_tasks, self.channels, self.grouping = num_tasks, channels, grouping
        self.non_linear = nn.Sequential(
            BasicBlock(shared, shared // 4), BasicBlock(shared // 4, shared // 4), nn.Conv2d(shared // 4, shared, 1)
        )
        self.reduce = BasicBlock(shared, channels)
        self.se = nn.ModuleList(SE(channels) for _ in range(num_tasks))

    def mask(self, logits: Tensor) -> Tensor:
        """(B, N·c, h, w) task-major logits -> the softmax mask, same shape."""
        b, _, h, w = logits.shape
        n, c = self.num_tasks, self.channels
        if self.grouping == "reference":  # channel t·c + j viewed as (c, N): groups of N consecutive channels
            return torch.softmax(logits.reshape(b, c, n, h, w), dim=2).reshape(b, n * c, h, w)
        return torch.softmax(logits.reshape(b, n, c, h, w), dim=1).reshape(b, n * c, h, w)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """N x (B, c, h, w) -> N x (B, c, h, w)."""
        x = torch.cat(list(feats), dim=1)
        s = self.reduce(self.mask(self.non_linear(x)) * x)
        return [se(s) + f for se, f in zip(self.se, feats)]


class TaskScaleBlock(nn.Module):
    """MTI-Net's per-scale initial prediction of one task: concat(backbone_s, up(fpm_{s+1})) -> BasicBlock ->
    BasicBlock -> features (c_s channels), plus a 1x1 conv (bias) giving the deep-supervision prediction.

    Args:
        in_channels: c_s (+ c_{s+1} below the coarsest scale).
        channels: c_s.
        out_channels: K_t.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(BasicBlock(in_channels, channels), BasicBlock(channels, channels))
        self.predict = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, previous: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if previous is not None:
            x = torch.cat([x, upsample_to(previous, x.shape[-2:])], dim=1)
        feats = self.features(x)
        return feats, self.predict(feats)


class CTALDecoder(nn.Sequential):
    """CTAL task decoder: Bottleneck(C, planes C/4) x 2 -> Conv1x1 (bias) -> K; (B, C, h, w) -> (B, K, h, w)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__(
            Bottleneck(channels, channels // 4),
            Bottleneck(channels, channels // 4),
            nn.Conv2d(channels, out_channels, 1),
        )


class _ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabHead(nn.Module):
    """DeepLabV3 head (Chen et al., 2017; torchvision's form): ASPP (1x1, three atrous 3x3 at ``rates``, image
    pooling; 256-ch branches, conv-BN-ReLU) -> concat -> 1x1 + BN + ReLU + Dropout(0.5) -> 3x3 + BN + ReLU -> 1x1.

    (B, C_in, h, w) -> (B, K, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (12, 24, 36), width: int = 256):
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, width, 1)]
        branches += [ConvBNReLU(in_channels, width, 3, dilation=r) for r in rates]
        branches.append(_ASPPPooling(in_channels, width))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBNReLU(width * len(branches), width, 1), nn.Dropout(0.5))
        self.head = nn.Sequential(ConvBNReLU(width, width, 3), nn.Conv2d(width, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.project(torch.cat([b(x) for b in self.branches], dim=1)))
