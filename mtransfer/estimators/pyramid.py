"""A weight-free, differentiable coarse-to-fine Lucas-Kanade estimator in plain torch.

It stands in for RAFT inside the guidance energy when no RAFT weights are available (and in tests): every
step is a fixed sequence of tensor operations (blur, pool, warp, a closed-form 2x2 solve), so gradients
reach the target image through all warps and solves and the cost is predictable on a CPU.

At each pyramid level, from coarse to fine, the target is warped back by the current flow and a dense
Lucas-Kanade update is solved in a Gaussian window around every pixel. A small ridge term keeps the
solve well posed in flat regions (the update fades to zero there instead of exploding), and blurring the
flow after each update spreads motion from textured pixels into their neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mtransfer.errors import UsageError
from mtransfer.flows import pixel_grid, warp
from mtransfer.flows.ops import gaussian_blur, resize_flow


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences in x and y with replicated borders."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    grad_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    grad_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return grad_x, grad_y


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` weight that is 1 where ``p + flow(p)`` lies in the frame; outside, the target is unseen."""
    height, width = flow.shape[-2:]
    position = pixel_grid(height, width, device=flow.device, dtype=flow.dtype) + flow.detach()
    limit = torch.tensor([width - 1, height - 1], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return ((position >= 0) & (position <= limit)).all(1, keepdim=True).to(flow.dtype)


@dataclass(frozen=True)
class PyramidEstimator:
    """Coarse-to-fine dense Lucas-Kanade with image warping; differentiable with respect to both images.

    ``levels`` caps the pyramid depth (the coarsest level keeps at least ``min_size`` pixels per side);
    ``iterations`` warp-and-solve steps run at every level; ``window`` is the sigma of the Lucas-Kanade
    window and ``smoothness`` the sigma of the flow blur after each update, both in pixels of the level;
    ``ridge`` damps the 2x2 solve where the image has no texture.
    """

    levels: int = 6
    iterations: int = 4
    window: float = 2.0
    smoothness: float = 1.0
    ridge: float = 1e-4
    min_size: int = 8

    name: ClassVar[str] = "pyramid"
    differentiable: ClassVar[bool] = True
    batch_invariant: ClassVar[bool] = True  # an item's flow does not depend on its batch (tests/test_batches.py)

    def __post_init__(self) -> None:
        for key in ("levels", "iterations", "window", "smoothness", "ridge", "min_size"):
            if not getattr(self, key) > 0:
                raise UsageError(f"{self.name}: {key} must be positive, got {getattr(self, key)}")

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sources, targets = [source], [target]
        while len(sources) < self.levels and min(sources[-1].shape[-2:]) >= 2 * self.min_size:
            sources.append(F.avg_pool2d(gaussian_blur(sources[-1], 1.0), 2, ceil_mode=True))
            targets.append(F.avg_pool2d(gaussian_blur(targets[-1], 1.0), 2, ceil_mode=True))
        batch, _, height, width = sources[-1].shape
        flow = source.new_zeros(batch, 2, height, width)
        for level_source, level_target in zip(reversed(sources), reversed(targets)):
            flow = resize_flow(flow, tuple(level_source.shape[-2:]))
            for _ in range(self.iterations):
                flow = self._refine(level_source, level_target, flow)
        return flow

    def _refine(self, source: torch.Tensor, target: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """One Lucas-Kanade step: linearise ``target(p + flow + delta) = source(p)`` and solve for delta."""
        warped = warp(target, flow, padding_mode="border")
        grad_x, grad_y = _gradients((warped + source) / 2)
        difference = warped - source
        products = torch.stack(
            (grad_x * grad_x, grad_x * grad_y, grad_y * grad_y, grad_x * difference, grad_y * difference), dim=1
        ).sum(2)  # sum over colour channels: (B, 5, H, W)
        products = products * _inside(flow)
        xx, xy, yy, xt, yt = gaussian_blur(products, self.window).unbind(1)
        xx, yy = xx + self.ridge, yy + self.ridge
        determinant = xx * yy - xy * xy
        delta = torch.stack((xy * yt - yy * xt, xy * xt - xx * yt), dim=1) / determinant.unsqueeze(1)
        return gaussian_blur(flow + delta, self.smoothness)
