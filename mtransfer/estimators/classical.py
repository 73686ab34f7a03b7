"""Classical optical flow from scikit-image (TV-L1 and iterative Lucas-Kanade).

These need no weights at all, so they are the offline fallback for flow *extraction* from a video. They
run in NumPy on the CPU, one grayscale pair at a time, and are not differentiable.

scikit-image's ``optical_flow_*(reference, moving)`` returns ``(v, u)`` with
``moving(r + v, c + u) ≈ reference(r, c)``. Passing ``reference = source`` and ``moving = target`` is
therefore exactly the mtransfer convention (``target(p + flow(p)) ≈ source(p)``) once the channels are
swapped to ``(u, v)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from skimage.registration import optical_flow_ilk, optical_flow_tvl1

from mtransfer.errors import UsageError

_LUMA = (0.2125, 0.7154, 0.0721)  # the weights of skimage.color.rgb2gray


def _require_positive(estimator: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise UsageError(f"{estimator}: {key} must be positive, got {value}")


def _per_pair(
    source: torch.Tensor, target: torch.Tensor, solve: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> torch.Tensor:
    """Run ``solve(reference, moving) -> (v, u)`` on each grayscale pair and stack the flows as (u, v)."""
    luma = torch.tensor(_LUMA, dtype=source.dtype, device=source.device).view(1, 3, 1, 1)
    gray_source = (source.detach() * luma).sum(1).cpu().numpy()
    gray_target = (target.detach() * luma).sum(1).cpu().numpy()
    flows = [solve(reference, moving)[::-1] for reference, moving in zip(gray_source, gray_target)]
    return torch.from_numpy(np.stack(flows).copy()).to(device=source.device, dtype=source.dtype)


@dataclass(frozen=True)
class TVL1Estimator:
    """TV-L1 (Zach et al. 2007, Wedel et al. 2009): robust, edge-preserving, slower. Parameters as in skimage."""

    attachment: float = 15.0
    tightness: float = 0.3
    num_warp: int = 5
    num_iter: int = 10
    tol: float = 1e-4
    prefilter: bool = False

    name: ClassVar[str] = "tvl1"
    differentiable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _require_positive(
            self.name, attachment=self.attachment, tightness=self.tightness,
            num_warp=self.num_warp, num_iter=self.num_iter, tol=self.tol,
        )

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _per_pair(
            source,
            target,
            lambda reference, moving: optical_flow_tvl1(
                reference, moving, attachment=self.attachment, tightness=self.tightness,
                num_warp=self.num_warp, num_iter=self.num_iter, tol=self.tol, prefilter=self.prefilter,
            ),
        )


@dataclass(frozen=True)
class ILKEstimator:
    """Iterative Lucas-Kanade: fast, smooth, weaker on large or discontinuous motion. Parameters as in skimage."""

    radius: int = 7
    num_warp: int = 10
    gaussian: bool = False
    prefilter: bool = False

    name: ClassVar[str] = "ilk"
    differentiable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _require_positive(self.name, radius=self.radius, num_warp=self.num_warp)

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _per_pair(
            source,
            target,
            lambda reference, moving: optical_flow_ilk(
                reference, moving, radius=self.radius, num_warp=self.num_warp,
                gaussian=self.gaussian, prefilter=self.prefilter,
            ),
        )
