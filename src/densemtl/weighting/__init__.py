"""Loss and gradient weighting methods (``spec/weighting.md``): one file per method, a registry."""

# importing a method's module registers it
from densemtl.weighting import (  # noqa: F401
    aligned_mtl,
    cagrad,
    db_mtl,
    dtp,
    dwa,
    famo,
    gls,
    gradnorm,
    imtl,
    lps,
    mgda,
    nash_mtl,
    pcgrad,
    rlw,
    si,
    static,
    upgrad,
    uw,
)
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
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = [
    "Aggregation",
    "GradientWeighting",
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
