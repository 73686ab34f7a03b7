"""Settings of the motion-guided sampler, with the paper's defaults, validated where they enter.

Defaults are those of Geng & Owens (ICLR 2024) and of their code: 500 DDIM steps, 10 recursions per step,
classifier-free guidance 7.5, guidance weight 300, flow weight 3, colour weight 100, gradient clip 200,
and the conventions of their guided step: the colour-loss mask by their gradient rule
(``occlusion = "reference"``), the decoded image unclamped in the energy (``clamp = false``), reflection
padding in the colour term's warp (``padding = "reflection"``) and no paste of the source after the last
step (``paste_source = false``). The flow estimator's own settings (e.g. RAFT iterations, weights) live
with the estimator, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from mtransfer.errors import UsageError
from mtransfer.validation import STAGE, check_types, from_mapping, rule_checker

SOURCE_NOISE = ("inversion", "random")
"""Where an edit starts and what the edit-mask copy pastes outside the editable region:

- ``inversion``: DDIM inversion of the source gives the start noise and the source latent at every level
  (the paper's setting for real images; deterministic).
- ``random``: start from Gaussian noise drawn from ``seed``; outside the mask, paste the source latent
  forward-noised with that same fixed noise (no inversion cost, less faithful to the source).
"""

OCCLUSIONS = ("reference", "splat", "none")
"""Which source pixels the colour term ignores (``mtransfer.flows``):

- ``reference``: the authors' rule (``reference_occlusion_mask``): still pixels whose value the target
  flow warped by itself depends on, i.e. those under or next to where moving pixels land.
- ``splat``: mtransfer's rule (``occlusion_mask``): forward-splat the target flow to the nearest pixel;
  pixels leaving the frame or landing where a faster pixel lands are hidden.
- ``none``: every pixel is compared.
"""

PADDINGS = ("reflection", "zeros")
"""How the colour term's warp samples outside the frame: mirrored about the border pixels (the authors')
or black."""

MAX_STEPS = 999
"""The most DDIM steps over SD v1's 1000 training timesteps with its offset of 1 (``ddim_timesteps``)."""

SCHEDULES = ("constant", "early", "linear")
"""Per-step guidance weights (step 0 is the noisiest). The authors load a ``guidance_schedule.npy`` whose
values are not published, so none of these is claimed to be theirs:

- ``constant``: 1 at every step (the default).
- ``early``: 1 for the first ``schedule_fraction`` of the steps, then 0 (plain DDIM finishes the details).
- ``linear``: decays linearly from 1 at the first step to 0 at ``schedule_fraction`` of the steps.
"""


@dataclass(frozen=True)
class GuidanceSettings:
    """Everything the guided sampler needs besides the models and the images.

    ``recon_weight`` adds reconstruction guidance: an L1 term pulling the edit towards the source outside
    the edit mask (0 = off, as in the paper; without an edit mask the term is empty). ``clip_grad`` bounds
    the norm of the guidance added to the noise estimate (0 = no clipping). ``max_latent_std`` is the
    divergence bound: a latent whose standard deviation exceeds it stops the run.

    Conventions of the energy and the edit (defaults are the authors'): ``occlusion`` (see
    ``OCCLUSIONS``); ``clamp`` clamps the decoded estimate to [0, 1] before the energy, with a
    straight-through gradient; ``padding`` (see ``PADDINGS``); ``paste_source`` replaces the result
    outside the edit mask by the source's clean latent after the last step.

    Every setting shapes the edit, except ``preview_every`` (only which previews are kept), which is
    declared so: a video run resumes with other preview settings (see ``mtransfer.validation.STAGE``).
    """

    steps: int = 500
    recursions: int = 10
    cfg_scale: float = 7.5
    guidance_weight: float = 300.0
    flow_weight: float = 3.0
    color_weight: float = 100.0
    recon_weight: float = 0.0
    clip_grad: float = 200.0
    occlusion: str = "reference"
    clamp: bool = False
    padding: str = "reflection"
    paste_source: bool = False
    schedule: str = "constant"
    schedule_fraction: float = 1.0
    source_noise: str = "inversion"
    seed: int = 0
    preview_every: int = field(default=50, metadata={STAGE: None})
    max_latent_std: float = 50.0

    def __post_init__(self) -> None:
        check_types(self, "guidance")
        _require(1 <= self.steps <= MAX_STEPS, "steps", f"must be in 1..{MAX_STEPS} (SD v1's 1000 training "
                 "timesteps, offset by 1)", self.steps)
        _require(self.recursions >= 1, "recursions", "must be at least 1", self.recursions)
        _require(self.cfg_scale >= 0, "cfg_scale", "must be >= 0", self.cfg_scale)
        for name in ("guidance_weight", "flow_weight", "color_weight", "recon_weight", "clip_grad"):
            _require(getattr(self, name) >= 0, name, "must be >= 0", getattr(self, name))
        _require(
            self.occlusion in OCCLUSIONS, "occlusion", f"must be one of {', '.join(OCCLUSIONS)}", self.occlusion
        )
        _require(self.padding in PADDINGS, "padding", f"must be one of {', '.join(PADDINGS)}", self.padding)
        _require(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}", self.schedule)
        _require(
            self.source_noise in SOURCE_NOISE, "source_noise", f"must be one of {', '.join(SOURCE_NOISE)}",
            self.source_noise,
        )
        _require(0 < self.schedule_fraction <= 1, "schedule_fraction", "must be in (0, 1]", self.schedule_fraction)
        _require(self.preview_every >= 0, "preview_every", "must be >= 0 (0 = no previews)", self.preview_every)
        _require(self.max_latent_std > 0, "max_latent_std", "must be > 0", self.max_latent_std)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GuidanceSettings:
        """Build from a preset's ``[guidance]`` table; unknown keys and bad values name the key."""
        if "occlusion_masking" in values:
            raise UsageError(
                'guidance.occlusion_masking: replaced by guidance.occlusion = "reference", "splat" or "none"'
            )
        return from_mapping(cls, "guidance", values)

    def step_weights(self) -> list[float]:
        """The guidance schedule: one weight per DDIM step, noisiest step first (see ``SCHEDULES``)."""
        guided_steps = self.schedule_fraction * self.steps
        if self.schedule == "early":
            return [1.0 if i < guided_steps else 0.0 for i in range(self.steps)]
        if self.schedule == "linear":
            return [max(0.0, 1.0 - i / guided_steps) for i in range(self.steps)]
        return [1.0] * self.steps

    def replace(self, **changes: Any) -> GuidanceSettings:
        """A copy with some settings changed, validated like the original."""
        return self.from_mapping({**dataclasses.asdict(self), **changes})


_require = rule_checker("guidance")
