"""Weight trajectories of a run: per-step and per-epoch task weights, and their PNG plot.

Per-step weights are kept as device tensors during an epoch and moved to the host once per epoch
(no per-step host synchronisation, ``spec/weighting.md`` §1.9).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from densemtl.io import atomic_write

__all__ = ["WeightTrajectory", "plot_weight_trajectories", "save_figure"]


class WeightTrajectory:
    """Task weights of every step (``steps``, (N, T)) and their per-epoch means (``epochs``, (E, T))."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self.steps = torch.zeros(0, len(self.tasks))
        self.epochs = torch.zeros(0, len(self.tasks))
        self._pending: list[Tensor] = []
        self._epoch_start = 0

    def record(self, weights: Mapping[str, Tensor]) -> None:
        """Remember one step's weights (device tensors; no host sync)."""
        row = [torch.as_tensor(weights[t]).detach().float().reshape(()) for t in self.tasks]
        self._pending.append(torch.stack(row))

    def flush(self) -> None:
        """Move pending step weights to the host (one sync)."""
        if self._pending:
            self.steps = torch.cat([self.steps, torch.stack(self._pending).cpu()])
            self._pending.clear()

    def end_epoch(self) -> None:
        """Close an epoch: its mean weights become a row of ``epochs``."""
        self.flush()
        rows = self.steps[self._epoch_start :]
        if len(rows):
            self.epochs = torch.cat([self.epochs, rows.mean(0, keepdim=True)])
        self._epoch_start = len(self.steps)

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "tasks": list(self.tasks),
            "steps": self.steps.clone(),
            "epochs": self.epochs.clone(),
            "epoch_start": self._epoch_start,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if tuple(state.get("tasks", ())) != self.tasks:
            return
        self.steps = torch.as_tensor(state["steps"]).float()
        self.epochs = torch.as_tensor(state["epochs"]).float()
        self._epoch_start = int(state.get("epoch_start", len(self.steps)))
        self._pending.clear()

    def figure(self, title: str = ""):
        """A matplotlib figure: weights per step (left) and per epoch (right), one line per task."""
        return plot_weight_trajectories(self.steps.numpy(), self.epochs.numpy(), self.tasks, title)


def plot_weight_trajectories(steps: np.ndarray, epochs: np.ndarray, tasks: Sequence[str], title: str = ""):
    """Plot (N, T) per-step and (E, T) per-epoch weights; returns a matplotlib ``Figure`` (Agg backend)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(10, 3.6), dpi=100)
    ax_step, ax_epoch = fig.subplots(1, 2)
    for i, task in enumerate(tasks):
        if len(steps):
            ax_step.plot(np.arange(1, len(steps) + 1), steps[:, i], label=task, linewidth=1)
        if len(epochs):
            ax_epoch.plot(np.arange(len(epochs)), epochs[:, i], marker="o", label=task)
    ax_step.set(xlabel="optimiser step", ylabel="weight", title="per step")
    ax_epoch.set(xlabel="epoch", ylabel="mean weight", title="per epoch")
    for ax in (ax_step, ax_epoch):
        ax.grid(alpha=0.3)
    ax_epoch.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (``densemtl.io.atomic_write``)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))
