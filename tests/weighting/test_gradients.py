"""The engine's gradient step (``weighting/gradients.py``): rows equal ``torch.autograd.grad`` of each task loss
taken separately (rep and param space, fp32 and bf16 autocast), the update written into the parameters, gradient
accumulation and clipping through Lightning, the separate-loss guard and the partition / space errors."""

from __future__ import annotations

import pytest
import torch
from engine_steps import synthetic_batch, synthetic_sample
from torch import nn
from torch.utils.data import DataLoader, Dataset

from densemtl.engine import MultiTaskModule
from densemtl.models.base import MultiTaskModel, MultiTaskOutput
from densemtl.weighting import StepContext, TrainInfo
from densemtl.weighting.base import task_objective_terms
from densemtl.weighting.gradients import GradientSpace
from trainers import TINY_HPS, quiet_trainer, tiny_module

TASKS = ["semseg", "depth", "normals"]


def _sample(i: int) -> dict:
    return synthetic_sample(i, seed=100)


def _batch(indices) -> dict:
    return synthetic_batch(indices, seed=100)


def _module(
    weighting: str = "mgda", args: dict | None = None, arch: str = "hps", arch_args: dict | None = None, **kw
) -> MultiTaskModule:
    module = tiny_module(
        tasks=TASKS,
        arch=arch,
        arch_args=arch_args or TINY_HPS["arch_args"],
        weighting=weighting,
        weighting_args=args,
        **kw,
    )
    module.log = module.log_dict = lambda *a, **k: None
    module.weighting.on_train_start(TrainInfo(tasks=tuple(TASKS), seed=0))
    module.keep_gradients = True
    module.train()
    for m in module.modules():  # batch statistics of 2 samples at 1/32 scale are ill-conditioned (and amplify
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # bf16 rounding): normalise with running statistics
            m.eval()
    return module


def _independent(module: MultiTaskModule, batch: dict, space: str):
    """Per-task rows by separate autograd.grad calls on a fresh forward, and each task's head gradients."""
    out = module.model(batch["image"])
    losses = module.criterion(out, batch)
    terms = task_objective_terms(losses.main, losses.aux, module.tasks)
    shared = [p for p in module.model.shared_parameters() if p.requires_grad]
    rows, heads, jac = [], {}, []
    for t in module.tasks:
        if space == "rep":
            (g,) = torch.autograd.grad(terms[t], out.rep, retain_graph=True)
            jac.append(g.float())
            rows.append(g.float().sum(0).flatten())
        else:
            grads = torch.autograd.grad(terms[t], shared, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat([(torch.zeros_like(p) if g is None else g).flatten().float() for p, g in zip(shared, grads)])
            )
        own = list(module.model.task_parameters(t))
        grads = torch.autograd.grad(terms[t], own, retain_graph=True, allow_unused=True)
        heads[t] = [torch.zeros_like(p) if g is None else g for p, g in zip(own, grads)]
    return torch.stack(rows), heads, jac, out.rep, shared


def _spaced(weighting: str, space: str, args: dict | None = None) -> tuple[MultiTaskModule, str]:
    """``rep``/``param``: heads on detached copies of rep (HPS has independent branches; param rows by one
    batched VJP through the encoder); ``*_graph``: rows by autograd.grad through the shared graph (the path
    of models with cross-task modules)."""
    base = space.split("_")[0]
    module = _module(weighting, {"space": base, **(args or {})})
    if space.endswith("_graph"):
        module.model.independent_branches = False
    return module, base


@pytest.mark.parametrize("space", ["rep", "rep_graph", "param", "param_graph"])
@pytest.mark.parametrize("bf16", [False, True])
def test_rows_equal_autograd_of_each_task_loss(space, bf16):
    module, space = _spaced("mgda", space)
    batch = _batch([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        module.training_step(batch, 0)
        expected, _, _, _, _ = _independent(module, batch, space)
    rows = module.last_gradients.rows
    assert rows.dtype == torch.float32 and module.last_gradients.gram.dtype == torch.float32
    assert rows.shape == expected.shape
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(module.last_gradients.gram, expected @ expected.T, rtol=1e-5, atol=1e-7)
    if bf16:  # bf16 rows point where the fp32 rows do (bf16 keeps ~3 significant digits)
        ref, _, _, _, _ = _independent(module, batch, space)
        assert float(torch.nn.functional.cosine_similarity(rows, ref, dim=1).min()) > 0.95


@pytest.mark.parametrize("space", ["param", "param_graph", "rep", "rep_graph"])
@pytest.mark.parametrize("weighting", ["mgda", "nash_mtl"])
def test_update_is_written_into_the_parameters(weighting, space):
    module, space = _spaced(weighting, space, {"max_norm": 0.0} if weighting == "nash_mtl" else {})
    batch = _batch([2, 3])
    module.zero_grad()
    module.training_step(batch, 0).backward()
    coef = module.last_gradients.coefficients
    rows, heads, jac, rep, shared = _independent(module, batch, space)
    if space == "param":
        expected = coef @ rows
    else:  # the encoder receives Σ c_t ∂L_t/∂rep
        cot = sum(c * j for c, j in zip(coef, jac))
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(rep, shared, cot, retain_graph=True)])
    got = torch.cat([p.grad.flatten() for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    weighted = weighting == "nash_mtl"
    for i, t in enumerate(TASKS):
        for p, g in zip(module.model.task_parameters(t), heads[t]):
            torch.testing.assert_close(p.grad, g * coef[i] if weighted else g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["hps", "mtcp"])
def test_model_internal_terms_in_param_space(arch):
    """A model-internal term (MT-CP's coherence loss; a regulariser added to HPS) gets its own pass: the shared
    parameters receive u + ∇term (the term's row joins the rows' all-reduce, not the Gramian), the heads
    ∇f_t + ∇term."""
    if arch == "mtcp":
        from densemtl.models import MODELS

        module = _module("mgda", {"space": "param"}, arch="mtcp", arch_args=dict(MODELS.get("mtcp").smoke_kwargs))
        module.model.eval()  # no dropout: the independent forward below must see the same function
        samples = [synthetic_sample(i, seed=100, h=60, w=80) for i in (2, 3)]
        batch = {k: torch.stack([x[k] for x in samples]) for k in samples[0]}
    else:
        module, _ = _spaced("mgda", "param_graph")
        forward = module.model.forward

        def with_term(images):
            out = forward(images)
            out.losses["reg"] = 0.1 * out.rep.pow(2).mean() + 0.01 * out.preds["depth"].pow(2).mean()
            return out

        module.model.forward = with_term
        batch = _batch([2, 3])
    module.zero_grad()
    module.training_step(batch, 0).backward()
    coef = module.last_gradients.coefficients
    assert module.last_gradients.rows.shape[0] == len(TASKS)
    rows, heads, _, _, shared = _independent(module, batch, "param")
    term = sum(module.model(batch["image"]).losses.values())
    own = [p for t in TASKS for p in module.model.task_parameters(t)]
    term_grads = torch.autograd.grad(term, shared + own, allow_unused=True)
    term_shared = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(shared, term_grads)])
    assert float(term_shared.norm()) > 0
    got = torch.cat([p.grad.flatten() for p in shared])
    torch.testing.assert_close(got, coef @ rows + term_shared, rtol=1e-4, atol=1e-6)
    term_own = dict(zip(map(id, own), term_grads[len(shared) :]))
    for t in TASKS:
        for p, g in zip(module.model.task_parameters(t), heads[t]):
            extra = term_own.get(id(p))
            torch.testing.assert_close(p.grad, g if extra is None else g + extra, rtol=1e-4, atol=1e-6)


def test_separate_losses_other_heads_do_not_run_in_a_task_pass():
    module = _module("mgda", {"space": "param"})
    calls = dict.fromkeys(TASKS, 0)
    for t in TASKS:
        module.model.heads[t].register_full_backward_hook(lambda *a, t=t: calls.__setitem__(t, calls[t] + 1))
    module.training_step(_batch([0, 1]), 0)  # T row passes, no backward of the returned objective yet
    assert calls == dict.fromkeys(TASKS, 1)


def test_imtl_scales_receive_their_gradient_in_both_spaces():
    batch = _batch([4, 5])
    for space in ("rep", "rep_graph", "param", "param_graph"):
        module, _ = _spaced("imtl", space)
        module.zero_grad()
        module.training_step(batch, 0).backward()
        with torch.no_grad():
            out = module.model(batch["image"])
            terms = task_objective_terms(*(lambda x: (x.main, x.aux))(module.criterion(out, batch)), TASKS)
        expected = torch.stack([terms[t] for t in TASKS]) - 1.0  # ∂(e^s L − s)/∂s at s = 0
        torch.testing.assert_close(module.weighting.log_scales.grad, expected, rtol=1e-5, atol=1e-6)


class _Samples(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return _sample(i)


def _fit_one_step(module: MultiTaskModule, root, accumulate: int, clip: float | None) -> None:
    trainer = quiet_trainer(root, max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=clip)
    trainer.fit(module, DataLoader(_Samples(), batch_size=2, shuffle=False))


def _window_update(module: MultiTaskModule, micro_batches, exact: bool) -> list[torch.Tensor]:
    """The parameter gradient of one accumulation window, from per-task autograd.grad rows of each micro-batch
    (taken separately): ``exact`` aggregates the mean rows once and weights the mean head gradients; otherwise
    each micro-batch is aggregated on its own and the updates are averaged (Lightning's 1/k)."""
    params = [p for p in module.model.parameters() if p.requires_grad]
    shared = [p for p in module.model.shared_parameters() if p.requires_grad]
    weighted = module.weighting.heads == "weighted"
    ctx = StepContext(epoch=0, step=1, loss_values=torch.ones(3))
    parts = [_independent(module, _batch(idx), "param") for idx in micro_batches]
    k = len(parts)
    if exact:
        rows = sum(r for r, *_ in parts) / k
        heads = {t: [sum(h[t][j] for _, h, *_ in parts) / k for j in range(len(parts[0][1][t]))] for t in TASKS}
        parts = [(rows, heads)]
    total = [torch.zeros_like(p) for p in params]
    for rows, heads, *_ in parts:
        coef = module.weighting.weights(rows @ rows.T, {}, ctx).coefficients
        u = iter(torch.split(coef @ rows, [p.numel() for p in shared]))
        by_id = {id(p): next(u).view_as(p) for p in shared}
        for i, t in enumerate(TASKS):
            for p, g in zip(module.model.task_parameters(t), heads[t]):
                by_id[id(p)] = g * coef[i] if weighted else g
        for acc, p in zip(total, params):
            acc += by_id[id(p)] / len(parts)
    return total


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("mgda", {"space": "param"}),
        ("nash_mtl", {"space": "param", "max_norm": 0.0}),  # weighted heads: earlier micro-batches reweighted
        ("mgda", {"space": "param", "accumulation": "per_micro_batch"}),
    ],
)
def test_accumulation_and_clipping_through_lightning(tmp_path, method, args):
    """accumulate_grad_batches=2 and norm clipping: the SGD step (lr 1) equals −clip(u), with u the update of
    the window's batch (exact: the mean rows over both micro-batches aggregated once, as one batch of 4) or the
    mean of the two micro-batches' own updates (``per_micro_batch``), each computed independently."""
    module = _module(method, args, optimizer="sgd", lr=1.0, weight_decay=0.0, momentum=0.0)
    reference = _module(method, args)  # same initial weights; its weighting answers the expected weights
    exact = args.get("accumulation", "exact") == "exact"
    expected = _window_update(reference, ([0, 1], [2, 3]), exact=exact)
    params = [p for p in module.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    norm = torch.sqrt(sum((e * e).sum() for e in expected))
    clip = min(1.0, 0.05 / (float(norm) + 1e-6))
    _fit_one_step(module, tmp_path, accumulate=2, clip=0.05)
    assert clip < 1.0  # the clipping is active
    # the rows the last micro-batch aggregated: the window's mean rows (exact) or its own rows
    rows = [_independent(reference, _batch(idx), "param")[0] for idx in ([0, 1], [2, 3])]
    torch.testing.assert_close(module.last_gradients.rows, (rows[0] + rows[1]) / 2 if exact else rows[1])
    for b, p, e in zip(before, params, expected):
        torch.testing.assert_close(b - p.detach(), clip * e, rtol=1e-4, atol=1e-7)


def test_exact_accumulation_equals_the_larger_batch(tmp_path):
    """Two micro-batches of 2 with exact accumulation take the same step as one batch of 4 (frozen BN)."""
    steps = []
    for accumulate, batch_size in ((2, 2), (1, 4)):
        module = _module("pcgrad", {"space": "param"}, optimizer="sgd", lr=1.0, weight_decay=0.0, momentum=0.0)
        module.keep_gradients = False
        before = [p.detach().clone() for p in module.model.parameters()]
        trainer = quiet_trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate)
        trainer.fit(module, DataLoader(_Samples(), batch_size=batch_size, shuffle=False))
        steps.append(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, module.model.parameters())]))
    assert steps[0].norm() > 0
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-4, atol=1e-7)


def test_rep_space_refuses_inexact_accumulation(tmp_path):
    module = _module("mgda", {"space": "rep"})
    with pytest.raises(ValueError, match=r"rep space cannot accumulate gradients exactly.*per_micro_batch"):
        _fit_one_step(module, tmp_path, accumulate=2, clip=None)
    module = _module("mgda", {"space": "rep", "accumulation": "per_micro_batch"})
    _fit_one_step(module, tmp_path, accumulate=2, clip=None)  # the explicit choice runs


def _fp16_fit(method: str, args: dict, root, init_scale: float | None):
    """One SGD step (lr 1) through a Lightning fit, fp32 or fp16 autocast with a GradScaler (CPU)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = _module(method, args, optimizer="sgd", lr=1.0, weight_decay=0.0, momentum=0.0)
    module.keep_gradients = False
    before = [p.detach().clone() for p in module.model.parameters()]
    plugins = []
    if init_scale is not None:  # Lightning maps "16-mixed" to bf16 on CPU; the plugin forces fp16 and a scaler
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))]
    trainer = quiet_trainer(root, max_steps=1, plugins=plugins)
    trainer.fit(module, DataLoader(_Samples(), batch_size=2, shuffle=False))
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, module.model.parameters())])
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return step, None if scaler is None else float(scaler.get_scale()), module


@pytest.mark.parametrize(
    ("method", "args"), [("nash_mtl", {"space": "param", "max_norm": 0.0}), ("mgda", {"space": "rep"})]
)
def test_fp16_grad_scaler_fit(tmp_path, method, args):
    """fp16 autocast with a GradScaler through Lightning: the step matches fp32 (the loss scale is removed
    before the Gramian and the update); an overflowing scale skips the step, halves the scale and leaves
    the method's state as it was."""
    fp32, _, _ = _fp16_fit(method, args, tmp_path, None)
    fp16, scale, _ = _fp16_fit(method, args, tmp_path, 2.0**8)
    assert scale == 2.0**8  # no overflow: the step was taken
    assert float((fp16 - fp32).norm() / fp32.norm()) < 2e-2  # fp16 activations; a kept scale would be 256x off
    skipped, scale, module = _fp16_fit(method, args, tmp_path, 2.0**60)
    assert scale == 2.0**59 and float(skipped.abs().max()) == 0.0
    fresh = _module(method, args).weighting.state_dict()
    for key, value in module.weighting.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, fresh[key])


class _Leaky(MultiTaskModel):
    """Depth reads the semseg head's output: semseg's 'own' parameters are reached by two tasks."""

    def __init__(self, tasks, num_classes=None, declare_all: bool = True) -> None:
        super().__init__(tasks, num_classes)
        self.trunk = nn.Conv2d(3, 4, 1)
        self.extra = nn.Conv2d(4, 4, 1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(4, self.out_channels[t], 1) for t in self.tasks})
        self.declare_all = declare_all

    def shared_parameters(self):
        yield from self.trunk.parameters()
        if self.declare_all:
            yield from self.extra.parameters()

    def forward(self, images):
        rep = self.extra(self.trunk(images))
        preds = {t: self.heads[t](rep) for t in self.tasks}
        preds["depth"] = preds["depth"] + preds["semseg"][:, :1]
        return MultiTaskOutput(preds=preds, rep=rep)


def test_partition_errors_name_the_parameters():
    with pytest.raises(ValueError, match=r"\['extra.weight', 'extra.bias'\] are neither in shared_parameters"):
        GradientSpace(_Leaky(TASKS, {"semseg": 3}, declare_all=False), TASKS)
    module = _module("mgda", {"space": "param"})
    module.model = _Leaky(TASKS, {"semseg": 3})
    with pytest.raises(ValueError, match=r"task 'depth' reaches parameters \['heads.semseg.weight'"):
        module.training_step(_batch([0, 1]), 0)


def test_space_a_model_cannot_give_raises():
    stl = _module("mgda", {"space": "rep"}, arch="stl")
    with pytest.raises(ValueError, match=r"uses space 'rep', but model SingleTaskModel gives no shared representation"):
        stl.training_step(_batch([0, 1]), 0)
    stl = _module("mgda", {"space": "param"}, arch="stl")
    with pytest.raises(ValueError, match="model SingleTaskModel has no shared parameters"):
        stl.training_step(_batch([0, 1]), 0)


def test_weights_and_effective_coefficients_are_logged():
    module = _module("mgda", {"normalize": "l2"})
    logged = {}
    module.log_dict = lambda values, **k: logged.update(values)
    module.training_step(_batch([0, 1]), 0)
    w = torch.stack([logged[f"weight/{t}"] for t in TASKS])
    eff = torch.stack([logged[f"weight_eff/{t}"] for t in TASKS])
    norms = torch.sqrt(torch.diagonal(module.last_gradients.gram))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(eff, w / norms)


def test_independent_branches_declared_wrongly_is_caught():
    module = _module("mgda", {"space": "rep"})
    module.model = _Leaky(TASKS, {"semseg": 3})
    module.model.independent_branches = True  # but depth reads semseg's output, and no task_branch is used
    with pytest.raises(ValueError, match="declares independent_branches, but task 'semseg' read the representation"):
        module.training_step(_batch([0, 1]), 0)


def test_fp16_scale_is_removed_before_the_gramian_and_overflow_skips_the_weighting():
    """With a GradScaler scale s the rows come from s·f_t and are divided by s before K; a non-finite K makes
    the whole update non-finite (the scaler then skips the step) without calling the method."""
    from densemtl.weighting.gradients import gradient_step

    module = _module("nash_mtl", {"max_norm": 0.0})
    space = GradientSpace(module.model, TASKS)
    ctx = StepContext(epoch=0, step=1, loss_values=torch.ones(3))
    batch = _batch([0, 1])

    def step(scale, poison=False):
        out = module.model(batch["image"])
        losses = module.criterion(out, batch)
        if poison:
            losses.main["depth"] = losses.main["depth"] * float("inf")
        return gradient_step(
            module.weighting, space, losses.main, losses.aux, {}, out.rep, ctx, module.weighting.kind, scale=scale
        )

    plain, scaled = step(None), step(1024.0)
    torch.testing.assert_close(scaled.rows, plain.rows, rtol=1e-6, atol=0)
    torch.testing.assert_close(scaled.gram, plain.gram, rtol=1e-6, atol=0)
    module.weighting._staged = None
    bad = step(1024.0, poison=True)
    assert module.weighting._staged is None  # the method was not asked
    assert torch.isnan(bad.coefficients).all()
    module.zero_grad()
    bad.objective.backward()
    assert not torch.isfinite(next(module.model.trunk.parameters()).grad).all()


def test_gramian_is_accurate_and_symmetric_for_long_rows():
    """K of 4 rows of d = 1,000,003 fp32 entries (magnitudes over 3 decades, two near-parallel rows, d not a
    multiple of the block) matches the fp64 product to 1e-6 relative, is exactly symmetric, and leaves the
    global matmul precision as it found it."""
    from densemtl.weighting.gradients import _gram

    g = torch.Generator().manual_seed(0)
    d = 1_000_003
    rows = torch.randn(4, d, generator=g) * torch.logspace(-3, 0, d)
    rows[1] = 0.5 * rows[0] + 0.01 * torch.randn(d, generator=g)
    exact = rows.double() @ rows.double().T
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        gram = _gram(rows)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert gram.dtype == torch.float32 and torch.equal(gram, gram.T)
    assert float((gram.double() - exact).abs().max() / exact.abs().max()) < 1e-6


def test_param_space_refuses_a_multi_process_strategy_that_is_not_ddp():
    from types import SimpleNamespace

    module = _module("mgda", {"space": "param"})
    fsdp_like = SimpleNamespace(model=module)  # e.g. FSDP or DeepSpeed: the model is not DDP-wrapped
    module._trainer = SimpleNamespace(
        accumulate_grad_batches=1, world_size=2, strategy=fsdp_like, num_training_batches=4, max_epochs=1
    )
    with pytest.raises(ValueError, match=r"param space runs on one device or under DDP.*SimpleNamespace"):
        module.on_train_start()
    module._trainer.world_size = 1  # one process: any strategy
    module.on_train_start()
