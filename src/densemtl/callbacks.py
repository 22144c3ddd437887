"""Lightning callbacks: writing prediction pictures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from densemtl.tasks import get_task
from densemtl.viz import colorize, grid, to_display

__all__ = ["PredictionImageWriter", "restore_original_size", "save_png"]


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def restore_original_size(pred: Tensor, meta: Mapping[str, Any]) -> Tensor:
    """Undo the test transform on one prediction (C, h, w): crop padding, then resize to ``meta['size']``.

    ``meta['pad']`` (top, bottom, left, right) in pixels, when present, is cropped first; then the
    prediction is resized bilinearly (align_corners=False) to the original (H, W). Classification
    logits are resized before the argmax, which equals nearest resizing of the argmax at equal size.
    """
    pad = meta.get("pad")
    if pad is not None:
        top, bottom, left, right = (int(v) for v in pad)
        h, w = pred.shape[-2:]
        pred = pred[..., top : h - bottom, left : w - right]
    size = meta.get("size")
    if size is not None and tuple(pred.shape[-2:]) != tuple(int(s) for s in size):
        pred = F.interpolate(
            pred[None].float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False
        )[0]
    return pred


def _task_png(task: str, pred: Tensor) -> np.ndarray:
    """The PNG content of one task prediction: colours, or σ·255 grey for binary tasks (SEISM format)."""
    if get_task(task).kind == "binary":
        return (torch.sigmoid(pred[0].float()) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return colorize(task, pred, is_prediction=True)


class PredictionImageWriter(BasePredictionWriter):
    """Write, per image, one PNG per task under ``<out>/<task>/<name>.png`` and ``<out>/overview/<name>.png``.

    Segmentation is coloured with the VOC palette, depth with a colour map, normals as RGB = (n + 1)/2;
    edge and saliency are written as σ(logit)·255 grey PNGs (the format the SEISM evaluation reads).

    Args:
        output_dir: folder for the pictures; default ``<trainer.log_dir>/predictions``.
        overview: also write the overview grid (image + every task).
        save_raw: also write ``<out>/<task>/<name>.npy`` with the raw prediction at the original size.
    """

    def __init__(self, output_dir: str | None = None, overview: bool = True, save_raw: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.overview = overview
        self.save_raw = save_raw
        self.written: list[Path] = []

    def _out(self, trainer: Trainer) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

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
        out = self._out(trainer)
        preds: Mapping[str, Tensor] = prediction["preds"]
        metas = prediction.get("meta") or [{} for _ in range(next(iter(preds.values())).shape[0])]
        for i, meta in enumerate(metas):
            name = str(meta.get("name", f"{batch_idx:05d}_{i:02d}"))
            restored = {t: restore_original_size(p[i], meta) for t, p in preds.items()}
            for task, pred in restored.items():
                path = out / task / f"{name}.png"
                save_png(_task_png(task, pred), path)
                self.written.append(path)
                if self.save_raw:
                    np.save(out / task / f"{name}.npy", pred.numpy())
            if self.overview:
                image = _original_image(meta, batch["image"][i], next(iter(restored.values())).shape[-2:])
                save_png(grid(image, None, restored), out / "overview" / f"{name}.png")


def _original_image(meta: Mapping[str, Any], normalised: Tensor, size: Sequence[int]) -> np.ndarray:
    """The input image for display: read from ``meta['path']`` if given, else de-normalised."""
    path = meta.get("path")
    if path:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    return to_display(restore_original_size(normalised.float().cpu(), meta))
