"""Configuration mistakes fail right after parsing, before data setup or training, naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densemtl.cli import main
from densemtl.config_checks import check_config, logged_val_metrics

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))
DEMO = Path(__file__).resolve().parents[1] / "src" / "densemtl" / "resources" / "demo.yaml"


def _fit(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        f"--config={DEMO}",
        f"--data.root={tmp_path / 'data'}",
        '--data.generate={"train": 2, "val": 1, "size": [16, 16], "seed": 0, "workers": 1}',
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.fast_dev_run=1",
        *extra,
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.lr=-0.001", r"model\.lr = -0\.001: expected a positive, finite learning rate"),
        ("--checkpoint.monitor=val/semseg/mIoU", r"checkpoint\.monitor = 'val/semseg/mIoU' .*'val/semseg/miou'"),
        ("--checkpoint.monitor=val/edge/odsf", r"'val/edge/odsf' is not a key this run logs"),  # test-time only
        ("--checkpoint.mode=min", r"checkpoint\.mode = 'min' contradicts .*'val/semseg/miou'.*higher is better"),
        ('--model.weighting_args={"weights": {"sal": 2.0}}', r"model\.weighting_args\.weights .*\['sal'\]"),
        ("--checkpoint.monitor=val/delta_m", None),  # the demo names a measured reference: accepted
    ],
)
def test_config_errors_stop_the_run_before_data_setup(tmp_path: Path, option: str, message: str | None) -> None:
    if message is None:
        check_config(
            {
                "model": {**yaml.safe_load(DEMO.read_text())["model"]},
                "data": {"dataset": "synth-nyud"},
                "checkpoint": {"monitor": "val/delta_m", "mode": "max"},
            }
        )
        return
    with pytest.raises(ValueError, match=message):
        main(_fit(tmp_path, option))
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # nothing generated or written


def test_delta_m_monitor_needs_a_reference() -> None:
    config = {"model": {}, "data": {"dataset": "nyud"}, "checkpoint": {"monitor": "val/delta_m", "mode": "max"}}
    with pytest.raises(ValueError, match=r"checkpoint\.monitor = 'val/delta_m', but this run logs no Δm"):
        check_config(config)


def test_logged_names_follow_the_protocol_and_options() -> None:
    names = logged_val_metrics(["semseg", "sal", "edge"], {"semseg": 21}, "pascal", protocol="invpt")
    assert {"val/semseg/miou", "val/semseg/pixel_acc", "val/sal/maxf_atrc", "val/edge/loss"} <= set(names)
    assert "val/edge/odsf" not in names  # computed at test time only by default
    with_odsf = logged_val_metrics(["edge"], {}, "pascal", val_metrics_args={})
    assert {"val/edge/loss", "val/edge/odsf"} <= set(with_odsf)


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_every_shipped_config_passes_the_checks(path: Path) -> None:
    check_config(yaml.safe_load(path.read_text()))


def test_numbers_and_per_task_arguments() -> None:
    base = {"data": {"dataset": "nyud", "tasks": ["semseg", "depth"]}}
    for model, message in (
        ({"weight_decay": -1.0}, r"model\.weight_decay = -1\.0"),
        ({"momentum": 1.5}, r"model\.momentum = 1\.5"),
        ({"lr": float("nan")}, r"model\.lr = nan"),
        ({"lr": "0.1"}, r"model\.lr = '0\.1'"),
        ({"weighting": "famo", "weighting_args": {"min_losses": {"normals": 0.0}}}, r"min_losses .*\['normals'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            check_config({**base, "model": model})
    check_config({**base, "model": {"weighting": "static", "weighting_args": {"weights": {"depth": 2.0}}}})
