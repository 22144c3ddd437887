"""Metrics: torchmetrics ``Metric`` classes per task family, pooled and DDP-exact, and Δm.

Each family lives in its own module (``segmentation``, ``depth``, ``normals``, ``saliency``, ``edge``);
``collection`` builds the right metric for a task from the Task registry and holds one per task;
``delta_m`` computes the multi-task performance against a single-task reference table.
"""
