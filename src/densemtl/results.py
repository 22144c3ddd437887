"""Results writer: a metrics JSON and a Markdown table per evaluation run (``DESIGN.md`` §3).

Both files are written atomically (a temporary file in the same folder, then a rename), so a crash never
leaves a half-written result.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from densemtl import __version__
from densemtl.io import atomic_write_text
from densemtl.metrics.coherence import coherence_markdown
from densemtl.metrics.delta_m import DeltaMResult, metric_direction

__all__ = ["format_markdown", "write_results"]

ARROWS = {True: "↑", False: "↓", None: ""}


def _jsonable(value: Any) -> Any:
    """Tensors, numpy scalars and dataclasses to plain JSON values; NaN/inf to None."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch / numpy
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.4f}" if math.isfinite(v) else "n/a"


def format_markdown(
    metrics: Mapping[str, Mapping[str, Any]],
    title: str = "test",
    delta_m: DeltaMResult | float | None = None,
    extra: Mapping[str, Any] | None = None,
    coherence: Mapping[str, Any] | None = None,
) -> str:
    """A Markdown report: one row per task listing its scalar metrics with ↑/↓, then Δm, then coherence.

    Args:
        metrics: task -> metric -> value.
        title: heading.
        delta_m: a :class:`DeltaMResult` or a value in percent.
        extra: metadata shown as a bullet list.
        coherence: cross-task coherence, source -> family -> metric -> value
            (:meth:`densemtl.metrics.coherence.CoherenceMetrics.compute`).
    """
    lines = [f"# Results: {title}", ""]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    if extra:
        lines.append("")
    if metrics:
        lines += ["| task | metrics (↑ higher is better, ↓ lower is better) |", "|---|---|"]
    for task, values in metrics.items():
        cells = []
        for name, value in values.items():
            if isinstance(value, (list, tuple)):
                continue
            arrow = ARROWS[metric_direction(task, name)]
            cells.append(f"{name} {arrow} {_fmt(value)}".replace("  ", " "))
        lines.append(f"| {task} | {' · '.join(cells)} |")
    if metrics:
        lines.append("")
    if isinstance(delta_m, DeltaMResult):
        if delta_m.value is not None:
            lines.append(f"**Δm ↑ = {delta_m.value:+.2f} %** ({delta_m.variant}; reference `{delta_m.reference}`)")
            if delta_m.source:
                lines.append(f"  source: {delta_m.source}")
            lines += [f"  note: {n}" for n in delta_m.notes]
        else:
            lines.append(f"Δm: not computed ({delta_m.reason})")
        lines.append("")
    elif delta_m is not None:
        lines += [f"**Δm ↑ = {float(delta_m):+.2f} %**", ""]
    if coherence:
        lines += coherence_markdown(coherence)
    return "\n".join(lines)


def write_results(
    metrics: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    name: str = "test",
    extra: Mapping[str, Any] | None = None,
    delta_m: DeltaMResult | float | None = None,
    coherence: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>_metrics.json`` and ``<out_dir>/<name>_metrics.md``.

    Args:
        metrics: task -> metric -> value (``MultiTaskMetrics.compute()``).
        out_dir: folder, created if needed.
        name: split or run name, used in the file names and the heading.
        extra: metadata (protocol, model, epoch, ...) stored in the JSON under ``meta`` and listed in the
            Markdown.
        delta_m: Δm result or value, stored under ``delta_m``.
        coherence: cross-task coherence (source -> family -> metric -> value), stored under ``coherence``.

    Returns:
        (json_path, md_path).
    """
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"results name must be a non-empty file-name stem, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "densemtl_version": __version__,
        "meta": _jsonable(dict(extra or {})),
        "metrics": _jsonable(metrics),
        "directions": {t: {m: metric_direction(t, m) for m in ms} for t, ms in metrics.items()},
        "delta_m": _jsonable(delta_m),
    }
    if coherence:
        payload["coherence"] = _jsonable(coherence)
    json_path = out / f"{name}_metrics.json"
    md_path = out / f"{name}_metrics.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, format_markdown(metrics, name, delta_m, extra, coherence))
    return json_path, md_path
