"""Loaders of every preset with worker processes, on frames at each dataset's canonical size (issue 9).

A batch must stack whatever each of its samples drew: a zoom of 1 (which leaves the image uint8 and the
normals as the reader gave them) next to a zoom of 1.2 or 1.5 (bicubic float image, warped float normals)
used to crash the MTI-Net loaders in the worker. Each case runs epochs until every augmentation branch of
the preset has been drawn and a batch has mixed them, then checks the batches against the contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densemtl.data.datamodule import MultiTaskDataModule
from densemtl.data.nyud import write_nyud_mt_sample, write_nyud_sample, write_nyuv2_13_sample, write_split


def _frame(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """Smooth image, blocky labels (13 classes, an ignore band), planar depth with a hole, unit normals."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)
    image = np.clip(image.astype(int) + rng.integers(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    semseg = ((x // 37 + 3 * (y // 41)) % 13).astype(np.int64)
    semseg[:4] = 255
    depth = (1.0 + 4.0 * y / h + rng.uniform(0, 0.1)).astype(np.float32)
    depth[h // 2 : h // 2 + 6, w // 3 : w // 3 + 9] = 0.0
    normals = np.stack([np.full((h, w), 0.3), np.full((h, w), -0.4), np.full((h, w), np.sqrt(0.75))], -1)
    normals[depth == 0] = 0.0
    edge = ((x % 37 == 0) | (y % 41 == 0)).astype(np.uint8)
    return {"image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


def _write(layout: str, root: Path, size: tuple[int, int], n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    names = [f"{i:04d}" for i in range(n)]
    val = [f"v{i}" for i in range(2)]
    for i, name in enumerate(names + val):
        f = _frame(rng, *size)
        if layout == "nyud":
            write_nyud_sample(root, name, **f)
        elif layout == "nyud-mt":
            write_nyud_mt_sample(root, name, **f)
        elif i < n:
            write_nyuv2_13_sample(root, "train", i, f["image"], f["semseg"], f["depth"], f["normals"])
        else:
            write_nyuv2_13_sample(root, "val", i - n, f["image"], f["semseg"], f["depth"], f["normals"])
    if layout != "nyuv2-13":
        write_split(root, "train", names)
        write_split(root, "val", val)
    return root


# (dataset layout, preset, canonical frame size of that layout, preset options, the draws to cover)
CASES = [
    ("nyud-mt", "mtinet", (480, 640), {}, {"scale": {1.0, 1.2, 1.5}, "flip": {True, False}}),
    ("nyud", "mtinet", (480, 640), {}, {"scale": {1.0, 1.2, 1.5}, "flip": {True, False}}),  # 8-bit normal codes
    ("nyud", "invpt", (425, 560), {}, {"flip": {True, False}}),
    ("nyuv2-13", "autolambda", (288, 384), {}, {"scale": {1.0, 1.2, 1.5}, "flip": {True, False}}),
    ("nyuv2-13", "mtan", (288, 384), {"augment": True}, {"flip": {True, False}}),
    ("nyuv2-13", "ctal_cnn", (288, 384), {}, {"flip": {True, False}}),
]


def _draws(meta: dict) -> dict[str, object]:
    augment = meta.get("augment", {})
    return {"scale": round(float(augment.get("scale", 1.0)), 4), "flip": bool(augment.get("flip", False))}


@pytest.mark.parametrize("layout,preset,size,options,branches", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_worker_loaders_stack_every_augmentation_branch(tmp_path, layout, preset, size, options, branches):
    root = _write(layout, tmp_path / layout, size)
    tasks = ["semseg", "depth", "normals"] + (["edge"] if layout != "nyuv2-13" else [])
    def datamodule(seed: int) -> MultiTaskDataModule:
        dm = MultiTaskDataModule(
            layout,
            root=str(root),
            tasks=tasks,
            preset=preset,
            batch_size=3,
            num_workers=1,
            seed=seed,
            preset_options=options,
        )
        dm.setup("fit")
        return dm

    seen: dict[str, set] = {k: set() for k in branches}
    mixed = False
    for epoch in range(12):  # outside a Trainer every loader of one seed draws alike: a seed per epoch
        dm = datamodule(seed=100 + epoch)
        for raw in dm.train_dataloader():  # a dtype mix inside a batch raised in the worker here
            batch = dm.on_after_batch_transfer(raw, 0)
            draws = [_draws(m) for m in batch["meta"]]
            for key in branches:
                seen[key] |= {d[key] for d in draws}
            # the crash needed a batch whose first sample kept the uint8 image (zoom 1) and a later one that
            # did not: the worker stacks into a buffer of the first sample's dtype
            mixed |= draws[0]["scale"] == 1.0 and any(d["scale"] != 1.0 for d in draws[1:])
            assert batch["image"].dtype == torch.float32 and batch["image"].shape[0] == 3
            assert batch["semseg"].dtype == torch.int64 and batch["depth"].dtype == torch.float32
            norms = batch["normals"].square().sum(1)
            assert batch["normals"].dtype == torch.float32
            # decoded, not 8-bit codes: never longer than unit (to 8-bit precision); mtan's bilinear resize
            # blends valid and zero normals at holes, so shorter vectors are allowed
            assert torch.isfinite(norms).all() and norms.max() < 1.03
        if all(seen[k] >= branches[k] for k in branches) and (mixed or "scale" not in branches):
            break
    for key, wanted in branches.items():
        assert seen[key] >= wanted, f"{preset}: branch {key} drew only {seen[key]} in 12 epochs"
    if "scale" in branches:
        assert mixed, "no batch began with a zoom of 1 and went on with another zoom"
    val = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert val["image"].dtype == torch.float32
