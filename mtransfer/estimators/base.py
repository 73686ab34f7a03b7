"""The one interface every optical-flow estimator in mtransfer follows."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class FlowEstimator(Protocol):
    """Estimates the flow from ``source`` to ``target``.

    Both images are float tensors ``(B, 3, H, W)`` in [0, 1] on the estimator's device; the result is a
    flow ``(B, 2, H, W)`` in the convention of ``mtransfer.flows`` (source grid, pixels). Estimators with
    ``differentiable = True`` can sit inside the guidance energy: gradients flow back to ``target``.
    ``batch_invariant`` (optional, False when absent) says that an item's flow and gradient are bit for bit
    the same whatever else is in its batch (see ``mtransfer.guidance.edit.edit_images``).
    """

    name: str
    differentiable: bool

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
