"""The CNN models of CTAL's tables (``spec/ctal.md`` §5): ``ctal``, ``ctal_ms``, ``mtinet`` and ``padnet``.

All four read HRNet-W18-small-v2 (timm, raw branches at strides 4..32, 18/36/72/144 channels) by default; any
timm encoder with levels at strides 4..32 can replace it (``encoder="tf_efficientnet_lite0", pretrained=
"imagenet"`` is the CPU variant with offline weights; it is *not* the paper's model). HRNet's ImageNet weights
load from a local file given as ``pretrained``; without one the backbone is randomly initialised and the model's
``backbone_label`` says so ("random init").

Outputs (``MultiTaskOutput``): ``preds`` at the input size; ``aux`` holds the intermediate predictions at their
own resolution: ``{"initial": {t: (B, K_t, H/4, W/4)}}`` for ``ctal`` and ``padnet``, ``{"scale_s": {t: (B, K_t,
H/2^(s+2), W/2^(s+2))}}`` for s = 0..3 for ``ctal_ms`` and ``mtinet``. The released losses weight them 1 (initial)
and 1/4 per scale (``MultiTaskCriterion.aux_weights``; ``spec/ctal.md`` §6). ``rep`` is the shared fused
representation (B, 270, H/4, W/4) for ``ctal`` and ``padnet``; the multi-scale models branch at four scales and
have no single ``rep`` (None).

The CTAL models are bound to ``input_size`` (train = test): another image size raises a ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from densemtl.models.base import MultiTaskModel, MultiTaskOutput, register_model
from densemtl.models.baselines import check_images
from densemtl.models.blocks import task_branch
from densemtl.models.ctal.module import CTALBlock
from densemtl.models.ctal.parts import (
    FPM,
    CTALDecoder,
    InitialPrediction,
    MultiScaleBackbone,
    ScaleFusion,
    SpatialAttentionDistillation,
    TaskScaleBlock,
    upsample_to,
)

__all__ = ["CTALMSNet", "CTALNet", "MTINet", "PADNet"]

log = logging.getLogger(__name__)

HRNET = "hrnet_w18_small_v2"
INPUT_SIZE_SETTING = "model.arch_args.input_size"


def _grid(size: Sequence[int], stride: int) -> tuple[int, int]:
    """Feature grid of an image size at ``stride`` (convolutions with 'same' padding round up)."""
    return (-(-int(size[0]) // stride), -(-int(size[1]) // stride))


class _CNNFamily(MultiTaskModel):
    """Backbone plumbing shared by the four CNN models."""

    smoke_kwargs: dict[str, Any] = {"encoder": "tf_efficientnet_lite0", "input_size": (60, 80)}
    size_reason = "its input_size argument; leave it unset to accept any size"
    """Why the model checks the image size (CTAL: its grouped conv has one kernel per feature-grid pixel)."""

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None,
        encoder: str,
        pretrained: str | None,
        encoder_kwargs: dict[str, Any] | None,
        input_size: Sequence[int] | None,
        level_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks, num_classes)
        self.backbone = MultiScaleBackbone(encoder, pretrained, encoder_kwargs, level_channels)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        init = "random init" if self.backbone.weights is None else f"weights {self.backbone.weights}"
        self.backbone_label = f"{encoder} ({init})"
        if level_channels is not None:
            self.backbone_label += f", levels projected to {list(self.backbone.channels)}"
        if self.backbone.weights is None:
            log.warning("%s: backbone %s is randomly initialised (no pretrained weights given)", type(self).__name__,
                        encoder)

    def _check_size(self, images: Tensor) -> None:
        check_images(images)
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{type(self).__name__} was built for {self.input_size[0]}x{self.input_size[1]} images "
                f"({self.size_reason}), got {images.shape[-2]}x{images.shape[-1]}; set {INPUT_SIZE_SETTING} to the "
                "size you train and test at"
            )


def _initial_aux() -> dict[str, Any]:
    """Released loss of the single-scale models: L_t(initial) + L_t(final) (``spec/ctal.md`` §6)."""
    return {"aux_weights": {"initial": 1.0}}


def _scale_aux() -> dict[str, Any]:
    """Released loss of the multi-scale models: (1/4) Σ_s L_t(scale s) + L_t(final)."""
    return {"aux_weights": {f"scale_{s}": 0.25 for s in range(4)}}


class _InitialStage(nn.Module):
    """Shared fusion of the 4 levels + one PAD-Net initial module per task."""

    def __init__(self, channels: Sequence[int], out_channels: dict[str, int]) -> None:
        super().__init__()
        self.fusion = ScaleFusion(channels)
        width = self.fusion.out_channels
        self.initial = nn.ModuleDict({t: InitialPrediction(width, k) for t, k in out_channels.items()})


@register_model("padnet")
class PADNet(_CNNFamily):
    """PAD-Net (Xu et al., CVPR 2018) as in CTAL's tables: HRNet, shared 4-scale fusion (270 ch), one initial
    module per task (2 Bottlenecks to 256 ch + 1x1 prediction), spatial-attention distillation, then per task
    2 Bottlenecks(256) + 1x1. Parameters: 12.08 M on NYUv2-13 (3 tasks), 7.01 M on Cityscapes (2 tasks).

    Args:
        tasks: tasks in order; num_classes: classes of segmentation tasks.
        encoder, pretrained, encoder_kwargs, level_channels: the backbone (:class:`MultiScaleBackbone`).
        input_size: (H, W); optional for PAD-Net (not bound to a grid), checked when given.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None = None,
        encoder: str = HRNET,
        pretrained: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        level_channels: Sequence[int] | None = None,
        input_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks, num_classes, encoder, pretrained, encoder_kwargs, input_size, level_channels)
        self.stage = _InitialStage(self.backbone.channels, self.out_channels)
        width = next(iter(self.stage.initial.values())).out_channels
        self.distill = SpatialAttentionDistillation(len(self.tasks), width)
        self.heads = nn.ModuleDict({t: CTALDecoder(width, self.out_channels[t]) for t in self.tasks})

    def criterion_defaults(self) -> dict[str, Any]:
        """Deep-supervision coefficients for :class:`~densemtl.losses.MultiTaskCriterion`."""
        return _initial_aux()

    def task_modules(self, task: str) -> list[nn.Module]:
        i = self.tasks.index(task)
        return [self.heads[task], self.stage.initial[task].predict, self.distill.messages[i]]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds (B, K_t, H, W), aux["initial"] (B, K_t, H/4, W/4), rep (B, 270, H/4, W/4)."""
        self._check_size(images)
        rep = self.stage.fusion(self.backbone(images))
        feats, initial = [], {}
        for t in self.tasks:
            f, initial[t] = self.stage.initial[t](task_branch(rep, t))
            feats.append(f)
        distilled = self.distill(feats)
        size = images.shape[-2:]
        preds = {t: upsample_to(self.heads[t](x), size) for t, x in zip(self.tasks, distilled)}
        return MultiTaskOutput(preds=preds, aux={"initial": initial}, rep=rep)


@register_model("ctal")
class CTALNet(_CNNFamily):
    """Single-scale CTAL (``CTALNet``, ``spec/ctal.md`` §5.3): HRNet, shared 4-scale fusion (270 ch), one PAD-Net
    initial module per task (256 ch), one CTAL block at stride 4 (C = 128), per task 2 Bottlenecks + 1x1.
    Parameters: 6.06 M on NYUv2-13, 5.26 M on Cityscapes.

    Args:
        tasks: tasks in order (the order fixes which grouped-conv weights act on which task).
        num_classes: classes of segmentation tasks.
        input_size: (H, W) of the images (train = test), e.g. (288, 384); fixes the CTAL grid (H/4, W/4).
        encoder, pretrained, encoder_kwargs, level_channels: the backbone (:class:`MultiScaleBackbone`).
        ctal_channels: C.
        gconv: ``"shared"`` (released) or ``"per_task"`` (Fig. 2).
        impl: ``"auto"``, ``"linear"`` or ``"direct"`` (``spec/ctal.md`` §4).
        gamma: γ (0.05); gamma_learnable: γ as a parameter initialised to ``gamma``.
        recompute_out: recompute the CTAL block's conv_out activations in the backward pass (exact, less memory);
            None: with the linear form only (:class:`~densemtl.models.ctal.module.CTALBlock`).
    """

    size_reason = "CTAL's grouped conv has one kernel per feature-grid pixel"

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None = None,
        input_size: Sequence[int] = (288, 384),
        encoder: str = HRNET,
        pretrained: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        level_channels: Sequence[int] | None = None,
        ctal_channels: int = 128,
        gconv: str = "shared",
        impl: str = "auto",
        gamma: float = 0.05,
        gamma_learnable: bool = False,
        recompute_out: bool | None = None,
    ) -> None:
        super().__init__(tasks, num_classes, encoder, pretrained, encoder_kwargs, input_size, level_channels)
        self.stage = _InitialStage(self.backbone.channels, self.out_channels)
        width = next(iter(self.stage.initial.values())).out_channels
        self.ctal = CTALBlock(
            len(self.tasks), width, _grid(self.input_size, 4), ctal_channels, gconv, impl, gamma, gamma_learnable,
            grid_setting=INPUT_SIZE_SETTING, recompute_out=recompute_out,
        )
        self.heads = nn.ModuleDict({t: CTALDecoder(ctal_channels, self.out_channels[t]) for t in self.tasks})

    def criterion_defaults(self) -> dict[str, Any]:
        """Deep-supervision coefficients for :class:`~densemtl.losses.MultiTaskCriterion`."""
        return _initial_aux()

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task], self.stage.initial[task].predict, *self.ctal.task_modules(self.tasks.index(task))]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds (B, K_t, H, W), aux["initial"] (B, K_t, H/4, W/4), rep (B, 270, H/4, W/4)."""
        self._check_size(images)
        rep = self.stage.fusion(self.backbone(images))
        feats, initial = [], {}
        for t in self.tasks:
            f, initial[t] = self.stage.initial[t](task_branch(rep, t))
            feats.append(f)
        refined = self.ctal(feats)
        size = images.shape[-2:]
        preds = {t: upsample_to(self.heads[t](x), size) for t, x in zip(self.tasks, refined)}
        return MultiTaskOutput(preds=preds, aux={"initial": initial}, rep=rep)


class _MultiScaleTaskPaths(nn.Module):
    """MTI-Net's coarse-to-fine per-task paths with FPMs at scales 3, 2, 1 (``spec/ctal.md`` §5.2).

    4 backbone maps -> per task the 4 pre-FPM scale features (finest first) and the 4 x N deep-supervision
    predictions ``{"scale_s": {t: (B, K_t, h_s, w_s)}}``.
    """

    def __init__(self, tasks: Sequence[str], channels: Sequence[int], out_channels: dict[str, int], grouping: str):
        super().__init__()
        self.tasks = list(tasks)
        n = len(self.tasks)
        c = list(channels)
        self.scales = nn.ModuleList()
        for s in range(4):
            cin = c[s] if s == 3 else c[s] + c[s + 1]
            self.scales.append(nn.ModuleDict({t: TaskScaleBlock(cin, c[s], out_channels[t]) for t in self.tasks}))
        self.fpms = nn.ModuleList(FPM(n, c[s], grouping) for s in range(1, 4))  # fpms[s - 1] at scale s

    def forward(self, feats: Sequence[Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, dict[str, Tensor]]]:
        per_task: dict[str, list[Tensor]] = {t: [None] * 4 for t in self.tasks}  # type: ignore[list-item]
        aux: dict[str, dict[str, Tensor]] = {}
        propagated: list[Tensor] | None = None
        for s in (3, 2, 1, 0):
            aux[f"scale_{s}"] = {}
            outs = []
            for i, t in enumerate(self.tasks):
                f, aux[f"scale_{s}"][t] = self.scales[s][t](feats[s], None if propagated is None else propagated[i])
                per_task[t][s] = f
                outs.append(f)
            propagated = self.fpms[s - 1](outs) if s > 0 else None
        return per_task, {f"scale_{s}": aux[f"scale_{s}"] for s in range(4)}


@register_model("mtinet")
class MTINet(_CNNFamily):
    """MTI-Net (Vandenhende et al., ECCV 2020) as in CTAL's tables: per-scale task predictions with FPMs,
    PAD-Net distillation at every scale, per-task HRNet head (fusion to 270 ch + 1x1).
    Parameters: 12.64 M on NYUv2-13, 8.57 M on Cityscapes.

    Args:
        tasks, num_classes: as for every model.
        encoder, pretrained, encoder_kwargs, level_channels: the backbone (:class:`MultiScaleBackbone`).
        fpm_grouping: ``"reference"`` (MTI-Net's released channel grouping) or ``"task"``.
        input_size: (H, W); optional (not bound to a grid), checked when given.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None = None,
        encoder: str = HRNET,
        pretrained: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        level_channels: Sequence[int] | None = None,
        fpm_grouping: str = "reference",
        input_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks, num_classes, encoder, pretrained, encoder_kwargs, input_size, level_channels)
        channels = self.backbone.channels
        self.paths = _MultiScaleTaskPaths(self.tasks, channels, self.out_channels, fpm_grouping)
        self.distill = nn.ModuleList(SpatialAttentionDistillation(len(self.tasks), c) for c in channels)
        self.heads = nn.ModuleDict(
            {t: nn.Sequential(ScaleFusion(channels), nn.Conv2d(sum(channels), self.out_channels[t], 1)) for t in tasks}
        )

    def criterion_defaults(self) -> dict[str, Any]:
        """Deep-supervision coefficients for :class:`~densemtl.losses.MultiTaskCriterion`."""
        return _scale_aux()

    def task_modules(self, task: str) -> list[nn.Module]:
        i = self.tasks.index(task)
        preds = [self.paths.scales[s][task].predict for s in range(4)]
        return [self.heads[task], *preds, *(d.messages[i] for d in self.distill)]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds (B, K_t, H, W), aux["scale_s"] (B, K_t, H/2^(s+2), W/2^(s+2))."""
        self._check_size(images)
        per_task, aux = self.paths(self.backbone(images))
        distilled = [d([per_task[t][s] for t in self.tasks]) for s, d in enumerate(self.distill)]
        size = images.shape[-2:]
        preds = {
            t: upsample_to(self.heads[t]([distilled[s][i] for s in range(4)]), size) for i, t in enumerate(self.tasks)
        }
        return MultiTaskOutput(preds=preds, aux=aux)


@register_model("ctal_ms")
class CTALMSNet(_CNNFamily):
    """CTAL_MS (``MCTALNet``, ``spec/ctal.md`` §5.2): MTI-Net's per-scale predictions with FPMs, per-task
    cross-scale fusion to 270 ch, one CTAL block at stride 4 (C = 128), per task 2 Bottlenecks + 1x1.
    Parameters: 11.15 M on NYUv2-13 (CTAL block 1,380,864), 8.47 M on Cityscapes.

    Args: as :class:`CTALNet` (``recompute_out`` too), plus ``fpm_grouping``: ``"reference"`` (released quirk) or
    ``"task"``.
    """

    size_reason = "CTAL's grouped conv has one kernel per feature-grid pixel"

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None = None,
        input_size: Sequence[int] = (288, 384),
        encoder: str = HRNET,
        pretrained: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        level_channels: Sequence[int] | None = None,
        ctal_channels: int = 128,
        gconv: str = "shared",
        impl: str = "auto",
        gamma: float = 0.05,
        gamma_learnable: bool = False,
        fpm_grouping: str = "reference",
        recompute_out: bool | None = None,
    ) -> None:
        super().__init__(tasks, num_classes, encoder, pretrained, encoder_kwargs, input_size, level_channels)
        channels = self.backbone.channels
        self.paths = _MultiScaleTaskPaths(self.tasks, channels, self.out_channels, fpm_grouping)
        self.fusion = nn.ModuleDict({t: ScaleFusion(channels) for t in self.tasks})  # per task
        self.ctal = CTALBlock(
            len(self.tasks), sum(channels), _grid(self.input_size, 4), ctal_channels, gconv, impl, gamma,
            gamma_learnable, grid_setting=INPUT_SIZE_SETTING, recompute_out=recompute_out,
        )
        self.heads = nn.ModuleDict({t: CTALDecoder(ctal_channels, self.out_channels[t]) for t in self.tasks})

    def criterion_defaults(self) -> dict[str, Any]:
        """Deep-supervision coefficients for :class:`~densemtl.losses.MultiTaskCriterion`."""
        return _scale_aux()

    def task_modules(self, task: str) -> list[nn.Module]:
        preds = [self.paths.scales[s][task].predict for s in range(4)]
        return [self.heads[task], *preds, *self.ctal.task_modules(self.tasks.index(task))]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds (B, K_t, H, W), aux["scale_s"] (B, K_t, H/2^(s+2), W/2^(s+2))."""
        self._check_size(images)
        per_task, aux = self.paths(self.backbone(images))
        fused = [self.fusion[t](per_task[t]) for t in self.tasks]
        refined = self.ctal(fused)
        size = images.shape[-2:]
        preds = {t: upsample_to(self.heads[t](x), size) for t, x in zip(self.tasks, refined)}
        return MultiTaskOutput(preds=preds, aux=aux)
