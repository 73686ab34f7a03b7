"""``mtransfer motion``: build a target flow from elementary motions and preview it before guiding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mtransfer.choices import motion_usage
from mtransfer.cli import app, console
from mtransfer.errors import OutputError, UsageError, input_error

MAX_PREVIEW_FRAMES = 240
"""The preview loops the motion there and back at 12 fps: 240 frames is 40 s, more than any check needs."""

EXAMPLES = (
    "Examples:\n\n"
    "  [cyan]mtransfer motion 'rotate(20) | translate(10, 0)' --onto sample_videos/cat.png[/]\n\n"
    "  [cyan]mtransfer motion 'twirl(90, radius=30%)' --size 256x256 --out twirl.flo[/]\n\n"
    "Motions:\n\n" + motion_usage()
)


@app.command(epilog=EXAMPLES)
def motion(
    spec: Annotated[str, typer.Argument(help="Inline motion spec (see below) or a flow file to preview.")],
    onto: Annotated[Optional[Path], typer.Option(help="Image to size the flow on and to preview the motion with.")] = None,
    size: Annotated[Optional[str], typer.Option(help="Flow size HEIGHTxWIDTH when there is no --onto image.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Flow file to write (.flo, .npy or KITTI .png).")] = None,
    frames: Annotated[
        int, typer.Option(min=2, max=MAX_PREVIEW_FRAMES, help="Frames in the preview video (motion ramped from 0 to 1).")
    ] = 12,
) -> None:
    """Build a flow from elementary motions (or read a flow file) and write pictures of it.

    Writes the flow file, its colour-wheel picture, an arrow overlay and, with --onto, the image moved by
    the flow (a cheap forward warp, not a diffusion edit) as a PNG and a short looping preview video, so a
    motion can be checked before spending GPU time on `mtransfer edit`.
    """
    import torch  # the heavy stack is imported when the command runs

    from mtransfer.files import ensure_writable, load_image, save_image
    from mtransfer.flows import flow_to_color, load_flow, move_image, quiver_overlay, write_flow
    from mtransfer.video import MIN_SIDE, parse_size, write_video

    if (onto is None) == (size is None):
        raise UsageError("give exactly one of --onto IMAGE or --size HEIGHTxWIDTH")
    if onto is not None:
        image = load_image(onto)
        height, width = image.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise input_error(onto, f"is {width}x{height} (width x height); a motion needs at least {MIN_SIDE} px a side")
    else:
        parsed = parse_size(size)
        if isinstance(parsed, int):
            raise UsageError(f"--size {size}: give both sides, HEIGHTxWIDTH")
        height, width = parsed
        image = torch.full((3, height, width), 0.5)
    flow = load_flow(spec, height, width)
    out = out or Path("outputs") / "motion" / "flow.flo"
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; --out names the flow file to write, e.g. {out / 'flow.flo'}")
    ensure_writable(out.parent)
    stem = out.with_suffix("")
    written = [write_flow(out, flow)]
    written.append(save_image(f"{stem}_color.png", flow_to_color(flow)))
    written.append(save_image(f"{stem}_arrows.png", quiver_overlay(image, flow, step=max(12, min(height, width) // 10))))
    if onto is not None:
        written.append(save_image(f"{stem}_moved.png", move_image(image, flow)))
        ramp = torch.linspace(0, 1, frames)
        clip = torch.stack([move_image(image, flow * t) for t in torch.cat([ramp, ramp.flip(0)])])
        written.append(write_video(f"{stem}_preview.mp4", clip, fps=12))
    magnitude = flow.norm(dim=0)
    table = Table(title="motion", show_header=False)
    table.add_row("size", f"{height}x{width} (HxW)")
    table.add_row("mean / max motion", f"{magnitude.mean():.2f} / {magnitude.max():.2f} px")
    for path in written:
        table.add_row("wrote", escape(str(path)))
    console.print(table)
