import pytest
import torch

from densemtl.tasks import IGNORE_INDEX, TASKS, check_tasks, get_task


def test_canonical_names_and_contract():
    assert tuple(TASKS) == ("semseg", "human_parts", "depth", "normals", "edge", "sal")
    assert get_task("semseg").target_dtype == torch.int64
    assert get_task("depth").ignore_value == 0.0
    assert get_task("edge").ignore_value == IGNORE_INDEX == 255


def test_out_channels():
    assert get_task("semseg").out_channels(40) == 40
    assert get_task("normals").out_channels() == 3
    with pytest.raises(ValueError, match="number of classes"):
        get_task("semseg").out_channels(None)


def test_default_loss_weights_follow_spec():
    # protocols.md §5.2: PASCAL semseg 1, parts 2, sal 5, edge 50, normals 10; NYUD semseg 1, depth 1
    pascal = {t: get_task(t).loss_weight("pascal") for t in ("semseg", "human_parts", "sal", "edge", "normals")}
    assert pascal == {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0, "normals": 10.0}
    assert get_task("depth").loss_weight("nyud") == 1.0


def test_unknown_and_missing_tasks_are_named():
    with pytest.raises(ValueError, match="unknown task 'segm'.*available"):
        get_task("segm")
    with pytest.raises(ValueError, match=r"does not provide task\(s\) \['sal'\]; it has"):
        check_tasks(["semseg", "sal"], ["semseg", "depth"], "dataset x")
