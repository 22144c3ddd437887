"""MT-CP (Fontana, Spratling and Shi, WACV 2025): the whole model, registered as ``mtcp`` (``spec/mtcp.md`` §3).

images (B, 3, H, W) -> fusion backbone -> R (B, C, H/4, W/4) -> per task t: Swin decoder_t -> [F0, F1, F2]
(C, 2C, 4C at 1/4, 1/8, 1/16) -> FPN_t -> X_t (B, W, H/4, W/4) -> CFM_t(X_t, other tasks' X) -> Y_t ->
SRM trace-back chain -> P1 (1/16), P2 (1/8), P3 (1/4) -> heads. ``preds[t]`` is the final head on P3,
``aux["inter16"][t]`` / ``aux["inter8"][t]`` the intermediate heads on P1 / P2 (the criterion resizes them),
``losses["coherence"]`` λ Σ_t of the CFM cosine terms, ``rep`` = R.

Defaults follow the paper (``spec/mtcp.md`` §10); ``reference=True`` switches every model row to the
released code, and each row is its own option (an explicit option wins over ``reference``):

=====  =========================  ====================  ===================
§10    option                     default (paper)       ``reference=True``
=====  =========================  ====================  ===================
#12    ``coherence``              True (λ = 1)          False (Π not built)
#13    ``cfm_main_relu``          True                  False
#16    ``cfm_out_spatial_kernel`` 7                     7
#17    ``mask_layers``            ``"last"``            ``"last"``
#8     PASCAL parts intermediate  mean of both          ``inter8`` only (halved by the criterion)
=====  =========================  ====================  ===================

The loss rows (#9-#11: normals MSE, intermediate normals scored with L1, depth cap 6.5535 m) are criterion
settings: :meth:`MTCP.criterion_defaults` returns them (the engine merges them under ``criterion_args``); the
LPS rows (#1-#7) are the ``lps`` weighting's ``reference`` option.

Ablations (paper Table 3, ``spec/mtcp.md`` §9): ``use_cfm=False`` gives Y_t = X_t and no coherence term;
``use_srm=False`` puts the final head on Y_t and the intermediate heads on Y_t resized to the sizes of F2 / F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from densemtl.models.base import MultiTaskModel, MultiTaskOutput, register_model
from densemtl.models.baselines import check_images, resize_to
from densemtl.models.blocks import task_branch
from densemtl.models.encoders import IMAGENET
from densemtl.models.mtcp.backbone import FPNFusion, Mask2FormerFusion
from densemtl.models.mtcp.cfm import CoherenceFusion
from densemtl.models.mtcp.fpn import TaskFPN
from densemtl.models.mtcp.heads import final_head, intermediate_head
from densemtl.models.mtcp.srm import TraceBackChain
from densemtl.models.mtcp.swin import SwinTaskDecoder

__all__ = ["DEPTH_CAP", "MTCP", "mtcp_criterion_args"]

DEPTH_CAP = 6.5535
"""Metres: the released code ignores GT depth >= this in the loss (and the metric)."""

INTERMEDIATES = ("inter16", "inter8")


def mtcp_criterion_args(tasks: Sequence[str], reference: bool = False) -> dict[str, Any]:
    """``MultiTaskCriterion`` arguments of MT-CP (``spec/mtcp.md`` §4, §10 #8-#11).

    Both modes average the two intermediate losses (coefficient 1/2 each). The paper mode keeps the task
    losses of the Task registry (normals: L1 of the normalised prediction; depth: L1, no cap). The released
    code (``reference=True``): normals MSE on the raw prediction, depth L1 ignoring GT >= 6.5535 m (final and
    intermediate), intermediate normals scored with the plain L1 on the raw prediction.
    """
    args: dict[str, Any] = {"aux_weights": {name: 0.5 for name in INTERMEDIATES}}
    if reference:
        if "normals" in tasks:
            args["losses"] = {"normals": "normals_mse"}
            args["aux_losses"] = {name: {"normals": "l1"} for name in INTERMEDIATES}
        if "depth" in tasks:
            args["loss_kwargs"] = {"depth": {"max_depth": DEPTH_CAP}}
    return args


class _TaskBranch(nn.Module):
    """Everything of one task after R: Swin decoder, FPN, CFM, SRM chain and heads."""

    def __init__(self, task: str, out_channels: int, channels: int, width: int, num_aux: int,
                 swin: dict[str, Any], cfm: dict[str, Any] | None, use_srm: bool, seg_upsample: int) -> None:
        super().__init__()
        self.decoder = SwinTaskDecoder(channels, **swin)
        self.fpn = TaskFPN(self.decoder.widths, width)
        self.cfm = CoherenceFusion(width, num_aux, **cfm) if cfm is not None else None
        self.srm = TraceBackChain(width, self.decoder.widths) if use_srm else None
        self.head = final_head(task, width, out_channels, seg_upsample)
        self.inter = nn.ModuleDict({name: intermediate_head(task, width, out_channels) for name in INTERMEDIATES})

    def cfm_srm_heads(self) -> list[nn.Module]:
        return [m for m in (self.cfm, self.srm, self.head, self.inter) if m is not None]


@register_model("mtcp")
class MTCP(MultiTaskModel):
    """MT-CP: Mask2Former fusion, Swin task decoders, FPN, CFM, SRM trace-back and intermediate supervision.

    Args:
        tasks: tasks to predict, in order (the CFM auxiliaries of t are the others in this order).
        num_classes: task -> classes for segmentation-like tasks.
        reference: reproduce the released code where it differs from the paper (see the module docstring).
        fusion: ``"mask2former"`` (R = P ⊙ Σ M) or ``"fpn"`` (ablation: a plain FPN pixel decoder gives R).
        backbone: ``"mask2former"`` (the paper's Swin-S Mask2Former, weights from a local directory) or an
            EfficientNet-Lite name (offline variant, labelled as such).
        pretrained: local Mask2Former directory, or encoder weights (``"imagenet"``) for EfficientNet-Lite.
        channels: C, the width of R and of the first Swin stage (256; the Mask2Former mask-feature size).
        width: width of the FPN, CFM, SRM and heads (256).
        num_queries, encoder_layers, decoder_layers, feedforward: a built Mask2Former's sizes.
        mask_layers: ``"last"`` or ``"all"`` (§10 #17).
        swin_depths, swin_heads, window: the task decoders (1, 2, 1), (2, 2, 2), 7.
        use_cfm: build the CFM (Table 3 ablation when False).
        use_srm: build the SRM chains (Table 3 ablation when False).
        coherence: return the CFM cosine term (None: ``not reference``).
        coherence_weight: λ of the coherence term.
        cfm_main_relu: ReLU on the CFM main branch (None: ``not reference``).
        cfm_out_spatial_kernel: spatial kernel of the CFM output CBAM.
        attention: CFM attention path, ``"sdpa"`` (forced fused kernel), ``"blocked"`` or ``"naive"``.
        attention_block: query rows per block of ``"blocked"``.
        seg_upsample: the x-factor (ac) inside the segmentation heads (2 NYUD, 4 PASCAL).
    """

    smoke_kwargs: dict[str, Any] = {"pretrained": None, "channels": 32, "width": 16, "num_queries": 8,
                                    "encoder_layers": 1, "decoder_layers": 2, "feedforward": 32}
    """Constructor arguments of a tiny random-weight MT-CP (registry-wide contract tests)."""

    def __init__(
        self,
        tasks: list[str],
        num_classes: dict[str, int] | None = None,
        reference: bool = False,
        fusion: str = "mask2former",
        backbone: str = "tf_efficientnet_lite0",
        pretrained: str | None = IMAGENET,
        channels: int = 256,
        width: int = 256,
        num_queries: int = 100,
        encoder_layers: int = 6,
        decoder_layers: int = 10,
        feedforward: int | None = None,
        mask_layers: str = "last",
        swin_depths: Sequence[int] = (1, 2, 1),
        swin_heads: Sequence[int] = (2, 2, 2),
        window: int = 7,
        use_cfm: bool = True,
        use_srm: bool = True,
        coherence: bool | None = None,
        coherence_weight: float = 1.0,
        cfm_main_relu: bool | None = None,
        cfm_out_spatial_kernel: int = 7,
        attention: str = "sdpa",
        attention_block: int = 1024,
        seg_upsample: int = 2,
    ) -> None:
        super().__init__(tasks, num_classes)
        if use_cfm and len(self.tasks) < 2:
            raise ValueError(f"the MT-CP CFM needs at least two tasks, got {list(self.tasks)}; set use_cfm=False")
        self.reference = bool(reference)
        self.use_cfm, self.use_srm = bool(use_cfm), bool(use_srm)
        self.coherence = (not reference) if coherence is None else bool(coherence)
        self.coherence_weight = float(coherence_weight)
        if fusion == "mask2former":
            self.fusion: nn.Module = Mask2FormerFusion(backbone, pretrained, channels, num_queries, encoder_layers,
                                                       decoder_layers, feedforward, mask_layers)
        elif fusion == "fpn":
            if backbone == "mask2former":
                raise ValueError("fusion='fpn' needs a timm encoder as backbone, not 'mask2former'")
            self.fusion = FPNFusion(backbone, pretrained, channels)
        else:
            raise ValueError(f"fusion must be 'mask2former' or 'fpn', got {fusion!r}")
        channels = self.fusion.channels
        self.mean, self.std = self.fusion.mean, self.fusion.std
        cfm = None
        if self.use_cfm:
            cfm = dict(main_relu=(not reference) if cfm_main_relu is None else bool(cfm_main_relu),
                       coherence=self.coherence, out_spatial_kernel=cfm_out_spatial_kernel, attention=attention,
                       attention_block=attention_block)
        swin = dict(depths=tuple(swin_depths), num_heads=tuple(swin_heads), window=window)
        self.branches = nn.ModuleDict({
            t: _TaskBranch(t, self.out_channels[t], channels, width, len(self.tasks) - 1, swin, cfm, self.use_srm,
                           seg_upsample)
            for t in self.tasks
        })
        # released PASCAL quirk (§10 #8): human_parts keeps only the last intermediate loss, halved
        self.skip_inter = {("inter16", "human_parts")} if self.reference else set()

    def criterion_defaults(self) -> dict[str, Any]:
        """The ``MultiTaskCriterion`` arguments of this model's mode (see :func:`mtcp_criterion_args`)."""
        return mtcp_criterion_args(self.tasks, self.reference)

    def task_modules(self, task: str) -> list[nn.Module]:
        """Modules only ``task``'s loss reaches: its CFM, SRM and heads; with ``use_cfm=False`` its whole branch.

        With the CFM on, a task's decoder and FPN also feed the other tasks' CFMs, so they are not task-only.
        """
        branch = self.branches[task]
        return [branch] if not self.use_cfm else branch.cfm_srm_heads()

    def forward(self, images: Tensor) -> MultiTaskOutput:
        """images (B, 3, H, W) -> preds[t] (B, K_t, H, W); aux inter16 / inter8 at 1/16 and 1/8; rep R."""
        check_images(images)
        size = tuple(images.shape[-2:])
        rep = self.fusion(images)
        feats = {t: self.branches[t].decoder(task_branch(rep, t)) for t in self.tasks}
        xs = {t: self.branches[t].fpn(feats[t]) for t in self.tasks}
        preds: dict[str, Tensor] = {}
        aux: dict[str, dict[str, Tensor]] = {name: {} for name in INTERMEDIATES}
        coherence: Tensor | None = None
        for t in self.tasks:
            branch = self.branches[t]
            y = xs[t]
            if branch.cfm is not None:
                y, term = branch.cfm(xs[t], [xs[a] for a in self.tasks if a != t])
                if term is not None:
                    coherence = term if coherence is None else coherence + term
            if branch.srm is not None:
                p16, p8, p4 = branch.srm(y, feats[t])
            else:
                p16, p8, p4 = (resize_to(y, tuple(f.shape[-2:])) for f in (feats[t][2], feats[t][1], y))
            preds[t] = resize_to(branch.head(p4), size)
            for name, p in zip(INTERMEDIATES, (p16, p8)):
                if (name, t) not in self.skip_inter:
                    aux[name][t] = branch.inter[name](p)
        losses = {} if coherence is None else {"coherence": self.coherence_weight * coherence}
        return MultiTaskOutput(preds=preds, aux=aux, losses=losses, rep=rep)
