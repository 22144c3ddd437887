"""The baselines of every table: single-task networks (STL) and hard parameter sharing (HPS).

Both use the same parts, so they differ only in what is shared: an :class:`~densemtl.models.encoders.Encoder`,
a :class:`~densemtl.models.blocks.FusionNeck` over its levels of stride >= ``min_reduction`` (1/4 by default)
and one :class:`~densemtl.models.blocks.DenseHead` per task. Head outputs are upsampled bilinearly
(``align_corners=False``) to the input resolution. Outputs carry no activation: logits for segmentation,
edge and saliency; depth in metres as a raw value (it may be negative; metrics clamp it, as for MT-CP,
``spec/mtcp.md`` §3.7); normals as a raw 3-vector (the loss and metrics normalise it).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.models.base import MultiTaskModel, MultiTaskOutput, register_model
from densemtl.models.blocks import DenseHead, FusionNeck, task_branch
from densemtl.models.encoders import build_encoder

__all__ = ["HPS", "EncoderNeck", "SingleTaskModel", "check_images", "resize_to"]


def check_images(images: Tensor) -> None:
    """Raise a ``ValueError`` unless ``images`` is a (B, 3, H, W) floating-point tensor."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"expected float images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size), ``align_corners=False``; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class EncoderNeck(nn.Module):
    """Encoder + fusion neck: images (B, 3, H, W) -> representation (B, C, H / r, W / r), r = ``reduction``.

    Args:
        encoder: timm encoder name (see :func:`~densemtl.models.encoders.build_encoder`).
        pretrained: encoder weights: None, ``"imagenet"``, a file/directory, a package name or ``"timm-hub"``.
        neck_channels: C.
        min_reduction: the finest encoder stride fed to the neck (levels with a smaller stride are unused).
        encoder_kwargs: extra ``timm.create_model`` arguments (e.g. ``{"strict_img_size": False}`` for Swin).
    """

    def __init__(
        self,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: str | None = None,
        neck_channels: int = 128,
        min_reduction: int = 4,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, pretrained, **(encoder_kwargs or {}))
        self.levels = tuple(i for i, r in enumerate(self.encoder.reductions) if r >= min_reduction)
        if not self.levels:
            raise ValueError(
                f"encoder {encoder!r} has no level with stride >= min_reduction={min_reduction}; "
                f"its strides are {self.encoder.reductions}"
            )
        self.reduction = self.encoder.reductions[self.levels[0]]
        self.neck = FusionNeck([self.encoder.channels[i] for i in self.levels], neck_channels)
        self.out_channels = neck_channels

    def forward(self, images: Tensor) -> Tensor:
        feats = self.encoder(images)
        return self.neck([feats[i] for i in self.levels])


class _SingleTaskNet(nn.Module):
    """One task's whole network: images (B, 3, H, W) -> head output (B, K, H / r, W / r)."""

    def __init__(self, out_channels: int, head_channels: int, **trunk_args: Any) -> None:
        super().__init__()
        self.trunk = EncoderNeck(**trunk_args)
        self.head = DenseHead(self.trunk.out_channels, out_channels, head_channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images))


@register_model("stl")
class SingleTaskModel(MultiTaskModel):
    """Single-task learning: T independent encoder + neck + head networks, nothing shared.

    With one task this is the classic single-task baseline; with T tasks it trains the T baselines side by
    side (``shared_parameters()`` is empty, task t's parameters are its whole network). ``rep`` is None.

    Args:
        tasks: tasks to predict, in order.
        num_classes: task -> classes for segmentation-like tasks, e.g. ``{"semseg": 40}``.
        encoder: timm encoder name.
        pretrained: encoder weights (None: random init; ``"imagenet"``: the offline EfficientNet-Lite weights).
        neck_channels: width of the fused representation.
        head_channels: inner width of each head.
        min_reduction: finest encoder stride used by the neck (the representation is at 1/min_reduction).
        encoder_kwargs: extra ``timm.create_model`` arguments.
    """

    def __init__(
        self,
        tasks: list[str],
        num_classes: dict[str, int] | None = None,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: str | None = None,
        neck_channels: int = 128,
        head_channels: int = 64,
        min_reduction: int = 4,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(tasks, num_classes)
        trunk_args = dict(
            encoder=encoder,
            pretrained=pretrained,
            neck_channels=neck_channels,
            min_reduction=min_reduction,
            encoder_kwargs=encoder_kwargs,
        )
        self.nets = nn.ModuleDict(
            {t: _SingleTaskNet(self.out_channels[t], head_channels, **trunk_args) for t in self.tasks}
        )
        first = self.nets[self.tasks[0]].trunk.encoder
        self.mean, self.std = first.mean, first.std

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.nets[task]]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds[t] (B, K_t, H, W)."""
        check_images(images)
        size = images.shape[-2:]
        return MultiTaskOutput(preds={t: resize_to(self.nets[t](images), size) for t in self.tasks})


@register_model("hps")
class HPS(MultiTaskModel):
    """Hard parameter sharing: one shared encoder + neck, one head per task reading ``rep`` via ``task_branch``.

    ``rep`` (B, neck_channels, H / r, W / r) is the shared representation; ``heads`` is an ``nn.ModuleDict``
    keyed by task (the task-specific parameters). Arguments as for :class:`SingleTaskModel`.
    """

    independent_branches = True

    def __init__(
        self,
        tasks: list[str],
        num_classes: dict[str, int] | None = None,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: str | None = None,
        neck_channels: int = 128,
        head_channels: int = 64,
        min_reduction: int = 4,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(tasks, num_classes)
        self.trunk = EncoderNeck(encoder, pretrained, neck_channels, min_reduction, encoder_kwargs)
        self.heads = nn.ModuleDict(
            {t: DenseHead(neck_channels, self.out_channels[t], head_channels) for t in self.tasks}
        )
        self.mean, self.std = self.trunk.encoder.mean, self.trunk.encoder.std

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds[t] (B, K_t, H, W) and rep (B, C, H / r, W / r)."""
        check_images(images)
        size = images.shape[-2:]
        rep = self.trunk(images)
        preds = {t: resize_to(self.heads[t](task_branch(rep, t)), size) for t in self.tasks}
        return MultiTaskOutput(preds=preds, rep=rep)
