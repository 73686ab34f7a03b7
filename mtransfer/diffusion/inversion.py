"""Deterministic DDIM inversion: the noise trajectory that DDIM sampling would retrace back to ``z0``."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from mtransfer.diffusion.ddim import alpha_bars, ddim_step

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def ddim_invert(
    eps_fn: EpsFn,
    z0: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    final_alpha: float | None = None,
    progress: Callable[[], None] | None = None,
) -> list[torch.Tensor]:
    """Run DDIM backwards from the clean latent ``z0`` up through ``timesteps`` (descending, as sampled).

    Returns ``len(timesteps) + 1`` latents aligned with the sampling loop: ``latents[i]`` is at the noise
    level of ``timesteps[i]`` (what sampling step ``i`` starts from; ``latents[0]`` is the start noise)
    and ``latents[-1]`` is ``z0``. Each step evaluates ``eps_fn(z, t)`` on the less noisy latent at the
    target timestep ``t`` (the usual approximation); ``eps_fn`` does classifier-free guidance or not.
    ``progress`` is called once per step.
    """
    steps = alpha_bars(alphas_cumprod, timesteps, final_alpha)
    latents = [z0]
    for i in reversed(range(len(timesteps))):
        a_t, a_prev = steps[i]
        z = latents[-1]
        latents.append(ddim_step(z, eps_fn(z, timesteps[i]), a_prev, a_t))
        if progress is not None:
            progress()
    return latents[::-1]
