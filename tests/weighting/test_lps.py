"""LPS against the worked example of spec/weighting.md §2.4 (hand-derived values), presets, reference mode."""

from __future__ import annotations

import math

import pytest
import torch

from densemtl.weighting import WEIGHTINGS, EpochStats, StepContext, TrainInfo, build_weighting
from densemtl.weighting.epoch_stats import EpochAccumulator
from densemtl.weighting.lps import LPS_PRESETS, ratio_weights

TASKS = ("semseg", "depth", "normals")
M_PREV = (1.50, 0.80, 0.30)
CASES = {"A": (1.20, 0.72, 0.285), "B": (1.05, 0.72, 0.285)}
CTX = StepContext(epoch=0, step=1)


def _lps(**kwargs):
    w = build_weighting("lps", kwargs, tasks=TASKS)
    w.on_train_start(TrainInfo(tasks=TASKS, family=kwargs.pop("family", "nyud") if "family" in kwargs else "nyud"))
    return w


def _feed_epoch(lps, epoch_losses, steps: int = 3, batch_size: int = 2) -> dict:
    """One epoch of constant per-step raw losses through the engine's accumulator, then on_epoch_end."""
    acc = EpochAccumulator()
    for _ in range(steps):
        main = {t: torch.tensor(v, dtype=torch.float64) for t, v in zip(TASKS, epoch_losses)}
        acc.update(lps.statistics(main, {}), batch_size)
    means = acc.reduce()
    lps.on_epoch_end(EpochStats(means=means))
    return means


def _weights(lps) -> list[float]:
    return lps.weights.tolist()


# spec §2.4, table "After the spread and positivity handling": (case, projection, beta) -> none, clamp_renorm, mult
SPREAD_TABLE = {
    ("A", "none", 2.5): (
        (0.795918, 1.090703, 1.238095),
        (0.764151, 1.047170, 1.188679),
        (0.773379, 1.038183, 1.188438),
    ),
    ("A", "none", 7.5): (
        (0.304611, 1.188964, 1.631141),
        (0.292453, 1.141509, 1.566038),
        (0.425668, 1.029709, 1.544624),
    ),
    ("B", "none", 2.5): (
        (0.600973, 1.233577, 1.391727),
        (0.558824, 1.147059, 1.294118),
        (0.597601, 1.120141, 1.282258),
    ),
    ("B", "none", 7.5): (
        (-0.347932, 1.549878, 2.024331),
        (0.041388, 1.282938, 1.675674),
        (0.171783, 1.131260, 1.696957),
    ),
    ("A", "log1p", 2.5): (
        (0.873164, 1.046751, 1.139205),
        (0.856289, 1.026522, 1.117189),
        (0.859418, 1.023152, 1.117430),
    ),
    ("A", "log1p", 7.5): (
        (0.580079, 1.100840, 1.378202),
        (0.568868, 1.079565, 1.351567),
        (0.614066, 1.036152, 1.349782),
    ),
    ("B", "log1p", 2.5): (
        (0.733769, 1.140725, 1.237501),
        (0.707362, 1.099673, 1.192965),
        (0.723026, 1.088345, 1.188630),
    ),
    ("B", "log1p", 7.5): (
        (0.126644, 1.347513, 1.637838),
        (0.122086, 1.299018, 1.578895),
        (0.338842, 1.155675, 1.505483),
    ),
}


@pytest.mark.parametrize("key", sorted(SPREAD_TABLE))
@pytest.mark.parametrize("mode_index, positivity", [(0, "none"), (1, "clamp_renorm"), (2, "multiplicative")])
def test_worked_example_spread_and_positivity(key, mode_index, positivity):
    case, projection, beta = key
    lps = _lps(projection=projection, beta=beta, positivity=positivity, eps=0.0)
    _feed_epoch(lps, M_PREV)
    assert _weights(lps) == [1.0, 1.0, 1.0]  # init "equal" while e < K
    _feed_epoch(lps, CASES[case])
    assert _weights(lps) == pytest.approx(SPREAD_TABLE[key][mode_index], abs=1e-6)
    if positivity == "none":  # the spread preserves the mean: Σ of the table
        expected_sum = {"none": {"A": 3.124717, "B": 3.226277}, "log1p": {"A": 3.059120, "B": 3.111995}}
        assert sum(_weights(lps)) == pytest.approx(expected_sum[projection][case], abs=1e-6)
    else:
        assert sum(_weights(lps)) == pytest.approx(3.0, abs=1e-9)


@pytest.mark.parametrize(
    "case, projection, r, big_r, w_tilde",
    [
        ("A", "none", (0.8, 0.9, 0.95), 0.848077, (0.943311, 1.061224, 1.120181)),
        ("B", "none", (0.7, 0.9, 0.95), 0.790385, (0.885645, 1.138686, 1.201946)),
        ("A", "log1p", (0.860488, 0.922655, 0.955766), 0.895326, (0.961090, 1.030525, 1.067506)),
        ("B", "log1p", (0.783419, 0.922655, 0.955766), 0.855348, (0.915907, 1.078689, 1.117399)),
    ],
)
def test_worked_example_ratio_weights(case, projection, r, big_r, w_tilde):
    lps = _lps(projection=projection, eps=0.0)
    m_old = _feed_epoch(lps, M_PREV)["lps"]
    m_now = _feed_epoch(lps, CASES[case])["lps"]
    if projection == "log1p":  # projected values of the example
        assert m_old.tolist() == pytest.approx((0.916291, 0.587787, 0.262364), abs=1e-6)
    got_w, got_r, got_big_r = ratio_weights(m_now, m_old)
    assert got_r.tolist() == pytest.approx(r, abs=1e-6)
    assert float(got_big_r) == pytest.approx(big_r, abs=1e-6)
    assert got_w.tolist() == pytest.approx(w_tilde, abs=1e-6)
    assert lps.last_epoch["w_tilde"].tolist() == pytest.approx(w_tilde, abs=1e-6)


def test_worked_example_clamp_floor_and_beta_one():
    lps = _lps(projection="none", beta=7.5, positivity="clamp")
    _feed_epoch(lps, M_PREV)
    _feed_epoch(lps, CASES["B"])
    assert _weights(lps) == pytest.approx((0.0, 1.549878, 2.024331), abs=1e-6)
    assert lps.clamp_events.tolist() == [1, 0, 0]
    for positivity, expected in [
        ("none", (0.943311, 1.061224, 1.120181)),
        ("clamp_renorm", (0.905660, 1.018868, 1.075472)),
        ("multiplicative", (0.905660, 1.018868, 1.075472)),
    ]:
        lps = _lps(projection="none", beta=1.0, positivity=positivity)
        _feed_epoch(lps, M_PREV)
        _feed_epoch(lps, CASES["A"])
        assert _weights(lps) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "projection, weights, renormalised",
    [
        ("none", (1.733333, 3.250000, 8.666667), (0.380952, 0.714286, 1.904762)),
        ("log1p", (1.927818, 3.005243, 6.732783), (0.495760, 0.772831, 1.731409)),
    ],
)
def test_common_scale_init(projection, weights, renormalised):
    lps = _lps(projection=projection, init="common_scale", eps=0.0)
    means = _feed_epoch(lps, M_PREV)["lps"]
    assert _weights(lps) == pytest.approx(weights, abs=1e-6)
    terms = torch.tensor(_weights(lps), dtype=torch.float64) * means  # every weighted term is equal
    assert terms.tolist() == pytest.approx([float(terms[0])] * 3, abs=1e-9)
    for positivity in ("clamp_renorm", "multiplicative"):
        lps = _lps(projection=projection, init="common_scale", eps=0.0, positivity=positivity)
        _feed_epoch(lps, M_PREV)
        assert _weights(lps) == pytest.approx(renormalised, abs=1e-6)


def test_timeline_history_one_and_two():
    # K = 1, init equal: epochs 0 and 1 train with w = 1, epoch 2 with m(1) against m(0)
    lps = _lps(projection="none", beta=2.5, positivity="none")
    seen = [_weights(lps)]
    for m in (M_PREV, CASES["A"]):
        _feed_epoch(lps, m)
        seen.append(_weights(lps))
    assert seen[0] == seen[1] == [1.0, 1.0, 1.0]
    assert seen[2] == pytest.approx((0.795918, 1.090703, 1.238095), abs=1e-6)
    # K = 2 compares against e − 2 (not an average of one-epoch ratios)
    lps = _lps(projection="none", beta=1.0, positivity="none", history=2)
    middle = (1.0, 0.5, 0.2)
    _feed_epoch(lps, M_PREV)
    _feed_epoch(lps, middle)
    assert _weights(lps) == [1.0, 1.0, 1.0]
    _feed_epoch(lps, CASES["A"])
    assert _weights(lps) == pytest.approx((0.943311, 1.061224, 1.120181), abs=1e-6)


def test_objective_weights_final_losses_only_and_projects_aux():
    lps = _lps(projection="log1p", eps=0.0, positivity="none", beta=1.0)
    _feed_epoch(lps, M_PREV)
    _feed_epoch(lps, CASES["A"])
    w = _weights(lps)
    main = {t: torch.tensor(v, dtype=torch.float64) for t, v in zip(TASKS, (0.4, 0.9, 0.2))}
    aux = {"semseg": [(0.5, torch.tensor(2.0, dtype=torch.float64)), (0.5, torch.tensor(3.0, dtype=torch.float64))]}
    objective, logged = lps.objective(main, aux, CTX)
    expected = sum(wi * math.log1p(v) for wi, v in zip(w, (0.4, 0.9, 0.2))) + 0.5 * (math.log1p(2.0) + math.log1p(3.0))
    assert float(objective) == pytest.approx(expected, rel=1e-6)
    assert [float(logged[t]) for t in TASKS] == pytest.approx(w, rel=1e-6)
    raw_aux = _lps(projection="log1p", eps=0.0, project_aux=False)
    objective, _ = raw_aux.objective(main, aux, CTX)
    assert float(objective) == pytest.approx(sum(math.log1p(v) for v in (0.4, 0.9, 0.2)) + 2.5, rel=1e-6)
    eta = _lps(projection="log1p")  # default eta 1e-6 (released prototype)
    assert float(eta.project(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(math.log(2.0 + 1e-6), rel=1e-12)
    log = _lps(projection="log")
    assert float(log.project(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(math.log(0.5 + 1e-8), rel=1e-12)
    # the "log" projection keeps raw statistics for the ratios
    assert log.statistics({t: torch.tensor(0.5) for t in TASKS}, {})["lps"].tolist() == [0.5, 0.5, 0.5]


def test_reference_mode_trains_the_plain_sum_and_logs_the_released_weights():
    lps = _lps(reference=True)
    plain = _lps(preset="ew", project_aux=False)
    _feed_epoch(lps, M_PREV)
    assert _weights(lps) == pytest.approx((1.733333, 3.250000, 8.666667), abs=1e-6)  # common_scale of raw means
    _feed_epoch(lps, CASES["B"])
    assert _weights(lps) == pytest.approx((-0.347932, 1.549878, 2.024331), abs=1e-6)  # beta 7.5, no clamp

    def grads(method):
        main = {t: torch.tensor(v, requires_grad=True) for t, v in zip(TASKS, (0.4, 0.9, 0.2))}
        aux = {"depth": [(0.5, torch.tensor(1.5, requires_grad=True))]}
        objective, logged = method.objective(main, aux, CTX)
        objective.backward()
        return (
            float(objective.detach()),
            [main[t].grad.item() for t in TASKS] + [aux["depth"][0][1].grad.item()],
            logged,
        )

    ref_value, ref_grads, logged = grads(lps)
    plain_value, plain_grads, _ = grads(plain)
    assert ref_grads == plain_grads == [1.0, 1.0, 1.0, 0.5]
    assert ref_value == pytest.approx(plain_value) and ref_value == pytest.approx(0.4 + 0.9 + 0.2 + 0.75)
    assert float(logged["semseg"]) == pytest.approx(-0.347932, abs=1e-6)
    pascal = build_weighting("lps", {"reference": True}, tasks=TASKS)
    pascal.on_train_start(TrainInfo(tasks=TASKS, family="pascal"))
    _feed_epoch(pascal, M_PREV)
    _feed_epoch(pascal, CASES["B"])
    assert _weights(pascal) == [1.0, 1.0, 1.0]  # the released PASCAL script computes no weights


def test_table4_presets_and_overrides():
    assert {k: (v["projection"], v["prioritize"]) for k, v in LPS_PRESETS.items() if "beta" not in v} == {
        "lps": ("log1p", True),
        "ew": ("none", False),
        "log_only": ("log1p", False),
        "prioritize_only": ("none", True),
    }
    default = build_weighting("lps")
    assert (default.projection, default.history, default.beta, default.positivity, default.w_min) == (
        "log1p",
        1,
        2.5,
        "clamp",
        0.0,
    )
    assert (default.init, default.project_aux, default.prioritize, default.reference, default.eps) == (
        "equal",
        True,
        True,
        False,
        1e-6,
    )
    assert build_weighting("lps", {"preset": "released_nyud"}).beta == 7.5
    assert build_weighting("lps", {"preset": "released_pascal"}).beta == 1.6
    assert build_weighting("lps", {"preset": "released_nyud", "beta": 3.0}).beta == 3.0
    assert build_weighting("lps", {"positivity": "clamp_renorm"}).w_min == 0.05
    log_only = _lps(preset="log_only")
    _feed_epoch(log_only, M_PREV)
    _feed_epoch(log_only, CASES["B"])
    assert _weights(log_only) == [1.0, 1.0, 1.0]


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown LPS preset 'paper'; available: \['ew', 'log_only'"):
        build_weighting("lps", {"preset": "paper"})
    with pytest.raises(ValueError, match=r"positivity must be one of \['none', 'clamp', 'clamp_renorm'"):
        build_weighting("lps", {"positivity": "abs"})
    with pytest.raises(
        ValueError, match=r"weighting 'lps' has no argument\(s\) \['gamma'\]; valid arguments: \['preset'"
    ):
        build_weighting("lps", {"gamma": 1.0})
    lps = _lps(projection="log")
    with pytest.raises(ValueError, match="must be > 0"):
        lps.on_epoch_end(EpochStats(means={"lps": torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)}))
    assert WEIGHTINGS.get("LPS") is WEIGHTINGS.get("lps")


def test_state_dict_round_trip_resumes_the_schedule():
    lps = _lps(projection="none", positivity="none")
    _feed_epoch(lps, M_PREV)
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in lps.state_dict().items()}
    fresh = build_weighting("lps", {"projection": "none", "positivity": "none"}, tasks=TASKS)
    fresh.load_state_dict(state)
    fresh.on_train_start(TrainInfo(tasks=TASKS, family="nyud"))
    _feed_epoch(lps, CASES["A"])
    _feed_epoch(fresh, CASES["A"])
    assert torch.equal(lps.weights, fresh.weights) and torch.equal(lps.means, fresh.means)
