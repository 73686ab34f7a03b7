"""Diffusion models behind one small interface, and the DDIM math the guided sampler is built from.

- ``ddim``: pure functions (``predict_x0``, ``eps_from_v``, ``ddim_step``, ``renoise``, ``forward_noise``, ``ddim_timesteps``,
  ``alpha_bars``).
- ``backends``: the ``DiffusionBackend`` protocol.
- ``stable_diffusion``: ``load_stable_diffusion`` (HF id, local folder, single file, ``"tiny"``/``"tiny-sd2"``), ``real_config``.
- ``exact``: ``ExactBackend``, the exact model (exact denoiser over a set of images) and ``motion_family``.
- ``inversion``: ``ddim_invert``.

The Stable Diffusion names are imported on first use, so code that only needs the DDIM math does not pay
for importing diffusers and transformers. The exact backend does: without an explicit ``alphas_cumprod``
it takes SD v1's training schedule from diffusers (``sd_alphas_cumprod``), imported when it is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from mtransfer.diffusion.backends import DiffusionBackend, straight_through_clamp
from mtransfer.diffusion.ddim import (
    alpha_bars, ddim_step, ddim_timesteps, eps_from_v, forward_noise, predict_x0, renoise,
)
from mtransfer.diffusion.exact import ExactBackend, motion_family
from mtransfer.diffusion.inversion import ddim_invert

_LAZY = {
    "StableDiffusionBackend": "mtransfer.diffusion.stable_diffusion",
    "backend_from_components": "mtransfer.diffusion.stable_diffusion",
    "load_components": "mtransfer.diffusion.stable_diffusion",
    "load_stable_diffusion": "mtransfer.diffusion.stable_diffusion",
    "random_stable_diffusion": "mtransfer.diffusion.stable_diffusion",
    "real_config": "mtransfer.diffusion.stable_diffusion",
    "sd_alphas_cumprod": "mtransfer.diffusion.stable_diffusion",
}

__all__ = [
    "DiffusionBackend",
    "ExactBackend",
    "alpha_bars",
    "ddim_invert",
    "ddim_step",
    "ddim_timesteps",
    "eps_from_v",
    "forward_noise",
    "motion_family",
    "predict_x0",
    "renoise",
    "straight_through_clamp",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
