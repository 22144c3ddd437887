"""Agreement of densemtl's gradient methods with the peers' (LibMTL 1.1.5, torchjd 0.18), with the evidence.

For one (peer, method, space) of ``weighting_peers.PEERS`` and one task set, on the same model copy and batch,
the first step's shared update is computed by:

- ``ours``: densemtl's engine (fp32 rows, the blocked Gramian, the method's own solver);
- ``ref32``: densemtl's rule, through the method's own ``weights(K)`` from the same method state (generator
  included), on the fp32 model's rows with K = GGᵀ and the update in fp64: the exact answer for those rows;
- ``ref64``: the same on float64 rows (the model copy and the batch in fp64);
- the peer at its default settings (fp32), at matched settings (``weighting_peers.TIGHT``: a tighter stopping
  rule where the peer has one; fp32) and at matched settings in float64.

The criterion evaluates the losses in fp32 (``losses.py`` casts), so "fp64" means the network's backward, the
rows, K, the solve and the update; the losses' own gradients are the same fp32 values on both sides.

Each update is compared as ‖u − v‖/‖v‖. Where the rule has an optimality certificate, it is evaluated for
every side's weights (densemtl's from the engine, the peer's from ``weights_seen``) on the Gramian that side
solved: for the fp32 runs, densemtl's blocked Gramian (``gradients._gram``) for ours and the single fp32 GEMM
K = GGᵀ of the fp32 rows for the peers; the fp64 K for the fp64 runs. So it measures the solver, not the
rounding of K:

- MGDA: the relative Frank–Wolfe gap (αᵀKα − min_t (Kα)_t)/αᵀKα, an upper bound on f(α) − f*, relative;
- CAGrad: the relative Frank–Wolfe gap of F(w) = wᵀK1/T + c_abs√(wᵀKw + 1e-8) (spec §3.2) at the simplex
  weights w* (torchjd returns 1/T + λw*, from which w* is recovered);
- IMTL: the spread of the projections (Kα)_t/‖g_t‖ on the unit gradients, (max − min)/mean (0 is IMTL's rule);
- Nash-MTL: the bargaining residual ‖Kα − 1/α‖/‖1/α‖ of α_t (Kα)_t = 1.

PCGrad is compared with the same projection orders on both sides (``permutation_state``); for torchjd,
whose loop skips j = i, the orders are also applied to our coefficient routine with j = i removed, which
shows whether that rule difference accounts for the rest.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch import Tensor

from densemtl.models.baselines import resize_to
from densemtl.weighting import StepContext
from densemtl.weighting.gradients import _gram
from densemtl.weighting.pcgrad import pcgrad_coefficients

__all__ = ["CERTIFICATES", "agreement", "certificate", "float64_rows"]


def _rel(u: Tensor, v: Tensor) -> float:
    return float((u - v).norm() / v.norm().clamp_min(1e-300))


def float64_rows(model, criterion, tasks, batch: dict, space: str):
    """Rows (T, d) fp64 of the task losses of ``model`` (fp64) on ``batch`` and a map coefficients -> update.

    ``param``: rows over the trunk's parameters, update Σ c_t g_t. ``rep``: rows ∂L_t/∂rep summed over the
    batch (``sum_batch``, as LibMTL), update = the trunk's vector-Jacobian product with Σ c_t ∂L_t/∂rep.
    """
    images = batch["image"]
    rep = model.trunk(images)
    preds = {t: resize_to(model.heads[t](rep), images.shape[-2:]) for t in tasks}
    out = type("Out", (), {"preds": preds, "aux": {}, "losses": {}, "rep": rep})()
    losses = criterion(out, batch).main
    shared = list(model.trunk.parameters())
    if space == "param":
        rows = []
        for t in tasks:
            grads = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(shared, grads)]))
        g64 = torch.stack(rows).double()
        return g64, lambda coef: coef.double() @ g64
    jac = torch.stack([torch.autograd.grad(losses[t], rep, retain_graph=True)[0] for t in tasks]).double()
    g64 = jac.reshape(len(tasks), rep.shape[0], -1).sum(1)

    def update(coef: Tensor) -> Tensor:
        cot = torch.einsum("t,t...->...", coef.double(), jac).to(rep.dtype)
        grads = torch.autograd.grad(rep, shared, grad_outputs=cot, retain_graph=True)
        return torch.cat([g.flatten() for g in grads]).double()

    return g64, update


def _mgda_gap(k: np.ndarray, a: np.ndarray, _c: float) -> float:
    f = a @ k @ a
    return float((f - (k @ a).min()) / f)


def _cagrad_gap(k: np.ndarray, w: np.ndarray, c: float) -> float:
    c_abs = c * np.sqrt(max(k.mean(), 0.0) + 1e-8) + 1e-8
    q = np.sqrt(max(w @ k @ w, 0.0) + 1e-8)
    f = w @ k.mean(axis=1) + c_abs * q
    grad = k.mean(axis=1) + c_abs * (k @ w) / q
    return float((grad @ w - grad.min()) / abs(f))


def _imtl_spread(k: np.ndarray, a: np.ndarray, _c: float) -> float:
    p = (k @ a) / np.sqrt(np.diag(k))
    return float((p.max() - p.min()) / abs(p.mean()))


def _nash_residual(k: np.ndarray, a: np.ndarray, _c: float) -> float:
    return float(np.linalg.norm(k @ a - 1.0 / a) / np.linalg.norm(1.0 / a))


CERTIFICATES = {
    "mgda": ("FW gap", _mgda_gap),
    "cagrad": ("FW gap", _cagrad_gap),
    "imtl": ("proj. spread", _imtl_spread),
    "nash_mtl": ("residual", _nash_residual),
}
"""method -> (name, f(K fp64, weights, c)): 0 at the exact solution of the method's rule."""


def certificate(method: str, k: np.ndarray, weights: Tensor, c: float = 0.0) -> float:
    return CERTIFICATES[method][1](k, weights.double().cpu().numpy(), c)


def _simplex_weights(peer: str, method: str, w: Tensor, num_tasks: int) -> Tensor:
    """CAGrad's w* from a peer's output: LibMTL returns w*, torchjd 1/T + λw*."""
    if method != "cagrad" or peer != "torchjd":
        return w
    d = (w - 1.0 / num_tasks).clamp_min(0)
    return d / d.sum()


def _to64(batch: dict) -> dict:
    return {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}


def agreement(peer: str, method: str, space: str, num_tasks: int, size, batch_size: int) -> dict:
    """The rel. differences and certificates of one (peer, method, space) row at ``num_tasks`` tasks."""
    from bench_weighting import SETUPS, Runner, make_batch
    from weighting_peers import PEERS, TIGHT, UPDATE_SCALE, PeerRunner

    family, tasks, num_classes = SETUPS[num_tasks]
    args = PEERS[(peer, method, space)][1]
    scale = UPDATE_SCALE.get((peer, method, space), lambda t: 1.0)(num_tasks)
    ours = Runner(f"{method}@{space}", family, tasks, num_classes, 10**9, args)
    weighting = ours.module.weighting
    rule = copy.deepcopy(weighting)  # the method's state before the step (its generator included)
    state = weighting.generator.get_state()
    seen: list = []
    engine_weights = weighting.weights

    def recording_weights(gram, losses, ctx):
        agg = engine_weights(gram, losses, ctx)
        seen.append(agg)
        return agg

    weighting.weights = recording_weights
    batch = make_batch(tasks, num_classes, batch_size, size, seed=0)
    u_ours = ours.shared_update(batch) * scale
    ours_agg = seen[-1]

    # densemtl's rule solved in fp64 on the fp32 model's rows (ref32) and on the fp64 model's rows (ref64)
    loss_values = torch.ones(num_tasks, dtype=torch.float64)
    refs = {}
    for name, model, rows_batch in (
        ("32", copy.deepcopy(ours.module.model).train(), batch),
        ("64", copy.deepcopy(ours.module.model).double().train(), _to64(batch)),
    ):
        rows, update = float64_rows(model, ours.module.criterion, tasks, rows_batch, space)
        k = rows @ rows.T
        if name == "32":  # the Gramians the two sides solve on: the peers' one fp32 GEMM, densemtl's blocked K
            k_gemm = (rows.float() @ rows.float().T).double().numpy()
            k_gemm = 0.5 * (k_gemm + k_gemm.T)  # the fp32 GEMM is asymmetric by rounding; judge peers on one K
            k_engine = _gram(rows.float()).double().numpy()
        agg = copy.deepcopy(rule).weights(k, {}, StepContext(epoch=0, step=1, loss_values=loss_values))
        refs[name] = (k.numpy(), agg, update(agg.coefficients) * scale, update)
    batch64 = _to64(batch)

    random.seed(1)  # the peer's own RNG (PCGrad's orders) at a seed other than ours (0)
    torch.manual_seed(1)
    runs = {"default": PeerRunner(peer, method, space, ours.module)}
    pcgrad = method == "pcgrad"
    tight = (peer, method) in TIGHT
    if tight or pcgrad:
        runs["matched"] = PeerRunner(peer, method, space, ours.module, tight=True, permutation_state=state)
    runs["fp64"] = PeerRunner(
        peer, method, space, ours.module, tight=True, float64=True, permutation_state=state if pcgrad else None
    )
    updates = {}
    for name, runner in runs.items():
        updates[name] = runner.shared_update(batch64 if name == "fp64" else batch).double()
    u_ours = u_ours.double()
    result = {
        "default": _rel(u_ours, updates["default"]),
        "matched": _rel(u_ours, updates["matched"]) if "matched" in updates else None,
        "fp64": _rel(refs["64"][2], updates["fp64"]),
        "ours_vs_ref32": _rel(u_ours, refs["32"][2]),
        "peer_vs_ref32": _rel(updates["default"], refs["32"][2]),
        "matched_vs_ref32": _rel(updates["matched"], refs["32"][2]) if "matched" in updates else None,
        "settings": TIGHT.get((peer, method), "same orders" if pcgrad else "—"),
    }
    if method in CERTIFICATES:
        c = float(args.get("c", 0.0))
        pick = (lambda a: a.weights) if method == "cagrad" else (lambda a: a.coefficients)
        k32, k64 = k_gemm, refs["64"][0]
        result["certificate"] = CERTIFICATES[method][0]
        result["cert_ours"] = certificate(method, k_engine, pick(ours_agg), c)
        result["cert_ref64"] = certificate(method, k64, pick(refs["64"][1]), c)
        for name, runner in runs.items():
            w = _simplex_weights(peer, method, runner.weights_seen[-1], num_tasks)
            result[f"cert_{name}"] = certificate(method, k64 if name == "fp64" else k32, w, c)
    if method == "nash_mtl":  # our solver's report for the engine step (failure: previous α reused); the peer's α
        result["ours_solver"] = {k: float(v) for k, v in weighting.diagnostics().items()}
        result["peer_alpha"] = [float(f"{float(a):.4g}") for a in runs["default"].weights_seen[-1]]
        result["ours_alpha"] = [float(f"{float(a):.4g}") for a in ours_agg.coefficients]
        result["min_k_ones"] = float((refs["64"][0] @ np.ones(num_tasks)).min())  # (K1)_t: the CCCP's start α = 1
        result["peer_status"] = getattr(getattr(runs["default"].aggregator.weighting, "prob", None), "status", "?")
    if pcgrad and peer == "torchjd":  # torchjd's loop skips j = i: our coefficient routine under that rule
        generator = torch.Generator().set_state(state)
        orders = [torch.randperm(num_tasks, generator=generator).tolist() for _ in range(num_tasks)]
        skip_self = [[j for j in order if j != i] for i, order in enumerate(orders)]
        k64, update64 = refs["64"][0], refs["64"][3]
        w_skip = pcgrad_coefficients(torch.from_numpy(k64), skip_self).sum(dim=0)
        w_all = pcgrad_coefficients(torch.from_numpy(k64), orders).sum(dim=0)
        result["skip_self_vs_fp64"] = _rel(update64(w_skip), updates["fp64"])
        result["self_projections"] = bool((w_skip - w_all).abs().max() > 0)
    return result


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def report_agreement(size, batch_size: int, task_sets=(3, 5), only=None) -> None:
    """Print the agreement table (Markdown) for every row of ``PEERS`` (or those in ``only``)."""
    from weighting_peers import PEERS, peer_available

    print(
        "\nAgreement with the peers (first-step shared update, rel. diff ‖u_ours − u_peer‖/‖u_peer‖; "
        "ref32 = densemtl's rule solved in fp64 on the fp32 model's rows, K = GGᵀ in fp64; "
        "certificates 0 at the exact solution, on the K each run solved: the fp32 GEMM K for fp32 runs):\n"
    )
    print(
        "| method | space | peer | T | default | matched fp32 | fp64 | ours vs ref32 | peer default vs ref32 "
        "| peer matched vs ref32 | certificate: ours / ref64 / peer default / matched / fp64 | matched settings |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (peer, method, space), (peer_name, _, _) in PEERS.items():
        if only is not None and (peer, method, space) not in only:
            continue
        label = f"{'LibMTL 1.1.5' if peer == 'libmtl' else 'torchjd 0.18'} `{peer_name}`"
        if not peer_available(peer):
            print(f"| {method} | {space} | {label} | | peer not installed | | | | | | | `make bench-peers` |")
            continue
        for t in task_sets:
            try:
                r = agreement(peer, method, space, t, size, batch_size)
            except Exception as exc:  # a peer that cannot run this case (e.g. LibMTL's CAGrad at T != 3)
                print(f"| {method} | {space} | {label} | {t} | fails: {type(exc).__name__} | | | | | | | |")
                continue
            cert = "—"
            if "certificate" in r:
                keys = ("cert_ours", "cert_ref64", "cert_default", "cert_matched", "cert_fp64")
                cert = f"{r['certificate']}: " + " / ".join(_fmt(r.get(k)) for k in keys)
            if "peer_alpha" in r:
                cert += (
                    f"; α ours {r['ours_alpha']}, peer {r['peer_alpha']}; min_t (K1)_t {r['min_k_ones']:.3g}; "
                    f"peer's last cvxpy status: {r['peer_status']}"
                )
            if "self_projections" in r:
                cert = (
                    f"j = i projection fired: {'yes' if r['self_projections'] else 'no'}; "
                    f"our routine without j = i vs torchjd fp64: {_fmt(r['skip_self_vs_fp64'])}"
                )
            cells = [r[k] for k in ("default", "matched", "fp64", "ours_vs_ref32", "peer_vs_ref32", "matched_vs_ref32")]
            print(
                f"| {method} | {space} | {label} | {t} | {' | '.join(_fmt(c) for c in cells)} | {cert} "
                f"| {r['settings']} |"
            )
