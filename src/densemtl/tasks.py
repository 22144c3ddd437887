"""The Task registry: the one place that knows what each dense prediction task is.

A :class:`Task` states its target encoding (dtype, shape, ignore rule), how many output channels a model
must produce, its default loss and the loss weight each dataset family uses (``spec/protocols.md`` §5.2),
its metrics with their directions, and how a prediction is coloured. No other module branches on task
names: it reads these facts instead.

Sample contract (``DESIGN.md`` §2), after transforms:

=============  ============================  =====================
key            dtype, shape                  invalid / ignore
=============  ============================  =====================
semseg, parts  int64 (H, W)                  255
depth          float32 (1, H, W), metres     0
normals        float32 (3, H, W), unit       all-zero vector
edge, sal      float32 (1, H, W), {0, 1}     255
=============  ============================  =====================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from densemtl.registry import lookup

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "TASK_NAMES",
    "MetricSpec",
    "Task",
    "check_tasks",
    "get_task",
]

IGNORE_INDEX = 255
"""Ignore value of label and binary targets (semseg, human_parts, edge, sal)."""

Kind = Literal["segmentation", "depth", "normals", "binary"]


@dataclass(frozen=True)
class MetricSpec:
    """A reported metric: its key in the results and whether higher is better."""

    name: str
    higher_is_better: bool
    percent: bool = False


@dataclass(frozen=True)
class Task:
    """What a dense prediction task is.

    Attributes:
        name: canonical name (``semseg``, ``depth``, ``normals``, ``edge``, ``sal``, ``human_parts``).
        kind: target family; decides loss, metric and colouring families.
        target_dtype: dtype of the target tensor in a sample.
        target_channels: 0 for label maps of shape (H, W), else C of a (C, H, W) target.
        ignore_value: the value marking invalid target pixels (255, 0 for depth, 0-vector for normals).
        loss: default loss name (see ``densemtl.losses``).
        loss_kwargs: default keyword arguments of that loss (``protocols.md`` §5.1), used where the
            chosen loss accepts them.
        loss_weights: default loss weight per dataset family (``nyud``, ``pascal``, ``nyuv2_13``).
        metrics: reported metrics with directions; the first is the task's primary metric (Δm).
        fixed_channels: model output channels when they do not depend on the dataset (None: the number
            of classes).
        description: one line for help texts.
    """

    name: str
    kind: Kind
    target_dtype: torch.dtype
    target_channels: int
    ignore_value: float
    loss: str
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    metrics: tuple[MetricSpec, ...] = ()
    fixed_channels: int | None = None
    description: str = ""

    @property
    def primary_metric(self) -> MetricSpec:
        return self.metrics[0]

    @property
    def is_classification(self) -> bool:
        """True when the model output is per-class logits and the prediction an argmax."""
        return self.kind == "segmentation"

    @property
    def is_label_map(self) -> bool:
        """True for integer-valued maps with 255 = ignore (segmentation and binary tasks): resampled nearest,
        padded with 255, carried as uint8 by the loaders."""
        return self.kind in ("segmentation", "binary")

    def out_channels(self, num_classes: int | None = None) -> int:
        """Channels a model must output for this task.

        Args:
            num_classes: the dataset's class count for segmentation-like tasks.
        """
        if self.fixed_channels is not None:
            return self.fixed_channels
        if num_classes is None or num_classes < 1:
            raise ValueError(f"task {self.name!r} needs a positive number of classes, got {num_classes!r}")
        return int(num_classes)

    def loss_weight(self, family: str) -> float:
        """Default loss weight of this task on a dataset family (1.0 when unspecified)."""
        return float(self.loss_weights.get(family, 1.0))


_SEG_METRICS = (
    MetricSpec("miou", True, True),
    MetricSpec("pixel_acc", True, True),
)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="semseg",
            kind="segmentation",
            target_dtype=torch.int64,
            target_channels=0,
            ignore_value=IGNORE_INDEX,
            loss="cross_entropy",
            loss_weights={"nyud": 1.0, "pascal": 1.0, "nyuv2_13": 1.0},
            metrics=_SEG_METRICS,
            description="semantic segmentation, per-pixel class logits",
        ),
        Task(
            name="human_parts",
            kind="segmentation",
            target_dtype=torch.int64,
            target_channels=0,
            ignore_value=IGNORE_INDEX,
            loss="cross_entropy",
            loss_weights={"pascal": 2.0},
            metrics=_SEG_METRICS,
            description="human part segmentation (background + 6 parts)",
        ),
        Task(
            name="depth",
            kind="depth",
            target_dtype=torch.float32,
            target_channels=1,
            ignore_value=0.0,
            loss="l1",
            loss_weights={"nyud": 1.0, "nyuv2_13": 1.0},
            metrics=(
                MetricSpec("rmse", False),
                MetricSpec("log_rmse", False),
                MetricSpec("abs_rel", False),
                MetricSpec("sq_rel", False),
                MetricSpec("abs_err", False),
                MetricSpec("delta1", True, True),
                MetricSpec("delta2", True, True),
                MetricSpec("delta3", True, True),
            ),
            fixed_channels=1,
            description="depth in metres",
        ),
        Task(
            name="normals",
            kind="normals",
            target_dtype=torch.float32,
            target_channels=3,
            ignore_value=0.0,
            loss="normals_l1",
            loss_weights={"nyud": 10.0, "pascal": 10.0, "nyuv2_13": 1.0},
            metrics=(
                MetricSpec("mean", False),
                MetricSpec("median", False),
                MetricSpec("rmse", False),
                MetricSpec("within_11.25", True, True),
                MetricSpec("within_22.5", True, True),
                MetricSpec("within_30", True, True),
            ),
            fixed_channels=3,
            description="surface normals, unit vectors in the camera frame (angles in degrees)",
        ),
        Task(
            name="edge",
            kind="binary",
            target_dtype=torch.float32,
            target_channels=1,
            ignore_value=IGNORE_INDEX,
            loss="balanced_bce",
            loss_kwargs={"pos_weight": 0.95},  # edge_w of MTI-Net / InvPT (MLoRE: 0.925 / 0.88)
            loss_weights={"nyud": 50.0, "pascal": 50.0},
            metrics=(MetricSpec("odsf", True, True), MetricSpec("loss", False)),
            fixed_channels=1,
            description="semantic boundaries, one logit",
        ),
        Task(
            name="sal",
            kind="binary",
            target_dtype=torch.float32,
            target_channels=1,
            ignore_value=IGNORE_INDEX,
            loss="balanced_bce",
            loss_kwargs={"batch_balanced": True},  # HED-style weight: the batch's fraction of negatives
            loss_weights={"pascal": 5.0},
            metrics=(MetricSpec("maxf", True, True), MetricSpec("miou", True, True)),
            fixed_channels=1,
            description="saliency, one logit (the 2-logit InvPT form is a model option)",
        ),
    )
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    """Return the :class:`Task` called ``name``; an unknown name lists the valid ones."""
    return lookup(TASKS, "task", name)


def check_tasks(requested: Iterable[str], available: Sequence[str], where: str) -> tuple[str, ...]:
    """Validate a task list against what a dataset or model provides.

    Args:
        requested: task names asked for.
        available: task names the dataset/model provides.
        where: what provides them, for the error message (e.g. ``"dataset 'nyud' at /data/NYUDv2"``).

    Returns:
        The requested names as a tuple, in the requested order.
    """
    requested = tuple(requested)
    if not requested:
        raise ValueError(f"no tasks requested for {where}; it provides {list(available)}")
    for name in requested:
        get_task(name)
    missing = [t for t in requested if t not in available]
    if missing:
        raise ValueError(f"{where} does not provide task(s) {missing}; it has {list(available)}")
    if len(set(requested)) != len(requested):
        raise ValueError(f"duplicate task names in {list(requested)}")
    return requested
