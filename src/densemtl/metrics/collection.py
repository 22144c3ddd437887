"""Per-task metric builders, protocol presets, and :class:`MultiTaskMetrics` (one metric group per task).

The metric family of a task is chosen from the Task registry: by task name where a name has its own
family (``sal``, ``edge``), else by ``Task.kind`` (``segmentation``, ``depth``, ``normals``). Nothing else
branches on task names.

Protocol presets (``spec/protocols.md`` §8) are data: preset name -> family -> metric options. Options
given to :func:`build_task_metrics` override the preset. The special option ``companions`` (suffix ->
option overrides) adds the same family again under other options, its keys suffixed with ``_<suffix>``
(e.g. saliency maxF in the ``invpt`` form with the clean ``atrc`` form reported alongside as ``maxf_atrc``).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.wrappers.abstract import WrapperMetric

from densemtl.metrics.depth import DepthMetrics
from densemtl.metrics.edge_loss import EdgeLossMeter
from densemtl.metrics.normals import NormalsMetrics
from densemtl.metrics.segmentation import SegmentationMetrics
from densemtl.metrics.validity import NonFinitePredictions, ValidPixels, mark_undefined
from densemtl.registry import lookup
from densemtl.tasks import check_tasks, get_task

__all__ = [
    "PROTOCOLS",
    "MultiTaskMetrics",
    "SuffixedMetric",
    "build_task_metrics",
    "family_of",
    "protocol_options",
]

_CLAMP_ALL = {"clamp": "all"}  # predictions <= 0 set to 1e-9 for every depth statistic
PROTOCOLS: dict[str, dict[str, dict[str, Any]]] = {
    # pooled statistics, clean ATRC saliency, nonzero depth validity, every metric reported
    "default": {"segmentation": {"absent": "zero"}, "depth": dict(_CLAMP_ALL)},
    # MTI-Net file-based protocol (in memory): per-image saliency maxF (β² = 1) and max-mIoU
    "mtinet": {"segmentation": {"absent": "zero"}, "depth": dict(_CLAMP_ALL), "sal": {"protocol": "mtinet"}},
    # released MT-CP code: capped depth mask (standard mask alongside), 8-bit normals, MTI-Net saliency
    "mtcp_reference": {
        "segmentation": {"absent": "zero"},
        "depth": {**_CLAMP_ALL, "valid": "mtcp_reference", "companions": {"nonzero": {"valid": "nonzero"}}},
        "normals": {"quantize_png": True},
        "sal": {"protocol": "mtinet"},
    },
    # InvPT lineage: double-sigmoid saliency (compat), the clean ATRC form alongside
    "invpt": {
        "segmentation": {"absent": "zero"},
        "depth": dict(_CLAMP_ALL),
        "sal": {"protocol": "invpt", "companions": {"atrc": {"protocol": "atrc"}}},
    },
    "ctal_transformer": {
        "segmentation": {"absent": "zero"},
        "depth": dict(_CLAMP_ALL),
        "sal": {"protocol": "invpt", "companions": {"atrc": {"protocol": "atrc"}}},
    },
    # mtan: mIoU over a pooled matrix (plain mean: absent classes skipped, see below); depth (raw prediction
    # in abs / rel error) and normals averaged over batches, each batch counting 1
    "mtan": {
        "segmentation": {"absent": "skip"},
        "depth": {"clamp": "log", "pooling": "batch", "batch_weight": "equal"},
        "normals": {"pooling": "batch", "batch_weight": "equal"},
    },
    # Auto-λ: pooled mIoU as mtan; running means of per-batch depth / normals, a batch weighted by its size
    "autolambda": {
        "segmentation": {"absent": "skip"},
        "depth": {"clamp": "log", "pooling": "batch", "batch_weight": "images"},
        "normals": {"pooling": "batch", "batch_weight": "images"},
    },
    # CTAL CNN: nanmean mIoU, pooled depth (clamped throughout) and normals
    "ctal_cnn": {"segmentation": {"absent": "skip"}, "depth": dict(_CLAMP_ALL)},
}
"""Preset -> metric family -> options (``spec/protocols.md`` §8).

Every preset sets the depth clamp and the rule for classes absent from the whole split explicitly. mtan
and Auto-λ take a plain mean of the per-class IoUs, which is NaN when a class is absent from GT and
prediction; both presets skip such classes instead (``absent="skip"``), which gives the reference's number
whenever it has one (every class occurs, as on the full 654-image NYUv2 test set); ``absent="nan"``
reproduces the NaN. Edge odsF settings (``max_dist``, ``gt``) depend on the dataset family, not the
preset: :data:`densemtl.metrics.edge.EDGE_SETTINGS`, applied under every preset from the ``family`` given
to :func:`build_task_metrics` / :class:`MultiTaskMetrics`."""


def family_of(task: str) -> str:
    """The metric family of a task: its own name when it has a dedicated family, else ``Task.kind``."""
    return task if task in _BUILDERS else get_task(task).kind


def protocol_options(protocol: str, task: str) -> dict[str, Any]:
    """A deep copy of the preset's options for ``task``'s family (``{}`` when the preset sets none)."""
    preset = lookup(PROTOCOLS, "metric protocol", protocol)
    return copy.deepcopy(preset.get(family_of(task), {}))


def _optional(module: str, name: str, task: str) -> type:
    """Import ``densemtl.metrics.<module>.<name>`` lazily, with a clear error when it is missing."""
    try:
        return getattr(importlib.import_module(f"densemtl.metrics.{module}"), name)
    except (ImportError, AttributeError) as err:  # pragma: no cover - only while the module is missing
        raise ValueError(f"metrics of task {task!r} need densemtl.metrics.{module}.{name}, which is missing") from err


def _segmentation(task: str, num_classes: int | None, **options: Any) -> Metric:
    return SegmentationMetrics(get_task(task).out_channels(num_classes), **options)


def _depth(task: str, num_classes: int | None, **options: Any) -> Metric:
    return DepthMetrics(**options)


def _normals(task: str, num_classes: int | None, **options: Any) -> Metric:
    return NormalsMetrics(**options)


def _sal(task: str, num_classes: int | None, **options: Any) -> Metric:
    return _optional("saliency", "SaliencyMetrics", task)(**options)


def _edge(task: str, num_classes: int | None, odsf: bool = True, loss_pos_weight: float = 0.95, **options: Any):
    """Edge: the balanced-BCE loss meter (key ``loss``) and, when ``odsf``, EdgeMetrics(**options)."""
    meter = EdgeLossMeter(pos_weight=loss_pos_weight)
    if not odsf:
        options.pop("family", None)
        return meter
    ods = _optional("edge", "EdgeMetrics", task)(**options)
    return MetricCollection({"odsf": ods, "loss": meter}, compute_groups=False)


_BUILDERS: dict[str, Callable[..., Metric | MetricCollection]] = {
    "segmentation": _segmentation,
    "depth": _depth,
    "normals": _normals,
    "sal": _sal,
    "edge": _edge,
}


class SuffixedMetric(WrapperMetric):
    """Forwards to ``metric`` and appends ``suffix`` to every key of its result (companion metrics)."""

    full_state_update = False

    def __init__(self, metric: Metric | MetricCollection, suffix: str) -> None:
        super().__init__()
        self.metric = metric
        self.suffix = suffix

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.metric.update(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        return {f"{k}{self.suffix}": v for k, v in _as_dict(self.metric.compute(), "value").items()}

    def reset(self) -> None:
        self.metric.reset()
        super().reset()


def _as_dict(result: Any, name: str) -> dict[str, Any]:
    return dict(result) if isinstance(result, Mapping) else {name: result}


def build_task_metrics(
    task: str, num_classes: int | None = None, protocol: str = "default", family: str | None = None, **options: Any
) -> Metric | MetricCollection:
    """The metrics of one task under a protocol preset.

    Args:
        task: task name (Task registry).
        num_classes: class count of segmentation-like tasks.
        protocol: preset name in :data:`PROTOCOLS`.
        family: dataset family (``nyud``, ``pascal``, ...): the edge odsF settings of
            :data:`~densemtl.metrics.edge.EDGE_SETTINGS` (options given here override them).
        **options: options of the family's metric class, overriding the preset; ``companions`` maps a
            key suffix to option overrides of an extra copy of the family.

    Returns:
        One ``Metric`` or a ``MetricCollection`` (``compute()`` gives a flat dict of metric name -> value).
    """
    metric_family = family_of(task)
    merged = protocol_options(protocol, task)
    companions = {**merged.pop("companions", {}), **options.pop("companions", {})}
    merged.update(options)
    if metric_family == "edge" and family:
        merged.setdefault("family", family)
    build = _BUILDERS[metric_family]
    main = build(task, num_classes, **merged)
    if not companions:
        return main
    members: dict[str, Metric | MetricCollection] = {"main": main}
    for suffix, overrides in companions.items():
        members[suffix] = SuffixedMetric(build(task, num_classes, **{**merged, **overrides}), f"_{suffix}")
    return MetricCollection(members, compute_groups=False)


def _resize_like(pred: Tensor, target: Tensor) -> Tensor:
    size = target.shape[-2:]
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred.float(), size=size, mode="bilinear", align_corners=False)


class MultiTaskMetrics(nn.Module):
    """One metric group per task, updated from a batch of predictions and computed as plain floats.

    Args:
        tasks: task names.
        num_classes: task -> class count (segmentation-like tasks).
        protocol: preset name in :data:`PROTOCOLS`.
        options: task -> options overriding the preset (see :func:`build_task_metrics`).
        family: dataset family, for the edge odsF settings (see :func:`build_task_metrics`).

    Predictions whose spatial size differs from the target are resized bilinearly (logits before the
    argmax) before scoring.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_classes: Mapping[str, int] | None = None,
        protocol: str = "default",
        options: Mapping[str, Mapping[str, Any]] | None = None,
        family: str | None = None,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks, list(tasks), "MultiTaskMetrics")
        lookup(PROTOCOLS, "metric protocol", protocol)
        options = {t: dict(v) for t, v in (options or {}).items()}
        unknown = set(options) - set(self.tasks)
        if unknown:
            raise ValueError(f"metric options given for tasks {sorted(unknown)} not in {list(self.tasks)}")
        num_classes = dict(num_classes or {})
        self.protocol = protocol
        self.family = family
        self.metrics = nn.ModuleDict(
            {t: build_task_metrics(t, num_classes.get(t), protocol, family, **options.get(t, {})) for t in self.tasks}
        )
        self.valid_pixels = nn.ModuleDict({t: ValidPixels(t) for t in self.tasks})  # undefined metrics say so
        self.nonfinite_preds = nn.ModuleDict({t: NonFinitePredictions() for t in self.tasks})  # NaN: not scored

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> None:
        """Accumulate one batch.

        Args:
            preds: task -> prediction (B, C, H, W) (logits for classification tasks).
            batch: task -> target in the sample contract (other keys are ignored).
        """
        for task in self.tasks:
            if task not in preds or task not in batch:
                raise ValueError(f"metrics need a prediction and a target for {task!r}")
            target = batch[task]
            self.metrics[task].update(_resize_like(preds[task].detach(), target), target)
            self.valid_pixels[task].update(target)
            self.nonfinite_preds[task].update(preds[task].detach())

    def compute(self, vectors: bool = False) -> dict[str, dict[str, Any]]:
        """task -> metric name -> float (all ranks synchronised).

        Args:
            vectors: also return non-scalar results (e.g. ``iou_per_class``) as lists of floats.
        """
        out: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            values = _as_dict(self.metrics[task].compute(), get_task(task).primary_metric.name)
            row: dict[str, Any] = {}
            for name, value in values.items():
                value = torch.as_tensor(value)
                if value.numel() == 1:
                    row[name] = float(value)
                elif vectors:
                    row[name] = [float(v) for v in value.flatten()]
            out[task] = row
        nonfinite = {t: tuple(int(v) for v in m.compute()) for t, m in self.nonfinite_preds.items()}
        return mark_undefined(out, {t: int(self.valid_pixels[t].compute()) for t in self.tasks}, nonfinite)

    def reset(self) -> None:
        for metric in [*self.metrics.values(), *self.valid_pixels.values(), *self.nonfinite_preds.values()]:
            metric.reset()

    def clone(self) -> MultiTaskMetrics:
        """An independent copy with empty states (e.g. for the test split)."""
        other = copy.deepcopy(self)
        other.reset()
        return other
