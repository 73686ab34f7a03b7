"""``mtransfer generate``: text → image with its DDIM trajectory kept, so the image can be motion-edited."""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape

from mtransfer.cli import app, console
from mtransfer.cli.options import QUIET_HELP, preset_overrides
from mtransfer.errors import UsageError
from mtransfer.presets import available_pipelines

@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to paint."),
    pipeline: str = typer.Option(
        "paper", "--pipeline", "-p", help=f"Preset name ({', '.join(available_pipelines())}) or a .toml path."
    ),
    model: str | None = typer.Option(None, help="model.model: Hugging Face id, diffusers folder, .safetensors/.ckpt file or 'tiny'.",
                                     show_default=False),
    steps: int | None = typer.Option(None, min=1, help="guidance.steps (edit with the same number).",
                                     show_default=False),
    seed: int | None = typer.Option(None, help="guidance.seed: picks the starting noise.", show_default=False),
    size: str | None = typer.Option(None, help="model.size: HEIGHTxWIDTH.", show_default=False),
    device: str | None = typer.Option(None, help="model.device: auto, cpu, cuda, ...", show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder. [default: outputs/generated/<prompt>]",
                                    show_default=False),
    settings: list[str] = typer.Option(
        [], "--set", help="Override any preset value: section.key=value (TOML value), repeatable.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Generate an image from PROMPT and keep its noise trajectory for `mtransfer edit --trajectory`.

    Editing along the generation's own trajectory needs no DDIM inversion: unguided sampling from the same
    noise retraces the image exactly, so the edit mask pastes the true latents of the picture.

    Example: mtransfer generate "a photo of a cat on a sofa" --device cuda, then
    mtransfer edit outputs/generated/a-photo-of-a-cat-on-a-sofa/image.png --trajectory
    outputs/generated/a-photo-of-a-cat-on-a-sofa/trajectory.pt --flow "translate(30, 0)"
    """
    import torch  # the heavy stack is imported when a command runs, never for --help

    from mtransfer.app import load_backend, load_settings
    from mtransfer.app.versions import versions
    from mtransfer.app.trajectory import save_trajectory
    from mtransfer.cli.in_memory import reuse_rescued, stopped_note
    from mtransfer.files import ensure_writable, rescue_on_failure, save_image, staged_folder, write_json
    from mtransfer.guidance.edit import generate as generate_image
    from mtransfer.progress import progress_bar

    overrides = preset_overrides(
        pipeline, settings, {"model.model": model, "model.device": device, "guidance.steps": steps, "guidance.seed": seed}, size
    )
    run = load_settings(pipeline, overrides)
    if run.model.model == "exact":
        raise UsageError("model 'exact' cannot generate images; use Stable Diffusion or 'tiny'")
    if not run.model.size:
        raise UsageError("generation needs a size: --size HEIGHTxWIDTH (e.g. 512x512)")
    folder = out or Path("outputs") / "generated" / (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "image")
    torch_device = run.model.torch_device()
    ensure_writable(folder)
    guide = run.by_stage()["guide"]
    key = {"command": "generate", "model": guide["model"], "guidance": guide["guidance"],
           "size": list(run.model.size), "prompt": prompt}
    if reuse_rescued(folder, key, "generate", console):
        return
    with stopped_note(folder, "generate"):
        backend = load_backend(run.model, None, torch_device)
        guidance = run.guidance
        started = time.perf_counter()
        with progress_bar(console, quiet=quiet) as progress:
            task = progress.add_task("generate", total=guidance.steps)
            with torch.no_grad():
                image, _, latents = generate_image(
                    backend, prompt, guidance, size=run.model.size, progress=lambda: progress.advance(task)
                )
        record = {
            "command": "generate", "prompt": prompt, "pipeline": run.name, "overrides": overrides,
            "model": asdict(run.model), "guidance": asdict(guidance), "device": str(torch_device),
            "versions": versions(), "seconds": time.perf_counter() - started,
        }

        def write_all(where: Path) -> None:
            """image.png, trajectory.pt and run.json as one set (run.json last): never a new picture beside
            an old trajectory."""
            with staged_folder(where) as stage:
                save_image(stage / "image.png", image)
                save_trajectory(stage / "trajectory.pt", latents, prompt=prompt, model=run.model.model,
                                steps=guidance.steps, size=list(run.model.size), seed=guidance.seed,
                                cfg_scale=guidance.cfg_scale)
                write_json(stage / "run.json", record)

        with rescue_on_failure(folder, key, write_all):
            write_all(folder)
    console.print(f"[green]done[/]: {escape(str(folder))}/image.png and trajectory.pt", highlight=False)
