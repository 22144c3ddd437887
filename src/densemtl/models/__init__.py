"""Models: a registry of plain ``nn.Module``s returning :class:`MultiTaskOutput`."""

from densemtl.models.base import MODELS, MultiTaskModel, MultiTaskOutput, register_model

__all__ = ["MODELS", "MultiTaskModel", "MultiTaskOutput", "register_model"]
from densemtl.models import baselines as baselines  # noqa: E402,F401  (registers "stl", "hps")
from densemtl.models import mtcp as mtcp  # noqa: E402,F401  (registers "mtcp")
from densemtl.models.ctal import models as ctal_models  # noqa: E402,F401  (ctal, ctal_ms, mtinet, padnet)
