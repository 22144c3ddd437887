"""MT-CP (``spec/mtcp.md``): one module per part; importing this package registers the ``mtcp`` model."""

from densemtl.models.mtcp.attention import coherence_attention
from densemtl.models.mtcp.backbone import FPNFusion, Mask2FormerFusion, check_mask2former_dir, fuse_masks
from densemtl.models.mtcp.cfm import CoherenceFusion
from densemtl.models.mtcp.fpn import TaskFPN
from densemtl.models.mtcp.heads import final_head, intermediate_head
from densemtl.models.mtcp.model import MTCP, mtcp_criterion_args
from densemtl.models.mtcp.srm import SPF, TraceBackChain
from densemtl.models.mtcp.swin import SwinBlock, SwinTaskDecoder

__all__ = [
    "MTCP",
    "SPF",
    "CoherenceFusion",
    "FPNFusion",
    "Mask2FormerFusion",
    "SwinBlock",
    "SwinTaskDecoder",
    "TaskFPN",
    "TraceBackChain",
    "check_mask2former_dir",
    "coherence_attention",
    "final_head",
    "fuse_masks",
    "intermediate_head",
    "mtcp_criterion_args",
]
