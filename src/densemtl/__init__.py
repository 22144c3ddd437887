"""densemtl: multi-task dense scene prediction (MT-CP, CTAL, baselines, standard protocols)."""

__version__ = "0.1.0"
