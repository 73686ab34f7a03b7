"""The five stages of ``mtransfer run``: decode → flow → align → guide → encode.

Each stage is a function of the run context (and of the previous stage's output) returning its own
output. Work happens frame by frame: a frame's files are written atomically, then the manifest records
the frame, so a stage resumes at the first unrecorded frame and a finished stage only reloads its files.
Later stages always read what earlier ones wrote to disk (not what they held in memory), so a resumed
run computes exactly what an uninterrupted one would.

Run folder layout (paths relative to it)::

    manifest.json                 settings, input fingerprints, versions, per-stage/per-frame status
    source.png                    the target image at the working size
    driving/0000.png              decoded driving frames (flow resolution)
    cache/driving_flow/0001.flo   driving flow frame 0 → t, on the video's grid
    flow/0000.flo                 aligned target flows, on the image's grid (frame 0: no motion)
    flow_color/0000.png           their colour coding (one scale for the clip)
    edit_mask/0000.png            where guidance may change the image (white)
    frames/0000.png               the results
    cache/latents, cache/achieved_flow, cache/source_state.pt   what resuming and the report need
    result.mp4, result.gif, side_by_side.mp4, flow.mp4, report.html
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from mtransfer.errors import MtransferError
from mtransfer.estimators import FlowEstimator, load_estimator
from mtransfer.files import atomic_path, load_image, save_image
from mtransfer.flows.io import motion_problem, read_flow, read_mask, write_flow
from mtransfer.flows.ops import compose
from mtransfer.flows.viz import flow_to_color
from mtransfer.guidance.edit import SourceState, edit_image, prepare_source
from mtransfer.pipeline.align import align_flows, motion_mask
from mtransfer.pipeline.manifest import Manifest
from mtransfer.pipeline.models import cpu_warning, load_backend
from mtransfer.pipeline.report import ReportFrame, write_report
from mtransfer.pipeline.settings import RunSettings
from mtransfer.video import iter_frames, write_video
from mtransfer.video_flow import video_flows
from mtransfer.speed import speed_switches

SOURCE = "source.png"
DRIVING = "driving"
DRIVING_FLOW = "cache/driving_flow"
FLOW = "flow"
FLOW_COLOR = "flow_color"
EDIT_MASK = "edit_mask"
FRAMES = "frames"
LATENTS = "cache/latents"
ACHIEVED_FLOW = "cache/achieved_flow"
SOURCE_STATE = "cache/source_state.pt"
RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE, FLOW_VIDEO, REPORT = (
    "result.mp4", "result.gif", "side_by_side.mp4", "flow.mp4", "report.html"
)

STAGES = ("decode", "flow", "align", "guide", "encode")
STAGE_OUTPUTS = {
    "decode": (DRIVING,),
    "flow": (DRIVING_FLOW,),
    "align": (SOURCE, FLOW, FLOW_COLOR, EDIT_MASK),
    "guide": (FRAMES, LATENTS, ACHIEVED_FLOW, SOURCE_STATE),
    "encode": (RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE, FLOW_VIDEO, REPORT),
}


@dataclass
class RunContext:
    """What every stage needs: inputs, validated settings, the run folder and its manifest, progress."""

    video: Path
    image: Path
    region_mask: Path | None
    size: tuple[int, int]
    frame_count: int
    fps: float
    folder: Path
    settings: RunSettings
    stage_settings: dict[str, dict[str, Any]]
    manifest: Manifest
    device: torch.device
    progress: Progress
    console: Console
    resources: ExitStack = field(default_factory=ExitStack)  # closed when the run ends (e.g. speed switches)
    computed: dict[str, int] = field(default_factory=dict)

    def file(self, kind: str, index: int, suffix: str) -> Path:
        """The numbered file of one frame, e.g. ``frames/0003.png``."""
        return self.folder / kind / f"{index:04d}{suffix}"

    def pending(self, stage: str, indices: range, *files: tuple[str, str]) -> list[int]:
        """Frames of ``indices`` not yet recorded as done by ``stage`` or whose files have gone missing."""
        done = self.manifest.done_frames(stage)
        return [
            i for i in indices
            if i not in done or not all(self.file(kind, i, suffix).exists() for kind, suffix in files)
        ]

    def count(self, stage: str) -> None:
        self.computed[stage] = self.computed.get(stage, 0) + 1


@dataclass(frozen=True)
class Clip:
    """The decoded driving frames ``(T, 3, h, w)`` in [0, 1] and their rate (after the stride)."""

    frames: torch.Tensor
    fps: float


@dataclass(frozen=True)
class Motion:
    """The target image ``(3, H, W)``, its target flows ``(T, 2, H, W)`` and edit masks ``(T, 1, H, W)``."""

    source: torch.Tensor
    flows: torch.Tensor
    masks: torch.Tensor
    max_magnitude: float
    still: list[bool]


# --- decode --------------------------------------------------------------------------------------------


def decode_stage(ctx: RunContext) -> Clip:
    """Decode the driving frames (stride, frame limit, flow resolution) into ``driving/``."""
    video = ctx.settings.video
    settings = ctx.stage_settings["decode"]
    ctx.manifest.begin("decode", settings, total=ctx.frame_count)
    pending = ctx.pending("decode", range(ctx.frame_count), (DRIVING, ".png"))
    task = ctx.progress.add_task("decode", total=ctx.frame_count, completed=ctx.frame_count - len(pending))
    if pending:
        frames = iter_frames(ctx.video, stride=video.stride, max_frames=ctx.frame_count, size=video.resize)
        wanted = set(pending)
        for index, frame in enumerate(frames):
            if index in wanted:
                save_image(ctx.file(DRIVING, index, ".png"), frame)
                ctx.manifest.frame_done("decode", index)
                ctx.count("decode")
                ctx.progress.advance(task)
        if index + 1 < ctx.frame_count:
            raise MtransferError(f"{ctx.video}: decoded only {index + 1} of the {ctx.frame_count} frames it announces")
    ctx.manifest.finish("decode")
    frames = torch.stack([load_image(ctx.file(DRIVING, i, ".png")) for i in range(ctx.frame_count)])
    return Clip(frames, ctx.fps)


# --- flow ----------------------------------------------------------------------------------------------


def flow_stage(ctx: RunContext, clip: Clip) -> torch.Tensor:
    """The driving flow from frame 0 to every frame ``(T, 2, h, w)`` (frame 0: zero), cached per frame."""
    video = ctx.settings.video
    count = len(clip.frames)
    ctx.manifest.begin("flow", ctx.stage_settings["flow"], total=count - 1)
    pending = ctx.pending("flow", range(1, count), (DRIVING_FLOW, ".flo"))
    if video.flow == "chained" and pending:
        pending = list(range(pending[0], count))  # each frame builds on the one before
    task = ctx.progress.add_task(f"flow ({video.flow})", total=count - 1, completed=count - 1 - len(pending))
    if pending:
        estimator = load_estimator(
            video.estimator, device=ctx.device, weights=video.weights or None, iterations=video.iterations or None
        )
        for index, flow in _driving_flows(ctx, clip.frames, pending, estimator):
            write_flow(ctx.file(DRIVING_FLOW, index, ".flo"), flow)
            ctx.manifest.frame_done("flow", index)
            ctx.count("flow")
            ctx.progress.advance(task)
    ctx.manifest.finish("flow")
    zero = torch.zeros(2, *clip.frames.shape[-2:])
    return torch.stack([zero] + [read_flow(ctx.file(DRIVING_FLOW, i, ".flo")) for i in range(1, count)])


def _driving_flows(
    ctx: RunContext, frames: torch.Tensor, pending: list[int], estimator: FlowEstimator
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(t, flow 0 → t)`` for the pending frames: estimated directly, or chained from t-1 → t steps."""
    video = ctx.settings.video
    options = {"batch_size": video.batch_size, "device": ctx.device}
    if video.flow == "direct":
        chosen = [0, *pending]
        for position, flow in video_flows(frames[chosen], estimator, reference="first", **options):
            yield chosen[position], flow.float().cpu()
        return
    start = pending[0]
    total = read_flow(ctx.file(DRIVING_FLOW, start - 1, ".flo")) if start > 1 else torch.zeros(2, *frames.shape[-2:])
    for position, step in video_flows(frames[start - 1 :], estimator, reference="previous", **options):
        total = compose(total, step.float().cpu())  # 0 → t-1, then t-1 → t
        yield start - 1 + position, total


# --- align ---------------------------------------------------------------------------------------------


def align_stage(ctx: RunContext, driving: torch.Tensor) -> Motion:
    """Lay the driving motion onto the target image (``[align]``) and derive the edit masks.

    Alignment is cheap and deterministic, so it is recomputed from the cached driving flows on every run;
    only frames not yet written are written.
    """
    align = ctx.settings.align
    source = load_image(ctx.image, ctx.size)
    region = read_mask(ctx.region_mask, ctx.size) if ctx.region_mask is not None else None
    flows = align_flows(driving, ctx.size, align, region)
    problem = motion_problem(flows.transpose(0, 1))
    if problem:  # e.g. align.strength 1e12: refused before any file of this stage is written
        raise MtransferError(f"{ctx.video}: the target motion after [align] (strength {align.strength:g}) {problem}")
    speeds = flows.norm(dim=1)
    still = [bool(speed.max() <= align.mask_threshold) for speed in speeds]
    if align.edit_mask:
        masks = motion_mask(flows, align.mask_threshold, align.mask_margin)
    else:
        masks = torch.ones(len(flows), 1, *ctx.size)
    max_magnitude = float(speeds.max())
    count = len(flows)
    ctx.manifest.begin("align", ctx.stage_settings["align"], total=count)
    if not (ctx.folder / SOURCE).exists():
        save_image(ctx.folder / SOURCE, source)
    pending = ctx.pending("align", range(count), (FLOW, ".flo"), (FLOW_COLOR, ".png"), (EDIT_MASK, ".png"))
    task = ctx.progress.add_task("align", total=count, completed=count - len(pending))
    for index in pending:
        write_flow(ctx.file(FLOW, index, ".flo"), flows[index])
        save_image(ctx.file(FLOW_COLOR, index, ".png"), flow_to_color(flows[index], max_magnitude))
        save_image(ctx.file(EDIT_MASK, index, ".png"), masks[index])
        ctx.manifest.frame_done("align", index, {"max_motion_px": round(float(speeds[index].max()), 3)})
        ctx.count("align")
        ctx.progress.advance(task)
    ctx.manifest.finish("align", max_motion_px=max_magnitude)
    return Motion(source, flows, masks, max_magnitude, still)


# --- guide ---------------------------------------------------------------------------------------------


def previous_frame_start(state: SourceState, previous_latent: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The shared start moved towards the previous frame's result: ``z_T + sqrt(a_T) (z_prev - z_source)``.

    That is the previous result forward-noised to the first level with the very noise the source's start
    implies, so frame t begins where frame t-1 ended up rather than where the source is.
    """
    a_first = float(alphas_cumprod[state.timesteps[0]])
    return state.start + math.sqrt(a_first) * (previous_latent.to(state.start) - state.latent)


def guide_stage(ctx: RunContext, motion: Motion) -> torch.Tensor:
    """Edit the target image under every frame's target flow; the results ``(T, 3, H, W)``.

    Frames without motion (frame 0 always) are the source image itself: there is nothing to edit, and
    the clip then starts exactly on the picture the user gave. ``prepare_source`` runs once per run (and
    is cached), so every frame starts from the same noise and shares the source's inversion.
    """
    settings = ctx.settings
    guidance = settings.guidance
    count = len(motion.flows)
    ctx.manifest.begin("guide", ctx.stage_settings["guide"], total=count)
    pending = ctx.pending("guide", range(count), (FRAMES, ".png"))
    if settings.video.init == "previous":  # each frame starts from the latent of the one before
        lost = [i for i in range(count) if not motion.still[i] and not ctx.file(LATENTS, i, ".pt").exists()]
        first = min(pending + lost, default=count)
        pending = list(range(first, count))
    moving = [i for i in pending if not motion.still[i]]
    passes = guidance.steps * guidance.recursions
    frames_task = ctx.progress.add_task("guide", total=count, completed=count - len(pending))
    if moving:
        warning = cpu_warning(settings.model, ctx.device, passes, len(moving))
        if warning:
            ctx.console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
        backend = load_backend(settings.model, motion.source, ctx.device)
        estimator = load_estimator(
            settings.estimator.name, device=ctx.device,
            weights=settings.estimator.weights or None, iterations=settings.estimator.iterations or None,
        )
        backend, estimator = ctx.resources.enter_context(speed_switches(backend, estimator, settings.model.speed))
        state = _source_state(ctx, backend, motion.source)
        passes_task = ctx.progress.add_task("  passes", total=len(moving) * passes)
    for index in pending:
        if motion.still[index]:
            image, info = motion.source, {"still": True}
        else:
            started = time.perf_counter()
            init = None
            previous = ctx.file(LATENTS, index - 1, ".pt")
            if settings.video.init == "previous" and previous.exists():
                init = previous_frame_start(state, torch.load(previous, weights_only=True), backend.alphas_cumprod)
            result = edit_image(
                backend, estimator, state, motion.flows[index].to(ctx.device), guidance,
                edit_mask=motion.masks[index] if settings.align.edit_mask else None,
                init_latent=init,
                progress=lambda: ctx.progress.advance(passes_task),
            )
            _save_tensor(ctx.file(LATENTS, index, ".pt"), result.latent)
            write_flow(ctx.file(ACHIEVED_FLOW, index, ".flo"), result.achieved_flow)
            image, info = result.image, _frame_record(result, motion, index, time.perf_counter() - started)
            if result.diverged:
                ctx.console.print(
                    f"[bold yellow]warning:[/] frame {index}: {result.divergence}; kept the last good estimate. "
                    "Try a lower guidance.guidance_weight or guidance.clip_grad.", highlight=False,
                )
        save_image(ctx.file(FRAMES, index, ".png"), image)
        ctx.manifest.frame_done("guide", index, info)
        ctx.count("guide")
        ctx.progress.advance(frames_task)
    ctx.manifest.finish("guide")
    return torch.stack([load_image(ctx.file(FRAMES, i, ".png")) for i in range(count)])


def _frame_record(result: Any, motion: Motion, index: int, seconds: float) -> dict[str, Any]:
    """What the manifest and the report keep about one edit: time, final losses, achieved flow error."""
    mask = motion.masks[index].to(result.achieved_flow.device) > 0
    error = (result.achieved_flow - motion.flows[index].to(result.achieved_flow)).norm(dim=0, keepdim=True)
    last = result.losses[-1] if result.losses else {}
    return {
        "seconds": round(seconds, 2),
        "flow_error_px": round(float(error[mask].mean()) if mask.any() else 0.0, 4),
        "final_energy": {k: round(float(v), 5) for k, v in last.items() if k in ("flow", "color", "recon", "total")},
        "diverged": result.diverged,
    }


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    with atomic_path(path) as tmp:
        torch.save(tensor.detach().cpu(), tmp)


def _source_state(ctx: RunContext, backend: Any, source: torch.Tensor) -> SourceState:
    """``prepare_source`` once per run folder: the result is cached, its settings are the guide stage's."""
    path = ctx.folder / SOURCE_STATE
    if path.exists():
        saved = torch.load(path, map_location=backend.device, weights_only=True)
        return SourceState(**saved)
    guidance = ctx.settings.guidance
    task = ctx.progress.add_task(f"  source ({guidance.source_noise})", total=guidance.steps)
    state = prepare_source(
        backend, source, ctx.settings.model.prompt, guidance, progress=lambda: ctx.progress.advance(task)
    )
    ctx.progress.update(task, completed=guidance.steps)
    with atomic_path(path) as tmp:
        torch.save({f.name: getattr(state, f.name) for f in fields(state)}, tmp)
    return state


# --- encode --------------------------------------------------------------------------------------------


def encode_stage(ctx: RunContext, clip: Clip, motion: Motion, results: torch.Tensor | None) -> list[Path]:
    """Write the videos and ``report.html``; skipped when nothing changed since they were written."""
    settings = ctx.stage_settings["encode"]
    outputs = [FLOW_VIDEO, REPORT] + ([RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE] if results is not None else [])
    paths = [ctx.folder / name for name in outputs]
    if ctx.manifest.is_done("encode", settings) and not ctx.computed and all(p.exists() for p in paths):
        return paths
    _supersede_other_encoding(ctx, settings)
    ctx.manifest.begin("encode", settings, total=len(outputs))
    task = ctx.progress.add_task("encode", total=len(outputs))
    fps = ctx.settings.output.fps or clip.fps
    crf = ctx.settings.output.crf
    driving = _to_height(clip.frames, ctx.size[0])
    colors = torch.stack([load_image(ctx.file(FLOW_COLOR, i, ".png")) for i in range(len(motion.flows))])
    write_video(ctx.folder / FLOW_VIDEO, torch.cat((driving, colors), dim=-1), fps, crf=crf)
    ctx.progress.advance(task)
    if results is not None:
        write_video(ctx.folder / RESULT_MP4, results, fps, crf=crf)
        write_video(ctx.folder / RESULT_GIF, results, fps)
        write_video(ctx.folder / SIDE_BY_SIDE, torch.cat((driving, colors, results), dim=-1), fps, crf=crf)
        ctx.progress.advance(task, 3)
    _write_report(ctx, clip, motion, results is not None, fps)
    ctx.progress.advance(task)
    ctx.manifest.finish("encode", fps=fps)
    ctx.computed["encode"] = len(outputs)
    return paths


def _supersede_other_encoding(ctx: RunContext, settings: dict[str, Any]) -> None:
    """Videos encoded with other ``[output]`` settings (or with/without ``--flow-only``) are moved to
    ``superseded/`` before re-encoding, like any other stale result, and the user is told."""
    record = ctx.manifest.record["stages"].get("encode")
    if not record or record.get("status") != "done" or record.get("settings") == settings:
        return
    moved = ctx.manifest.supersede(["encode"], [ctx.folder / name for name in STAGE_OUTPUTS["encode"]])
    if moved is not None:
        ctx.console.print(f"re-encoding with other output settings; the earlier videos are in {escape(str(moved))}",
                          highlight=False)


def _to_height(frames: torch.Tensor, height: int) -> torch.Tensor:
    """Frames resized to ``height`` rows, keeping their aspect, for side-by-side panels."""
    width = max(1, round(frames.shape[-1] * height / frames.shape[-2]))
    if (height, width) == tuple(frames.shape[-2:]):
        return frames
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _write_report(ctx: RunContext, clip: Clip, motion: Motion, has_results: bool, fps: float) -> None:
    guide = ctx.manifest.stage("guide")["frames"] if has_results else {}
    rows = []
    for index in range(len(motion.flows)):
        info = guide.get(f"{index:04d}", {})
        notes = {"motion": f"{float(motion.flows[index].norm(dim=0).max()):.2f} px max"}
        if info.get("still"):
            notes["edit"] = "none (no motion)"
        elif "flow_error_px" in info:
            notes["flow error"] = f"{info['flow_error_px']:.2f} px"
            notes["time"] = f"{info['seconds']:.1f} s"
            if info.get("diverged"):
                notes["diverged"] = "yes"
        rows.append(ReportFrame(
            index=index,
            driving=f"{DRIVING}/{index:04d}.png",
            flow_color=f"{FLOW_COLOR}/{index:04d}.png",
            edit_mask=f"{EDIT_MASK}/{index:04d}.png",
            result=f"{FRAMES}/{index:04d}.png" if has_results else None,
            notes=notes,
        ))
    settings = ctx.settings
    height, width = ctx.size
    summary = [
        f"{ctx.video.name}: {len(clip.frames)} frames at {fps:.3g} fps, onto {ctx.image.name} at {width}x{height} "
        f"(width x height); pipeline '{settings.name}'.",
        f"Model {settings.model.model}, flow estimator {settings.estimator.name} in the energy, "
        f"{settings.video.estimator} ({settings.video.flow}) for the video; {settings.guidance.steps} steps x "
        f"{settings.guidance.recursions} recursions; largest target motion {motion.max_magnitude:.2f} px.",
    ]
    media = [(FLOW_VIDEO, "driving video | target flow")]
    if has_results:
        media = [(RESULT_GIF, "result"), (SIDE_BY_SIDE, "driving | target flow | result")]
    title = f"mtransfer: {ctx.video.stem} onto {ctx.image.stem}"
    write_report(ctx.folder / REPORT, title, summary, SOURCE, rows, media, settings.as_record())
