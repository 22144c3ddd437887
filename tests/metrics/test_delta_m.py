"""Δm: hand values, published tables (Auto-λ README, Nash-MTL Δm_flat / LibMTL Δp_task), missing references."""

from __future__ import annotations

import pytest

from densemtl.metrics.delta_m import (
    DeltaM,
    MissingReferenceError,
    compute_delta_m,
    delta_m,
    get_reference,
    load_stl_table,
    metric_direction,
)


def test_hand_computed_primary():
    # semseg mIoU +10 % (higher is better) and depth RMSE +10 % (lower is better): mean of +10 and -10 = 0
    res = delta_m(
        {"semseg": {"miou": 55.0}, "depth": {"rmse": 0.55}}, {"semseg": {"miou": 50.0}, "depth": {"rmse": 0.5}}
    )
    assert res.terms == pytest.approx({"semseg/miou": 10.0, "depth/rmse": -10.0})
    assert res.value == pytest.approx(0.0, abs=1e-12) and res.reason is None


# Auto-λ README (spec/protocols.md §6.3): seg mIoU, depth abs err (x100), normals mean -> published Δm
AUTOLAMBDA_ROWS = [
    (44.64, 43.32, 24.48, 3.57),
    (45.14, 43.06, 24.17, 4.58),
    (45.39, 43.23, 24.18, 4.65),
    (45.15, 42.38, 24.13, 5.09),
    (45.98, 41.26, 24.09, 6.50),
    (46.14, 41.91, 23.52, 7.05),
    (47.17, 40.97, 23.68, 8.21),
    (48.26, 39.82, 22.81, 11.07),
]


@pytest.mark.parametrize(("seg", "depth", "normals", "published"), AUTOLAMBDA_ROWS)
def test_autolambda_table_is_reproduced(seg, depth, normals, published):
    metrics = {"semseg": {"miou": seg}, "depth": {"abs_err": depth / 100, "rmse": 9.9}, "normals": {"mean": normals}}
    res = compute_delta_m(metrics, reference="nyuv2_13/autolambda_stl")
    assert res.value == pytest.approx(published, abs=0.01)
    assert res.reference == "nyuv2_13/autolambda_stl" and "Auto-λ" in res.source


# spec/weighting.md §5: paper rows, with Nash-MTL's Δm_flat (opposite sign) and LibMTL's Δp_task
NASH_ROWS = {
    "EW": ([39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08], 5.59, 0.88),
    "Nash-MTL": ([40.13, 65.93, 0.5261, 0.2171, 25.26, 20.08, 28.40, 55.47, 68.15], -4.05, 7.65),
    "MGDA": ([30.47, 59.90, 0.6070, 0.2555, 24.88, 19.45, 29.18, 56.88, 69.36], 1.38, -1.66),
}


def _nyu13(v):
    return {
        "semseg": {"miou": v[0], "pixel_acc": v[1]},
        "depth": {"abs_err": v[2], "abs_rel": v[3]},
        "normals": {"mean": v[4], "median": v[5], "within_11.25": v[6], "within_22.5": v[7], "within_30": v[8]},
    }


@pytest.mark.parametrize("row", sorted(NASH_ROWS))
def test_all_metrics_and_task_variants_reproduce_published_values(row):
    values, flat_drop, p_task = NASH_ROWS[row]
    flat = compute_delta_m(_nyu13(values), reference="nyuv2_13/cagrad_segnet_stl", variant="all")
    assert len(flat.terms) == 9
    assert flat.value == pytest.approx(-flat_drop, abs=0.011)  # Nash-MTL reports a drop: the opposite sign
    task = compute_delta_m(_nyu13(values), reference="nyuv2_13/cagrad_segnet_stl", variant="task")
    assert task.value == pytest.approx(p_task, abs=0.011)


def test_directions_come_from_the_task_registry():
    assert metric_direction("depth", "rmse") is False
    assert metric_direction("semseg", "miou") is True
    assert metric_direction("depth", "rmse_nonzero") is False  # a companion key takes its base direction
    assert metric_direction("normals", "within_11.25") is True
    assert metric_direction("depth", "banana") is None
    assert metric_direction("nope", "rmse") is None


def test_missing_references_never_raise():
    run = {"semseg": {"miou": 50.0}, "depth": {"rmse": 0.5}, "edge": {"odsf": 70.0}}
    no_default = compute_delta_m(run, family="nyud")
    assert no_default.value is None and "nyud/mtcp_stl" in no_default.reason
    unknown = compute_delta_m(run, reference="nyud/invented")
    assert unknown.value is None and "unknown STL reference 'nyud/invented'" in unknown.reason
    unmeasured = compute_delta_m(run, reference="synthetic_pascal/stl")
    assert unmeasured.value is None and "not measured yet" in unmeasured.reason
    partial = compute_delta_m(run, reference="nyud/mtcp_stl")
    assert partial.value is None and "edge/odsf (not in the reference)" in partial.reason
    assert set(partial.terms) == {"semseg/miou", "depth/rmse"}
    allowed = compute_delta_m(run, reference="nyud/mtcp_stl", allow_partial=True)
    assert allowed.value == pytest.approx(sum(allowed.terms.values()) / 2) and "partial" in allowed.notes[0]
    nan = compute_delta_m({"semseg": {"miou": float("nan")}}, reference={"semseg": {"miou": 50.0}})
    assert nan.value is None and "no finite value" in nan.reason
    zero = compute_delta_m({"semseg": {"miou": 1.0}}, reference={"semseg": {"miou": 0.0}})
    assert zero.value is None and "non-zero" in zero.reason
    with pytest.raises(MissingReferenceError):
        get_reference("pascal/none")
    with pytest.raises(FileNotFoundError, match="does_not_exist.yaml"):
        load_stl_table("does_not_exist.yaml")


def test_metric_choice_entry_primary_and_protocol_note():
    pascal = {"semseg": {"miou": 80.0}, "human_parts": {"miou": 70.0}, "sal": {"maxf": 84.0, "miou": 60.0}}
    res = compute_delta_m(pascal, reference="pascal/mtcp_stl", protocol="default")
    expected = ((80 - 75.10) / 75.10 + (70 - 68.29) / 68.29 + (84 - 82.22) / 82.22) / 3 * 100
    assert res.value == pytest.approx(expected)
    assert "mtcp_reference" in res.notes[0]
    by_miou = compute_delta_m(pascal, reference="pascal/mtcp_stl", metric_choice={"sal": "miou"})
    assert by_miou.value is None and "sal/miou (not in the reference)" in by_miou.reason
    # the Auto-λ entry makes depth abs_err the primary depth metric
    assert get_reference("nyuv2_13/autolambda_stl").primary == {"depth": "abs_err"}


def test_custom_table_and_delta_m_object(tmp_path):
    table = tmp_path / "stl.yaml"
    table.write_text(
        "version: 1\ndefaults: {toy: mine}\nreferences:\n  toy:\n    mine:\n      source: ours\n"
        "      metrics:\n        depth: {rmse: 2.0}\n",
        encoding="utf-8",
    )
    loaded = load_stl_table(table)
    res = compute_delta_m({"depth": {"rmse": 1.5}}, family="toy", table=loaded)
    assert res.value == pytest.approx(25.0) and res.reference == "toy/mine" and res.source == "ours"
    dm = DeltaM({"depth": {"rmse": 2.0}})
    assert dm({"depth": {"rmse": 2.5}}).value == pytest.approx(-25.0)
    with pytest.raises(ValueError, match="variant"):
        DeltaM(variant="geometric")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="references"):
        load_stl_table(bad)
