"""Property-based (hypothesis) tests: transforms, readers and metrics on random shapes, dtypes and values.

Degenerate inputs on purpose: 1-pixel images, all-ignore label maps, classes that never occur, no valid
depth pixel, zero normals, garbage files. The properties: nothing crashes except with the documented
``ValueError``/``FileNotFoundError`` naming the input, and no NaN appears silently (outputs are finite,
or a metric is NaN together with an :class:`~densemtl.metrics.validity.UndefinedMetricWarning`).
Deterministic (``derandomize``) and small, so the whole file runs in seconds.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from densemtl.data.imageio import read_rgb
from densemtl.data.nyud import NYUD, write_nyud_sample, write_split
from densemtl.data.splits import read_split_ids
from densemtl.data.transforms import build_transform
from densemtl.metrics.collection import PROTOCOLS, MultiTaskMetrics
from densemtl.metrics.validity import UndefinedMetricWarning
from densemtl.tasks import IGNORE_INDEX, TASKS

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

K = 40  # NYUD-v2 classes


# ------------------------------------------------------------------------------------------ samples


@st.composite
def samples(draw, max_side: int = 24):
    """A raw NYUD-like sample: uint8 image, labels with random ignore (maybe all), depth with random holes
    (maybe none valid), unit or zero normals, edge in {0, 1, 255}."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    ignore = draw(st.sampled_from([0.0, 0.3, 1.0]))
    holes = draw(st.sampled_from([0.0, 0.5, 1.0]))
    classes = draw(st.integers(1, K))  # only the first `classes` classes occur: the others are empty
    label_dtype = draw(st.sampled_from([torch.int64, torch.uint8]))
    g = np.random.default_rng(seed)
    semseg = g.integers(0, classes, (h, w))
    semseg[g.random((h, w)) < ignore] = IGNORE_INDEX
    depth = g.uniform(0.1, 10.0, (1, h, w)).astype(np.float32)
    depth[g.random((1, h, w)) < holes] = 0.0
    normals = g.normal(size=(3, h, w)).astype(np.float32)
    normals /= np.sqrt((normals**2).sum(0, keepdims=True)) + 1e-12
    normals[:, g.random((h, w)) < holes] = 0.0
    edge = (g.random((1, h, w)) < 0.2).astype(np.float32)
    edge[g.random((1, h, w)) < ignore] = IGNORE_INDEX
    return {
        "image": torch.from_numpy(g.integers(0, 256, (3, h, w), dtype=np.uint8)),
        "semseg": torch.from_numpy(semseg).to(label_dtype),
        "depth": torch.from_numpy(depth),
        "normals": torch.from_numpy(normals),
        "edge": torch.from_numpy(edge),
        "meta": {"name": "fuzz", "size": (h, w)},
    }


def _check_contract(out: dict) -> None:
    h, w = out["image"].shape[-2:]
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, h, w)
    assert torch.isfinite(out["image"]).all()
    labels = out["semseg"]
    assert labels.shape == (h, w)
    assert bool(((labels >= 0) & (labels < K) | (labels == IGNORE_INDEX)).all())
    assert out["depth"].shape == (1, h, w) and torch.isfinite(out["depth"]).all() and (out["depth"] >= 0).all()
    normals = out["normals"].float()
    assert normals.shape == (3, h, w) and torch.isfinite(normals).all()
    assert float(torch.sqrt((normals * normals).sum(0)).max()) <= 1.0 + 1e-3
    assert set(torch.unique(out["edge"]).tolist()) <= {0.0, 1.0, float(IGNORE_INDEX)}


# ------------------------------------------------------------------------------------------ transforms


@FUZZ
@given(
    sample=samples(),
    preset=st.sampled_from(["invpt", "mtinet", "mtan", "autolambda", "ctal_cnn", "none"]),
    train=st.booleans(),
    size=st.tuples(st.integers(8, 32), st.integers(8, 32)),
    seed=st.integers(0, 2**16),
)
def test_transform_pipelines_keep_the_contract(sample, preset, train, size, seed) -> None:
    options = {"augment": True} if preset == "mtan" else {}
    pipeline = build_transform(preset, train=train, family="nyud", size=size, **options)
    pipeline.reseed(seed)
    try:
        out = pipeline(sample)
    except ValueError as err:  # the documented refusal of the pad-only protocol, nothing else
        assert "larger than the pad size" in str(err) and not train
        return
    _check_contract(out)
    if preset in ("invpt", "mtinet") or (preset == "autolambda" and train):
        assert tuple(out["image"].shape[-2:]) == size


# ------------------------------------------------------------------------------------------ readers


@FUZZ
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM"]))
def test_image_reader_gives_rgb_or_a_value_error_naming_the_file(data, prefix) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(prefix + data)
        try:
            rgb = read_rgb(path)
        except ValueError as err:
            assert str(path) in str(err)
        else:
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


@FUZZ
@given(
    dtype=st.sampled_from(["float16", "float32", "float64", "int8", "int16", "uint16", "int32", "bool"]),
    special=st.sampled_from([None, np.nan, np.inf, -1.0, 1e30, 0.0]),
    shape=st.sampled_from([(4, 5), (4, 5, 1), (5, 4), (4, 5, 2), (20,)]),
    scale=st.sampled_from([1.0, 30.0, 2500.0]),
)
def test_depth_reader_accepts_metres_or_names_the_file(dtype, special, shape, scale) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.0, scale, shape)
    if special is not None:
        values.flat[0] = special
    with np.errstate(invalid="ignore", over="ignore"):
        depth = values.astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_nyud_sample(root, "a", np.zeros((4, 5, 3), np.uint8), depth=np.ones((4, 5)))
        write_split(root, "train", ["a"])
        np.save(root / "depth" / "a.npy", depth)
        try:
            out = NYUD(root, "train", tasks=["depth"]).load(0)["depth"]
        except ValueError as err:
            assert "a.npy" in str(err)
        else:
            assert out.dtype == torch.float32 and out.shape == (1, 4, 5)
            assert torch.isfinite(out).all() and (out >= 0).all() and (out <= NYUD.max_depth).all()


@FUZZ
@given(data=st.binary(max_size=120) | st.text(max_size=60).map(lambda t: t.encode("utf-8")))
def test_split_reader_gives_unique_ids_or_names_the_file(data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        path.write_bytes(data)
        try:
            ids = read_split_ids(path)
        except ValueError as err:
            assert str(path) in str(err)
        else:
            assert ids and len(set(ids)) == len(ids) and all(i == i.strip() and i for i in ids)


# ------------------------------------------------------------------------------------------ metrics


@st.composite
def batches(draw):
    """Predictions and targets of every NYUD/PASCAL task, with degenerate targets."""
    b = draw(st.integers(1, 2))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    ignore = draw(st.sampled_from([0.0, 0.5, 1.0]))
    holes = draw(st.sampled_from([0.0, 0.5, 1.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    g = torch.Generator().manual_seed(seed)

    def masked(x: torch.Tensor, fraction: float, value: float) -> torch.Tensor:
        return torch.where(torch.rand(x.shape, generator=g) < fraction, torch.full_like(x, value), x)

    present = draw(st.integers(1, k))  # classes >= present never occur
    target = {
        "semseg": masked(torch.randint(0, present, (b, h, w), generator=g), ignore, IGNORE_INDEX),
        "depth": masked(0.1 + 9 * torch.rand(b, 1, h, w, generator=g), holes, 0.0),
        "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        * (torch.rand(b, 1, h, w, generator=g) >= holes),
        "edge": masked((torch.rand(b, 1, h, w, generator=g) < 0.2).float(), ignore, IGNORE_INDEX),
        "sal": masked((torch.rand(b, 1, h, w, generator=g) < 0.5).float(), ignore, IGNORE_INDEX),
    }
    preds = {t: torch.randn(b, TASKS[t].out_channels(k), h, w, generator=g).to(dtype) for t in target}
    return preds, target, k


@FUZZ
@given(
    batch=batches(),
    protocol=st.sampled_from(sorted(PROTOCOLS)),
    odsf=st.booleans(),
    family=st.sampled_from(["nyud", "pascal"]),
)
def test_metrics_never_give_a_silent_nan(batch, protocol, odsf, family) -> None:
    preds, target, k = batch
    options = {"edge": {"odsf": odsf}}
    metrics = MultiTaskMetrics(list(target), {"semseg": k}, protocol=protocol, options=options, family=family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics.update(preds, target)
        values = metrics.compute()
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning))
    for task, row in values.items():
        for name, value in row.items():
            assert isinstance(value, float)
            if math.isnan(value):
                assert f"task {task!r}" in warned or f"{task}/{name}" in warned, (task, name)
            else:
                assert math.isfinite(value) and value >= 0.0, (task, name, value)
    empty_depth = not bool((target["depth"] > 0).any())
    if empty_depth:
        assert all(math.isnan(v) for v in values["depth"].values()) and "task 'depth'" in warned
    if bool((target["semseg"] == IGNORE_INDEX).all()):
        assert math.isnan(values["semseg"]["miou"])  # was 0.0: a score for nothing


def test_all_ignore_segmentation_says_so_instead_of_scoring() -> None:
    metrics = MultiTaskMetrics(["semseg"], {"semseg": 3})
    metrics.update({"semseg": torch.randn(1, 3, 4, 4)}, {"semseg": torch.full((1, 4, 4), IGNORE_INDEX)})
    with pytest.warns(UndefinedMetricWarning, match="task 'semseg': no valid target pixel"):
        values = metrics.compute()
    assert math.isnan(values["semseg"]["miou"]) and math.isnan(values["semseg"]["pixel_acc"])
