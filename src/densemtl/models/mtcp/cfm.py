"""MT-CP Coherence Fusion Module (CFM), one per task, and its cosine coherence term (``spec/mtcp.md`` §3.5).

For task t with features X_t and the other tasks' X_a (same order as the model's tasks, t left out):

1. S = BN(CBAM(X_t)), then ReLU (the paper; ``main_relu=False`` is the released code, §10 #13);
2. g_i = sigmoid(Conv1x1(X_ai)); A = [X_a1 · g_1; ...; X_a(T-1) · g_(T-1)];
3. F = ReLU(Conv1x1(A)); Q = ReLU(BN(CBAM_q(F))), K = ReLU(BN(CBAM_k(F)));
4. O = softmax(Q̄ K̄ᵀ) S̄ over pixels, no 1/sqrt(d) scale (:func:`coherence_attention`);
5. Y_t = BN(CBAM(O)), no residual.

The coherence term (reconstructed; absent in the released code) is mean over batch and pixels of
1 - cos(S, Π(F)) along channels, Π = Conv1x1 (bias) from the auxiliary width to the task width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.models.blocks import CBAM
from densemtl.models.mtcp.attention import ATTENTION_MODES, coherence_attention

__all__ = ["CoherenceFusion"]


class CoherenceFusion(nn.Module):
    """CFM of one task: X_t (B, C, h, w) and T-1 auxiliaries (B, C, h, w) -> Y_t (B, C, h, w), coherence term.

    Args:
        width: C (256 in the paper).
        num_aux: T - 1 auxiliary tasks; the query/key width is (T - 1)·C.
        main_relu: ReLU after the main branch's BN (paper: True; released code: False).
        coherence: build Π and return the cosine coherence term (paper: True; released code: False).
        out_spatial_kernel: spatial-gate kernel of the output CBAM (7; ``1`` reads the paper's "1x1 CBAM").
        attention: ``"sdpa"``, ``"blocked"`` or ``"naive"`` (see :mod:`~densemtl.models.mtcp.attention`).
        attention_block: query rows per block for ``"blocked"``.
    """

    def __init__(
        self,
        width: int = 256,
        num_aux: int = 2,
        main_relu: bool = True,
        coherence: bool = True,
        out_spatial_kernel: int = 7,
        attention: str = "sdpa",
        attention_block: int = 1024,
    ) -> None:
        super().__init__()
        if num_aux < 1:
            raise ValueError(f"the CFM needs at least one auxiliary task, got num_aux={num_aux}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        aux_width = num_aux * width
        self.main = nn.Sequential(CBAM(width), nn.BatchNorm2d(width))
        self.main_relu = main_relu
        self.gates = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(num_aux))
        self.fuse = nn.Conv2d(aux_width, aux_width, 1)
        self.query = nn.Sequential(CBAM(aux_width), nn.BatchNorm2d(aux_width), nn.ReLU(inplace=True))
        self.key = nn.Sequential(CBAM(aux_width), nn.BatchNorm2d(aux_width), nn.ReLU(inplace=True))
        self.out = nn.Sequential(CBAM(width, spatial_kernel=out_spatial_kernel), nn.BatchNorm2d(width))
        self.project = nn.Conv2d(aux_width, width, 1) if coherence else None
        self.attention = attention
        self.attention_block = attention_block

    def forward(self, x: Tensor, aux: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Returns Y_t (B, C, h, w) and the coherence term (0-d) or None when it is not built."""
        if len(aux) != len(self.gates):
            raise ValueError(f"CFM built for {len(self.gates)} auxiliary features, got {len(aux)}")
        s = self.main(x)
        if self.main_relu:
            s = F.relu(s)
        gated = torch.cat([a * torch.sigmoid(gate(a)) for gate, a in zip(self.gates, aux)], dim=1)
        fused = F.relu(self.fuse(gated))
        b, c, h, w = s.shape
        q = self.query(fused).flatten(2).transpose(1, 2)  # (B, hw, (T-1)C)
        k = self.key(fused).flatten(2).transpose(1, 2)
        v = s.flatten(2).transpose(1, 2)  # (B, hw, C)
        o = coherence_attention(q, k, v, self.attention, self.attention_block)
        y = self.out(o.transpose(1, 2).reshape(b, c, h, w).to(s.dtype))
        coherence = None
        if self.project is not None:
            coherence = (1.0 - F.cosine_similarity(s, self.project(fused), dim=1)).mean()
        return y, coherence
