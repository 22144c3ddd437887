"""CTAL affinity core (spec/ctal.md §3, §4.6, §12): the direct form against a naive loop, the linear form
against the direct form in values and gradients, and the module's switches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from densemtl.models.ctal.affinity import (
    affinity_diffusion_direct,
    affinity_diffusion_linear,
    choose_impl,
    normalise_pixels,
)
from densemtl.models.ctal.module import CrossTaskAffinity, CTALBlock


def _random_case(n, c, h, w, per_task, dtype, seed=0, batch=2, zero_pixels=True):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, n, c, h, w, generator=g, dtype=dtype)
    if zero_pixels and h * w > 1:  # some all-zero feature vectors
        feats[0, 0, :, 0, 0] = 0
        feats[1, n - 1, :, h - 1, w - 1] = 0
    values = torch.randn(batch, n, c, h, w, generator=g, dtype=dtype)
    p = h * w
    wshape = (n, p, n, 3, 3) if per_task else (p, n, 3, 3)
    weight = torch.randn(*wshape, generator=g, dtype=dtype)
    bias = torch.randn(*((n, p) if per_task else (p,)), generator=g, dtype=dtype)
    return feats, values, weight, bias


def _naive(fhat: np.ndarray, values: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Element-wise loops of spec §3.2-§3.4 for one image: fhat (N, C, H, W), shared weight (P, N, 3, 3)."""
    n, c, h, w = fhat.shape
    p = h * w
    flat = fhat.reshape(n, c, p)
    aff = np.einsum("kcp,kcq->kpq", flat, flat)  # A_k[p, q]
    g = np.zeros((p, p))
    for qp in range(p):
        for hq, wq in itertools.product(range(h), range(w)):
            total = bias[qp]
            for k, (i, j) in itertools.product(range(n), itertools.product((-1, 0, 1), repeat=2)):
                hh, ww = hq + i, wq + j
                if 0 <= hh < h and 0 <= ww < w:
                    total += weight[qp, k, i + 1, j + 1] * aff[k, qp, hh * w + ww]
            g[qp, hq * w + wq] = total
    z = np.einsum("tcq,pq->tcp", values.reshape(n, c, p), g)
    return z.reshape(n, c, h, w)


def test_direct_matches_naive_loop():
    feats, values, weight, bias = _random_case(2, 3, 3, 4, per_task=False, dtype=torch.float64)
    fhat = normalise_pixels(feats)
    z = affinity_diffusion_direct(fhat, values, weight, bias)
    for b in range(2):
        want = _naive(fhat[b].numpy(), values[b].numpy(), weight.numpy(), bias.numpy())
        np.testing.assert_allclose(z[b].numpy(), want, rtol=1e-10, atol=1e-12)


def test_per_task_direct_matches_naive_loop_per_task():
    feats, values, weight, bias = _random_case(3, 2, 2, 3, per_task=True, dtype=torch.float64)
    fhat = normalise_pixels(feats)
    z = affinity_diffusion_direct(fhat, values, weight, bias)
    for t in range(3):
        want = _naive(fhat[0].numpy(), values[0].numpy(), weight[t].numpy(), bias[t].numpy())
        np.testing.assert_allclose(z[0, t].numpy(), want[t], rtol=1e-10, atol=1e-12)


def test_identity_kernels_give_the_sum_of_affinities():
    """W_p[k, centre] = 1, all else 0, b = 0: G = Σ_k A_k, so Z_t = V_t (Σ_k A_k)ᵀ (spec §12)."""
    n, c, h, w = 3, 4, 3, 5
    feats, values, _, _ = _random_case(n, c, h, w, per_task=False, dtype=torch.float64)
    p = h * w
    weight = torch.zeros(p, n, 3, 3, dtype=torch.float64)
    weight[:, :, 1, 1] = 1
    fhat = normalise_pixels(feats)
    flat = fhat.reshape(2, n, c, p)
    cos = torch.nn.functional.cosine_similarity(flat[:, :, :, :, None], flat[:, :, :, None, :], dim=2, eps=1e-12)
    g = cos.sum(1)  # (B, P, P), symmetric
    want = values.reshape(2, n, c, p) @ g.transpose(-1, -2).unsqueeze(1)
    got = affinity_diffusion_direct(fhat, values, weight, torch.zeros(p, dtype=torch.float64))
    torch.testing.assert_close(got.reshape(2, n, c, p), want, rtol=1e-10, atol=1e-10)


def test_interleaving_routes_task_k_of_query_p_to_tap_k():
    """Only W_p[k0, centre] of one query pixel p0 nonzero: G[p0, q] = A_k0[p0, q], other rows are 0."""
    n, c, h, w = 3, 4, 2, 3
    feats, values, _, _ = _random_case(n, c, h, w, per_task=False, dtype=torch.float64)
    p = h * w
    fhat = normalise_pixels(feats)
    p0, k0 = 4, 2
    weight = torch.zeros(p, n, 3, 3, dtype=torch.float64)
    weight[p0, k0, 1, 1] = 1
    z = affinity_diffusion_direct(fhat, values, weight, torch.zeros(p, dtype=torch.float64)).reshape(2, n, c, p)
    f = fhat.reshape(2, n, c, p)[:, k0]
    row = (f[:, :, p0 : p0 + 1] * f).sum(1)  # cosine of p0 with every q, (B, P)
    want = (values.reshape(2, n, c, p) * row[:, None, None, :]).sum(-1)  # Σ_q V[:, q] A[p0, q]
    torch.testing.assert_close(z[..., p0], want, rtol=1e-10, atol=1e-12)
    assert torch.all(z[..., [q for q in range(p) if q != p0]] == 0)


GRIDS = [(1, 1), (1, 7), (5, 1), (3, 4), (6, 8)]


@pytest.mark.parametrize("per_task", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("grid", GRIDS)
def test_linear_equals_direct_float64(n, grid, per_task):
    for c in (1, 4, 16):
        feats, values, weight, bias = _random_case(n, c, *grid, per_task=per_task, dtype=torch.float64, seed=n + c)
        leaves = [x.clone().requires_grad_() for x in (feats, values, weight, bias)]
        outs, grads = [], []
        for fn in (affinity_diffusion_direct, affinity_diffusion_linear):
            xs = [x.detach().clone().requires_grad_() for x in leaves]
            z = fn(normalise_pixels(xs[0]), *xs[1:])
            proj = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=z.dtype)
            (z * proj).sum().backward()
            outs.append(z.detach())
            grads.append([x.grad for x in xs])
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
        for name, gd, gl in zip(("features", "values", "weight", "bias"), *grads):
            torch.testing.assert_close(gl, gd, rtol=1e-9, atol=1e-10, msg=f"grad {name} n={n} c={c} {grid}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("per_task", [False, True])
@pytest.mark.parametrize("n,grid", [(2, (6, 8)), (3, (5, 7)), (5, (4, 3))])
def test_block_linear_equals_direct_float32(n, grid, per_task):
    """Whole CTAL block in float32: outputs and the gradient of every parameter and input, relative 1e-4."""
    blocks = {}
    for impl in ("direct", "linear"):
        torch.manual_seed(0)
        blocks[impl] = CTALBlock(n, 6, grid, channels=16, gconv="per_task" if per_task else "shared", impl=impl,
                                 gamma=0.3, gamma_learnable=True).eval()  # eval: BN would null conv_out's bias grad
    inputs = [torch.randn(2, 6, *grid, generator=torch.Generator().manual_seed(k)) for k in range(n)]
    results = {}
    for impl, block in blocks.items():
        xs = [x.clone().requires_grad_() for x in inputs]
        outs = block(xs)
        loss = sum((o * torch.cos(torch.arange(o.numel(), dtype=o.dtype).reshape(o.shape))).sum() for o in outs)
        loss.backward()
        results[impl] = (outs, [x.grad for x in xs], {k: p.grad for k, p in block.named_parameters()})
    (od, xd, pd), (ol, xl, pl) = results["direct"], results["linear"]
    for a, b in zip(ol, od):
        assert _rel(a.detach(), b.detach()) < 1e-4
    for a, b in zip(xl, xd):
        assert _rel(a, b) < 1e-4
    assert set(pd) == set(pl)
    for name in pd:
        assert _rel(pl[name], pd[name]) < 1e-4, name


def test_auto_picks_direct_for_pascal_and_linear_for_nyuv2():
    assert choose_impl("auto", 5, 128, (16, 16)) == "direct"  # P = 256 < 9NC = 5760
    assert choose_impl("auto", 3, 128, (72, 96)) == "linear"  # P = 6912 > 9NC = 3456
    assert choose_impl("direct", 3, 128, (72, 96)) == "direct"
    with pytest.raises(ValueError, match="impl"):
        choose_impl("fast", 3, 128, (72, 96))


def test_grid_mismatch_names_expected_and_actual_grid():
    core = CrossTaskAffinity(2, 4, (3, 4), grid_setting="model.arch_args.input_size")
    with pytest.raises(ValueError, match=r"3x4 feature grid.*got a 4x4 grid.*model.arch_args.input_size"):
        core(torch.randn(1, 2, 4, 4, 4), [torch.randn(1, 4, 4, 4)] * 2)


@pytest.mark.parametrize(
    "n,p,cin,bn,want,want_gconv",
    [
        (3, (72, 96), 270, False, 1_380_864, 193_536),
        (3, (72, 96), 256, False, 1_375_488, 193_536),
        (2, (32, 64), 270, False, 830_464, 38_912),
        (2, (32, 64), 256, False, 826_880, 38_912),
        (5, (16, 16), 256, True, 1_982_976, 11_776),
    ],
)
def test_block_parameter_counts_match_spec(n, p, cin, bn, want, want_gconv):
    """spec/ctal.md §9 (and ×N for the per-task grouped conv)."""
    block = CTALBlock(n, cin, p, conv_in_bn=bn, impl="linear")
    assert sum(x.numel() for x in block.parameters()) == want
    assert sum(x.numel() for x in block.affinity.parameters()) == want_gconv
    per_task = CTALBlock(n, cin, p, conv_in_bn=bn, gconv="per_task", impl="linear")
    assert sum(x.numel() for x in per_task.affinity.parameters()) == n * want_gconv


def test_block_shapes_upsample_and_gamma():
    block = CTALBlock(3, 10, (4, 6), channels=8)
    outs = block([torch.randn(2, 10, 4, 6) for _ in range(3)])
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 12)] * 3
    assert not any(name == "gamma" for name, _ in block.named_parameters())
    assert float(block.gamma) == pytest.approx(0.05)
    learn = CTALBlock(3, 10, (4, 6), channels=8, gamma_learnable=True)
    assert float(dict(learn.named_parameters())["gamma"].detach()) == pytest.approx(0.05)


def test_gamma_zero_reduces_to_conv_out_of_conv_in():
    """γ = 0: the block is conv_out[k](conv_in[k](X_k)), the affinity has no effect."""
    block = CTALBlock(2, 5, (3, 3), channels=4, gamma=0.0).eval()
    xs = [torch.randn(1, 5, 3, 3) for _ in range(2)]
    outs = block(xs)
    for k in range(2):
        torch.testing.assert_close(outs[k], block.conv_out[k](block.conv_in[k](xs[k])))


@pytest.mark.parametrize("n,grid", [(1, (1, 1)), (2, (1, 7)), (3, (5, 1)), (3, (4, 6))])
def test_tap_by_tap_grouped_conv_equals_conv2d(n, grid):
    """The module's tap-by-tap fusion equals F.conv2d(groups=P) on the interleaved stack, values and grads."""
    from densemtl.models.ctal.affinity import affinity_maps, affinity_matrix_direct

    h, w = grid
    p = h * w
    feats, _, weight, bias = _random_case(n, 3, h, w, per_task=False, dtype=torch.float64)
    results = []
    for use_taps in (True, False):
        f, wt, bs = (x.clone().requires_grad_() for x in (feats, weight, bias))
        aff = affinity_maps(normalise_pixels(f))
        if use_taps:
            g = affinity_matrix_direct(aff, wt, bs)
        else:
            stacked = aff.transpose(1, 2).reshape(2, p * n, h, w)
            g = torch.nn.functional.conv2d(stacked, wt, bs, padding=1, groups=p).reshape(2, p, p)
        (g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).reshape(g.shape)).sum().backward()
        results.append((g.detach(), f.grad, wt.grad, bs.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_recompute_out_gives_the_same_outputs_gradients_and_running_stats():
    """recompute_out=True (activation checkpointing of conv_out) is exact: outputs, every gradient and BN's
    running statistics (updated once, not twice) equal the plain block's after two training steps; eval equal too."""
    torch.manual_seed(0)
    plain = CTALBlock(3, 6, (4, 5), channels=8, impl="linear").double()
    lean = CTALBlock(3, 6, (4, 5), channels=8, impl="linear", recompute_out=True).double()
    lean.load_state_dict(plain.state_dict())
    for _step in range(2):
        xs = [torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        xs_lean = [x.detach().clone().requires_grad_(True) for x in xs]
        ups = [torch.randn(2, 8, 8, 10, dtype=torch.float64) for _ in range(3)]
        outs, outs_lean = plain(xs), lean(xs_lean)
        for a, b in zip(outs, outs_lean):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        torch.autograd.backward(outs, ups)
        torch.autograd.backward(outs_lean, ups)
        for x, y in zip(xs, xs_lean):
            torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)
        for (name, p), q in zip(plain.named_parameters(), lean.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12, msg=name)
    for (name, a), b in zip(plain.named_buffers(), lean.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    assert int(lean.conv_out[0][1].num_batches_tracked) == 2
    plain.eval(), lean.eval()
    xs = [torch.randn(1, 6, 4, 5, dtype=torch.float64) for _ in range(3)]
    for a, b in zip(plain(xs), lean(xs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_recompute_out_defaults_to_the_linear_form_only():
    linear = CTALBlock(2, 4, (3, 4), channels=4, impl="linear")
    direct = CTALBlock(2, 4, (3, 4), channels=4, impl="direct")
    assert all(c.recompute for c in linear.conv_out) and not any(c.recompute for c in direct.conv_out)
    forced_off = CTALBlock(2, 4, (3, 4), channels=4, impl="linear", recompute_out=False)
    assert not any(c.recompute for c in forced_off.conv_out)
