"""Motion-guided DDIM sampling (Geng & Owens, ICLR 2024) as short functions over tensors.

One DDIM step ``i`` (eta 0, alpha bars ``a_t`` → ``a_prev``) is repeated ``K`` times ("recursions"):

1. outside the editable region the latent is replaced by the source's latent at this noise level;
2. with gradients on, ``eps = CFG(eps(z_t))``, ``x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)``, the decoded
   ``x0`` goes through the motion energy and ``g = w_guid * schedule[i] * dE/dz_t``;
3. ``g`` is rescaled so that ``|sqrt(1 - a_t) g|`` is at most the clip value, and ``eps += sqrt(1 - a_t) g``;
4. a DDIM step with the guided ``eps`` gives ``z_prev``; before another recursion, ``z_prev`` is re-noised
   back to ``a_t`` with fresh noise. The last recursion's ``z_prev`` is the step's result.

Randomness comes only from the generator(s) passed in: one ``randn`` of the latent's shape per re-noising,
in loop order, so a run is reproducible from its seed; with one generator per batch item, each item draws
its own share, so it gets the very noise it would get alone. Energies, norms for clipping and divergence
checks are per batch item: a batch is B independent edits computed in one pass through the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from mtransfer.diffusion import DiffusionBackend, alpha_bars, ddim_step, predict_x0, renoise
from mtransfer.errors import UsageError
from mtransfer.estimators.base import FlowEstimator
from mtransfer.guidance.config import GuidanceSettings
from mtransfer.guidance.energy import EnergyWeights, motion_energy


@dataclass(frozen=True)
class MotionTarget:
    """What the energy compares each one-step estimate with; built once per edit.

    ``source`` ``(B, 3, H, W)`` in [0, 1]; ``flow`` ``(B, 2, H, W)``; ``occlusion`` ``(B, 1, H, W)`` or None
    (no masking); ``keep`` ``(B, 1, H, W)`` marks pixels outside the edit mask for the reconstruction term.
    ``clamp`` and ``padding`` are the energy's conventions (``motion_energy``; defaults are the authors').
    """

    source: torch.Tensor
    flow: torch.Tensor
    occlusion: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    weights: EnergyWeights = EnergyWeights()
    clamp: bool = False
    padding: str = "reflection"


@dataclass(frozen=True)
class GuidedEps:
    """One guided noise estimate and what it was made from (all detached).

    ``x0`` and ``image`` are the one-step estimate the energy looked at (before guidance; ``image`` as
    decoded, before any clamp); ``image``,
    ``achieved_flow`` and ``parts`` are absent when the guidance scale is 0 (nothing is evaluated).
    ``parts[b]`` are batch item ``b``'s energy terms, ``grad_norms[b]`` its ``|sqrt(1 - a_t) g|`` before
    clipping.
    """

    eps: torch.Tensor
    x0: torch.Tensor
    image: torch.Tensor | None = None
    achieved_flow: torch.Tensor | None = None
    parts: list[dict[str, float]] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)

    @property
    def grad_norm(self) -> float:
        """The largest per-item guidance norm (0 when nothing was evaluated)."""
        return max(self.grad_norms, default=0.0)


class GuidanceDiverged(UsageError):
    """The sampler met a NaN/inf or an exploding latent and stopped (a usage problem: the settings push too hard).

    ``latent`` is the last good latent (the input of the failing step), ``x0`` the last finite one-step
    clean estimate (None if there was none), ``history`` the per-pass records up to the failure.
    """

    def __init__(self, step: int, reason: str, latent: torch.Tensor, x0: torch.Tensor | None, history: list[dict]):
        super().__init__(f"guidance diverged at step {step}: {reason}")
        self.step, self.reason, self.latent, self.x0, self.history = step, reason, latent, x0, history


def cfg_eps(
    backend: DiffusionBackend, z: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor, scale: float
) -> torch.Tensor:
    """Classifier-free guided noise estimate; a scale of 1 needs only the conditional pass."""
    if scale == 1:
        return backend.eps(z, t, cond)
    eps_uncond, eps_cond = backend.eps(torch.cat((z, z)), t, torch.cat((uncond, cond))).chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_eps(
    backend: DiffusionBackend,
    estimator: FlowEstimator,
    z: torch.Tensor,
    t: int,
    a_t: float,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    target: MotionTarget,
    *,
    cfg_scale: float,
    guidance_scale: float,
    clip_grad: float,
) -> GuidedEps:
    """Steps 2-3 of the rule: the CFG noise estimate pushed down the energy's gradient.

    ``guidance_scale`` is ``w_guid * schedule[i]``; at 0 this is plain CFG and no energy is evaluated.
    ``clip_grad`` 0 disables clipping.
    """
    if guidance_scale == 0:
        with torch.no_grad():
            eps = cfg_eps(backend, z, t, cond, uncond, cfg_scale)
        return GuidedEps(eps=eps, x0=predict_x0(z, eps, a_t))
    with torch.enable_grad():
        z_in = z.detach().requires_grad_(True)
        eps = cfg_eps(backend, z_in, t, cond, uncond, cfg_scale)
        x0 = predict_x0(z_in, eps, a_t)
        image = backend.decode(x0).float()
        energy, parts, achieved = motion_energy(
            target.source, image, target.flow, estimator, target.occlusion, target.weights, target.keep,
            clamp=target.clamp, padding=target.padding,
        )
        (gradient,) = torch.autograd.grad(energy, z_in)
    sigma = math.sqrt(1 - a_t)
    guidance = guidance_scale * gradient
    norms = (sigma * guidance).flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
    if clip_grad > 0:
        guidance = guidance * (clip_grad / norms).clamp(max=1.0)
    return GuidedEps(
        eps=eps.detach() + sigma * guidance,
        x0=x0.detach(),
        image=image.detach(),
        achieved_flow=achieved.detach(),
        parts=[{name: float(value[b]) for name, value in parts.items()} for b in range(z.shape[0])],
        grad_norms=[float(norm) for norm in norms.flatten()],
    )


def motion_guided_step(
    backend: DiffusionBackend,
    estimator: FlowEstimator,
    z: torch.Tensor,
    t: int,
    a_t: float,
    a_prev: float,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    target: MotionTarget,
    config: GuidanceSettings,
    *,
    guidance_scale: float,
    generator: Generators,
    reference: torch.Tensor | None = None,
    copy_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[GuidedEps]]:
    """One DDIM step from ``a_t`` to ``a_prev`` with ``config.recursions`` recursions (steps 1-4).

    ``reference`` is the source's latent at level ``a_t``; it replaces ``z`` wherever ``copy_mask``
    (broadcastable bool, True outside the editable region) is set. Returns ``z_prev`` and every pass.
    """
    passes = []
    for recursion in range(config.recursions):
        if copy_mask is not None:
            z = torch.where(copy_mask, reference, z)
        guided = guided_eps(
            backend, estimator, z, t, a_t, cond, uncond, target,
            cfg_scale=config.cfg_scale, guidance_scale=guidance_scale, clip_grad=config.clip_grad,
        )
        passes.append(guided)
        z_prev = ddim_step(z, guided.eps, a_t, a_prev)
        if recursion + 1 < config.recursions:
            z = renoise(z_prev, a_t, a_prev, _noise(z, generator))
    return z_prev, passes


Generators = torch.Generator | Sequence[torch.Generator]
"""One generator for the whole latent, or one per batch item."""


def _noise(z: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise like ``z``: from one generator, or each item from its own."""
    if isinstance(generator, torch.Generator):
        return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    if len(generator) != z.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {z.shape[0]}")
    return torch.cat([torch.randn((1, *z.shape[1:]), generator=g, device=z.device, dtype=z.dtype) for g in generator])


PassCallback = Callable[[int, int, GuidedEps], None]
"""Called after every guided pass with (step index, recursion index, the pass)."""

StepHook = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]
"""Called after every DDIM step with (step index, timestep, the step's result ``z_prev``); a returned tensor
(same shape) is the latent the next step starts from instead, as diffusers' ``callback_on_step_end`` allows.
Raising ``StopSampling`` ends the run there."""


class StopSampling(Exception):
    """Raised by a step hook to end sampling early (diffusers' ``pipe._interrupt``): ``latent`` is returned
    as the run's result, with the records of the passes run so far."""

    def __init__(self, latent: torch.Tensor):
        super().__init__("sampling stopped by a step hook")
        self.latent = latent


def sample_motion_guided(
    backend: DiffusionBackend,
    estimator: FlowEstimator,
    start: torch.Tensor,
    timesteps: Sequence[int],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    target: MotionTarget,
    config: GuidanceSettings,
    *,
    generator: Generators,
    references: Sequence[torch.Tensor] | None = None,
    copy_mask: torch.Tensor | None = None,
    callback: PassCallback | None = None,
    step_end: StepHook | None = None,
    first_step: int = 0,
) -> tuple[torch.Tensor, list[dict]]:
    """The guided run from ``start`` (at ``timesteps[first_step]``) to a clean latent, plus per-pass records.

    ``references[i]`` is the source latent at the level of ``timesteps[i]`` (needed with ``copy_mask``).
    The guidance scale at step ``i`` is ``config.guidance_weight * config.step_weights()[i]``; the schedule
    is laid over all the ``timesteps`` given, so a run that starts at ``first_step > 0`` (a warm start)
    runs exactly the tail of the full run's steps, references and schedule. ``step_end`` (see ``StepHook``) sees
    each step's latent and may replace it. Raises ``GuidanceDiverged`` on NaN/inf energy,
    gradient or latent, or when the latent's standard deviation passes ``config.max_latent_std``.
    """
    if copy_mask is not None and (references is None or len(references) < len(timesteps)):
        raise ValueError("copy_mask needs one reference latent per step")
    if not 0 <= first_step < len(timesteps):
        raise ValueError(f"first_step must be in [0, {len(timesteps)}), got {first_step}")
    schedule = config.replace(steps=len(timesteps)).step_weights()
    levels = list(enumerate(zip(timesteps, alpha_bars(backend.alphas_cumprod, timesteps))))[first_step:]
    history: list[dict] = []
    z, last_x0 = start, None
    for i, (t, (a_t, a_prev)) in levels:
        z_prev, passes = motion_guided_step(
            backend, estimator, z, t, a_t, a_prev, cond, uncond, target, config,
            guidance_scale=config.guidance_weight * schedule[i],
            generator=generator,
            reference=None if references is None else references[i],
            copy_mask=copy_mask,
        )
        for recursion, guided in enumerate(passes):
            history.extend(_records(i, recursion, int(t), guided, z.shape[0]))
            if callback is not None:
                callback(i, recursion, guided)
        problem = _divergence(passes, z_prev, config.max_latent_std)
        finite_x0 = [p.x0 for p in passes if torch.isfinite(p.x0).all()]
        last_x0 = finite_x0[-1] if finite_x0 else last_x0
        if problem:
            raise GuidanceDiverged(i, problem, z, last_x0, history)
        z = z_prev
        if step_end is not None:
            try:
                replaced = step_end(i, int(t), z)
            except StopSampling as stop:
                return stop.latent, history
            if replaced is not None:
                if replaced.shape != z.shape:
                    raise ValueError(f"the step hook returned a latent of shape {tuple(replaced.shape)}, "
                                     f"expected {tuple(z.shape)}")
                z = replaced.to(z)
    return z, history


def _records(step: int, recursion: int, t: int, guided: GuidedEps, batch: int) -> list[dict]:
    """One pass's records: one per batch item, which names its ``item`` when there is more than one."""
    records = []
    for b in range(batch):
        parts = guided.parts[b] if guided.parts else {}
        norm = guided.grad_norms[b] if guided.grad_norms else 0.0
        item = {"item": b} if batch > 1 else {}
        records.append({"step": step, "recursion": recursion, "t": t, **item, **parts, "grad_norm": norm})
    return records


def _divergence(passes: list[GuidedEps], z_prev: torch.Tensor, max_latent_std: float) -> str | None:
    """Why this step's outcome cannot be trusted, or None."""
    for guided in passes:
        for parts in guided.parts:
            bad = [name for name, value in parts.items() if not math.isfinite(value)]
            if bad:
                return f"energy term '{bad[0]}' is {parts[bad[0]]}"
        if not all(math.isfinite(norm) for norm in guided.grad_norms):
            return f"guidance gradient norm is {guided.grad_norm}"
    if not torch.isfinite(z_prev).all():
        return "latent has NaN/inf values"
    std = float(z_prev.float().flatten(1).std(dim=1).max())
    if std > max_latent_std:
        return f"latent standard deviation {std:.3g} exceeds max_latent_std {max_latent_std:g}"
    return None
