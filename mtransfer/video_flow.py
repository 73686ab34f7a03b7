"""The optical flow of a whole clip, frame by frame, with any ``FlowEstimator``."""

from __future__ import annotations

from typing import Iterator

import torch

from mtransfer.choices import Reference
from mtransfer.estimators.base import FlowEstimator

REFERENCES: tuple[Reference, ...] = ("first", "previous")


def video_flows(
    frames: torch.Tensor,
    estimator: FlowEstimator,
    *,
    reference: Reference = "first",
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(t, flow)`` for t = 1 .. T-1: the ``(2, H, W)`` flow from frame 0 (or frame t-1) to frame t.

    ``frames`` is ``(T, 3, H, W)`` in [0, 1]. "first" gives the motion a still image must follow to
    replay the clip; "previous" gives the small frame-to-frame steps. Pairs go through the estimator
    ``batch_size`` at a time on ``device`` (default: where the frames are) and the flows come back to
    the frames' device, so a long clip can stay in CPU memory. Gradients are only kept when the frames
    require them and the estimator is differentiable; otherwise the work runs without autograd.
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = frames.device if device is None else torch.device(device)
    keep_grad = frames.requires_grad and estimator.differentiable
    for start in range(1, frames.shape[0], batch_size):
        indices = torch.arange(start, min(start + batch_size, frames.shape[0]))
        sources = frames[torch.zeros_like(indices)] if reference == "first" else frames[indices - 1]
        with torch.set_grad_enabled(keep_grad):
            flows = estimator(sources.to(device), frames[indices].to(device)).to(frames.device)
        for index, flow in zip(indices.tolist(), flows):
            yield index, flow
