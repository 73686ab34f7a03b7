"""Pictures of flows: the Middlebury colour coding, its legend, arrows drawn over an image, and error heat maps.

Colour coding (Baker et al., "A Database and Evaluation Methodology for Optical Flow", ICCV 2007):
hue gives the direction, saturation the speed relative to ``max_magnitude``; no motion is white.
Right is red, down is yellow-orange, left is cyan and up is blue-violet (y points down).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from mtransfer.files import to_uint8
from mtransfer.flows.warp import as_flow_batch, pixel_grid

# Hue segments of the Middlebury wheel: (steps, start colour, end colour), going red → yellow → green
# → cyan → blue → magenta → back to red; step counts follow the perceptual spacing of the original.
_WHEEL_SEGMENTS = (
    (15, (1, 0, 0), (1, 1, 0)),
    (6, (1, 1, 0), (0, 1, 0)),
    (4, (0, 1, 0), (0, 1, 1)),
    (11, (0, 1, 1), (0, 0, 1)),
    (13, (0, 0, 1), (1, 0, 1)),
    (6, (1, 0, 1), (1, 0, 0)),
)


def _wheel(device: torch.device) -> torch.Tensor:
    """The 55 colours of the wheel as ``(55, 3)`` in [0, 1], quantised to 8 bits like the reference code."""
    colours = []
    for steps, start, end in _WHEEL_SEGMENTS:
        t = torch.floor(255 * torch.arange(steps, dtype=torch.float64) / steps)[:, None] / 255
        colours.append(torch.tensor(start) * (1 - t) + torch.tensor(end) * t)
    return torch.cat(colours).float().to(device)


def flow_to_color(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Colour-code a flow ``(2, H, W)`` or ``(B, 2, H, W)`` as an image ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1].

    ``max_magnitude`` (pixels) is the speed drawn fully saturated; give the same value to every frame
    of a video so colours compare across frames. By default it is the largest speed in the input, the
    whole batch included. Faster motion than ``max_magnitude`` is drawn in darkened colours.
    """
    batched = as_flow_batch(flow).detach().float()
    speed = batched.norm(dim=1)
    if max_magnitude is None:
        max_magnitude = float(speed.max()) if speed.numel() else 0.0
    if max_magnitude < 0:
        raise ValueError(f"max_magnitude must be non-negative, got {max_magnitude}")
    wheel = _wheel(batched.device)
    radius = speed / (max_magnitude + torch.finfo(torch.float32).eps)
    position = (torch.atan2(-batched[:, 1], -batched[:, 0]) / math.pi + 1) / 2 * (len(wheel) - 1)
    lower = position.floor().long()
    frac = (position - lower)[..., None]
    colour = (1 - frac) * wheel[lower] + frac * wheel[(lower + 1) % len(wheel)]
    radius = radius[..., None]
    colour = torch.where(radius <= 1, 1 - radius * (1 - colour), colour * 0.75)
    image = colour.permute(0, 3, 1, 2)
    return image[0] if flow.dim() == 3 else image


def color_wheel(size: int = 128) -> torch.Tensor:
    """A ``(3, size, size)`` legend: the colour of each direction and speed, white outside the disc."""
    half = (size - 1) / 2
    offsets = pixel_grid(size, size) - half
    image = flow_to_color(offsets, max_magnitude=max(half, 1e-6))
    return torch.where(offsets.norm(dim=0) <= half, image, torch.ones(()))


# Colour stops of the flow-error heat map (dark = right on target, bright = far off), sampled from the
# perceptually uniform "inferno" colour map; the report draws its colour bar from the same stops.
HEAT_STOPS = ((0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
              (250, 193, 39), (252, 255, 164))


def error_to_color(error: torch.Tensor, max_error: float) -> torch.Tensor:
    """Heat map ``(3, H, W)`` in [0, 1] of a per-pixel error ``(H, W)`` or ``(1, H, W)`` (e.g. px of flow).

    ``max_error`` maps to the brightest colour and larger errors are clipped to it; give every frame of
    a clip the same value so the maps compare.
    """
    if max_error <= 0:
        raise ValueError(f"max_error must be positive, got {max_error}")
    error = error.detach().float().reshape(error.shape[-2:])
    stops = torch.tensor(HEAT_STOPS, dtype=torch.float32, device=error.device) / 255
    position = (error / max_error).clamp(0, 1) * (len(stops) - 1)
    lower = position.floor().long().clamp(max=len(stops) - 2)
    frac = (position - lower)[..., None]
    colour = (1 - frac) * stops[lower] + frac * stops[lower + 1]
    return colour.permute(2, 0, 1)


def error_scale(errors: list[torch.Tensor], max_motion: float) -> float:
    """The error (px) drawn brightest in the heat maps of a clip: the largest target motion, or the largest
    per-frame 99th percentile of the errors when that is higher, so a far-off result still shows where it
    is worst instead of one flat colour. 1 px when both are zero."""
    worst = max((float(torch.quantile(e.detach().float().flatten(), 0.99)) for e in errors if e.numel()), default=0.0)
    return max(max_motion, worst) or 1.0


def quiver_overlay(
    image: torch.Tensor,
    flow: torch.Tensor,
    step: int = 16,
    color: tuple[float, float, float] = (1.0, 0.15, 0.1),
    scale: float = 1.0,
) -> torch.Tensor:
    """Draw the flow as arrows over ``image`` ``(3, H, W)`` in [0, 1], one every ``step`` pixels.

    Each arrow starts at a source pixel and ends where that pixel goes (times ``scale``, to make small
    motions visible). Batches ``(B, 3, H, W)`` with ``(B, 2, H, W)`` flows are drawn frame by frame.
    """
    if image.dim() == 4:
        flows = as_flow_batch(flow).expand(image.shape[0], -1, -1, -1)
        return torch.stack([quiver_overlay(i, f, step, color, scale) for i, f in zip(image, flows)])
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image size {tuple(image.shape[-2:])} does not match flow size {tuple(flow.shape[-2:])}")
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    flow = as_flow_batch(flow)[0].detach().float().cpu() * scale
    height, width = flow.shape[-2:]
    canvas = Image.fromarray(to_uint8(image))
    draw = ImageDraw.Draw(canvas)
    fill = tuple(int(round(255 * c)) for c in color)
    line_width = max(1, round(min(height, width) / 256))
    for y in range(step // 2, height, step):
        for x in range(step // 2, width, step):
            u, v = flow[:, y, x].tolist()
            _arrow(draw, x, y, x + u, y + v, fill, line_width, head=max(3.0, step / 4))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1).to(image.device)


def _arrow(draw: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill, width: int, head: float):
    """A shaft from (x0, y0) to (x1, y1) with two barbs; a dot where the motion is under half a pixel."""
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 0.5:
        draw.point((x0, y0), fill=fill)
        return
    draw.line((x0, y0, x1, y1), fill=fill, width=width)
    barb = min(head, 0.4 * length)
    back = math.atan2(y0 - y1, x0 - x1)
    for side in (-0.45, 0.45):
        tip = (x1 + barb * math.cos(back + side), y1 + barb * math.sin(back + side))
        draw.line((x1, y1, *tip), fill=fill, width=width)
