"""Loading the diffusion backend a run's ``[model]`` section names, and warning when it will be slow."""

from __future__ import annotations

import torch

from mtransfer.diffusion import DiffusionBackend, FiniteSetBackend, motion_family
from mtransfer.estimators import load_estimator
from mtransfer.pipeline.settings import DTYPES, EstimatorSettings, ModelSettings

# Rough CPU cost of one guided pass of real SD v1 at 512x512 (UNet with CFG, VAE decode and RAFT, forward
# and backward): about 8.1 TFLOP (counted with FlopCounterMode, see BENCHMARKS.md) at an assumed 0.3 TFLOP/s
# sustained by a desktop CPU. Not a measurement; only used to tell the user what they are in for.
CPU_SECONDS_PER_SD_PASS = 8.1e12 / 0.3e12


def family_translations(height: int, width: int, settings: ModelSettings) -> list[tuple[float, float]]:
    """The grid of shifts of the exact model's family: ``(2r+1)^2`` shifts ``step`` pixels apart."""
    step = settings.family_step or max(1, round(min(height, width) / 16))
    radius = settings.family_radius
    return [(dx * step, dy * step) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def check_models(settings: ModelSettings, estimator: EstimatorSettings) -> None:
    """Missing weights as a one-line error before any stage runs, not after minutes of flow estimation.

    The diffusion model is only located (no weights read); the guidance estimator is loaded once on the
    CPU, which for RAFT reads its weights file (about a second).
    """
    load_estimator(
        estimator.name, weights=estimator.weights or None, iterations=estimator.iterations or None,
        autocast=estimator.autocast,
    )
    if settings.is_offline:
        return
    from mtransfer.diffusion.stable_diffusion import check_available  # diffusers is slow to import

    check_available(settings.model)


def load_backend(settings: ModelSettings, image: torch.Tensor | None, device: torch.device) -> DiffusionBackend:
    """The backend for ``settings.model``; ``image`` ``(3, H, W)`` is the target (the exact model's data)."""
    if settings.model == "exact":
        image = image.to(device, DTYPES[settings.dtype])
        family = motion_family(
            image,
            translations=family_translations(*image.shape[-2:], settings),
            rotations=settings.family_rotations,
            scales=settings.family_scales,
        )
        return FiniteSetBackend(family)
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
