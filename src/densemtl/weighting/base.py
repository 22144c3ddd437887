"""The weighting API (``spec/weighting.md`` §1): methods declare what they need, the engine computes it.

A method is an ``nn.Module`` whose state lives in parameters, buffers or extra state, so that
``state_dict()`` round-trips exactly. It never calls ``backward``, never reads the trainer and never
touches the global RNGs. This module holds the contract; each method is one file in this package.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from densemtl.registry import Registry

__all__ = [
    "WEIGHTINGS",
    "Kind",
    "StepContext",
    "StepEnd",
    "TrainInfo",
    "Weighting",
    "register_weighting",
    "task_objective_terms",
]

WEIGHTINGS: Registry[type] = Registry("weighting")
register_weighting = WEIGHTINGS.register


class Kind(str, enum.Enum):
    """What the engine must compute for a method on a step (``spec/weighting.md`` §1.3)."""

    LOSSES = "losses"
    LOSSES_POST_STEP = "losses+post_step"
    GRAMIAN = "gramian"
    TASK_GRADS = "task_grads"
    BILEVEL = "bilevel"


@dataclass
class TrainInfo:
    """Facts given to :meth:`Weighting.on_train_start`."""

    tasks: tuple[str, ...]
    world_size: int = 1
    steps_per_epoch: int | None = None
    max_epochs: int | None = None
    seed: int = 0
    family: str = ""


@dataclass
class StepContext:
    """Per-step inputs: epoch (0-based), committed step counter k (1-based) and detached loss values."""

    epoch: int
    step: int
    loss_values: Tensor | None = None
    generator: torch.Generator | None = None


@dataclass
class StepEnd:
    """What happened at the end of a step (``on_step_end``)."""

    step_taken: bool = True
    post_losses: Mapping[str, Tensor] | None = None


@dataclass
class EpochStats:
    """Epoch means of the method's ``epoch_statistics`` (all-reduced), and training KPIs."""

    means: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Weighting(nn.Module):
    """Base class of loss and gradient weighting methods.

    Subclasses set ``kind`` and implement the method of their kind (``combine`` for ``Kind.LOSSES``).
    """

    kind: Kind = Kind.LOSSES

    def __init__(self) -> None:
        super().__init__()
        self.tasks: tuple[str, ...] = ()

    def on_train_start(self, info: TrainInfo) -> None:
        self.tasks = tuple(info.tasks)

    def needs(self, ctx: StepContext) -> Kind:
        return self.kind

    def task_objectives(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """f_t from L_t (identity by default)."""
        return dict(losses)

    def epoch_statistics(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Detached per-step values (name -> (T,) tensor) that the engine averages over the epoch."""
        return {}

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar objective and the weights used (for logging), for ``Kind.LOSSES`` methods."""
        raise NotImplementedError(f"{type(self).__name__} does not implement combine()")

    def on_step_end(self, end: StepEnd) -> None:
        return None

    def on_epoch_end(self, stats: EpochStats) -> None:
        return None

    def diagnostics(self) -> dict[str, Tensor]:
        return {}


def task_objective_terms(
    main: Mapping[str, Tensor], aux: Mapping[str, Sequence[tuple[float, Tensor]]], tasks: Sequence[str]
) -> dict[str, Tensor]:
    """L_t = main[t] + Σ coefficient·aux term, per task (``spec/weighting.md`` §1.2); separate scalars."""
    out = {}
    for t in tasks:
        total = main[t]
        for coef, term in aux.get(t, ()):
            total = total + coef * term
        out[t] = total
    return out
