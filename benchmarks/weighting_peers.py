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
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from collections.abc import Callable

import torch

from densemtl.models.baselines import resize_to

__all__ = ["PEERS", "UPDATE_SCALE", "PeerRunner", "peer_available"]


def peer_available(peer: str) -> bool:
    return importlib.util.find_spec({"libmtl": "LibMTL", "torchjd": "torchjd"}[peer]) is not None


def _libmtl_weighting(name: str) -> type:
    if "torchvision.models.utils" not in sys.modules:  # LibMTL 1.1.5 imports a module torchvision removed
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    import LibMTL.weighting as lw

    return getattr(lw, name)


def _torchjd_aggregator(name: str, num_tasks: int) -> Callable:
    from torchjd import aggregation as agg

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


UPDATE_SCALE: dict[tuple[str, str, str], Callable[[int], float]] = {
    ("torchjd", "aligned_mtl", "param"): lambda t: 1 / t,
}
"""Factor on our update before the agreement check, where the peer normalises the same rule differently."""


class PeerRunner:
    """One peer method training a copy of ``module``'s HPS model (same initial weights and criterion)."""

    def __init__(self, peer: str, method: str, space: str, module) -> None:
        self.peer, self.method, self.space = peer, method, space
        self.model = copy.deepcopy(module.model)
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
            w.init_param()
            extra = [p for p in w.parameters() if p.requires_grad]
            self.weighting = w
            self.kwargs = {"mgda_gn": "none", "calpha": 0.4, "rescale": 1}
        else:
            self.aggregator = _torchjd_aggregator(method, len(self.tasks))
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
            self.weighting.backward(torch.stack(losses), **self.kwargs)
        else:
            from torchjd.autojac import jac_to_grad, mtl_backward

            mtl_backward(losses, features=rep, tasks_params=self.heads, shared_params=self.shared)
            jac_to_grad(self.shared, self.aggregator)

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(batch)
        self.optimizer.step()

    def shared_update(self, batch: dict) -> torch.Tensor:
        """The gradient written into the shared parameters for ``batch`` (no optimiser step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(batch)
        return torch.cat([p.grad.flatten() for p in self.shared]).detach().clone()
