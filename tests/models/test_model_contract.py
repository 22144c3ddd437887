"""Registry-wide: every registered model meets the output contract and the parameter split.

Each model is built with ``tasks``, ``num_classes`` and small-size arguments: those in ``SMALL_KWARGS`` below,
or the model's own ``smoke_kwargs`` class attribute (a dict of constructor arguments that make it tiny and
may also override ``tasks`` / ``num_classes``) for models this file does not know.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densemtl.models import MODELS, MultiTaskModel, MultiTaskOutput
from densemtl.models.blocks import branch_factors

TASKS = ["semseg", "depth", "normals"]
NUM_CLASSES = {"semseg": 4}
SMALL_KWARGS: dict[str, dict] = {
    "stl": {"neck_channels": 8, "head_channels": 8},
    "hps": {"neck_channels": 8, "head_channels": 8},
}
SIZE = (60, 80)  # not divisible by 32


def _build(name: str) -> MultiTaskModel:
    cls = MODELS.get(name)
    kwargs = {"tasks": TASKS, "num_classes": NUM_CLASSES}
    kwargs.update(getattr(cls, "smoke_kwargs", {}))
    kwargs.update(SMALL_KWARGS.get(name, {}))
    torch.manual_seed(0)
    return cls(**kwargs)


@pytest.fixture(scope="module", params=MODELS.names())
def built(request: pytest.FixtureRequest) -> tuple[MultiTaskModel, MultiTaskOutput]:
    model = _build(request.param)
    return model, model(torch.randn(2, 3, *SIZE))


def test_registry_is_not_empty() -> None:
    assert {"stl", "hps"} <= set(MODELS.names())


def test_output_contract(built: tuple[MultiTaskModel, MultiTaskOutput]) -> None:
    model, out = built
    assert isinstance(model, MultiTaskModel) and isinstance(out, MultiTaskOutput)
    assert list(out.preds) == list(model.tasks)
    for t, pred in out.preds.items():
        assert pred.shape == (2, model.out_channels[t], *SIZE), t
        assert pred.dtype == torch.float32 and torch.isfinite(pred).all(), t
    for name, preds in out.aux.items():
        assert set(preds) <= set(model.tasks), name
        assert all(p.ndim == 4 and p.shape[0] == 2 for p in preds.values()), name
    assert all(v.ndim == 0 for v in out.losses.values())
    if out.rep is not None:
        assert out.rep.shape[0] == 2 and out.rep.requires_grad


def _objective(out: MultiTaskOutput, task: str) -> torch.Tensor:
    """A loss of ``task`` touching its final and intermediate predictions."""
    total = out.preds[task].square().mean()
    for preds in out.aux.values():
        if task in preds:
            total = total + preds[task].square().mean()
    return total


def _reached(loss: torch.Tensor, params: list[nn.Parameter]) -> set[int]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return {id(p) for p, g in zip(params, grads) if g is not None}


def test_parameter_split(built: tuple[MultiTaskModel, MultiTaskOutput]) -> None:
    model, out = built
    params = [p for p in model.parameters() if p.requires_grad]
    shared = [id(p) for p in model.shared_parameters()]
    specific = {t: [id(p) for p in model.task_parameters(t)] for t in model.tasks}
    # disjoint, without duplicates, and complete
    flat = shared + [i for ids in specific.values() for i in ids]
    assert len(flat) == len(set(flat)), "a parameter is listed twice"
    assert set(flat) == {id(p) for p in model.parameters()}
    # by autograd reachability: task t's loss reaches only shared and t's own parameters,
    # and t's own parameters are reached by t's loss
    reached = {t: _reached(_objective(out, t), params) for t in model.tasks}
    internal = _reached(sum(out.losses.values()), params) if out.losses else set()
    for t in model.tasks:
        others = {i for s in model.tasks if s != t for i in specific[s]}
        assert not reached[t] & others, f"loss {t} reaches another task's parameters"
        assert set(specific[t]) & {id(p) for p in params} <= reached[t] | internal, f"{t} parameters unused"
    # no dead parameters (DDP would need find_unused_parameters)
    used = set().union(*reached.values()) | internal
    dead = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in used]
    assert not dead, dead[:5]


def test_rep_is_the_branch_point(built: tuple[MultiTaskModel, MultiTaskOutput]) -> None:
    model, out = built
    if out.rep is None:
        pytest.skip(f"{type(model).__name__} has no shared representation")
    params = [p for p in model.parameters() if p.requires_grad]
    upstream = _reached(out.rep.sum(), params)
    assert upstream, "rep depends on no parameter"
    upstream_params = [p for p in params if id(p) in upstream]
    total = sum(_objective(out, t) for t in model.tasks)
    for t in model.tasks:
        assert torch.autograd.grad(_objective(out, t), out.rep, retain_graph=True)[0].abs().sum() > 0, t
    # all branch factors 0: nothing flows back through rep into the encoder
    with branch_factors(dict.fromkeys(model.tasks, 0.0)):
        grads = torch.autograd.grad(total, upstream_params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)


def test_predict_returns_preds(built: tuple[MultiTaskModel, MultiTaskOutput]) -> None:
    model, _ = built
    size = getattr(model, "input_size", None) or (32, 48)  # models bound to one input size (CTAL) use theirs
    preds = model.eval().predict(torch.randn(1, 3, *size))
    model.train()
    assert {t: tuple(p.shape[-2:]) for t, p in preds.items()} == dict.fromkeys(model.tasks, tuple(size))
