"""The guide stage: every moving frame edited under its target flow, where the frame plan starts it.

The plan (``video.plan``, ``mtransfer.app.plan``) makes each moving frame a key (the whole schedule from the
shared start) or warm (started from its parent's result). The frames still to do become jobs for the
executor ``[execution]`` names, each carrying the jobs it waits for: keys all start at once, a warm frame as
soon as its parent is written. Workers (``mtransfer.app.frames``) edit; this process alone writes each frame,
its latent and the manifest, so a run killed anywhere resumes with the frames it finished, in any order.
"""

from __future__ import annotations

import os
import signal
from contextlib import closing
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from rich.markup import escape

from mtransfer.app.editor import Editor
from mtransfer.app.executors import Job, make_executor
from mtransfer.app.frames import FrameEditor, FrameInput, edit_frames, first_warm_step
from mtransfer.app.plan import KEY, STILL, WARM, PlannedFrame, frame_plan, plan_jobs, total_passes
from mtransfer.app.settings import RunSettings
from mtransfer.devices import release_memory
from mtransfer.files import atomic_path, load_image, save_image
from mtransfer.flows.io import write_flow
from mtransfer.guidance.edit import SourceState
from mtransfer.layouts import ACHIEVED_FLOW, FRAMES, LATENTS, SOURCE_STATE
from mtransfer.pipeline.stages.context import Motion, RunContext

KILL_AFTER_ENV = "MTRANSFER_TEST_KILL_AFTER_FRAME"
"""Tests only: the guide stage kills its own process (SIGKILL) right after recording this frame, a
deterministic stand-in for a power cut at the worst moment."""


def clip_plan(settings: RunSettings, motion: Motion) -> list[PlannedFrame]:
    """The frame plan of this clip under ``[video]``; ``key_change`` compares the target flows of a frame
    and its would-be parent (the largest difference, px)."""
    video = settings.video

    def change(index: int, parent: int) -> float:
        return float((motion.flows[index] - motion.flows[parent]).norm(dim=0).max())

    return frame_plan(motion.still, video.plan, key_every=video.key_every, warm_from=video.warm_from,
                      change=change, key_change=video.key_change)


def guide_stage(ctx: RunContext, motion: Motion) -> torch.Tensor:
    """Edit the target image under every frame's target flow; the results ``(T, 3, H, W)``.

    Frames without motion (frame 0 always) are the source image itself: there is nothing to edit, and
    the clip then starts exactly on the picture the user gave. The source is prepared once per run (and
    cached), so every frame shares the source's inversion. Locally the models are loaded once (``Editor``);
    Ray workers load their own and receive the source state through the object store.
    """
    settings = ctx.settings
    count = len(motion.flows)
    ctx.manifest.begin("guide", ctx.stage_settings["guide"], total=count)
    planned = clip_plan(settings, motion)
    pending = _with_lost_parents(ctx, planned, ctx.pending("guide", range(count), FRAMES))
    frames_task = ctx.progress.add_task("guide", total=count, completed=count - len(pending))
    kill_after = os.environ.get(KILL_AFTER_ENV)

    def write(index: int, image: torch.Tensor, info: dict[str, Any]) -> None:
        save_image(ctx.file(FRAMES, index), image)
        ctx.manifest.frame_done("guide", index, info)
        ctx.count("guide")
        ctx.progress.advance(frames_task)
        if kill_after is not None and index == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    guidance = settings.guidance
    warm_step = first_warm_step(settings)
    for index in pending:
        if planned[index].role == STILL:
            write(index, motion.source, {"still": True, "role": STILL})
    moving = [i for i in pending if planned[i].role != STILL]
    if moving:
        executor = make_executor(settings.execution, use_gpus=settings.model.device != "cpu")
        local = settings.execution.executor == "local"
        if not local:
            executor.connect()  # an unreachable cluster is refused before the source is prepared
        passes = total_passes([planned[i] for i in moving], guidance.steps, guidance.recursions, warm_step)
        factory, state, progress = _frame_workers(ctx, motion.source, len(moving), passes, local=local)

        def busy(working: int, workers: int) -> None:
            ctx.progress.update(frames_task, description=f"guide {working}/{workers} busy")

        waiting = set(moving)
        jobs = [Job(job.index, tuple(_frame_input(ctx, motion, planned[i], waiting) for i in job.frames), job.after)
                for job in plan_jobs(planned, moving, settings.video.batch)]
        with closing(executor.run(factory, state, jobs, progress=progress, on_busy=busy)) as finished:
            for done in finished:
                for output in done.result:
                    _save_tensor(ctx.file(LATENTS, output.index), output.latent)
                    write_flow(ctx.file(ACHIEVED_FLOW, output.index), output.achieved_flow)
                    if output.divergence:
                        ctx.console.print(
                            f"[bold yellow]warning:[/] frame {output.index}: {escape(output.divergence)}; kept the "
                            "last good estimate. Try a lower guidance.guidance_weight or guidance.clip_grad.",
                            highlight=False,
                        )
                    write(output.index, output.image, {**output.record, **done.record()})
    summary = plan_summary(settings, planned)
    ctx.manifest.finish("guide", plan=summary)
    if moving:
        ctx.console.print(plan_line(summary), highlight=False)
    return torch.stack([load_image(ctx.file(FRAMES, i)) for i in range(count)])


def plan_summary(settings: RunSettings, planned: list[PlannedFrame]) -> dict[str, Any]:
    """What the manifest, the report and the terminal say about the plan: roles and passes against the
    independent plan (every moving frame a key)."""
    guidance = settings.guidance
    passes = total_passes(planned, guidance.steps, guidance.recursions, first_warm_step(settings))
    independent = guidance.steps * guidance.recursions * sum(frame.role != STILL for frame in planned)
    return {
        "plan": settings.video.plan,
        "keys": [frame.index for frame in planned if frame.role == KEY],
        "warm": sum(frame.role == WARM for frame in planned),
        "passes": passes,
        "independent_passes": independent,
    }


def plan_line(summary: dict[str, Any]) -> str:
    """One line for the terminal: the plan and its cost against the independent plan."""
    share = summary["passes"] / summary["independent_passes"] if summary["independent_passes"] else 1.0
    return (f"plan {summary['plan']}: {len(summary['keys'])} keys, {summary['warm']} warm frames; "
            f"{summary['passes']:,} guided passes, {share:.0%} of the independent plan's "
            f"{summary['independent_passes']:,}")


def _with_lost_parents(ctx: RunContext, planned: list[PlannedFrame], pending: list[int]) -> list[int]:
    """``pending`` and every finished frame whose latent a pending warm frame needs but which has gone
    missing (the frame is remade: it comes out the same)."""
    todo = set(pending)
    stack = list(pending)
    while stack:
        frame = planned[stack.pop()]
        parent = frame.parent
        if frame.role == WARM and parent not in todo and not ctx.file(LATENTS, parent).exists():
            todo.add(parent)
            stack.append(parent)
    return sorted(todo)


def _frame_input(ctx: RunContext, motion: Motion, frame: PlannedFrame, waiting: set[int]) -> FrameInput:
    """Frame ``frame.index``'s input; a warm frame whose parent was written before this run gets the
    parent's latent from the run folder, the others get it from the parent's job."""
    warm = frame.role == WARM
    parent_latent = None
    if warm and frame.parent not in waiting:
        parent_latent = torch.load(ctx.file(LATENTS, frame.parent), weights_only=True)
    return FrameInput(frame.index, motion.flows[frame.index], motion.masks[frame.index], frame.role, frame.parent,
                      motion.flows[frame.parent] if warm else None, parent_latent)


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
    release_memory(ctx.device)
    return state


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


