"""The model contract: :class:`MultiTaskOutput`, the :class:`MultiTaskModel` base and the model registry.

Models are plain ``nn.Module``s: they import nothing from ``densemtl.data`` or ``densemtl.engine``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from densemtl.registry import Registry
from densemtl.tasks import check_tasks, get_task

__all__ = ["MODELS", "MultiTaskModel", "MultiTaskOutput", "register_model"]

MODELS: Registry[type] = Registry("model")
register_model = MODELS.register


@dataclass
class MultiTaskOutput:
    """What ``model(images)`` returns.

    Attributes:
        preds: task -> final prediction at input resolution: logits (B, K, H, W) for segmentation, one
            logit (B, 1, H, W) for edge/sal, depth (B, 1, H, W) in metres, normals (B, 3, H, W)
            (not necessarily unit length).
        aux: name -> task -> intermediate prediction at any resolution (deep supervision); the
            criterion resizes them to the target size.
        losses: name -> scalar model-internal loss term (e.g. MT-CP's coherence loss).
        rep: the shared representation where task branches start (for representation-gradient
            weighting), or None.
    """

    preds: dict[str, Tensor]
    aux: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    losses: dict[str, Tensor] = field(default_factory=dict)
    rep: Tensor | None = None


class MultiTaskModel(nn.Module):
    """Base class of every densemtl model.

    Args:
        tasks: the tasks to predict, in order.
        num_classes: task -> number of classes for segmentation-like tasks (e.g. ``{"semseg": 40}``).

    Subclasses implement ``forward(images) -> MultiTaskOutput`` and keep task-specific modules in
    ``self.heads`` (an ``nn.ModuleDict`` keyed by task) or override :meth:`task_parameters`.
    """

    independent_branches: bool = False
    """True when task t's outputs depend on ``rep`` only through its own ``task_branch`` (no cross-task module
    after the branch point): rep-space gradient methods then run each head's backward once."""

    def __init__(self, tasks: Sequence[str], num_classes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks, [t for t in tasks], f"model {type(self).__name__}")
        self.num_classes = dict(num_classes or {})
        self.out_channels = {t: get_task(t).out_channels(self.num_classes.get(t)) for t in self.tasks}

    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules used by ``task`` alone (default: ``self.heads[task]``)."""
        heads = getattr(self, "heads", None)
        if isinstance(heads, nn.ModuleDict) and task in heads:
            return [heads[task]]
        return []

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters that receive gradient from ``task`` only."""
        if task not in self.tasks:
            raise ValueError(f"model predicts {list(self.tasks)}, not {task!r}")
        for module in self.task_modules(task):
            yield from module.parameters()

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not task-specific."""
        specific = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        for p in self.parameters():
            if id(p) not in specific:
                yield p

    def forward(self, images: Tensor) -> MultiTaskOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        """Final predictions only, (B, C, H, W) per task."""
        return self(images).preds
