"""Loss and gradient weighting methods (``spec/weighting.md``): one file per method, a registry."""

# importing a method's module registers it
from densemtl.weighting import dtp, dwa, famo, gls, lps, rlw, si, static, uw  # noqa: F401
from densemtl.weighting.base import (
    WEIGHTINGS,
    EpochStats,
    Kind,
    StepContext,
    StepEnd,
    TrainInfo,
    Weighting,
    register_weighting,
)
from densemtl.weighting.build import build_weighting

__all__ = [
    "WEIGHTINGS",
    "EpochStats",
    "Kind",
    "StepContext",
    "StepEnd",
    "TrainInfo",
    "Weighting",
    "build_weighting",
    "register_weighting",
]
