"""Every shipped config runs one training and one validation batch (fast_dev_run) on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from densemtl.cli import cli_main
from densemtl.data.cityscapes import write_cityscapes_sample
from densemtl.data.nyud import write_nyud_mt_sample, write_nyuv2_13_sample, write_split
from densemtl.data.synthetic import generate_synth_nyud, generate_synth_pascal

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*/*.yaml"))
SIZE = (48, 64)


def _random_sample(rng: np.random.Generator) -> dict:
    h, w = SIZE
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    return {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "semseg": rng.integers(0, 13, (h, w)),
        "depth": rng.uniform(0.5, 8.0, (h, w)).astype(np.float32),
        "normals": normals,
    }


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("configs")
    rng = np.random.default_rng(0)
    nyud_mt = base / "NYUD_MT"
    for split, names in (("train", ["a", "b"]), ("val", ["c", "d"])):
        for name in names:
            s = _random_sample(rng)
            write_nyud_mt_sample(nyud_mt, name, edge=(rng.random(SIZE) > 0.9).astype(np.uint8), **s)
        write_split(nyud_mt, split, names)
    nyuv2 = base / "nyuv2"
    for split in ("train", "val"):
        for i in range(2):
            s = _random_sample(rng)
            write_nyuv2_13_sample(nyuv2, split, i, **s)
    cityscapes = base / "cityscapes"
    for split in ("train", "val"):
        for i in range(2):
            s = _random_sample(rng)
            write_cityscapes_sample(cityscapes, split, i, s["image"], rng.integers(0, 19, SIZE), s["depth"])
    return {
        "cityscapes": cityscapes,
        "nyud": generate_synth_nyud(base / "NYUDv2", train=2, val=2, size=SIZE),
        "nyud-mt": nyud_mt,
        "nyuv2-13": nyuv2,
        "pascal": generate_synth_pascal(base / "PASCAL_MT", train=2, val=2, size=SIZE),
    }


def _dataset_of(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.strip().startswith("dataset:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{config} names no data.dataset")


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.parent.name}/{c.stem}" for c in CONFIGS])
def test_config_trains_and_validates_one_batch(config, roots, tmp_path):
    dataset = _dataset_of(config)
    args = [
        "fit",
        f"--config={config}",
        "--trainer.fast_dev_run=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.num_workers=0",
        "--data.batch_size=2",
    ]
    if dataset.startswith("synth-"):
        args += [f"--data.root={tmp_path / 'data'}", '--data.generate={"train": 2, "val": 2, "size": [48, 64]}']
    else:
        args.append(f"--data.root={roots[dataset]}")
    if dataset not in ("nyuv2-13", "cityscapes"):  # the mtan / ctal_cnn presets keep the stored size
        args.append(f"--data.train_size=[{SIZE[0]}, {SIZE[1]}]")
    arch_args = yaml.safe_load(config.read_text())["model"].get("arch_args") or {}
    if "input_size" in arch_args:  # models bound to one input size (CTAL): the test size and, for HRNet (which
        # needs sizes divisible by 32), EfficientNet-Lite0 with random weights
        arch_args = {**arch_args, "input_size": list(SIZE)}
        if str(arch_args.get("backbone", "")).startswith("swin"):  # a tiny Swin-V2, random weights
            tiny = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
            arch_args.update(pretrained=None, backbone_args=tiny)
        elif str(arch_args.get("encoder", "hrnet")).startswith("hrnet"):
            arch_args.update(encoder="tf_efficientnet_lite0", pretrained=None)
        args.append(f"--model.arch_args={json.dumps(arch_args)}")
    if arch_args.get("backbone") == "mask2former":  # MT-CP's paper configs need the Swin-S checkpoint files: the
        # same Mask2Former fusion around EfficientNet-Lite0 with random weights and narrow widths instead
        arch_args = {**arch_args, "backbone": "tf_efficientnet_lite0", "pretrained": None, "channels": 32,
                     "width": 16, "num_queries": 8, "encoder_layers": 1, "decoder_layers": 2, "feedforward": 32}
        args.append(f"--model.arch_args={json.dumps(arch_args)}")
    cli = cli_main(args)
    assert cli.trainer.state.finished
    assert cli.model.tasks == cli.datamodule.tasks
