"""Evaluation metrics of motion-guided edits, as functions over tensors.

- fidelity: end-point error between the flow measured by the judge and the target flow, inside the edit
  mask and overall, plus the share of pixels within 1 px. Only pixels that stay visible under the target
  motion count (``occlusion_mask``): a pixel that is covered or leaves the frame has nothing to match.
- preservation: PSNR and SSIM (scikit-image) between source and result outside the edit mask.
- temporal consistency: the flow-warping error between consecutive results. Both results are warped back
  onto the source grid by their own target flow, which chains "result t back to t-1 with the target motion
  between them" without inverting any flow; pixels occluded in either frame are excluded. The same figure
  for the naive baseline (the source splatted forward by each target flow) gives the number a reference.

Images are ``(3, H, W)`` in [0, 1], flows ``(2, H, W)`` in pixels, masks ``(1, H, W)`` or ``(H, W)`` with 1
= editable. Figures are plain floats (``None`` where no pixel qualifies, ``inf`` for an identical PSNR).
"""

from __future__ import annotations

import math

import torch
from skimage.metrics import structural_similarity

from mtransfer.flows import occlusion_mask, splat_image, warp

WITHIN_PX = 1.0


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """An ``(H, W)`` boolean mask (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(like.shape[-2:], dtype=torch.bool, device=like.device)
    return mask.reshape(like.shape[-2:]).to(like.device) > 0.5


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def end_point_error(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean distance between two flows, ``(..., H, W)``."""
    return (flow - target).norm(dim=-3)


def fidelity(measured: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor | None = None) -> dict:
    """EPE of the measured flow against the target inside the edit mask and overall, and the share within 1 px."""
    error = end_point_error(measured.float().cpu(), target.float().cpu())
    visible = occlusion_mask(target.float().cpu())[0, 0] > 0
    inside = visible & _mask(None if edit_mask is None else edit_mask.cpu(), error)
    return {
        "epe_edit": _mean(error[inside]),
        "epe_all": _mean(error[visible]),
        "within_1px_edit": _mean((error[inside] <= WITHIN_PX).float()),
        "within_1px_all": _mean((error[visible] <= WITHIN_PX).float()),
    }


def preservation(source: torch.Tensor, result: torch.Tensor, edit_mask: torch.Tensor | None) -> dict:
    """PSNR (dB, data range 1) and mean SSIM between source and result over the pixels outside the edit mask."""
    outside = ~_mask(edit_mask, source).cpu().numpy()  # no mask: everything is editable, nothing outside
    src = source.float().cpu().permute(1, 2, 0).numpy()
    res = result.float().cpu().permute(1, 2, 0).numpy()
    if not outside.any():
        return {"psnr": None, "ssim": None}
    mse = float(((src - res) ** 2)[outside].mean())
    # SSIM's usual 7x7 window, narrowed on images thinner than that; none below 3 px (no structure to compare)
    window = min(7, min(src.shape[:2]) - (1 - min(src.shape[:2]) % 2))
    ssim = None
    if window >= 3:
        _, ssim_map = structural_similarity(src, res, data_range=1.0, channel_axis=2, full=True, win_size=window)
        ssim = float(ssim_map.mean(axis=2)[outside].mean())
    return {
        "psnr": math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
        "ssim": ssim,
    }


def warping_error(
    previous: torch.Tensor, current: torch.Tensor, previous_target: torch.Tensor, current_target: torch.Tensor
) -> float | None:
    """Mean |colour difference| between two consecutive results brought onto the source grid by their targets.

    A source pixel ``p`` shows at ``p + T(p)`` in each result; where both results show it, they should show
    the same colour. ``None`` when no pixel is visible in both.
    """
    targets = torch.stack((previous_target, current_target)).float().cpu()
    back = warp(torch.stack((previous, current)).float().cpu(), targets)
    visible = (occlusion_mask(targets) > 0).all(0)[0]
    return _mean((back[1] - back[0]).abs().mean(0)[visible])


def temporal_consistency(results: torch.Tensor, targets: torch.Tensor, source: torch.Tensor) -> dict:
    """Warping error of each consecutive pair of ``results`` (N, 3, H, W) and of the naive baseline.

    ``targets`` (N, 2, H, W) are the target flows from ``source`` to each frame. The baseline is the
    source splatted forward by each target: a perfectly consistent but crude motion.
    """
    baseline = splat_image(source.float().cpu()[None].expand(len(targets), -1, -1, -1), targets.float().cpu())
    pairs = range(1, len(results))
    return {
        "warping_error": [warping_error(results[i - 1], results[i], targets[i - 1], targets[i]) for i in pairs],
        "baseline_warping_error": [warping_error(baseline[i - 1], baseline[i], targets[i - 1], targets[i]) for i in pairs],
    }
