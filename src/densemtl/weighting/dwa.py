"""Dynamic weight average (DWA; Liu, Johns and Davison, CVPR 2019), ``spec/weighting.md`` §3.2.

``history="epochs"`` (paper, LibMTL): for epoch e ≥ 2, r_t = L̄_t(e−1)/L̄_t(e−2) from the epoch-mean
training losses (all-reduced by the engine) and w = T·softmax(r/τ); w = 1 for e ∈ {0, 1}.
``history="steps"`` (the Nash-MTL repository): a FIFO of the last 2W rank-averaged step losses
(initialised with ones, current step included); once more than W steps ran, r_t = mean of the newest W
÷ mean of the oldest W. The FIFO advances only on committed steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import (
    EpochStats,
    Kind,
    StepContext,
    StepEnd,
    Weighting,
    at_least_fp32,
    register_weighting,
)

__all__ = ["DynamicWeightAverage"]

HISTORIES = ("epochs", "steps")


@register_weighting("dwa")
class DynamicWeightAverage(Weighting):
    """DWA. Args: ``temperature`` τ (2.0; LibMTL ``T``), ``history`` (``epochs`` or ``steps``), ``window`` W (25)."""

    kind = Kind.LOSSES
    libmtl_name = "DWA"
    arg_aliases = {"T": "temperature"}

    def __init__(self, temperature: float = 2.0, history: str = "epochs", window: int = 25) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        if history not in HISTORIES:
            raise ValueError(f"DWA history must be one of {list(HISTORIES)}, got {history!r}")
        if int(window) < 1:
            raise ValueError(f"DWA window must be >= 1, got {window}")
        self.temperature = float(temperature)
        self.history = history
        self.window = int(window)
        self.uses_loss_values = history == "steps"
        self._staged: Tensor | None = None

    def reset_state(self) -> None:
        t = self.num_tasks
        self.register_buffer("epoch_means", torch.zeros(2, t, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("fifo", torch.ones(2 * self.window, t, dtype=torch.float64))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(t, dtype=torch.float64))

    def softmax_weights(self, r: Tensor) -> Tensor:
        """T·softmax(r/τ)."""
        return r.numel() * torch.softmax(r / self.temperature, dim=0)

    def epoch_statistics(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"dwa": torch.stack([losses[t].detach().to(torch.float64) for t in self.tasks])}

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.weights
        if self.history == "steps":
            current = ctx.loss_values
            if current is None:
                current = torch.stack([losses[t].detach() for t in self.tasks])
            fifo = torch.cat([self.fifo[1:], current.to(self.fifo)[None]])
            self._staged = fifo
            if int(self.steps_seen) + 1 > self.window:
                r = fifo[self.window :].mean(0) / fifo[: self.window].mean(0)
                w = self.softmax_weights(r)
            else:
                w = torch.ones_like(self.weights)
        total = None
        for i, t in enumerate(self.tasks):
            term = w[i].to(losses[t].dtype) * at_least_fp32(losses[t])
            total = term if total is None else total + term
        return total, {t: w[i] for i, t in enumerate(self.tasks)}

    def on_step_end(self, end: StepEnd) -> None:
        if self.history == "steps" and self._staged is not None and end.step_taken:
            self.fifo.copy_(self._staged)
            self.steps_seen += 1
        self._staged = None

    def on_epoch_end(self, stats: EpochStats) -> None:
        if self.history != "epochs":
            return
        m = stats.means["dwa"].detach().to(self.epoch_means)
        self.epoch_means.copy_(torch.cat([self.epoch_means[1:], m[None]]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # the next epoch e = epochs_seen >= 2
            self.weights.copy_(self.softmax_weights(self.epoch_means[1] / self.epoch_means[0]))

    def epoch_diagnostics(self) -> dict[str, Tensor]:
        if self.history == "epochs" and int(self.epochs_seen) >= 2:
            return {"r": self.epoch_means[1] / self.epoch_means[0], "w": self.weights.clone()}
        return {}
