"""Loading what the settings name: the diffusion backend and the flow estimators, and warning when slow.

The one translation of settings into loader calls: ``[model]`` → ``load_backend``, ``[estimator]`` (or
``VideoSettings.flow_estimator``) → ``load_estimator``. ``check_models`` finds missing weights before any
work starts; ``cpu_warning`` says what real Stable Diffusion on a CPU will cost; ``family_words`` and
``world_warning`` say what the exact model's world holds and when a target motion lies outside it.
"""

from __future__ import annotations

import torch

from collections.abc import Sequence

from mtransfer.diffusion import DiffusionBackend, ExactBackend, motion_family
from mtransfer.diffusion.exact import similarity_matrix
from mtransfer.errors import MtransferError, UsageError
from mtransfer.evaluation.verdict import Verdict, counted_pixels, verdict_of
from mtransfer.estimators import DIFFERENTIABLE, FlowEstimator
from mtransfer.estimators import load_named_estimator
from mtransfer.app.settings import DTYPES, EstimatorSettings, ModelSettings

# Rough CPU cost of one guided pass of real SD v1 at 512x512 (UNet with CFG, VAE decode and RAFT, forward
# and backward): about 8.1 TFLOP (counted with FlopCounterMode, see BENCHMARKS.md) at an assumed 0.3 TFLOP/s
# sustained by a desktop CPU. Not a measurement; only used to tell the user what they are in for.
CPU_ASSUMED_TFLOPS = 0.3
CPU_SECONDS_PER_SD_PASS = 8.1e12 / (CPU_ASSUMED_TFLOPS * 1e12)


def load_estimator(
    settings: EstimatorSettings, device: str | torch.device = "cpu", *, for_guidance: bool = True
) -> FlowEstimator:
    """The estimator a settings section names (``load_named_estimator`` given its fields). Inside the
    guidance energy (``for_guidance``) the flow loss is differentiated through it, so an estimator without
    gradients (TV-L1, ILK) is refused up front."""
    if for_guidance and settings.name not in DIFFERENTIABLE:
        raise UsageError(
            f"estimator.name: {settings.name!r} is not differentiable, so guidance would get no flow gradient; "
            f"use one of {', '.join(DIFFERENTIABLE)} (tvl1 and ilk are for video.estimator)"
        )
    return load_named_estimator(
        settings.name, device=device, weights=settings.weights or None, iterations=settings.iterations or None,
        autocast=settings.autocast,
    )


def check_models(model: ModelSettings, estimator: EstimatorSettings) -> None:
    """Missing weights or an unusable guidance estimator as a one-line error before any stage runs.

    The diffusion model is only located (no weights read); the guidance estimator is loaded once on the
    CPU, which for RAFT reads its weights file (about a second).
    """
    load_estimator(estimator)
    if model.is_offline:
        return
    from mtransfer.diffusion.stable_diffusion import check_available  # diffusers is slow to import

    check_available(model.model)


def weights_found(model: ModelSettings, estimators: list[EstimatorSettings]) -> list[tuple[str, bool, str]]:
    """``(what, found, where)`` for the diffusion model and each RAFT the settings load, looked up the way
    loading does (local folder, Hugging Face / torch hub cache, ``HF_HUB_OFFLINE``); no weights are read.
    An unusable location (an incomplete folder) is reported as not found, with its error."""
    from mtransfer.estimators.raft import weights_location

    rows = []
    if not model.is_offline:
        from mtransfer.diffusion.stable_diffusion import model_location  # diffusers is slow to import

        try:
            rows.append((f"Stable Diffusion {model.model}", *model_location(model.model)))
        except MtransferError as exc:
            rows.append((f"Stable Diffusion {model.model}", False, str(exc)))
    for estimator in dict.fromkeys(e for e in estimators if e.name.startswith("raft-")):
        label = f"{estimator.name} weights {estimator.weights or 'DEFAULT'}"
        rows.append((label, *weights_location(estimator.name, estimator.weights or None)))
    return rows


def family_translations(height: int, width: int, settings: ModelSettings) -> list[tuple[float, float]]:
    """The grid of shifts of the exact model's family: ``(2r+1)^2`` shifts ``step`` pixels apart."""
    step = settings.family_step or max(1, round(min(height, width) / 16))
    radius = settings.family_radius
    return [(dx * step, dy * step) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def family_words(height: int, width: int, settings: ModelSettings) -> str:
    """What the exact model at ``height`` x ``width`` can paint, in words: its shifts, turns and zooms."""
    step = settings.family_step or max(1, round(min(height, width) / 16))
    reach = step * settings.family_radius
    shifts = (f"shifts of whole pixels up to ±{reach} px each way" if step == 1 else
              f"shifts in steps of {step} px up to ±{reach} px each way") if reach else "no shift"
    parts = [shifts]
    if settings.family_rotations != (0.0,):
        parts.append(f"turns by {', '.join(f'{d:g}' for d in settings.family_rotations)} degrees")
    if settings.family_scales != (1.0,):
        parts.append(f"zooms by {', '.join(f'{z:g}' for z in settings.family_scales)}")
    return "the picture moved as a whole: " + " combined with ".join(parts)


def _closest_member(flow: torch.Tensor, mask: torch.Tensor | None, settings: ModelSettings) -> Verdict:
    """The verdict the best member of the exact model's family would get on ``flow`` (the most it can reach)."""
    height, width = flow.shape[-2:]
    flow = flow.detach().float().cpu()
    counted = counted_pixels(flow, mask)
    names, matrices = [], []
    for scale in settings.family_scales:
        for degrees in settings.family_rotations:
            for dx, dy in family_translations(height, width, settings):
                matrices.append(similarity_matrix(height, width, scale, degrees, dx, dy).double())
                names.append(f"shift ({dx:g}, {dy:g}) px" + (f", turn {degrees:g}" if degrees else "")
                             + (f", zoom {scale:g}" if scale != 1 else ""))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    points = torch.stack([xs[counted], ys[counted], torch.ones_like(xs[counted])]).double()  # (3, pixels)
    moved = torch.stack(matrices) @ points  # the members' motions are affine: no division needed
    errors = (moved[:, :2] - points[:2]).float().sub_(flow[:, counted]).square_().sum(1).sqrt_().mean(1)
    best = int(errors.argmin())
    return verdict_of(float(errors[best]), float(flow.norm(dim=0)[counted].mean()), int(counted.sum()), names[best])


def world_warning(
    settings: ModelSettings, flows: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None] | None = None
) -> str | None:
    """A warning, before any work, when a target flow lies outside what the model can paint; None otherwise.

    Only the exact model has a bounded world (its family of moved copies); a flow is outside it when even
    the closest member would not be ``reached`` by ``motion_verdict`` in the flow's mask (``masks``, None =
    the whole image). ``flows`` are ``(2, H, W)`` on the working grid, one per frame to edit.
    """
    if settings.model != "exact" or not flows:
        return None
    masks = list(masks) if masks is not None else [None] * len(flows)
    closest = [_closest_member(flow, mask, settings) for flow, mask in zip(flows, masks)]
    outside = [(index, verdict) for index, verdict in enumerate(closest) if verdict.label != "reached"]
    if not outside:
        return None
    index, worst = max(outside, key=lambda item: item[1].error_px)
    where = "the target motion" if len(flows) == 1 else (
        f"{len(outside)} of {len(flows)} target motions (the worst: frame {index})")
    height, width = flows[0].shape[-2:]
    return (f"model 'exact' at {height}x{width} (its pixels below) only holds {family_words(height, width, settings)}; "
            f"{where} lies outside it: "
            f"the closest it holds, {worst.measured_by}, is {worst.error_px:.2f} px off a {worst.motion_px:.2f} px "
            f"motion, so the edit can be {worst.label} at best (a Stable Diffusion preset paints other motions)")


def load_backend(settings: ModelSettings, image: torch.Tensor | None, device: torch.device) -> DiffusionBackend:
    """The backend for ``settings.model``; ``image`` ``(3, H, W)`` is the target (the exact model's data)."""
    if settings.model == "exact":
        if image is None:
            raise UsageError("model 'exact' is built from the image it edits; it cannot generate images")
        image = image.to(device, DTYPES[settings.dtype])
        family = motion_family(
            image,
            translations=family_translations(*image.shape[-2:], settings),
            rotations=settings.family_rotations,
            scales=settings.family_scales,
        )
        return ExactBackend(family)
    from mtransfer.diffusion.stable_diffusion import load_stable_diffusion  # diffusers is slow to import

    return load_stable_diffusion(settings.model, device=device, dtype=DTYPES[settings.dtype])


def cpu_warning(settings: ModelSettings, device: torch.device, passes_per_frame: int, frames: int) -> str | None:
    """A warning when real Stable Diffusion is about to run on a CPU, with an estimate; None otherwise."""
    if device.type != "cpu" or settings.is_offline:
        return None
    height, width = settings.size or (512, 512)
    seconds = CPU_SECONDS_PER_SD_PASS * passes_per_frame * max(frames, 1) * (height * width) / 512**2
    return (
        f"Stable Diffusion on the CPU: about {CPU_SECONDS_PER_SD_PASS * height * width / 512**2:.2g} s per guided "
        f"pass, {passes_per_frame} passes per frame, {frames} frame(s) to edit: roughly {seconds / 3600:.1f} hours. "
        "Use --device cuda on a GPU, or --pipeline preview (fewer steps) or --pipeline offline-demo (no download, minutes)."
    )
