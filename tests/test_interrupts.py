"""The `densemtl fit` command under SIGTERM (and SLURM's requeue signal), in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainers import tiny_fit_args

ROOT = Path(__file__).resolve().parents[1]


def _fit_command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from densemtl.cli import main; sys.exit(main())",
        *tiny_fit_args(tmp_path, max_epochs=1000),
        *extra,
    ]


def _start(tmp_path: Path, env: dict | None = None, *extra: str) -> subprocess.Popen:
    log = open(tmp_path / "fit.log", "ab")  # noqa: SIM115 - closed with the process
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(_fit_command(tmp_path, *extra), cwd=ROOT, stdout=log, stderr=log, env=full_env)


def _wait_for(predicate, proc: subprocess.Popen, tmp_path: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fit ended or timed out (rc {proc.poll()}):\n{(tmp_path / 'fit.log').read_text()[-3000:]}")
        time.sleep(0.2)


def test_sigterm_during_fit_writes_a_resumable_checkpoint_and_exits_143(tmp_path):
    proc = _start(tmp_path)
    last = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    _wait_for(last.is_file, proc, tmp_path)  # epoch 0 done and checkpointed
    first = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    log = (tmp_path / "fit.log").read_text()
    assert "resumable checkpoint written to" in log and str(last) in log
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] > first  # the interrupt state, past the epoch-0 checkpoint
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the loader position travels with it
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_slurm_requeue_signal_saves_an_hpc_checkpoint_requeues_and_resumes(tmp_path):
    """Lightning's documented SLURM flow (SLURMEnvironment, auto_requeue): SIGUSR1 -> hpc_ckpt_1.ckpt in the
    root folder + `scontrol requeue <job>`; the requeued job (same command) resumes from it by itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "densemtl",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    proc = _start(tmp_path, env)
    # under SLURM Lightning names the run folder after the job id, so the requeued job writes into it again
    last = tmp_path / "runs" / "lightning_logs" / "version_4242" / "checkpoints" / "last.ckpt"
    _wait_for(last.is_file, proc, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    hpc = tmp_path / "runs" / "hpc_ckpt_1.ckpt"
    _wait_for(lambda: calls.is_file() and hpc.is_file(), proc, tmp_path)
    assert calls.read_text().split() == ["requeue", "4242"]
    proc.send_signal(signal.SIGTERM)  # what SLURM sends when it stops the job
    assert proc.wait(120) == 128 + signal.SIGTERM
    step = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    requeued = _start(tmp_path, env, f"--trainer.max_steps={step + 2}")
    assert requeued.wait(240) == 0, (tmp_path / "fit.log").read_text()[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in (tmp_path / "fit.log").read_text()
