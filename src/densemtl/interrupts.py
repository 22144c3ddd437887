"""Graceful SIGTERM / SIGINT: stop at the next batch boundary, write a resumable checkpoint, exit 128 + signal.

:class:`GracefulInterrupt` (a callback the ``densemtl`` command always adds) installs handlers for SIGTERM
and SIGINT while training. A signal only sets a flag (and Lightning's own SIGTERM flag, which DDP ranks
broadcast); training stops at the next point where every piece of state is consistent:

* before the next training batch is fetched, when the training loader is a
  :class:`~densemtl.data.resumable.ResumableLoader` (the datamodule's), so the checkpoint resumes exactly
  (a signal during the last batch of an epoch or during validation stops before the next epoch's first
  batch);
* at the start of the next batch with any other loader (that batch is then not trained on);
* under DDP, where Lightning's own SIGTERM flag is set and broadcast by rank 0, before the next batch on
  every rank (or at the end of the epoch, Lightning's check).

On stopping it writes the checkpoint (``last.ckpt`` in the ``ModelCheckpoint`` folder when that callback
keeps a last checkpoint, else ``<folder>/interrupted.ckpt``; never when the weights are not finite) and the
process exits with status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl+C aborts at
once (Lightning's KeyboardInterrupt path, exit status 1). SLURM: Lightning's ``SLURMEnvironment`` with
``auto_requeue`` (its default under SLURM) keeps handling the requeue signal (``SIGUSR1``: ``hpc_ckpt_N.ckpt``
in the root folder, ``scontrol requeue``, automatic resume); its checkpoints go through the same atomic
writer.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from densemtl.guards import nonfinite_parameters

__all__ = ["GracefulInterrupt", "TrainingInterrupted", "raise_if_requested", "requested_signal"]

log = logging.getLogger(__name__)

INTERRUPT_CKPT = "interrupted.ckpt"

_requested: int | None = None


def requested_signal() -> int | None:
    """The signal number received during training and not yet acted on, or None."""
    return _requested


def _request(signum: int) -> None:
    global _requested
    _requested = int(signum)


def _clear() -> None:
    global _requested
    _requested = None


class TrainingInterrupted(SIGTERMException):
    """Training stopped on a signal; ``code`` is 128 + the signal number (the process exit status)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


def raise_if_requested() -> None:
    """Raise :class:`TrainingInterrupted` when a signal arrived (called between training batches)."""
    if _requested is not None:
        raise TrainingInterrupted(_requested)


class GracefulInterrupt(Callback):
    """Turn SIGTERM/SIGINT during ``fit`` into a clean stop with a resumable checkpoint (see the module doc).

    Args:
        dirpath: folder of the interrupt checkpoint; None: the ``ModelCheckpoint`` folder, else
            ``<log_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._previous: dict[int, Any] = {}
        self.checkpoint_path: Path | None = None

    # ------------------------------------------------------------------ handlers
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own SIGTERM handler (which ours chains to under DDP)
        _clear()
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._make_handler(trainer))

    def _make_handler(self, trainer: L.Trainer) -> Any:
        def handler(signum: int, frame: Any) -> None:
            previous = self._previous.get(signum)
            if signum == signal.SIGINT:
                if _requested is not None:  # second Ctrl+C: abort now
                    raise KeyboardInterrupt
                log.warning("Ctrl+C: stopping after the current step with a resumable checkpoint (again: abort now)")
            else:
                log.warning("SIGTERM: stopping after the current step with a resumable checkpoint")
            _request(signum)
            if trainer.world_size > 1 or trainer.strategy.launcher is not None:
                # DDP: Lightning's notifier forwards the signal to its children and sets the flag that rank 0
                # broadcasts before every batch, so all ranks stop together
                if signum == signal.SIGTERM and callable(previous):
                    previous(signum, frame)
                connector = getattr(trainer, "_signal_connector", None)
                if connector is not None:
                    connector.received_sigterm = True
            # one process: not Lightning's flag, whose epoch-end check would checkpoint an epoch that has
            # ended but whose batch counters are not reset yet (the resumed run would skip an epoch); the
            # training loader stops before its next batch instead

        return handler

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    # ------------------------------------------------------------------ stopping
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        from densemtl.data.resumable import ResumableLoader

        if not isinstance(trainer.train_dataloader, ResumableLoader):
            raise_if_requested()  # other loaders: stop before this batch (it is not trained on)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        signum = exception.signum if isinstance(exception, TrainingInterrupted) else _requested or signal.SIGTERM
        if exception.code is None:  # Lightning's own SIGTERMException exits 0 otherwise
            exception.code = 128 + int(signum)
        _clear()
        self._restore_handlers()
        bad = nonfinite_parameters(pl_module)
        if bad:
            log.warning("interrupted: no checkpoint written, the weights are not finite (%s)", ", ".join(bad))
            return
        path = self._checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.checkpoint_path = path
        log.warning(
            "interrupted by signal %d at step %d: resumable checkpoint written to %s (resume: fit ... --ckpt_path %s)",
            signum,
            trainer.global_step,
            path,
            path,
        )

    def _checkpoint_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if self.dirpath is not None:
            folder = Path(self.dirpath)
        elif callback is not None and getattr(callback, "dirpath", None):
            folder = Path(callback.dirpath)
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        if self.dirpath is None and callback is not None and getattr(callback, "save_last", False):
            return folder / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        return folder / INTERRUPT_CKPT
