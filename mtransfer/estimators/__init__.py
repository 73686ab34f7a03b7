"""Optical-flow estimators behind one interface (``FlowEstimator``) and one loader.

- ``raft-large`` / ``raft-small``: torchvision RAFT, differentiable, needs trained weights (see ``raft.py``).
- ``tvl1`` / ``ilk``: scikit-image, no weights, not differentiable; offline flow extraction.
- ``pyramid``: weight-free differentiable coarse-to-fine Lucas-Kanade in torch; offline guidance and tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtransfer.choices import DIFFERENTIABLE, ESTIMATORS
from mtransfer.errors import UsageError
from mtransfer.estimators.base import FlowEstimator
from mtransfer.estimators.classical import ILKEstimator, TVL1Estimator
from mtransfer.estimators.pyramid import PyramidEstimator
from mtransfer.estimators.raft import RaftEstimator, load_raft

_CLASSES = {
    "raft-large": RaftEstimator,
    "raft-small": RaftEstimator,
    "tvl1": TVL1Estimator,
    "ilk": ILKEstimator,
    "pyramid": PyramidEstimator,
}
"""``ESTIMATORS`` and ``DIFFERENTIABLE`` (from ``mtransfer.choices``) name these, checked in tests/test_cli_start.py."""


def load_named_estimator(
    name: str,
    *,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
    iterations: int | None = None,
    autocast: bool = False,
) -> FlowEstimator:
    """The estimator called ``name`` (one of ``ESTIMATORS``), from plain arguments; from a settings
    section (``[estimator]``, with the guidance check) it is ``mtransfer.app.models.load_estimator``.

    ``weights`` only applies to RAFT (a torchvision weights name such as ``"C_T_V1"``, a ``.pth`` path or
    ``"random"``), and so does ``autocast`` (the original RAFT's mixed precision on CUDA). ``iterations`` is each estimator's
    own count of refinement steps: RAFT's recurrent updates, the pyramid's warp-and-solve steps per level,
    TV-L1's ``num_iter`` and ILK's ``num_warp``; ``None`` keeps each default. Weight-free estimators work
    on whatever device their inputs are on, so ``device`` only moves RAFT.
    """
    if name not in ESTIMATORS:
        raise UsageError(f"unknown flow estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if name.startswith("raft-"):
        return load_raft(name, device=device, weights=weights, iterations=iterations, autocast=autocast)
    if weights is not None:
        raise UsageError(f"{name} needs no weights; weights (flow --weights, edit --raft-weights) only apply to raft-large and raft-small")
    if autocast:
        raise UsageError(f"{name} has no mixed-precision mode; estimator.autocast only applies to RAFT")
    if name == "tvl1":
        return TVL1Estimator() if iterations is None else TVL1Estimator(num_iter=iterations)
    if name == "ilk":
        return ILKEstimator() if iterations is None else ILKEstimator(num_warp=iterations)
    return PyramidEstimator() if iterations is None else PyramidEstimator(iterations=iterations)


__all__ = [
    "DIFFERENTIABLE",
    "ESTIMATORS",
    "FlowEstimator",
    "ILKEstimator",
    "PyramidEstimator",
    "RaftEstimator",
    "TVL1Estimator",
    "load_named_estimator",
    "load_raft",
]
