"""Loss and gradient weighting methods (``spec/weighting.md``): one file per method, a registry."""

from densemtl.weighting import static  # noqa: F401  (registers "ew", "static")
from densemtl.weighting.base import WEIGHTINGS, Kind, StepContext, TrainInfo, Weighting, register_weighting

__all__ = ["WEIGHTINGS", "Kind", "StepContext", "TrainInfo", "Weighting", "register_weighting"]
