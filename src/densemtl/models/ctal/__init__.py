"""CTAL (Cross-Task Affinity Learning, released as EMA-Net; ``spec/ctal.md``): the affinity module and its models."""

from densemtl.models.ctal.affinity import (
    affinity_diffusion,
    affinity_diffusion_direct,
    affinity_diffusion_linear,
    choose_impl,
)
from densemtl.models.ctal.module import CrossTaskAffinity, CTALBlock

__all__ = [
    "CTALBlock",
    "CrossTaskAffinity",
    "affinity_diffusion",
    "affinity_diffusion_direct",
    "affinity_diffusion_linear",
    "choose_impl",
]
