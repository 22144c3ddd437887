"""Results writer: JSON content, Markdown table with directions and Δm, atomic writes, errors."""

from __future__ import annotations

import json

import pytest
import torch

from densemtl.metrics.delta_m import DeltaMResult
from densemtl.results import write_results

METRICS = {
    "semseg": {"miou": 45.1234567, "pixel_acc": 70.5},
    "depth": {"rmse": 0.5123, "rmse_nonzero": float("nan")},
}


def test_json_and_markdown(tmp_path):
    delta = DeltaMResult(value=-1.234, terms={"semseg/miou": 1.0}, reference="nyud/mtcp_stl", source="paper")
    json_path, md_path = write_results(METRICS, tmp_path / "run", extra={"protocol": "default"}, delta_m=delta)
    assert json_path == tmp_path / "run" / "test_metrics.json" and md_path.name == "test_metrics.md"
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["metrics"]["semseg"] == {"miou": 45.1234567, "pixel_acc": 70.5}
    assert data["metrics"]["depth"]["rmse_nonzero"] is None  # NaN is not valid JSON
    assert data["meta"] == {"protocol": "default"} and data["name"] == "test"
    assert data["directions"]["depth"] == {"rmse": False, "rmse_nonzero": False}
    assert data["delta_m"]["value"] == -1.234 and data["delta_m"]["reference"] == "nyud/mtcp_stl"
    md = md_path.read_text(encoding="utf-8")
    assert "| semseg | miou ↑ 45.1235 · pixel_acc ↑ 70.5000 |" in md
    assert "| depth | rmse ↓ 0.5123 · rmse_nonzero ↓ n/a |" in md
    assert "Δm ↑ = -1.23 %" in md and "nyud/mtcp_stl" in md
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["test_metrics.json", "test_metrics.md"]


def test_missing_delta_m_reason_tensors_and_name(tmp_path):
    metrics = {"semseg": {"miou": torch.tensor(50.0, dtype=torch.float64), "iou_per_class": [40.0, 60.0]}}
    delta = DeltaMResult(value=None, reason="no default for family 'synthetic'")
    json_path, md_path = write_results(metrics, tmp_path, name="val", delta_m=delta)
    assert json.loads(json_path.read_text())["metrics"]["semseg"] == {"miou": 50.0, "iou_per_class": [40.0, 60.0]}
    md = md_path.read_text(encoding="utf-8")
    assert "Δm: not computed (no default for family 'synthetic')" in md
    assert "iou_per_class" not in md  # vectors stay in the JSON only
    write_results(metrics, tmp_path, name="val", delta_m=3.0)  # overwrite in place
    assert "Δm ↑ = +3.00 %" in md_path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="file-name stem"):
        write_results(metrics, tmp_path, name="a/b")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    json_path, _ = write_results({"depth": {"rmse": 1.0}}, tmp_path)
    old = json_path.read_text(encoding="utf-8")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("densemtl.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_results({"depth": {"rmse": 2.0}}, tmp_path)
    assert json_path.read_text(encoding="utf-8") == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_metrics.json", "test_metrics.md"]
