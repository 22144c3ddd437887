"""Checkpoints that survive kills and full disks, never hold NaN weights, and never land in another run's folder.

* :class:`AtomicCheckpointIO` — Lightning ``CheckpointIO`` plugin: every checkpoint (``ModelCheckpoint``'s
  best/last, interrupt checkpoints, SLURM ``hpc_ckpt_*``, ``trainer.save_checkpoint``) is written to a
  temporary file in the target folder, ``fsync``-ed and renamed over the target, so a kill or a full disk
  at any moment leaves the old file or the new one, never a truncated one; temporary files of writers
  that were killed are removed by the next save into that folder. A checkpoint holding NaN/inf weights
  is refused. Reading a truncated or foreign file raises a ``ValueError`` naming it.
* :class:`FiniteModelCheckpoint` — ``ModelCheckpoint`` that neither writes nor selects as best a model
  whose weights are not finite.
* :class:`RandomState` — keeps torch's (CPU and CUDA), numpy's and Python's global random states in the
  checkpoint and restores them on resume (dropout, stochastic depth: exact resume).
* :func:`reserve_version` — claims the logger's ``version_N`` folder with an atomic ``mkdir`` before the
  run writes anything, so concurrent runs into one root never share a run folder.
* :func:`prepare_trainer` — what the ``densemtl`` command does to every Trainer it builds (the plugin and
  the version reservation).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import socket
import tempfile
import zipfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from densemtl.guards import all_finite, nonfinite_parameters

__all__ = [
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "NonFiniteCheckpointError",
    "RandomState",
    "atomic_torch_save",
    "prepare_trainer",
    "remove_stale_temporaries",
    "reserve_version",
]

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


class NonFiniteCheckpointError(ValueError):
    """A checkpoint whose model weights hold NaN/inf was about to be written."""


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporary files of ``target`` left by writers on this host that no longer run (killed).

    Temporary files are named ``.<name>.tmp-<host>-<pid>-<random>``; files of other hosts (shared file
    systems) and of live processes are kept. Returns the removed paths.
    """
    target = Path(target)
    removed = []
    prefix = _temporary_prefix(target) + _HOST + "-"
    with suppress(FileNotFoundError):
        for path in target.parent.iterdir():
            if not path.name.startswith(prefix):
                continue
            pid_text = path.name[len(prefix) :].split("-", 1)[0]
            if not pid_text.isdigit() or _process_alive(int(pid_text)):
                continue
            with suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    On any error (full disk, permission, interrupt) the temporary file is removed, ``path`` keeps its
    previous content and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    prefix = f"{_temporary_prefix(path)}{_HOST}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _is_local(path: _PATH) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes, a refusal of non-finite weights and clear read errors.

    Remote URLs (``s3://`` ...) are left to Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and not all_finite(v for v in state.values() if torch.is_tensor(v)):
            bad = [k for k, v in state.items() if torch.is_tensor(v) and not all_finite([v])]
            raise NonFiniteCheckpointError(f"refusing to write {path}: non-finite values in {bad[:5]}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg is not supported "
                f"for `{type(self).__name__}`"
            )
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if _is_local(path) and not Path(str(path).removeprefix("file://")).is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
            reason = (str(e).splitlines() or [""])[0][:200]
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(e).__name__}: {reason}); it is truncated or not a torch "
                f"checkpoint. Pass another one (the run's last.ckpt or a best-*.ckpt)"
            ) from e
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{path} is not a Lightning checkpoint of a densemtl run: it has no 'state_dict' (found {found})"
            )
        return checkpoint


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips (with a warning) every save while the model's weights are not finite,
    so a diverged model is never written, never becomes ``best`` and never replaces ``last.ckpt``."""

    def _finite(self, trainer: L.Trainer) -> bool:
        bad = nonfinite_parameters(trainer.lightning_module)
        if bad:
            log.warning(
                "step %d: checkpoint not written and not considered for best: non-finite weights in %s",
                trainer.global_step,
                ", ".join(bad),
            )
        return not bad

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.save_top_k != 0 and self._finite(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.save_last and self._finite(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._should_save_on_exception(trainer) and self._finite(trainer):
            super().on_exception(trainer, pl_module, exception)


class RandomState(Callback):
    """Global random states (torch CPU and CUDA, numpy, ``random``) in the checkpoint, restored on resume.

    Lightning restores callback states before the first step, so the resumed run continues the random
    stream where the interrupted one stopped (the data pipeline draws from its own generators,
    :mod:`densemtl.data.resumable`). The states of global rank 0 are saved.
    """

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, python_gauss = random.getstate()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        return {
            "torch": torch.get_rng_state(),
            "cuda": list(cuda),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "gauss": gauss},
            "python": [version, list(internal), python_gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        if "numpy" in state_dict:
            n = state_dict["numpy"]
            keys = n["keys"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
        if "python" in state_dict:
            version, internal, gauss = state_dict["python"]
            random.setstate((version, tuple(internal), gauss))


def reserve_version(logger: Any) -> Path | None:
    """Claim the next free ``version_N`` folder of a TensorBoard/CSV logger with an atomic ``mkdir``.

    The logger then uses that version. Does nothing (returns None) for other loggers and for loggers
    given an explicit version. Returns the reserved folder.
    """
    if not isinstance(logger, (TensorBoardLogger, CSVLogger)) or getattr(logger, "_version", None) is not None:
        return None
    root = Path(logger.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        version = logger._get_next_version()  # the highest existing version_N + 1
        folder = root / f"version_{version}"
        try:
            folder.mkdir()
        except FileExistsError:  # another run claimed it between the listing and the mkdir
            continue
        logger._version = version
        return folder


def prepare_trainer(trainer: L.Trainer) -> L.Trainer:
    """Install :class:`AtomicCheckpointIO` (unless another ``CheckpointIO`` was configured) and reserve the
    run folder of the Trainer's logger on global rank 0 (other ranks receive the folder from rank 0)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if rank_zero_only.rank == 0:
        reserve_version(trainer.logger)
    return trainer
