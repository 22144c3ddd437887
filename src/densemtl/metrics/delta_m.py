"""Multi-task performance Δm against a single-task (STL) reference table (``spec/protocols.md`` §4.6).

Δm = (1/K) · Σ_k (−1)^{l_k} · (M_k − M_k^STL) / M_k^STL × 100 %, where l_k = 1 when lower is better for
metric k. Positive Δm means the multi-task model beats the STL reference. Directions come from the Task
registry (``MetricSpec.higher_is_better``); a companion key such as ``rmse_nonzero`` or ``maxf_atrc``
takes the direction of its base metric.

Variants:

- ``primary`` (default): one metric per task (``Task.metrics[0]``, or the reference entry's ``primary``, or
  the caller's ``metric_choice``); K = T.
- ``all``: every metric with a direction that both the run and the reference report, pooled flat
  (mtan / Nash-MTL style "Δm_flat", of opposite sign there).
- ``task``: per task, the mean over its metrics; then the mean over tasks (LibMTL's Δp_task).

References live in ``resources/stl_reference.yaml`` as ``<family>/<entry>``. A missing reference, task,
metric or a zero reference value never raises from :func:`compute_delta_m`: the result has
``value=None`` and a ``reason``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from densemtl.tasks import TASKS, MetricSpec

__all__ = [
    "VARIANTS",
    "DeltaM",
    "DeltaMResult",
    "MissingReferenceError",
    "StlReference",
    "compute_delta_m",
    "delta_m",
    "get_reference",
    "load_stl_table",
    "metric_direction",
]

VARIANTS = ("primary", "all", "task")


class MissingReferenceError(LookupError):
    """No usable STL reference (unknown name, not measured yet, no family default)."""


@dataclass(frozen=True)
class StlReference:
    """One entry of the STL table.

    Attributes:
        name: ``<family>/<entry>``.
        metrics: task -> metric -> value.
        source: where the values come from.
        recipe: the single-task recipe that produced them.
        protocol: the metric preset they were measured under.
        primary: task -> metric overriding the task's primary metric in the ``primary`` variant.
        notes: comparability caveats.
    """

    name: str
    metrics: dict[str, dict[str, float]]
    source: str = ""
    recipe: str = ""
    protocol: str = ""
    primary: dict[str, str] = field(default_factory=dict)
    notes: str = ""


@dataclass
class DeltaMResult:
    """Δm and how it was obtained.

    Attributes:
        value: Δm in percent, or None when it could not be computed (see ``reason``).
        reason: why ``value`` is None, else None.
        terms: ``task/metric`` -> signed relative difference in percent (positive = better than STL).
        reference: the reference name, if any.
        source: the reference's source.
        variant: ``primary``, ``all`` or ``task``.
        missing: ``task/metric`` items without a usable reference or result.
        notes: caveats (partial Δm, protocol mismatch).
    """

    value: float | None
    reason: str | None = None
    terms: dict[str, float] = field(default_factory=dict)
    reference: str | None = None
    source: str | None = None
    variant: str = "primary"
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- the table
def _default_table_path() -> Any:
    return resources.files("densemtl").joinpath("resources/stl_reference.yaml")


@functools.lru_cache(maxsize=1)
def _packaged_table_text() -> str:
    return _default_table_path().read_text(encoding="utf-8")


def load_stl_table(path: str | Path | None = None) -> dict[str, Any]:
    """Read the STL reference YAML (default: the packaged ``resources/stl_reference.yaml``)."""
    if path is None:
        source: Any = _default_table_path()
        text = _packaged_table_text()
    else:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"STL reference table {path} does not exist")
        text = source.read_text(encoding="utf-8")
    table = yaml.safe_load(text)
    if not isinstance(table, dict) or not isinstance(table.get("references"), dict):
        raise ValueError(f"STL reference table {source} must be a mapping with a 'references' mapping")
    return table


def _available(table: Mapping[str, Any]) -> list[str]:
    return sorted(
        f"{fam}/{name}"
        for fam, entries in table["references"].items()
        for name, entry in (entries or {}).items()
        if (entry or {}).get("metrics")
    )


def get_reference(name: str | None, family: str = "", table: Mapping[str, Any] | None = None) -> StlReference:
    """Look up an STL reference.

    Args:
        name: ``<family>/<entry>``, or None for the family's default entry.
        family: dataset family, used when ``name`` is None.
        table: a loaded table (default: the packaged one).

    Raises:
        MissingReferenceError: unknown name, no default for the family, or an entry not measured yet.
    """
    table = load_stl_table() if table is None else table
    if name is None:
        name = (table.get("defaults") or {}).get(family)
        if name is None:
            raise MissingReferenceError(
                f"no STL reference named and no default for dataset family {family!r}; name one of {_available(table)}"
            )
        if "/" not in name:  # a default may name the entry within its family
            name = f"{family}/{name}"
    fam, _, entry_name = name.partition("/")
    entry = (table["references"].get(fam) or {}).get(entry_name) if entry_name else None
    if entry is None:
        raise MissingReferenceError(f"unknown STL reference {name!r}; available: {_available(table)}")
    metrics = entry.get("metrics") or {}
    if not metrics:
        status = entry.get("status", "it has no metrics")
        raise MissingReferenceError(f"STL reference {name!r} is unusable: {status}")
    return StlReference(
        name=name,
        metrics={t: {m: float(v) for m, v in ms.items()} for t, ms in metrics.items()},
        source=str(entry.get("source", "")),
        recipe=str(entry.get("recipe", "")),
        protocol=str(entry.get("protocol", "")),
        primary=dict(entry.get("primary") or {}),
        notes=str(entry.get("notes", "")).strip(),
    )


# ------------------------------------------------------------------------------------------- the maths
def metric_direction(task: str, metric: str) -> bool | None:
    """True if higher is better for ``task``'s ``metric``, False if lower, None if unknown.

    A suffixed companion key (``rmse_nonzero``, ``maxf_atrc``) takes its base metric's direction.
    """
    spec_list: tuple[MetricSpec, ...] = TASKS[task].metrics if task in TASKS else ()
    for spec in spec_list:
        if spec.name == metric:
            return spec.higher_is_better
    matches = [s for s in spec_list if metric.startswith(s.name + "_")]
    if matches:
        return max(matches, key=lambda s: len(s.name)).higher_is_better
    return None


def _term(value: Any, ref: float, higher: bool) -> float:
    sign = 1.0 if higher else -1.0
    return sign * (float(value) - ref) / ref * 100.0


def _usable(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def delta_m(
    metrics: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, float]],
    variant: str = "primary",
    metric_choice: Mapping[str, str] | None = None,
    allow_partial: bool = False,
) -> DeltaMResult:
    """Δm of a run's metrics against reference values (pure computation).

    Args:
        metrics: task -> metric -> value of the multi-task run (the tasks define T).
        reference: task -> metric -> STL value.
        variant: ``primary``, ``all`` or ``task``.
        metric_choice: task -> metric for the ``primary`` variant (default: the task's first metric).
        allow_partial: compute over the available terms when some are missing (noted) instead of
            returning ``value=None``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Δm variant must be one of {VARIANTS}, got {variant!r}")
    choice = dict(metric_choice or {})
    per_task: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    for task, results in metrics.items():
        if task not in TASKS:
            missing.append(f"{task}/* (unknown task)")
            continue
        if variant == "primary":
            names = [choice.get(task, TASKS[task].primary_metric.name)]
        else:
            names = [m for m in results if metric_direction(task, m) is not None and m in reference.get(task, {})]
            if not names:
                missing.append(f"{task}/* (no metric in both the results and the reference)")
                continue
        for name in names:
            higher = metric_direction(task, name)
            ref = reference.get(task, {}).get(name)
            if higher is None:
                missing.append(f"{task}/{name} (no direction: not a metric of task {task!r})")
            elif ref is None:
                missing.append(f"{task}/{name} (not in the reference)")
            elif not _usable(ref) or float(ref) == 0:
                missing.append(f"{task}/{name} (reference value {ref!r} is not a usable non-zero number)")
            elif name not in results or not _usable(results[name]):
                missing.append(f"{task}/{name} (no finite value in the results)")
            else:
                per_task.setdefault(task, {})[name] = _term(results[name], float(ref), higher)
    terms = {f"{t}/{m}": v for t, ms in per_task.items() for m, v in ms.items()}
    result = DeltaMResult(value=None, terms=terms, variant=variant, missing=missing)
    if missing and not allow_partial:
        result.reason = "missing STL reference or result for: " + "; ".join(missing)
        return result
    if not terms:
        result.reason = "no Δm term could be computed" + (": " + "; ".join(missing) if missing else "")
        return result
    if missing:
        result.notes.append(f"partial Δm over {len(terms)} term(s); missing: " + "; ".join(missing))
    if variant == "task":
        task_means = [sum(ms.values()) / len(ms) for ms in per_task.values()]
        result.value = sum(task_means) / len(task_means)
    else:
        result.value = sum(terms.values()) / len(terms)
    return result


def compute_delta_m(
    metrics: Mapping[str, Mapping[str, Any]],
    family: str = "",
    reference: str | StlReference | Mapping[str, Mapping[str, float]] | None = None,
    variant: str = "primary",
    metric_choice: Mapping[str, str] | None = None,
    allow_partial: bool = False,
    protocol: str | None = None,
    table: Mapping[str, Any] | None = None,
) -> DeltaMResult:
    """Δm of a run against an STL reference from the table; never raises for a missing reference.

    Args:
        metrics: task -> metric -> value (``MultiTaskMetrics.compute()``).
        family: dataset family, used to find a default reference when ``reference`` is None.
        reference: ``<family>/<entry>``, a :class:`StlReference`, a task -> metric -> value mapping, or
            None (the family's default entry).
        variant: ``primary``, ``all`` or ``task``.
        metric_choice: task -> metric for the ``primary`` variant (over the entry's ``primary``).
        allow_partial: see :func:`delta_m`.
        protocol: the run's metric preset; a mismatch with the entry's protocol is noted.
        table: a loaded STL table (default: the packaged one).

    Returns:
        A :class:`DeltaMResult`; ``value`` is None with a ``reason`` when no reference is usable.
    """
    if isinstance(reference, Mapping):
        ref = StlReference(name="<given>", metrics={t: dict(v) for t, v in reference.items()})
    elif isinstance(reference, StlReference):
        ref = reference
    else:
        try:
            ref = get_reference(reference, family, table)
        except (MissingReferenceError, FileNotFoundError, ValueError) as err:
            return DeltaMResult(value=None, reason=str(err), reference=reference, variant=variant)
    choice = {**ref.primary, **(metric_choice or {})}
    result = delta_m(metrics, ref.metrics, variant, choice, allow_partial)
    result.reference = ref.name
    result.source = ref.source or None
    if protocol is not None and ref.protocol and protocol != ref.protocol:
        result.notes.append(
            f"the run used metric protocol {protocol!r}, the reference {ref.name!r} was measured under "
            f"{ref.protocol!r}; the numbers may not be comparable"
        )
    return result


class DeltaM:
    """Δm against one STL reference, bound once and applied to many results.

    Args:
        reference: see :func:`compute_delta_m`.
        family: dataset family (default reference lookup).
        variant: ``primary``, ``all`` or ``task``.
        metric_choice: task -> metric for the ``primary`` variant.
        allow_partial: see :func:`delta_m`.
        protocol: the run's metric preset (noted when it differs from the reference's).
    """

    def __init__(
        self,
        reference: str | StlReference | Mapping[str, Mapping[str, float]] | None = None,
        family: str = "",
        variant: str = "primary",
        metric_choice: Mapping[str, str] | None = None,
        allow_partial: bool = False,
        protocol: str | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"Δm variant must be one of {VARIANTS}, got {variant!r}")
        self.reference = reference
        self.family = family
        self.variant = variant
        self.metric_choice = dict(metric_choice or {})
        self.allow_partial = allow_partial
        self.protocol = protocol

    def __call__(self, metrics: Mapping[str, Mapping[str, Any]]) -> DeltaMResult:
        return compute_delta_m(
            metrics,
            family=self.family,
            reference=self.reference,
            variant=self.variant,
            metric_choice=self.metric_choice,
            allow_partial=self.allow_partial,
            protocol=self.protocol,
        )
