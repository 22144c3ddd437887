"""``densemtl demo``: generate a small synthetic NYUD-like set, train, test and predict, on CPU in minutes."""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = resources.files("densemtl") / "resources" / "demo.yaml"
"""The demo's LightningCLI config (a package resource); its values are the defaults below."""


def _logger_args(out: Path, version: str) -> list[str]:
    """CLI overrides that put a stage's logs, config and results in ``<out>/<version>``."""
    return [
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={out}",
        "--trainer.logger.name=",
        f"--trainer.logger.version={version}",
    ]


def run_demo(
    out: str = "runs/demo",
    data_root: str = "data_cache/synth-nyud-demo",
    train: int = 400,
    val: int = 100,
    size: tuple[int, int] = (120, 160),
    epochs: int = 10,
    batch_size: int = 8,
    workers: int = 2,
    arch: str = "hps",
    pretrained: str | None = "imagenet",
    predict_images: int = 4,
) -> Path:
    """Generate ``synth-nyud``, train a multi-task model, test it, predict pictures, print the metrics.

    Args:
        out: run folder: ``fit/`` (config, checkpoints, TensorBoard logs), ``test/`` (metrics JSON and
            Markdown), ``predict/predictions/`` (one PNG per task and image, overview grids).
        data_root: where the synthetic dataset is generated (once; reused when it exists).
        train: number of training images.
        val: number of validation/test images.
        size: image size (height, width) in pixels.
        epochs: training epochs.
        batch_size: training batch size.
        workers: processes for data generation.
        arch: model registry name (``hps``, ``stl``, ...).
        pretrained: encoder weights (``imagenet``: the offline EfficientNet-Lite0 weights; None: random).
        predict_images: how many validation images to run ``predict`` on.

    Returns:
        The run folder.
    """
    from densemtl.cli import cli_main
    from densemtl.data.owned import check_replaceable, write_owner_marker

    start = time.perf_counter()
    out_dir = Path(out)
    height, width = (int(v) for v in size)
    generate = {"train": train, "val": val, "size": [height, width], "seed": 0, "workers": workers}
    common = [
        f"--config={DEMO_CONFIG}",
        f"--data.root={data_root}",
        f"--data.generate={json.dumps(generate)}",
        f"--data.train_size=[{height}, {width}]",
        f"--model.arch={arch}",
        f"--model.arch_args.pretrained={pretrained if pretrained else 'null'}",
        f"--trainer.default_root_dir={out_dir}",
    ]
    print(f"[densemtl demo] dataset synth-nyud ({train} train / {val} val, {height}x{width}) in {data_root}")
    fit = cli_main(
        [
            "fit",
            *common,
            f"--trainer.max_epochs={epochs}",
            f"--data.batch_size={batch_size}",
            *_logger_args(out_dir, "fit"),
        ]
    )
    checkpoint = fit.trainer.checkpoint_callback
    best = checkpoint.best_model_path or checkpoint.last_model_path
    print(f"[densemtl demo] trained in {time.perf_counter() - start:.0f} s; checkpoint {best}")

    cli_main(["test", *common, f"--ckpt_path={best}", *_logger_args(out_dir, "test")])
    table = out_dir / "test" / "test_metrics.md"

    inputs = out_dir / "predict_inputs"
    check_replaceable(inputs, overwrite=True)  # only a folder an earlier demo wrote is replaced
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    write_owner_marker(inputs, "demo")
    dataset_root = Path(data_root)
    names = (dataset_root / "gt_sets" / "val.txt").read_text().split()[:predict_images]
    for name in names:
        shutil.copy(dataset_root / "images" / f"{name}.png", inputs / f"{name}.png")
    cli_main(
        ["predict", *common, f"--ckpt_path={best}", f"--data.predict_dir={inputs}", *_logger_args(out_dir, "predict")]
    )

    print()
    print(table.read_text())
    print(f"[densemtl demo] finished in {time.perf_counter() - start:.0f} s")
    print(f"[densemtl demo] metrics: {table} and {table.with_suffix('.json')}")
    print(f"[densemtl demo] pictures: {out_dir / 'predict' / 'predictions'} (overview/ has one grid per image)")
    print(f"[densemtl demo] TensorBoard: tensorboard --logdir {out_dir}")
    return out_dir
