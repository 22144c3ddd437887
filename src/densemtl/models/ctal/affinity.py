"""The CTAL affinity core: Gram affinities, grouped-conv fusion and diffusion, in two exact evaluations.

Cross-Task Affinity Learning (Sinodinos & Armanfard, WACV 2025; ``spec/ctal.md`` §3-§4). For N tasks with
per-pixel L2-normalised features F̂_k (C x P, P = H·W) and value maps V_t (C x P):

- affinity A_k = F̂_kᵀ F̂_k (P x P, cosine similarities);
- fusion G̃ = grouped 3x3 conv (groups = P, one kernel W_p (N, 3, 3) and bias b_p per query pixel p) over the
  interleaved stack M (channel p·N + k holds row p of A_k viewed as an H x W map); G[p, q] = G̃[p, q];
- diffusion Z_t = V_t Gᵀ, i.e. Z_t[:, p] = Σ_q V_t[:, q] G[p, q].

:func:`affinity_diffusion_direct` evaluates this as published, materialising the N affinities, M and G:
O(N·P²) memory. It is the reference. :func:`affinity_diffusion_linear` evaluates the same function through
the identity of ``spec/ctal.md`` §4.2,

    Z_t[:, p] = b_p · Σ_q V_t[:, q] + Σ_k Σ_δ W_p[k, δ] · K_{t,k,δ} f̂_{k,p},   K_{t,k,δ} = V_t (S_δ F̂_k)ᵀ,

where S_δ shifts a map by the offset δ ∈ {-1, 0, 1}² with zero padding. It never forms a P x P tensor and its
custom autograd function recomputes K in the backward pass, so it stores nothing but its inputs: O(N·C·P)
memory in training as in inference. Both forms take an optional leading task axis on the conv parameters
(one grouped conv per task, Fig. 2 of the paper) instead of the released code's one shared conv.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OFFSETS",
    "affinity_diffusion",
    "affinity_diffusion_direct",
    "affinity_diffusion_linear",
    "affinity_maps",
    "affinity_matrix_direct",
    "choose_impl",
    "direct_memory_bytes",
    "normalise_pixels",
]

OFFSETS: tuple[tuple[int, int], ...] = tuple((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1))
"""The 3x3 offsets δ = (i, j) in kernel order: ``weight[..., i + 1, j + 1]`` is the tap of offset δ."""

IMPLS = ("direct", "linear", "auto")


def normalise_pixels(features: Tensor) -> Tensor:
    """Per-pixel L2 normalisation over channels: f / max(‖f‖₂, 1e-12); (B, N, C, H, W) -> same (dim 2)."""
    return F.normalize(features, p=2.0, dim=2, eps=1e-12)


def _check_shapes(fhat: Tensor, values: Tensor, weight: Tensor, bias: Tensor) -> tuple[bool, int]:
    """Validate shapes; return (per_task, T)."""
    if fhat.ndim != 5 or values.ndim != 5:
        raise ValueError(
            f"features and values must be (B, N, C, H, W), got {tuple(fhat.shape)} and {tuple(values.shape)}"
        )
    b, n, c, h, w = fhat.shape
    t = values.shape[1]
    if values.shape[0] != b or values.shape[2] != c or values.shape[-2:] != fhat.shape[-2:]:
        raise ValueError(f"values {tuple(values.shape)} do not match features {tuple(fhat.shape)}")
    p = h * w
    if weight.shape == (p, n, 3, 3) and bias.shape == (p,):
        return False, t
    if weight.shape == (t, p, n, 3, 3) and bias.shape == (t, p):
        return True, t
    raise ValueError(
        f"grouped-conv weight {tuple(weight.shape)} / bias {tuple(bias.shape)} fit neither the shared form "
        f"({p}, {n}, 3, 3) / ({p},) nor the per-task form ({t}, {p}, {n}, 3, 3) / ({t}, {p}) for a {h}x{w} grid"
    )


# ------------------------------------------------------------------------------------------------ direct form


def affinity_diffusion_direct(fhat: Tensor, values: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The published evaluation (``spec/ctal.md`` §3.2-§3.4), materialising every P x P tensor.

    Args:
        fhat: (B, N, C, H, W) per-pixel normalised features of the N tasks.
        values: (B, T, C, H, W) value maps V_t.
        weight: grouped-conv weight (P, N, 3, 3) shared by all T outputs, or (T, P, N, 3, 3) per task.
        bias: (P,) shared, or (T, P) per task.

    Returns:
        Z (B, T, C, H, W) with Z_t = V_t Gᵀ (G_t in the per-task form).
    """
    per_task, t = _check_shapes(fhat, values, weight, bias)
    b, n, c, h, w = fhat.shape
    p = h * w
    flat = fhat.reshape(b, n, c, p)
    affinity = flat.transpose(-1, -2) @ flat  # (B, N, P, P), A_k[p, q]
    # interleave: (B, N, P, H, W) -> (B, P, N, H, W) -> channel p·N + k
    stacked = affinity.reshape(b, n, p, h, w).transpose(1, 2).reshape(b, p * n, h, w)
    vals = values.reshape(b, t, c, p)
    if not per_task:
        g = _fuse_direct(stacked, weight, bias)
        return (vals @ g.transpose(-1, -2).unsqueeze(1)).reshape(b, t, c, h, w)
    out = [vals[:, task] @ _fuse_direct(stacked, weight[task], bias[task]).transpose(-1, -2) for task in range(t)]
    return torch.stack(out, dim=1).reshape(b, t, c, h, w)


def _fuse_direct(stacked: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Grouped conv of the interleaved stack (B, P·N, H, W) -> G (B, P, P), G[p, q]."""
    p = weight.shape[0]
    return F.conv2d(stacked, weight, bias, padding=1, groups=p).reshape(stacked.shape[0], p, p)


def affinity_maps(fhat: Tensor) -> Tensor:
    """The N task affinities A_k = F̂_kᵀ F̂_k with each query row viewed as a key map: (B, N, P, H, W)."""
    b, n, c, h, w = fhat.shape
    flat = fhat.reshape(b, n, c, h * w)
    return (flat.transpose(-1, -2) @ flat).reshape(b, n, h * w, h, w)


class _PerPixelTaps(torch.autograd.Function):
    """The grouped conv of §3.3 evaluated tap by tap: G̃[:, p] = b_p + Σ_{k,δ} W_p[k, δ] · S_δ Ã_k[:, p].

    Same function as ``F.conv2d(interleave(A), W, b, padding=1, groups=P)``; its backward pass is 9N
    multiply-adds and reductions over (B, P, H, W), where PyTorch's CPU grouped-conv weight gradient with
    P groups is orders of magnitude slower.
    """

    @staticmethod
    def forward(ctx: Any, aff: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        b, n, p, h, w = aff.shape
        padded = F.pad(aff, (1, 1, 1, 1))
        out = bias.reshape(1, p, 1, 1).expand(b, p, h, w).clone()
        for k in range(n):
            for di, dj in OFFSETS:
                tap = weight[:, k, di + 1, dj + 1].reshape(1, p, 1, 1)
                out.addcmul_(padded[:, k, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w], tap)
        ctx.save_for_backward(aff, weight)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        aff, weight = ctx.saved_tensors
        b, n, p, h, w = aff.shape
        padded = F.pad(aff, (1, 1, 1, 1))
        grad_padded = torch.zeros_like(padded)
        grad_weight = torch.empty_like(weight)
        for k in range(n):
            for di, dj in OFFSETS:
                window = (slice(None), k, slice(None), slice(1 + di, 1 + di + h), slice(1 + dj, 1 + dj + w))
                tap = weight[:, k, di + 1, dj + 1].reshape(1, p, 1, 1)
                grad_padded[window].addcmul_(grad, tap)
                grad_weight[:, k, di + 1, dj + 1] = (grad * padded[window]).sum(dim=(0, 2, 3))
        return grad_padded[..., 1 : 1 + h, 1 : 1 + w], grad_weight, grad.sum(dim=(0, 2, 3))


def affinity_matrix_direct(aff: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """G (B, P, P) of the direct form, G[p, q] (``spec/ctal.md`` §3.3), from :func:`affinity_maps`.

    Args:
        aff: (B, N, P, H, W) task affinities.
        weight: (P, N, 3, 3) grouped-conv weight; bias: (P,).
    """
    b, n, p, h, w = aff.shape
    if weight.shape != (p, n, 3, 3) or bias.shape != (p,):
        raise ValueError(f"weight {tuple(weight.shape)} / bias {tuple(bias.shape)} must be ({p}, {n}, 3, 3) / ({p},)")
    return _PerPixelTaps.apply(aff, weight, bias).reshape(b, p, p)


# ------------------------------------------------------------------------------------------------ linear form


def _shift(padded: Tensor, di: int, dj: int, h: int, w: int) -> Tensor:
    """S_δ: column q = the map at (h_q + di, w_q + dj), zero outside; (B, C, H + 2, W + 2) -> (B, C, H·W)."""
    return padded[:, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w].reshape(padded.shape[0], padded.shape[1], h * w)


def _tap_weights(weight: Tensor, k: int, di: int, dj: int, per_task: bool) -> Tensor:
    """W_p[k, δ] as a (1 or T, 1, P) tensor broadcasting against (B, T, C, P)."""
    if per_task:
        return weight[:, :, k, di + 1, dj + 1].unsqueeze(1)  # (T, 1, P)
    return weight[:, k, di + 1, dj + 1].reshape(1, 1, -1)  # (1, 1, P)


def _bias_rows(bias: Tensor, per_task: bool) -> Tensor:
    """b_p as (1 or T, 1, P)."""
    return bias.unsqueeze(1) if per_task else bias.reshape(1, 1, -1)


class _LinearAffinityDiffusion(torch.autograd.Function):
    """Z = (V Ŝᵀ) Ĝ + v̄ bᵀ, one (k, δ) step at a time; the backward pass recomputes each K_{k,δ}."""

    @staticmethod
    def forward(ctx: Any, fhat: Tensor, values: Tensor, weight: Tensor, bias: Tensor, per_task: bool) -> Tensor:
        b, n, c, h, w = fhat.shape
        t = values.shape[1]
        p = h * w
        vals = values.reshape(b, t * c, p)
        out = vals.sum(-1, keepdim=True).reshape(b, t, c, 1) * _bias_rows(bias, per_task)  # (B, T, C, P)
        padded = F.pad(fhat, (1, 1, 1, 1))
        for k in range(n):
            fk = fhat[:, k].reshape(b, 1, c, p)
            for di, dj in OFFSETS:
                shifted = _shift(padded[:, k], di, dj, h, w)  # (B, C, P)
                kmat = (vals @ shifted.transpose(1, 2)).reshape(b, t, c, c)  # K_{t,k,δ}
                out = out.addcmul_(kmat @ fk, _tap_weights(weight, k, di, dj, per_task))
        ctx.save_for_backward(fhat, values, weight, bias)
        ctx.per_task = per_task
        return out.reshape(b, t, c, h, w)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        fhat, values, weight, bias = ctx.saved_tensors
        per_task = ctx.per_task
        b, n, c, h, w = fhat.shape
        t = values.shape[1]
        p = h * w
        grad = grad_out.reshape(b, t, c, p)
        vals = values.reshape(b, t * c, p)
        padded = F.pad(fhat, (1, 1, 1, 1))
        grad_fhat_padded = torch.zeros_like(padded)
        grad_vals = torch.zeros_like(vals)
        grad_weight = torch.zeros_like(weight)
        # bias term: out[b, t, c, p] += b_p · Σ_q V[b, t, c, q]
        bias_rows = _bias_rows(bias, per_task)  # (1|T, 1, P)
        grad_vals += (grad * bias_rows).sum(-1, keepdim=True).reshape(b, t * c, 1)
        vbar = vals.sum(-1).reshape(b, t, c, 1)
        grad_bias_rows = (grad * vbar).sum(dim=(0, 2))  # (T, P)
        grad_bias = grad_bias_rows if per_task else grad_bias_rows.sum(0)
        for k in range(n):
            fk = fhat[:, k].reshape(b, c, p)
            grad_fk = grad_fhat_padded[:, k, :, 1 : 1 + h, 1 : 1 + w]  # view into the padded accumulator
            for di, dj in OFFSETS:
                shifted = _shift(padded[:, k], di, dj, h, w)  # (B, C, P)
                kmat = (vals @ shifted.transpose(1, 2)).reshape(b, t, c, c)  # recomputed K_{t,k,δ}
                taps = _tap_weights(weight, k, di, dj, per_task)  # (1|T, 1, P)
                # out_t += (K_t F̂_k) ⊙ w_t
                r = kmat.transpose(-1, -2) @ grad  # (B, T, C, P): K_tᵀ dZ_t
                tap_grad = (r * fk.unsqueeze(1)).sum(dim=(0, 2))  # (T, P)
                if per_task:
                    grad_weight[:, :, k, di + 1, dj + 1] += tap_grad
                else:
                    grad_weight[:, k, di + 1, dj + 1] += tap_grad.sum(0)
                grad_fk += (r * taps).sum(1).reshape(b, c, h, w)
                dk = ((grad * taps) @ fk.transpose(1, 2).unsqueeze(1)).reshape(b, t * c, c)  # dL/dK
                grad_vals += dk @ shifted  # K = V Sᵀ
                grad_shifted = dk.transpose(1, 2) @ vals  # (B, C, P)
                grad_fhat_padded[:, k, :, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w] += grad_shifted.reshape(b, c, h, w)
        grad_fhat = grad_fhat_padded[:, :, :, 1 : 1 + h, 1 : 1 + w]
        return grad_fhat, grad_vals.reshape(values.shape), grad_weight, grad_bias, None


def affinity_diffusion_linear(fhat: Tensor, values: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The exact linear-memory evaluation (``spec/ctal.md`` §4.2): same arguments and result as the direct form.

    Working memory is O(B·T·C·P) plus one (B, C, P) shifted slab; the backward pass recomputes the C x C
    matrices K_{t,k,δ} instead of storing them, so nothing of size P x P (or 9·N·C x P) is ever held.
    """
    per_task, _ = _check_shapes(fhat, values, weight, bias)
    return _LinearAffinityDiffusion.apply(fhat, values, weight, bias, per_task)


# ------------------------------------------------------------------------------------------------ selection


def direct_memory_bytes(num_tasks: int, grid: tuple[int, int], itemsize: int = 4) -> int:
    """Bytes per image of the direct form's P x P tensors: N affinities, the interleaved stack and G."""
    p = grid[0] * grid[1]
    return (2 * num_tasks + 1) * p * p * itemsize


def choose_impl(
    impl: str, num_tasks: int, channels: int, grid: tuple[int, int], memory_budget: int = 256 * 2**20
) -> str:
    """Resolve ``impl``: ``"auto"`` is ``"linear"`` when P > 9·N·C or the direct form needs more than
    ``memory_budget`` bytes per image (:func:`direct_memory_bytes`), else ``"direct"`` (``spec/ctal.md`` §4.3)."""
    if impl not in IMPLS:
        raise ValueError(f"CTAL impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    p = grid[0] * grid[1]
    if p > 9 * num_tasks * channels or direct_memory_bytes(num_tasks, grid) > memory_budget:
        return "linear"
    return "direct"


def affinity_diffusion(fhat: Tensor, values: Tensor, weight: Tensor, bias: Tensor, impl: str = "linear") -> Tensor:
    """Dispatch to :func:`affinity_diffusion_direct` (``impl="direct"``) or :func:`affinity_diffusion_linear`."""
    if impl == "direct":
        return affinity_diffusion_direct(fhat, values, weight, bias)
    if impl == "linear":
        return affinity_diffusion_linear(fhat, values, weight, bias)
    raise ValueError(f"impl must be 'direct' or 'linear' here (resolve 'auto' with choose_impl), got {impl!r}")
