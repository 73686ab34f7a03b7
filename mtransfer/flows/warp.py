"""Backward warping and the occlusion masks of a flow (convention: see ``mtransfer.flows``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates as a ``(2, H, W)`` tensor: channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys))


def as_flow_batch(flow: torch.Tensor) -> torch.Tensor:
    """A flow as ``(B, 2, H, W)`` (a single ``(2, H, W)`` flow becomes a batch of one); other shapes fail."""
    if flow.dim() == 3:
        flow = flow[None]
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"a flow must be (2, H, W) or (B, 2, H, W), got {tuple(flow.shape)}")
    return flow


def sample_at(image: torch.Tensor, positions: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinearly sample ``image`` (B, C, H, W) at pixel ``positions`` (B, 2, H', W') given as (x, y).

    Positions are normalised as ``-1 + 2 p / (size - 1)``, the very float operations of the authors' code,
    so that sampling (and the reference occlusion mask built from it) matches theirs bit for bit.
    """
    height, width = image.shape[-2:]
    x = -1.0 + 2.0 * positions[:, 0] / max(width - 1, 1)
    y = -1.0 + 2.0 * positions[:, 1] / max(height - 1, 1)
    grid = torch.stack((x, y), dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp ``image`` onto the flow's source grid: ``out(p) = image(p + flow(p))``.

    With ``flow`` the motion from a source to ``image``, the result looks like the source wherever the
    motion is right; this is what the colour loss compares. Differentiable in both arguments.
    """
    squeeze = image.dim() == 3
    image = image[None] if squeeze else image
    flow = as_flow_batch(flow)
    if flow.shape[0] == 1 and image.shape[0] > 1:
        flow = flow.expand(image.shape[0], -1, -1, -1)
    grid = pixel_grid(*flow.shape[-2:], device=flow.device, dtype=flow.dtype)
    out = sample_at(image, grid + flow, padding_mode)
    return out[0] if squeeze else out


def _destination_index(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest destination pixel index of each source pixel and whether it lands inside the frame."""
    height, width = flow.shape[-2:]
    dest = (pixel_grid(height, width, device=flow.device, dtype=flow.dtype) + flow).round()
    inside = (dest[:, 0] >= 0) & (dest[:, 0] <= width - 1) & (dest[:, 1] >= 0) & (dest[:, 1] <= height - 1)
    x = dest[:, 0].clamp(0, width - 1).long()
    y = dest[:, 1].clamp(0, height - 1).long()
    return (y * width + x).flatten(1), inside.flatten(1)


@torch.no_grad()
def reference_occlusion_mask(flow: torch.Tensor) -> torch.Tensor:
    """The authors' colour-loss mask (Geng & Owens' ``losses.py``): ``(B, 1, H, W)``, 1 = compared.

    The target flow is backward-warped by itself (bilinear, reflection padding); the warped values that
    differ from the unwarped ones are summed, and every pixel that sum depends on (non-zero gradient with
    respect to the flow) is hidden, unless its own flow is non-zero. So only still pixels under or next
    to where moving pixels land are hidden; moving pixels, even those leaving the frame, are always
    compared. Built with autograd like the original, so it has the same float behaviour at every size.
    """
    flow = as_flow_batch(flow).detach()
    with torch.enable_grad():
        values = flow.clone().requires_grad_(True)
        warped = warp(values, values, padding_mode="reflection")
        changed = warped != values
        (gradient,) = torch.autograd.grad((warped * changed).sum(), values)
    reached = gradient.abs().sum(1, keepdim=True) != 0
    still = flow.abs().sum(1, keepdim=True) == 0
    return (~(reached & still)).to(flow.dtype)


@torch.no_grad()
def occlusion_mask(flow: torch.Tensor, tolerance: float = 0.5) -> torch.Tensor:
    """Where source pixels stay visible after the motion: ``(B, 1, H, W)`` on the source grid, 1 = visible.

    mtransfer's forward-splatting rule (``guidance.occlusion = "splat"``); ``reference_occlusion_mask`` is
    the authors' rule.

    A source pixel is hidden when it leaves the frame, or when it lands on a pixel that a faster-moving
    source pixel also lands on (moving content is assumed to pass in front of slower content). These are
    the pixels the colour loss must ignore: the edit legitimately shows something else there.
    """
    flow = as_flow_batch(flow)
    batch, _, height, width = flow.shape
    index, inside = _destination_index(flow)
    speed = flow.norm(dim=1).flatten(1)
    fastest = torch.full((batch, height * width), -1.0, device=flow.device, dtype=flow.dtype)
    fastest = fastest.scatter_reduce(1, index, torch.where(inside, speed, -1.0), reduce="amax")
    covered = fastest.gather(1, index) > speed + tolerance
    return (inside & ~covered).to(flow.dtype).view(batch, 1, height, width)


@torch.no_grad()
def splat_image(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Carry ``image`` (B, C, H, W) forward by ``flow`` by splatting each pixel onto its nearest destination.

    Unlike ``ops.move_image`` it needs no inverse flow, so it stays right for discontinuous motions such
    as one object moved far across a still background (inverting those from the destination side finds
    the background's zero motion instead). Where pixels collide the fastest win (moving content passes in
    front, as in ``occlusion_mask``); destinations nobody lands on take the nearest landed pixel.
    """
    from scipy import ndimage  # comes with scikit-image; imported here to keep ``mtransfer.flows`` light

    flow = as_flow_batch(flow)
    batch, channels, height, width = image.shape
    index, inside = _destination_index(flow)
    weights = (inside & (occlusion_mask(flow).flatten(1) > 0)).to(image.dtype).expand(batch, -1)
    index = index.expand(batch, -1)
    sums = image.new_zeros(batch, channels, height * width).scatter_add(
        2, index[:, None].expand(-1, channels, -1), image.flatten(2) * weights[:, None]
    )
    counts = image.new_zeros(batch, height * width).scatter_add(1, index, weights)
    moved = (sums / counts.clamp_min(1)[:, None]).view(batch, channels, height, width)
    holes = (counts == 0).view(batch, height, width).cpu().numpy()
    filled = []
    for picture, hole in zip(moved, holes):
        if hole.all() or not hole.any():
            filled.append(picture)
            continue
        _, (rows, cols) = ndimage.distance_transform_edt(hole, return_indices=True)
        filled.append(picture[:, torch.from_numpy(rows), torch.from_numpy(cols)])
    return torch.stack(filled)
