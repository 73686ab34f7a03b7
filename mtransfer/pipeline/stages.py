"""The six stages of ``mtransfer run``: decode → flow → align → guide → evaluate → encode.

Each stage is a function of the run context (and of the previous stage's output) returning its own
output. Work happens frame by frame: a frame's files are written atomically, then the manifest records
the frame, so a stage resumes at the first unrecorded frame and a finished stage only reloads its files.
What a stage hands on is read back from the files it wrote (driving frames, driving flows, results) or,
for the cheap and deterministic alignment, recomputed from those files on every run and used from
memory by the guide stage; so a resumed run computes exactly what an uninterrupted one would.

A frame's target flow goes: ``decode_stage`` (the driving frame) → ``flow_stage`` (its motion measured
on the video's grid) → ``align_stage`` (laid onto the image: ``Motion.flows[t]``) → ``guide_stage``
(``Editor.edit(state, Motion.flows[t])``, see ``mtransfer.app.editor``) → ``frames/NNNN.png``, which
``evaluate_stage`` judges independently (``mtransfer.evaluation``) for the manifest, the report and the terminal.
``mtransfer flow`` runs the first two stages and ``render_driving_flow`` instead of the rest.

Run folder layout (paths relative to it)::

    manifest.json                 settings, input fingerprints, versions, per-stage/per-frame status
    source.png                    the target image at the working size
    driving/0000.png              decoded driving frames (flow resolution)
    driving_flow/0001.flo         driving flow as estimated: frame 0 → t (direct) or t-1 → t (chained)
    flow/0000.flo                 aligned target flows 0 → t, on the image's grid (frame 0: no motion)
    flow_color/0000.png           their colour coding (one scale for the clip)
    edit_mask/0000.png            where guidance may change the image (white)
    frames/0000.png               the results
    evaluation.json               their independent evaluation (also per frame in the manifest)
    cache/latents, cache/achieved_flow, cache/source_state.pt   what resuming and the report need
    result.mp4, result.gif, side_by_side.mp4, flow.mp4, report.html
    achieved_color/0001.png, flow_error/0001.png                 the report's achieved flow and its error
    driving_color/0001.png, summary.json                         (``mtransfer flow`` only)
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from mtransfer.app.editor import Editor
from mtransfer.app.executors import Job, make_executor
from mtransfer.app.models import load_estimator
from mtransfer.app.settings import RunSettings
from mtransfer.devices import parse_device
from mtransfer.errors import InputError, UsageError
from mtransfer.estimators import FlowEstimator
from mtransfer.evaluation import EVALUATION, FIGURES, evaluate_run, judge_estimator_name
from mtransfer.files import atomic_path, json_ready, load_image, save_image, with_infinities
from mtransfer.flows.io import motion_problem, read_flow, read_mask, write_flow
from mtransfer.flows.ops import compose
from mtransfer.flows.viz import error_scale, error_to_color, flow_to_color
from mtransfer.guidance.edit import SourceState, warm_start_latent, warm_start_step
from mtransfer.flows.align import motion_mask
from mtransfer.pipeline.manifest import Manifest
from mtransfer.app.report import ACHIEVED_COLOR, FLOW_ERROR, Plot, Report, ReportFrame, figure_values, write_report
from mtransfer.video import iter_frames, write_video
from mtransfer.video_flow import video_flows

SOURCE = "source.png"
DRIVING = "driving"
DRIVING_FLOW = "driving_flow"
DRIVING_COLOR = "driving_color"
SUMMARY = "summary.json"
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

KILL_AFTER_ENV = "MTRANSFER_TEST_KILL_AFTER_FRAME"
"""Tests only: the guide stage kills its own process (SIGKILL) right after recording this frame, a
deterministic stand-in for a power cut at the worst moment."""

STAGE_OUTPUTS = {
    "decode": (DRIVING,),
    "flow": (DRIVING_FLOW,),
    "align": (SOURCE, FLOW, FLOW_COLOR, EDIT_MASK),
    "guide": (FRAMES, LATENTS, ACHIEVED_FLOW, SOURCE_STATE),
    "evaluate": (EVALUATION,),
    "encode": (RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE, FLOW_VIDEO, REPORT, DRIVING_COLOR, SUMMARY,
               ACHIEVED_COLOR, FLOW_ERROR),
}


@dataclass
class RunContext:
    """What every stage needs: inputs, validated settings, the run folder and its manifest, progress."""

    video: Path
    frame_count: int
    fps: float
    folder: Path
    settings: RunSettings
    stage_settings: dict[str, dict[str, Any]]
    manifest: Manifest
    device: torch.device
    progress: Progress
    console: Console
    image: Path | None = None  # the image and its working size: from the align stage on
    region_mask: Path | None = None
    size: tuple[int, int] = (0, 0)
    frame_size: tuple[int, int] | None = None  # (height, width) the driving frames are decoded at; None: as recorded
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


@dataclass(frozen=True)
class DrivingFlows:
    """The driving flows ``(T, 2, h, w)`` as the flow stage estimated them (frame 0: zero): from frame 0
    to frame t (``reference = "first"``), or from frame t-1 to t (``"previous"``, ``video.flow = chained``)."""

    measured: torch.Tensor
    reference: str

    def from_first(self) -> torch.Tensor:
        """Frame 0 → t for every t: the motion a still image must follow (steps composed in order)."""
        if self.reference == "first":
            return self.measured
        totals = [self.measured[0]]
        for step in self.measured[1:]:
            totals.append(compose(totals[-1], step))  # 0 → t-1, then t-1 → t
        return torch.stack(totals)


# --- decode --------------------------------------------------------------------------------------------


def decode_stage(ctx: RunContext) -> Clip:
    """Decode the driving frames (stride, frame limit, flow resolution) into ``driving/``."""
    video = ctx.settings.video
    settings = ctx.stage_settings["decode"]
    ctx.manifest.begin("decode", settings, total=ctx.frame_count)
    pending = ctx.pending("decode", range(ctx.frame_count), (DRIVING, ".png"))
    task = ctx.progress.add_task("decode", total=ctx.frame_count, completed=ctx.frame_count - len(pending))
    if pending:
        frames = iter_frames(ctx.video, stride=video.stride, max_frames=ctx.frame_count, size=ctx.frame_size)
        wanted = set(pending)
        for index, frame in enumerate(frames):
            if index in wanted:
                save_image(ctx.file(DRIVING, index, ".png"), frame)
                ctx.manifest.frame_done("decode", index)
                ctx.count("decode")
                ctx.progress.advance(task)
        if index + 1 < ctx.frame_count:
            raise InputError(f"{ctx.video}: decoded only {index + 1} of the {ctx.frame_count} frames it announces")
    ctx.manifest.finish("decode")
    frames = torch.stack([load_image(ctx.file(DRIVING, i, ".png")) for i in range(ctx.frame_count)])
    return Clip(frames, ctx.fps)


# --- flow ----------------------------------------------------------------------------------------------


def flow_stage(ctx: RunContext, clip: Clip) -> DrivingFlows:
    """The driving flow of every frame (``video.flow``: from frame 0, or chained steps), cached per frame."""
    video = ctx.settings.video
    count = len(clip.frames)
    reference = "first" if video.flow == "direct" else "previous"
    ctx.manifest.begin("flow", ctx.stage_settings["flow"], total=count - 1)
    pending = ctx.pending("flow", range(1, count), (DRIVING_FLOW, ".flo"))
    task = ctx.progress.add_task(f"flow ({video.flow})", total=count - 1, completed=count - 1 - len(pending))
    if pending:
        estimator = load_estimator(video.flow_estimator, ctx.device, for_guidance=False)
        for index, flow in _driving_flows(ctx, clip.frames, pending, estimator, reference):
            write_flow(ctx.file(DRIVING_FLOW, index, ".flo"), flow)
            ctx.manifest.frame_done("flow", index)
            ctx.count("flow")
            ctx.progress.advance(task)
    ctx.manifest.finish("flow")
    zero = torch.zeros(2, *clip.frames.shape[-2:])
    measured = torch.stack([zero] + [read_flow(ctx.file(DRIVING_FLOW, i, ".flo")) for i in range(1, count)])
    return DrivingFlows(measured, reference)


def _driving_flows(
    ctx: RunContext, frames: torch.Tensor, pending: list[int], estimator: FlowEstimator, reference: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(t, flow)`` for the pending frames: 0 → t (``first``), or t-1 → t for each run of consecutive
    pending frames (``previous``)."""
    options = {"batch_size": ctx.settings.video.batch_size, "device": ctx.device}
    if reference == "first":
        runs = [[0, *pending]]
    else:
        runs = [[pending[0] - 1]]
        for index in pending:
            if index != runs[-1][-1] + 1:
                runs.append([index - 1])
            runs[-1].append(index)
    for chosen in runs:
        for position, flow in video_flows(frames[chosen], estimator, reference=reference, **options):
            yield chosen[position], flow.float().cpu()


def render_driving_flow(ctx: RunContext, clip: Clip, driving: DrivingFlows) -> list[dict[str, Any]]:
    """``mtransfer flow``'s pictures: each flow coloured on one scale (the clip's largest motion) in
    ``driving_color/``, and ``flow.mp4`` (frame | flow); returns one record per flow. Redone every run
    (it is cheap), recorded as the ``encode`` stage so that ``--restart`` moves it with the rest."""
    count = len(clip.frames)
    ctx.manifest.begin("encode", ctx.stage_settings["encode"], total=count - 1)
    magnitudes = driving.measured[1:].norm(dim=1)
    max_magnitude = float(magnitudes.max())
    task = ctx.progress.add_task("render", total=count - 1)
    records, side_by_side = [], []
    for index in range(1, count):
        color = flow_to_color(driving.measured[index], max_magnitude=max_magnitude)
        save_image(ctx.file(DRIVING_COLOR, index, ".png"), color)
        side_by_side.append(torch.cat((clip.frames[index], color), dim=2))
        records.append({
            "index": index,
            "flow": f"{DRIVING_FLOW}/{index:04d}.flo",
            "color": f"{DRIVING_COLOR}/{index:04d}.png",
            "mean_magnitude": float(magnitudes[index - 1].mean()),
            "max_magnitude": float(magnitudes[index - 1].max()),
        })
        ctx.progress.advance(task)
    write_video(ctx.folder / FLOW_VIDEO, torch.stack(side_by_side), clip.fps)
    ctx.manifest.finish("encode", max_motion_px=max_magnitude)
    return records


# --- align ---------------------------------------------------------------------------------------------


def align_stage(ctx: RunContext, driving: DrivingFlows) -> Motion:
    """Lay the driving motion onto the target image (``[align]``) and derive the edit masks.

    Alignment is cheap and deterministic, so it is recomputed from the cached driving flows on every run;
    only frames not yet written are written.
    """
    align = ctx.settings.align
    source = load_image(ctx.image, ctx.size)
    region = read_mask(ctx.region_mask, ctx.size) if ctx.region_mask is not None else None
    flows = align.align_flows(driving.from_first(), ctx.size, region)
    problem = motion_problem(flows.transpose(0, 1))
    if problem:  # e.g. align.strength 1e12: refused before any file of this stage is written
        raise UsageError(f"{ctx.video}: the target motion after [align] (strength {align.strength:g}) {problem}")
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
    previous_latent: torch.Tensor | None = None  # init = "previous" / warm_start: the result of frame index-1


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
    """A worker factory for ``mtransfer.app.executors`` (picklable): ``Editor.load`` once in the worker's
    process, then ``edit_frames`` for every job (``video.batch`` frames) it is handed.

    A CUDA ``model.device`` means the GPU Ray gave the worker (a worker sees only its own, as ``cuda``);
    ``auto`` is resolved on the worker's machine. On the CPU the worker uses ``threads`` threads, the
    driver's count: CPU kernels sum in another order with another thread count, and a frame must not
    depend on where it was made.
    """

    settings: RunSettings
    source: torch.Tensor
    threads: int

    def __call__(self) -> Callable[[FrameInput, SourceState, Any], FrameOutput]:
        name = self.settings.model.device
        device = parse_device("cuda" if name.strip().lower().startswith("cuda") else name, "model.device")
        if device.type == "cpu":
            torch.set_num_threads(self.threads)
        return partial(edit_frames, Editor.load(self.settings, self.source, device))


def edit_frames(editor: Editor, frames: tuple[FrameInput, ...], state: SourceState, progress: Any) -> list[FrameOutput]:
    """A job's edits (``video.batch`` frames, together), wherever it runs. Randomness comes from
    ``guidance.seed`` alone (a fresh generator per edit; a warm start's re-noising from the seed and the
    frame index), so a frame does not depend on which worker made it, what it did before or its batch."""
    started = time.perf_counter()
    state = state.to(editor.device)
    settings = editor.settings
    masks = [frame.mask for frame in frames] if settings.align.edit_mask else None
    if len(frames) > 1:  # batches are refused with chained starts (RunSettings), so all start alike
        results = editor.edit_many(state, torch.stack([frame.flow for frame in frames]), masks, progress=progress)
        seconds = (time.perf_counter() - started) / len(frames)
        return [_frame_output(result, frame, seconds, 0, settings) for result, frame in zip(results, frames)]
    (frame,) = frames
    init, first_step = None, 0
    if frame.previous_latent is not None:
        previous = frame.previous_latent.to(editor.device)
        if settings.video.warm_start:
            first_step = warm_start_step(settings.guidance.steps, settings.video.warm_start)
            seed = warm_start_seed(settings.guidance.seed, frame.index)
            init = warm_start_latent(editor.backend, state, previous, first_step, seed)
        else:
            init = previous_frame_start(state, previous, editor.backend.alphas_cumprod)
    result = editor.edit(
        state, frame.flow, edit_mask=None if masks is None else masks[0],
        init_latent=init, first_step=first_step, progress=progress,
    )
    return [_frame_output(result, frame, time.perf_counter() - started, first_step, settings)]


def _frame_output(result: Any, frame: FrameInput, seconds: float, first_step: int, settings: RunSettings) -> FrameOutput:
    record = _frame_record(result, frame, seconds)
    record["passes"] = len(result.losses)
    record["passes_saved"] = first_step * settings.guidance.recursions
    return FrameOutput(result.image.cpu(), result.latent.detach().cpu(), result.achieved_flow.cpu(), record,
                       result.divergence if result.diverged else None)


def warm_start_seed(seed: int, index: int) -> int:
    """The seed of frame ``index``'s warm-start noise: fixed by the run's seed and the frame."""
    return seed * 1_000_003 + index


def guide_stage(ctx: RunContext, motion: Motion) -> torch.Tensor:
    """Edit the target image under every frame's target flow; the results ``(T, 3, H, W)``.

    Frames without motion (frame 0 always) are the source image itself: there is nothing to edit, and
    the clip then starts exactly on the picture the user gave. The source is prepared once per run (and
    cached), so every frame starts from the same noise and shares the source's inversion. The edits run
    on the executor ``[execution]`` names: this process (the models loaded once, ``Editor``), or Ray
    workers that load their own and receive the source state through the object store. Either way this
    process alone writes the frames and the manifest.
    """
    settings = ctx.settings
    count = len(motion.flows)
    ctx.manifest.begin("guide", ctx.stage_settings["guide"], total=count)
    pending = ctx.pending("guide", range(count), (FRAMES, ".png"))
    chained = settings.video.init == "previous" or settings.video.warm_start > 0
    if chained:  # each frame starts from the latent of the one before
        lost = [i for i in range(count) if not motion.still[i] and not ctx.file(LATENTS, i, ".pt").exists()]
        first = min(pending + lost, default=count)
        pending = list(range(first, count))
    frames_task = ctx.progress.add_task("guide", total=count, completed=count - len(pending))
    kill_after = os.environ.get(KILL_AFTER_ENV)

    def write(index: int, image: torch.Tensor, info: dict[str, Any]) -> None:
        save_image(ctx.file(FRAMES, index, ".png"), image)
        ctx.manifest.frame_done("guide", index, info)
        ctx.count("guide")
        ctx.progress.advance(frames_task)
        if kill_after is not None and index == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    moving = [i for i in pending if not motion.still[i]]
    for index in pending:
        if motion.still[index]:
            write(index, motion.source, {"still": True})
    if moving:
        executor = make_executor(settings.execution, use_gpus=settings.model.device != "cpu")
        local = settings.execution.executor == "local"
        if not local:
            executor.connect()  # an unreachable cluster is refused before the source is prepared
        passes = _planned_passes(settings, moving, motion.still)
        factory, state, progress = _frame_workers(ctx, motion.source, len(moving), passes, local=local)

        def busy(working: int, workers: int) -> None:
            ctx.progress.update(frames_task, description=f"guide {working}/{workers} busy")

        batches = [moving[start : start + settings.video.batch] for start in range(0, len(moving), settings.video.batch)]
        batches_by_first = {b[0]: b for b in batches}
        jobs = (Job(b[0], tuple(_frame_input(ctx, motion, i, chained) for i in b)) for b in batches)
        with closing(executor.run(factory, state, jobs, progress=progress, on_busy=busy)) as finished:
            for done in finished:
                for output, index in zip(done.result, batches_by_first[done.index]):
                    _save_tensor(ctx.file(LATENTS, index, ".pt"), output.latent)
                    write_flow(ctx.file(ACHIEVED_FLOW, index, ".flo"), output.achieved_flow)
                    if output.divergence:
                        ctx.console.print(
                            f"[bold yellow]warning:[/] frame {index}: {escape(output.divergence)}; kept the last "
                            "good estimate. Try a lower guidance.guidance_weight or guidance.clip_grad.",
                            highlight=False,
                        )
                    write(index, output.image, {**output.record, **done.record()})
    ctx.manifest.finish("guide")
    return torch.stack([load_image(ctx.file(FRAMES, i, ".png")) for i in range(count)])


def _planned_passes(settings: RunSettings, moving: list[int], still: list[bool]) -> int:
    """Guided passes the moving frames will take: all steps, or the warm-start tail where the frame
    before was edited (a warm start needs its latent)."""
    guidance = settings.guidance
    full = guidance.steps
    warm = full - warm_start_step(full, settings.video.warm_start) if settings.video.warm_start else full
    return guidance.recursions * sum(warm if i > 0 and not still[i - 1] else full for i in moving)


def _frame_workers(
    ctx: RunContext, source: torch.Tensor, frames: int, passes: int, *, local: bool
) -> tuple[Callable[[], Any], SourceState, Callable[[], None] | None]:
    """The worker factory, the shared source state and the per-pass progress callback of the guide stage.

    Locally the models are loaded here once and serve every frame. Ray workers load their own, so this
    process loads them only to prepare the source state when it is not cached yet; the state then
    travels on the CPU, and per-pass progress stays in the workers.
    """
    state = _cached_source_state(ctx)
    if not local:
        if state is None:
            state = _prepare_and_free(ctx, source, frames)
        return FrameEditor(ctx.settings, source, torch.get_num_threads()), state.to(torch.device("cpu")), None
    editor = ctx.resources.enter_context(_load_editor(ctx, source, frames))
    state = _prepare_source_state(ctx, editor, source) if state is None else state.to(editor.device)
    task = ctx.progress.add_task("  passes", total=passes)
    return (lambda: partial(edit_frames, editor)), state, (lambda: ctx.progress.advance(task))


def _load_editor(ctx: RunContext, source: torch.Tensor, frames: int) -> Editor:
    return Editor.load(
        ctx.settings, source, ctx.device, frames=frames,
        warn=lambda text: ctx.console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False),
    )


def _prepare_and_free(ctx: RunContext, source: torch.Tensor, frames: int) -> SourceState:
    """The source state prepared with models loaded for that alone, freed again (on the CPU) so that Ray
    workers on this machine's GPUs get all of their memory."""
    with _load_editor(ctx, source, frames) as editor:
        state = _prepare_source_state(ctx, editor, source).to(torch.device("cpu"))
    del editor
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return state


def _frame_input(ctx: RunContext, motion: Motion, index: int, chained: bool) -> FrameInput:
    """Frame ``index``'s job; with ``chained`` it reads the previous frame's latent, written by then."""
    previous = ctx.file(LATENTS, index - 1, ".pt")
    return FrameInput(
        index, motion.flows[index], motion.masks[index],
        torch.load(previous, weights_only=True) if chained and previous.exists() else None,
    )


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


def _prepare_source_state(ctx: RunContext, editor: Editor, source: torch.Tensor) -> SourceState:
    """``Editor.prepare`` once per run folder, cached; its settings are the guide stage's."""
    guidance = ctx.settings.guidance
    task = ctx.progress.add_task(f"  source ({guidance.source_noise})", total=guidance.steps)
    state = editor.prepare(source, progress=lambda: ctx.progress.advance(task))
    ctx.progress.update(task, completed=guidance.steps)
    with atomic_path(ctx.folder / SOURCE_STATE) as tmp:
        torch.save({f.name: getattr(state, f.name) for f in fields(state)}, tmp)
    return state


# --- evaluate ------------------------------------------------------------------------------------------


def judge_name(settings: RunSettings) -> str:
    """The estimator that judges the results: ``evaluation.estimator``, or the automatic choice here."""
    return settings.evaluation.estimator or judge_estimator_name(settings.estimator.name)


def evaluate_stage(ctx: RunContext) -> dict[str, Any] | None:
    """Judge every result independently of the estimator that guided it (``evaluate_run``): fidelity,
    preservation, temporal consistency; the evaluation, or None with ``evaluation.enabled = false``.

    Each judged frame's figures are recorded in the manifest as it finishes, so an interrupted evaluation
    resumes at the next frame; results (re)made by this run are judged again. The temporal figures (cheap,
    from pairs of frames) and ``evaluation.json`` are redone whenever any frame was judged.
    """
    settings = ctx.stage_settings["evaluate"]
    path = ctx.folder / EVALUATION
    if not ctx.settings.evaluation.enabled:
        moved = ctx.manifest.supersede(["evaluate"], [path]) if "evaluate" in ctx.manifest.record["stages"] else None
        kept = f"; the earlier evaluation moved to {escape(str(moved))}" if moved is not None else ""
        ctx.console.print(f"evaluation off (evaluation.enabled = false){kept}; `mtransfer eval` can judge the "
                          "run later", highlight=False)
        return None
    remade = "guide" in ctx.computed
    if ctx.manifest.is_done("evaluate", settings) and not remade and path.exists():
        # as the manifest and the report hold it (`mtransfer eval` may have rewritten evaluation.json since)
        record = with_infinities(ctx.manifest.stage("evaluate"))
        return {"folder": str(ctx.folder), "kind": "run", "judge": record["judge"], "summary": record["summary"],
                "frames": list(record["frames"].values())}
    _supersede_changed(ctx, "evaluate", settings, "re-evaluating", "the earlier evaluation")
    if remade:  # figures of the results this run replaced no longer hold
        ctx.manifest.record["stages"].pop("evaluate", None)
    frames = sorted(int(p.stem) for p in (ctx.folder / FRAMES).glob("*.png") if p.stem.isdigit())
    record = ctx.manifest.begin("evaluate", settings, total=len(frames))
    known = {int(name): row for name, row in record["frames"].items()}
    name = judge_name(ctx.settings)
    task = ctx.progress.add_task(f"evaluate ({name})", total=len(frames), completed=len(known))

    def judged(index: int, row: dict[str, Any]) -> None:
        ctx.manifest.frame_done("evaluate", index, json_ready(row))
        ctx.count("evaluate")
        ctx.progress.advance(task)

    evaluation = evaluate_run(ctx.folder, device=ctx.device, estimator=name,
                              max_side=ctx.settings.evaluation.max_side, known=known, on_frame=judged)
    for row in evaluation["frames"]:  # now with the temporal figures
        record["frames"][f"{row['frame']:04d}"] = json_ready(row)
    ctx.manifest.finish("evaluate", judge=evaluation["judge"], summary=json_ready(evaluation["summary"]))
    return evaluation


def _supersede_changed(ctx: RunContext, stage: str, settings: dict[str, Any], doing: str, kept: str) -> None:
    """Results of a stage in ``REDONE_ON_CHANGE`` made with other settings are moved to ``superseded/``
    before they are redone, like any other stale result, and the user is told what changed."""
    changes = ctx.manifest.stale_stages({stage: settings}).get(stage)
    if not changes:
        return
    moved = ctx.manifest.supersede([stage], [ctx.folder / name for name in STAGE_OUTPUTS[stage]])
    shown = "; ".join(changes[:2]) + (f"; and {len(changes) - 2} more" if len(changes) > 2 else "")
    where = f"; {kept} moved to {escape(str(moved))}" if moved is not None else ""
    ctx.console.print(f"{doing} with other settings ({escape(shown)}){where}", highlight=False)


# --- encode --------------------------------------------------------------------------------------------


def encode_stage(
    ctx: RunContext, clip: Clip, motion: Motion, results: torch.Tensor | None, evaluation: dict[str, Any] | None
) -> list[Path]:
    """Write the videos and ``report.html`` (with ``evaluation``, if any); skipped when nothing changed
    since they were written."""
    settings = ctx.stage_settings["encode"]
    outputs = [FLOW_VIDEO, REPORT] + ([RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE] if results is not None else [])
    paths = [ctx.folder / name for name in outputs]
    if ctx.manifest.is_done("encode", settings) and not ctx.computed and all(p.exists() for p in paths):
        return paths
    _supersede_changed(ctx, "encode", settings, "re-encoding", "the earlier videos and report")
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
    _write_report(ctx, clip, motion, results is not None, fps, evaluation)
    ctx.progress.advance(task)
    ctx.manifest.finish("encode", fps=fps)
    ctx.computed["encode"] = len(outputs)
    return paths


def _to_height(frames: torch.Tensor, height: int) -> torch.Tensor:
    """Frames resized to ``height`` rows, keeping their aspect, for side-by-side panels."""
    width = max(1, round(frames.shape[-1] * height / frames.shape[-2]))
    if (height, width) == tuple(frames.shape[-2:]):
        return frames
    return F.interpolate(frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


EVALUATION_PLOTS = (
    Plot("epe_edit", "fidelity: EPE in the edit mask (px); dashed: overall", "epe_all"),
    Plot("ssim", "preservation: SSIM outside the edit mask (1: untouched)"),
    Plot("warping_error", "temporal consistency: warping error (lower is steadier); dashed: naive baseline",
         "baseline_warping_error"),
)
"""The report's plots of an evaluation; its other figures (PSNR, shares within 1 px) are in the table."""


def _evaluation_line(evaluation: dict[str, Any]) -> str:
    """One summary line of the evaluation: judge and the means over the moving frames."""
    mean = evaluation["summary"]
    judge = evaluation["judge"]

    def shown(key: str, text: str) -> str:
        value = mean.get(key)
        return "–" if value is None else "∞" if value == math.inf else text.format(value)

    return (
        f"Evaluation by {judge['estimator']} (not the guidance estimator {judge['guidance_estimator']}), means over "
        f"the moving frames: EPE {shown('epe_edit', '{:.2f}')} px in the edit mask ({shown('within_1px_edit', '{:.0%}')} "
        f"within 1 px); outside it PSNR {shown('psnr', '{:.1f}')} dB, SSIM {shown('ssim', '{:.3f}')}; warping error "
        f"{shown('warping_error', '{:.4f}')} (naive baseline {shown('baseline_warping_error', '{:.4f}')})."
    )


def _write_report(
    ctx: RunContext, clip: Clip, motion: Motion, has_results: bool, fps: float, evaluation: dict[str, Any] | None
) -> None:
    """``report.html``, with the achieved flows drawn on the target flows' colour scale and their error
    maps ``|achieved − target|`` on one scale for the clip (``error_scale``), and the evaluation's plots."""
    stages = {name: record for name, record in ctx.manifest.record["stages"].items()
              if name != "evaluate" or evaluation is not None}
    achieved = {
        i: read_flow(ctx.file(ACHIEVED_FLOW, i, ".flo")) for i in range(len(motion.flows))
        if has_results and not motion.still[i] and ctx.file(ACHIEVED_FLOW, i, ".flo").exists()
    }
    errors = {i: (flow - motion.flows[i]).norm(dim=0) for i, flow in achieved.items()}
    top_error = error_scale(list(errors.values()), motion.max_magnitude)
    frames = []
    for index in range(len(motion.flows)):
        name = f"{index:04d}"
        records = {stage: record.get("frames", {}).get(name, {}) for stage, record in stages.items()}
        achieved_color = error_map = None
        if index in achieved:
            achieved_color, error_map = f"{ACHIEVED_COLOR}/{name}.png", f"{FLOW_ERROR}/{name}.png"
            save_image(ctx.folder / achieved_color, flow_to_color(achieved[index], motion.max_magnitude))
            save_image(ctx.folder / error_map, error_to_color(errors[index], top_error))
        diverged = records.get("guide", {}).get("diverged")
        frames.append(ReportFrame(
            index=index,
            target_flow=f"{FLOW_COLOR}/{name}.png",
            motion_px=float(motion.flows[index].norm(dim=0).max()),
            still=motion.still[index],
            driving=f"{DRIVING}/{name}.png",
            result=f"{FRAMES}/{name}.png" if has_results else None,
            achieved_flow=achieved_color,
            flow_error=error_map,
            edit_mask=f"{EDIT_MASK}/{name}.png",
            status="still" if motion.still[index] else "diverged" if diverged else "edited" if has_results else "",
            figures={k: v for record in records.values() for k, v in figure_values(record).items()},
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
    if not has_results:
        summary.append("Flow only (--flow-only): no edits were made; the edit masks show where guidance would act.")
    if evaluation is not None:
        summary.append(_evaluation_line(evaluation))
    files = ([RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE] if has_results else []) + [FLOW_VIDEO, ctx.manifest.path.name]
    files += [EVALUATION] if evaluation is not None else []
    write_report(ctx.folder / REPORT, Report(
        title=f"mtransfer: {ctx.video.stem} onto {ctx.image.stem}", summary=summary, source=SOURCE, frames=frames,
        flow_scale_px=motion.max_magnitude, error_scale_px=top_error, settings=settings.as_record(), fps=fps,
        files=files, plots=list(EVALUATION_PLOTS) if evaluation is not None else [],
        table_only=tuple(FIGURES) if evaluation is not None else (), labels=FIGURES,
    ))
