"""Motion guidance (Geng & Owens, ICLR 2024): guided DDIM sampling that makes an image move by a flow.

- ``config``: ``GuidanceSettings``, the sampler's settings with the paper's defaults.
- ``energy``: ``motion_energy``, flow L1 + occlusion-masked colour L1 (+ optional reconstruction term).
- ``sampler``: ``cfg_eps``, ``guided_eps``, ``motion_guided_step``, ``sample_motion_guided`` (pure functions).
- ``edit``: ``prepare_source``, ``edit_image`` (``edit_images`` for a batch), ``generate``: the image-level entry points; ``colour_mask``;
  where a frame of a clip starts from another frame's result: ``warm_start_step`` / ``warm_start_latent`` /
  ``warm_start_seed`` (re-noised), ``warped_start`` (moved by the motion between them first),
  ``previous_frame_start`` (the shared start shifted towards it).
"""

from __future__ import annotations

from mtransfer.guidance.config import GuidanceSettings
from mtransfer.guidance.edit import (
    EditResult,
    SourceState,
    colour_mask,
    edit_image,
    edit_images,
    generate,
    prepare_source,
    previous_frame_start,
    warm_start_latent,
    warm_start_seed,
    warm_start_step,
    warped_start,
)
from mtransfer.guidance.energy import EnergyWeights, motion_energy
from mtransfer.guidance.sampler import (
    GuidanceDiverged,
    GuidedEps,
    MotionTarget,
    cfg_eps,
    guided_eps,
    motion_guided_step,
    sample_motion_guided,
)

__all__ = [
    "EditResult",
    "EnergyWeights",
    "GuidanceSettings",
    "GuidanceDiverged",
    "GuidedEps",
    "MotionTarget",
    "SourceState",
    "cfg_eps",
    "colour_mask",
    "edit_image",
    "edit_images",
    "generate",
    "guided_eps",
    "motion_energy",
    "motion_guided_step",
    "prepare_source",
    "previous_frame_start",
    "warm_start_latent",
    "warm_start_seed",
    "warm_start_step",
    "warped_start",
    "sample_motion_guided",
]
