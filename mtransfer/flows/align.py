"""Fitting a driving video's motion onto a target image of another size and layout.

The driving flow of frame t (frame 0 → frame t, on the video's grid) becomes a target flow on the
image's grid in five steps, each a pure tensor function below:

1. ``crop_flow``: keep a box of the driving frame (``source_region``); vectors are unchanged by a crop.
2. ``fit_flow``: map that box onto the destination region's size (``stretch`` / ``cover`` / ``contain``),
   rescaling the vectors with the pixels so a motion across the whole box stays across the whole region.
3. ``smooth_flow``: optional Gaussian blur, to remove estimator noise before it becomes a guidance target.
4. ``place_flow``: paste the fitted flow into the region of the target canvas, zero motion elsewhere, then
   weight it by the region's (optionally feathered) mask and the motion strength.
5. ``smooth_over_time``: optional exponential or Gaussian smoothing over the frames.

``motion_mask`` turns an aligned flow into the guidance edit mask: pixels that move, the pixels they move
onto, and a safety margin around both. Everything outside is copied from the source image.
Boxes are ``(x0, y0, x1, y1)`` with exclusive ends, in pixels; sizes are ``(height, width)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from mtransfer.errors import InputError, UsageError
from mtransfer.flows.ops import gaussian_blur, resize_flow, restrict, scale_motion
from mtransfer.flows.warp import as_flow_batch, pixel_grid

FITS = ("stretch", "cover", "contain")
TEMPORAL = ("none", "ema", "gaussian")

PixelBox = tuple[int, int, int, int]


MAX_BLUR_SIGMA = 1000.0
"""Widest blur of a flow over space (pixels) or time (frames): beyond it the blur is flat over any image or
clip, and its kernel (6 sigma long) would only cost memory."""


def pixel_box(box: Sequence[float], height: int, width: int, what: str = "region") -> PixelBox:
    """``[x0, y0, x1, y1]`` in pixels, or in fractions when all values are in [0, 1], as a pixel box.

    Raises a one-line error when the box is empty or reaches outside the ``height`` x ``width`` image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise UsageError(f"{what} {list(box)}: every value must be a finite number (pixels or fractions)")
    if all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    pixels = (round(x0), round(y0), round(x1), round(y1))
    if pixels[0] < 0 or pixels[1] < 0 or pixels[2] > width or pixels[3] > height:
        raise UsageError(f"{what} {list(box)} reaches outside the {width}x{height} (width x height) image")
    if pixels[2] <= pixels[0] or pixels[3] <= pixels[1]:
        raise UsageError(f"{what} {list(box)} is empty: need x0 < x1 and y0 < y1")
    return pixels


MIN_SOURCE_SIDE = 8
"""Smallest side, in driving-frame pixels, of the ``source_region`` box: a smaller box holds too little to
measure motion in, and fitting it onto the region magnifies its vectors by region side / box side (80x for a
1-px box laid over 80 px), so the edit is asked for motion no picture can follow."""


def source_box(box: Sequence[float], height: int, width: int) -> PixelBox:
    """``source_region`` as a pixel box of the ``height`` x ``width`` driving flow, refused (one line naming
    the setting) when empty, outside, or with a side under ``MIN_SOURCE_SIDE`` pixels."""
    pixels = pixel_box(box, height, width, what="source_region")
    box_width, box_height = pixels[2] - pixels[0], pixels[3] - pixels[1]
    if min(box_width, box_height) < MIN_SOURCE_SIDE:
        raise UsageError(
            f"align.source_region {list(box)} is {box_width}x{box_height} px (width x height) of the {width}x{height} "
            f"driving flow; each side needs at least {MIN_SOURCE_SIDE} px (a smaller box has too little motion to "
            "measure and magnifies it onto the region); choose a larger box or a larger video.size"
        )
    return pixels


def mask_box(mask: torch.Tensor, path: str | Path | None = None) -> PixelBox:
    """The bounding box of the non-zero pixels of a ``(1, H, W)`` mask (it must have some; ``path`` names
    the mask file in the error)."""
    ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
    if ys.numel() == 0:
        raise InputError(f"{f'{path}: ' if path else ''}the region mask is empty (all black): paint the moving region white")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_flow(flow: torch.Tensor, box: PixelBox) -> torch.Tensor:
    """The part of a flow inside ``box``; displacements are in pixels, so they need no change."""
    x0, y0, x1, y1 = box
    return flow[..., y0:y1, x0:x1]


def fit_flow(flow: torch.Tensor, size: tuple[int, int], fit: str) -> torch.Tensor:
    """Resample a flow to ``size`` = (height, width) with vectors rescaled, under a ``fit`` policy.

    ``stretch`` scales each axis independently. ``cover`` scales both axes by the larger factor and
    centre-crops, so motion fills the region. ``contain`` scales by the smaller factor and centre-pads
    with zero motion, so the whole driving motion is kept.
    """
    height, width = flow.shape[-2:]
    new_height, new_width = size
    if fit == "stretch":
        return resize_flow(flow, size)
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    scale = (max if fit == "cover" else min)(new_height / height, new_width / width)
    scaled_height = max(1, round(height * scale))
    scaled_width = max(1, round(width * scale))
    if fit == "cover":
        scaled_height, scaled_width = max(scaled_height, new_height), max(scaled_width, new_width)
    else:
        scaled_height, scaled_width = min(scaled_height, new_height), min(scaled_width, new_width)
    scaled = resize_flow(flow, (scaled_height, scaled_width))
    top = abs(scaled_height - new_height) // 2
    left = abs(scaled_width - new_width) // 2
    if fit == "cover":
        return crop_flow(scaled, (left, top, left + new_width, top + new_height))
    return F.pad(scaled, (left, new_width - scaled_width - left, top, new_height - scaled_height - top))


def smooth_flow(flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a flow over space (sigma in pixels); ``sigma = 0`` returns it unchanged."""
    return gaussian_blur(flow, sigma)


def feather_mask(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Fade a ``(..., 1, H, W)`` mask in over ``feather`` pixels from its edge (the image border is no edge).

    The mean of the mask eroded 0, 1, ..., feather-1 times is a linear ramp: 1/feather on the outermost
    pixel of the region, 1 from ``feather`` pixels inside. Soft masks keep their values as a ceiling.
    """
    if feather <= 0:
        return mask
    batched = mask.reshape(-1, 1, *mask.shape[-2:])
    eroded, total = batched, torch.zeros_like(batched)
    for step in range(feather):
        total = total + eroded
        following = -F.max_pool2d(-eroded, kernel_size=3, stride=1, padding=1)  # padding is -inf: border ignored
        if torch.equal(following, eroded):  # nothing left to erode (a feather wider than the region): every
            total = total + eroded * (feather - step - 1)  # remaining step adds the same mask again
            break
        eroded = following
    return (total / feather).view(mask.shape)


def place_flow(flow: torch.Tensor, box: PixelBox, size: tuple[int, int]) -> torch.Tensor:
    """Paste a flow fitted to ``box``'s size into a zero-motion canvas of ``size`` = (height, width)."""
    x0, y0, x1, y1 = box
    if flow.shape[-2:] != (y1 - y0, x1 - x0):
        raise ValueError(f"flow of size {tuple(flow.shape[-2:])} does not fit box {box}")
    height, width = size
    return F.pad(flow, (x0, width - x1, y0, height - y1))


def region_weight(size: tuple[int, int], box: PixelBox, mask: torch.Tensor | None, feather: int) -> torch.Tensor:
    """``(1, H, W)`` weight of the motion: the box (or the mask, when given), feathered at its edge."""
    if mask is None:
        weight = place_flow(torch.ones(1, box[3] - box[1], box[2] - box[0]), box, size)
    else:
        weight = mask.float()
    return feather_mask(weight, feather)


def align_flow(
    flow: torch.Tensor,
    size: tuple[int, int],
    *,
    fit: str = "cover",
    region: Sequence[float] | None = None,
    region_mask: torch.Tensor | None = None,
    source_region: Sequence[float] | None = None,
    spatial_sigma: float = 0.0,
    feather: int = 0,
    strength: float = 1.0,
) -> torch.Tensor:
    """One driving flow ``(..., 2, h, w)`` → the target flow ``(..., 2, H, W)`` for an image of ``size``.

    The motion goes into ``region_mask`` ``(1, H, W)`` (a mask image) when given, else into the box
    ``region`` (pixels or fractions), else onto the whole image; it is taken from the box ``source_region``
    of the driving frame (default: all of it). The ``[align]`` settings name the other parameters.
    """
    height, width = size
    taken = (0, 0, flow.shape[-1], flow.shape[-2])
    if source_region is not None:
        taken = source_box(source_region, *flow.shape[-2:])
    if region_mask is not None:
        box = mask_box(region_mask)
    elif region is not None:
        box = pixel_box(region, height, width)
    else:
        box = (0, 0, width, height)
    fitted = fit_flow(crop_flow(flow, taken), (box[3] - box[1], box[2] - box[0]), fit)
    placed = place_flow(smooth_flow(fitted, spatial_sigma), box, size)
    weight = region_weight(size, box, region_mask, feather).to(placed)
    return scale_motion(restrict(placed, weight), strength)


def smooth_over_time(flows: torch.Tensor, method: str, amount: float) -> torch.Tensor:
    """Smooth a clip's flows ``(T, 2, H, W)`` over time; frame 0 (the reference, zero motion) is kept.

    ``ema``: ``s_t = amount * s_(t-1) + (1 - amount) * f_t`` from ``s_1 = f_1`` (causal, lags slightly).
    ``gaussian``: a Gaussian of sigma ``amount`` frames over frames 1..T-1, ends repeated (no lag).
    """
    if method == "none" or amount == 0 or flows.shape[0] < 3:
        return flows
    moving = flows[1:]
    if method == "ema":
        smoothed = [moving[0]]
        for flow in moving[1:]:
            smoothed.append(amount * smoothed[-1] + (1 - amount) * flow)
        moving = torch.stack(smoothed)
    elif method == "gaussian":
        moving = gaussian_blur(moving, amount, axes=(0,))
    else:
        raise ValueError(f"temporal smoothing must be one of {TEMPORAL}, got {method!r}")
    return torch.cat((flows[:1], moving))


def motion_mask(flow: torch.Tensor, threshold: float = 0.5, margin: int = 8) -> torch.Tensor:
    """The edit mask of a flow: ``(B, 1, H, W)``, 1 where guidance may change the image.

    A pixel is in it when it moves more than ``threshold`` px, or when a moving pixel lands on it (the
    up to four pixels around each destination, so stretching motion leaves no holes); then the mask is dilated by
    ``margin`` px so the edit can blend into the copied background.
    """
    batched = as_flow_batch(flow)
    batch, _, height, width = batched.shape
    moving = batched.norm(dim=1) > threshold
    landed = torch.zeros(batch, height * width, dtype=batched.dtype, device=batched.device)
    destination = pixel_grid(height, width, device=batched.device, dtype=batched.dtype) + batched
    for x in (destination[:, 0].floor(), destination[:, 0].ceil()):
        for y in (destination[:, 1].floor(), destination[:, 1].ceil()):
            hits = moving & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
            index = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).long().flatten(1)
            landed = landed.scatter_add(1, index, hits.flatten(1).to(batched.dtype))
    mask = (moving | (landed.view(batch, height, width) > 0)).to(batched.dtype)[:, None]
    margin = min(margin, max(height, width))  # a wider margin covers no more of the image, only costs memory
    if margin > 0:
        mask = F.max_pool2d(mask, kernel_size=2 * margin + 1, stride=1, padding=margin)
    return mask
