"""Loss-based methods against the closed forms of spec/weighting.md §4.1 (fp64, hand-derived values)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from densemtl.weighting import WEIGHTINGS, EpochStats, StepContext, StepEnd, TrainInfo, build_weighting
from densemtl.weighting.dtp import dtp_weights

CTX = StepContext(epoch=0, step=1)
LOSS_METHODS = ["ew", "uw", "dwa", "dtp", "gls", "rlw", "si", "famo", "lps"]


def _method(name, tasks=("a", "b", "c"), **args):
    m = build_weighting(name, args, tasks=tasks)
    m.on_train_start(TrainInfo(tasks=tuple(tasks), seed=7))
    return m.double()


def _losses(values, grad=True):
    return {t: torch.tensor(v, dtype=torch.float64, requires_grad=grad) for t, v in zip("abc", values)}


def test_every_loss_method_is_registered_with_its_kind():
    assert set(LOSS_METHODS) <= set(WEIGHTINGS.names())
    for name in LOSS_METHODS:
        expected = "losses+post_step" if name == "famo" else "losses"
        assert WEIGHTINGS.get(name).kind.value == expected


def test_uw_kendall_fixed_point_and_initial_weight():
    uw = _method("uw")
    losses = _losses((0.5, 1.0, 2.0))
    _, w = uw.combine(losses, CTX)
    assert [float(w[t]) for t in "abc"] == pytest.approx([0.5 * math.exp(0.5)] * 3, abs=1e-12)
    assert float(w["a"]) == pytest.approx(0.824361, abs=1e-6)
    with torch.no_grad():  # s_t = log L_t: stationary, w = 1/(2 L_t)
        uw.params.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)))
    objective, w = uw.combine(losses, CTX)
    objective.backward()
    assert uw.params.grad.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert [float(w[t]) for t in "abc"] == pytest.approx([1.0, 0.5, 0.25], abs=1e-12)
    assert [losses[t].grad.item() for t in "abc"] == pytest.approx([1.0, 0.5, 0.25], abs=1e-12)
    cls = _method("uw", classification_tasks=["a"])  # Kendall's classification form e^{-s} L + s/2
    assert float(cls.combine(_losses((1.0, 1.0, 1.0)), CTX)[1]["a"]) == pytest.approx(math.exp(0.5), abs=1e-12)


@pytest.mark.parametrize("loss, sigma2", [(1.0, 1.0), (0.5, 0.640388)])
def test_uw_log1p_sigma2_optimum(loss, sigma2):
    uw = _method("uw", tasks=("a",), form="log1p_sigma2")
    assert sigma2 == pytest.approx((loss + math.sqrt(loss**2 + 8 * loss)) / 4, abs=1e-6)
    with torch.no_grad():
        uw.params.fill_(math.sqrt((loss + math.sqrt(loss**2 + 8 * loss)) / 4))
    objective, w = uw.combine({"a": torch.tensor(loss, dtype=torch.float64)}, CTX)
    objective.backward()
    assert uw.params.grad.item() == pytest.approx(0.0, abs=1e-12)
    assert float(w["a"]) == pytest.approx(1 / (2 * sigma2), abs=1e-5)


def _dwa_epochs(dwa, means):
    for m in means:
        dwa.on_epoch_end(EpochStats(means={"dwa": torch.tensor(m, dtype=torch.float64)}))


def test_dwa_softmax_of_loss_ratios():
    dwa = _method("dwa")
    _, w = dwa.combine(_losses((3.0, 2.0, 1.0)), CTX)
    assert [float(w[t]) for t in "abc"] == [1.0, 1.0, 1.0]
    _dwa_epochs(dwa, [(1.0, 1.0, 1.0)])
    assert dwa.weights.tolist() == [1.0, 1.0, 1.0]  # e in {0, 1}: w = 1
    _dwa_epochs(dwa, [(0.8, 0.9, 0.95)])  # r = (0.8, 0.9, 0.95), tau = 2
    assert dwa.weights.tolist() == pytest.approx((0.958725, 1.007880, 1.033395), abs=1e-6)
    objective, _ = dwa.combine(_losses((3.0, 2.0, 1.0)), CTX)
    assert float(objective.detach()) == pytest.approx(0.958725 * 3 + 1.007880 * 2 + 1.033395, abs=1e-5)
    flat = _method("dwa", T=1e9)  # LibMTL's argument name
    _dwa_epochs(flat, [(1.0, 1.0, 1.0), (0.8, 0.9, 0.95)])
    assert flat.weights.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-8)


def test_dwa_step_history_uses_the_window_and_commits_on_taken_steps():
    dwa = _method("dwa", tasks=("a", "b"), history="steps", window=2)
    seq = [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.25, 1.0)]
    ws = []
    for i, values in enumerate(seq):
        losses = {t: torch.tensor(v, dtype=torch.float64) for t, v in zip("ab", values)}
        ctx = StepContext(epoch=0, step=i + 1, loss_values=torch.tensor(values, dtype=torch.float64))
        _, w = dwa.combine(losses, ctx)
        ws.append([float(w[t]) for t in "ab"])
        dwa.on_step_end(StepEnd(step_taken=True))
    assert ws[0] == ws[1] == [1.0, 1.0]  # no more than W steps yet
    # step 3: FIFO (1,1),(1,1),(1,1),(.5,1) -> r_a = mean(1, .5)/mean(1, 1) = .75, r_b = 1
    expected = 2 * torch.softmax(torch.tensor([0.75, 1.0], dtype=torch.float64) / 2.0, 0)
    assert ws[2] == pytest.approx(expected.tolist(), abs=1e-12)
    before = dwa.fifo.clone()
    dwa.combine({"a": torch.tensor(9.0), "b": torch.tensor(9.0)}, StepContext(0, 5, torch.tensor([9.0, 9.0])))
    dwa.on_step_end(StepEnd(step_taken=False))  # a skipped step leaves the state unchanged
    assert torch.equal(dwa.fifo, before)


def test_dtp_focal_weights_and_smoothing():
    w = dtp_weights(torch.tensor([0.4, 0.8, 0.3], dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert w.tolist() == pytest.approx((0.549774, 0.044629, 0.842781), abs=1e-6)
    dtp = _method("dtp")
    assert dtp.weights.tolist() == [1.0, 1.0, 1.0]  # epoch 0
    dtp.on_epoch_end(EpochStats(metrics={"kpi/a": 0.4, "kpi/b": 0.8, "kpi/c": 0.3}))
    assert dtp.weights.tolist() == pytest.approx((0.549774, 0.044629, 0.842781), abs=1e-6)
    dtp.on_epoch_end(EpochStats(metrics={"kpi/a": 0.6, "kpi/b": 0.8}))  # c has no KPI this epoch: kept
    k = 0.5 * 0.6 + 0.5 * 0.4
    assert dtp.weights[0].item() == pytest.approx(-(1 - k) * math.log(k), abs=1e-12)
    assert dtp.weights[2].item() == pytest.approx(0.842781, abs=1e-6)
    clamped = dtp_weights(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert clamped.tolist() == pytest.approx([-0.99 * math.log(0.01), -0.01 * math.log(0.99)], abs=1e-12)
    norm = _method("dtp", normalize=True)
    norm.on_epoch_end(EpochStats(metrics={"kpi/a": 0.4, "kpi/b": 0.8, "kpi/c": 0.3}))
    assert norm.weights.sum().item() == pytest.approx(3.0)


def test_gls_geometric_mean_and_implied_weights():
    gls = _method("gls")
    losses = _losses((1.0, 0.5, 2.0))
    objective, w = gls.combine(losses, CTX)
    objective.backward()
    assert float(objective.detach()) == pytest.approx(1.0, abs=1e-12)
    assert [float(w[t]) for t in "abc"] == pytest.approx([1 / 3, 2 / 3, 1 / 6], abs=1e-12)
    assert [losses[t].grad.item() for t in "abc"] == pytest.approx([1 / 3, 2 / 3, 1 / 6], abs=1e-12)


def test_rlw_reproducible_normalised_and_isolated_from_global_rngs():
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    seqs = []
    for _ in range(2):
        rlw = _method("rlw")
        seqs.append([[float(v) for v in rlw.combine(_losses((1.0, 1.0, 1.0)), CTX)[1].values()] for _ in range(5)])
    assert seqs[0] == seqs[1]
    assert seqs[0][0] != seqs[0][1]
    for w in seqs[0]:
        assert min(w) > 0 and sum(w) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1] and np.array_equal(np.random.get_state()[1], states[2])
    sum_t = _method("rlw", scale="sum_T")
    assert sum(float(v) for v in sum_t.combine(_losses((1.0, 1.0, 1.0)), CTX)[1].values()) == pytest.approx(3.0)


def test_si_is_scale_invariant_with_implied_inverse_weights():
    si = _method("si")
    grads = []
    for scale in (1.0, 10.0):
        theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
        losses = {t: scale * (1 + i) * torch.exp(theta[i]) for i, t in enumerate("abc")}
        objective, w = si.combine(losses, CTX)
        objective.backward()
        grads.append(theta.grad.clone())
        assert [float(w[t]) for t in "abc"] == pytest.approx([1 / losses[t].item() for t in "abc"], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_famo_effective_weights_gradient_and_adam_step():
    famo = _method("famo", tasks=("a", "b"))
    losses = {
        "a": torch.tensor(1.0, dtype=torch.float64, requires_grad=True),
        "b": torch.tensor(2.0, dtype=torch.float64, requires_grad=True),
    }
    objective, w = famo.combine(losses, CTX)
    objective.backward()
    assert [float(w["a"]), float(w["b"])] == pytest.approx([2 / 3, 1 / 3], abs=1e-8)
    assert [losses["a"].grad.item(), losses["b"].grad.item()] == pytest.approx([2 / 3, 1 / 3], abs=1e-8)
    delta = torch.log(torch.tensor([1.0, 2.0])) - torch.log(torch.tensor([0.5, 2.0]))
    assert famo.xi_gradient(delta).tolist() == pytest.approx([0.173287, -0.173287], abs=1e-6)
    post = {"a": torch.tensor(0.5, dtype=torch.float64), "b": torch.tensor(2.0, dtype=torch.float64)}
    famo.on_step_end(StepEnd(step_taken=True, post_losses=post))
    # first Adam step: lr * g / (|g| + eps) (+ L2 of xi = 0)
    assert famo.xi.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)
    # two steps against torch.optim.Adam with coupled L2 (weight_decay = gamma = 1e-3)
    reference = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([reference], lr=0.025, weight_decay=1e-3)
    for grad in ([0.173287, -0.173287], [0.05, 0.02]):
        reference.grad = torch.tensor(grad)
        opt.step()
    famo2 = _method("famo", tasks=("a", "b"))
    famo2.adam_step(torch.tensor([0.173287, -0.173287]))
    famo2.adam_step(torch.tensor([0.05, 0.02]))
    assert famo2.xi.tolist() == pytest.approx(reference.tolist(), abs=1e-7)
    skipped = _method("famo", tasks=("a", "b"))
    skipped.combine(losses, CTX)
    skipped.on_step_end(StepEnd(step_taken=False, post_losses=post))
    assert skipped.xi.tolist() == [0.0, 0.0]


def _drive(method, steps, seed):
    """Random losses through combine/on_step_end and an epoch end every 3 steps; returns the weights."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        values = (torch.rand(3, generator=g, dtype=torch.float64) + 0.1).tolist()
        losses = {t: torch.tensor(v, dtype=torch.float64) for t, v in zip("abc", values)}
        ctx = StepContext(epoch=k // 3, step=k + 1, loss_values=torch.tensor(values, dtype=torch.float64))
        _, w = method.objective(losses, {}, ctx)
        out.append(torch.stack([torch.as_tensor(w[t]).double() for t in "abc"]))
        post = {t: v * 0.9 for t, v in losses.items()}
        method.on_step_end(StepEnd(step_taken=True, post_losses=post))
        if k % 3 == 2:
            stats = {n: v.double() for n, v in method.statistics(losses, {}).items()}
            method.on_epoch_end(
                EpochStats(means=stats, metrics={f"kpi/{t}": 0.2 + 0.1 * i for i, t in enumerate("abc")})
            )
    return out


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_state_dict_round_trip_mid_epoch_continues_identically(name):
    args = {"history": "steps", "window": 2} if name == "dwa" else {}
    straight = _method(name, **args)
    first = _drive(straight, 4, seed=0)  # 4 steps: one epoch end plus a partial epoch
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in straight.state_dict().items()}
    resumed = build_weighting(name, args, tasks=("a", "b", "c")).double()
    resumed.load_state_dict(state)
    resumed.on_train_start(TrainInfo(tasks=("a", "b", "c"), seed=999))  # a restored generator is kept
    a = _drive(straight, 5, seed=1)
    b = _drive(resumed, 5, seed=1)
    assert len(first) == 4
    for wa, wb in zip(a, b):
        assert torch.equal(wa, wb), name
    for key, value in straight.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, resumed.state_dict()[key]), (name, key)


def test_libmtl_names_and_argument_aliases():
    assert WEIGHTINGS.get("UW") is WEIGHTINGS.get("uw")
    assert WEIGHTINGS.get("FAMO") is WEIGHTINGS.get("famo")
    assert WEIGHTINGS.get("scaleinvls") is WEIGHTINGS.get("si")
    assert build_weighting("DWA", {"T": 3.0}).temperature == 3.0
    assert build_weighting("DWA", {"DWA_T": 4.0}).temperature == 4.0
    assert build_weighting("FAMO", {"FAMO_w_lr": 0.1}).w_lr == 0.1
    with pytest.raises(ValueError, match=r"unknown weighting 'nash'; available: \[.*'dwa'.*'uw'"):
        build_weighting("nash")
    with pytest.raises(
        ValueError,
        match=r"weighting 'dwa' has no argument\(s\) \['tau'\]; valid arguments: "
        r"\['temperature', 'history', 'window'\]; LibMTL aliases: \{'T': 'temperature'\}",
    ):
        build_weighting("dwa", {"tau": 1.0})
    with pytest.raises(ValueError, match=r"UW form must be one of \['kendall', 'log1p_sigma2'\]"):
        build_weighting("uw", {"form": "sigma"})
