"""Peer implementations of gradient weighting methods for ``bench_weighting.py``: LibMTL 1.1.5 and torchjd 0.18.

Neither is a dependency of densemtl; ``make bench-peers`` installs them into the virtual environment. Each
peer trains the same HPS model (a copy of densemtl's, same initial weights), on the same batches, with the
same criterion and AdamW settings, through the peer's own gradient code:

- LibMTL: its weighting classes are mixins that read ``task_num``, ``device``, ``rep_grad``,
  ``get_share_params()`` and ``zero_grad_share_params()`` from ``self``; the adapter sets them. Losses are
  stacked (LibMTL's trainer does so). Rep space uses LibMTL's pattern: heads read detached copies of ``rep``
  and the aggregated cotangent is back-propagated through ``rep``. LibMTL 1.1.5 imports
  ``torchvision.models.utils`` (removed in torchvision 0.13); the adapter aliases it to ``torch.hub``'s loader.
- torchjd: ``autojac.mtl_backward(losses, features=rep)`` (the Jacobian with respect to the shared
  parameters, via ``rep``), then ``jac_to_grad(shared_params, aggregator)``.

For the agreement check (``weighting_agreement.py``) a runner can also:

- record the peer's weights of each step (``weights_seen``: LibMTL's return value, torchjd's weighting output);
- run at *matched* settings (``tight=True``): the solver knobs in :data:`TIGHT`, the only change to the peer;
- run in float64 (``float64=True``: the model copy in fp64 and, for LibMTL, ``torch.get_default_dtype()``
  fp64 during its step, because it allocates its gradient vectors with the default dtype);
- draw PCGrad's projection orders from a given torch generator state (``permutation_state``), the draws our
  PCGrad makes (``torch.randperm(T, generator)`` once per task, in task order): torchjd draws the same calls
  from the global torch generator, which is set to that state around its step; LibMTL's ``random.shuffle`` of
  ``list(range(T))`` is replaced, during its step only, by the same ``randperm`` draws.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator

import torch

from densemtl.models.baselines import resize_to

__all__ = ["PEERS", "TIGHT", "UPDATE_SCALE", "PeerRunner", "peer_available"]


def peer_available(peer: str) -> bool:
    return importlib.util.find_spec({"libmtl": "LibMTL", "torchjd": "torchjd"}[peer]) is not None


def _libmtl_weighting(name: str) -> type:
    if "torchvision.models.utils" not in sys.modules:  # LibMTL 1.1.5 imports a module torchvision removed
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    import LibMTL.weighting as lw

    return getattr(lw, name)


def _torchjd_aggregator(name: str, num_tasks: int, tight: bool = False) -> Callable:
    from torchjd import aggregation as agg

    if tight and name == "mgda":
        return agg.MGDA(epsilon=TIGHT_MGDA_EPSILON, max_iters=TIGHT_MGDA_ITERS)
    if tight and name == "nash_mtl":
        return agg.NashMTL(n_tasks=num_tasks, max_norm=0.0, update_weights_every=1, optim_niter=TIGHT_NASH_ITERS)
    return {
        "upgrad": lambda: agg.UPGrad(),
        "mgda": lambda: agg.MGDA(),
        "pcgrad": lambda: agg.PCGrad(),
        "cagrad": lambda: agg.CAGrad(c=0.4),
        "imtl": lambda: agg.IMTLG(),
        "aligned_mtl": lambda: agg.AlignedMTL(),
        "nash_mtl": lambda: agg.NashMTL(n_tasks=num_tasks, max_norm=0.0, update_weights_every=1, optim_niter=20),
    }[name]()


# (peer, densemtl method, space) -> (peer method name, our arguments that reproduce the peer's rule, note)
PEERS: dict[tuple[str, str, str], tuple[str, dict, str]] = {
    ("libmtl", "mgda", "param"): ("MGDA", {}, "LibMTL fails when all pair costs exceed 1e8 (hard-coded)"),
    ("libmtl", "mgda", "rep"): ("MGDA", {}, ""),
    ("libmtl", "pcgrad", "param"): ("PCGrad", {}, "random projection order (Python `random` vs our generator)"),
    ("libmtl", "cagrad", "param"): ("CAGrad", {"c": 0.4}, "LibMTL 1.1.5 hard-codes 3 tasks"),
    ("libmtl", "imtl", "param"): ("IMTL", {}, ""),
    ("libmtl", "imtl", "rep"): ("IMTL", {}, ""),
    ("torchjd", "mgda", "param"): ("MGDA", {}, "torchjd stops Frank-Wolfe at epsilon 1e-3"),
    ("torchjd", "pcgrad", "param"): ("PCGrad", {}, "random projection order"),
    ("torchjd", "cagrad", "param"): ("CAGrad", {"c": 0.4, "rescale": 0}, "torchjd has no rescale (= rescale 0)"),
    ("torchjd", "imtl", "param"): ("IMTLG", {"variant": "G"}, ""),
    ("torchjd", "aligned_mtl", "param"): ("AlignedMTL", {}, "torchjd: B·1/T, ours B·1 (spec); compared ×1/T"),
    ("torchjd", "upgrad", "param"): ("UPGrad", {}, ""),
    ("torchjd", "nash_mtl", "param"): ("NashMTL", {"max_norm": 0.0}, "torchjd: cvxpy CCCP, 20 it.; no clipping"),
}


TIGHT_MGDA_EPSILON, TIGHT_MGDA_ITERS = 1e-12, 100_000
TIGHT_NASH_ITERS = 1000
TIGHT_SLSQP = {"ftol": 1e-14, "maxiter": 1000}
TIGHT_CLARABEL = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}

TIGHT: dict[tuple[str, str], str] = {
    ("torchjd", "mgda"): f"`MGDA(epsilon={TIGHT_MGDA_EPSILON:g}, max_iters={TIGHT_MGDA_ITERS})`",
    ("torchjd", "nash_mtl"): f"`NashMTL(optim_niter={TIGHT_NASH_ITERS})`",
    ("libmtl", "cagrad"): "SLSQP `ftol` 1e-14, `maxiter` 1000 (patched into LibMTL's CAGrad module)",
    ("torchjd", "cagrad"): "Clarabel gap and feasibility tolerances 1e-12 (patched into `Problem.solve`)",
}
"""The peers' solver knobs set by ``tight=True`` (the peer's update rule is otherwise untouched)."""


UPDATE_SCALE: dict[tuple[str, str, str], Callable[[int], float]] = {
    ("torchjd", "aligned_mtl", "param"): lambda t: 1 / t,
}
"""Factor on our update before the agreement check, where the peer normalises the same rule differently."""


class PeerRunner:
    """One peer method training a copy of ``module``'s HPS model (same initial weights and criterion)."""

    def __init__(
        self,
        peer: str,
        method: str,
        space: str,
        module,
        *,
        tight: bool = False,
        float64: bool = False,
        permutation_state: torch.Tensor | None = None,
    ) -> None:
        self.peer, self.method, self.space = peer, method, space
        self.tight, self.float64, self.permutation_state = tight, float64, permutation_state
        self.weights_seen: list[torch.Tensor] = []
        self.model = copy.deepcopy(module.model)
        if float64:
            self.model.double()
        self.model.train()
        self.criterion = module.criterion
        self.tasks = tuple(module.tasks)
        hp = module.hparams
        self.shared = list(self.model.trunk.parameters())
        self.heads = [list(self.model.heads[t].parameters()) for t in self.tasks]
        extra: list = []
        if peer == "libmtl":
            cls = _libmtl_weighting(PEERS[(peer, method, space)][0])
            w = cls()
            w.task_num, w.task_name, w.device, w.rep_grad = (
                len(self.tasks),
                list(self.tasks),
                torch.device("cpu"),
                space == "rep",
            )
            w.get_share_params = self.model.trunk.parameters
            w.zero_grad_share_params = lambda: self.model.trunk.zero_grad(set_to_none=False)
            w.epoch = 1
            with self._dtype():
                w.init_param()
            extra = [p for p in w.parameters() if p.requires_grad]
            self.weighting = w
            self.kwargs = {"mgda_gn": "none", "calpha": 0.4, "rescale": 1}
        else:
            self.aggregator = _torchjd_aggregator(method, len(self.tasks), tight)
            self.aggregator.weighting.register_forward_hook(
                lambda _m, _i, out: self.weights_seen.append(out.detach().double().clone())
            )
        params = [p for p in self.model.parameters() if p.requires_grad] + extra
        self.optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)

    def _losses(self, batch: dict):
        images = batch["image"]
        rep = self.model.trunk(images)
        head_in = rep
        if self.peer == "libmtl" and self.space == "rep":
            self.weighting.rep = rep
            self.weighting.rep_tasks = {t: rep.detach().clone().requires_grad_(True) for t in self.tasks}
            head_in = None
        preds = {
            t: resize_to(
                self.model.heads[t](self.weighting.rep_tasks[t] if head_in is None else head_in), images.shape[-2:]
            )
            for t in self.tasks
        }
        out = type("Out", (), {"preds": preds, "aux": {}, "losses": {}, "rep": rep})()
        losses = self.criterion(out, batch)
        return [losses.main[t] for t in self.tasks], rep

    def backward(self, batch: dict) -> None:
        losses, rep = self._losses(batch)
        if self.peer == "libmtl":
            with self._dtype(), self._libmtl_patches():
                weights = self.weighting.backward(torch.stack(losses), **self.kwargs)
            self.weights_seen.append(torch.as_tensor(weights, dtype=torch.float64).detach().clone())
        else:
            from torchjd.autojac import jac_to_grad, mtl_backward

            mtl_backward(losses, features=rep, tasks_params=self.heads, shared_params=self.shared)
            with self._global_torch_rng(), self._torchjd_patches():
                jac_to_grad(self.shared, self.aggregator)

    @contextlib.contextmanager
    def _dtype(self) -> Iterator[None]:
        """LibMTL allocates its gradient vectors with the default dtype: fp64 while the runner is fp64."""
        old = torch.get_default_dtype()
        if self.float64:
            torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(old)

    @contextlib.contextmanager
    def _global_torch_rng(self) -> Iterator[None]:
        """torchjd's PCGrad draws ``torch.randperm`` from the global generator: set it to the given state."""
        if self.permutation_state is None:
            yield
            return
        saved = torch.get_rng_state()
        torch.set_rng_state(self.permutation_state)
        try:
            yield
        finally:
            torch.set_rng_state(saved)

    @contextlib.contextmanager
    def _torchjd_patches(self) -> Iterator[None]:
        """During torchjd's CAGrad step only, with ``tight``: Clarabel's tolerances (torchjd passes none)."""
        if not (self.tight and self.method == "cagrad"):
            yield
            return
        import cvxpy

        solve = cvxpy.Problem.solve

        def tight_solve(problem, *args, **kwargs):
            return solve(problem, *args, **kwargs, **TIGHT_CLARABEL)

        cvxpy.Problem.solve = tight_solve
        try:
            yield
        finally:
            cvxpy.Problem.solve = solve

    @contextlib.contextmanager
    def _libmtl_patches(self) -> Iterator[None]:
        """During LibMTL's step only: PCGrad's shuffle from ``permutation_state``; CAGrad's SLSQP tolerance."""
        patches = []
        if self.method == "pcgrad" and self.permutation_state is not None:
            generator = torch.Generator().set_state(self.permutation_state)

            def shuffle(x: list) -> None:
                x[:] = [x[k] for k in torch.randperm(len(x), generator=generator).tolist()]

            patches.append((sys.modules["LibMTL.weighting.PCGrad"], "random", types.SimpleNamespace(shuffle=shuffle)))
        if self.method == "cagrad" and self.tight:
            module = sys.modules["LibMTL.weighting.CAGrad"]
            minimize = module.minimize

            def tight_minimize(*args, **kwargs):
                return minimize(*args, **kwargs, options=dict(TIGHT_SLSQP))

            patches.append((module, "minimize", tight_minimize))
        saved = [(m, name, getattr(m, name)) for m, name, _ in patches]
        for m, name, value in patches:
            setattr(m, name, value)
        try:
            yield
        finally:
            for m, name, value in saved:
                setattr(m, name, value)

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(batch)
        self.optimizer.step()

    def shared_update(self, batch: dict) -> torch.Tensor:
        """The gradient written into the shared parameters for ``batch`` (no optimiser step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(batch)
        return torch.cat([p.grad.flatten() for p in self.shared]).detach().clone()
