"""The weighting API (``spec/weighting.md`` §1): methods declare what they need, the engine computes it.

A method is an ``nn.Module`` whose state lives in parameters, buffers or extra state, so that
``state_dict()`` round-trips exactly. It never calls ``backward``, never reads the trainer and never
touches the global RNGs. This module holds the contract; each method is one file in this package.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from densemtl.registry import Registry

__all__ = [
    "WEIGHTINGS",
    "EpochStats",
    "Kind",
    "StepContext",
    "StepEnd",
    "TrainInfo",
    "Weighting",
    "at_least_fp32",
    "register_weighting",
    "task_objective_terms",
]


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in fp32 if it is a half type, else unchanged (fp64 stays fp64 for closed-form tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class WeightingRegistry(Registry[type]):
    """The weighting registry; LibMTL's method names (``Nash_MTL``, ``UW``, ...) resolve case-insensitively."""

    ALIASES: ClassVar[dict[str, str]] = {"scaleinvls": "si", "uncertainty": "uw", "equal": "ew"}

    def canonical(self, name: str) -> str:
        """The registry key of ``name`` (itself, its lower-case form or a documented alias)."""
        if name in self:
            return name
        key = name.lower().replace("-", "_")
        key = self.ALIASES.get(key, key)
        return key if key in self else name

    def get(self, name: str) -> type:
        return super().get(self.canonical(name))


WEIGHTINGS = WeightingRegistry("weighting")
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


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class StepEnd:
    """What happened at the end of a step (``on_step_end``)."""

    step_taken: bool = True
    post_losses: Mapping[str, Tensor] | None = None
    reduce_mean: Callable[[Tensor], Tensor] = _identity
    """Mean over DDP ranks of a per-step tensor (identity in one process); the engine supplies it."""


@dataclass
class EpochStats:
    """Epoch means of the method's ``epoch_statistics`` (all-reduced), and training KPIs."""

    means: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Weighting(nn.Module):
    """Base class of loss and gradient weighting methods.

    Subclasses set ``kind`` and implement the method of their kind (``combine`` for ``Kind.LOSSES``).
    Tensor state whose size depends on the task count is created in :meth:`reset_state`, which
    :meth:`bind` calls once the tasks are known (the engine binds at construction, so a checkpoint
    loads into correctly sized buffers). Non-tensor state goes through :meth:`method_state` /
    :meth:`load_method_state`; the base class adds the method's generator and the counters, so
    ``state_dict()`` holds everything needed for an exact resume (``spec/weighting.md`` §1.6).

    Class attributes:
        kind: what the engine computes per step.
        owns_optimizer: learnable parameters are updated by the method itself (FAMO), not by the
            main optimiser.
        uses_loss_values: the method reads ``ctx.loss_values`` (rank-averaged L_t of the step).
        arg_aliases: LibMTL hyperparameter name -> our argument name.
        libmtl_name: the method's name in LibMTL (``<name>_<arg>`` arguments are accepted too).
    """

    kind: Kind = Kind.LOSSES
    owns_optimizer: ClassVar[bool] = False
    uses_loss_values: ClassVar[bool] = False
    """The engine puts the rank-averaged detached L_t into ``ctx.loss_values`` (one T-vector all-reduce)."""
    arg_aliases: ClassVar[dict[str, str]] = {}
    libmtl_name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: tuple[str, ...] = ()
        self.family: str = ""
        self.world_size: int = 1
        self.generator = torch.Generator()
        self._seeded = False
        self.weight_lr: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def bind(self, tasks: Sequence[str]) -> None:
        """Fix the task list and create task-sized state (idempotent for the same tasks)."""
        tasks = tuple(tasks)
        if tasks == self.tasks:
            return
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.tasks = tasks
        self.reset_state()

    def reset_state(self) -> None:
        """Create the method's task-sized parameters and buffers (``len(self.tasks)`` is known)."""
        return None

    def on_train_start(self, info: TrainInfo) -> None:
        """Receive run facts. State restored from a checkpoint (including the generator) is kept."""
        self.bind(info.tasks)
        self.family = info.family
        self.world_size = info.world_size
        if not self._seeded:
            self.generator.manual_seed(int(info.seed))
            self._seeded = True

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def needs(self, ctx: StepContext) -> Kind:
        return self.kind

    # ------------------------------------------------------------------ per step
    def task_objectives(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """f_t from L_t (identity by default)."""
        return dict(losses)

    def epoch_statistics(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Detached per-step values (name -> (T,) tensor) that the engine averages over the epoch."""
        return {}

    def statistics(
        self, main: Mapping[str, Tensor], aux: Mapping[str, Sequence[tuple[float, Tensor]]]
    ) -> dict[str, Tensor]:
        """Per-step statistics from the criterion's parts; default: ``epoch_statistics`` of L_t."""
        return self.epoch_statistics(task_objective_terms(main, aux, self.tasks))

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar objective and the weights used (for logging), for ``Kind.LOSSES`` methods."""
        raise NotImplementedError(f"{type(self).__name__} does not implement combine()")

    def objective(
        self, main: Mapping[str, Tensor], aux: Mapping[str, Sequence[tuple[float, Tensor]]], ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Objective from the criterion's parts: ``combine`` of f_t(L_t) with L_t = main + Σ c·aux."""
        return self.combine(self.task_objectives(task_objective_terms(main, aux, self.tasks)), ctx)

    def on_step_end(self, end: StepEnd) -> None:
        return None

    def on_epoch_end(self, stats: EpochStats) -> None:
        return None

    def diagnostics(self) -> dict[str, Tensor]:
        """Per-step diagnostics (logged as ``wdiag/<name>``)."""
        return {}

    def epoch_diagnostics(self) -> dict[str, Tensor]:
        """Quantities of the last ``on_epoch_end`` (scalars or (T,) tensors), logged per epoch."""
        return {}

    # ------------------------------------------------------------------ optimisation and state
    def parameter_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Parameter groups for the main optimiser: learnable weights at ``weight_lr`` (default the
        base LR) with weight decay 0 (``spec/weighting.md`` §1.5); none if the method owns its optimiser."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or self.owns_optimizer:
            return []
        lr = base_lr if self.weight_lr is None else float(self.weight_lr)
        return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": "weighting"}]

    def method_state(self) -> dict[str, Any]:
        """Non-tensor state of the method (lists, counters), saved with the generator."""
        return {}

    def load_method_state(self, state: Mapping[str, Any]) -> None:
        return None

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "seeded": self._seeded, "method": self.method_state()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping):
            return
        if state.get("rng") is not None:
            self.generator.set_state(state["rng"])
        self._seeded = bool(state.get("seeded", False))
        self.load_method_state(state.get("method", {}))


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
