"""The encode stage: the videos and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mtransfer.app.report import Plot, Report, ReportFrame, figure_values, write_report
from mtransfer.evaluation import FIGURE_TABLE, FIGURES, summary_line
from mtransfer.files import load_image, save_image
from mtransfer.flows.io import read_flow
from mtransfer.flows.viz import error_scale, error_to_color, flow_to_color
from mtransfer.layouts import (
    ACHIEVED_COLOR,
    ACHIEVED_FLOW,
    DRIVING,
    EDIT_MASK,
    EVALUATION,
    FLOW_COLOR,
    FLOW_ERROR,
    FLOW_VIDEO,
    FRAMES,
    REPORT,
    RESULT_GIF,
    RESULT_MP4,
    SIDE_BY_SIDE,
    SOURCE,
)
from mtransfer.pipeline.stages.context import Clip, Motion, RunContext, supersede_changed
from mtransfer.pipeline.stages.guide import plan_line
from mtransfer.video import write_video


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
    supersede_changed(ctx, "encode", settings, "re-encoding", "the earlier videos and report")
    ctx.manifest.begin("encode", settings, total=len(outputs))
    task = ctx.progress.add_task("encode", total=len(outputs))
    fps = ctx.settings.output.fps or clip.fps
    crf = ctx.settings.output.crf
    driving = _to_height(clip.frames, ctx.size[0])
    colors = torch.stack([load_image(ctx.file(FLOW_COLOR, i)) for i in range(len(motion.flows))])
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


ENGINEERING_COUNTERS = ("start_step", "passes", "passes_saved", "attempts", "dispatch_s", "worker_seconds")
"""Per-frame records of how a frame was made rather than how it looks: in the report's table, not plotted."""

EVALUATION_PLOTS = tuple(Plot(f.key, f.plot, f.reference) for f in FIGURE_TABLE if f.plot)
"""The report's plots of an evaluation (``FIGURE_TABLE``); its other figures are in the table only."""


def _write_report(
    ctx: RunContext, clip: Clip, motion: Motion, has_results: bool, fps: float, evaluation: dict[str, Any] | None
) -> None:
    """``report.html``, with the achieved flows drawn on the target flows' colour scale and their error
    maps ``|achieved − target|`` on one scale for the clip (``error_scale``), and the evaluation's plots."""
    stages = {name: record for name, record in ctx.manifest.record["stages"].items()
              if name != "evaluate" or evaluation is not None}
    achieved = {
        i: read_flow(ctx.file(ACHIEVED_FLOW, i)) for i in range(len(motion.flows))
        if has_results and not motion.still[i] and ctx.file(ACHIEVED_FLOW, i).exists()
    }
    errors = {i: (flow - motion.flows[i]).norm(dim=0) for i, flow in achieved.items()}
    top_error = error_scale(list(errors.values()), motion.max_magnitude)
    frames = []
    settings = ctx.settings
    for index in range(len(motion.flows)):
        name = f"{index:04d}"
        records = {stage: record.get("frames", {}).get(name, {}) for stage, record in stages.items()}
        achieved_color = error_map = None
        if index in achieved:
            achieved_color, error_map = f"{ACHIEVED_COLOR}/{name}.png", f"{FLOW_ERROR}/{name}.png"
            save_image(ctx.folder / achieved_color, flow_to_color(achieved[index], motion.max_magnitude))
            save_image(ctx.folder / error_map, error_to_color(errors[index], top_error))
        guide = records.get("guide", {})
        diverged = guide.get("diverged")
        plan = "key" if guide.get("role") == "key" else f"warm from {guide['parent']}" if guide.get("role") == "warm" else ""
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
            status="still" if motion.still[index] else "diverged" if diverged
            else guide.get("verdict", {}).get("label", "edited") if has_results else "",
            figures={k: v for record in records.values() for k, v in figure_values(record).items()},
            plan=plan if settings.video.plan != "independent" else "",
        ))
    height, width = ctx.size
    summary = [
        f"{ctx.video.name}: {len(clip.frames)} frames at {fps:.3g} fps, onto {ctx.image.name} at {width}x{height} "
        f"(width x height); pipeline '{settings.name}'.",
        f"Model {settings.model.model}, flow estimator {settings.estimator.name} in the energy, "
        f"{settings.video.estimator} ({settings.video.flow}) for the video; {settings.guidance.steps} steps x "
        f"{settings.guidance.recursions} recursions; largest target motion {motion.max_magnitude:.2f} px.",
    ]
    plan = ctx.manifest.record["stages"].get("guide", {}).get("plan")
    if has_results and isinstance(plan, dict) and plan.get("independent_passes"):
        summary.append(f"Frame {plan_line(plan)}.")
    if not has_results:
        summary.append("Flow only (--flow-only): no edits were made; the edit masks show where guidance would act.")
    if evaluation is not None:
        summary.append(summary_line(evaluation))
    files = ([RESULT_MP4, RESULT_GIF, SIDE_BY_SIDE] if has_results else []) + [FLOW_VIDEO, ctx.manifest.path.name]
    files += [EVALUATION] if evaluation is not None else []
    write_report(ctx.folder / REPORT, Report(
        title=f"mtransfer: {ctx.video.stem} onto {ctx.image.stem}", summary=summary, source=SOURCE, frames=frames,
        flow_scale_px=motion.max_magnitude, error_scale_px=top_error, settings=settings.as_record(), fps=fps,
        files=files, plots=list(EVALUATION_PLOTS) if evaluation is not None else [],
        table_only=(*(FIGURES if evaluation is not None else ()), *ENGINEERING_COUNTERS), labels=FIGURES,
    ))
