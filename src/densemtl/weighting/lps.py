"""Loss Prioritization Scheme (LPS) of MT-CP (``spec/weighting.md`` §2, ``spec/mtcp.md`` §5).

Per step the objective is Σ_t w_t·φ(main_t) + Σ_t Σ c·φ_aux(aux term) + extras, with φ a log
projection. At the end of every epoch the weights for the next epoch are recomputed from the epoch
means m_t(e) of the detached projected final losses (all-reduced by the engine):

    w̃_t = ρ_t(e) / ρ_t(e−K),  ρ_t(e) = m_t(e) / Σ_j m_j(e)         (paper Eq. 4)
    w_t = w̄ + β (w̃_t − w̄),   w̄ = mean_t w̃_t                       (paper Eq. 5-6)
    w = positivity(w)                                             (ours: clamp at 0 by default)

``reference=True`` reproduces the released code: the weights are computed with its rule and logged,
but the trained objective is the plain sum of the raw losses (§2.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from densemtl.weighting.base import EpochStats, Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = [
    "LPS_PRESETS",
    "LossPrioritization",
    "common_scale_weights",
    "positivity",
    "ratio_weights",
    "spread",
]

PROJECTIONS = ("log1p", "log", "none")
POSITIVITY = ("none", "clamp", "clamp_renorm", "multiplicative")
INITS = ("equal", "common_scale")
LOG_EPS = 1e-8

LPS_DEFAULTS: dict[str, Any] = {
    "projection": "log1p",  # paper Eq. 3
    "eps": 1e-6,  # released prototype log(L + 1 + 1e-6)
    "history": 1,  # released code (the paper's K is illegible)
    "beta": 2.5,  # paper
    "positivity": "clamp",  # ours, = mtcp.md §5.2
    "w_min": None,  # 0 for clamp, 0.05 for clamp_renorm
    "init": "equal",  # ours; released: common_scale
    "project_aux": True,  # ours; released: False
    "prioritize": True,
}

LPS_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's Table 4 regimes (spec/weighting.md §2.3)
    "lps": {"projection": "log1p", "prioritize": True},
    "ew": {"projection": "none", "prioritize": False},
    "log_only": {"projection": "log1p", "prioritize": False},
    "prioritize_only": {"projection": "none", "prioritize": True},
    # the released code's weight rule, applied to the gradient (it never reached it there; reference=True
    # gives the literal released behaviour)
    "released_nyud": {
        "projection": "none",
        "beta": 7.5,
        "init": "common_scale",
        "positivity": "none",
        "project_aux": False,
    },
    "released_pascal": {
        "projection": "none",
        "beta": 1.6,
        "init": "common_scale",
        "positivity": "none",
        "project_aux": False,
    },
}


def ratio_weights(m_now: Tensor, m_old: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """w̃ = ρ(e)/ρ(e−K) = r/R, with task progress r = m(e)/m(e−K) and total progress R. Returns (w̃, r, R)."""
    r = m_now / m_old
    big_r = m_now.sum() / m_old.sum()
    return r / big_r, r, big_r


def spread(w: Tensor, beta: float) -> Tensor:
    """Mean-preserving spread w̄ + β(w − w̄) (paper Eq. 5-6)."""
    mean = w.mean()
    return mean + beta * (w - mean)


def positivity(w_tilde: Tensor, w_spread: Tensor, mode: str, beta: float, w_min: float) -> tuple[Tensor, Tensor]:
    """Final weights from the spread ones; returns (weights, mask of clamped tasks)."""
    t = w_tilde.numel()
    clamped = w_spread < w_min
    if mode == "none":
        return w_spread, torch.zeros_like(clamped)
    if mode == "clamp":
        return w_spread.clamp_min(w_min), clamped
    if mode == "clamp_renorm":
        w = w_spread.clamp_min(w_min)
        return t * w / w.sum(), clamped
    if mode == "multiplicative":
        return t * torch.softmax(beta * torch.log(w_tilde), dim=0), torch.zeros_like(clamped)
    raise ValueError(f"unknown positivity {mode!r}; expected one of {list(POSITIVITY)}")


def common_scale_weights(m: Tensor, renormalise: bool) -> Tensor:
    """Released-code initial weights Σ_j m_j / m_t (every weighted term equal); optionally Σw = T."""
    w = m.sum() / m
    return m.numel() * w / w.sum() if renormalise else w


@register_weighting("lps")
class LossPrioritization(Weighting):
    """LPS of MT-CP (Fontana, Spratling and Shi, WACV 2025). Defaults: the paper (``spec/weighting.md`` §2.3).

    Args:
        preset: named configuration; ``lps`` (default), the paper's Table 4 regimes ``ew``,
            ``log_only``, ``prioritize_only``, or ``released_nyud`` / ``released_pascal`` (the released
            code's weight rule with β = 7.5 / 1.6). Explicit arguments override the preset.
        projection: φ: ``log1p`` (log(1 + L + eps)), ``log`` (log(L + 1e-8)) or ``none``.
        eps: η of the log1p projection (1e-6; 0 gives the paper's log(1 + L)).
        history: K, the epoch the ratios compare against (e − K).
        beta: spread β (paper 2.5).
        positivity: ``clamp`` (floor ``w_min`` = 0), ``clamp_renorm`` (floor 0.05, then Σw = T),
            ``multiplicative`` (T·softmax(β log w̃)) or ``none`` (the paper; weights may be negative).
        w_min: floor of ``clamp`` / ``clamp_renorm`` (default 0 / 0.05).
        init: weights while e < K: ``equal`` (1) or ``common_scale`` (Σ_j m_j / m_t).
        project_aux: apply φ to the deep-supervision terms too (they are never multiplied by w).
        prioritize: False keeps w = 1 (projection only).
        reference: the released behaviour: train on the plain sum of raw losses, only log the
            weights of the released rule (raw statistics, ``common_scale`` init, β = 7.5, no positivity;
            none on PASCAL).
    """

    kind = Kind.LOSSES
    epoch_level: ClassVar[bool] = True

    def __init__(
        self,
        preset: str = "lps",
        projection: str | None = None,
        eps: float | None = None,
        history: int | None = None,
        beta: float | None = None,
        positivity: str | None = None,
        w_min: float | None = None,
        init: str | None = None,
        project_aux: bool | None = None,
        prioritize: bool | None = None,
        reference: bool = False,
    ) -> None:
        super().__init__()
        if preset not in LPS_PRESETS:
            raise ValueError(f"unknown LPS preset {preset!r}; available: {sorted(LPS_PRESETS)}")
        given = {
            "projection": projection,
            "eps": eps,
            "history": history,
            "beta": beta,
            "positivity": positivity,
            "w_min": w_min,
            "init": init,
            "project_aux": project_aux,
            "prioritize": prioritize,
        }
        cfg = {**LPS_DEFAULTS, **LPS_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        if reference:  # the released rule (spec §2.2); an explicit beta still wins
            cfg.update(projection="none", history=1, init="common_scale", positivity="none", prioritize=True)
            cfg["beta"] = 7.5 if beta is None else beta
        _check_choice("projection", cfg["projection"], PROJECTIONS)
        _check_choice("positivity", cfg["positivity"], POSITIVITY)
        _check_choice("init", cfg["init"], INITS)
        if int(cfg["history"]) < 1:
            raise ValueError(f"LPS history K must be >= 1, got {cfg['history']}")
        if not float(cfg["beta"]) > 0:
            raise ValueError(f"LPS beta must be > 0, got {cfg['beta']}")
        if float(cfg["eps"]) < 0:
            raise ValueError(f"LPS eps must be >= 0, got {cfg['eps']}")
        if cfg["w_min"] is None:
            cfg["w_min"] = 0.05 if cfg["positivity"] == "clamp_renorm" else 0.0
        self.preset = preset
        self.projection: str = cfg["projection"]
        self.eps = float(cfg["eps"])
        self.history = int(cfg["history"])
        self.beta = float(cfg["beta"])
        self.positivity: str = cfg["positivity"]
        self.w_min = float(cfg["w_min"])
        self.init: str = cfg["init"]
        self.project_aux = bool(cfg["project_aux"])
        self.prioritize = bool(cfg["prioritize"])
        self.reference = bool(reference)
        self.last_epoch: dict[str, Tensor] = {}

    def reset_state(self) -> None:
        t = self.num_tasks
        self.register_buffer("means", torch.zeros(self.history + 1, t, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(t, dtype=torch.float64))
        self.register_buffer("clamp_events", torch.zeros(t, dtype=torch.long))

    # ------------------------------------------------------------------ projection
    def project(self, loss: Tensor) -> Tensor:
        """φ(L) in at least fp32."""
        loss = at_least_fp32(loss)
        if self.projection == "log1p":
            return torch.log(1.0 + loss + self.eps) if self.eps else torch.log1p(loss)
        if self.projection == "log":
            return torch.log(loss + LOG_EPS)
        return loss

    def _statistic(self, loss: Tensor) -> Tensor:
        # ratios of log-losses are meaningless (negative for L < 1): the "log" projection uses raw means
        return at_least_fp32(loss) if self.projection == "log" else self.project(loss)

    # ------------------------------------------------------------------ per step
    def statistics(
        self, main: Mapping[str, Tensor], aux: Mapping[str, Sequence[tuple[float, Tensor]]]
    ) -> dict[str, Tensor]:
        return {"lps": torch.stack([self._statistic(main[t].detach()) for t in self.tasks])}

    def objective(
        self, main: Mapping[str, Tensor], aux: Mapping[str, Sequence[tuple[float, Tensor]]], ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        weights = {t: self.weights[i].float() for i, t in enumerate(self.tasks)}
        total = None
        for t in self.tasks:
            if self.reference:
                term = at_least_fp32(main[t])
            else:
                term = weights[t].to(at_least_fp32(main[t]).dtype) * self.project(main[t])
            for coef, a in aux.get(t, ()):
                a = at_least_fp32(a)
                term = term + coef * (self.project(a) if self.project_aux and not self.reference else a)
            total = term if total is None else total + term
        return total, weights

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Objective without deep-supervision terms: Σ_t w_t φ(L_t) (or Σ L_t under ``reference``)."""
        return self.objective(losses, {}, ctx)

    # ------------------------------------------------------------------ per epoch
    def on_epoch_end(self, stats: EpochStats) -> None:
        if "lps" not in stats.means:
            raise ValueError("LPS needs the engine's epoch means of its 'lps' statistic")
        m = stats.means["lps"].detach().to(self.means.device, torch.float64)
        if bool((m <= 0).any()):
            raise ValueError(
                f"LPS epoch means must be > 0 for ratios, got {m.tolist()} (projection {self.projection!r})"
            )
        self.means.copy_(torch.cat([self.means[1:], m[None]]))
        self.epochs_seen += 1
        epoch = int(self.epochs_seen) - 1
        self.weights.copy_(self.compute_weights(epoch))

    def compute_weights(self, epoch: int) -> Tensor:
        """Weights for epoch ``epoch + 1`` from the stored history (``means[-1]`` is m(epoch))."""
        t = self.num_tasks
        m_now = self.means[-1]
        self.last_epoch = {"m": m_now.clone()}
        if self.reference and self.family == "pascal":  # the released PASCAL script disables LPS
            return torch.ones(t, dtype=torch.float64, device=m_now.device)
        if not self.prioritize:
            return torch.ones_like(m_now)
        if epoch < self.history:
            if self.init == "equal":
                return torch.ones_like(m_now)
            renorm = self.positivity in ("clamp_renorm", "multiplicative")
            return common_scale_weights(m_now, renorm)
        m_old = self.means[0]
        w_tilde, r, big_r = ratio_weights(m_now, m_old)
        w_spread = spread(w_tilde, self.beta)
        w, clamped = positivity(w_tilde, w_spread, self.positivity, self.beta, self.w_min)
        self.clamp_events += clamped.long()
        self.last_epoch.update(r=r, R=big_r, w_tilde=w_tilde, w_spread=w_spread, w=w, clamped=clamped.long())
        return w

    def epoch_diagnostics(self) -> dict[str, Tensor]:
        return dict(self.last_epoch)

    def diagnostics(self) -> dict[str, Tensor]:
        return {"clamp_events": self.clamp_events.sum()}


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"LPS {name} must be one of {list(choices)}, got {value!r}")
