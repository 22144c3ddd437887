"""The CTAL block: conv_in, the cross-task affinity core, the γ blend and conv_out (``spec/ctal.md`` §3).

:class:`CrossTaskAffinity` is the core (grouped conv over the interleaved task affinities, diffusion of each
task's value map); :class:`CTALBlock` wraps it as the released code does, mapping N task features
(B, C_in, H, W) to N refined maps (B, C, 2H, 2W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from densemtl.models.ctal.affinity import (
    affinity_diffusion,
    affinity_maps,
    affinity_matrix_direct,
    choose_impl,
    normalise_pixels,
)

__all__ = ["GCONV_MODES", "CTALBlock", "CrossTaskAffinity"]

GCONV_MODES = ("shared", "per_task")


class CrossTaskAffinity(nn.Module):
    """CTAL core: (F, V) of N tasks -> Z_t = V_t Gᵀ (``spec/ctal.md`` §3.2-§3.4, §4).

    The grouped conv has one 3x3 kernel over the N task affinities and one bias per query pixel, so the module
    is bound to the feature grid it was built for.

    Args:
        num_tasks: N.
        channels: C of the features (only used to choose the evaluation for ``impl="auto"``).
        grid: (H, W) of the feature maps.
        gconv: ``"shared"`` (released code, one grouped conv for all tasks) or ``"per_task"`` (Fig. 2 of the
            paper, one per task).
        impl: ``"direct"`` (published, materialises P x P), ``"linear"`` (exact O(C·P) identity) or ``"auto"``
            (:func:`~densemtl.models.ctal.affinity.choose_impl`).
        grid_setting: the user-facing setting that fixes the grid, named in the mismatch error.

    Attributes:
        gconv: the ``nn.Conv2d(N·P, P, 3, padding=1, groups=P)`` (shared) or an ``nn.ModuleList`` of N of them.
        impl: the resolved evaluation, ``"direct"`` or ``"linear"``.
    """

    def __init__(
        self,
        num_tasks: int,
        channels: int,
        grid: Sequence[int],
        gconv: str = "shared",
        impl: str = "auto",
        grid_setting: str = "the model's input_size",
    ) -> None:
        super().__init__()
        if gconv not in GCONV_MODES:
            raise ValueError(f"gconv must be one of {GCONV_MODES}, got {gconv!r}")
        if len(grid) != 2 or min(int(g) for g in grid) < 1:
            raise ValueError(f"grid must be (H, W) with positive sizes, got {tuple(grid)}")
        self.num_tasks = int(num_tasks)
        self.grid = (int(grid[0]), int(grid[1]))
        self.mode = gconv
        self.grid_setting = grid_setting
        self.impl = choose_impl(impl, self.num_tasks, int(channels), self.grid)
        p = self.grid[0] * self.grid[1]

        def make() -> nn.Conv2d:
            return nn.Conv2d(self.num_tasks * p, p, 3, padding=1, groups=p)

        self.gconv: nn.Module = make() if gconv == "shared" else nn.ModuleList(make() for _ in range(self.num_tasks))

    def conv_parameters(self, task: int | None = None) -> tuple[Tensor, Tensor]:
        """The grouped-conv (weight (P, N, 3, 3), bias (P,)) acting on output ``task`` (None: the shared one)."""
        conv = self.gconv if isinstance(self.gconv, nn.Conv2d) else self.gconv[0 if task is None else task]
        return conv.weight, conv.bias

    def check_grid(self, size: Sequence[int]) -> None:
        """Raise a ``ValueError`` unless ``size`` (H, W) is the grid this module was built for."""
        if tuple(size) != self.grid:
            h, w = self.grid
            raise ValueError(
                f"CTAL's grouped conv has one kernel per query pixel of a {h}x{w} feature grid (P = {h * w}); got a "
                f"{size[0]}x{size[1]} grid. Train and test sizes must be equal: set {self.grid_setting} to the "
                "size of the images you feed"
            )

    def forward(self, features: Tensor, values: Sequence[Tensor]) -> list[Tensor]:
        """features F (B, N, C, H, W) (not normalised), N values V_t (B, C, H, W) -> N maps Z_t (B, C, H, W).

        Each Z_t is computed by its own graph node, so task t's loss reaches only V_t (and its own grouped conv in
        the per-task mode), never another task's value conv.
        """
        self.check_grid(features.shape[-2:])
        if len(values) != self.num_tasks:
            raise ValueError(f"CrossTaskAffinity built for {self.num_tasks} tasks, got {len(values)} value maps")
        fhat = normalise_pixels(features)
        b, n, c, h, w = fhat.shape
        if self.impl == "direct":  # materialise the affinities once, then G (shared) or G_t (per task)
            aff = affinity_maps(fhat)
            if isinstance(self.gconv, nn.Conv2d):
                g_t = affinity_matrix_direct(aff, *self.conv_parameters()).transpose(-1, -2)
                return [(v.reshape(b, c, h * w) @ g_t).reshape(b, c, h, w) for v in values]
            return [
                (v.reshape(b, c, h * w) @ affinity_matrix_direct(aff, *self.conv_parameters(t)).transpose(-1, -2))
                .reshape(b, c, h, w)
                for t, v in enumerate(values)
            ]
        out = []
        for t, v in enumerate(values):
            weight, bias = self.conv_parameters(t)
            out.append(affinity_diffusion(fhat, v.unsqueeze(1), weight, bias, self.impl)[:, 0])
        return out

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, grid={self.grid}, gconv={self.mode!r}, impl={self.impl!r}"


class _ConvOut(nn.Sequential):
    """ConvTranspose2d(C, C, 2, stride 2) -> BN -> ReLU -> Conv3x3(C, C): (B, C, H, W) -> (B, C, 2H, 2W).

    With ``recompute=True`` a training forward keeps only its input and recomputes the three (B, C, 2H, 2W)
    activations in the backward pass (activation checkpointing): the same outputs and gradients, about 3·B·C·4HW
    floats less memory per task, one more conv_out forward of time. BN's running statistics are updated once, by
    the first forward; the recomputation normalises with the same batch statistics without touching them.
    """

    def __init__(self, channels: int, recompute: bool = False) -> None:
        super().__init__(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.recompute = recompute

    def forward(self, x: Tensor) -> Tensor:
        if not (self.recompute and torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return checkpoint(self._run, x, {"first": True}, use_reentrant=False)

    def _run(self, x: Tensor, state: dict[str, bool]) -> Tensor:
        upsample, bn, relu, conv = self
        y = upsample(x)
        if bn.training and not state["first"]:  # the recomputation: batch statistics, running stats untouched
            stats = (bn.running_mean.clone(), bn.running_var.clone()) if bn.track_running_stats else (None, None)
            y = F.batch_norm(y, *stats, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            y = bn(y)
        state["first"] = False
        return conv(relu(y))


class CTALBlock(nn.Module):
    """One CTAL block as released (``spec/ctal.md`` §3.1): N x (B, C_in, H, W) -> N x (B, C, 2H, 2W).

    Per task k: F_k = conv_in[k](X_k) (1x1 with bias; + BN + ReLU when ``conv_in_bn``), V_k = value[k](F_k)
    (3x3 with bias), Z = :class:`CrossTaskAffinity`, F^r_k = γ·Z_k + (1 − γ)·F_k, out_k = conv_out[k](F^r_k).

    Parameters: N·(C_in·C + C) (+2NC with BN) + N·(9C² + C) + P·(9N + 1) (×N per task) + N·(13C² + 4C).

    Args:
        num_tasks: N.
        in_channels: C_in.
        grid: (H, W) of the input features.
        channels: C (128 in every released model).
        gconv: ``"shared"`` or ``"per_task"``.
        impl: ``"direct"``, ``"linear"`` or ``"auto"``.
        gamma: the blend weight γ (0.05).
        gamma_learnable: make γ one scalar parameter initialised to ``gamma`` (default: a constant buffer).
        conv_in_bn: BN + ReLU after conv_in (the transformer variant).
        grid_setting: the setting named in the grid-mismatch error.
        recompute_out: recompute conv_out's (B, C, 2H, 2W) activations in the backward pass instead of storing
            them (exact; less training memory, one more conv_out forward per step). None (default): on with the
            linear form, whose training peak they dominate, off with the direct form, whose P x P tensors peak
            earlier (``benchmarks/bench_ctal.py``).

    ``task_modules(k)`` lists the modules used by task k alone (value conv, conv_out and, per task, its grouped
    conv); conv_in feeds every task's affinity and is shared.
    """

    def __init__(
        self,
        num_tasks: int,
        in_channels: int,
        grid: Sequence[int],
        channels: int = 128,
        gconv: str = "shared",
        impl: str = "auto",
        gamma: float = 0.05,
        gamma_learnable: bool = False,
        conv_in_bn: bool = False,
        grid_setting: str = "the model's input_size",
        recompute_out: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_tasks = int(num_tasks)

        def conv_in() -> nn.Module:
            conv = nn.Conv2d(in_channels, channels, 1)
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if conv_in_bn else conv

        self.conv_in = nn.ModuleList(conv_in() for _ in range(num_tasks))
        self.value = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_tasks))
        self.affinity = CrossTaskAffinity(num_tasks, channels, grid, gconv, impl, grid_setting)
        if recompute_out is None:
            recompute_out = self.affinity.impl == "linear"
        self.conv_out = nn.ModuleList(_ConvOut(channels, bool(recompute_out)) for _ in range(num_tasks))
        if gamma_learnable:
            self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        else:
            self.register_buffer("gamma", torch.tensor(float(gamma)), persistent=False)

    def task_modules(self, k: int) -> list[nn.Module]:
        """Modules used by task k alone."""
        mods: list[nn.Module] = [self.value[k], self.conv_out[k]]
        if isinstance(self.affinity.gconv, nn.ModuleList):
            mods.append(self.affinity.gconv[k])
        return mods

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """inputs: N maps (B, C_in, H, W) in task order -> N maps (B, C, 2H, 2W)."""
        if len(inputs) != self.num_tasks:
            raise ValueError(f"CTALBlock built for {self.num_tasks} tasks, got {len(inputs)} inputs")
        self.affinity.check_grid(inputs[0].shape[-2:])
        feats = [conv(x) for conv, x in zip(self.conv_in, inputs)]
        values = [conv(f) for conv, f in zip(self.value, feats)]
        diffused = self.affinity(torch.stack(feats, dim=1), values)
        gamma = self.gamma
        return [conv(gamma * z + (1 - gamma) * f) for z, f, conv in zip(diffused, feats, self.conv_out)]
