"""Per-task losses and the deep-supervision criterion (``spec/protocols.md`` §5.1, ``DESIGN.md`` §2).

Every loss takes a prediction and a target in the sample contract (``densemtl.tasks``):

=============  ==================================  ======================================
task family    prediction                          target (invalid)
=============  ==================================  ======================================
segmentation   logits (B, K, H, W)                 int64 (B, H, W), 255
depth          (B, 1, H, W), metres                float (B, 1, H, W), 0
normals        (B, 3, H, W), any length            float (B, 3, H, W) unit, zero vector
edge, sal      one logit (B, 1, H, W)              float (B, 1, H, W) in {0, 1}, 255
=============  ==================================  ======================================

and returns a 0-d fp32 tensor. Invalid pixels are excluded exactly: they add nothing to the value and
receive zero gradient. When no pixel of the batch is valid the loss is 0 and still has a graph (never NaN).

:class:`MultiTaskCriterion` turns a :class:`~densemtl.models.base.MultiTaskOutput` and a batch into a
:class:`TaskLosses`: one separate scalar per task (never stacked, ``spec/weighting.md`` §1.2), the
deep-supervision terms as (coefficient, loss) pairs and the model-internal terms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.registry import Registry
from densemtl.tasks import IGNORE_INDEX, check_tasks, get_task

__all__ = [
    "LOSSES",
    "MultiTaskCriterion",
    "TaskLosses",
    "balanced_bce",
    "cross_entropy",
    "default_loss_weights",
    "l1",
    "normals_cosine",
    "normals_l1",
    "normals_mse",
    "register_loss",
    "sal_ce2",
]

LossFn = Callable[..., Tensor]
LOSSES: Registry[LossFn] = Registry("loss")
register_loss = LOSSES.register


# ----------------------------------------------------------------------------------------------- helpers
def _masked_mean(values: Tensor, mask: Tensor, count: Tensor | int | None = None) -> Tensor:
    """Σ values[mask] / max(count, 1), with exact zeros (and zero gradient) outside the mask.

    Args:
        values: per-element terms, any shape.
        mask: bool, broadcastable to ``values``.
        count: the denominator; defaults to the number of True elements of the broadcast mask.
    """
    mask = mask.expand_as(values)
    total = torch.where(mask, values, values.new_zeros(())).sum()
    if count is None:
        count = mask.sum()
    return total / torch.as_tensor(count, device=values.device).clamp_min(1).to(total.dtype)


def _label_map(target: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) label map -> int64 (B, H, W)."""
    if target.dim() == 4:
        if target.shape[1] != 1:
            raise ValueError(f"label target must be (B, H, W) or (B, 1, H, W), got {tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"label target must be (B, H, W) or (B, 1, H, W), got {tuple(target.shape)}")
    return target.long()


def _binary_map(target: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) binary target -> float (B, 1, H, W)."""
    if target.dim() == 3:
        target = target[:, None]
    if target.dim() != 4 or target.shape[1] != 1:
        raise ValueError(f"binary target must be (B, 1, H, W) or (B, H, W), got {tuple(target.shape)}")
    return target.float()


def _check_same_size(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size; "
            "resize the prediction first (MultiTaskCriterion does this)"
        )


# ------------------------------------------------------------------------------------------------ losses
@register_loss("cross_entropy")
def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Softmax cross-entropy, mean over valid pixels (semseg, human_parts; all lineages).

    Args:
        logits: (B, K, H, W) class logits.
        target: int64 (B, H, W) (or (B, 1, H, W)) class ids, ``ignore_index`` = ignore.
        ignore_index: label value excluded from the loss.

    Returns:
        0-d fp32 tensor; 0 when no pixel is valid.
    """
    target = _label_map(target)
    _check_same_size(logits, target, "cross_entropy")
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = F.cross_entropy(logits.float(), safe, reduction="none")
    return _masked_mean(nll, valid)


@register_loss("l1")
def l1(pred: Tensor, target: Tensor, max_depth: float | None = None) -> Tensor:
    """L1 depth error, mean over valid pixels (gt != 0).

    Args:
        pred: (B, 1, H, W) depth in metres.
        target: (B, 1, H, W) depth in metres, 0 = invalid.
        max_depth: also exclude gt >= max_depth (MT-CP's released loss uses 6.5535 m; ``mtcp.md`` §4).
    """
    _check_same_size(pred, target, "l1")
    valid = target != 0
    if max_depth is not None:
        valid = valid & (target < max_depth)
    return _masked_mean((pred.float() - target.float()).abs(), valid)


def _normals_valid(target: Tensor) -> Tensor:
    """(B, 1, H, W) bool: the GT normal is not the zero vector."""
    return (target != 0).any(dim=1, keepdim=True)


@register_loss("normals_l1")
def normals_l1(pred: Tensor, target: Tensor, per_pixel_sum: bool = False, eps: float = 1e-12) -> Tensor:
    """L1 between the L2-normalised prediction and the GT normal.

    Args:
        pred: (B, 3, H, W), any length.
        target: (B, 3, H, W) unit vectors, zero vector = invalid.
        per_pixel_sum: False (MTI-Net, MT-CP, CTAL CNN form): Σ over valid elements / #valid elements
            (3 per pixel). True (InvPT, TaskPrompter, MLoRE, CTAL transformer): Σ / #valid pixels, i.e. 3x.
        eps: normalisation epsilon.
    """
    _check_same_size(pred, target, "normals_l1")
    unit = F.normalize(pred.float(), p=2, dim=1, eps=eps)
    valid = _normals_valid(target)
    count = valid.sum() * (1 if per_pixel_sum else pred.shape[1])
    return _masked_mean((unit - target.float()).abs(), valid, count)


@register_loss("normals_l1_sum")
def normals_l1_sum(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """:func:`normals_l1` with ``per_pixel_sum=True`` (InvPT form), as its own registry name."""
    return normals_l1(pred, target, per_pixel_sum=True, eps=eps)


@register_loss("normals_cosine")
def normals_cosine(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """1 - cos(prediction, GT), mean over valid pixels (mtan; CTAL CNN).

    Args:
        pred: (B, 3, H, W), normalised here.
        target: (B, 3, H, W) unit vectors, zero vector = invalid.
        eps: normalisation epsilon.
    """
    _check_same_size(pred, target, "normals_cosine")
    unit = F.normalize(pred.float(), p=2, dim=1, eps=eps)
    cos = (unit * target.float()).sum(dim=1, keepdim=True)
    return _masked_mean(1.0 - cos, _normals_valid(target))


@register_loss("normals_mse")
def normals_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Squared error of the raw (unnormalised) prediction, Σ over valid elements / #valid elements.

    MT-CP's released normals loss (``mtcp.md`` §4), for ``reference=True`` only.
    """
    _check_same_size(pred, target, "normals_mse")
    valid = _normals_valid(target)
    return _masked_mean((pred.float() - target.float()) ** 2, valid, valid.sum() * pred.shape[1])


@register_loss("balanced_bce")
def balanced_bce(
    logits: Tensor,
    target: Tensor,
    pos_weight: float = 0.95,
    batch_balanced: bool = False,
    ignore_index: int = IGNORE_INDEX,
    denominator: str = "valid",
) -> Tensor:
    """Class-balanced binary cross-entropy on one logit (edge, 1-logit saliency).

    L = [w · Σ_{y=1} softplus(-x) + (1 - w) · Σ_{y=0} softplus(x)] / N over valid pixels.

    Args:
        logits: (B, 1, H, W) one logit per pixel.
        target: (B, 1, H, W) in {0, 1}, ``ignore_index`` = ignore.
        pos_weight: w for the edge form (MTI-Net/InvPT ``edge_w``: 0.95; MLoRE 0.925 / 0.88).
        batch_balanced: HED-style saliency form: w = fraction of negatives among the valid pixels of the
            whole batch (``pos_weight`` is then unused).
        ignore_index: target value excluded from the loss.
        denominator: ``"valid"``: N = #valid pixels (InvPT form, the default); ``"all"``: N = B·H·W
            (MTI-Net / MT-CP form; identical when nothing is ignored).
    """
    target = _binary_map(target)
    _check_same_size(logits, target, "balanced_bce")
    if denominator not in ("valid", "all"):
        raise ValueError(f"denominator must be 'valid' or 'all', got {denominator!r}")
    x = logits.float()
    valid = target != ignore_index
    positive = valid & (target >= 0.5)
    negative = valid & ~positive
    if batch_balanced:
        n_pos = positive.sum()
        w = (valid.sum() - n_pos).double() / valid.sum().clamp_min(1).double()
        w = w.to(x.dtype)
    else:
        w = torch.as_tensor(float(pos_weight), dtype=x.dtype, device=x.device)
    terms = torch.where(positive, w * F.softplus(-x), (1 - w) * F.softplus(x))
    count = valid.sum() if denominator == "valid" else valid.numel()
    return _masked_mean(terms, positive | negative, count)


@register_loss("balanced_bce_batch")
def balanced_bce_batch(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """:func:`balanced_bce` with ``batch_balanced=True`` (HED/MTI-Net saliency), as its own name."""
    return balanced_bce(logits, target, batch_balanced=True, ignore_index=ignore_index)


@register_loss("sal_ce2")
def sal_ce2(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """2-logit saliency CE with class weights (1 - w, w), w = fraction of negatives (InvPT lineage, CTAL).

    L = Σ_valid weight[y] · CE / #valid (a sum over #valid pixels, not PyTorch's weighted mean).

    Args:
        logits: (B, 2, H, W); channel 1 is "salient".
        target: (B, 1, H, W) or (B, H, W) in {0, 1}, ``ignore_index`` = ignore.
        ignore_index: target value excluded from the loss.
    """
    labels = _label_map(target)
    _check_same_size(logits, labels, "sal_ce2")
    if logits.shape[1] != 2:
        raise ValueError(f"sal_ce2 needs 2 logits per pixel, got {logits.shape[1]} channels")
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    n_valid = valid.sum()
    w = (n_valid - (valid & (safe == 1)).sum()).double() / n_valid.clamp_min(1).double()
    x = logits.float()
    weight = torch.stack([1 - w, w]).to(x.dtype)
    nll = F.cross_entropy(x, safe, reduction="none") * weight[safe]
    return _masked_mean(nll, valid)


# ------------------------------------------------------------------------------------------- TaskLosses
@dataclass
class TaskLosses:
    """The criterion's output: separate scalars per task (``spec/weighting.md`` §1.2).

    Attributes:
        main: task -> final-prediction loss, 0-d fp32 tensor.
        aux: task -> list of (coefficient, loss) deep-supervision terms.
        extra: name -> model-internal term, always added with weight 1.
    """

    main: dict[str, Tensor]
    aux: dict[str, list[tuple[float, Tensor]]] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.main)

    def aux_total(self, task: str) -> Tensor | None:
        """Σ coefficient · aux loss of ``task``, or None when it has no aux terms."""
        terms = self.aux.get(task, [])
        if not terms:
            return None
        total = terms[0][0] * terms[0][1]
        for coef, loss in terms[1:]:
            total = total + coef * loss
        return total

    def task_loss(self, task: str) -> Tensor:
        """L_t = main[t] + Σ coefficient · aux[t]."""
        aux = self.aux_total(task)
        return self.main[task] if aux is None else self.main[task] + aux

    def per_task(self) -> dict[str, Tensor]:
        """task -> L_t (differentiable, separate scalars)."""
        return {t: self.task_loss(t) for t in self.main}

    def extra_total(self) -> Tensor | None:
        """Σ of the model-internal terms, or None when there are none."""
        if not self.extra:
            return None
        values = list(self.extra.values())
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    def total(self, weights: Mapping[str, float | Tensor] | None = None) -> Tensor:
        """Σ_t w_t · L_t + Σ extra (w_t = 1 when ``weights`` is None or lacks t).

        Args:
            weights: task -> weight (a float or 0-d tensor; tensors keep their graph, e.g. UW).
        """
        weights = weights or {}
        unknown = set(weights) - set(self.main)
        if unknown:
            raise ValueError(f"weights given for tasks {sorted(unknown)} without a loss; tasks: {list(self.main)}")
        total: Tensor | None = None
        for task, loss in self.per_task().items():
            term = weights.get(task, 1.0) * loss
            total = term if total is None else total + term
        extra = self.extra_total()
        if extra is not None:
            total = extra if total is None else total + extra
        if total is None:
            raise ValueError("TaskLosses is empty: no task loss and no extra term")
        return total

    def log_dict(self, prefix: str = "loss") -> dict[str, Tensor]:
        """Detached values for logging: ``<prefix>/<task>`` (L_t), ``<prefix>/<task>/main``,
        ``<prefix>/<task>/aux`` (when present) and ``<prefix>/extra/<name>``. No host sync."""
        out: dict[str, Tensor] = {}
        for task in self.main:
            out[f"{prefix}/{task}"] = self.task_loss(task).detach()
            aux = self.aux_total(task)
            if aux is not None:
                out[f"{prefix}/{task}/main"] = self.main[task].detach()
                out[f"{prefix}/{task}/aux"] = aux.detach()
        for name, value in self.extra.items():
            out[f"{prefix}/extra/{name}"] = value.detach()
        return out


def default_loss_weights(tasks: Sequence[str], family: str) -> dict[str, float]:
    """task -> default loss weight on a dataset family (``nyud``, ``pascal``, ``nyuv2_13``), from the Task
    registry (``spec/protocols.md`` §5.2; 1.0 where unspecified)."""
    return {t: get_task(t).loss_weight(family) for t in tasks}


# ------------------------------------------------------------------------------------------- criterion
def _resize_like(pred: Tensor, target: Tensor) -> Tensor:
    size = target.shape[-2:]
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


class MultiTaskCriterion(nn.Module):
    """Final and deep-supervision losses of a multi-task model (``DESIGN.md`` §2).

    Each task's loss function comes from the Task registry (``Task.loss``) unless overridden. Predictions
    whose size differs from the target are resized bilinearly (align_corners=False). Per-dataset task loss
    weights are *not* applied here (the weighting does that; see :func:`default_loss_weights`).

    Args:
        tasks: the tasks to score, in order.
        losses: task -> loss name in :data:`LOSSES` (default: ``Task.loss``).
        loss_kwargs: task -> keyword arguments of its loss, merged over ``Task.loss_kwargs`` (those
            defaults apply only where the chosen loss accepts them).
        aux_weights: aux name (a key of ``MultiTaskOutput.aux``) -> coefficient (default 1.0), e.g.
            ``{"initial": 1.0}`` (PAD-Net/CTAL), ``{"inter1": 0.5, "inter2": 0.5}`` (MT-CP), 1/4 per scale
            (CTAL_MS).
        aux_losses: aux name -> task -> loss name overriding the task's loss for that aux output only
            (e.g. MT-CP's released quirk that scores intermediate normals with the depth L1).
        edge_pos_weight: the edge BCE positive weight w (``edge_w``; 0.95, MLoRE 0.925 / 0.88).
        ignore_index: label ignore value passed to label losses that take it.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        losses: Mapping[str, str] | None = None,
        loss_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        aux_weights: Mapping[str, float] | None = None,
        aux_losses: Mapping[str, Mapping[str, str]] | None = None,
        edge_pos_weight: float = 0.95,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks, list(tasks), "MultiTaskCriterion")
        losses = dict(losses or {})
        loss_kwargs = {t: dict(v) for t, v in (loss_kwargs or {}).items()}
        for name, mapping in (("losses", losses), ("loss_kwargs", loss_kwargs)):
            unknown = set(mapping) - set(self.tasks)
            if unknown:
                raise ValueError(f"{name} given for tasks {sorted(unknown)} not in {list(self.tasks)}")
        self.loss_names = {t: losses.get(t, get_task(t).loss) for t in self.tasks}
        self.loss_kwargs: dict[str, dict[str, Any]] = {}
        for t in self.tasks:
            accepted = inspect.signature(LOSSES.get(self.loss_names[t])).parameters
            kwargs = {k: v for k, v in get_task(t).loss_kwargs.items() if k in accepted}
            if "pos_weight" in kwargs:
                kwargs["pos_weight"] = edge_pos_weight
            kwargs.update(loss_kwargs.get(t, {}))
            self.loss_kwargs[t] = kwargs
        self.loss_fns = {t: LOSSES.get(n) for t, n in self.loss_names.items()}
        self.aux_weights = {k: float(v) for k, v in (aux_weights or {}).items()}
        self.aux_losses = {k: {t: LOSSES.get(n) for t, n in v.items()} for k, v in (aux_losses or {}).items()}
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return f"losses={self.loss_names}, loss_kwargs={self.loss_kwargs}, aux_weights={self.aux_weights}"

    def task_loss(self, task: str, pred: Tensor, target: Tensor, fn: LossFn | None = None) -> Tensor:
        """One task's loss on one prediction, resized to the target size first.

        Args:
            task: task name.
            pred: (B, C, h, w) prediction at any resolution.
            target: the batch's target for ``task`` (contract encoding).
            fn: loss function overriding the task's (its ``loss_kwargs`` are then not passed).
        """
        pred = _resize_like(pred, target)
        if fn is None:
            return self.loss_fns[task](pred, target, **self.loss_kwargs[task])
        return fn(pred, target)

    def forward(self, output: Any, batch: Mapping[str, Tensor]) -> TaskLosses:
        """Score ``output`` (a :class:`~densemtl.models.base.MultiTaskOutput`) against ``batch``.

        Args:
            output: the model output; ``preds`` must hold every task, ``aux`` may hold any subset.
            batch: dict with one target per task in the contract encoding.

        Returns:
            :class:`TaskLosses` with ``main`` for every task, ``aux`` for tasks with deep supervision,
            ``extra`` = ``output.losses``.
        """
        missing = [t for t in self.tasks if t not in output.preds or t not in batch]
        if missing:
            raise ValueError(
                f"criterion needs predictions and targets for {missing}; "
                f"preds: {sorted(output.preds)}, batch: {sorted(k for k in batch if k != 'meta')}"
            )
        main = {t: self.task_loss(t, output.preds[t], batch[t]) for t in self.tasks}
        aux: dict[str, list[tuple[float, Tensor]]] = {}
        for name, preds in output.aux.items():
            coef = self.aux_weights.get(name, 1.0)
            overrides = self.aux_losses.get(name, {})
            for task, pred in preds.items():
                if task not in self.tasks:
                    continue
                loss = self.task_loss(task, pred, batch[task], overrides.get(task))
                aux.setdefault(task, []).append((coef, loss))
        return TaskLosses(main=main, aux=aux, extra=dict(output.losses))
