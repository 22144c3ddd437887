"""MT-CP task decoder: a hierarchical Swin (v1) without patch embedding (``spec/mtcp.md`` §3.3).

R (B, C, h, w) is read as h·w tokens of width C (no patch embedding, no absolute position embedding, no
input dropout) and goes through three stages of widths C, 2C, 4C with depths (1, 2, 1), heads (2, 2, 2) and
window 7; each stage's output is LN_s(x) taken before the patch merging.

Which timm parts are used and why:

- ``timm.models.swin_transformer.WindowAttention`` (qkv with bias, q scaled by head_dim^-1/2, relative
  position bias table of (2·7 - 1)^2 x heads, output projection), ``timm.layers.Mlp`` (Linear C -> 4C, GELU,
  Linear 4C -> C) and ``PatchMerging`` (pad odd sizes, concatenate 2x2 neighbours, LN(4C), Linear 4C -> 2C
  without bias) are exactly the layers of §3.3, so they are used as they are.
- ``SwinTransformerBlock`` is *not* used: for maps that are not multiples of the window it shifts before
  padding and (with ``dynamic_mask``) derives the shift mask from the padded grid, and it shrinks the window
  to the map when the map is smaller. The released decoder follows the Swin object-detection code: pad the
  normalised map bottom/right to a multiple of 7, then shift, with the shifted-window mask of the padded
  grid, and never shrink the window. :class:`SwinBlock` does that, with timm's attention and MLP inside, and
  equals timm's block wherever both are defined the same way (maps that are multiples of 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging, WindowAttention
from torch import Tensor, nn

__all__ = ["SwinBlock", "SwinTaskDecoder", "shifted_window_mask"]


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device,
                        dtype: torch.dtype) -> Tensor:
    """Additive mask (num_windows, window², window²) of the shifted-window attention on a (height, width) grid.

    Tokens of the same window attend to each other only when they came from the same region before the
    cyclic shift; other pairs get -100 (as in Swin). ``height`` and ``width`` must be multiples of ``window``.
    """
    regions = torch.zeros(height, width, device=device)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            regions[h0:h1, w0:w1] = label
            label += 1
    windows = regions.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, -100.0)


class SwinBlock(nn.Module):
    """Pre-norm Swin block with bottom/right padding to window multiples: x += (S)W-MSA(LN x); x += MLP(LN x).

    Args:
        dim: token width C.
        num_heads: attention heads.
        window: window size (square).
        shift: cyclic shift (0 for W-MSA, window // 2 for SW-MSA).
        mlp_ratio: MLP hidden width / C.

    Shapes: (B, H, W, C) -> (B, H, W, C) for any H, W >= 1.
    """

    def __init__(self, dim: int, num_heads: int, window: int = 7, shift: int = 0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def _attention(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (-h) % ws, (-w) % ws
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, ws, self.shift, x.device, x.dtype)
        windows = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=mask)
        x = windows.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SwinTaskDecoder(nn.Module):
    """One task's Swin decoder: R (B, C, h, w) -> [F0 (B, C, h, w), F1 (B, 2C, h/2, w/2), F2 (B, 4C, h/4, w/4)].

    Sizes of F1 and F2 round up for odd sizes (patch merging pads). Initialisation: PyTorch defaults and timm's
    trunc-normal(0.02) relative-position tables (the released code never calls Swin's weight init).

    Args:
        channels: C, the width of R and of the first stage.
        depths: blocks per stage; odd-indexed blocks of a stage use shifted windows.
        num_heads: attention heads per stage.
        window: window size.
        mlp_ratio: MLP hidden width / stage width.
    """

    def __init__(
        self,
        channels: int = 256,
        depths: Sequence[int] = (1, 2, 1),
        num_heads: Sequence[int] = (2, 2, 2),
        window: int = 7,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must be non-empty, same length")
        self.widths = tuple(channels * 2**s for s in range(len(depths)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
                            for i in range(depth)))
            for dim, depth, heads in zip(self.widths, depths, num_heads)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for dim in self.widths)
        self.merges = nn.ModuleList(PatchMerging(dim, 2 * dim) for dim in self.widths[:-1])

    def forward(self, rep: Tensor) -> list[Tensor]:
        x = rep.permute(0, 2, 3, 1)  # (B, h, w, C) tokens
        feats = []
        for s, (stage, norm) in enumerate(zip(self.stages, self.norms)):
            x = stage(x)
            feats.append(norm(x).permute(0, 3, 1, 2).contiguous())
            if s < len(self.merges):
                x = self.merges[s](x)
        return feats
