"""``mtransfer generate``: text → image with its DDIM trajectory kept, so the image can be motion-edited."""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
import typer
from rich.markup import escape

from mtransfer.cli import app, console
from mtransfer.progress import progress_bar
from mtransfer.cli.options import preset_overrides
from mtransfer.errors import MtransferError, input_error, require_file
from mtransfer.files import atomic_path, ensure_writable, rescue_on_failure, save_image, write_json
from mtransfer.guidance.edit import generate as generate_image
from mtransfer.pipeline.manifest import versions
from mtransfer.pipeline.models import load_backend
from mtransfer.pipeline.settings import RunSettings
from mtransfer.presets import available_pipelines, load_pipeline

TRAJECTORY_KEYS = {"latents", "prompt", "model", "steps", "size", "seed", "cfg_scale"}


def save_trajectory(path: Path, latents: list[torch.Tensor], **meta: object) -> Path:
    """The generation's latents ``(steps + 1, C, h, w)`` and what they were made with, written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"latents": torch.cat(latents).cpu(), **meta}, tmp)
    return path


def load_trajectory(path: Path, *, model: str, steps: int, size: tuple[int, int]) -> dict:
    """A trajectory from ``mtransfer generate``, checked against the edit's model, steps and size."""
    require_file(path, "trajectory file")
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise input_error(path, f"not a trajectory written by `mtransfer generate` ({type(exc).__name__})") from None
    if not isinstance(record, dict) or not TRAJECTORY_KEYS <= set(record):
        raise input_error(path, "not a trajectory written by `mtransfer generate`")
    for key, wanted in (("model", model), ("steps", steps), ("size", list(size))):
        if record[key] != wanted:
            raise input_error(path, f"was generated with {key} {record[key]}, but this edit uses {wanted}; "
                                    f"edit with the same {key} (--set / flags)")
    return record


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to paint."),
    pipeline: str = typer.Option(
        "paper", "--pipeline", "-p", help=f"Preset name ({', '.join(available_pipelines())}) or a .toml path."
    ),
    model: str | None = typer.Option(None, help="model.model: Hugging Face id, diffusers folder or 'tiny'.",
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
) -> None:
    """Generate an image from PROMPT and keep its noise trajectory for `mtransfer edit --trajectory`.

    Editing along the generation's own trajectory needs no DDIM inversion: unguided sampling from the same
    noise retraces the image exactly, so the edit mask pastes the true latents of the picture.

    Example: mtransfer generate "a photo of a cat on a sofa" --device cuda, then
    mtransfer edit outputs/generated/a-photo-of-a-cat-on-a-sofa/image.png --trajectory
    outputs/generated/a-photo-of-a-cat-on-a-sofa/trajectory.pt --flow "translate(30, 0)"
    """
    overrides = preset_overrides(
        settings, {"model.model": model, "model.device": device, "guidance.steps": steps, "guidance.seed": seed}, size
    )
    run = RunSettings.from_config(load_pipeline(pipeline, overrides))
    if run.model.is_offline and run.model.model != "tiny":
        raise MtransferError(f"model '{run.model.model}' cannot generate images; use Stable Diffusion or 'tiny'")
    if not run.model.size:
        raise MtransferError("generation needs a size: --size HEIGHTxWIDTH (e.g. 512x512)")
    folder = out or Path("outputs") / "generated" / (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "image")
    torch_device = run.model.torch_device()
    ensure_writable(folder)
    backend = load_backend(run.model, None, torch_device)
    guidance = run.guidance
    started = time.perf_counter()
    with progress_bar(console) as progress:
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
        save_image(where / "image.png", image)
        save_trajectory(where / "trajectory.pt", latents, prompt=prompt, model=run.model.model, steps=guidance.steps,
                        size=list(run.model.size), seed=guidance.seed, cfg_scale=guidance.cfg_scale)
        write_json(where / "run.json", record)

    with rescue_on_failure(folder, write_all):
        write_all(folder)
    console.print(f"[green]done[/]: {escape(str(folder))}/image.png and trajectory.pt", highlight=False)
