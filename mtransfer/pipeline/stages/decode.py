"""The decode stage: the driving frames, decoded once into ``driving/``."""

from __future__ import annotations

import torch

from mtransfer.errors import InputError
from mtransfer.files import load_image, save_image
from mtransfer.layouts import DRIVING
from mtransfer.pipeline.stages.context import Clip, RunContext
from mtransfer.video import iter_frames


def decode_stage(ctx: RunContext) -> Clip:
    """Decode the driving frames (stride, frame limit, flow resolution) into ``driving/``."""
    video = ctx.settings.video
    settings = ctx.stage_settings["decode"]
    ctx.manifest.begin("decode", settings, total=ctx.frame_count)
    pending = ctx.pending("decode", range(ctx.frame_count), DRIVING)
    task = ctx.progress.add_task("decode", total=ctx.frame_count, completed=ctx.frame_count - len(pending))
    if pending:
        frames = iter_frames(ctx.video, stride=video.stride, max_frames=ctx.frame_count, size=ctx.frame_size)
        wanted = set(pending)
        for index, frame in enumerate(frames):
            if index in wanted:
                save_image(ctx.file(DRIVING, index), frame)
                ctx.manifest.frame_done("decode", index)
                ctx.count("decode")
                ctx.progress.advance(task)
        if index + 1 < ctx.frame_count:
            raise InputError(f"{ctx.video}: decoded only {index + 1} of the {ctx.frame_count} frames it announces")
    ctx.manifest.finish("decode")
    frames = torch.stack([load_image(ctx.file(DRIVING, i)) for i in range(ctx.frame_count)])
    return Clip(frames, ctx.fps)
