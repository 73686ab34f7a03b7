"""``mtransfer run VIDEO --onto IMAGE``: transfer a clip's motion onto a still image, frame by frame."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mtransfer.choices import EXECUTORS, FLOW_MODES, INIT_MODES
from mtransfer.cli import app, console
from mtransfer.cli.options import QUIET_HELP, preset_overrides
from mtransfer.errors import UsageError
from mtransfer.presets import available_pipelines

EXAMPLES = """\
[bold]Examples[/]

  [cyan]mtransfer run sample_videos/pan.mp4 --onto sample_videos/cat.png --pipeline offline-demo[/]
      no downloads, a few minutes on a CPU (exact toy model, weight-free flow)

  [cyan]mtransfer run clip.mp4 --onto photo.png --device cuda[/]
      the paper's settings (SD v1.4, 500 steps x 10 recursions, RAFT); needs a GPU and the weights

  [cyan]mtransfer run clip.mp4 --onto photo.png --pipeline preview --frames 8 --region 0.2,0.3,0.8,0.9[/]
      fewer steps; only 8 frames; the motion placed in a box given in fractions of the image

  [cyan]mtransfer run clip.mp4 --onto photo.png --flow-only[/]
      check flows, alignment and edit masks (flow.mp4, report.html) before paying for guidance

  [cyan]mtransfer run clip.mp4 --onto photo.png --executor ray[/]
      the frames spread over every GPU of this machine (or a cluster: --set execution.address="auto")

  [cyan]mtransfer run clip.mp4 --onto photo.png --set guidance.guidance_weight=150 --out outputs/w150[/]
      any preset value, into another folder

The results are judged at the end (evaluation.json, the report, a table here; see `mtransfer eval`);
--set evaluation.enabled=false skips that, --set evaluation.estimator="tvl1" picks the judge.
Running the same command again resumes; finished frames are never recomputed. Sizes are HEIGHTxWIDTH.
"""


def _region_override(text: str) -> str:
    """``--region 0.1,0.2,0.9,1`` (a box) or ``--region mask.png`` as an ``align.region`` override."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 4:
        try:
            return f"align.region=[{', '.join(str(float(part)) for part in parts)}]"
        except ValueError:
            pass
    if len(parts) > 1 and not Path(text).exists():
        raise UsageError(f"--region '{text}': expected x0,y0,x1,y1 (pixels or fractions) or a mask image")
    return f"align.region={json.dumps(text)}"


@app.command(epilog=EXAMPLES)
def run(
    video: Path = typer.Argument(..., help="Driving video whose motion is transferred.", show_default=False),
    onto: Path = typer.Option(..., "--onto", help="The still image to animate.", show_default=False),
    pipeline: str = typer.Option(
        "paper", "--pipeline", "-p", help=f"Preset name ({', '.join(available_pipelines())}) or a .toml path."
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Override any preset value: section.key=value (TOML value), repeatable.", show_default=False
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder. [default: outputs/<video>-onto-<image>]", show_default=False
    ),
    steps: int | None = typer.Option(None, min=1, help="guidance.steps: DDIM steps per frame.", show_default=False),
    max_frames: int | None = typer.Option(
        None, "--frames", "--max-frames", min=2, help="video.max_frames: use at most this many frames.",
        show_default=False,
    ),
    stride: int | None = typer.Option(None, min=1, help="video.stride: keep every N-th frame.", show_default=False),
    size: str | None = typer.Option(
        None, help="model.size: working size HEIGHTxWIDTH (multiples of 8 for SD).", show_default=False
    ),
    device: str | None = typer.Option(None, help="model.device: auto, cpu, cuda, cuda:1, ...", show_default=False),
    prompt: str | None = typer.Option(None, help="model.prompt: text describing the image.", show_default=False),
    strength: float | None = typer.Option(None, help="align.strength: scale the motion (1 = as filmed).",
                                          show_default=False),
    region: str | None = typer.Option(
        None, help="align.region: x0,y0,x1,y1 (pixels, or fractions if all <= 1) or a mask image.",
        show_default=False,
    ),
    flow_mode: str | None = typer.Option(
        None, "--flow", help=f"video.flow: {' or '.join(FLOW_MODES)} (frame 0 → t, or composed steps).",
        show_default=False,
    ),
    init: str | None = typer.Option(
        None, help=f"video.init: {' or '.join(INIT_MODES)} (each frame from the shared start, or from the "
        "previous result).", show_default=False,
    ),
    seed: int | None = typer.Option(None, help="guidance.seed.", show_default=False),
    executor: str | None = typer.Option(
        None, help=f"execution.executor: {' or '.join(EXECUTORS)} (edit the frames here, or on a pool of Ray "
        "workers, one per GPU; see execution.address to join a cluster).", show_default=False,
    ),
    flow_only: bool = typer.Option(False, "--flow-only", help="Stop after the flow and align stages."),
    restart: bool = typer.Option(
        False, "--restart", help="Recompute results made with other settings (moved to superseded/, not deleted)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Transfer the motion of VIDEO onto the image given with --onto (motion-guided diffusion per frame).

    Writes frames/, flow/, flow_color/, result.mp4, result.gif, side_by_side.mp4, flow.mp4, report.html and
    manifest.json into the run folder.
    """
    from mtransfer.pipeline.runner import RunRequest, run_pipeline  # the heavy stack, only when a run starts
    from mtransfer.progress import progress_bar

    if flow_only and init is not None:
        raise UsageError("--init only affects the guide stage, which --flow-only skips; drop one of them")
    flags = {
        "guidance.steps": steps, "guidance.seed": seed, "video.max_frames": max_frames, "video.stride": stride,
        "model.device": device, "model.prompt": prompt, "align.strength": strength, "video.flow": flow_mode,
        "video.init": init, "execution.executor": executor,
    }
    overrides = preset_overrides(pipeline, settings, flags, size,
                                 () if region is None else (_region_override(region),))
    request = RunRequest(
        video=video, image=onto, pipeline=pipeline, overrides=tuple(overrides), out=out,
        restart=restart, flow_only=flow_only,
    )
    run_pipeline(request, console, progress_bar(console, 18, quiet=quiet))
