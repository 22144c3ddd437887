"""Checkpoint writes survive kills and full disks; bad --ckpt_path files are named; runs never share a folder."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from densemtl import checkpointing
from densemtl.checkpointing import AtomicCheckpointIO, remove_stale_temporaries, reserve_version

N = 1_000_000  # 4 MB per checkpoint


def _payload(i: int) -> dict:
    return {"state_dict": {"w": torch.full((N,), float(i))}, "i": i}


def _check_whole(path) -> int:
    """The version held by ``path``; fails on a truncated or mixed file."""
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    w = ckpt["state_dict"]["w"]
    assert w.shape == (N,) and bool((w == ckpt["i"]).all())
    return ckpt["i"]


def _save_forever(path: str, start: int, pause_in_fsync, saved) -> None:
    """Child: save versions start, start+1, ... to ``path`` and set ``saved`` after the first one; with
    ``pause_in_fsync`` (an Event) it waits in the fsync of the first temporary file (after the write, before
    the rename) and sets that event."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    if pause_in_fsync is not None:
        real = os.fsync

        def slow_fsync(fd):
            real(fd)
            pause_in_fsync.set()
            time.sleep(30)

        os.fsync = slow_fsync
    i = start
    while True:
        AtomicCheckpointIO().save_checkpoint(_payload(i), path)
        saved.set()
        i += 1


def _temporaries(folder) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_kills_at_any_moment_leave_the_old_or_the_new_file(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_payload(0), path)
    rng = random.Random(0)
    seen, latest = set(), 0
    for round_ in range(8):
        paused, saved = (ctx.Event() if round_ % 2 == 0 else None), ctx.Event()
        child = ctx.Process(target=_save_forever, args=(str(path), latest + 1, paused, saved))
        child.start()
        if paused is not None:  # killed between the complete temporary file and the rename
            assert paused.wait(60)
        else:  # killed at a random moment of a stream of saves (after the first one)
            assert saved.wait(60)
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        version = _check_whole(path)
        if paused is not None:
            assert version == latest and _temporaries(tmp_path)  # the old file; the killed writer's temp
        else:
            assert version > latest
        seen.add(version)
        latest = version
    AtomicCheckpointIO().save_checkpoint(_payload(latest + 1), path)  # the next save cleans up
    assert _temporaries(tmp_path) == []
    assert _check_whole(path) == latest + 1
    assert len(seen) == 5  # the first version, then one new version per random-time round


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best-000.ckpt"
    AtomicCheckpointIO().save_checkpoint(_payload(1), path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):  # half the bytes reach the disk, then ENOSPC
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", disk_full)
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint(_payload(2), path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert _check_whole(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-000.ckpt"]  # no partial file left


def test_stale_temporaries_of_live_writers_and_other_hosts_are_kept(tmp_path):
    target = tmp_path / "last.ckpt"
    host = checkpointing._HOST
    dead = tmp_path / f".last.ckpt.tmp-{host}-999999999-abc"
    live = tmp_path / f".last.ckpt.tmp-{host}-{os.getppid()}-abc"
    other = tmp_path / ".last.ckpt.tmp-otherhost-999999999-abc"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(target) == [dead]
    assert live.exists() and other.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", "half"])
def test_a_truncated_checkpoint_passed_to_fit_is_named(tmp_path, content):
    path = tmp_path / "last.ckpt"
    if content == "half":
        AtomicCheckpointIO().save_checkpoint(_payload(1), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, plugins=[AtomicCheckpointIO()], max_steps=1)
    with pytest.raises(ValueError, match=rf"checkpoint {path} cannot be read .*truncated or not a torch checkpoint"):
        trainer.fit(BoringModel(), ckpt_path=path)


def test_a_foreign_checkpoint_passed_to_fit_is_named(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)  # a plain state dict, not a Lightning checkpoint
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, plugins=[AtomicCheckpointIO()], max_steps=1)
    with pytest.raises(ValueError, match=rf"{path} is not a Lightning checkpoint .*no 'state_dict'"):
        trainer.fit(BoringModel(), ckpt_path=path)


def _reserve_many(root: str, n: int, out) -> None:
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)

    for _ in range(n):
        logger = CSVLogger(root, name="runs")
        out.put(str(reserve_version(logger)))


def test_concurrent_runs_reserve_distinct_version_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_reserve_many, args=(str(tmp_path), 15, queue)) for _ in range(3)]
    for w in workers:
        w.start()
    folders = [queue.get(timeout=60) for _ in range(45)]
    for w in workers:
        w.join()
    assert len(set(folders)) == 45
    assert sorted(int(p.rsplit("_", 1)[1]) for p in folders) == list(range(45))


def test_the_cli_gives_each_run_its_own_folder_and_the_atomic_writer(tmp_path):
    from densemtl.cli import cli_main

    args = [  # run=False: parse and build only (no subcommand)
        "--data.dataset=synth-nyud",
        f"--data.root={tmp_path / 'data'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.arch_args={'pretrained': null}",
    ]
    first = cli_main(args, run=False)
    second = cli_main(args, run=False)  # before fix: both resolved version_0 (nothing written yet)
    assert first.trainer.log_dir != second.trainer.log_dir
    assert os.path.isdir(first.trainer.log_dir) and os.path.isdir(second.trainer.log_dir)
    assert isinstance(first.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
