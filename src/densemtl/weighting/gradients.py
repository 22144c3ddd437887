"""The engine's gradient machinery for ``gramian`` and ``task_grads`` methods (``spec/weighting.md`` §1.3–§1.8).

One step (:func:`gradient_step`):

1. **Rows** g_t = ∇f_t of each task objective f_t (separate scalars, never stacked, §1.2):
   - ``rep`` space: ``autograd.grad(f_t, rep)`` for each task (each call traverses task t's part of the graph
     down to the branch point only); rows are the Jacobians summed over the batch (``sum_batch``) or flattened;
   - ``param`` space: ``autograd.grad(f_t, shared + task t's parameters)`` for each task, the graph retained
     on all but the last pass; the shared part becomes row t with one concatenation, task t's own gradient is
     kept (it is exact: a head receives gradient from its task only).
   Rows are computed in fp32 from objectives scaled by the GradScaler's scale s (fp16) and divided by s before
   any use (§1.8); they are averaged over DDP ranks in one collective before the Gramian K = G Gᵀ (fp32).
2. **Aggregation**: the method's ``weights(K, L, ctx)`` or ``aggregate(G, L, ctx)``.
3. **Update**: the engine returns an objective whose *ordinary* backward pass delivers exactly the aggregated
   gradient, so Lightning's automatic optimisation, clipping and the fp16 GradScaler work unchanged:
   - ``rep``: Σ_t h_t f_t plus a linear term ⟨Σ_t (c_t − h_t) J_t, rep⟩ (J_t = ∂f_t/∂rep detached), so the
     encoder receives Σ_t c_t ∂f_t/∂rep and head t receives h_t ∇f_t (h_t = 1 for ``own`` heads, c_t for
     ``weighted``): one backward pass, as EW's;
   - ``param``: a zero-valued node whose backward writes u = Σ c_t g_t into the shared parameters, h_t ∇f_t
     into task t's parameters and the method's own parameter gradients; it costs one multiply per parameter
     and no further pass through the network (LibMTL's extra backward of Σ α_t L_t, §6 #9, is not repeated).
     Model-internal terms (``TaskLosses.extra``, weight 1) get one more pass: their shared gradient is a row
     that joins the rows' all-reduce and accumulation, never the Gramian.

Gradient accumulation (:class:`RowAccumulator`): in param space the rows of the k micro-batches are summed and
aggregated once, on the last micro-batch, so the step is that of the k-times larger batch. Under DDP, param-space
steps keep DDP's reducer out (``weighting/ddp_sync.py``): u is written identically on every rank and never
all-reduced again; rep-space steps use DDP's ordinary synchronised backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from densemtl.weighting.base import Kind, StepContext, at_least_fp32, task_objective_terms
from densemtl.weighting.epoch_stats import distributed_world_size, reduce_mean
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["GradientSpace", "GradientStep", "MicroBatch", "RowAccumulator", "gradient_step", "inject_gradients"]


class _InjectGradients(torch.autograd.Function):
    """Zero-valued scalar whose backward sends ``grad_output · grads[i]`` to ``tensors[i]``."""

    @staticmethod
    def forward(ctx, grads: tuple[Tensor | None, ...], *tensors: Tensor) -> Tensor:  # type: ignore[override]
        ctx.grads = grads
        return torch.zeros((), dtype=torch.float32, device=tensors[0].device)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        grads = ctx.grads
        ctx.grads = None
        return (None, *(None if g is None else g * grad_output.to(g.dtype) for g in grads))


def inject_gradients(pairs: Sequence[tuple[Tensor, Tensor | None]]) -> Tensor:
    """A 0-d fp32 zero whose backward adds ``grad`` (times the incoming gradient) to each ``tensor``."""
    if not pairs:
        raise ValueError("inject_gradients needs at least one (tensor, grad) pair")
    tensors = tuple(t for t, _ in pairs)
    grads = tuple(None if g is None else g.detach().to(t.dtype) for t, g in pairs)
    return _InjectGradients.apply(grads, *tensors)


def _names(model: nn.Module, params: Sequence[nn.Parameter]) -> list[str]:
    ids = {id(p) for p in params}
    return [n for n, p in model.named_parameters() if id(p) in ids]


class GradientSpace:
    """A model's parameter partition for gradient methods: shared and per-task trainable parameters.

    Checks that ``shared_parameters()`` and the ``task_parameters(t)`` sets are disjoint and cover every
    trainable parameter (a ``ValueError`` names the offending parameters); the first param-space step also
    checks by autograd reachability that no task reaches another task's parameters (:func:`gradient_step`).
    """

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        self.model = model
        self.tasks = tuple(tasks)
        shared_fn = getattr(model, "shared_parameters", None)
        task_fn = getattr(model, "task_parameters", None)
        if not callable(shared_fn) or not callable(task_fn):
            raise ValueError(
                f"model {type(model).__name__} does not expose shared_parameters() and task_parameters(task), "
                "which gradient weighting methods need"
            )
        self.shared = [p for p in shared_fn() if p.requires_grad]
        self.task_params = {t: [p for p in task_fn(t) if p.requires_grad] for t in self.tasks}
        seen: dict[int, str] = {id(p): "shared" for p in self.shared}
        for t, params in self.task_params.items():
            clash = [p for p in params if id(p) in seen]
            if clash:
                raise ValueError(
                    f"model {type(model).__name__}: parameters {_names(model, clash)} are in task_parameters({t!r}) "
                    "and also shared or in another task's set; the sets must be disjoint"
                )
            seen.update({id(p): t for p in params})
        missing = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(
                f"model {type(model).__name__}: trainable parameters {_names(model, missing)} are neither in "
                "shared_parameters() nor in any task_parameters(task)"
            )
        self.numels = [p.numel() for p in self.shared]
        self.dim = sum(self.numels)
        self.reachability_checked = False

    def split(self, flat: Tensor) -> list[Tensor]:
        """The (d,) vector ``flat`` as one tensor per shared parameter (views, parameter shapes)."""
        return [v.view_as(p) for v, p in zip(torch.split(flat, self.numels), self.shared)]


@dataclass
class GradientStep:
    """The result of :func:`gradient_step`.

    Attributes:
        objective: the scalar to back-propagate (its backward delivers the aggregated gradient).
        total: detached Σ_t c_t f_t (+ extra terms), for logging as the step's objective.
        weights: task -> native weight; None on a micro-batch before the last of an accumulation window.
        effective: task -> c_t on ∇L_t (when defined).
        rows: (T, d) fp32 rows (rank-averaged; rank-local with ``rep_reduce="flatten"``; this micro-batch's,
            rank-local, before the last micro-batch of a window); gram: (T, T) fp32, or None before the last
            micro-batch and for ``task_grads`` methods in param space (they work on the rows).
        coefficients: (T,) c with u = Σ c_t g_t, or None.
    """

    objective: Tensor
    total: Tensor
    weights: dict[str, Tensor] | None
    effective: dict[str, Tensor] | None
    rows: Tensor
    gram: Tensor | None
    coefficients: Tensor | None


@dataclass(frozen=True)
class MicroBatch:
    """Where a training batch sits in its gradient-accumulation window.

    Attributes:
        count: k, the trainer's ``accumulate_grad_batches`` (Lightning divides each micro-batch's objective by k).
        final: the optimiser step follows this micro-batch.
    """

    count: int = 1
    final: bool = True


class RowAccumulator:
    """The param-space rows of one optimiser step summed over its micro-batches (exact accumulation).

    The gradient of the accumulated objective (1/k) Σ_i f_t^{(i)} is the mean of the micro-batch rows, so the
    Gramian, the weights and the update of the last micro-batch are those of the whole window's batch. Holds
    (T, d) fp32 (plus one row for model-internal terms).
    """

    def __init__(self) -> None:
        self.rows: Tensor | None = None
        self.loss_sum: Tensor | None = None
        self.loss_count = 0

    def reset(self) -> None:
        self.rows, self.loss_sum, self.loss_count = None, None, 0

    def add(self, rows: Tensor) -> Tensor:
        """Add one micro-batch's rows; returns the running sum."""
        self.rows = rows.detach().clone() if self.rows is None else self.rows.add_(rows.detach())
        return self.rows

    def add_loss_values(self, values: Tensor) -> Tensor:
        """Add one micro-batch's rank-local loss values (T,); returns their mean over the window so far."""
        values = values.detach()
        self.loss_sum = values.clone() if self.loss_sum is None else self.loss_sum.add_(values)
        self.loss_count += 1
        return self.loss_sum / self.loss_count


def _rep_rows(objectives: Sequence[Tensor], rep: Tensor, scale: float, reduce: str) -> tuple[list[Tensor], Tensor]:
    """J_t = ∂f_t/∂rep (fp32, rep's shape) and the rows (T, d)."""
    jacobians = []
    for f in objectives:
        (g,) = torch.autograd.grad(f * scale if scale != 1.0 else f, rep, retain_graph=True, allow_unused=True)
        g = torch.zeros(rep.shape, dtype=torch.float32, device=rep.device) if g is None else g.float()
        jacobians.append(g / scale if scale != 1.0 else g)
    stacked = torch.stack(jacobians)
    rows = stacked.sum(dim=1).flatten(1) if reduce == "sum_batch" else stacked.flatten(1)
    return jacobians, rows


def _branch_rows(
    space: GradientSpace,
    objectives: Sequence[Tensor],
    branches: Mapping[str, Sequence[tuple[Tensor, Tensor]]],
    rep: Tensor,
    extra_params: Sequence[nn.Parameter],
    scale: float,
    reduce: str,
) -> tuple[list[Tensor], Tensor, list[list[Tensor | None]], list[Tensor | None]]:
    """Rep rows when heads read detached leaf copies of ``rep`` (``detached_branches``): one backward per
    task through its head gives J_t = ∂f_t/∂leaf_t, the head's own gradient and the weighting parameters'."""
    name = type(space.model).__name__
    leaves = {}
    for t in space.tasks:
        taken = branches.get(t, ())
        if len(taken) != 1 or taken[0][0] is not rep:
            raise ValueError(
                f"model {name} declares independent_branches, but task {t!r} read the representation through "
                f"{len(taken)} task_branch call(s) (expected exactly one, on MultiTaskOutput.rep)"
            )
        leaves[t] = taken[0][1]
    check = not space.reachability_checked
    jacobians, own, extra = [], [], [None] * len(extra_params)
    for t, f in zip(space.tasks, objectives):
        others = [leaves[u] for u in space.tasks if u != t] if check else []
        inputs = [leaves[t], *space.task_params[t], *extra_params, *others]
        grads = torch.autograd.grad(f * scale if scale != 1.0 else f, inputs, allow_unused=True)
        n_own, n_ex = len(space.task_params[t]), len(extra_params)
        if check and any(g is not None for g in grads[1 + n_own + n_ex :]):
            raise ValueError(
                f"model {name} declares independent_branches, but task {t!r} depends on other tasks' branches"
            )
        g = grads[0]
        g = torch.zeros(rep.shape, dtype=torch.float32, device=rep.device) if g is None else g.float()
        jacobians.append(g / scale if scale != 1.0 else g)
        own.append([None if h is None else (h / scale if scale != 1.0 else h) for h in grads[1 : 1 + n_own]])
        for j, h in enumerate(grads[1 + n_own : 1 + n_own + n_ex]):
            if h is not None:
                h = h / scale if scale != 1.0 else h
                extra[j] = h if extra[j] is None else extra[j] + h
    space.reachability_checked = True
    stacked = torch.stack(jacobians)
    rows = stacked.sum(dim=1).flatten(1) if reduce == "sum_batch" else stacked.flatten(1)
    return jacobians, rows, own, extra


def _encoder_rows(space: GradientSpace, rep: Tensor, jacobians: Sequence[Tensor], scale: float) -> Tensor:
    """Param-space rows (T, d) from the rep Jacobians by one batched VJP through the encoder (``vmap`` over
    the T cotangents; ``spec/weighting.md`` §1.4's batched route), valid when every shared parameter sits
    before ``rep`` (a model with independent branches). Frees the encoder graph."""
    cot = torch.stack(list(jacobians)).to(rep.dtype)
    grads = torch.autograd.grad(
        rep, space.shared, cot * scale if scale != 1.0 else cot, is_grads_batched=True, allow_unused=True
    )
    t = cot.shape[0]
    parts = [
        torch.zeros(t, p.numel(), device=rep.device) if g is None else g.reshape(t, -1).float()
        for p, g in zip(space.shared, grads)
    ]
    rows = torch.cat(parts, dim=1)
    return rows / scale if scale != 1.0 else rows


def _param_rows(
    space: GradientSpace,
    objectives: Sequence[Tensor],
    extra_params: Sequence[nn.Parameter],
    scale: float,
    internal: Tensor | None = None,
) -> tuple[Tensor, list[list[Tensor | None]], list[Tensor | None], list[tuple[Tensor, Tensor | None]]]:
    """Rows (T, d) fp32 over the shared parameters, task t's own gradients and the summed gradients of
    ``extra_params`` (weighting parameters inside f_t), all unscaled.

    With ``internal`` (the sum of the model-internal terms, weight 1), one more pass gives its gradient: the
    shared part is appended as row T (it joins the rows' all-reduce and accumulation, never the Gramian), the
    task-specific parts are returned as (parameter, gradient) pairs.
    """
    check = not space.reachability_checked
    rows, own, extra = [], [], [None] * len(extra_params)
    last = len(objectives) - 1
    for i, (t, f) in enumerate(zip(space.tasks, objectives)):
        others = [p for u, ps in space.task_params.items() if u != t for p in ps] if check else []
        inputs = [*space.shared, *space.task_params[t], *extra_params, *others]
        grads = torch.autograd.grad(
            f * scale if scale != 1.0 else f, inputs, retain_graph=internal is not None or i < last, allow_unused=True
        )
        n_sh, n_own, n_ex = len(space.shared), len(space.task_params[t]), len(extra_params)
        if check:
            leaked = [p for p, g in zip(others, grads[n_sh + n_own + n_ex :]) if g is not None]
            if leaked:
                raise ValueError(
                    f"task {t!r} reaches parameters {_names(space.model, leaked)} of other tasks' "
                    "task_parameters(); they must be in shared_parameters()"
                )
        rows.append(_flat_row(space, grads[:n_sh], scale, f.device))
        own.append([None if g is None else (g / scale if scale != 1.0 else g) for g in grads[n_sh : n_sh + n_own]])
        for j, g in enumerate(grads[n_sh + n_own : n_sh + n_own + n_ex]):
            if g is not None:
                g = g / scale if scale != 1.0 else g
                extra[j] = g if extra[j] is None else extra[j] + g
    space.reachability_checked = True
    internal_pairs: list[tuple[Tensor, Tensor | None]] = []
    if internal is not None:
        heads = [p for t in space.tasks for p in space.task_params[t]]
        grads = torch.autograd.grad(
            internal * scale if scale != 1.0 else internal, [*space.shared, *heads], allow_unused=True
        )
        rows.append(_flat_row(space, grads[: len(space.shared)], scale, internal.device))
        internal_pairs = [
            (p, None if g is None else (g / scale if scale != 1.0 else g))
            for p, g in zip(heads, grads[len(space.shared) :])
        ]
    return torch.stack(rows), own, extra, internal_pairs


def _flat_row(space: GradientSpace, grads: Sequence[Tensor | None], scale: float, device: torch.device) -> Tensor:
    """The shared parameters' gradients as one unscaled fp32 (d,) row (zeros where a parameter is unused)."""
    flat = [
        (torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float())
        for p, g in zip(space.shared, grads)
    ]
    row = torch.cat(flat) if flat else torch.zeros(0, device=device)
    return row / scale if scale != 1.0 else row


GRAM_BLOCK = 4096
"""Columns per block of the Gramian (:func:`_gram`)."""


def _gram(rows: Tensor) -> Tensor:
    """K = G Gᵀ (T, T) fp32, accurate to about 1e-7 relative for any row length d.

    One fp32 GEMM over d ≈ 10⁶–10⁸ columns accumulates rounding that grows with d (about 1e-3 relative at
    d = 3.2 M on a CPU BLAS, more with TF32) and is not exactly symmetric. Here the columns are split into
    blocks of :data:`GRAM_BLOCK`: one batched fp32 product per block (one kernel for all blocks), the block
    Gramians summed in fp64, then symmetrised. Autocast and TF32 are off (half precision would be worse still).
    """
    with torch.autocast(rows.device.type, enabled=False), _full_fp32_matmul():
        rows = rows.float()
        t, d = rows.shape
        blocks = d // GRAM_BLOCK
        gram = torch.zeros(t, t, dtype=torch.float64, device=rows.device)
        if blocks:
            main = rows[:, : blocks * GRAM_BLOCK].reshape(t, blocks, GRAM_BLOCK)
            gram += torch.einsum("tnb,snb->nts", main, main).double().sum(0)
        rest = rows[:, blocks * GRAM_BLOCK :]
        if rest.shape[1]:
            gram += (rest @ rest.T).double()
        return ((gram + gram.T) / 2).float()


class _full_fp32_matmul:  # noqa: N801 - used as a context manager
    """Full-precision fp32 matmuls inside the block (a run may have enabled TF32 globally)."""

    def __enter__(self) -> None:
        self.saved = torch.get_float32_matmul_precision()
        if self.saved != "highest":
            torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: object) -> None:
        if self.saved != "highest":
            torch.set_float32_matmul_precision(self.saved)


def gradient_step(
    weighting: GradientWeighting,
    space: GradientSpace,
    main: Mapping[str, Tensor],
    aux: Mapping[str, Sequence[tuple[float, Tensor]]],
    extra: Mapping[str, Tensor],
    rep: Tensor | None,
    ctx: StepContext,
    kind: Kind,
    scale: float | None = None,
    reduce: Callable[[Tensor], Tensor] = reduce_mean,
    branches: Mapping[str, Sequence[tuple[Tensor, Tensor]]] | None = None,
    window: MicroBatch = MicroBatch(),
    accumulator: RowAccumulator | None = None,
) -> GradientStep:
    """Rows, Gramian, aggregation and the objective that delivers the update (module docstring).

    Args:
        weighting: the method (its ``space``, ``heads``, ``task_objectives``, ``weights``/``aggregate``).
        space: the model's parameter partition.
        main, aux, extra: the criterion's ``TaskLosses`` parts (separate scalars).
        rep: ``MultiTaskOutput.rep`` (B, C, h, w), required in rep space.
        ctx: the step context.
        kind: ``Kind.GRAMIAN`` or ``Kind.TASK_GRADS``.
        scale: the fp16 GradScaler's current scale (None without a scaler); rows are divided by it and a
            non-finite Gramian makes the whole update non-finite, so the scaler skips the step.
        reduce: mean over DDP ranks.
        branches: the detached leaves of ``detached_branches`` (rep space on a model with independent
            branches): each head's backward then runs once and the update reaches the encoder through ``rep``.
        window, accumulator: exact gradient accumulation (param space only). Each micro-batch's rows are
            summed in ``accumulator``; before the last micro-batch the objective delivers the task-specific
            gradients only, and the last one aggregates the window's mean rows (reduced over ranks once) and
            writes the update of the whole window. Without an accumulator every micro-batch is aggregated on
            its own (Lightning then averages the micro-batch updates).
    """
    tasks = space.tasks
    name = type(weighting).__name__
    terms = task_objective_terms(main, aux, tasks)
    objectives = weighting.task_objectives(terms)
    f = [at_least_fp32(objectives[t]) for t in tasks]
    s = 1.0 if scale is None else float(scale)
    world = distributed_world_size()
    jacobians: list[Tensor] = []
    own: list[list[Tensor | None]] = []
    extra_grads: list[Tensor | None] = []
    internal_pairs: list[tuple[Tensor, Tensor | None]] = []
    learnable = weighting.learnable()
    if accumulator is not None and weighting.space != "param":
        raise ValueError(f"weighting {name}: exact gradient accumulation needs space 'param', not {weighting.space!r}")
    if weighting.space == "rep":
        if rep is None:
            raise ValueError(
                f"weighting {name} uses space 'rep', but model {type(space.model).__name__} gives no shared "
                "representation (MultiTaskOutput.rep is None); use space='param'"
            )
        if branches is not None:
            _check_no_internal_terms(space, extra)
            jacobians, rows, own, extra_grads = _branch_rows(
                space, f, branches, rep, learnable, s, weighting.rep_reduce
            )
        else:
            jacobians, rows = _rep_rows(f, rep, s, weighting.rep_reduce)
        if weighting.rep_reduce == "flatten":  # rows of different ranks concern different samples (§1.7 rule 4)
            gram = reduce(_gram(rows)) / world
        else:
            rows = reduce(rows)
            gram = _gram(rows)
        internal_row = None
    else:
        if space.dim == 0:
            raise ValueError(
                f"weighting {name} uses space 'param', but model {type(space.model).__name__} has no shared "
                "parameters (shared_parameters() is empty)"
            )
        internal = sum(extra.values()) if extra else None
        if branches is not None:  # heads on detached rep copies: head passes, then one batched encoder VJP
            _check_no_internal_terms(space, extra)
            jacobians, _, own, extra_grads = _branch_rows(space, f, branches, rep, learnable, s, "sum_batch")
            rows = _encoder_rows(space, rep, jacobians, s)
        else:  # model-internal terms get their own pass: their shared gradient is rank-local like the rows
            rows, own, extra_grads, internal_pairs = _param_rows(space, f, learnable, s, internal)
        if accumulator is not None and window.count > 1:
            summed = accumulator.add(rows)
            if not window.final:  # task-specific gradients only; the shared update waits for the last micro-batch
                pairs = [(p, g) for i, t in enumerate(tasks) for p, g in zip(space.task_params[t], own[i])]
                pairs += list(zip(learnable, extra_grads)) + internal_pairs
                objective = inject_gradients(pairs or [(space.shared[0], None)])
                total = sum(x.detach() for x in f) + sum(x.detach() for x in extra.values())
                return GradientStep(objective, total, None, None, rows[: len(tasks)], None, None)
            rows = summed / window.count  # the gradient of the window's objective (1/k) Σ_i f_t^(i)
        rows = reduce(rows)  # rows and the internal terms' row in one collective
        internal_row = rows[len(tasks)] if internal is not None else None  # detached branches forbid internal terms
        rows = rows[: len(tasks)]
        gram = _gram(rows) if kind is Kind.GRAMIAN else None  # task_grads methods work on the rows
    checked = gram if gram is not None else rows
    if scale is not None and not bool(torch.isfinite(checked).all()):  # fp16 overflow: the scaler skips the step
        nan = torch.full((len(tasks),), float("nan"), device=rows.device)
        agg = Aggregation(weights=nan, coefficients=nan)
    elif kind is Kind.GRAMIAN:
        agg = weighting.weights(gram, terms, ctx)
    else:
        agg = weighting.aggregate(rows, terms, ctx)
    coef = None if agg.coefficients is None else agg.coefficients.detach().to(rows.device, torch.float32)
    heads = coef if weighting.heads == "weighted" and coef is not None else None
    named = dict(weighting.named_parameters())
    method_pairs = list(zip(learnable, extra_grads)) + [(named[n], g) for n, g in agg.param_grads.items()]
    if weighting.space == "rep" and branches is not None:
        if coef is None:
            raise ValueError(f"weighting {name}: rep space needs coefficients, the method returned an update")
        cotangent = sum(coef[i] * jacobians[i] for i in range(len(tasks)))
        objective = inject_gradients([(rep, cotangent), *_head_pairs(space, own, heads), *method_pairs])
    elif weighting.space == "rep":
        if coef is None:
            raise ValueError(f"weighting {name}: rep space needs coefficients, the method returned an update")
        objective = sum(f) if heads is None else sum(heads[i] * f[i] for i in range(len(tasks)))
        if heads is None:  # the encoder must receive Σ c_t J_t; the objective above gives Σ J_t
            correction = sum((coef[i] - 1.0) * jacobians[i] for i in range(len(tasks)))
            objective = objective + inject_gradients([(rep, correction)])
        pairs = [(p, agg.param_grads.get(n)) for n, p in weighting.named_parameters() if n in agg.param_grads]
        if pairs:
            objective = objective + inject_gradients(pairs)
        for term in extra.values():
            objective = objective + term
    else:
        with torch.autocast(rows.device.type, enabled=False):
            update = agg.update if agg.update is not None else coef @ rows.float()
            if internal_row is not None:
                update = update + internal_row
        exact_window = accumulator is not None and window.count > 1
        if exact_window:
            # Lightning scales this objective by 1/k: the shared update is the window's, written once
            update = update * window.count
            if heads is not None:  # earlier micro-batches left ∇f_t in task t's .grad; weight them now
                for i, t in enumerate(tasks):
                    for p in space.task_params[t]:
                        if p.grad is not None:
                            p.grad.mul_(heads[i].to(p.grad.dtype))
        pairs = [*zip(space.shared, space.split(update.float())), *_head_pairs(space, own, heads)]
        objective = inject_gradients(pairs + method_pairs + internal_pairs)
    shown = coef if coef is not None else torch.ones(len(tasks), device=rows.device)
    total = sum(shown[i] * f[i].detach() for i in range(len(tasks)))
    for term in extra.values():
        total = total + term.detach()
    weights = {t: agg.weights[i].detach() for i, t in enumerate(tasks)}
    effective = None if agg.effective is None else {t: agg.effective[i].detach() for i, t in enumerate(tasks)}
    return GradientStep(objective, total, weights, effective, rows, gram, coef)


def _head_pairs(
    space: GradientSpace, own: Sequence[Sequence[Tensor | None]], heads: Tensor | None
) -> list[tuple[Tensor, Tensor | None]]:
    """Task t's parameters with ∇f_t (``own`` heads) or c_t ∇f_t (``weighted``)."""
    pairs: list[tuple[Tensor, Tensor | None]] = []
    for i, t in enumerate(space.tasks):
        for p, g in zip(space.task_params[t], own[i]):
            pairs.append((p, g if heads is None or g is None else g * heads[i].to(g.dtype)))
    return pairs


def _check_no_internal_terms(space: GradientSpace, extra: Mapping[str, Tensor]) -> None:
    if extra:
        raise ValueError(
            f"model {type(space.model).__name__} declares independent_branches but returns model-internal "
            f"losses {sorted(extra)}; it cannot use detached branches"
        )
