"""Fixtures of the weighting tests: ``no_host_sync`` for the on-device solvers."""

from __future__ import annotations

import pytest
import torch

from densemtl.weighting import simplex_qp

HOST_SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")
"""Tensor methods that read a value back to the host (a device synchronisation on a GPU)."""


@pytest.fixture
def no_host_sync(monkeypatch):
    """Every tensor→host conversion raises while the fixture is active (the solvers' mask and KKT caches are
    cleared first, so their cold path is checked too)."""
    simplex_qp.subset_masks.cache_clear()
    simplex_qp._kkt_templates.cache_clear()

    def forbid(name):
        def raiser(*args, **kwargs):
            raise AssertionError(f"host synchronisation: Tensor.{name} called")

        return raiser

    for name in HOST_SYNCS:
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    yield
    monkeypatch.undo()
