"""End to end through the `densemtl` command: generate, fit -> test -> predict (the demo path), errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from densemtl.cli import main
from densemtl.demo import run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out = run_demo(
        out=str(root / "run"),
        data_root=str(root / "data"),
        train=8,
        val=4,
        size=(48, 64),
        epochs=1,
        batch_size=4,
        workers=1,
        predict_images=2,
    )
    return out, root / "data"


def test_fit_writes_checkpoints_and_resolved_config(demo_run):
    out, _ = demo_run
    assert (out / "fit" / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "fit" / "checkpoints").glob("best-*.ckpt"))
    config = (out / "fit" / "config.yaml").read_text()
    assert "synth-nyud" in config and "arch: hps" in config


def test_test_writes_metrics_json_and_table(demo_run):
    out, _ = demo_run
    metrics = json.loads((out / "test" / "test_metrics.json").read_text())
    tasks = metrics["metrics"]
    assert set(tasks) == {"semseg", "depth", "normals", "edge"}
    assert 0.0 <= tasks["semseg"]["miou"] <= 100.0
    assert tasks["depth"]["rmse"] > 0.0
    assert 0.0 <= tasks["normals"]["mean"] <= 180.0
    assert 0.0 <= tasks["edge"]["odsf"] <= 100.0
    table = (out / "test" / "test_metrics.md").read_text()
    assert "| semseg |" in table and "Δm" in table
    assert "trained_epochs: 1" in table


def test_test_and_predict_report_cross_task_coherence(demo_run):
    """Issue 15: a ``coherence`` section beside the accuracy metrics (predictions and GT), and on the
    unlabelled predict folder (predictions only)."""
    out, _ = demo_run
    coherence = json.loads((out / "test" / "test_metrics.json").read_text())["coherence"]
    assert set(coherence) == {"pred", "gt"}
    assert set(coherence["gt"]) == {"depth_normal", "boundary", "floor_wall"}
    assert coherence["gt"]["depth_normal"]["mean"] < 1.0  # the generator's scenes are coherent (8-bit normals)
    assert "## Cross-task coherence" in (out / "test" / "test_metrics.md").read_text()
    predicted = json.loads((out / "predict" / "predict_metrics.json").read_text())["coherence"]
    assert list(predicted) == ["pred"] and 0.0 <= predicted["pred"]["boundary"]["f"] <= 100.0


def test_predict_writes_one_png_per_task_at_the_original_size(demo_run):
    out, data = demo_run
    pred_dir = out / "predict" / "predictions"
    names = sorted(p.stem for p in (out / "predict_inputs").glob("*.png"))
    assert len(names) == 2
    for name in names:
        for task in ("semseg", "depth", "normals", "edge"):
            with Image.open(pred_dir / task / f"{name}.png") as im:
                assert im.size == (64, 48)
        with Image.open(pred_dir / "overview" / f"{name}.png") as im:
            assert im.size[1] > 48 and im.size[0] > 4 * 64
    with Image.open(pred_dir / "edge" / f"{names[0]}.png") as im:
        assert im.mode == "L"  # sigma(logit) * 255 grey, the SEISM export format
    with Image.open(pred_dir / "semseg" / f"{names[0]}.png") as im:
        assert np.asarray(im).shape == (48, 64, 3)


def test_generate_command_writes_a_dataset_card(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "synth-nyud", "--out", str(out), "--train", "2", "--val", "1", "--size", "24x32"]) == 0
    assert (out / "README.md").is_file()
    assert len((out / "gt_sets" / "train.txt").read_text().split()) == 2
    assert str(out) in capsys.readouterr().out


def test_verify_dataset_reports_the_variant(demo_run, capsys):
    _, data = demo_run
    assert main(["verify-dataset", str(data)]) == 0
    assert "nyud" in capsys.readouterr().out


def _fit_args(tmp_path, data, *extra):
    return [
        "fit",
        "--config=src/densemtl/resources/demo.yaml",
        f"--data.root={data}",
        '--data.generate={"train": 8, "val": 4, "size": [48, 64], "seed": 0, "workers": 1}',
        "--data.train_size=[48, 64]",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=1",
        *extra,
    ]


def test_a_task_the_dataset_lacks_is_caught_before_training(demo_run, tmp_path, capsys):
    _, data = demo_run
    with pytest.raises((SystemExit, ValueError)) as info:
        main(_fit_args(tmp_path, data, "--data.tasks=[semseg, sal]"))
    message = str(info.value) + capsys.readouterr().err
    assert "'sal'" in message and "semseg" in message and "depth" in message


def test_unknown_model_lists_the_valid_names(demo_run, tmp_path, capsys):
    _, data = demo_run
    with pytest.raises((SystemExit, ValueError)) as info:
        main(_fit_args(tmp_path, data, "--model.arch=resnet_mtl"))
    message = str(info.value) + capsys.readouterr().err
    assert "unknown model 'resnet_mtl'" in message and "'hps'" in message


def test_fit_resumes_from_the_last_checkpoint(demo_run, tmp_path):
    import torch

    out, data = demo_run
    last = out / "fit" / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=False)
    args = _fit_args(tmp_path, data, f"--ckpt_path={last}", "--trainer.max_epochs=2", "--data.batch_size=4")
    args.remove("--trainer.fast_dev_run=1")
    assert main(args) == 0
    resumed = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert before["epoch"] == 0 and resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * before["global_step"]


def test_verify_dataset_json_report_and_exit_status(tmp_path, capsys):
    """--json prints the machine-readable report; a split that cannot be read makes the command exit 1."""
    import json

    import numpy as np

    from densemtl.data.nyud import write_nyud_mt_sample, write_split

    zeros = np.zeros((6, 8))
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for n in names:
            image, normals = np.zeros((6, 8, 3), np.uint8), np.zeros((6, 8, 3))
            write_nyud_mt_sample(tmp_path, n, image, zeros.astype(int), zeros, normals, zeros)
        write_split(tmp_path, split, names)
    assert main(["verify-dataset", str(tmp_path), "--json", "true"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "nyud-mt" and report["ok"] is True
    assert [(s["split"], s["samples"], s["expected"]) for s in report["splits"]] == [("train", 2, 795), ("val", 1, 654)]
    (tmp_path / "depth" / "c.npy").unlink()
    assert main(["verify-dataset", str(tmp_path), "--json", "true"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "depth/c.npy" in report["errors"][0]


def test_predict_on_a_users_folder_with_the_runs_config(demo_run, tmp_path, capsys):
    """Any size (the demo pads to 48x64 and never resizes), distinct names, unreadable files listed, output
    where --trainer.default_root_dir says; --data.predict_strict stops on an unreadable file."""
    out, _ = demo_run
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photos / "photo.png")
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(photos / "photo.jpg")  # > pad size
    (photos / "album.jpg").mkdir()
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    best = next((out / "fit" / "checkpoints").glob("best-*.ckpt"))
    fit_config = (out / "fit" / "config.yaml").read_bytes()
    fit_hparams = (out / "fit" / "hparams.yaml").read_bytes()
    args = [
        "predict",
        f"--config={out / 'fit' / 'config.yaml'}",
        f"--ckpt_path={best}",
        f"--data.predict_dir={photos}",
        f"--trainer.default_root_dir={tmp_path / 'mine'}",
    ]
    assert main(args) == 0
    pred_dir = tmp_path / "mine" / "predictions"
    for name, size in (("photo.png", (50, 40)), ("photo.jpg", (200, 120))):
        for task in ("semseg", "depth", "normals", "edge"):
            with Image.open(pred_dir / task / f"{name}.png") as im:
                assert im.size == size
    assert "corrupt.jpg" in (pred_dir / "skipped.txt").read_text()
    assert not (out / "fit" / "predictions").exists()  # nothing written into the training run
    # the run's config names its logger folder: predict's config goes beside the training run's, never over it
    assert (out / "fit" / "config.yaml").read_bytes() == fit_config
    assert (out / "fit" / "hparams.yaml").read_bytes() == fit_hparams
    assert "predict" in (out / "fit" / "config-predict.yaml").read_text()
    with pytest.raises(ValueError, match=r"1 file\(s\) cannot be read:\n.*corrupt\.jpg"):
        main([*args, "--data.predict_strict=true"])
