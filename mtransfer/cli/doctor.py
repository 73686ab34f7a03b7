"""``mtransfer doctor``: what will happen on this machine (GPUs, weights, memory, time) before a run starts."""

from __future__ import annotations

import typer
from rich.console import Console

from mtransfer.cli import app
from mtransfer.presets import available_pipelines


@app.command()
def doctor(
    pipeline: str = typer.Option(
        "paper", "--pipeline", "-p", help=f"Preset to decide on ({', '.join(available_pipelines())}) or a .toml path."
    ),
) -> None:
    """Say what will happen here: GPUs and free memory, weights found, memory and time per preset.

    Exits 0 when --pipeline can run on this machine, 1 when it cannot (with the one-line fix).
    """
    from mtransfer.bench.doctor import doctor as run_doctor  # torch and diffusers: only when the command runs

    code = run_doctor(pipeline, Console(width=max(Console().width, 160)))
    if code:
        raise typer.Exit(code)
