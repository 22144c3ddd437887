"""The resolved config of a command, saved into its run folder without overwriting another command's.

LightningCLI saves ``config.yaml`` into the logger's folder. With an explicit logger version (the demo's
``fit``/``test`` folders, or ``test --config <run>/config.yaml`` of a run that named its version), a later
``test``, ``validate`` or ``predict`` lands in the same folder and would replace the training run's
``config.yaml``. :class:`KeepingConfigCallback` never replaces an existing file: the config goes to
``config.yaml`` when that is free, else to ``config-<stage>.yaml``, else ``config-<stage>-<n>.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback

__all__ = ["KeepingConfigCallback", "free_config_name"]

log = logging.getLogger(__name__)


def free_config_name(folder: str | Path, stage: str, name: str = "config.yaml") -> str:
    """The first of ``name``, ``<stem>-<stage><suffix>``, ``<stem>-<stage>-<n><suffix>`` (n = 1, 2, ...) that does
    not exist in ``folder``."""
    folder = Path(folder)
    if not (folder / name).exists():
        return name
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = f"{stem}-{stage}{suffix}", 0
    while (folder / candidate).exists():
        n += 1
        candidate = f"{stem}-{stage}-{n}{suffix}"
    return candidate


class KeepingConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that writes to a free file name instead of overwriting (see the module doc)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn ("fit", "test", ...)
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir
            if log_dir is not None:
                name = free_config_name(log_dir, stage) if trainer.is_global_zero else None
                name = trainer.strategy.broadcast(name)
                if name != "config.yaml":
                    log.warning("%s already holds a config.yaml; this %s run's config goes to %s", log_dir, stage, name)
                self.config_filename = name
        super().setup(trainer, pl_module, stage)
