"""Metrics: torchmetrics ``Metric`` classes per task family, pooled and DDP-exact, and Δm.

Each family lives in its own module (``segmentation``, ``depth``, ``normals``, ``saliency``, ``edge``);
``collection`` builds the right metric for a task from the Task registry and holds one per task;
``delta_m`` computes the multi-task performance against a single-task reference table.
"""

# one import line per re-exported name (explicit "X as X" re-exports, so modules can add lines independently)
from densemtl.metrics.collection import PROTOCOLS as PROTOCOLS
from densemtl.metrics.collection import MultiTaskMetrics as MultiTaskMetrics
from densemtl.metrics.collection import build_task_metrics as build_task_metrics
from densemtl.metrics.delta_m import DeltaM as DeltaM
from densemtl.metrics.delta_m import DeltaMResult as DeltaMResult
from densemtl.metrics.delta_m import compute_delta_m as compute_delta_m
from densemtl.metrics.depth import DepthMetrics as DepthMetrics
from densemtl.metrics.edge import EdgeMetrics as EdgeMetrics
from densemtl.metrics.edge_loss import EdgeLossMeter as EdgeLossMeter
from densemtl.metrics.normals import NormalsMetrics as NormalsMetrics
from densemtl.metrics.saliency import SaliencyMetrics as SaliencyMetrics
from densemtl.metrics.segmentation import SegmentationMetrics as SegmentationMetrics
