"""The CFM's pixel-to-pixel attention O = softmax(Q K^T) V without the hw x hw matrix (``spec/mtcp.md`` §3.5).

Q and K are (B, N, D) with N = h·w pixels and D = 512 (twice the value width), V is (B, N, Dv). The logits
are *not* scaled by 1/sqrt(D). At 480x640 input N = 19,200 and the affinity alone is 1.47 GB per sample in
fp32, so three exact paths are offered:

- ``"sdpa"``: ``scaled_dot_product_attention(scale=1.0)`` restricted to one fused kernel with ``sdpa_kernel``:
  on CPU the flash kernel, which requires equal q/k/v widths, so V is zero-padded to D and the padding is
  cropped from the output (exact: padded value columns give zero output columns); on CUDA the
  memory-efficient kernel. Restricting the call to that one kernel is the check that it ran: when the
  kernel refuses the inputs, torch raises instead of falling back to the quadratic math kernel, and this
  module re-raises with a message naming the alternatives.
- ``"blocked"``: an exact query-blocked softmax with its own backward (flash-attention style: the forward
  keeps only the per-row log-sum-exp, the backward recomputes each block), peak extra memory block x N.
- ``"naive"``: the explicit softmax(Q K^T) V, for tests and small maps.

fp16 is refused (the unscaled 512-d logits overflow it); inside an fp16 autocast region the attention runs in
fp32. fp32, fp64 (tests) and bf16 are supported.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["ATTENTION_MODES", "coherence_attention", "sdpa_backend"]

ATTENTION_MODES = ("sdpa", "blocked", "naive")


def sdpa_backend(device: torch.device) -> SDPBackend:
    """The fused kernel the ``"sdpa"`` path forces on ``device``: flash on CPU, memory-efficient on CUDA."""
    return SDPBackend.FLASH_ATTENTION if device.type == "cpu" else SDPBackend.EFFICIENT_ATTENTION


def _naive(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    backend = sdpa_backend(q.device)
    width = v.shape[-1]
    pad = backend is SDPBackend.FLASH_ATTENTION and width != q.shape[-1]
    if pad:
        if width > q.shape[-1]:
            raise ValueError(f"value width {width} exceeds query width {q.shape[-1]}; cannot pad for flash attention")
        v = F.pad(v, (0, q.shape[-1] - width))
    q, k, v = (t.contiguous()[:, None] for t in (q, k, v))  # (B, 1, N, D): one head, unit last stride
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0]
        except RuntimeError as err:
            reasons = "; ".join(str(w.message) for w in caught) or str(err)
            raise RuntimeError(
                f"CFM attention='sdpa': the {backend.name} kernel refused q {tuple(q.shape)} {q.dtype}, "
                f"v {tuple(v.shape)} on {q.device} ({reasons}); refusing to fall back to the quadratic math "
                "kernel. Use attention='blocked' (exact, block x hw memory) or attention='naive' (hw x hw memory)."
            ) from err
    return out[..., :width] if pad else out


class _BlockedAttention(torch.autograd.Function):
    """Exact softmax(Q K^T) V computed in query blocks; saves only the row log-sum-exp for the backward."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, block: int) -> Tensor:
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32 if q.dtype == torch.bfloat16 else q.dtype, device=q.device)
        kt = k.transpose(-1, -2)
        for start in range(0, q.shape[1], block):
            rows = slice(start, start + block)
            logits = (q[:, rows] @ kt).to(lse.dtype)
            lse[:, rows] = torch.logsumexp(logits, dim=-1)
            out[:, rows] = (torch.exp(logits - lse[:, rows, None]).to(v.dtype)) @ v
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, out, lse = ctx.saved_tensors
        acc = lse.dtype
        grad_out = grad_out.contiguous()
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros(k.shape, dtype=acc, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=acc, device=v.device)
        # D_i = sum_j P_ij (dO_i . V_j) = dO_i . O_i
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1)
        kt = k.transpose(-1, -2)
        for start in range(0, q.shape[1], ctx.block):
            rows = slice(start, start + ctx.block)
            prob = torch.exp((q[:, rows] @ kt).to(acc) - lse[:, rows, None])  # (B, blk, N)
            g = grad_out[:, rows].to(acc)
            grad_v += prob.transpose(-1, -2) @ g
            grad_logits = prob * (g @ v.to(acc).transpose(-1, -2) - delta[:, rows, None])
            grad_q[:, rows] = (grad_logits @ k.to(acc)).to(q.dtype)
            grad_k += grad_logits.transpose(-1, -2) @ q[:, rows].to(acc)
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None


def coherence_attention(q: Tensor, k: Tensor, v: Tensor, mode: str = "sdpa", block: int = 1024) -> Tensor:
    """O = softmax(Q K^T) V with no 1/sqrt(D) scale, row-wise over pixels.

    Args:
        q: (B, N, D) queries (N = h·w pixels).
        k: (B, N, D) keys.
        v: (B, N, Dv) values, Dv <= D for the CPU flash kernel.
        mode: ``"sdpa"`` (forced fused kernel), ``"blocked"`` (exact query blocks) or ``"naive"``.
        block: query rows per block for ``"blocked"``.

    Returns:
        (B, N, Dv), in the inputs' dtype (fp32 when they were fp16 under autocast).

    Raises:
        ValueError: unknown mode, mismatched shapes, or fp16 inputs outside autocast.
        RuntimeError: ``"sdpa"`` and the forced kernel refuses the inputs.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"CFM attention must be one of {ATTENTION_MODES}, got {mode!r}")
    if q.ndim != 3 or k.shape != q.shape or v.ndim != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"expected q, k (B, N, D) and v (B, N, Dv), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    autocast = torch.is_autocast_enabled(q.device.type)
    if autocast or q.dtype == torch.float16:
        if not autocast:
            raise ValueError(
                "CFM attention refuses fp16 inputs: its unscaled 512-d logits overflow fp16; use fp32 or bf16 "
                "(under fp16 autocast it computes in fp32)"
            )
        if torch.get_autocast_dtype(q.device.type) == torch.float16 or q.dtype == torch.float16:
            q, k, v = q.float(), k.float(), v.float()
        common = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        q, k, v = q.to(common), k.to(common), v.to(common)
        with torch.autocast(q.device.type, enabled=False):
            return coherence_attention(q, k, v, mode, block)
    if mode == "naive":
        return _naive(q, k, v)
    if mode == "sdpa":
        return _sdpa(q, k, v)
    return _BlockedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), block)
