"""densemtl: multi-task dense scene prediction (MT-CP, CTAL, baselines, standard protocols)."""

import os

# OpenMP threads that spin while waiting make CPU training 10-100x slower as soon as another process
# (a DataLoader worker, a second job) takes a core. Passive waiting costs little when the machine is
# idle. This only takes effect when densemtl is imported before torch (the `densemtl` command does);
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
