"""The exact model (``model.model = "exact"``, ``ExactBackend``): a diffusion model with an exact denoiser
whose data set is a finite list of images (the ``model.family_*`` settings choose them: ``motion_family``).

With a uniform prior over images ``x_1..x_N`` (pixels scaled to [-1, 1]) the noisy marginal is a Gaussian
mixture, so the optimal noise prediction has a closed form: the posterior mean ``E[x0 | z_t]`` is a softmax-
weighted average of the images, and ``eps = (z_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)``. Plugged into the
same samplers as Stable Diffusion, it gives an offline, weight-free model whose "knowledge" is exactly the
set, e.g. one picture under many motions (``motion_family``): guidance can then only succeed by choosing
the member that moves the right way, which makes its behaviour easy to check.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from mtransfer.errors import UsageError
from mtransfer.flows.elementary import homography
from mtransfer.flows.warp import warp


class ExactBackend:
    """``DiffusionBackend`` over ``images`` ``(N, 3, H, W)`` in [0, 1]; latents are the pixels in [-1, 1].

    ``alphas_cumprod`` defaults to the SD v1 training schedule with its noisy end stretched
    (``family_schedule``) so that the first step cannot yet tell the images apart.
    """

    batch_invariant = True  # an item's arithmetic does not depend on the batch (tests/test_batches.py)

    def __init__(self, images: torch.Tensor, alphas_cumprod: torch.Tensor | None = None) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be (N, 3, H, W) with N >= 1, got {tuple(images.shape)}")
        self.device = images.device
        self.dtype = images.dtype
        self.image_size = tuple(images.shape[-2:])
        self.images = images
        # float64 for the mixture weights: at low noise the logits are distances divided by ~1e-3, and
        # float32 rounding of those would flip which image wins.
        self._points = (images * 2 - 1).flatten(1).double()
        self._half_sq_norms = self._points.square().sum(1) / 2
        if alphas_cumprod is None:
            from mtransfer.diffusion.stable_diffusion import sd_alphas_cumprod

            alphas_cumprod = family_schedule(self._points, sd_alphas_cumprod())
        self.alphas_cumprod = alphas_cumprod

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]:
        if (height, width) != self.image_size:
            h, w = self.image_size
            raise UsageError(f"the exact model only makes {h}x{w} images, not {height}x{width}; use size {h}x{w}")
        return 3, height, width

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.latent_size(*images.shape[-2:])
        return images.to(self.device, self.dtype) * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / 2 + 0.5

    def condition(self, prompts: list[str]) -> torch.Tensor:
        """A placeholder batch: the set has no text conditioning, but samplers batch it like SD's."""
        return torch.zeros(len(prompts), 1, device=self.device, dtype=self.dtype)

    def posterior_mean(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """``E[x0 | z_t]`` in latent units ([-1, 1]), differentiable in ``z``."""
        a = float(self.alphas_cumprod[int(t)])
        flat = z.flatten(1).double()
        # -|z - sqrt(a) x|^2 / (2 (1 - a)) without the |z|^2 term, which every image shares.
        logits = (math.sqrt(a) * flat @ self._points.T - a * self._half_sq_norms) / (1 - a)
        weights = torch.softmax(logits, dim=1)
        return (weights @ self._points).to(z.dtype).view_as(z)

    def eps(self, z: torch.Tensor, t: int, cond: torch.Tensor | None = None) -> torch.Tensor:
        a = float(self.alphas_cumprod[int(t)])
        return (z - math.sqrt(a) * self.posterior_mean(z, t)) / math.sqrt(1 - a)


def family_schedule(points: torch.Tensor, base: torch.Tensor, first_step_gap: float = 1.0) -> torch.Tensor:
    """``base`` alpha bars with the noisy end stretched until the first step cannot tell ``points`` apart.

    Given ``z_t`` near member ``i``, member ``j``'s log-posterior trails by about
    ``SNR(t) |x_i - x_j|^2 / 2``. Whole images are far apart (a 1 px shift of a textured 96x128 picture
    is ~2,400 in squared [-1, 1] units), so under SD's schedule, whose noisiest level has SNR 0.0047,
    the exact posterior has already chosen the unmoved source before the first step and its Jacobian
    (``sqrt(a)/(1-a)`` times the posterior covariance) leaves guidance nothing to act on. Here the log
    SNR is lowered linearly in ``t`` (unchanged at ``t = 0``, so samples still end clean) until the
    widest gap in the set is ``first_step_gap`` at the last timestep; the family then separates
    coarse-to-fine during the run. ``points`` ``(N, D)`` in [-1, 1]; ``base`` ``(T,)``.
    """
    centre = points.mean(0)
    widest = 4 * float((points - centre).square().sum(1).max())  # bounds every pairwise squared distance
    log_snr = (base / (1 - base)).double().log()
    wanted = math.log(2 * first_step_gap / widest) if widest > 0 else float(log_snr[-1])
    lowering = min(0.0, wanted - float(log_snr[-1]))
    log_snr = log_snr + lowering * torch.linspace(0, 1, len(base), dtype=torch.float64)
    return torch.sigmoid(log_snr).to(base.dtype)


def motion_family(
    image: torch.Tensor,
    translations: Sequence[tuple[float, float]] | None = None,
    rotations: Sequence[float] = (0.0,),
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """``image`` ``(3, H, W)`` moved by every combination of the given motions → ``(N, 3, H, W)``.

    Each member is the image zoomed by ``s`` and turned by ``degrees`` (counter-clockwise on screen)
    about its centre, then shifted by ``(dx, dy)`` pixels; members are ordered as
    ``itertools.product(scales, rotations, translations)``. Content arriving from outside the frame
    repeats the nearest edge pixel: a black band would be a still edge inside every moved member, which
    a flow estimator reads as no motion and spreads over flat regions (sky, background), so that a 1 px
    neighbour of the requested member can score a lower flow loss than the member itself and guidance
    lands on it. ``translations`` defaults to a 5x5 grid of shifts spaced 1/16 of the smaller side.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if translations is None:
        step = max(1, round(min(height, width) / 16))
        translations = [(dx * step, dy * step) for dy in range(-2, 3) for dx in range(-2, 3)]
    moved = []
    for scale, degrees, (dx, dy) in itertools.product(scales, rotations, translations):
        # The inverse map, exact for every pixel: backward warping by it renders the forward motion.
        inverse = torch.linalg.inv(similarity_matrix(height, width, scale, degrees, dx, dy))
        flow = homography(height, width, inverse, device=image.device, dtype=image.dtype)
        moved.append(warp(image, flow, padding_mode="border"))
    return torch.stack(moved)


def similarity_matrix(height: int, width: int, scale: float, degrees: float, dx: float, dy: float) -> torch.Tensor:
    """3x3 matrix of p -> c + scale * R(degrees) (p - c) + (dx, dy), rotation as in ``flows.elementary``:
    the forward motion of the ``motion_family`` member ``(scale, degrees, (dx, dy))``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    linear = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64) * scale
    centre = torch.tensor([cx, cy], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + torch.tensor([dx, dy], dtype=torch.float64)
    return matrix
