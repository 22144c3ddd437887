"""CTAL (Cross-Task Affinity Learning, released as EMA-Net; ``spec/ctal.md``): the affinity module and its models."""

from densemtl.models.ctal.affinity import (
    affinity_diffusion,
    affinity_diffusion_direct,
    affinity_diffusion_linear,
    choose_impl,
)
from densemtl.models.ctal.models import CTALMSNet, CTALNet, MTINet, PADNet  # registers ctal, ctal_ms, mtinet, padnet
from densemtl.models.ctal.module import CrossTaskAffinity, CTALBlock
from densemtl.models.ctal.transformer import CTALTransformer  # registers ctal_transformer

__all__ = [
    "CTALMSNet",
    "CTALNet",
    "CTALTransformer",
    "MTINet",
    "PADNet",
    "CTALBlock",
    "CrossTaskAffinity",
    "affinity_diffusion",
    "affinity_diffusion_direct",
    "affinity_diffusion_linear",
    "choose_impl",
]
