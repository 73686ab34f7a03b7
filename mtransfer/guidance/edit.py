"""Editing one image with motion guidance: prepare the source once, then edit it under any target flow.

``prepare_source`` does the work that depends only on the source image and the prompt (encoding, text
embeddings, DDIM inversion), so a video pipeline that edits the same image under many flows pays for it
once. ``edit_image`` runs the guided sampler and turns a divergence into a result labelled as such.
``generate`` makes an image from a prompt and keeps its noise trajectory so it can be edited afterwards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from mtransfer.diffusion import DiffusionBackend, alpha_bars, ddim_invert, ddim_step, ddim_timesteps, forward_noise
from mtransfer.errors import InputError, UsageError
from mtransfer.estimators.base import FlowEstimator
from mtransfer.flows import occlusion_mask, reference_occlusion_mask
from mtransfer.flows.ops import compose, invert, resize_flow
from mtransfer.flows.warp import warp
from mtransfer.guidance.config import GuidanceSettings
from mtransfer.guidance.energy import EnergyWeights
from mtransfer.guidance.sampler import (
    GuidanceDiverged, GuidedEps, MotionTarget, StepHook, cfg_eps, sample_motion_guided,
)

Progress = Callable[[], None]
"""Called once per unit of work: per inversion/generation step, per guided pass (steps x recursions)."""

Preview = Callable[[int, torch.Tensor], None]
"""Called with ``(step, image)`` as each preview is taken, so a front end can show it while the edit runs."""


@dataclass(frozen=True)
class SourceState:
    """Everything about the source an edit reuses.

    ``references[i]`` is the source latent at the noise level of ``timesteps[i]`` (pasted outside the
    edit mask at step ``i``); ``references[-1]`` is the clean latent. ``start`` is where sampling begins.
    ``origin`` says where the references come from: ``inversion``, ``random`` or ``generation``.
    """

    image: torch.Tensor
    prompt: str
    latent: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor
    timesteps: list[int]
    references: list[torch.Tensor]
    start: torch.Tensor
    origin: str

    def to(self, device: torch.device) -> SourceState:
        """The same state with its tensors on ``device`` (a worker receives it on the CPU)."""
        return SourceState(
            self.image.to(device), self.prompt, self.latent.to(device), self.cond.to(device), self.uncond.to(device),
            self.timesteps, [reference.to(device) for reference in self.references], self.start.to(device), self.origin,
        )


@dataclass
class EditResult:
    """An edit and its record. When ``diverged``, ``image`` is the last finite clean estimate (or the
    source's reconstruction if there was none) and ``divergence`` says what went wrong."""

    image: torch.Tensor
    latent: torch.Tensor
    achieved_flow: torch.Tensor
    losses: list[dict]
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    divergence: str | None = None


def _schedule(backend: DiffusionBackend, steps: int) -> list[int]:
    return ddim_timesteps(len(backend.alphas_cumprod), steps)


def prepare_source(
    backend: DiffusionBackend,
    image: torch.Tensor,
    prompt: str,
    config: GuidanceSettings,
    *,
    trajectory: list[torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> SourceState:
    """Encode ``image`` ``(3, H, W)`` in [0, 1], embed ``prompt`` and find the source latent at every level.

    With ``trajectory`` (from ``generate``) the generation's own latents are the references: unguided
    sampling from its start retraces them exactly, so nothing is inverted. Otherwise
    ``config.source_noise`` decides: DDIM inversion (conditioned on the prompt, no CFG, as the inversion
    approximation is only faithful without it) or forward noising with noise fixed by ``config.seed``.
    """
    batch = image[None].to(backend.device, backend.dtype)
    cond, uncond = backend.condition([prompt]), backend.condition([""])
    timesteps = _schedule(backend, config.steps)
    if trajectory is not None:
        if len(trajectory) != len(timesteps) + 1:
            raise InputError(
                f"the generation trajectory has {len(trajectory) - 1} steps but guidance.steps is {config.steps}"
            )
        return SourceState(
            batch, prompt, trajectory[-1], cond, uncond, timesteps, trajectory, trajectory[0], "generation"
        )
    latent = backend.encode(batch)
    if config.source_noise == "inversion":
        references = ddim_invert(
            lambda z, t: backend.eps(z, t, cond), latent, timesteps, backend.alphas_cumprod, progress=progress
        )
        return SourceState(batch, prompt, latent, cond, uncond, timesteps, references, references[0], "inversion")
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(config.seed)).to(latent)
    levels = [a_t for a_t, _ in alpha_bars(backend.alphas_cumprod, timesteps)]
    references = [forward_noise(latent, a_t, noise) for a_t in levels] + [latent]
    return SourceState(batch, prompt, latent, cond, uncond, timesteps, references, noise, "random")


@torch.no_grad()
def generate(
    backend: DiffusionBackend,
    prompt: str,
    config: GuidanceSettings,
    *,
    size: tuple[int, int] = (512, 512),
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Plain CFG DDIM from noise drawn with ``config.seed``: ``(image (3, H, W), noise, latents)``.

    ``latents`` has ``config.steps + 1`` entries aligned like an inversion (``latents[0]`` is the noise,
    ``latents[-1]`` the clean latent); pass it as ``prepare_source(..., trajectory=latents)`` to edit the
    image along its own trajectory.
    """
    shape = (1, *backend.latent_size(*size))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed)).to(backend.device, backend.dtype)
    cond, uncond = backend.condition([prompt]), backend.condition([""])
    timesteps = _schedule(backend, config.steps)
    latents = [noise]
    for t, (a_t, a_prev) in zip(timesteps, alpha_bars(backend.alphas_cumprod, timesteps)):
        eps = cfg_eps(backend, latents[-1], t, cond, uncond, config.cfg_scale)
        latents.append(ddim_step(latents[-1], eps, a_t, a_prev))
        if progress is not None:
            progress()
    return backend.decode(latents[-1])[0].float().clamp(0, 1), noise, latents


def edit_image(
    backend: DiffusionBackend,
    estimator: FlowEstimator,
    state: SourceState,
    target_flow: torch.Tensor,
    config: GuidanceSettings,
    *,
    edit_mask: torch.Tensor | None = None,
    init_latent: torch.Tensor | None = None,
    first_step: int = 0,
    progress: Progress | None = None,
    preview: Preview | None = None,
    step_end: StepHook | None = None,
) -> EditResult:
    """Move the source by ``target_flow`` ``(2, H, W)`` with motion guidance.

    ``edit_mask`` ``(H, W)`` or ``(1, H, W)`` in [0, 1] marks the editable region (1); outside it the
    sampler pastes the source's latent at every step (a latent cell is editable if any of its pixels
    is), and ``config.recon_weight`` pulls the image towards the source there; with
    ``config.paste_source`` the source's clean latent also replaces the result there after the last step
    (the authors do not paste). ``init_latent`` replaces ``state.start`` as the starting latent; with
    ``first_step > 0`` (a warm start, see ``warm_start_latent``) it is the latent at the level of
    ``state.timesteps[first_step]`` and only the remaining steps run, with the full schedule's weights. Previews
    are taken every ``config.preview_every`` steps at the first recursion and handed to ``preview`` as they
    are taken. The colour-loss mask, the clamp
    and the warp padding follow ``config.occlusion`` / ``clamp`` / ``padding``; noise comes only from a
    generator seeded with ``config.seed``. ``step_end`` sees the latent after every step and may replace
    it (``mtransfer.guidance.sampler.StepHook``). The returned image is clamped to [0, 1].
    """
    if target_flow.dim() != 3:
        raise UsageError(f"target flow has shape {tuple(target_flow.shape)}, expected (2, height, width)")
    (result,) = edit_images(
        backend, estimator, state, target_flow[None], config,
        edit_masks=None if edit_mask is None else [edit_mask], init_latent=init_latent, first_step=first_step,
        progress=progress, preview=None if preview is None else (lambda step, images: preview(step, images[0])),
        step_end=step_end,
    )
    return result


def edit_images(
    backend: DiffusionBackend,
    estimator: FlowEstimator,
    state: SourceState,
    target_flows: torch.Tensor,
    config: GuidanceSettings,
    *,
    edit_masks: list[torch.Tensor] | None = None,
    init_latent: torch.Tensor | None = None,
    first_step: int = 0,
    progress: Progress | None = None,
    preview: Preview | None = None,
    step_end: StepHook | None = None,
) -> list[EditResult]:
    """``edit_image`` for a batch of target flows ``(B, 2, H, W)`` (one edit mask each, if any); each result
    is exactly what its edit gives alone.

    When the model and the estimator are batch-invariant (``batch_invariant``: the exact world, the
    pyramid estimator), the B edits are computed together: one model, decoder and estimator call per pass
    serves all of them, and each edit has its own energy, clipping and recursion noise (a generator per
    item seeded with ``config.seed``). Otherwise (Stable Diffusion, RAFT) they run one after another: a
    convolution sums in another order at another batch size, and the guided sampler amplifies a
    difference of 1e-7 into a visibly different picture, so a frame would depend on its batch. If any
    batched item diverges, the batch is redone one edit at a time so that only the diverging edit is
    labelled. ``init_latent`` is ``(B, C, h, w)``. ``progress`` is called once per edit and pass;
    ``preview`` with each step's previews ``(B, 3, H, W)`` and ``step_end`` with each step's latents
    ``(B, C, h, w)`` (one edit after another: one item each).
    """
    height, width = state.image.shape[-2:]
    batch = target_flows.shape[0]
    if batch > 1 and not batch_invariant(backend, estimator):
        return [
            edit_images(
                backend, estimator, state, target_flows[b : b + 1], config,
                edit_masks=None if edit_masks is None else [edit_masks[b]],
                init_latent=None if init_latent is None else init_latent[b : b + 1],
                first_step=first_step, progress=progress,
                preview=preview, step_end=step_end,
            )[0]
            for b in range(batch)
        ]
    if state.timesteps != _schedule(backend, config.steps):
        raise UsageError(
            f"the source was prepared for {len(state.timesteps)} steps but guidance.steps is {config.steps}"
        )
    if tuple(target_flows.shape[1:]) != (2, height, width):
        raise UsageError(
            f"target flow has shape {tuple(target_flows.shape[1:])}, expected (2, {height}, {width}) to match the image"
        )
    if first_step and init_latent is None:
        raise ValueError("a warm start (first_step > 0) needs the latent it starts from (init_latent)")
    flow = target_flows.to(backend.device, torch.float32)
    source = state.image.float().expand(batch, -1, -1, -1)
    keep = copy_mask = None
    if edit_masks is not None:
        mask = torch.cat([_edit_mask(m, height, width) for m in edit_masks]).to(backend.device, torch.float32)
        keep = 1 - mask
        editable = F.adaptive_max_pool2d(mask, tuple(state.latent.shape[-2:])) > 0
        copy_mask = ~editable
    target = MotionTarget(
        source=source,
        flow=flow,
        occlusion=colour_mask(flow, config.occlusion),
        keep=keep,
        weights=EnergyWeights(config.flow_weight, config.color_weight, config.recon_weight),
        clamp=config.clamp,
        padding=config.padding,
    )
    previews: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(batch)]

    def on_pass(step: int, recursion: int, guided: GuidedEps) -> None:
        if progress is not None:
            for _ in range(batch):
                progress()
        if config.preview_every and recursion == 0 and step % config.preview_every == 0:
            with torch.no_grad():
                image = guided.image if guided.image is not None else backend.decode(guided.x0).float()
            for b in range(batch):
                previews[b].append((step, image[b].cpu()))
            if preview is not None:
                preview(step, image.detach().float().cpu())

    generators = [torch.Generator(device=backend.device).manual_seed(config.seed) for _ in range(batch)]
    start = state.start.expand(batch, -1, -1, -1) if init_latent is None else init_latent
    started = time.perf_counter()
    diverged = None
    try:
        latent, losses = sample_motion_guided(
            backend, estimator, start, state.timesteps,
            _batched(state.cond, batch), _batched(state.uncond, batch), target, config,
            generator=generators, references=state.references, copy_mask=copy_mask, callback=on_pass,
            step_end=step_end, first_step=first_step,
        )
    except GuidanceDiverged as exc:
        if batch > 1:
            return [
                edit_images(
                    backend, estimator, state, target_flows[b : b + 1], config,
                    edit_masks=None if edit_masks is None else [edit_masks[b]],
                    init_latent=None if init_latent is None else init_latent[b : b + 1],
                    first_step=first_step, progress=progress, step_end=step_end,
                )[0]
                for b in range(batch)
            ]
        diverged = exc
        latent, losses = (exc.x0 if exc.x0 is not None else state.latent), exc.history
    if copy_mask is not None and config.paste_source:  # the source's own clean latent outside the edit region
        latent = torch.where(copy_mask, state.references[-1], latent)
    elapsed = time.perf_counter() - started
    with torch.no_grad():
        image = backend.decode(latent).float().clamp(0, 1)
        achieved = estimator(source, image)
    results = []
    for b in range(batch):
        own = [{k: v for k, v in record.items() if k != "item"} for record in losses if record.get("item", 0) == b]
        passes = max(len(own), 1)
        results.append(EditResult(
            image=image[b],
            latent=latent[b : b + 1],
            achieved_flow=achieved[b],
            losses=own,
            previews=previews[b],
            timing={"sampling_s": elapsed / batch, "seconds_per_pass": elapsed / batch / passes, "batch": batch},
            diverged=diverged is not None,
            divergence=None if diverged is None else str(diverged),
        ))
    return results


def motionless(flow: torch.Tensor) -> bool:
    """Whether ``flow`` moves no pixel at all: then there is nothing to guide (``run`` keeps such frames as
    the source; ``edit`` refuses them rather than return a changed picture for no motion)."""
    return not bool(flow.abs().max() > 0)


def batch_invariant(backend: DiffusionBackend, estimator: FlowEstimator) -> bool:
    """Whether edits can share model calls without changing any of them (see ``edit_images``)."""
    return bool(getattr(backend, "batch_invariant", False) and getattr(estimator, "batch_invariant", False))


def _batched(embedding: torch.Tensor, batch: int) -> torch.Tensor:
    """A prompt embedding ``(1, ...)`` repeated for ``batch`` latents."""
    return embedding.expand(batch, *embedding.shape[1:])


def warm_start_step(steps: int, fraction: float) -> int:
    """The step a warm start begins at: the last ``round(fraction * steps)`` steps (at least one) are run,
    so ``fraction`` is the share of the schedule's noise levels (and passes) a warm-started frame pays."""
    remaining = min(steps, max(1, math.floor(fraction * steps + 0.5)))
    return steps - remaining


def warm_start_latent(
    backend: DiffusionBackend, state: SourceState, previous_latent: torch.Tensor, first_step: int, seed: int
) -> torch.Tensor:
    """``previous_latent`` (a clean result) forward-noised to the level of ``state.timesteps[first_step]``,
    with noise drawn from a generator seeded with ``seed`` alone, so a warm start is reproducible."""
    a_t = float(backend.alphas_cumprod[state.timesteps[first_step]])
    latent = previous_latent.to(state.start)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed)).to(latent)
    return forward_noise(latent, a_t, noise)


def warm_start_seed(seed: int, index: int) -> int:
    """The seed of frame ``index``'s warm-start noise: fixed by the run's seed and the frame, so a frame's
    start does not depend on the worker, the order or the batch it was made in."""
    return seed * 1_000_003 + index


def previous_frame_start(state: SourceState, previous_latent: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The shared start moved towards another frame's result: ``z_T + sqrt(a_T) (z_prev - z_source)``.

    That is the other result forward-noised to the first level with the very noise the source's start
    implies, so the frame begins where that one ended up rather than where the source is.
    """
    a_first = float(alphas_cumprod[state.timesteps[0]])
    return state.start + math.sqrt(a_first) * (previous_latent.to(state.start) - state.latent)


def parent_to_child(parent_flow: torch.Tensor, child_flow: torch.Tensor) -> torch.Tensor:
    """The backward flow on the child's grid that fetches each child pixel from the parent's result.

    Both flows move the source (``(2, H, W)``, source → frame). A child pixel ``y`` shows the source point
    ``x = y + g(y)`` (``g`` the inverse of the child's flow), which the parent shows at ``x + f_parent(x)``;
    so the child fetches from ``y + b(y)`` with ``b = compose(g, f_parent)``.
    """
    return compose(invert(child_flow), parent_flow)


def warped_start(
    backend: DiffusionBackend, parent_latent: torch.Tensor, parent_flow: torch.Tensor, child_flow: torch.Tensor,
    how: str,
) -> torch.Tensor:
    """The parent's clean latent moved by the target motion from the parent to the child, before a warm
    start re-noises it, so the start already shows most of the child's motion: ``image`` warps the decoded
    picture and encodes it again (exact, one decoder and encoder call); ``latent`` warps the latent on its
    own grid (the flow scaled to it: cheap, approximate where a latent cell mixes motions); ``none`` returns
    the latent as it is. Pixels fetched from outside the picture repeat its border."""
    if how == "none":
        return parent_latent
    fetch = parent_to_child(parent_flow.float(), child_flow.float())
    latent = parent_latent.to(backend.device)
    if how == "image":
        with torch.no_grad():
            image = backend.decode(latent).float()
            moved = warp(image, fetch.to(image.device), padding_mode="border").clamp(0, 1)
            return backend.encode(moved.to(backend.dtype)).to(latent.dtype)
    if how == "latent":
        on_grid = resize_flow(fetch, tuple(latent.shape[-2:])).to(latent.device)
        return warp(latent.float(), on_grid, padding_mode="border").to(latent.dtype)
    raise ValueError(f"unknown warm-start warp {how!r}")


def colour_mask(flow: torch.Tensor, occlusion: str) -> torch.Tensor | None:
    """The colour term's mask of ``flow`` ``(B, 2, H, W)`` by the rule ``occlusion`` names (see
    ``mtransfer.guidance.config.OCCLUSIONS``); None when every pixel is compared."""
    if occlusion == "reference":
        return reference_occlusion_mask(flow)
    if occlusion == "splat":
        return occlusion_mask(flow)
    return None


def _edit_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An edit mask as ``(1, 1, H, W)`` float, or a one-line error when its size is wrong."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[0] != 1 or tuple(mask.shape[-2:]) != (height, width):
        raise UsageError(
            f"edit mask has shape {tuple(mask.shape)}, expected ({height}, {width}) to match the image"
        )
    return mask[None].float()
