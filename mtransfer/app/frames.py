"""The frame worker of a clip: what an executor runs to edit a job's frames, wherever it runs.

The guide stage (``mtransfer.pipeline.stages.guide``) hands each job's ``FrameInput`` s to an executor
(``mtransfer.app.executors``); a worker made by ``FrameEditor`` loads the models once (``Editor``) and calls
``edit_frames`` for every job, which starts each frame where the frame plan (``mtransfer.app.plan``) says and
returns ``FrameOutput`` s for the driver to write. Workers write nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch

from mtransfer.app.editor import Editor
from mtransfer.app.plan import KEY, WARM
from mtransfer.app.settings import RunSettings
from mtransfer.devices import parse_device
from mtransfer.evaluation.verdict import motion_verdict
from mtransfer.guidance.edit import (
    EditResult,
    SourceState,
    previous_frame_start,
    warm_start_latent,
    warm_start_seed,
    warm_start_step,
    warped_start,
)


@dataclass(frozen=True)
class FrameInput:
    """What a worker needs to edit frame ``index`` besides the shared source state (CPU tensors).

    A warm frame names its ``parent``; the parent's latent comes with the job when the parent was written
    before this run (``parent_latent``), else from the result of the job it waits for.
    """

    index: int
    flow: torch.Tensor
    mask: torch.Tensor  # the edit mask; all ones when align.edit_mask is off
    role: str = KEY
    parent: int | None = None
    parent_flow: torch.Tensor | None = None  # the parent's target flow, for video.warm_warp
    parent_latent: torch.Tensor | None = None


@dataclass(frozen=True)
class FrameOutput:
    """A worker's edit of one frame, for the driver to write: CPU tensors and the manifest record."""

    index: int
    image: torch.Tensor
    latent: torch.Tensor
    achieved_flow: torch.Tensor
    record: dict[str, Any]
    divergence: str | None


@dataclass(frozen=True)
class FrameEditor:
    """A worker factory for ``mtransfer.app.executors`` (picklable): ``Editor.load`` once in the worker's
    process, then ``edit_frames`` for every job it is handed.

    A CUDA ``model.device`` means the GPU Ray gave the worker (a worker sees only its own, as ``cuda``);
    ``auto`` is resolved on the worker's machine. On the CPU the worker uses ``threads`` threads, the
    driver's count: CPU kernels sum in another order with another thread count, and a frame must not
    depend on where it was made.
    """

    settings: RunSettings
    source: torch.Tensor
    threads: int

    def __call__(self) -> Callable[..., list[FrameOutput]]:
        name = self.settings.model.device
        device = parse_device("cuda" if name.strip().lower().startswith("cuda") else name, "model.device")
        if device.type == "cpu":
            torch.set_num_threads(self.threads)
        return partial(edit_frames, Editor.load(self.settings, self.source, device))


def first_warm_step(settings: RunSettings) -> int:
    """The step warm frames start at: the warm-start tail, or 0 (``init = "previous"`` runs every step)."""
    guidance = settings.guidance
    return warm_start_step(guidance.steps, settings.video.warm_start) if settings.video.warm_start else 0


def edit_frames(
    editor: Editor, frames: tuple[FrameInput, ...], state: SourceState, progress: Any,
    parents: Sequence[list[FrameOutput]] = (),
) -> list[FrameOutput]:
    """A job's edits (frames of one role, together), wherever it runs. ``parents`` are the results of the
    jobs this one waits for. Randomness comes from ``guidance.seed`` alone (a fresh generator per edit; a
    warm start's re-noising from the seed and the frame index), so a frame does not depend on which worker
    made it, what it did before, its batch or whether its parent was made in this run."""
    started = time.perf_counter()
    state = state.to(editor.device)
    settings = editor.settings
    latents = {output.index: output.latent for result in parents for output in result}
    video = settings.video
    first_step = first_warm_step(settings) if frames[0].role == WARM else 0
    starts = []
    for frame in frames:
        if frame.role != WARM:
            continue
        latent = frame.parent_latent if frame.parent_latent is not None else latents[frame.parent]
        latent = latent.to(editor.device)
        if video.warm_start:
            moved = warped_start(editor.backend, latent, frame.parent_flow, frame.flow, video.warm_warp)
            starts.append(warm_start_latent(editor.backend, state, moved, first_step,
                                            warm_start_seed(settings.guidance.seed, frame.index)))
        else:
            starts.append(previous_frame_start(state, latent, editor.backend.alphas_cumprod))
    if starts and len(starts) != len(frames):
        raise ValueError("a job's frames must share their role (plan_jobs groups them so)")
    init = torch.cat(starts) if starts else None
    masks = [frame.mask for frame in frames] if settings.align.edit_mask else None
    if len(frames) == 1:
        results = [editor.edit(state, frames[0].flow, None if masks is None else masks[0], init_latent=init,
                               first_step=first_step, progress=progress)]
    else:
        results = editor.edit_many(state, torch.stack([frame.flow for frame in frames]), masks, progress=progress,
                                   init_latent=init, first_step=first_step)
    seconds = (time.perf_counter() - started) / len(frames)
    return [_frame_output(result, frame, seconds, first_step, settings) for result, frame in zip(results, frames)]


def _frame_output(
    result: EditResult, frame: FrameInput, seconds: float, first_step: int, settings: RunSettings
) -> FrameOutput:
    record = frame_record(result, frame, seconds, settings.estimator.name)
    record.update(role=frame.role, parent=frame.parent, start_step=first_step, passes=len(result.losses),
                  passes_saved=first_step * settings.guidance.recursions)
    return FrameOutput(frame.index, result.image.cpu(), result.latent.detach().cpu(), result.achieved_flow.cpu(),
                       record, result.divergence if result.diverged else None)


def frame_record(result: EditResult, frame: FrameInput, seconds: float, estimator: str) -> dict[str, Any]:
    """What the manifest and the report keep about one edit: time, final losses, achieved flow error and
    the verdict on it by the guiding ``estimator`` (the judge gives its own in the evaluation)."""
    mask = frame.mask.to(result.achieved_flow.device) > 0
    error = (result.achieved_flow - frame.flow.to(result.achieved_flow)).norm(dim=0, keepdim=True)
    last = result.losses[-1] if result.losses else {}
    return {
        "seconds": round(seconds, 2),
        "flow_error_px": round(float(error[mask].mean()) if mask.any() else 0.0, 4),
        "final_energy": {k: round(float(v), 5) for k, v in last.items() if k in ("flow", "color", "recon", "total")},
        "diverged": result.diverged,
        "verdict": motion_verdict(result.achieved_flow, frame.flow, frame.mask,
                                  measured_by=f"the guiding estimator {estimator}").record(),
    }
