"""The align stage: the driving motion laid onto the target image, and the edit masks."""

from __future__ import annotations

import torch

from mtransfer.errors import UsageError
from mtransfer.files import load_image, save_image
from mtransfer.flows.align import motion_mask
from mtransfer.flows.io import motion_problem, read_mask, write_flow
from mtransfer.flows.viz import flow_to_color
from mtransfer.layouts import EDIT_MASK, FLOW, FLOW_COLOR, SOURCE
from mtransfer.pipeline.stages.context import DrivingFlows, Motion, RunContext


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
    pending = ctx.pending("align", range(count), FLOW, FLOW_COLOR, EDIT_MASK)
    task = ctx.progress.add_task("align", total=count, completed=count - len(pending))
    for index in pending:
        write_flow(ctx.file(FLOW, index), flows[index])
        save_image(ctx.file(FLOW_COLOR, index), flow_to_color(flows[index], max_magnitude))
        save_image(ctx.file(EDIT_MASK, index), masks[index])
        ctx.manifest.frame_done("align", index, {"max_motion_px": round(float(speeds[index].max()), 3)})
        ctx.count("align")
        ctx.progress.advance(task)
    ctx.manifest.finish("align", max_motion_px=max_magnitude)
    return Motion(source, flows, masks, max_magnitude, still)
