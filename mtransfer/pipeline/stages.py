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
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, fields
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress

from mtransfer.errors import MtransferError
from mtransfer.estimators import FlowEstimator, load_estimator
from mtransfer.files import atomic_path, load_image, save_image
from mtransfer.flows.io import read_flow, read_mask, write_flow
from mtransfer.flows.ops import compose
from mtransfer.flows.viz import flow_to_color
from mtransfer.guidance.edit import SourceState, edit_image, prepare_source
from mtransfer.pipeline.align import align_flows, motion_mask
from mtransfer.pipeline.executors import Job, LocalExecutor, make_executor
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


@dataclass(frozen=True)
class FrameInput:
    """What a worker needs to edit frame ``index`` besides the shared source state (CPU tensors)."""

    index: int
    flow: torch.Tensor
    mask: torch.Tensor  # the edit mask; all ones when align.edit_mask is off
    previous_latent: torch.Tensor | None = None  # video.init = "previous": the result of frame index-1


@dataclass(frozen=True)
class FrameOutput:
    """A worker's edit of one frame, for the driver to write: CPU tensors and the manifest record."""

    image: torch.Tensor
    latent: torch.Tensor
    achieved_flow: torch.Tensor
    record: dict[str, Any]
    divergence: str | None


@dataclass(frozen=True)
class FrameEditor:
    """A worker factory (picklable): loads the models once in the worker's process, then edits frames.

    A CUDA device means the GPU Ray gave the worker (a worker sees only its own, as ``cuda``); ``auto``
    is resolved on the worker's machine. On the CPU the worker uses ``threads`` threads, the driver's
    count: CPU kernels sum in another order with another thread count, and frames must not depend on
    where they were made.
    """

    settings: RunSettings
    source: torch.Tensor
    threads: int

    def __call__(self) -> Callable[[FrameInput, SourceState, Any], FrameOutput]:
        device = self.settings.model.torch_device()
        device = torch.device("cuda") if device.type == "cuda" else device
        if device.type == "cpu":
            torch.set_num_threads(self.threads)
        backend, estimator = _load_models(self.settings, self.source, device, ExitStack())
        return partial(edit_frame, backend, estimator, self.settings)


def _load_models(settings: RunSettings, source: torch.Tensor, device: torch.device, resources: ExitStack) -> tuple[Any, Any]:
    backend = load_backend(settings.model, source, device)
    estimator = load_estimator(
        settings.estimator.name, device=device,
        weights=settings.estimator.weights or None, iterations=settings.estimator.iterations or None,
    )
    return resources.enter_context(speed_switches(backend, estimator, settings.model.speed))


def edit_frame(backend: Any, estimator: Any, settings: RunSettings, frame: FrameInput, state: SourceState,
               progress: Any) -> FrameOutput:
    """One frame's edit, wherever it runs. Its randomness comes from ``guidance.seed`` alone (a fresh
    generator per edit), so a frame's result does not depend on which worker made it or what it did before."""
    started = time.perf_counter()
    state = _state_on(state, backend.device)
    init = None
    if frame.previous_latent is not None:
        init = previous_frame_start(state, frame.previous_latent.to(backend.device), backend.alphas_cumprod)
    result = edit_image(
        backend, estimator, state, frame.flow.to(backend.device), settings.guidance,
        edit_mask=frame.mask if settings.align.edit_mask else None, init_latent=init, progress=progress,
    )
    record = _frame_record(result, frame, time.perf_counter() - started)
    return FrameOutput(result.image.cpu(), result.latent.detach().cpu(), result.achieved_flow.cpu(), record,
                       result.divergence if result.diverged else None)


def guide_stage(ctx: RunContext, motion: Motion) -> torch.Tensor:
    """Edit the target image under every frame's target flow; the results ``(T, 3, H, W)``.

    Frames without motion (frame 0 always) are the source image itself: there is nothing to edit, and
    the clip then starts exactly on the picture the user gave. ``prepare_source`` runs once per run (and
    is cached), so every frame starts from the same noise and shares the source's inversion. The edits
    run on the executor ``[execution]`` names (this process, or Ray workers that receive the source
    state through the object store); either way this process alone writes the frames and the manifest.
    """
    settings = ctx.settings
    guidance = settings.guidance
    count = len(motion.flows)
    ctx.manifest.begin("guide", ctx.stage_settings["guide"], total=count)
    pending = ctx.pending("guide", range(count), (FRAMES, ".png"))
    chained = settings.video.init == "previous"
    if chained:  # each frame starts from the latent of the one before
        lost = [i for i in range(count) if not motion.still[i] and not ctx.file(LATENTS, i, ".pt").exists()]
        first = min(pending + lost, default=count)
        pending = list(range(first, count))
    frames_task = ctx.progress.add_task("guide", total=count, completed=count - len(pending))
    for index in [i for i in pending if motion.still[i]]:
        _write_frame(ctx, index, motion.source, {"still": True}, frames_task)
    moving = [i for i in pending if not motion.still[i]]
    if moving:
        executor = make_executor(settings.execution, use_gpus=settings.model.device != "cpu")
        passes = guidance.steps * guidance.recursions
        warning = cpu_warning(settings.model, ctx.device, passes, len(moving))
        if warning:
            ctx.console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        local = isinstance(executor, LocalExecutor)
        resources = ExitStack()
        state = _cached_source_state(ctx)
        if local or state is None:  # with Ray the driver loads models only to prepare the source
            backend, estimator = _load_models(settings, motion.source, ctx.device, resources)
        if state is None:
            state = _prepare_source_state(ctx, backend, motion.source)
        if local:
            factory = lambda: partial(edit_frame, backend, estimator, settings)  # noqa: E731 (the models loaded above)
            ctx.resources.enter_context(resources)
            passes_task = ctx.progress.add_task("  passes", total=len(moving) * passes)
            progress = lambda: ctx.progress.advance(passes_task)  # noqa: E731
        else:  # the workers load their own models; the driver's are freed before they start
            resources.close()
            factory, progress = FrameEditor(settings, motion.source, torch.get_num_threads()), None
            state = _state_on(state, torch.device("cpu"))

        def busy(working: int, workers: int) -> None:
            ctx.progress.update(frames_task, description=f"guide {working}/{workers} busy")

        jobs = (Job(i, _frame_input(ctx, motion, i, chained)) for i in moving)
        with closing(executor.run(factory, state, jobs, progress=progress, on_busy=busy)) as finished:
            for done in finished:
                output = done.result
                _save_tensor(ctx.file(LATENTS, done.index, ".pt"), output.latent)
                write_flow(ctx.file(ACHIEVED_FLOW, done.index, ".flo"), output.achieved_flow)
                _write_frame(ctx, done.index, output.image, {**output.record, **done.record()}, frames_task)
                if output.divergence:
                    ctx.console.print(
                        f"[bold yellow]warning:[/] frame {done.index}: {output.divergence}; kept the last good "
                        "estimate. Try a lower guidance.guidance_weight or guidance.clip_grad.", highlight=False,
                    )
    ctx.manifest.finish("guide")
    return torch.stack([load_image(ctx.file(FRAMES, i, ".png")) for i in range(count)])


def _frame_input(ctx: RunContext, motion: Motion, index: int, chained: bool) -> FrameInput:
    """Frame ``index``'s job; with ``chained`` it reads the previous frame's latent, written by then."""
    previous = ctx.file(LATENTS, index - 1, ".pt")
    return FrameInput(
        index, motion.flows[index], motion.masks[index],
        torch.load(previous, weights_only=True) if chained and previous.exists() else None,
    )


def _write_frame(ctx: RunContext, index: int, image: torch.Tensor, info: dict[str, Any], task: Any) -> None:
    save_image(ctx.file(FRAMES, index, ".png"), image)
    ctx.manifest.frame_done("guide", index, info)
    ctx.count("guide")
    ctx.progress.advance(task)


def _state_on(state: SourceState, device: torch.device) -> SourceState:
    """The source state with its tensors on ``device`` (as shipped to workers: on the CPU)."""
    moved = {}
    for item in fields(state):
        value = getattr(state, item.name)
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            value = [tensor.to(device) for tensor in value]
        moved[item.name] = value
    return SourceState(**moved)


def _frame_record(result: Any, frame: FrameInput, seconds: float) -> dict[str, Any]:
    """What the manifest and the report keep about one edit: time, final losses, achieved flow error."""
    mask = frame.mask.to(result.achieved_flow.device) > 0
    error = (result.achieved_flow - frame.flow.to(result.achieved_flow)).norm(dim=0, keepdim=True)
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


def _cached_source_state(ctx: RunContext) -> SourceState | None:
    """The source state an earlier run of this folder prepared (on the CPU), if any."""
    path = ctx.folder / SOURCE_STATE
    return SourceState(**torch.load(path, map_location="cpu", weights_only=True)) if path.exists() else None


def _prepare_source_state(ctx: RunContext, backend: Any, source: torch.Tensor) -> SourceState:
    """``prepare_source`` once per run folder, cached; its settings are the guide stage's."""
    path = ctx.folder / SOURCE_STATE
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
    return paths


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
