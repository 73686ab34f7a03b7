"""``mtransfer flow VIDEO``: the optical flow of a clip as ``.flo`` files, colour images and a preview video."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import torch
import typer
from rich.progress import Progress
from rich.markup import escape
from rich.table import Table

from mtransfer.cli import app, console
from mtransfer.devices import parse_device
from mtransfer.progress import progress_bar
from mtransfer.errors import MtransferError
from mtransfer.estimators import ESTIMATORS, load_estimator
from mtransfer.files import ensure_writable, save_image, write_json
from mtransfer.flows.io import read_flow, write_flow
from mtransfer.flows.viz import flow_to_color
from mtransfer.video import iter_frames, large_flow_warning, output_size, parse_size, probe_video, write_video
from mtransfer.video_flow import Reference, video_flows

EstimatorName = Literal[ESTIMATORS]  # the names load_estimator accepts, as command-line choices

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

Writes frames/0000.png ..., flow/0001.flo ... (Middlebury .flo, pixels), color/0001.png ... (colour
wheel, one scale for the whole clip), flow.mp4 (input | flow side by side) and summary.json.
"""


def _numbered(index: int, suffix: str) -> str:
    return f"{index:04d}{suffix}"


def _remove_stale(folder: Path, suffix: str, count: int) -> None:
    """Delete numbered files left by an earlier, longer run into the same folder: they are not this clip's."""
    for path in folder.glob(f"*{suffix}"):
        if path.stem.isdigit() and int(path.stem) >= count:
            path.unlink()


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
    table.add_row("time", f"{summary['seconds']:.1f} s")
    table.add_row("output", escape(summary["output"]))
    return table


def _decode(video: Path, out: Path, progress: Progress, total: int, **read_options) -> torch.Tensor:
    """Decode the clip, saving each frame as a PNG: these are the exact pictures the flow was measured on."""
    task = progress.add_task("decode", total=total)
    frames = []
    for index, frame in enumerate(iter_frames(video, **read_options)):
        save_image(out / "frames" / _numbered(index, ".png"), frame)
        frames.append(frame)
        progress.advance(task)
    progress.update(task, total=len(frames), completed=len(frames))
    if len(frames) < 2:
        raise MtransferError(f"{video}: only 1 frame to work with; flow needs 2 or more (check --stride)")
    return torch.stack(frames)


def _estimate(clip: torch.Tensor, out: Path, progress: Progress, estimator, **flow_options) -> list[dict]:
    """Write each flow as .flo and return one record per flow (file names and magnitudes)."""
    task = progress.add_task("flow", total=len(clip) - 1)
    records = []
    for index, motion in video_flows(clip, estimator, **flow_options):
        write_flow(out / "flow" / _numbered(index, ".flo"), motion)
        magnitude = motion.norm(dim=0)
        records.append(
            {
                "index": index,
                "flow": f"flow/{_numbered(index, '.flo')}",
                "color": f"color/{_numbered(index, '.png')}",
                "mean_magnitude": magnitude.mean().item(),
                "max_magnitude": magnitude.max().item(),
            }
        )
        progress.advance(task)
    return records


def _render(clip: torch.Tensor, records: list[dict], out: Path, progress: Progress, fps: float) -> float:
    """Colour every flow on one shared scale (the clip's largest motion) and write input | flow as a video.

    The flows are read back from disk, so a long clip's flows never have to sit in memory together.
    """
    max_magnitude = max(record["max_magnitude"] for record in records)
    task = progress.add_task("render", total=len(records))
    side_by_side = []
    for record in records:
        color = flow_to_color(read_flow(out / record["flow"]), max_magnitude=max_magnitude)
        save_image(out / record["color"], color)
        side_by_side.append(torch.cat((clip[record["index"]], color), dim=2))
        progress.advance(task)
    write_video(out / "flow.mp4", torch.stack(side_by_side), fps)
    return max_magnitude


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
    device: Annotated[str, typer.Option(help="Where the estimator runs: cpu, cuda, cuda:1, ...")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Frame pairs per estimator call.")] = 4,
) -> None:
    """Estimate the optical flow of VIDEO and write it as .flo files, colour images and a preview video."""
    started = time.perf_counter()
    resize = parse_size(size) if size is not None else None
    device = str(parse_device(device))
    source = probe_video(video)
    expected = min(math.ceil(source.frame_count / stride), max_frames or source.frame_count)
    warning = large_flow_warning(*output_size(source.height, source.width, resize), expected)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    out = out if out is not None else Path("outputs") / f"{video.stem}-flow"
    ensure_writable(out)
    if estimator == "tvl1":
        console.print("[dim]hint: --estimator raft-large gives more accurate flow when its weights are available[/]")
    flow_estimator = load_estimator(estimator, device=device, weights=weights)

    clip_fps = source.fps / stride
    with progress_bar(console) as progress:
        clip = _decode(video, out, progress, expected, stride=stride, max_frames=max_frames, size=resize)
        records = _estimate(
            clip, out, progress, flow_estimator, reference=reference, batch_size=batch_size, device=device
        )
        max_magnitude = _render(clip, records, out, progress, clip_fps)
    for folder, suffix in (("frames", ".png"), ("flow", ".flo"), ("color", ".png")):
        _remove_stale(out / folder, suffix, len(clip))

    summary = {
        "video": str(video),
        "source": asdict(source),
        "clip": {"fps": clip_fps, "frame_count": len(clip), "width": clip.shape[-1], "height": clip.shape[-2]},
        "stride": stride,
        "estimator": estimator,
        "weights": weights,
        "device": device,
        "reference": reference,
        "mean_magnitude": sum(record["mean_magnitude"] for record in records) / len(records),
        "max_magnitude": max_magnitude,
        "seconds": time.perf_counter() - started,
        "output": str(out),
        "frames": records,
    }
    write_json(out / "summary.json", summary)
    console.print(_summary_table(summary))
