"""The small interface the guidance sampler needs from a diffusion model.

A backend owns a latent space and a noise predictor; samplers own the loop (classifier-free guidance,
guidance gradients, recursion). Two implementations: ``StableDiffusionBackend`` (real or tiny random SD
1.x/2.x) and ``ExactBackend`` (an exact denoiser over a handful of images, for offline demos and tests).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class DiffusionBackend(Protocol):
    """A diffusion model that gives noise (eps) estimates, with a differentiable decoder.

    A model trained for another target (SD 2.x predicts v) converts inside ``eps``, so samplers see one form.

    - ``alphas_cumprod``: 1-D tensor of the training schedule's alpha bars (1000 entries for SD v1).
    - ``latent_size(height, width)``: ``(C, h, w)`` of the latent of an image of that size.
    - ``encode(images)``: ``(B, 3, H, W)`` in [0, 1] → latents, deterministically (no posterior sampling).
    - ``decode(latents)``: latents → ``(B, 3, H, W)``, nominally in [0, 1] but NOT clamped (decoders
      overshoot a little), differentiable. The guidance energy decides whether to clamp
      (``GuidanceSettings.clamp``, ``straight_through_clamp``); pictures are clamped where they are made.
    - ``condition(prompts)``: one conditioning tensor per prompt, batched along dim 0.
    - ``eps(z, t, cond)``: one denoiser call at training timestep ``t``; no classifier-free guidance here.
    - ``batch_invariant`` (optional, False when absent): True when an item's result is bit for bit the same
      whatever else is in its batch. Only then are several edits run through the model as one batch.
    """

    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def condition(self, prompts: list[str]) -> torch.Tensor: ...

    def eps(self, z: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor: ...


def straight_through_clamp(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass but pass gradients through unchanged.

    Decoders overshoot [0, 1] a little. A plain clamp would zero the guidance gradient on every
    saturated pixel (often whole highlights), so the values are clamped and the gradient is not.
    """
    return images + (images.clamp(0, 1) - images).detach()


SD_SIZE_MULTIPLE = 8
"""Stable Diffusion v1's VAE turns each 8x8 block of pixels into one latent cell, so image sides must be
multiples of 8 (its UNet takes any latent size). The one home of this rule: settings, ``run``'s input
check and the benchmark read it; the loaded model checks its own factor in ``latent_size``."""


def sd_size_fix(height: int, width: int) -> tuple[int, int] | None:
    """The nearest smaller size Stable Diffusion accepts, or None when ``height`` x ``width`` is fine."""
    if height % SD_SIZE_MULTIPLE == 0 and width % SD_SIZE_MULTIPLE == 0:
        return None
    return (max(SD_SIZE_MULTIPLE, height // SD_SIZE_MULTIPLE * SD_SIZE_MULTIPLE),
            max(SD_SIZE_MULTIPLE, width // SD_SIZE_MULTIPLE * SD_SIZE_MULTIPLE))
