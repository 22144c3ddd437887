"""Colour maps for every task and image grids: pure functions shared by datasets, callbacks and CLIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from densemtl.tasks import IGNORE_INDEX, get_task

__all__ = ["colorize", "depth_colormap", "grid", "label_palette", "tile_row", "to_display"]

# Anchor colours of a perceptually ordered map (dark blue -> cyan -> yellow -> red), near to "turbo".
_DEPTH_ANCHORS = np.array(
    [[48, 18, 59], [70, 134, 251], [27, 229, 181], [164, 252, 60], [251, 185, 56], [122, 4, 3]],
    dtype=np.float32,
)


def label_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit-interleaved palette, (n, 3) uint8; index 0 is black."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE = label_palette()


def depth_colormap(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Colour a depth map (H, W) in metres; invalid (<= 0 or non-finite) pixels are black.

    Returns:
        uint8 (H, W, 3); near is blue, far is red.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return out
    lo = float(np.percentile(depth[valid], 1)) if vmin is None else vmin
    hi = float(np.percentile(depth[valid], 99)) if vmax is None else vmax
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * (len(_DEPTH_ANCHORS) - 1)
    i0 = np.floor(t).astype(np.int64).clip(0, len(_DEPTH_ANCHORS) - 2)
    frac = (t - i0)[..., None]
    rgb = _DEPTH_ANCHORS[i0] * (1 - frac) + _DEPTH_ANCHORS[i0 + 1] * frac
    out[valid] = rgb[valid].round().astype(np.uint8)
    return out


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(task: str, value: torch.Tensor | np.ndarray, is_prediction: bool = False) -> np.ndarray:
    """Colour a target or a model prediction of ``task`` for display.

    Args:
        task: task name.
        value: a target in the sample encoding ((H, W) labels, (1, H, W) depth/edge/sal, (3, H, W)
            normals) or, with ``is_prediction``, a model output ((K, H, W) logits, (1, H, W) logit or
            depth, (3, H, W) normals).
        is_prediction: apply argmax / sigmoid / normalisation as the task requires.

    Returns:
        uint8 (H, W, 3).
    """
    kind = get_task(task).kind
    x = _to_numpy(value)
    if kind == "segmentation":
        labels = x.argmax(0) if is_prediction else x
        labels = labels.astype(np.int64)
        out = _PALETTE[np.clip(labels, 0, 255)]
        out[labels == IGNORE_INDEX] = 255
        return out
    x = x.reshape((-1,) + x.shape[-2:])
    if kind == "depth":
        return depth_colormap(x[0])
    if kind == "normals":
        norm = np.linalg.norm(x, axis=0, keepdims=True)
        n = x / np.maximum(norm, 1e-12)
        out = ((n + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8).transpose(1, 2, 0)
        out[norm[0] < 1e-6] = 0
        return out
    # binary: probability as grey, ignore shown in dark red
    p = 1.0 / (1.0 + np.exp(-x[0])) if is_prediction else x[0]
    out = np.repeat((np.clip(p, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    if not is_prediction:
        out[x[0] == IGNORE_INDEX] = (128, 0, 0)
    return out


def tile_row(panels: Sequence[tuple[str, np.ndarray]], height: int | None = None) -> np.ndarray:
    """Place titled panels side by side; every panel is resized to ``height`` (default: the first's)."""
    if not panels:
        raise ValueError("tile_row needs at least one panel")
    height = height or panels[0][1].shape[0]
    tiles = []
    for title, img in panels:
        pil = Image.fromarray(img)
        width = max(1, round(img.shape[1] * height / img.shape[0]))
        pil = pil.resize((width, height), Image.NEAREST)
        canvas = Image.new("RGB", (width, height + 14), (255, 255, 255))
        canvas.paste(pil, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), title, fill=(0, 0, 0))
        tiles.append(np.asarray(canvas))
    sep = np.full((height + 14, 2, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for t in tiles[1:]:
        row += [sep, t]
    return np.concatenate(row, axis=1)


def grid(
    image: np.ndarray,
    targets: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    preds: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    height: int | None = None,
) -> np.ndarray:
    """An overview picture: the image, then one panel per task; targets on top of predictions.

    Args:
        image: uint8 (H, W, 3) RGB.
        targets: task -> target in the sample encoding.
        preds: task -> model output for one image (logits etc., see :func:`colorize`).
        height: panel height in pixels (default: the image's).

    Returns:
        uint8 (H', W', 3).
    """
    rows = []
    if targets:
        rows.append(tile_row([("image", image)] + [(t, colorize(t, v)) for t, v in targets.items()], height))
    if preds:
        rows.append(
            tile_row([("image", image)] + [(f"pred {t}", colorize(t, v, True)) for t, v in preds.items()], height)
        )
    if not rows:
        rows.append(tile_row([("image", image)], height))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, axis=0)


def to_display(image: torch.Tensor) -> np.ndarray:
    """A normalised image (3, H, W) as uint8 (H, W, 3) for display, by per-image min-max stretching."""
    x = image.detach().float().cpu()
    lo, hi = x.amin(), x.amax()
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
