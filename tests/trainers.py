"""Small fits for tests: a quiet CPU ``Trainer``, a tiny seeded HPS engine module, and the ``densemtl fit``
arguments of a tiny demo run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from densemtl.engine import MultiTaskModule

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "limit_val_batches": 0,
}

TINY_HPS: dict[str, Any] = {
    "tasks": ["semseg", "depth", "normals"],
    "num_classes": {"semseg": 3},
    "family": "nyud",
    "arch": "hps",
    "arch_args": {"pretrained": None, "neck_channels": 8, "head_channels": 8},
    "scheduler": "none",
    "log_images": 0,
}
"""A random-init HPS (tf_efficientnet_lite0, 8-channel neck and heads) on semseg (3 classes), depth and normals."""


def quiet_trainer(root: Any = None, **kwargs: Any) -> L.Trainer:
    """``L.Trainer(default_root_dir=root, **QUIET, **kwargs)``; ``kwargs`` override the quiet settings."""
    options = {**QUIET, **kwargs}
    if root is not None:
        options["default_root_dir"] = root
    return L.Trainer(**options)


def tiny_module(**kwargs: Any) -> MultiTaskModule:
    """``MultiTaskModule(**TINY_HPS, **kwargs)`` built after ``torch.manual_seed(0)`` (same initial weights in
    every call); ``kwargs`` override ``TINY_HPS``."""
    torch.manual_seed(0)
    return MultiTaskModule(**{**TINY_HPS, **kwargs})


def tiny_fit_args(tmp_path: Path, max_epochs: int) -> list[str]:
    """``densemtl fit`` arguments of the demo config on 8 generated 32x40 training images, a ResNet-18 HPS with
    8-channel neck and heads, batch 2, no images logged, no progress bar, runs under ``tmp_path/runs``."""
    return [
        "fit",
        "--config=src/densemtl/resources/demo.yaml",
        f"--data.root={tmp_path / 'data'}",
        '--data.generate={"train": 8, "val": 2, "size": [32, 40], "seed": 0, "workers": 1}',
        "--data.train_size=[32, 40]",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--model.log_images=0",
        "--model.arch_args={'encoder': 'resnet18', 'pretrained': null, 'neck_channels': 8, 'head_channels': 8}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--trainer.max_epochs={max_epochs}",
        "--trainer.enable_progress_bar=false",
    ]
