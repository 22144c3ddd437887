"""The base class of gradient-based methods (``spec/weighting.md`` §1.3–§1.5): kinds ``gramian`` and ``task_grads``.

A method declares the gradient ``spaces`` it allows and its default ``space`` (``"rep"``: gradients with
respect to the shared representation ``MultiTaskOutput.rep``; ``"param"``: with respect to
``model.shared_parameters()``), and its head mode (``"own"``: task t's specific parameters receive ∇f_t;
``"weighted"``: they receive c_t ∇f_t). The engine (``weighting/gradients.py``) computes the rows
g_t = ∇f_t in that space, all-reduced over DDP ranks, and the fp32 Gramian K = G Gᵀ, and asks the method
for an :class:`Aggregation`: the coefficients c with u = Σ_t c_t g_t, or an update u itself. Methods never
run a backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from densemtl.weighting.base import Kind, StepContext, Weighting

__all__ = ["SPACES", "Aggregation", "GradientWeighting"]

SPACES = ("rep", "param")
REP_REDUCE = ("sum_batch", "flatten")
ACCUMULATION = ("exact", "per_micro_batch")


@dataclass
class Aggregation:
    """A gradient method's answer for one step.

    Attributes:
        weights: (T,) native weights, logged as ``weight/<task>``.
        coefficients: (T,) c with u = Σ_t c_t g_t (g_t = ∇f_t); None when the update is given directly.
        update: (d,) the shared update u when it is not a span of the current rows (DB-MTL).
        effective: (T,) c_t such that u = Σ_t c_t ∇L_t (``weight_eff/<task>``), when defined.
        param_grads: gradients of the method's own parameters computed analytically (GradNorm's logits).
    """

    weights: Tensor
    coefficients: Tensor | None = None
    update: Tensor | None = None
    effective: Tensor | None = None
    param_grads: dict[str, Tensor] = field(default_factory=dict)


class GradientWeighting(Weighting):
    """A method of kind ``gramian`` (it implements :meth:`weights`) or ``task_grads`` (:meth:`aggregate`).

    Args:
        space: ``"rep"`` or ``"param"``; None picks the method's default. Must be in ``spaces``.
        rep_reduce: rep-space rows: ``"sum_batch"`` (sum over the batch, the LibMTL convention) or
            ``"flatten"`` (keep the batch: the Gram of the true Jacobian).
        accumulation: with ``accumulate_grad_batches`` k > 1: ``"exact"`` (param space) sums the rows over the
            k micro-batches and aggregates once, so the step equals one on the k-times larger batch;
            ``"per_micro_batch"`` aggregates each micro-batch on its own and the step is the mean of the k
            updates (the only choice in rep space, whose update needs each micro-batch's graph).

    Class attributes:
        spaces: the allowed spaces; default_space: the default; heads: ``"own"`` or ``"weighted"``.
    """

    kind = Kind.GRAMIAN
    spaces: ClassVar[frozenset[str]] = frozenset({"param"})
    default_space: ClassVar[str] = "param"
    heads: ClassVar[str] = "own"
    ddp_ignored_parameters: ClassVar[tuple[str, ...]] = ()
    """Parameters updated outside the backward pass (GradNorm's logits): kept out of DDP's reducer (§1.7)."""

    def __init__(self, space: str | None = None, rep_reduce: str = "sum_batch", accumulation: str = "exact") -> None:
        super().__init__()
        space = self.default_space if space is None else str(space)
        name = type(self).__name__
        if space not in SPACES:
            raise ValueError(f"weighting {name}: unknown gradient space {space!r}; spaces are {list(SPACES)}")
        if space not in self.spaces:
            raise ValueError(f"weighting {name} does not allow space {space!r}; allowed spaces: {sorted(self.spaces)}")
        if rep_reduce not in REP_REDUCE:
            raise ValueError(f"weighting {name}: rep_reduce must be one of {list(REP_REDUCE)}, got {rep_reduce!r}")
        if accumulation not in ACCUMULATION:
            raise ValueError(
                f"weighting {name}: accumulation must be one of {list(ACCUMULATION)}, got {accumulation!r}"
            )
        self.space = space
        self.rep_reduce = rep_reduce
        self.accumulation = accumulation

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        """``Kind.GRAMIAN``: the aggregation from K (T, T) fp32 (fp64 in tests) and the losses L_t."""
        raise NotImplementedError(f"{type(self).__name__} does not implement weights()")

    def aggregate(self, rows: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        """``Kind.TASK_GRADS``: the aggregation from the rows G (T, d) fp32 and the losses L_t."""
        raise NotImplementedError(f"{type(self).__name__} does not implement aggregate()")

    def learnable(self) -> list[nn.Parameter]:
        """The method's trainable parameters (they may appear in the task objectives f_t)."""
        return [p for p in self.parameters() if p.requires_grad]
