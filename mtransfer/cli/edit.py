"""``mtransfer edit IMAGE --flow FLOW``: move what is in one image by a target flow (motion guidance)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from mtransfer.choices import DIFFERENTIABLE
from mtransfer.cli import app, console
from mtransfer.cli.options import QUIET_HELP, preset_overrides
from mtransfer.errors import UsageError
from mtransfer.presets import available_pipelines

if TYPE_CHECKING:
    import torch

EXAMPLES = """\
[bold]Examples[/]

  [cyan]mtransfer edit photo.png --flow "translate(40, 0)" --mask subject.png --device cuda[/]
      the paper's settings (SD v1.4 at 512x512, 500 steps x 10 recursions, RAFT): move the masked subject right

  [cyan]mtransfer edit photo.png --flow "rotate(20, cx=40%, cy=50%)" --prompt "a photo of a cat" --pipeline preview[/]
      100 steps x 3 recursions: a quicker look before a full run

  [cyan]mtransfer edit photo.png --flow outputs/clip-flow/flow/0008.flo --size 512x512[/]
      a flow file (.flo / .npy / KITTI .png) on the working grid, e.g. from `mtransfer flow`

  [cyan]mtransfer edit photo.png --flow "twirl(60)" --model tiny --estimator pyramid --steps 4 --size 64x64[/]
      tiny random SD and a weight-free estimator: checks the whole path offline in seconds (noise-like pictures)

Writes edited.png, source.png, target_flow.png, achieved_flow.png, comparison.png, loss.png, losses.json,
previews/step_XXXX.png and run.json into outputs/<image>-edit/ (or --out); a folder holding an edit made with
other settings is refused (--restart moves it to superseded/). Sizes are HEIGHTxWIDTH.
"""


def _edit_mask(path: Path, original: tuple[int, int], working: tuple[int, int]) -> torch.Tensor:
    """A mask drawn on the input image or on the working grid, brought to the working grid."""
    from mtransfer.flows.io import read_mask_on

    return read_mask_on(path, working, [original], "mask")


@app.command(epilog=EXAMPLES)
def edit(
    image: Path = typer.Argument(..., help="The image to edit.", show_default=False),
    flow: str = typer.Option(
        ..., "--flow", "-f", help="Target flow: a .flo/.npy/KITTI .png file or a motion such as 'rotate(20)'.",
        show_default=False,
    ),
    mask: Path | None = typer.Option(
        None, help="Edit mask (white = may change); outside it the source is kept. [default: whole image]",
        show_default=False,
    ),
    prompt: str | None = typer.Option(None, help="model.prompt: text describing the image.", show_default=False),
    model: str | None = typer.Option(
        None, help="model.model: Hugging Face id, diffusers folder, .safetensors/.ckpt file, 'tiny'/'tiny-sd2' (random, offline) or 'exact'.",
        show_default=False,
    ),
    estimator: str | None = typer.Option(
        None, help=f"estimator.name inside the energy: {', '.join(DIFFERENTIABLE)}.", show_default=False
    ),
    raft_weights: str | None = typer.Option(
        None,
        help="estimator.weights: torchvision RAFT weights by name (C_T_V1, DEFAULT, ...), a local .pth state dict, "
        "or 'random'.",
        show_default=False,
    ),
    steps: int | None = typer.Option(None, min=1, help="guidance.steps: DDIM steps.", show_default=False),
    recursions: int | None = typer.Option(None, min=1, help="guidance.recursions per step.", show_default=False),
    cfg: float | None = typer.Option(None, help="guidance.cfg_scale: classifier-free guidance.", show_default=False),
    guidance_weight: float | None = typer.Option(None, help="guidance.guidance_weight.", show_default=False),
    flow_weight: float | None = typer.Option(None, help="guidance.flow_weight.", show_default=False),
    color_weight: float | None = typer.Option(None, help="guidance.color_weight.", show_default=False),
    clip: float | None = typer.Option(None, help="guidance.clip_grad (0 = no clipping).", show_default=False),
    no_occlusion: bool = typer.Option(False, "--no-occlusion", help="Do not mask occluded pixels in the colour loss."),
    seed: int | None = typer.Option(None, help="guidance.seed.", show_default=False),
    trajectory: Path | None = typer.Option(
        None, help="trajectory.pt from `mtransfer generate`: edit a generated image along its own noise "
        "trajectory instead of inverting it (its prompt is used unless --prompt is given).", show_default=False,
    ),
    device: str | None = typer.Option(None, help="model.device: auto, cpu, cuda, cuda:1, ...", show_default=False),
    dtype: str | None = typer.Option(None, help="model.dtype: float32, float16 or bfloat16.", show_default=False),
    size: str | None = typer.Option(None, help="model.size: working size HEIGHTxWIDTH.", show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder. [default: outputs/<image>-edit]",
                                    show_default=False),
    restart: bool = typer.Option(
        False, "--restart", help="Replace an earlier edit made with other settings in the output folder (moved to "
        "superseded/, not deleted)."
    ),
    pipeline: str = typer.Option(
        "paper", "--pipeline", "-p", help=f"Preset name ({', '.join(available_pipelines())}) or a .toml path."
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Override any preset value: section.key=value (TOML value), repeatable.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Edit IMAGE so that its content moves by the target flow (Motion Guidance, Geng & Owens 2024)."""
    # The heavy stack (torch, diffusers) is imported when an edit runs, never for --help.
    from mtransfer.app import Editor, load_settings, world_warning
    from mtransfer.app.edit_folder import check_edit_folder, edit_into_folder, edit_key, superseding
    from mtransfer.app.settings import shape_note
    from mtransfer.app.trajectory import load_trajectory
    from mtransfer.cli.in_memory import reuse_rescued, stopped_note
    from mtransfer.files import ensure_writable, load_image, read_json_object
    from mtransfer.flows.spec import load_flow
    from mtransfer.guidance.edit import motionless
    from mtransfer.layouts import EditFolder
    from mtransfer.pipeline.manifest import content_id, fingerprint
    from mtransfer.progress import progress_bar

    overrides = preset_overrides(pipeline, settings, {
        "model.model": model, "model.prompt": prompt, "model.device": device, "model.dtype": dtype,
        "estimator.name": estimator, "estimator.weights": raft_weights,
        "guidance.steps": steps, "guidance.recursions": recursions, "guidance.cfg_scale": cfg,
        "guidance.guidance_weight": guidance_weight, "guidance.flow_weight": flow_weight,
        "guidance.color_weight": color_weight, "guidance.clip_grad": clip, "guidance.seed": seed,
        "guidance.occlusion": "none" if no_occlusion else None,
    }, size)
    run = load_settings(pipeline, overrides)
    if raft_weights and not run.estimator.name.startswith("raft-"):
        raise UsageError(f"--raft-weights {raft_weights}: only raft-large and raft-small take weights, "
                         f"not {run.estimator.name}")
    torch_device = run.model.torch_device()

    # Everything cheap is checked before the (slow) models are loaded.
    original = load_image(image)
    working = run.model.working_size(tuple(original.shape[-2:]), image)
    if note := shape_note(tuple(original.shape[-2:]), working, str(image)):
        console.print(escape(note), highlight=False, soft_wrap=True)
    source = load_image(image, size=working)
    target_flow = load_flow(flow, *working, mask_sizes=[tuple(original.shape[-2:])],
                            spec_size=tuple(original.shape[-2:]))  # a spec's px are the image's own
    if motionless(target_flow):
        raise UsageError(f"--flow {flow}: moves no pixel, so there is nothing to edit (the result would be the source)")
    edit_mask = None if mask is None else _edit_mask(mask, tuple(original.shape[-2:]), working)
    if outside := world_warning(run.model, [target_flow], [edit_mask]):
        console.print(f"[bold yellow]warning:[/] {escape(outside)}", highlight=False, soft_wrap=True)
    generation = None if trajectory is None else load_trajectory(
        trajectory, model=run.model.model, steps=run.guidance.steps, size=working
    )
    prompt_text = generation["prompt"] if generation is not None and prompt is None else run.model.prompt
    folder = out if out is not None else Path("outputs") / f"{image.stem}-edit"
    ensure_writable(folder)
    trajectory_id = None if trajectory is None else content_id(fingerprint(trajectory))
    key = edit_key(run, working, prompt_text, source, target_flow, edit_mask, trajectory_id)
    check_edit_folder(folder, key, restart)
    moved: list[Path | None] = []
    if reuse_rescued(folder, key, "edit", console, superseding(folder, moved) if restart else None):
        _note_moved(moved[0] if moved else None)
        _check_status(folder, read_json_object(folder / EditFolder.RECORD, "an edit record"))
        return

    started = time.perf_counter()
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    with stopped_note(folder, "edit"):
        with Editor.load(run, source, torch_device, warn=warn) as editor, progress_bar(console, quiet=quiet) as progress:
            load_timing = {"load_s": time.perf_counter() - started}
            shown: list[tuple[int, int]] = []

            def phase(name: str, total: int):
                """A progress bar per phase; the one before is shown complete (forward noising has no steps)."""
                if shown:
                    progress.update(shown[-1][0], completed=shown[-1][1])
                if not total:
                    return lambda: None
                task = progress.add_task(name, total=total)
                shown.append((task, total))
                return lambda: progress.advance(task)

            result, earlier = edit_into_folder(
                folder, editor, source, target_flow, command="edit", image=str(image), flow=flow,
                prompt=prompt_text, edit_mask=edit_mask, mask=None if mask is None else str(mask),
                trajectory=None if trajectory is None else (
                    str(trajectory), list(generation["latents"].unsqueeze(1)), trajectory_id),
                overrides=overrides, warnings=warnings, load_timing=load_timing, phase=phase, restart=restart,
                rescue=True,
            )
    _note_moved(earlier)
    _check_status(folder, read_json_object(folder / EditFolder.RECORD, "an edit record"))


def _note_moved(moved: Path | None) -> None:
    if moved is not None:
        console.print(f"--restart: moved the earlier edit to {escape(str(moved))}", highlight=False)


def _check_status(folder: Path, record: dict) -> None:
    """A diverged edit is written (its last good estimate, status 'diverged') but is not a success; a finished
    one is reported with its verdict (reached / partial / missed), its time and final losses."""
    if record.get("status") == "diverged":
        raise UsageError(
            f"{record.get('divergence')}; the last good estimate is in {folder} (run.json status 'diverged'); "
            "try a lower --guidance-weight or --clip"
        )
    console.print(edit_line(folder, record), highlight=False, soft_wrap=True)


_VERDICT_STYLE = {"reached": "green", "partial": "yellow", "missed": "bold red"}


def edit_line(folder: Path, record: dict) -> str:
    """The edit's last terminal line: the verdict first (never a bare "done"), then time, losses and the picture."""
    from mtransfer.evaluation.verdict import Verdict

    if "verdict" not in record:  # a rescue written by a version before verdicts
        return f"finished without a verdict (run `mtransfer eval {escape(str(folder))}`): {escape(str(folder))}/edited.png"
    verdict = Verdict.from_record(record["verdict"])
    losses = ", ".join(f"{k} {v:.4g}" for k, v in (record.get("final_losses") or {}).items()
                       if k in ("total", "flow", "color") and isinstance(v, (int, float)))
    return (f"[{_VERDICT_STYLE[verdict.label]}]{verdict.label}[/]: {escape(verdict.figures())}; "
            f"{record['timing']['sampling_s']:.1f} s ({losses or 'no guidance'}): {escape(str(folder))}/edited.png")
