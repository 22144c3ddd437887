"""Blocks: shapes, hand-derived values of the gates, and the task branch's gradient scaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from densemtl.models.blocks import (
    CBAM,
    SE,
    BasicBlock,
    Bottleneck,
    ConvBNReLU,
    DenseHead,
    FusionNeck,
    branch_factors,
    get_branch_factor,
    set_branch_factors,
    task_branch,
)


@pytest.fixture(autouse=True)
def _reset_factors():
    set_branch_factors(None)
    yield
    set_branch_factors(None)


def test_conv_and_residual_shapes() -> None:
    x = torch.randn(2, 8, 9, 13)
    assert ConvBNReLU(8, 5)(x).shape == (2, 5, 9, 13)
    assert ConvBNReLU(8, 5, 3, stride=2)(x).shape == (2, 5, 5, 7)
    assert (ConvBNReLU(8, 5)(x) >= 0).all()
    assert BasicBlock(8, 8)(x).shape == (2, 8, 9, 13)
    assert BasicBlock(8, 16, stride=2)(x).shape == (2, 16, 5, 7)
    block = Bottleneck(8, 4, stride=2)
    assert block(x).shape == (2, 16, 5, 7) and block.out_channels == 16
    assert isinstance(BasicBlock(8, 8).shortcut, nn.Identity)


def test_basic_block_identity_shortcut_by_hand() -> None:
    """With the residual branch zeroed (last BN scale 0, shift 0) the block is ReLU(x)."""
    block = BasicBlock(4, 4).eval()
    nn.init.zeros_(block.conv2[1].weight)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(block(x), x.clamp_min(0))


def test_gates_by_hand() -> None:
    """Zero weights make every sigmoid 0.5: SE halves x, CBAM (two gates) quarters it."""
    x = torch.randn(2, 32, 6, 7)
    se = SE(32)
    cbam = CBAM(32).eval()  # BN with running stats (0, 1): BN(0) = 0
    for module in (se, cbam):
        for p in module.parameters():
            nn.init.zeros_(p)
    nn.init.ones_(cbam.spatial.bn.weight)  # BN scale 1, shift 0 still maps 0 -> 0
    torch.testing.assert_close(se(x), 0.5 * x)
    torch.testing.assert_close(cbam(x), 0.25 * x)
    assert CBAM(32).spatial.conv.kernel_size == (7, 7) and CBAM(32).spatial.conv.bias is None


def test_cbam_channel_gate_uses_avg_and_max() -> None:
    """Identity-like MLP (1 channel, weights 1, biases 0): gate = sigmoid(relu(mean) + relu(max))."""
    gate = CBAM(1, reduction=1).channel
    with torch.no_grad():
        for lin in (gate.mlp[0], gate.mlp[2]):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    expected = x * torch.sigmoid(torch.tensor(3.0 + 6.0))
    torch.testing.assert_close(gate(x), expected)


def test_neck_and_head_shapes() -> None:
    feats = [torch.randn(2, 24, 15, 20), torch.randn(2, 40, 8, 10), torch.randn(2, 112, 4, 5)]
    neck = FusionNeck([24, 40, 112], 32)
    rep = neck(feats)
    assert rep.shape == (2, 32, 15, 20)
    assert DenseHead(32, 7, 16)(rep).shape == (2, 7, 15, 20)
    with pytest.raises(ValueError, match="3 levels, got 2"):
        neck(feats[:2])
    with pytest.raises(ValueError, match="at least one"):
        FusionNeck([], 8)


def test_neck_single_level_is_lateral_then_fuse() -> None:
    neck = FusionNeck([3], 4).eval()
    x = torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(neck([x]), neck.fuse(neck.lateral[0](x)))


def test_task_branch_forward_is_identity_and_scales_backward() -> None:
    rep = torch.randn(2, 3, 4, 5, requires_grad=True)
    w_a, w_b = torch.randn_like(rep), torch.randn_like(rep)
    ya, yb = task_branch(rep, "a"), task_branch(rep, "b")
    assert torch.equal(ya, rep) and torch.equal(yb, rep)
    # default factor 1: the plain sum of both tasks' cotangents
    (g,) = torch.autograd.grad((ya * w_a).sum() + (yb * w_b).sum(), rep, retain_graph=True)
    torch.testing.assert_close(g, w_a + w_b)
    # scalar factors, read at backward time (set after the forward)
    with branch_factors({"a": 0.25, "b": -2.0}):
        assert get_branch_factor("a") == 0.25 and get_branch_factor("c") == 1.0
        (g,) = torch.autograd.grad((ya * w_a).sum() + (yb * w_b).sum(), rep, retain_graph=True)
    torch.testing.assert_close(g, 0.25 * w_a - 2.0 * w_b)
    assert get_branch_factor("a") == 1.0  # restored
    # a rep-shaped mask factor (GradDrop)
    mask = (torch.rand_like(rep) > 0.5).float()
    set_branch_factors({"a": mask})
    (g,) = torch.autograd.grad((ya * w_a).sum(), rep)
    torch.testing.assert_close(g, mask * w_a)


def test_task_branch_leaves_head_gradient_alone() -> None:
    """The factor scales what flows into rep, not the head's own parameter gradient."""
    rep = torch.randn(1, 2, 3, 3, requires_grad=True)
    head = nn.Conv2d(2, 1, 1)
    loss = head(task_branch(rep, "t")).square().sum()
    ref_w, ref_rep = torch.autograd.grad(loss, (head.weight, rep), retain_graph=True)
    with branch_factors({"t": 3.0}):
        w, r = torch.autograd.grad(loss, (head.weight, rep))
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(r, 3.0 * ref_rep)
