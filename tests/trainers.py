"""A quiet CPU ``Trainer`` for tests that fit a few steps: no logger, checkpoints, progress bar, model summary
or validation unless a test asks for them."""

from __future__ import annotations

from typing import Any

import lightning as L

QUIET = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "limit_val_batches": 0,
}


def quiet_trainer(root: Any = None, **kwargs: Any) -> L.Trainer:
    """``L.Trainer(default_root_dir=root, **QUIET, **kwargs)``; ``kwargs`` override the quiet settings."""
    options = {**QUIET, **kwargs}
    if root is not None:
        options["default_root_dir"] = root
    return L.Trainer(**options)
