"""``mtransfer flow VIDEO``: the optical flow of a clip as ``.flo`` files, colour images and a preview video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from mtransfer.choices import DEFAULT_MAX_SIDE, ESTIMATORS, Reference
from mtransfer.cli import app, console
from mtransfer.cli.options import QUIET_HELP
from mtransfer.errors import UsageError

EstimatorName = Literal[ESTIMATORS]  # the names load_named_estimator accepts, as command-line choices
REFERENCE_TO_FLOW = {"first": "direct", "previous": "chained"}
"""``--reference`` is the run's ``video.flow``: both measure from frame 0 or from the previous frame."""

EXAMPLES = """\
[bold]Examples[/]

  [cyan]mtransfer flow sample_videos/translate.mp4[/]
      TV-L1 flow of every frame relative to frame 0, in outputs/translate-flow/

  [cyan]mtransfer flow clip.mp4 --max-frames 24 --stride 2 --size 256 --reference previous[/]
      every 2nd frame, at most 24 of them, short side 256 px, frame-to-frame flow

  [cyan]mtransfer flow clip.mp4 --estimator raft-large --device cuda[/]
      RAFT (best quality) with torchvision's weights from the torch hub cache

  [cyan]mtransfer flow clip.mp4 --estimator raft-large --weights raft_large_C_T_SKHT_V2-ff5fadd5.pth[/]
      RAFT with a local state dict

Writes driving/0000.png ... (the decoded frames), driving_flow/0001.flo ... (Middlebury .flo, pixels),
driving_color/0001.png ... (colour wheel, one scale for the whole clip), flow.mp4 (frame | flow side by
side), summary.json and manifest.json. These are the decode and flow stages of `mtransfer run`: running
again resumes, and changed options are refused unless --restart moves the old results to superseded/.
"""


def _summary_table(summary: dict) -> Table:
    source, clip = summary["source"], summary["clip"]
    table = Table(title="mtransfer flow", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("video", escape(summary["video"]))
    table.add_row("frames", f"{clip['frame_count']} of {source['frame_count']} (stride {summary['stride']})")
    table.add_row("size", f"{clip['width']}x{clip['height']} (source {source['width']}x{source['height']})")
    table.add_row("fps", f"{clip['fps']:.3g} (source {source['fps']:.3g})")
    table.add_row("estimator", f"{summary['estimator']} on {summary['device']}")
    table.add_row("reference", summary["reference"])
    table.add_row("|flow| mean / max", f"{summary['mean_magnitude']:.2f} / {summary['max_magnitude']:.2f} px")
    computed = ", ".join(f"{count} {stage}" for stage, count in summary["computed"].items()) or "nothing new"
    table.add_row("time", f"{summary['seconds']:.1f} s (computed {computed})")
    table.add_row("output", escape(summary["output"]))
    return table


@app.command(epilog=EXAMPLES)
def flow(
    video: Annotated[Path, typer.Argument(help="Input video (.mp4, .mov, .gif, ... anything FFmpeg reads).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder. [default: outputs/<video-stem>-flow]")
    ] = None,
    reference: Annotated[
        Reference, typer.Option(help="Flow from the first frame to each frame, or from the previous frame.")
    ] = "first",
    estimator: Annotated[
        EstimatorName, typer.Option(help="Flow estimator; tvl1 needs no download, raft-large is the most accurate.")
    ] = "tvl1",
    weights: Annotated[
        str | None,
        typer.Option(help="RAFT weights: a local .pth state dict (default: torchvision's, from the torch hub cache)."),
    ] = None,
    stride: Annotated[int, typer.Option(min=1, help="Keep every N-th frame.")] = 1,
    max_frames: Annotated[int | None, typer.Option(min=2, help="Keep at most this many frames.")] = None,
    size: Annotated[
        str | None, typer.Option(help="Resize frames: HEIGHTxWIDTH (e.g. 128x160) or the short side (e.g. 256).")
    ] = None,
    max_side: Annotated[
        int, typer.Option(min=0, help="Without --size, frames with a longer side are scaled down to it (0 = as recorded).")
    ] = DEFAULT_MAX_SIDE,
    device: Annotated[str, typer.Option(help="Where the estimator runs: cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Frame pairs per estimator call.")] = 4,
    restart: Annotated[
        bool, typer.Option("--restart", help="Recompute results made with other options (moved to superseded/).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
) -> None:
    """Estimate the optical flow of VIDEO and write it as .flo files, colour images and a preview video."""
    # torch and the estimators are imported when the command runs, never for --help.
    from mtransfer.app.settings import VideoSettings
    from mtransfer.devices import parse_device
    from mtransfer.pipeline.runner import FlowRequest, extract_flow
    from mtransfer.video import parse_size

    parse_device(device)  # named as --device in the error, before any work
    if weights and not estimator.startswith("raft-"):
        raise UsageError(f"--weights {weights}: only raft-large and raft-small take weights, not {estimator}")
    if estimator == "tvl1":
        console.print("[dim]hint: --estimator raft-large gives more accurate flow when its weights are available[/]")
    settings = VideoSettings(
        stride=stride, max_frames=max_frames or 0, size=parse_size(size) if size is not None else 0,
        flow=REFERENCE_TO_FLOW[reference], estimator=estimator, weights=weights or "", batch_size=batch_size,
        max_side=max_side,
    )
    summary = extract_flow(FlowRequest(video, settings, device=device, out=out, restart=restart, quiet=quiet), console)
    console.print(_summary_table(summary))
