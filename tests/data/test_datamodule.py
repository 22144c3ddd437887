"""MultiTaskDataModule: contract of the batches, facts before setup, errors, synthetic generation, seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.data import datamodule as dm_module
from densemtl.data.datamodule import MultiTaskDataModule, collate
from densemtl.data.nyud import NYUD, write_nyud_sample, write_split
from densemtl.data.transforms import decode_normals_png8

H, W = 20, 28


def write_tiny_nyud(root: Path, n_train: int = 5, n_val: int = 3, seed: int = 0) -> Path:
    """A tiny ``nyud`` (ATRC layout) dataset: smooth image, piecewise labels, depth 0.5-10 m."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    names = {"train": [f"t{i}" for i in range(n_train)], "val": [f"v{i}" for i in range(n_val)]}
    for split, ids in names.items():
        for name in ids:
            image = np.stack([x * 8, y * 10, (x + y) * 4], -1).astype(np.uint8) + rng.integers(0, 5, (H, W, 3)).astype(
                np.uint8
            )
            semseg = (x // 7 + 4 * (y // 10)) % 40
            semseg[0] = 255
            depth = (0.5 + 9.5 * y / H).astype(np.float32)
            n = np.stack([np.zeros((H, W)), -0.6 * np.ones((H, W)), 0.8 * np.ones((H, W))], -1)
            edge = (x % 7 == 0).astype(np.uint8)
            write_nyud_sample(root, name, image, semseg, depth, n, edge)
        write_split(root, split, ids)
    return root


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory) -> Path:
    return write_tiny_nyud(tmp_path_factory.mktemp("nyud"))


def test_facts_available_before_setup(tmp_path):
    dm = MultiTaskDataModule(
        "nyud", root=str(tmp_path / "absent"), tasks=["semseg", "depth"], preset="invpt", train_size=(24, 32)
    )
    assert dm.tasks == ("semseg", "depth")
    assert dm.num_classes == {"semseg": 40}
    assert dm.task_channels == {"semseg": 40, "depth": 1}
    assert dm.family == "nyud"
    assert len(dm.class_names["semseg"]) == 40
    all_tasks = MultiTaskDataModule("nyud", root=str(tmp_path))
    assert all_tasks.tasks == ("semseg", "depth", "normals", "edge")


def test_errors_name_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; available: .*'nyud'"):
        MultiTaskDataModule("nope", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown transform preset 'nope'; available: .*'invpt'"):
        MultiTaskDataModule("nyud", root=str(tmp_path), preset="nope")
    with pytest.raises(
        ValueError, match=r"does not provide task\(s\) \['sal'\]; it has \['semseg', 'depth', 'normals', 'edge'\]"
    ):
        MultiTaskDataModule("nyud", root=str(tmp_path), tasks=["semseg", "sal"])
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskDataModule("nyud", root=str(tmp_path), tasks=["semseg", "segm"])
    with pytest.raises(ValueError, match="unknown normalization"):
        MultiTaskDataModule("nyud", root=str(tmp_path), normalization="nope")
    with pytest.raises(ValueError, match="no default size"):
        MultiTaskDataModule("nyuv2-13", root=str(tmp_path), preset="invpt")
    with pytest.raises(ValueError, match="only for synthetic"):
        MultiTaskDataModule("nyud", root=str(tmp_path), generate={"n": 3})


def test_loaders_yield_the_contract(nyud_root):
    dm = MultiTaskDataModule(
        "nyud", root=str(nyud_root), preset="invpt", train_size=(24, 32), batch_size=2, eval_batch_size=3, seed=0
    )
    dm.prepare_data()
    dm.setup("fit")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert len(batches) == 2  # 5 samples, batch 2, last incomplete batch dropped
    batch = batches[0]
    assert batch["image"].shape == (2, 3, 24, 32) and batch["image"].dtype == torch.float32
    assert batch["semseg"].shape == (2, 24, 32) and batch["semseg"].dtype == torch.int64
    assert batch["depth"].shape == (2, 1, 24, 32) and batch["depth"].dtype == torch.float32
    assert batch["normals"].shape == (2, 3, 24, 32) and batch["edge"].shape == (2, 1, 24, 32)
    assert isinstance(batch["meta"], list) and len(batch["meta"]) == 2
    assert {m["size"] for m in batch["meta"]} == {(H, W)} and all("valid_box" in m for m in batch["meta"])
    assert set(torch.unique(batch["semseg"]).tolist()) <= set(range(40)) | {255}
    val = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert [len(b["meta"]) for b in val] == [3]
    top, left, h, w = val[0]["meta"][0]["valid_box"]
    assert (h, w) == (H, W) and (top, left) == ((24 - H) // 2, (32 - W) // 2)  # pad-only evaluation
    assert torch.all(val[0]["semseg"][:, :top] == 255)
    test = list(dm.test_dataloader())  # test split defaults to val
    assert [m["name"] for m in test[0]["meta"]] == ["v0", "v1", "v2"]


def test_train_loader_reproducible_with_seed(nyud_root):
    def first_batch(seed):
        dm = MultiTaskDataModule(
            "nyud", root=str(nyud_root), tasks=["semseg"], preset="invpt", train_size=(24, 32), batch_size=2, seed=seed
        )
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(a["image"], b["image"]) and [m["name"] for m in a["meta"]] == [m["name"] for m in b["meta"]]
    assert not torch.equal(a["image"], c["image"])


def test_worker_loader_matches_contract_and_seeds(nyud_root):
    kw = {"tasks": ["semseg", "normals"], "preset": "invpt", "train_size": (24, 32), "batch_size": 2, "num_workers": 1}
    dm = MultiTaskDataModule("nyud", root=str(nyud_root), seed=3, **kw)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.worker_init_fn is not None
    a = next(iter(loader))
    b = next(iter(MultiTaskDataModule("nyud", root=str(nyud_root), seed=3, **kw).train_dataloader()))
    assert a["image"].shape == (2, 3, 24, 32) and torch.equal(a["image"], b["image"])


def test_collate_errors_on_different_sizes():
    s1 = {"image": torch.zeros(3, 4, 5), "meta": {"name": "a"}}
    s2 = {"image": torch.zeros(3, 4, 6), "meta": {"name": "b"}}
    with pytest.raises(ValueError, match=r"cannot batch 'image': samples \['a', 'b'\]"):
        collate([s1, s2])
    out = collate([s1, s1])
    assert out["image"].shape == (2, 3, 4, 5) and out["meta"] == [{"name": "a"}, {"name": "a"}]
    with pytest.raises(ValueError, match="different keys"):
        collate([s1, {"image": torch.zeros(3, 4, 5)}])


def test_predict_dir(tmp_path, nyud_root):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((10, 12, 3), 128, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((10, 12, 3), 255, np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    dm = MultiTaskDataModule(
        "nyud", root=str(nyud_root), preset="none", predict_dir=str(folder), normalization="unit", batch_size=2
    )
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.predict_dataloader()]  # one image per batch
    assert [m["name"] for b in batches for m in b["meta"]] == ["a", "b"]
    assert [b["image"].shape for b in batches] == [(1, 3, 10, 12)] * 2
    assert torch.allclose(batches[0]["image"][0], torch.full((3, 10, 12), 128 / 255))
    assert torch.equal(batches[1]["image"], torch.ones(1, 3, 10, 12))
    bad = MultiTaskDataModule("nyud", root=str(nyud_root), predict_dir=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        bad.setup("predict")


@dataclass
class FakeSynthetic:
    """Stands in for an entry of ``densemtl.data.synthetic.SYNTHETIC_DATASETS``."""

    reader: str = "nyud"
    calls: list = field(default_factory=list)

    def ensure(self, root: Path, **kwargs) -> Path:
        self.calls.append(kwargs)
        folder = Path(root) / "synth-nyud"
        if not folder.exists():
            write_tiny_nyud(folder, n_train=kwargs.get("n_train", 4), n_val=2, seed=kwargs.get("seed", 0))
        return folder


def test_synthetic_dataset_generated_once(tmp_path, monkeypatch):
    fake = FakeSynthetic()
    monkeypatch.setattr(dm_module, "_synthetic_registry", lambda: {"synth-fake": fake})
    dm = MultiTaskDataModule(
        "synth-fake",
        root=str(tmp_path),
        preset="invpt",
        train_size=(24, 32),
        batch_size=2,
        generate={"n_train": 4, "seed": 1},
    )
    assert dm.num_classes == {"semseg": 40} and fake.calls == []
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    list(dm.val_dataloader())
    assert fake.calls == [{"n_train": 4, "seed": 1}]
    assert dm.data_root == tmp_path / "synth-nyud"
    assert batch["image"].shape == (2, 3, 24, 32)
    with pytest.raises(ValueError, match=r"available: .*'synth-fake'"):
        MultiTaskDataModule("synth-other", root=str(tmp_path))


def test_seed_worker_mixes_rank_and_reseeds_transform(monkeypatch, nyud_root):
    dm = MultiTaskDataModule("nyud", root=str(nyud_root), tasks=["semseg"], preset="invpt", train_size=(24, 32), seed=0)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.transform.reseed(0)

    class Info:
        pass

    info = Info()
    info.dataset = dataset
    monkeypatch.setattr(dm_module, "get_worker_info", lambda: info)
    monkeypatch.setattr(dm_module, "keep_freed_memory", lambda: True)
    images = []
    for rank in (0, 1, 0):
        torch.manual_seed(7)  # what PyTorch does in a worker: base_seed + worker_id
        dm_module.seed_worker(0, rank=rank)
        images.append(dataset[0]["image"])
    torch.set_num_threads(2)
    assert torch.equal(images[0], images[2]) and not torch.equal(images[0], images[1])


def test_init_signature_is_jsonargparse_friendly(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MultiTaskDataModule, "data")
    cfg = parser.parse_args(
        ["--data.dataset=nyud", f"--data.root={tmp_path}", "--data.tasks=[semseg,depth]", "--data.train_size=[24,32]"]
    )
    dm = MultiTaskDataModule(**cfg.data.as_dict())
    assert dm.tasks == ("semseg", "depth") and dm.train_size == (24, 32)


@pytest.mark.parametrize("name,family", [("synth-nyud", "nyud"), ("synth-pascal", "pascal")])
def test_real_synthetic_datasets_end_to_end(tmp_path, name, family):
    gen = {"train": 2, "val": 1, "size": (24, 32)}
    dm = MultiTaskDataModule(
        name, root=str(tmp_path / name), preset="invpt", train_size=(32, 40), batch_size=2, generate=gen
    )
    assert dm.family == family and "semseg" in dm.num_classes
    if family == "pascal":
        assert dm.num_classes == {"semseg": 21, "human_parts": 7}
    dm.prepare_data()
    dm.prepare_data()  # finished dataset with the same arguments: reused
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (2, 3, 32, 40)
    for task in dm.tasks:
        assert batch[task].shape[0] == 2 and batch[task].shape[-2:] == (32, 40), task
        if task in dm.num_classes:
            assert batch[task].dtype == torch.int64
            assert set(torch.unique(batch[task]).tolist()) <= set(range(dm.num_classes[task])) | {255}
    val = next(iter(dm.val_dataloader()))
    assert val["meta"][0]["size"] == (24, 32) and val["meta"][0]["valid_box"] == (4, 4, 24, 32)


def _contract_batches(dm: MultiTaskDataModule, loader) -> list[dict]:
    return [dm.on_after_batch_transfer(b, 0) for b in loader]


@pytest.mark.parametrize("preset", ["invpt", "mtinet", "ctal_cnn", "none"])
def test_compact_loaders_give_the_contract_bit_for_bit(nyud_root, preset):
    kw = {"preset": preset, "train_size": (24, 32), "batch_size": 2, "eval_batch_size": 2, "seed": 4}
    compact = MultiTaskDataModule("nyud", root=str(nyud_root), **kw)
    plain = MultiTaskDataModule("nyud", root=str(nyud_root), compact=False, **kw)
    assert compact.to_contract is not None and plain.to_contract is None
    raw = next(iter(compact.train_dataloader()))
    assert raw["semseg"].dtype == torch.uint8 and raw["edge"].dtype == torch.uint8
    assert raw["normals"].dtype == torch.uint8 or preset == "mtinet"  # 8-bit codes unless resampled bilinearly
    assert raw["image"].dtype == torch.uint8 or preset == "mtinet"  # MTI-Net keeps the bicubic float image
    for name in ("train", "val", "test", "predict"):
        a = _contract_batches(compact, getattr(compact, f"{name}_dataloader")())
        b = [plain.on_after_batch_transfer(x, 0) for x in getattr(plain, f"{name}_dataloader")()]  # identity
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["meta"] == y["meta"]
            for key in ("image", "semseg", "depth", "normals", "edge"):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), (name, key)
    if preset != "invpt":
        return
    # padding (the 20x28 images in 24x32) is exactly 0 in the image, 255 in the labels
    val = _contract_batches(compact, compact.val_dataloader())[0]
    assert torch.equal(val["image"][:, :, :2], torch.zeros(2, 3, 2, 32)) and torch.all(val["semseg"][:, :2] == 255)
    assert val["image"][:, :, 2:22, 2:30].abs().min() > 0


class _Recorder(L.LightningModule):
    """Records the batches every step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[dict]] = {}

    def _record(self, stage: str, batch: dict) -> torch.Tensor:
        self.seen.setdefault(stage, []).append(batch)
        return self.weight * batch["image"].mean()

    def training_step(self, batch, batch_idx):
        return self._record("train", batch)

    def validation_step(self, batch, batch_idx):
        self._record("val", batch)

    def test_step(self, batch, batch_idx):
        self._record("test", batch)

    def predict_step(self, batch, batch_idx):
        return self._record("predict", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_steps_receive_the_contract(nyud_root, tmp_path):
    dm = MultiTaskDataModule("nyud", root=str(nyud_root), preset="invpt", train_size=(24, 32), batch_size=2, seed=0)
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        limit_test_batches=1,
        limit_predict_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.predict(model, datamodule=dm)
    assert set(model.seen) == {"train", "val", "test", "predict"}
    for stage, batches in model.seen.items():
        batch = batches[0]
        assert batch["image"].dtype == torch.float32 and batch["image"].shape[-2:] == (24, 32), stage
        assert batch["semseg"].dtype == torch.int64 and batch["edge"].dtype == torch.float32, stage
        assert batch["depth"].dtype == torch.float32 and batch["normals"].dtype == torch.float32, stage
        for image, meta in zip(batch["image"], batch["meta"]):
            top, left, h, w = meta["valid_box"]
            outside = torch.ones(24, 32, dtype=torch.bool)
            outside[top : top + h, left : left + w] = False
            assert torch.all(image[:, outside] == 0) and image[:, ~outside].abs().min() > 0, stage
    assert model.seen["val"][0]["meta"][0]["valid_box"] == (2, 2, H, W)


def test_nyud_png8_normals_decode_to_the_float_reader(nyud_root):
    codes = NYUD(nyud_root, "val", normals_png8=True).load(1)["normals"]
    floats = NYUD(nyud_root, "val").load(1)["normals"]
    assert codes.dtype == torch.uint8 and codes.shape == (3, H, W)
    assert torch.equal(decode_normals_png8(codes), floats)
    # the fixture's normals (0, -0.6, 0.8) stored as rint((n + 1) * 127.5)
    assert codes[:, 0, 0].tolist() == [128, 51, 230]
