"""The guidance energy: how far an image is from being the source moved by the target flow.

Reductions follow the authors' code so the paper's weights keep their meaning: the flow term is the mean
absolute difference over every pixel and both flow channels; the colour term is the mean absolute
difference over every pixel and colour channel of the occlusion-masked images (hidden pixels count as
zero error, they are *not* dropped from the denominator); images are nominally in [0, 1]. Whether the
decoded estimate is clamped first and how the colour term's warp pads are conventions chosen by the
caller (``GuidanceSettings.clamp`` / ``padding``); the defaults are the authors' (no clamp, reflection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtransfer.diffusion.backends import straight_through_clamp
from mtransfer.estimators.base import FlowEstimator
from mtransfer.flows import warp


@dataclass(frozen=True)
class EnergyWeights:
    """Weights of the energy's terms (paper: flow 3, colour 100, no reconstruction term)."""

    flow: float = 3.0
    color: float = 100.0
    recon: float = 0.0


def motion_energy(
    source: torch.Tensor,
    image: torch.Tensor,
    target_flow: torch.Tensor,
    estimator: FlowEstimator,
    occlusion: torch.Tensor | None = None,
    weights: EnergyWeights = EnergyWeights(),
    keep: torch.Tensor | None = None,
    *,
    clamp: bool = False,
    padding: str = "reflection",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Energy ``E``, its detached parts and the flow the estimator measures from ``source`` to ``image``.

    Each batch item has its own energy (the parts are ``(B,)``); ``E`` is their sum, so an item's gradient
    is that of its own energy whatever else is in the batch (a batch is B independent edits).

    ``source`` and ``image`` are ``(B, 3, H, W)`` in [0, 1], ``target_flow`` ``(2, H, W)`` or
    ``(B, 2, H, W)``. ``occlusion`` ``(B, 1, H, W)`` is 1 where source pixels stay visible under the
    target motion (``mtransfer.flows.occlusion_mask``); the colour term ignores the others, which the
    edit legitimately covers. ``keep`` ``(B, 1, H, W)`` is 1 where the edit should equal the source
    (outside the edit mask): the reconstruction term's region, used only when ``weights.recon > 0``.
    ``clamp`` clamps ``image`` to [0, 1] with a straight-through gradient (saturated pixels still get
    guidance); ``padding`` is the colour warp's ``grid_sample`` padding mode. Differentiable with respect
    to ``image`` (given a differentiable estimator).
    """
    if clamp:
        image = straight_through_clamp(image)
    achieved = estimator(source, image)
    flow_loss = _item_mean(achieved - target_flow)
    # Warping the edit back along the measured flow must give the source wherever the source stays visible.
    visible = torch.ones_like(source[:, :1]) if occlusion is None else occlusion
    color_loss = _item_mean(visible * (source - warp(image, achieved, padding)))
    energy = weights.flow * flow_loss + weights.color * color_loss
    parts = {"flow": flow_loss.detach(), "color": color_loss.detach()}
    if weights.recon > 0 and keep is not None:
        recon_loss = _item_mean(keep * (image - source))
        energy = energy + weights.recon * recon_loss
        parts["recon"] = recon_loss.detach()
    parts["total"] = energy.detach()
    return energy.sum(), parts, achieved


def _item_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean absolute value of each batch item: ``(B,)``."""
    return values.abs().flatten(1).mean(1)
