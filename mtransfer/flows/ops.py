"""Operations on flow fields: chaining, mixing, masking, resizing, inverting, and moving images by them.

Flows are ``(2, H, W)`` or ``(B, 2, H, W)`` (convention: see ``mtransfer.flows``); where two flows meet,
a batch of one broadcasts against a batch of many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mtransfer.flows.warp import as_flow_batch, pixel_grid, sample_at, warp


def _like_input(result: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """Drop the batch axis again when every input came without one."""
    return result[0] if all(x.dim() == 3 for x in inputs) else result


def _follow(field: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``field(p + flow(p))`` for batched tensors; positions off the grid read the nearest border value."""
    batch = max(field.shape[0], flow.shape[0])
    field, flow = field.expand(batch, -1, -1, -1), flow.expand(batch, -1, -1, -1)
    grid = pixel_grid(*flow.shape[-2:], device=flow.device, dtype=flow.dtype)
    return sample_at(field, grid + flow, padding_mode="border")


def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The flow of moving by ``first`` and then by ``then``: ``c(p) = a(p) + b(p + a(p))``.

    ``then`` lives on the grid where ``first`` lands, so it is sampled (bilinearly) at the moved
    positions; adding the two fields instead is only right when ``then`` is constant.
    """
    a, b = as_flow_batch(first), as_flow_batch(then)
    return _like_input(a + _follow(b, a), first, then)


def blend(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Per-pixel linear interpolation ``a + t (b - a)``; ``t`` may be a number or a broadcastable map."""
    return torch.lerp(a, b, torch.as_tensor(t, device=a.device, dtype=a.dtype))


def scale_motion(flow: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """Scale every displacement by ``strength``.

    This shortens the straight path of each pixel, which is what an energy on flows sees; it is not the
    same map as a smaller motion of the same kind (half a rotation's chord is not half its arc).
    """
    return flow * strength


def restrict(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the motion where ``mask`` is 1, remove it where 0, scale it in between (soft masks).

    ``mask`` is ``(H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` with values in [0, 1].
    """
    if mask.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"mask of size {tuple(mask.shape[-2:])} does not match flow of size {tuple(flow.shape[-2:])}")
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError("mask values must lie in [0, 1]")
    if mask.dim() == 2:
        mask = mask[None]
    return flow * mask.to(flow.dtype)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample the field to ``size = (height, width)`` and rescale its vectors to the new pixel units.

    Pixel areas map onto pixel areas (``align_corners=False``), so a motion of the whole picture keeps
    its meaning: ``u`` is multiplied by ``w / W`` and ``v`` by ``h / H``. Shrinking is antialiased.
    """
    height, width = flow.shape[-2:]
    new_height, new_width = size
    batched = as_flow_batch(flow)
    shrinking = new_height < height or new_width < width
    resized = F.interpolate(
        batched, size=(new_height, new_width), mode="bilinear", align_corners=False, antialias=shrinking
    )
    factors = torch.tensor([new_width / width, new_height / height], device=flow.device, dtype=flow.dtype)
    return _like_input(resized * factors.view(1, 2, 1, 1), flow)


def invert(flow: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """The flow ``g`` on the destination grid that undoes ``flow``: ``g(y) = -flow(y + g(y))``.

    The plain fixed-point iteration ``g <- -flow(y + g)`` only converges while the motion stretches
    the image by less than a factor of 2 in every direction (it fails for rotations beyond 60 degrees),
    so each step is a Newton step on ``x + flow(x) = y`` using the flow's finite-difference Jacobian;
    where the map folds or nearly collapses (Jacobian determinant below 0.05, e.g. at motion
    boundaries of estimated flows) the bounded fixed-point step is taken instead. Destinations that
    no pixel reaches get the border's motion.
    """
    f = as_flow_batch(flow)
    du_dy, du_dx = torch.gradient(f[:, 0], dim=(-2, -1))
    dv_dy, dv_dx = torch.gradient(f[:, 1], dim=(-2, -1))
    fields = torch.cat((f, torch.stack((du_dx, du_dy, dv_dx, dv_dy), 1)), 1)
    g = -f
    for _ in range(iterations):
        at_source = _follow(fields, g)
        residual = g + at_source[:, :2]  # x + f(x) - y with x = y + g
        a, b, c, d = 1 + at_source[:, 2], at_source[:, 3], at_source[:, 4], 1 + at_source[:, 5]
        det = a * d - b * c
        safe_det = torch.where(det > 0.05, det, 1.0)
        newton = torch.stack((d * residual[:, 0] - b * residual[:, 1], a * residual[:, 1] - c * residual[:, 0]), 1)
        g = g - torch.where((det > 0.05)[:, None], newton / safe_det[:, None], residual)
    return _like_input(g, flow)


def move_image(image: torch.Tensor, flow: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Render ``image`` with its content carried forward by ``flow`` (what the video would show next).

    A forward splat leaves holes; backward-warping by the inverse flow fills every destination pixel.
    Pixels that come from outside the frame are black.
    """
    return warp(image, invert(flow, iterations))


MATRIX_BLUR_MAX = 512
"""Axes up to this many samples are blurred by one matrix product, longer ones by a sum of shifted copies."""


def gaussian_blur(values: torch.Tensor, sigma: float, axes: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Separable Gaussian blur of any tensor along ``axes`` (sigma in samples, radius ``ceil(3 sigma)``),
    edge values repeated.

    The one blur of mtransfer: flows over space, flows over time, and the images and products inside
    the pyramid estimator. Differentiable; ``sigma <= 0`` returns ``values`` unchanged. Not a 1-channel
    ``conv1d``: on a CPU its backward pass on such shapes took 10-50x longer and was most of a guided
    pass in the exact world. An axis of ``MATRIX_BLUR_MAX`` samples or fewer is one product with the
    banded blur matrix (edges folded in); a longer one, a weighted sum of shifted copies, whose cost
    does not grow with the length. Both run in the tensor's own dtype, autocast included.
    """
    if sigma <= 0:
        return values
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    for axis in axes:
        if values.shape[axis] <= MATRIX_BLUR_MAX:
            values = _blur_by_matrix(values, kernel, axis)
        else:
            values = _blur_by_shifts(values, kernel, axis)
    return values


def _blur_by_matrix(values: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    length, radius = values.shape[axis], len(kernel) // 2
    rows = torch.arange(length).unsqueeze(1).expand(length, len(kernel))
    taps = (rows + torch.arange(-radius, radius + 1)).clamp(0, length - 1)  # repeated edges
    matrix = torch.zeros(length, length, dtype=torch.float64)
    matrix.index_put_((rows, taps), kernel.expand(length, -1), accumulate=True)
    matrix = matrix.to(values.device, values.dtype)
    return (values.movedim(axis, -1) @ matrix.T).movedim(-1, axis)


def _blur_by_shifts(values: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    length, radius = values.shape[axis], len(kernel) // 2
    repeated_edges = torch.arange(-radius, length + radius, device=values.device).clamp(0, length - 1)
    padded = values.index_select(axis, repeated_edges)
    weights = kernel.tolist()
    blurred = padded.narrow(axis, 0, length) * weights[0]
    for shift in range(1, len(weights)):
        blurred = blurred + padded.narrow(axis, shift, length) * weights[shift]
    return blurred
