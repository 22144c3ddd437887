"""Configuration checks that run right after the command line is parsed, before any class is built.

Some mistakes would otherwise surface late: a negative learning rate when the optimiser is built (after
data setup), a mistyped ``checkpoint.monitor`` after the first validation epoch, loss weights for a task
the run does not train at the first step. :func:`check_config` finds them from the parsed configuration
alone (the dataset's facts come from its reader class; no file is read), and raises a ``ValueError`` that
names the option, the value and what was expected. ``DenseMTLCLI.before_instantiate_classes`` calls it.

What is checked:

* ``model.lr`` > 0 and finite; ``model.weight_decay`` >= 0; ``model.momentum`` in [0, 1];
  ``model.poly_power`` > 0.
* ``model.weighting_args``: every mapping-valued argument (per-task weights, ``gamma``, ``min_losses``)
  names only the run's tasks.
* ``checkpoint.monitor``: a key the run logs: ``val/<task>/<metric>`` for the validation metrics the
  configured protocol and options produce (found by building those metrics and evaluating them on a tiny
  batch, so the names are exact), ``val/<task>/loss``, ``val/delta_m`` (only with a usable
  ``model.delta_m_reference``), or ``train_loss``/``train_loss_epoch``; and ``checkpoint.mode`` must
  agree with the metric's direction (``max`` for mIoU, ``min`` for an error), or the worst model would
  be kept as "best".
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["check_config", "check_model_numbers", "check_monitor", "check_weighting_args", "logged_val_metrics"]

TRAIN_MONITORS = ("train_loss", "train_loss_epoch")
"""Training keys that exist at every checkpoint (``train_loss_step`` is per step: not a sound monitor)."""


def _plain(config: Any) -> dict[str, Any]:
    """A jsonargparse Namespace (or a mapping) as nested dicts."""
    if hasattr(config, "as_dict"):
        return config.as_dict()
    return {k: _plain(v) if hasattr(v, "as_dict") or isinstance(v, Mapping) else v for k, v in dict(config).items()}


def check_model_numbers(model: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for an impossible optimiser setting in the ``model`` section."""
    rules = (
        ("lr", lambda v: v > 0, "a positive, finite learning rate"),
        ("weight_decay", lambda v: v >= 0, "a finite value >= 0"),
        ("momentum", lambda v: 0 <= v <= 1, "a value in [0, 1]"),
        ("poly_power", lambda v: v > 0, "a positive, finite exponent"),
    )
    for key, ok, expected in rules:
        if key not in model or model[key] is None:
            continue
        value = model[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"model.{key} = {value!r}: expected {expected}")


def check_weighting_args(weighting: str, args: Mapping[str, Any] | None, tasks: Sequence[str]) -> None:
    """Raise ``ValueError`` when a per-task argument of the weighting names a task the run does not train."""
    for name, value in (args or {}).items():
        if not isinstance(value, Mapping):
            continue
        unknown = [k for k in value if k not in tasks]
        if unknown:
            raise ValueError(
                f"model.weighting_args.{name} of weighting {weighting!r} names task(s) {unknown} that this run does "
                f"not train; its tasks are {list(tasks)}"
            )


def _dummy_batch(tasks: Sequence[str], num_classes: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predictions and targets (1, ., 8, 8) of every task, drawn from a fixed generator."""
    from densemtl.tasks import get_task

    g = torch.Generator().manual_seed(0)
    size = (1, 8, 8)
    preds, batch = {}, {}
    for t in tasks:
        task = get_task(t)
        preds[t] = torch.randn(1, task.out_channels(num_classes.get(t)), 8, 8, generator=g)
        if task.kind == "segmentation":
            batch[t] = torch.randint(0, max(1, num_classes.get(t, 2)), size, generator=g)
        elif task.kind == "depth":
            batch[t] = 0.5 + torch.rand(1, *size, generator=g)
        elif task.kind == "normals":
            v = torch.randn(1, 3, 8, 8, generator=g)
            batch[t] = v / torch.sqrt((v * v).sum(1, keepdim=True))
        else:
            batch[t] = (torch.rand(1, *size, generator=g) > 0.5).float()
    return preds, batch


def logged_val_metrics(
    tasks: Sequence[str],
    num_classes: Mapping[str, int],
    family: str,
    protocol: str = "default",
    metrics_args: Mapping[str, Mapping[str, Any]] | None = None,
    val_metrics_args: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """The ``val/<task>/<metric>`` keys a run with these settings logs after a validation epoch.

    The validation metrics are built exactly as :class:`~densemtl.engine.MultiTaskModule` builds them and
    computed on a tiny random batch, so protocol companions (``maxf_atrc``, ``rmse_nonzero``) and switched
    off metrics (edge odsF during validation) are accounted for. ``val/<task>/loss`` is included.
    """
    from densemtl.engine import DEFAULT_VAL_METRICS_ARGS
    from densemtl.metrics.collection import MultiTaskMetrics

    options = {t: dict(v) for t, v in (metrics_args or {}).items()}
    for task, extra in (DEFAULT_VAL_METRICS_ARGS if val_metrics_args is None else val_metrics_args).items():
        if task in tasks:
            options[task] = {**options.get(task, {}), **extra}
    metrics = MultiTaskMetrics(list(tasks), dict(num_classes), protocol=protocol, options=options, family=family)
    preds, batch = _dummy_batch(tasks, num_classes)
    metrics.update(preds, batch)
    names = {f"val/{t}/loss" for t in tasks}
    names |= {f"val/{t}/{m}" for t, values in metrics.compute().items() for m in values}
    return sorted(names)


def _direction(monitor: str) -> bool | None:
    """True if higher is better for a logged key, False if lower, None when unknown."""
    from densemtl.metrics.delta_m import metric_direction

    if monitor == "val/delta_m":
        return True
    if monitor in TRAIN_MONITORS or monitor.endswith("/loss"):
        return False
    parts = monitor.split("/")
    return metric_direction(parts[1], parts[2]) if len(parts) == 3 else None


def check_monitor(
    monitor: str | None,
    mode: str,
    valid: Sequence[str],
    delta_m_error: str | None = None,
) -> None:
    """Raise ``ValueError`` when ``checkpoint.monitor`` is not among ``valid`` logged keys or ``mode`` contradicts
    the metric's direction.

    Args:
        monitor: the configured ``checkpoint.monitor`` (None: no monitored checkpoint; nothing to check).
        mode: ``checkpoint.mode`` (``min``/``max``).
        valid: the keys the run logs.
        delta_m_error: why ``val/delta_m`` will not be logged (None when it will).
    """
    if monitor is None:
        return
    if monitor == "val/delta_m" and delta_m_error is not None:
        raise ValueError(
            f"checkpoint.monitor = 'val/delta_m', but this run logs no Δm: {delta_m_error} "
            "(set model.delta_m_reference)"
        )
    if monitor not in valid and monitor != "val/delta_m":
        close = difflib.get_close_matches(monitor, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(
            f"checkpoint.monitor = {monitor!r} is not a key this run logs{hint} Valid keys: {list(valid)}"
        )
    higher = _direction(monitor)
    if higher is not None and mode in ("min", "max") and (mode == "max") != higher:
        wanted = "max" if higher else "min"
        raise ValueError(
            f"checkpoint.mode = {mode!r} contradicts checkpoint.monitor = {monitor!r}, for which "
            f"{'higher' if higher else 'lower'} is better: set checkpoint.mode={wanted}, or the worst checkpoint "
            "is kept as the best"
        )


def _dataset_facts(data: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, int], str] | None:
    """(tasks, num_classes, family) from the ``data`` section and the reader class; None when unknown."""
    from densemtl.data.base import DATASETS
    from densemtl.data.datamodule import MultiTaskDataModule
    from densemtl.tasks import check_tasks

    name = data.get("dataset")
    if not name:
        return None
    spec = MultiTaskDataModule._resolve_synthetic(name)  # raises listing the datasets for an unknown name
    reader = DATASETS.get(spec.reader if spec is not None else name)
    tasks = check_tasks(data.get("tasks") or reader.available_tasks, reader.available_tasks, f"dataset {name!r}")
    num_classes = {t: len(reader.classes[t]) for t in tasks if t in reader.classes}
    return tuple(tasks), num_classes, reader.family


def check_config(config: Any) -> None:
    """Check a parsed ``fit``/``validate``/``test``/``predict`` configuration; raise on the first problem.

    Args:
        config: the subcommand's jsonargparse Namespace (or nested mappings) with ``model``, ``data`` and
            ``checkpoint`` sections.

    Raises:
        ValueError: naming the option (``model.lr``, ``model.weighting_args.weights``,
            ``checkpoint.monitor``, ``checkpoint.mode``), its value and the expectation.
    """
    cfg = _plain(config)
    model = cfg.get("model") or {}
    check_model_numbers(model)
    facts = _dataset_facts(cfg.get("data") or {})
    if facts is None:
        return
    tasks, num_classes, family = facts
    check_weighting_args(str(model.get("weighting", "ew")), model.get("weighting_args"), tasks)
    checkpoint = cfg.get("checkpoint") or {}
    monitor = checkpoint.get("monitor")
    if monitor is None:
        return
    valid = logged_val_metrics(
        tasks,
        num_classes,
        family,
        protocol=model.get("metrics_protocol") or "default",
        metrics_args=model.get("metrics_args"),
        val_metrics_args=model.get("val_metrics_args"),
    )
    valid = [*valid, *TRAIN_MONITORS]
    delta_m_error = None
    if monitor == "val/delta_m":
        from densemtl.metrics.delta_m import get_reference

        try:
            get_reference(model.get("delta_m_reference"), family)
        except (LookupError, ValueError, FileNotFoundError) as err:
            delta_m_error = str(err)
    check_monitor(monitor, str(checkpoint.get("mode", "min")), valid, delta_m_error)
