"""The flow stage: the driving motion of every frame, measured on the video's grid; and ``mtransfer flow``'s
pictures of it."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from mtransfer.app.models import load_estimator
from mtransfer.estimators import FlowEstimator
from mtransfer.files import save_image
from mtransfer.flows.io import read_flow, write_flow
from mtransfer.flows.viz import flow_to_color
from mtransfer.layouts import DRIVING_COLOR, DRIVING_FLOW, FLOW_VIDEO
from mtransfer.pipeline.stages.context import Clip, DrivingFlows, RunContext
from mtransfer.video import write_video
from mtransfer.video_flow import video_flows


def flow_stage(ctx: RunContext, clip: Clip) -> DrivingFlows:
    """The driving flow of every frame (``video.flow``: from frame 0, or chained steps), cached per frame."""
    video = ctx.settings.video
    count = len(clip.frames)
    reference = "first" if video.flow == "direct" else "previous"
    ctx.manifest.begin("flow", ctx.stage_settings["flow"], total=count - 1)
    pending = ctx.pending("flow", range(1, count), DRIVING_FLOW)
    task = ctx.progress.add_task(f"flow ({video.flow})", total=count - 1, completed=count - 1 - len(pending))
    if pending:
        estimator = load_estimator(video.flow_estimator, ctx.device, for_guidance=False)
        for index, flow in _driving_flows(ctx, clip.frames, pending, estimator, reference):
            write_flow(ctx.file(DRIVING_FLOW, index), flow)
            ctx.manifest.frame_done("flow", index)
            ctx.count("flow")
            ctx.progress.advance(task)
    ctx.manifest.finish("flow")
    zero = torch.zeros(2, *clip.frames.shape[-2:])
    measured = torch.stack([zero] + [read_flow(ctx.file(DRIVING_FLOW, i)) for i in range(1, count)])
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
        save_image(ctx.file(DRIVING_COLOR, index), color)
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
