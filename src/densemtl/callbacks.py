"""Lightning callbacks: writing prediction pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from densemtl.data.transforms import restore_predictions
from densemtl.io import atomic_write_text, save_png
from densemtl.tasks import get_task
from densemtl.viz import colorize, tile_row, to_display

__all__ = ["PredictionImageWriter"]


def _task_png(task: str, pred: Tensor) -> np.ndarray:
    """The PNG content of one restored prediction: colours, or σ·255 grey for binary tasks (SEISM format).

    Args:
        task: task name.
        pred: int64 (H, W) labels for segmentation tasks, else the raw (C, H, W) output.
    """
    kind = get_task(task).kind
    if kind == "binary":
        return (torch.sigmoid(pred[0].float()) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return colorize(task, pred, is_prediction=kind != "segmentation")


class PredictionImageWriter(BasePredictionWriter):
    """Write, per image, one PNG per task under ``<out>/<task>/<name>.png`` and ``<out>/overview/<name>.png``.

    Segmentation is coloured with the VOC palette, depth with a colour map, normals as RGB = (n + 1)/2;
    edge and saliency are written as σ(logit)·255 grey PNGs (the format the SEISM evaluation reads).

    Args:
        output_dir: folder for the pictures; default ``<trainer.log_dir>/predictions`` when the logger writes
            under ``trainer.default_root_dir``, else ``<trainer.default_root_dir>/predictions``. Files of a
            prediction folder that could not be read are listed in ``skipped.txt`` there.
        overview: also write the overview grid (image + every task).
        save_raw: also write ``<out>/<task>/<name>.npy`` with the raw prediction at the original size.
    """

    def __init__(self, output_dir: str | None = None, overview: bool = True, save_raw: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overview = overview
        self.save_raw = save_raw
        self.written: list[Path] = []
        self._dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): resolve the folder once, here, on
        # every rank; read inside the rank-0-only branch of on_predict_end it would wait for the other ranks
        self._dir = self._out(trainer)

    def _folder(self, trainer: Trainer) -> Path:
        """The folder resolved in :meth:`setup` (``_out`` when the hooks are driven without it)."""
        return self._dir if self._dir is not None else self._out(trainer)

    def _out(self, trainer: Trainer) -> Path:
        """``output_dir``; else ``<log_dir>/predictions`` when the logger writes under ``default_root_dir``;
        else ``<default_root_dir>/predictions`` (a run's config names its own logger folder: predictions made
        with it go where ``--trainer.default_root_dir`` says, not into the training run)."""
        if self.output_dir:
            return Path(self.output_dir)
        root = Path(trainer.default_root_dir)
        log_dir = Path(trainer.log_dir) if trainer.log_dir else None
        if log_dir is not None and log_dir.resolve().is_relative_to(root.resolve()):
            return log_dir / "predictions"
        return root / "predictions"

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """List the files of the prediction folder that could not be read in ``<out>/skipped.txt``."""
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or {}
        skipped = getattr(datasets.get("predict"), "skipped", None)
        if skipped and trainer.is_global_zero:
            lines = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
            atomic_write_text(self._folder(trainer) / "skipped.txt", lines)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = self._folder(trainer)
        preds: Mapping[str, Tensor] = prediction["preds"]
        metas = prediction.get("meta") or [{} for _ in range(next(iter(preds.values())).shape[0])]
        for i, meta in enumerate(metas):
            name = str(meta.get("name", f"{batch_idx:05d}_{i:02d}"))
            restored = (
                restore_predictions({t: p[i] for t, p in preds.items()}, meta)
                if meta
                else {t: p[i] for t, p in preds.items()}
            )
            for task, pred in restored.items():
                path = out / task / f"{name}.png"
                save_png(path, _task_png(task, pred))
                self.written.append(path)
                if self.save_raw:
                    np.save(out / task / f"{name}.npy", pred.numpy())
            if self.overview:
                image = _original_image(meta, batch["image"][i])
                panels = {t: torch.from_numpy(_task_png(t, p)) for t, p in restored.items()}
                save_png(out / "overview" / f"{name}.png", _overview(image, panels))


def _original_image(meta: Mapping[str, Any], normalised: Tensor) -> np.ndarray:
    """The input image for display: read from ``meta['path']`` if given, else de-normalised."""
    path = meta.get("path")
    if path:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    return to_display(normalised)


def _overview(image: np.ndarray, panels: Mapping[str, Tensor]) -> np.ndarray:
    """The image and every task's picture side by side (panels already coloured, uint8)."""
    rows = [("image", image)]
    for task, panel in panels.items():
        arr = panel.numpy()
        rows.append((task, arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)))
    return tile_row(rows, height=image.shape[0])
