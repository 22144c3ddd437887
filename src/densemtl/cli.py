"""The ``densemtl`` command.

* ``densemtl fit|validate|test|predict --config configs/<dataset>/<model>.yaml [overrides]``: LightningCLI
  over :class:`~densemtl.engine.MultiTaskModule` and :class:`~densemtl.data.datamodule.MultiTaskDataModule`.
  ``data.tasks``, ``data.num_classes`` and ``data.family`` are linked into the model, so tasks are
  given once.
* ``densemtl generate synth-nyud|synth-pascal --out DIR ...``: write a synthetic dataset.
* ``densemtl convert nyud-mat nyu_depth_v2_labeled.mat --out DIR ...``: convert the official NYU file.
* ``densemtl verify-dataset ROOT [--json true] [--quick true] [--strict true] [--report FILE]``: detect the
  on-disk layout of a dataset and decode every sample; exit status 1 when a problem is found
  (:mod:`densemtl.data.verify`).
* ``densemtl demo``: generate, train, test and predict on the synthetic dataset.
"""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from densemtl.callbacks import PredictionImageWriter
from densemtl.checkpointing import FiniteModelCheckpoint, RandomState, prepare_trainer
from densemtl.config_checks import check_config
from densemtl.data.datamodule import MultiTaskDataModule
from densemtl.engine import MultiTaskModule
from densemtl.guards import NonFiniteGuard
from densemtl.interrupts import GracefulInterrupt
from densemtl.run_config import KeepingConfigCallback

__all__ = ["DenseMTLCLI", "main"]


class DenseMTLCLI(LightningCLI):
    """LightningCLI with the task links, checkpointing and the prediction writer preconfigured."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tasks", "model.tasks", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.family", "model.family", apply_on="instantiate")
        parser.add_lightning_class_args(FiniteModelCheckpoint, "checkpoint")  # never saves non-finite weights
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionImageWriter, "predict_writer")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")  # --nonfinite.max_consecutive K

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with atomic checkpoint writes and its own run folder (:mod:`densemtl.checkpointing`)."""
        return prepare_trainer(super().instantiate_trainer(**kwargs))

    def before_instantiate_classes(self) -> None:
        """Reject impossible settings (lr, checkpoint.monitor, weighting_args) before anything is built."""
        check_config(self.config.get(self.subcommand) if self.subcommand else self.config)


def _extra_commands() -> dict[str, Callable[[Sequence[str]], Any]]:
    return {
        "generate": _run_generate,
        "convert": _run_convert,
        "verify-dataset": _run_verify,
        "demo": _run_demo,
    }


def _run_generate(args: Sequence[str]) -> Any:
    from jsonargparse import CLI

    from densemtl.data.synthetic import generate_synth_nyud, generate_synth_pascal

    generators = {"synth-nyud": generate_synth_nyud, "synth-pascal": generate_synth_pascal}
    return CLI(generators, args=list(args), as_positional=False)  # every option named: --out DIR


def _run_convert(args: Sequence[str]) -> Any:
    from jsonargparse import CLI

    from densemtl.data.convert import convert_nyud_mat

    return CLI({"nyud-mat": convert_nyud_mat}, args=list(args))


def _run_verify(args: Sequence[str]) -> Any:
    from jsonargparse import CLI

    from densemtl.data.base import DatasetNotFoundError
    from densemtl.data.verify import DatasetReport, verify
    from densemtl.io import atomic_write_text

    def verify_dataset(
        root: str,
        json: bool = False,
        quick: bool = False,
        strict: bool = False,
        report: str | None = None,
        workers: int = 0,
        progress: bool = True,
    ) -> Any:
        """Detect the layout of the dataset at ``root`` (synthetic, NYUD-v2 variants, PASCAL-Context, mtan
        Cityscapes) and check it: every file, every sample decoded, counts and sizes. Exit status 1 when a
        problem is found.

        Args:
            root: the dataset folder.
            json: print the report as JSON (fields: root, dataset, description, splits, notes, errors,
                warnings, quick, strict, ok) instead of text.
            quick: decode only the first sample of each split (every file is still checked to exist).
            strict: warnings (counts or sizes that differ from the release) also make the exit status 1.
            report: also write the JSON report to this file.
            workers: processes that decode samples (0: this process).
            progress: show a progress bar on stderr.
        """
        try:
            result = verify(root, quick=quick, progress=progress, workers=workers)
        except DatasetNotFoundError as err:  # still a report (and exit status 1), not a traceback
            result = DatasetReport(root=root, dataset="", description="no known dataset layout", errors=[str(err)])
        result.strict = strict
        if report is not None:
            atomic_write_text(report, _json.dumps(result.to_dict(), indent=2) + "\n")
        print(_json.dumps(result.to_dict(), indent=2) if json else result)
        return result

    return CLI(verify_dataset, args=list(args))


def _run_demo(args: Sequence[str]) -> Any:
    from jsonargparse import CLI

    from densemtl.demo import run_demo

    return CLI(run_demo, args=list(args))


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> DenseMTLCLI:
    """Run the LightningCLI (``fit``, ``validate``, ``test``, ``predict``) with ``args``.

    Args:
        args: the command line without the program name; None reads ``sys.argv``.
        run: run the subcommand (else only parse and instantiate).
    """
    if args is not None:
        # called from Python (the demo, tests): LightningCLI would warn that sys.argv is ignored
        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            return _make_cli(list(args), run)
        finally:
            sys.argv = saved
    return _make_cli(None, run)


def _make_cli(args: list[str] | None, run: bool) -> DenseMTLCLI:
    return DenseMTLCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        trainer_defaults={
            "default_root_dir": "runs",
            "callbacks": [LearningRateMonitor(logging_interval="step"), GracefulInterrupt(), RandomState()],
        },
        save_config_callback=KeepingConfigCallback,  # never replaces another command's config.yaml
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"description": "densemtl: multi-task dense prediction"},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``densemtl`` command; returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = _extra_commands()
    if argv and argv[0] in extra:
        result = extra[argv[0]](argv[1:])
        if isinstance(result, Path):
            print(result)
        if getattr(result, "ok", True) is False:  # e.g. verify-dataset found a split it cannot read
            return 1
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    cli_main(None if from_command_line else argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
