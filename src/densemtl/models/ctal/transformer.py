"""Transformer CTAL (``spec/ctal.md`` §5.4): torchvision Swin-V2 last stage, PAD-Net initial modules, one CTAL
block at stride 32, DeepLabV3 heads.

Deviations from the released code, by the densemtl contract: saliency is one logit (the released head has two
softmax channels), and every prediction is returned as logits / raw values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from densemtl.models.base import MultiTaskModel, MultiTaskOutput, register_model
from densemtl.models.baselines import check_images
from densemtl.models.blocks import task_branch
from densemtl.models.ctal.module import CTALBlock
from densemtl.models.ctal.parts import DeepLabHead, InitialPrediction, upsample_to
from densemtl.models.encoders import load_state_dict_strict, read_state_dict

__all__ = ["SWIN_V2", "CTALTransformer", "SwinV2LastStage"]

log = logging.getLogger(__name__)

SWIN_V2: dict[str, dict[str, Any]] = {
    "swin_v2_t": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "stochastic_depth_prob": 0.2},
    "swin_v2_s": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "stochastic_depth_prob": 0.3},
    "swin_v2_b": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "stochastic_depth_prob": 0.5},
}
"""torchvision's Swin-V2 sizes (patch 4, window 8)."""


class SwinV2LastStage(nn.Module):
    """torchvision Swin-V2 ``features`` -> final ``norm`` -> NCHW: (B, 3, H, W) -> (B, 8·embed_dim, H/32, W/32).

    Args:
        name: ``swin_v2_t``, ``swin_v2_s`` or ``swin_v2_b``.
        pretrained: a local torchvision state-dict file of that model (ImageNet-1K), or None (random init).
        overrides: architecture arguments replacing the preset (e.g. a tiny ``embed_dim`` / ``depths`` for tests).
    """

    def __init__(self, name: str = "swin_v2_s", pretrained: str | None = None, overrides: dict[str, Any] | None = None):
        super().__init__()
        if name not in SWIN_V2:
            raise ValueError(f"unknown Swin-V2 backbone {name!r}; expected one of {sorted(SWIN_V2)}")
        args = {**SWIN_V2[name], "patch_size": [4, 4], "window_size": [8, 8], **(overrides or {})}
        model = SwinTransformer(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2, **args)
        if pretrained is not None:
            load_state_dict_strict(model, read_state_dict(pretrained), str(pretrained))
        self.features, self.norm = model.features, model.norm
        self.out_channels = int(args["embed_dim"]) * 8
        self.weights = None if pretrained is None else str(pretrained)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm(self.features(images)).permute(0, 3, 1, 2).contiguous()


@register_model("ctal_transformer")
class CTALTransformer(MultiTaskModel):
    """Transformer CTAL (``spec/ctal.md`` §5.4): Swin-V2 last stage (stride 32), one initial module per task
    (2 Bottlenecks to 256 ch + 1x1 prediction), CTAL (conv_in with BN + ReLU, C = 128, P = (H/32)·(W/32)),
    conv_out to stride 16, DeepLabV3 head per task, bilinear to the input size.

    Parameters besides the backbone: 13.2 M for the five PASCAL tasks (initial 1.86 M, CTAL 1.98 M, heads 9.37 M).

    Args:
        tasks: tasks in order; num_classes: classes of segmentation tasks.
        input_size: (H, W) of the images (train = test), e.g. (512, 512).
        backbone: ``swin_v2_s`` (released), ``swin_v2_t`` or ``swin_v2_b``.
        pretrained: local torchvision weight file of the backbone; None: random init (labelled).
        backbone_args: Swin architecture overrides (``embed_dim``, ``depths``, ``num_heads``, ...).
        ctal_channels, gconv, impl, gamma, gamma_learnable, recompute_out: the CTAL block (as :class:`CTALNet`).
        aspp_rates: the DeepLab head's atrous rates.
    """

    smoke_kwargs: dict[str, Any] = {
        "input_size": (60, 80),
        "backbone_args": {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
        "ctal_channels": 8,
    }

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: dict[str, int] | None = None,
        input_size: Sequence[int] = (512, 512),
        backbone: str = "swin_v2_s",
        pretrained: str | None = None,
        backbone_args: dict[str, Any] | None = None,
        ctal_channels: int = 128,
        gconv: str = "shared",
        impl: str = "auto",
        gamma: float = 0.05,
        gamma_learnable: bool = False,
        aspp_rates: Sequence[int] = (12, 24, 36),
        recompute_out: bool | None = None,
    ) -> None:
        super().__init__(tasks, num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.backbone = SwinV2LastStage(backbone, pretrained, backbone_args)
        self.backbone_label = f"{backbone} ({'random init' if pretrained is None else 'weights ' + str(pretrained)})"
        if pretrained is None:
            log.warning("CTALTransformer: backbone %s is randomly initialised (no pretrained weights given)", backbone)
        self.initial = nn.ModuleDict({t: InitialPrediction(self.backbone.out_channels, k) for t, k in
                                      self.out_channels.items()})
        grid = (-(-self.input_size[0] // 32), -(-self.input_size[1] // 32))
        width = next(iter(self.initial.values())).out_channels
        self.ctal = CTALBlock(len(self.tasks), width, grid, ctal_channels, gconv, impl, gamma, gamma_learnable,
                              conv_in_bn=True, grid_setting="model.arch_args.input_size", recompute_out=recompute_out)
        self.heads = nn.ModuleDict(
            {t: DeepLabHead(ctal_channels, self.out_channels[t], aspp_rates) for t in self.tasks}
        )

    def criterion_defaults(self) -> dict[str, Any]:
        """Released loss: L_t(initial) + L_t(final)."""
        return {"aux_weights": {"initial": 1.0}}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task], self.initial[task].predict, *self.ctal.task_modules(self.tasks.index(task))]

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds (B, K_t, H, W), aux["initial"] (B, K_t, H/32, W/32), rep (B, C_b, H/32,
        W/32)."""
        check_images(images)
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"CTALTransformer was built for {self.input_size[0]}x{self.input_size[1]} images (CTAL's grouped conv "
                f"has one kernel per feature-grid pixel), got {images.shape[-2]}x{images.shape[-1]}; set "
                "model.arch_args.input_size to the size you train and test at"
            )
        rep = self.backbone(images)
        feats, initial = [], {}
        for t in self.tasks:
            f, initial[t] = self.initial[t](task_branch(rep, t))
            feats.append(f)
        size = images.shape[-2:]
        preds = {t: upsample_to(self.heads[t](x), size) for t, x in zip(self.tasks, self.ctal(feats))}
        return MultiTaskOutput(preds=preds, aux={"initial": initial}, rep=rep)
