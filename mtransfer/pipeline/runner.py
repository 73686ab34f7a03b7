"""``run_pipeline``: check the inputs, open (or resume) the run folder, run the stages top to bottom.

Everything that can be wrong with the inputs or settings is checked before the run folder is touched, so
a bad command never changes earlier results. Resuming is the default: the same command continues where
a killed run stopped. When the inputs or the settings that shape the results changed, the run refuses to
mix old and new results; ``--restart`` then moves the affected stages' files to ``superseded/<time>/``
inside the run folder (nothing is deleted) and recomputes them, keeping the stages that are still valid.
``--restart`` with nothing changed redoes every stage the same way.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from mtransfer.errors import MtransferError, input_error, require_file
from mtransfer.files import load_image
from mtransfer.flows.io import read_mask
from mtransfer.pipeline.align import mask_box, pixel_box
from mtransfer.pipeline.executors import import_ray
from mtransfer.pipeline.models import check_models
from mtransfer.pipeline.manifest import Manifest, RunLock, content_id, fingerprint, versions
from mtransfer.pipeline.settings import RunSettings
from mtransfer.pipeline.stages import (
    STAGE_OUTPUTS,
    STAGES,
    RunContext,
    align_stage,
    decode_stage,
    encode_stage,
    flow_stage,
    guide_stage,
)
from mtransfer.progress import progress_bar
from mtransfer.presets import load_pipeline
from mtransfer.video import output_size, probe_video

LATENT_MULTIPLE = 8  # Stable Diffusion v1's VAE shrinks images 8x


@dataclass(frozen=True)
class RunRequest:
    """One ``mtransfer run``: inputs, the pipeline preset and its overrides, and what to do with the folder."""

    video: Path
    image: Path
    pipeline: str = "paper"
    overrides: tuple[str, ...] = ()
    out: Path | None = None
    restart: bool = False
    flow_only: bool = False


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs after checking: fingerprints, frame count and rate, working size, region mask file."""

    prints: dict[str, dict[str, Any]]
    frame_count: int
    fps: float
    size: tuple[int, int]
    region_mask: Path | None


def default_folder(video: Path, image: Path) -> Path:
    return Path("outputs") / f"{video.stem}-onto-{image.stem}"


def check_inputs(request: RunRequest, settings: RunSettings) -> CheckedInputs:
    """Probe the video, read the image and region, and check sizes and boxes: one-line errors, no writes."""
    video = settings.video
    info = probe_video(request.video)
    frame_count = math.ceil(info.frame_count / video.stride)
    if video.max_frames:
        frame_count = min(frame_count, video.max_frames)
    if frame_count < 2:
        raise input_error(request.video, f"only {frame_count} frame with stride {video.stride}; motion needs 2 or more")
    image = load_image(request.image)
    size = settings.model.size or tuple(image.shape[-2:])
    if settings.model.model != "exact" and (size[0] % LATENT_MULTIPLE or size[1] % LATENT_MULTIPLE):
        height, width = size
        fixed = f"--size {max(8, height // 8 * 8)}x{max(8, width // 8 * 8)}"
        if settings.model.size is None:
            raise input_error(request.image, f"is {height}x{width} (height x width) but Stable Diffusion needs "
                              f"multiples of 8; pass {fixed} to resize it")
        raise MtransferError(f"model.size {height}x{width}: Stable Diffusion needs multiples of 8; use {fixed}")
    prints = {"video": fingerprint(request.video), "image": fingerprint(request.image)}
    region_mask = None
    region = settings.align.region
    if isinstance(region, str):
        region_mask = require_file(region, "region mask")
        mask_box(read_mask(region_mask, size))  # readable and not empty
        prints["region_mask"] = fingerprint(region_mask)
    elif region is not None:
        pixel_box(region, *size)
    if settings.align.source_region is not None:
        pixel_box(settings.align.source_region, *output_size(info.height, info.width, video.resize), "source_region")
    return CheckedInputs(prints, frame_count, info.fps / video.stride, size, region_mask)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def stage_settings(settings: RunSettings, inputs: CheckedInputs, flow_only: bool) -> dict[str, dict[str, Any]]:
    """What each stage's results depend on; each includes everything the stages before it depend on.

    The device and the output encoding are left out of the math stages: resuming a CPU run on a GPU is
    allowed, and changing ``[output]`` only re-encodes.
    """
    record = settings.as_record()
    video = record["video"]
    ids = {name: content_id(print_) for name, print_ in inputs.prints.items()}
    decode = {"inputs": {"video": ids["video"]}, "video": {k: video[k] for k in ("stride", "max_frames", "size")}}
    flow = _merged(decode, {"video": {k: video[k] for k in ("flow", "estimator", "iterations", "weights")}})
    align = _merged(flow, {
        "inputs": {"image": ids["image"], "region_mask": ids.get("region_mask")},
        "model": {"size": list(inputs.size)},
        "align": record["align"],
    })
    guidance = {k: v for k, v in record["guidance"].items() if k != "preview_every"}
    model = {k: v for k, v in record["model"].items() if k != "device"}
    guide = _merged(align, {"model": model, "estimator": record["estimator"], "guidance": guidance,
                            "video": {"init": video["init"]}})
    encode = _merged(align if flow_only else guide, {"output": record["output"], "flow_only": flow_only})
    return _plain({"decode": decode, "flow": flow, "align": align, "guide": guide, "encode": encode})


def _resolve_changes(manifest: Manifest, wanted: dict[str, dict[str, Any]], restart: bool, console: Console) -> None:
    """Refuse to mix results made with other settings, or (``--restart``) move them aside."""
    math_stages = {name: wanted[name] for name in STAGES if name != "encode"}
    stale = manifest.stale_stages(math_stages)
    recorded = [name for name in STAGES if name in manifest.record["stages"]]
    if not stale and not (restart and recorded):
        return
    first = STAGES.index(next(iter(stale))) if stale else 0
    affected = list(STAGES[first:])
    if not restart:
        name = next(iter(stale))
        changes = stale[name]
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise MtransferError(
            f"{manifest.folder}: holds results made with other settings ({shown}); use --out NEW_FOLDER to keep "
            f"them, or --restart to move the {', '.join(a for a in affected if a in recorded)} results to "
            f"{manifest.folder / 'superseded'} and recompute"
        )
    paths = [manifest.folder / name for stage in affected for name in STAGE_OUTPUTS[stage]]
    moved = manifest.supersede(affected, paths)
    if moved is not None:
        console.print(f"--restart: moved the earlier {', '.join(affected)} results to {moved}", highlight=False)


def run_pipeline(request: RunRequest, console: Console) -> Path:
    """Run (or resume) the whole pipeline for ``request``; returns the run folder."""
    started = time.perf_counter()
    config = load_pipeline(request.pipeline, request.overrides)
    settings = RunSettings.from_config(config)
    inputs = check_inputs(request, settings)
    if not request.flow_only:
        check_models(settings.model, settings.estimator)
        if settings.execution.executor == "ray":
            import_ray()  # its absence is a one-line error now, not after the flow stage
    device = settings.model.torch_device()
    folder = request.out or default_folder(request.video, request.image)
    with RunLock(folder):
        manifest = Manifest.open(folder)
        wanted = stage_settings(settings, inputs, request.flow_only)
        _resolve_changes(manifest, wanted, request.restart, console)
        manifest.update_header({
            "command": " ".join(sys.argv),
            "pipeline": settings.name,
            "config": _plain(config),
            "inputs": inputs.prints,
            "versions": versions(),
            "device": str(device),
            "flow_only": request.flow_only,
        })
        with progress_bar(console, 18) as progress, ExitStack() as resources:
            ctx = RunContext(
                video=request.video, image=request.image, region_mask=inputs.region_mask, size=inputs.size,
                frame_count=inputs.frame_count, fps=inputs.fps, folder=folder, settings=settings,
                stage_settings=wanted, manifest=manifest, device=device, progress=progress, console=console,
                resources=resources,
            )
            clip = decode_stage(ctx)
            driving = flow_stage(ctx, clip)
            motion = align_stage(ctx, driving)
            results = None if request.flow_only else guide_stage(ctx, motion)
            encode_stage(ctx, clip, motion, results)
    done = ", ".join(f"{count} {stage}" for stage, count in ctx.computed.items()) or "nothing (all up to date)"
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f} s: computed {done}; see {folder / 'report.html'}",
                  highlight=False)
    return folder
