"""``MultiTaskModule``: the one LightningModule that trains, evaluates and predicts with every model.

It builds the model, criterion, weighting and metrics from their registries and talks to them only
through their interfaces (``MultiTaskOutput``, ``TaskLosses``, ``Weighting``, ``MultiTaskMetrics``).
Log names are fixed: ``loss/<task>``, ``weight/<task>``, ``loss/total``, ``val/<task>/<metric>``,
``test/<task>/<metric>`` and ``val/delta_m`` when an STL reference exists.

Weighting support (``spec/weighting.md`` §1): the engine averages each method's ``epoch_statistics``
over the epoch (sample-weighted, all-reduced across DDP ranks) before ``on_epoch_end``; runs the
post-step forward of ``Kind.LOSSES_POST_STEP`` methods (FAMO) with normalisation statistics frozen;
keeps the partial-epoch accumulators and the weight trajectory in the checkpoint (the method's own
state, generator included, is in its ``state_dict``); trains learnable weights in their own parameter
group (weight decay 0); and writes ``weights.png`` (weight trajectories) into the run folder.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import Metric

from densemtl.guards import skip_nonfinite_losses
from densemtl.losses import MultiTaskCriterion
from densemtl.metrics.coherence import build_coherence, finish_coherence
from densemtl.metrics.collection import MultiTaskMetrics
from densemtl.metrics.delta_m import compute_delta_m
from densemtl.models import MODELS, MultiTaskModel
from densemtl.models.blocks import detached_branches
from densemtl.results import write_results
from densemtl.tasks import get_task
from densemtl.viz import grid, to_display
from densemtl.weighting import Kind, StepContext, TrainInfo, Weighting, build_weighting
from densemtl.weighting.base import EpochStats, StepEnd, task_objective_terms
from densemtl.weighting.ddp_sync import ParamSpaceSync, check_same_on_all_ranks
from densemtl.weighting.epoch_stats import EpochAccumulator, reduce_mean
from densemtl.weighting.gradient_method import GradientWeighting
from densemtl.weighting.gradients import GradientSpace, GradientStep, MicroBatch, RowAccumulator, gradient_step
from densemtl.weighting.trajectory import WeightTrajectory, save_figure

__all__ = ["MultiTaskModule", "build_from_registry"]

log = logging.getLogger(__name__)

LOSS_KINDS = (Kind.LOSSES, Kind.LOSSES_POST_STEP)
GRADIENT_KINDS = (Kind.GRAMIAN, Kind.TASK_GRADS)
WEIGHTS_PNG = "weights.png"

DEFAULT_VAL_METRICS_ARGS: dict[str, dict[str, Any]] = {"edge": {"odsf": False}}
"""Validation-only metric options: odsF is costly, so validation reports the edge loss (§4.5)."""


def build_from_registry(registry: Any, kind: str, name: str, args: Mapping[str, Any] | None, **given: Any) -> Any:
    """Instantiate ``registry.get(name)(**given, **args)`` with a clear error for wrong arguments."""
    cls = registry.get(name)
    kwargs = {**(args or {}), **given}
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            valid = sorted(k for k in params if k not in given)
            raise ValueError(f"{kind} {name!r} has no argument(s) {unknown}; valid arguments: {valid}")
    return cls(**kwargs)


class MultiTaskModule(L.LightningModule):
    """Training, evaluation and prediction of a multi-task dense model.

    ``tasks``, ``num_classes`` and ``family`` are linked from the DataModule by the CLI, so tasks are
    given once.

    Args:
        tasks: task names, in order.
        num_classes: task -> class count of segmentation-like tasks.
        family: dataset family (``nyud``, ``pascal``, ``nyuv2_13``), for default loss weights and the
            STL reference of Δm.
        arch: model registry name (``stl``, ``hps``, ...).
        arch_args: keyword arguments of the model (e.g. ``encoder``, ``pretrained``).
        weighting: weighting registry name (``ew``, ``static``, ``lps``, ``uw``, ``dwa``, ...; LibMTL
            names such as ``UW`` are accepted).
        weighting_args: keyword arguments of the weighting method (LibMTL names such as ``T`` too).
        criterion_args: keyword arguments of :class:`~densemtl.losses.MultiTaskCriterion`.
        optimizer: ``adamw``, ``adam`` or ``sgd``.
        lr: base learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        scheduler: ``poly`` (power ``poly_power``), ``cosine``, ``cosine_restarts`` (SGDR, Loshchilov & Hutter:
            cosine cycles of ``restart_period`` units, each ``restart_mult`` times longer than the previous; the
            released CTAL_MS / MTI-Net Cityscapes recipe uses 25 epochs and 2) or ``none``; stepped every
            iteration over ``trainer.estimated_stepping_batches`` (or per epoch, see ``scheduler_interval``).
        poly_power: exponent of the poly schedule.
        scheduler_interval: ``step`` (every iteration, the default) or ``epoch`` (MT-CP's recipe: lr_e =
            lr · (1 − e / max_epochs)^power, constant within an epoch).
        restart_period: ``cosine_restarts`` only: length of the first cycle, in epochs when
            ``scheduler_interval="epoch"``, else in iterations (``T_0``).
        restart_mult: ``cosine_restarts`` only: cycle-length multiplier (``T_mult``, an integer >= 1).
        metrics_protocol: metric protocol preset (``default``, ``mtinet``, ``invpt``, ...).
        metrics_args: task -> metric options overriding the preset (validation and test).
        val_metrics_args: task -> options for validation only, over ``metrics_args``. Default:
            ``{"edge": {"odsf": False}}``: edge odsF (about 0.5 s per 240x320 image on a CPU core) is
            computed at test time only, and validation reports the edge loss, as every reference
            lineage does during training (``protocols.md`` §4.5). Entries for tasks not trained are ignored.
        delta_m_reference: STL reference table entry for Δm (e.g. ``nyud/mtcp_stl``); None picks the
            family's default if one exists.
        log_images: number of validation images logged to TensorBoard per epoch (0 disables).
        coherence: cross-task coherence at test and predict time (:mod:`densemtl.metrics.coherence`): True
            (defaults, wherever the task set allows), False, or options of ``CoherenceMetrics``.
        check_rank_weights: debugging under DDP: after every gradient-method step, check that the weights are
            bitwise identical on all ranks (one all-gather per step; a ``RuntimeError`` names the ranks). Loss
            methods are not checked: SI's and GLS's implied weights come from rank-local losses by design.
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        num_classes: dict[str, int] | None = None,
        family: str = "",
        arch: str = "hps",
        arch_args: dict[str, Any] | None = None,
        weighting: str = "ew",
        weighting_args: dict[str, Any] | None = None,
        criterion_args: dict[str, Any] | None = None,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: Literal["poly", "cosine", "cosine_restarts", "none"] = "poly",
        poly_power: float = 0.9,
        scheduler_interval: Literal["step", "epoch"] = "step",
        restart_period: int = 25,
        restart_mult: int = 2,
        metrics_protocol: str = "default",
        metrics_args: dict[str, dict[str, Any]] | None = None,
        val_metrics_args: dict[str, dict[str, Any]] | None = None,
        delta_m_reference: str | None = None,
        log_images: int = 4,
        coherence: bool | dict[str, Any] = True,
        check_rank_weights: bool = False,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskModule needs tasks (the CLI links them from data.tasks)")
        tasks = list(tasks)
        self.save_hyperparameters()
        self.tasks = tuple(tasks)
        for t in self.tasks:
            get_task(t)
        self.family = family
        self.model: MultiTaskModel = build_from_registry(
            MODELS, "model", arch, arch_args, tasks=list(self.tasks), num_classes=dict(num_classes or {})
        )
        missing = [t for t in self.tasks if t not in self.model.tasks]
        if missing:
            raise ValueError(f"model {arch!r} does not produce task(s) {missing}; it produces {list(self.model.tasks)}")
        # a model may name its own criterion settings (MT-CP: intermediate weights, released losses);
        # criterion_args given in the config win
        model_defaults = getattr(self.model, "criterion_defaults", None)
        criterion_args = {**(model_defaults() if callable(model_defaults) else {}), **(criterion_args or {})}
        self.criterion = MultiTaskCriterion(self.tasks, **criterion_args)
        self.weighting: Weighting = build_weighting(weighting, weighting_args, tasks=self.tasks)
        self.test_metrics = MultiTaskMetrics(
            self.tasks, dict(num_classes or {}), protocol=metrics_protocol, options=metrics_args, family=family
        )
        self.test_coherence = build_coherence(self.tasks, family, num_classes, coherence)  # None: off or n/a
        val_args = {t: dict(v) for t, v in (metrics_args or {}).items()}
        for task, options in (DEFAULT_VAL_METRICS_ARGS if val_metrics_args is None else val_metrics_args).items():
            if task in self.tasks:
                val_args[task] = {**val_args.get(task, {}), **options}
        self.val_metrics = MultiTaskMetrics(
            self.tasks, dict(num_classes or {}), protocol=metrics_protocol, options=val_args, family=family
        )
        # training KPIs only for methods that use them (DTP): metrics cost time on every step
        self.train_metrics = (
            MultiTaskMetrics(self.tasks, dict(num_classes or {}), protocol=metrics_protocol, options=val_args)
            if getattr(self.weighting, "needs_train_kpis", False)
            else None
        )
        if self.train_metrics is not None:  # partial-epoch metric states go into the checkpoint
            for metric in self.train_metrics.modules():
                if isinstance(metric, Metric):
                    metric.persistent(True)
        self._loaded_progress: dict[str, int] = {}
        self._epoch_stats = EpochAccumulator()
        self._trajectory = WeightTrajectory(self.tasks)
        self._post_step_batch: dict[str, Any] | None = None
        self._step_before = 0
        # gradient methods (spec/weighting.md §1.3-1.8): the partition is built on the first gradient step;
        # parameters a method updates outside the backward pass stay out of DDP's reducer (§1.7 rule 8)
        self._gradient_space: GradientSpace | None = None
        self.keep_gradients = False  # keep the last step's rows and Gramian in ``last_gradients`` (tests)
        self.last_gradients: GradientStep | None = None
        self._branches: dict[str, Any] | None = None
        self._rows = RowAccumulator()  # exact gradient accumulation over a window's micro-batches
        self._window = MicroBatch()
        self._param_sync = ParamSpaceSync()  # DDP: param-space steps bypass the reducer (§1.7 rule 5)
        self._run_dir: Path | None = None  # read in setup()
        ignored = getattr(self.weighting, "ddp_ignored_parameters", ())
        if ignored:
            self._ddp_params_and_buffers_to_ignore = [f"weighting.{n}" for n in ignored]

    def setup(self, stage: str) -> None:
        # trainer.log_dir is a collective under DDP (rank 0 broadcasts it): read it here, on every rank, and
        # never later inside a rank-0-only branch, where it would wait forever for the other ranks
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _output_dir(self) -> Path:
        """The run folder (``trainer.log_dir``, else ``default_root_dir``) read in :meth:`setup`."""
        if self._run_dir is not None:
            return self._run_dir
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    # ------------------------------------------------------------------ forward / training
    def forward(self, images: Tensor):  # noqa: D401 - Lightning hook
        return self.model(images)

    def on_train_start(self) -> None:
        trainer = self.trainer
        if self.weighting.kind is Kind.LOSSES_POST_STEP and trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"weighting {self.hparams.weighting!r} needs a post-step forward after every optimiser step; "
                f"trainer.accumulate_grad_batches must be 1, got {trainer.accumulate_grad_batches}"
            )
        if (
            isinstance(self.weighting, GradientWeighting)
            and self.weighting.space == "rep"
            and self.weighting.accumulation == "exact"
            and trainer.accumulate_grad_batches != 1
        ):
            raise ValueError(
                f"weighting {self.hparams.weighting!r} in rep space cannot accumulate gradients exactly "
                f"(trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}): its update of the encoder needs "
                "every micro-batch's graph until the weights are known. Use weighting_args {space: param} (exact "
                "accumulation), {accumulation: per_micro_batch} (each micro-batch aggregated on its own), or "
                "accumulate_grad_batches: 1"
            )
        if (
            isinstance(self.weighting, GradientWeighting)
            and self.weighting.space == "param"
            and trainer.world_size > 1
            and not isinstance(getattr(trainer.strategy, "model", None), DistributedDataParallel)
        ):
            raise ValueError(
                f"weighting {self.hparams.weighting!r} in param space runs on one device or under DDP "
                f"(strategy ddp, ddp_spawn, ddp_fork); strategy {type(trainer.strategy).__name__} shards or wraps "
                "the parameters differently. Use a DDP strategy, or weighting_args {space: rep}"
            )
        self.weighting.on_train_start(
            TrainInfo(
                tasks=self.tasks,
                world_size=trainer.world_size,
                steps_per_epoch=trainer.num_training_batches if trainer.num_training_batches != float("inf") else None,
                max_epochs=trainer.max_epochs,
                seed=int(torch.initial_seed() % 2**31),
                family=self.family,
            )
        )

    def _step_context(self) -> StepContext:
        return StepContext(epoch=self.current_epoch, step=self.global_step + 1, generator=self.weighting.generator)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # before the forward pass: under DDP a param-space gradient step keeps the reducer out (§1.7 rule 5)
        if self._param_space_step(self.weighting.needs(self._step_context())):
            self._param_sync.begin(self.trainer.strategy)
        else:
            self._param_sync.restore()

    def on_after_backward(self) -> None:
        if self._window.final and self._param_sync.active:
            shared = self._gradient_space.shared if self._gradient_space is not None else ()
            self._param_sync.finish(self, shared)

    def _param_space_step(self, kind: Kind) -> bool:
        return kind in GRADIENT_KINDS and getattr(self.weighting, "space", None) == "param"

    def _micro_batch(self, batch_idx: int) -> MicroBatch:
        """This batch's place in its accumulation window (Lightning's own decision of when it steps)."""
        k = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        if k == 1:
            return MicroBatch()
        loop = self.trainer.fit_loop.epoch_loop
        should_accumulate = getattr(loop, "_should_accumulate", None)
        final = not should_accumulate() if callable(should_accumulate) else (batch_idx + 1) % k == 0
        return MicroBatch(count=k, final=final)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        ctx = self._step_context()
        kind = self.weighting.needs(ctx)
        if kind not in LOSS_KINDS and kind not in GRADIENT_KINDS:
            raise NotImplementedError(f"weighting kind {kind.value!r} is not supported by the engine yet")
        self._step_before = self.global_step
        self._window = self._micro_batch(batch_idx)
        exact = self._window.count > 1 and getattr(self.weighting, "accumulation", None) == "exact"
        exact = exact and self._param_space_step(kind)
        if exact and batch_idx % self._window.count == 0:  # Lightning zeroes the gradients here too
            self._rows.reset()
        # gradient methods on models with independent heads: heads read detached copies of rep
        detach = kind in GRADIENT_KINDS and self._detached_branches()
        with detached_branches(detach) as branches:
            output = self.model(batch["image"])
        self._branches = branches if detach else None
        losses = self.criterion(output, batch)
        if skip_nonfinite_losses(self, losses):  # NaN/inf loss: no update from this batch (densemtl.guards)
            return None
        if self.weighting.uses_loss_values:
            terms = task_objective_terms(losses.main, losses.aux, self.tasks)
            values = torch.stack([terms[t].detach().float() for t in self.tasks])
            if exact:  # the window's mean, reduced once on its last micro-batch
                values = self._rows.add_loss_values(values)
            ctx.loss_values = reduce_mean(values) if self._window.final or not exact else values
        effective = None
        if kind in GRADIENT_KINDS:
            grad_step = self._gradient_step(output, losses, ctx, kind, self._rows if exact else None)
            objective, weights, shown = grad_step.objective, grad_step.weights, grad_step.total
            effective = grad_step.effective
        else:
            objective, weights = self.weighting.objective(losses.main, losses.aux, ctx)
            for term in losses.extra.values():
                objective = objective + term
            shown = objective.detach()
        batch_size = batch["image"].shape[0]
        stats = self.weighting.statistics(losses.main, losses.aux)
        stats["loss"] = torch.stack([losses.main[t].detach().float() for t in self.tasks])
        self._epoch_stats.update(stats, batch_size)
        if weights is not None:  # None before the last micro-batch of an exact accumulation window
            self._trajectory.record(weights)
            if self.hparams.check_rank_weights and kind in GRADIENT_KINDS:
                stacked = torch.stack([torch.as_tensor(weights[t]).detach().float().reshape(()) for t in self.tasks])
                check_same_on_all_ranks(stacked, f"weights of {self.hparams.weighting!r} at step {self.global_step}")
        if self.train_metrics is not None:
            self.train_metrics.update({t: p.detach() for t, p in output.preds.items()}, batch)
        self._post_step_batch = batch if kind is Kind.LOSSES_POST_STEP else None
        logged = {f"loss/{t}": losses.main[t].detach() for t in self.tasks}
        logged.update({f"weight/{t}": torch.as_tensor(w).detach().float() for t, w in (weights or {}).items()})
        if effective is not None:
            logged.update({f"weight_eff/{t}": w.float() for t, w in effective.items()})
        logged.update({f"wdiag/{k}": v.detach().float() for k, v in self.weighting.diagnostics().items()})
        logged.update({f"loss_extra/{k}": v.detach() for k, v in losses.extra.items()})
        logged["loss/total"] = shown
        self.log_dict(logged, batch_size=batch_size, on_step=True, on_epoch=False)
        self.log("train_loss", shown, batch_size=batch_size, prog_bar=True, on_step=True, on_epoch=True)
        return objective

    def _detached_branches(self) -> bool:
        return getattr(self.weighting, "space", None) in ("rep", "param") and bool(
            getattr(self.model, "independent_branches", False)
        )

    def _gradient_step(
        self, output: Any, losses: Any, ctx: StepContext, kind: Kind, accumulator: RowAccumulator | None
    ) -> GradientStep:
        """Rows, Gramian and aggregation of a gradient method (``weighting/gradients.py``); the returned
        objective's ordinary backward delivers the aggregated gradient (automatic optimisation unchanged)."""
        if self._gradient_space is None:
            self._gradient_space = GradientSpace(self.model, self.tasks)
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) if self._trainer else None
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None
        step = gradient_step(
            self.weighting,
            self._gradient_space,
            losses.main,
            losses.aux,
            losses.extra,
            output.rep,
            ctx,
            kind,
            scale=scale,
            branches=self._branches,
            window=self._window,
            accumulator=accumulator,
        )
        self._branches = None
        self.last_gradients = step if self.keep_gradients else None
        return step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step_taken = self._trainer is None or self.global_step > self._step_before
        post_losses = None
        if self._post_step_batch is not None and step_taken:
            post_losses = self._post_step_losses(self._post_step_batch)
        self._post_step_batch = None
        self.weighting.on_step_end(StepEnd(step_taken=step_taken, post_losses=post_losses, reduce_mean=reduce_mean))

    @torch.no_grad()
    def _post_step_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """L_t after the optimiser step on the same batch, in training mode with normalisation
        running statistics restored afterwards (``post_step_bn="freeze"``, ``spec/weighting.md`` §3.2)."""
        freeze = getattr(self.weighting, "post_step_bn", "freeze") == "freeze"
        saved = {name: buf.clone() for name, buf in self.model.named_buffers()} if freeze else {}
        try:
            output = self.model(batch["image"])
            losses = self.criterion(output, batch)
        finally:
            buffers = dict(self.model.named_buffers())
            for name, value in saved.items():
                buffers[name].copy_(value)
        terms = task_objective_terms(losses.main, losses.aux, self.tasks)
        return {t: v.detach().float() for t, v in terms.items()}

    def _epoch_completed(self) -> bool:
        """False when fit stopped inside the epoch (``max_steps``): its statistics then stay in the
        accumulators (and the checkpoint) until the epoch really ends."""
        if self._trainer is None:
            return True
        progress = getattr(getattr(self.trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
        return bool(getattr(progress, "is_last_batch", True))

    def on_train_epoch_end(self) -> None:
        if not self._epoch_completed():
            self._trajectory.flush()
            return
        means = self._epoch_stats.reduce()
        self._epoch_stats.reset()
        if not means:  # no training step in this epoch (e.g. a resumed run that restarts at an epoch end)
            return
        self.weighting.on_epoch_end(EpochStats(means=means, metrics=self._train_kpis()))
        self._log_epoch_weighting(means)
        self._trajectory.end_epoch()
        self._write_weight_plot()

    def _train_kpis(self) -> dict[str, float]:
        """``kpi/<task>`` in [0, 1]: the task's first higher-is-better percentage metric over the epoch's
        training batches (synchronised torchmetrics), for methods with ``needs_train_kpis`` (DTP)."""
        if self.train_metrics is None:
            return {}
        values = self.train_metrics.compute()
        self.train_metrics.reset()
        kpis = {}
        for t in self.tasks:
            for spec in get_task(t).metrics:
                if spec.higher_is_better and spec.percent and spec.name in values.get(t, {}):
                    kpis[f"kpi/{t}"] = values[t][spec.name] / 100.0
                    break
        return kpis

    def _log_epoch_weighting(self, means: Mapping[str, Tensor]) -> None:
        if self._trainer is None:
            return
        logged = {f"loss_epoch/{t}": means["loss"][i].float() for i, t in enumerate(self.tasks) if "loss" in means}
        for name, value in self.weighting.epoch_diagnostics().items():
            value = torch.as_tensor(value).detach().float().reshape(-1)
            if value.numel() == len(self.tasks):
                logged.update({f"wepoch/{name}/{t}": value[i] for i, t in enumerate(self.tasks)})
            elif value.numel() == 1:
                logged[f"wepoch/{name}"] = value[0]
        self.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)

    def _write_weight_plot(self) -> None:
        """``weights.png`` in the run folder and the same figure in TensorBoard (rank 0)."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or trainer.sanity_checking or trainer.fast_dev_run:
            return  # fast_dev_run writes no artefacts (as Lightning's loggers and checkpoints)
        fig = self._trajectory.figure(title=f"weighting: {self.hparams.weighting}")
        save_figure(fig, self._output_dir() / WEIGHTS_PNG)
        experiment = getattr(self.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_figure"):
            experiment.add_figure("weights/trajectory", fig, self.global_step, close=False)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], metrics: MultiTaskMetrics, prefix: str) -> dict[str, Tensor]:
        output = self.model(batch["image"])
        losses = self.criterion(output, batch)
        batch_size = batch["image"].shape[0]
        self.log_dict(
            {f"{prefix}/{t}/loss": losses.main[t].detach() for t in self.tasks},
            batch_size=batch_size,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        metrics.update(output.preds, batch)
        return output.preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        preds = self._eval_step(batch, self.val_metrics, "val")
        if batch_idx == 0 and self.hparams.log_images:
            self._log_images(batch, preds)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        preds = self._eval_step(batch, self.test_metrics, "test")
        if self.test_coherence is not None:
            self.test_coherence.update(preds, batch)

    def _finish_eval(self, metrics: MultiTaskMetrics, prefix: str) -> dict[str, Any]:
        values = metrics.compute()
        metrics.reset()
        flat = {f"{prefix}/{t}/{m}": float(v) for t, ms in values.items() for m, v in ms.items()}
        delta = compute_delta_m(values, family=self.family, reference=self.hparams.delta_m_reference)
        if delta.value is not None:
            flat[f"{prefix}/delta_m"] = float(delta.value)
        self.log_dict(flat, sync_dist=False)
        return {"metrics": values, "delta_m": delta}

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        result = self._finish_eval(self.test_metrics, "test")
        coherence = finish_coherence(self.test_coherence)
        if self.trainer.is_global_zero:
            out_dir = self._output_dir()
            delta = result["delta_m"]
            json_path, md_path = write_results(
                result["metrics"],
                out_dir,
                name="test",
                extra={
                    "tasks": list(self.tasks),
                    "arch": self.hparams.arch,
                    "weighting": self.hparams.weighting,
                    "metrics_protocol": self.hparams.metrics_protocol,
                    "family": self.family,
                    "checkpoint": self.trainer.ckpt_path,
                    **self._loaded_progress,
                },
                delta_m=delta,
                coherence=coherence,
            )
            log.info("test metrics written to %s and %s", json_path, md_path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Partial-epoch weighting accumulators and the weight trajectory (exact resume, §1.6)."""
        checkpoint["weighting_epoch_stats"] = self._epoch_stats.state_dict()
        checkpoint["weight_trajectory"] = self._trajectory.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the training progress of a loaded checkpoint for the results file; restore the
        weighting accumulators. Weighting state missing from older checkpoints starts fresh."""
        self._loaded_progress = {
            "trained_epochs": int(checkpoint.get("epoch", -1)) + 1,
            "trained_steps": int(checkpoint.get("global_step", 0)),
        }
        self._epoch_stats.load_state_dict(checkpoint.get("weighting_epoch_stats", {}), device=self.device)
        if "weight_trajectory" in checkpoint:
            self._trajectory.load_state_dict(checkpoint["weight_trajectory"])
        state = checkpoint.get("state_dict")
        if state is not None:
            for key, value in self.weighting.state_dict(prefix="weighting.").items():
                state.setdefault(key, value)

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        preds = self.model(batch["image"]).preds
        if self.test_coherence is not None:
            self.test_coherence.update(preds, batch)
        return {"preds": {t: p.float().cpu() for t, p in preds.items()}, "meta": batch.get("meta")}

    def on_predict_epoch_end(self) -> None:
        """Cross-task coherence of the predictions (no labels needed): ``predict_metrics.json/.md``."""
        coherence = finish_coherence(self.test_coherence)
        if coherence and self.trainer.is_global_zero:
            out_dir = self._output_dir()
            extra = {"tasks": list(self.tasks), "arch": self.hparams.arch, "family": self.family}
            write_results({}, out_dir, name="predict", extra=extra, coherence=coherence)

    # ------------------------------------------------------------------ images
    def _log_images(self, batch: dict[str, Any], preds: Mapping[str, Tensor]) -> None:
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        n = min(int(self.hparams.log_images), batch["image"].shape[0])
        for i in range(n):
            image = to_display(batch["image"][i])
            targets = {t: batch[t][i] for t in self.tasks if t in batch}
            picture = grid(image, targets, {t: preds[t][i] for t in self.tasks})
            experiment.add_image(f"val/sample_{i}", picture, self.global_step, dataformats="HWC")

    # ------------------------------------------------------------------ optimisation
    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """A weighting's built-in clipping of the shared gradient (FAMO ``max_norm``), then the trainer's."""
        max_norm = float(getattr(self.weighting, "max_norm", 0.0) or 0.0)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.model.shared_parameters()), max_norm)
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # learnable weighting parameters get their own group (weight_lr, weight decay 0; spec §1.5)
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("weighting.")]
        params = [{"params": params}, *self.weighting.parameter_groups(hp.lr)]
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}; available: ['adam', 'adamw', 'sgd']")
        if hp.scheduler == "none":
            return opt
        interval = getattr(hp, "scheduler_interval", "step")
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {interval!r}")
        if interval == "epoch":
            total = max(int(self.trainer.max_epochs or 1), 1)
        else:
            total = max(int(self.trainer.estimated_stepping_batches), 1)
        if hp.scheduler == "poly":
            sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=hp.poly_power)
        elif hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif hp.scheduler == "cosine_restarts":
            period, mult = getattr(hp, "restart_period", 25), getattr(hp, "restart_mult", 2)
            if int(period) != period or period < 1 or int(mult) != mult or mult < 1:
                raise ValueError(
                    f"model.restart_period must be a positive integer and model.restart_mult an integer >= 1, got "
                    f"{period!r} and {mult!r}"
                )
            sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=int(period), T_mult=int(mult))
        else:
            raise ValueError(
                f"unknown scheduler {hp.scheduler!r}; available: ['cosine', 'cosine_restarts', 'none', 'poly']"
            )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}
