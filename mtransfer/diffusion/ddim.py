"""Deterministic DDIM (eta = 0) as short pure functions over tensors.

Every function takes the cumulative alpha products ("alpha bars") it needs explicitly, as Python floats
or 0-d tensors, so samplers stay stateless: the schedule is data, not an object. The formulas and the
timestep spacing match ``diffusers.DDIMScheduler`` for Stable Diffusion v1 (``timestep_spacing="leading"``,
``steps_offset=1``, ``set_alpha_to_one=False``); ``tests/test_ddim.py`` checks that step for step.

Models that predict ``v`` rather than the noise (SD 2.x) are turned into noise predictions by
``eps_from_v`` before any of this, so every formula here holds for both.

Notation: ``a_t`` is alpha-bar at the current (noisier) level, ``a_prev`` at the next, less noisy one;
``z_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Alpha = Union[float, torch.Tensor]


def predict_x0(z_t: torch.Tensor, eps: torch.Tensor, a_t: Alpha) -> torch.Tensor:
    """The one-step clean estimate implied by a noise prediction (what the guidance energy looks at)."""
    return (z_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5


def eps_from_v(z_t: torch.Tensor, v: torch.Tensor, a_t: Alpha) -> torch.Tensor:
    """The noise a v-prediction (``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``, as SD 2.x) implies at ``z_t``.

    With it, ``predict_x0`` gives ``sqrt(a_t) z_t - sqrt(1 - a_t) v`` and ``ddim_step`` diffusers'
    v-prediction DDIM step, so the sampler needs no second form of its formulas.
    """
    return a_t**0.5 * v + (1 - a_t) ** 0.5 * z_t


def ddim_step(z_t: torch.Tensor, eps: torch.Tensor, a_t: Alpha, a_prev: Alpha) -> torch.Tensor:
    """Move ``z_t`` from noise level ``a_t`` to ``a_prev`` along the DDIM (eta = 0) trajectory.

    Nothing here assumes ``a_prev > a_t``: with the levels swapped this is one step of DDIM inversion.
    """
    return a_prev**0.5 * predict_x0(z_t, eps, a_t) + (1 - a_prev) ** 0.5 * eps


def renoise(z_prev: torch.Tensor, a_t: Alpha, a_prev: Alpha, noise: torch.Tensor) -> torch.Tensor:
    """Undo one step stochastically: sample ``q(z_t | z_prev)`` (used by time-travel recursion)."""
    ratio = a_t / a_prev
    return ratio**0.5 * z_prev + (1 - ratio) ** 0.5 * noise


def forward_noise(x0: torch.Tensor, a_t: Alpha, noise: torch.Tensor) -> torch.Tensor:
    """Sample ``q(z_t | x0)``: the clean latent noised straight to level ``a_t``."""
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * noise


def ddim_timesteps(num_train_timesteps: int, num_steps: int, steps_offset: int = 1) -> list[int]:
    """The descending training timesteps a ``num_steps`` DDIM run visits ("leading" spacing, as SD v1).

    The offset shifts every timestep up by ``steps_offset``, so a run may take at most
    ``num_train_timesteps - steps_offset`` steps (999 for SD v1) before the first one leaves the schedule.
    """
    most = num_train_timesteps - steps_offset
    if not 0 < num_steps <= most:
        raise ValueError(f"num_steps must be in [1, {most}], got {num_steps}")
    stride = num_train_timesteps // num_steps
    return [i * stride + steps_offset for i in reversed(range(num_steps))]


def alpha_bars(
    alphas_cumprod: torch.Tensor, timesteps: Sequence[int], final_alpha: float | None = None
) -> list[tuple[float, float]]:
    """``(a_t, a_prev)`` for every step of a run over ``timesteps`` (descending).

    ``a_prev`` of a step is the alpha bar of the next timestep; after the last one it is ``final_alpha``,
    which defaults to ``alphas_cumprod[0]`` as in SD v1 (``set_alpha_to_one=False``); pass 1.0 for a
    schedule that ends exactly on clean data.
    """
    final = float(alphas_cumprod[0]) if final_alpha is None else float(final_alpha)
    levels = [float(alphas_cumprod[t]) for t in timesteps]
    return list(zip(levels, levels[1:] + [final]))
