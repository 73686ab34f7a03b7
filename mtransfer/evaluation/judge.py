"""The motion-fidelity judge: which flow does an edit actually show, even for 50-150 px motions?

Estimators that start from zero motion (TV-L1, and RAFT to a lesser degree) lose one object moved far
across a still background: on the authors' 150 px translation TV-L1 reports almost no motion. Giving the
estimator the target flow as its starting point fixes that but cannot be trusted alone: it is biased
towards the target (an image that did not move still "follows" it wherever warping by the target finds
no evidence against it). So the judge measures two hypotheses and lets the images decide, pixel by pixel:

- direct: ``estimator(source, result)``, right for no or small motion;
- residual: the motion left after undoing the target, ``compose(estimator(source, warp(result, target)),
  target)``, right when the result moved roughly as asked;

and keeps at each pixel the hypothesis under which the result, warped back, matches the source better
over a Gaussian window (mean absolute colour difference). Neither hypothesis is favoured: when the result
did not move, warping it back by the target mismatches wherever there is texture and the direct
hypothesis (a perfect match) wins. The window is a fixed share of the image (1/32 of the long side), so
the judge behaves the same at any resolution. It works at a reduced size (256 px on the long side by
default, for TV-L1's speed) and returns the flow at the input size in input pixels.

The estimator must not be the one that guided the edit (a judge that is also a player):
``judge_estimator_name`` picks RAFT-large, then RAFT-small when their weights are on this machine, else
TV-L1, skipping the guidance estimator. Calibration on the authors' examples: BENCHMARKS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from mtransfer.estimators import FlowEstimator, load_named_estimator
from mtransfer.estimators.raft import has_local_weights
from mtransfer.flows import as_flow_batch, compose, resize_flow, warp

DISTINCT = 0.5
"""The residual hypothesis only counts where it matches at least this much better than the same warp of an
unmoved image would: where neither hypothesis explains the result (content gone, smeared or re-painted
elsewhere) an arbitrary win must not credit the target, and where the source looks alike at ``p`` and
``p + target`` (flat or repeated texture) the motion cannot be observed at all."""


def judge_estimator_name(guidance_estimator: str | None = None) -> str:
    """The best judge available here that is not ``guidance_estimator`` (the one inside the energy)."""
    for name in ("raft-large", "raft-small"):
        if name != guidance_estimator and has_local_weights(name):
            return name
    return "tvl1"  # not differentiable, so never the guidance estimator


def load_judge(guidance_estimator: str | None = None, device: str | torch.device = "cpu") -> FlowEstimator:
    """The estimator ``judge_estimator_name`` picks, loaded on ``device``."""
    return load_named_estimator(judge_estimator_name(guidance_estimator), device=device)


@dataclass(frozen=True)
class Judgement:
    """What the judge measured, all ``(B, 2, H, W)`` at the input size: the chosen flow and both hypotheses."""

    flow: torch.Tensor
    direct: torch.Tensor
    residual: torch.Tensor
    residual_share: torch.Tensor
    """``(B,)``: share of pixels where the residual hypothesis won."""


def _matching_cost(source: torch.Tensor, result: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """How badly ``result`` warped back by ``flow`` matches ``source``: windowed mean |colour difference|."""
    difference = (source - warp(result, flow, padding_mode="border")).abs().mean(1, keepdim=True)
    radius = max(1, math.ceil(3 * sigma))
    return gaussian_blur(difference, [2 * radius + 1] * 2, [sigma, sigma])


MIN_JUDGE_SIDE = 16
"""Shortest side the judge measures at: ``max_side`` never shrinks an image's short side below it."""


@torch.no_grad()
def judge_motion(
    estimator: FlowEstimator,
    source: torch.Tensor,
    result: torch.Tensor,
    target: torch.Tensor,
    *,
    max_side: int = 256,
    window: float = 1 / 32,
) -> Judgement:
    """Measure the flow from ``source`` to ``result`` (both ``(B, 3, H, W)`` in [0, 1]) near ``target``.

    ``target`` ``(2, H, W)`` or ``(B, 2, H, W)`` is the motion that was asked for; it only proposes a
    hypothesis (see the module docstring). ``max_side`` caps the working size, ``window`` is the sigma of
    the matching window as a share of the working long side.
    """
    height, width = source.shape[-2:]
    target = as_flow_batch(target).to(source).expand(source.shape[0], -1, -1, -1)
    # the cap shrinks the long side, but never the short one below MIN_JUDGE_SIDE (a 4104x8 frame at
    # 256 px would be half a pixel wide, where no estimator can measure anything)
    scale = min(1.0, max(max_side / max(height, width), MIN_JUDGE_SIDE / min(height, width)))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size != (height, width):
        shrink = lambda images: F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        source, result, target = shrink(source), shrink(result), resize_flow(target, size)
    direct = estimator(source, result)
    residual = compose(estimator(source, warp(result, target, padding_mode="border")), target)
    sigma = min(window * max(size), min(size) / 6)  # the window fits in the short side (very thin frames)
    residual_cost = _matching_cost(source, result, residual, sigma)
    unmoved_cost = _matching_cost(source, source, target, sigma)  # the target's cost if nothing had moved
    wins = (residual_cost < _matching_cost(source, result, direct, sigma)) & (residual_cost < DISTINCT * unmoved_cost)
    flow = torch.where(wins, residual, direct)
    full = lambda f: resize_flow(f, (height, width)) if size != (height, width) else f
    return Judgement(full(flow), full(direct), full(residual), wins.float().mean((1, 2, 3)))
