import pytest
import torch

from densemtl.weighting import WEIGHTINGS, StepContext, TrainInfo
from densemtl.weighting.base import task_objective_terms


def _losses():
    return {"semseg": torch.tensor(2.0, requires_grad=True), "depth": torch.tensor(0.5, requires_grad=True)}


def test_equal_weighting_is_plain_sum_with_unit_gradients():
    ew = WEIGHTINGS.get("ew")()
    ew.on_train_start(TrainInfo(tasks=("semseg", "depth"), family="nyud"))
    losses = _losses()
    obj, w = ew.combine(losses, StepContext(epoch=0, step=1))
    obj.backward()
    assert obj.item() == pytest.approx(2.5)
    assert losses["semseg"].grad.item() == 1.0 and losses["depth"].grad.item() == 1.0
    assert {k: v.item() for k, v in w.items()} == {"semseg": 1.0, "depth": 1.0}


def test_static_weighting_uses_family_defaults_and_overrides():
    # protocols.md §5.2 NYUD: semseg 1, depth 1, normals 10, edge 50
    st = WEIGHTINGS.get("static")(weights={"depth": 3.0})
    st.on_train_start(TrainInfo(tasks=("semseg", "depth", "normals"), family="nyud"))
    losses = {**_losses(), "normals": torch.tensor(0.1, requires_grad=True)}
    obj, w = st.combine(losses, StepContext(epoch=0, step=1))
    assert obj.item() == pytest.approx(2.0 * 1 + 0.5 * 3 + 0.1 * 10)
    assert w["normals"].item() == 10.0


def test_static_weighting_rejects_weights_for_unknown_tasks():
    st = WEIGHTINGS.get("static")(weights={"sal": 5.0})
    st.on_train_start(TrainInfo(tasks=("semseg", "depth")))
    with pytest.raises(ValueError, match=r"loss weights given for \['sal'\]"):
        st.combine(_losses(), StepContext(epoch=0, step=1))


def test_task_objective_terms_adds_aux_with_coefficients():
    main = {"semseg": torch.tensor(1.0)}
    aux = {"semseg": [(0.5, torch.tensor(2.0)), (0.25, torch.tensor(4.0))]}
    assert task_objective_terms(main, aux, ["semseg"])["semseg"].item() == pytest.approx(3.0)


def test_unknown_weighting_lists_names():
    with pytest.raises(ValueError, match="unknown weighting 'foo'; available"):
        WEIGHTINGS.get("foo")
