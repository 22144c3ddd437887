"""Recycled loader buffers: reused only after a release, never while a batch can still read them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_datamodule import write_tiny_nyud  # tests/data is on sys.path (pytest's default import mode)

from densemtl.data import recycling
from densemtl.data.datamodule import MultiTaskDataModule, collate
from densemtl.data.recycling import BUFFER_KEY, RecyclingCollate, release_batch


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    return write_tiny_nyud(tmp_path_factory.mktemp("nyud"))


def _samples(value: int, n: int = 2) -> list[dict]:
    return [
        {"image": torch.full((3, 4, 5), value + i, dtype=torch.uint8), "meta": {"name": f"{value}-{i}"}}
        for i in range(n)
    ]


@pytest.fixture
def as_worker(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be DataLoader worker ``id``."""

    def become(worker_id: int) -> None:
        monkeypatch.setattr(recycling, "get_worker_info", lambda: SimpleNamespace(id=worker_id))

    return become


def _copied(batch: dict) -> dict:
    """The batch after the pin-memory thread's copy: same keys, tensors out of shared memory."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_buffer_reused_only_after_release(as_worker) -> None:
    rc = RecyclingCollate(collate, num_workers=2, slots=2)
    as_worker(1)
    a = rc(_samples(10))
    assert a[BUFFER_KEY][:2] == (0, 2) and int(rc.states[2]) == a[BUFFER_KEY][2]  # worker 1 owns slots 2, 3
    b = rc(_samples(20))
    assert b[BUFFER_KEY][1] == 3 and b["image"].data_ptr() != a["image"].data_ptr()
    c = rc(_samples(30))  # both slots busy: a fresh batch, no buffer
    assert BUFFER_KEY not in c and torch.equal(c["image"][:, 0, 0, 0], torch.tensor([30, 31], dtype=torch.uint8))
    assert a["image"][0, 0, 0, 0] == 10  # the busy buffers were not written
    _, freed = release_batch(_copied(a), {0: rc.states})
    assert freed and int(rc.states[2]) == 0
    d = rc(_samples(40))
    assert d[BUFFER_KEY][1] == 2 and d["image"].data_ptr() == a["image"].data_ptr()  # the same memory again
    assert torch.equal(d["image"][:, 0, 0, 0], torch.tensor([40, 41], dtype=torch.uint8))
    assert d["meta"] == [{"name": "40-0"}, {"name": "40-1"}]


def test_release_refused_when_unsafe(as_worker) -> None:
    rc = RecyclingCollate(collate, num_workers=1, slots=1, loader_id=3)
    as_worker(0)
    a = rc(_samples(1))
    token = a[BUFFER_KEY][2]
    stale = {**_copied(a), BUFFER_KEY: (3, 0, token + 1)}
    assert release_batch(stale, {3: rc.states}) == ({k: v for k, v in stale.items() if k != BUFFER_KEY}, False)
    assert release_batch(_copied(a), {0: rc.states})[1] is False  # another loader's table
    shared = {**_copied(a), "image": a["image"].clone().share_memory_()}  # still in shared memory
    assert release_batch(shared, {3: rc.states})[1] is False
    assert int(rc.states[0]) == token
    out, freed = release_batch(_copied(a), {3: rc.states})
    assert freed and BUFFER_KEY not in out and int(rc.states[0]) == 0
    assert release_batch(_copied(a), {3: rc.states})[1] is False  # released once only


def test_new_shapes_get_new_buffers(as_worker) -> None:
    rc = RecyclingCollate(collate, num_workers=1, slots=1)
    as_worker(0)
    a = rc(_samples(1))
    release_batch(_copied(a), {0: rc.states})
    b = rc(_samples(2, n=3))  # a different batch size: the slot gets a new buffer
    assert b["image"].shape == (3, 3, 4, 5) and b["image"].data_ptr() != a["image"].data_ptr()
    assert a["image"][0, 0, 0, 0] == 1


def test_main_process_and_worker_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    rc = RecyclingCollate(collate, num_workers=1)
    plain = rc(_samples(5))  # no worker: plain collate
    assert BUFFER_KEY not in plain
    clone = pickle.loads(pickle.dumps(rc))  # what a spawned worker gets: no buffers, the same states
    assert clone._buffers == {} and torch.equal(clone.states, rc.states)
    with pytest.raises(ValueError, match="num_workers >= 1"):
        RecyclingCollate(collate, num_workers=0)


@pytest.mark.parametrize("hold", [0, 5])
def test_loader_batches_identical_with_recycling(nyud_root, hold: int) -> None:
    """Two workers, two epochs; batches released at once or only after ``hold`` later ones arrived."""
    kw = {"preset": "invpt", "train_size": (24, 32), "batch_size": 1, "num_workers": 2, "seed": 3}
    recycled = MultiTaskDataModule("nyud", root=str(nyud_root), recycle_buffers=True, **kw)
    fresh = MultiTaskDataModule("nyud", root=str(nyud_root), recycle_buffers=False, **kw)

    def epochs(dm: MultiTaskDataModule) -> list[dict]:
        loader, seen, waiting = dm.train_dataloader(), [], []
        for _ in range(3):
            for batch in loader:
                slots.append(batch.get(BUFFER_KEY, (None, None))[1])
                waiting.append(_copied(batch))  # the pin-memory copy
                if len(waiting) > hold:
                    seen.append(dm.on_after_batch_transfer(waiting.pop(0), 0))
        return seen + [dm.on_after_batch_transfer(b, 0) for b in waiting]

    slots: list[int | None] = []
    a = epochs(recycled)
    used = [s for s in slots if s is not None]
    assert len(used) > len(set(used)), "no buffer was reused"
    assert (None in slots) == (hold > 0)  # held batches exhaust the 2 x 4 buffers
    slots.clear()
    b = epochs(fresh)
    assert set(slots) == {None}
    assert len(a) == len(b) == 15  # 3 epochs of 5
    assert sum(int(s != 0) for s in recycled._buffer_states[0].tolist()) == 0  # every buffer came back
    for x, y in zip(a, b):
        assert BUFFER_KEY not in x and x["meta"] == y["meta"]
        for key in ("image", "semseg", "depth", "normals", "edge"):
            assert torch.equal(x[key], y[key]), key


def test_cpu_batches_still_in_shared_memory_are_not_released(nyud_root) -> None:
    dm = MultiTaskDataModule(
        "nyud", root=str(nyud_root), preset="invpt", train_size=(24, 32), batch_size=1, num_workers=1,
        recycle_buffers=True,
    )  # fmt: skip
    raw = next(iter(dm.train_dataloader()))
    assert BUFFER_KEY in raw and raw["image"].untyped_storage().is_shared()
    out = dm.on_after_batch_transfer(raw, 0)  # CPU training: no copy was made
    assert BUFFER_KEY not in out and int(dm._buffer_states[0][raw[BUFFER_KEY][1]]) == raw[BUFFER_KEY][2]
