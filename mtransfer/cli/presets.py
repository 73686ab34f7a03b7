"""``mtransfer presets``: the shipped presets (and any given .toml files) with their base and differences."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from mtransfer.cli import app


@app.command()
def presets(
    files: list[Path] = typer.Argument(None, help="Your own preset files to describe as well.", show_default=False),
) -> None:
    """List each preset: its description, the preset it extends, what it changes there, and whether it
    computes the paper's math (`extends = "paper"` in a .toml file inherits the rest)."""
    from mtransfer.app.preset_list import PAPER, describe_preset
    from mtransfer.presets import available_pipelines

    out = Console(soft_wrap=True, highlight=False)  # stdout: the listing is the result
    for which in [*available_pipelines(), *(files or [])]:
        info = describe_preset(which)
        out.print(Text.assemble((info.name, "bold"), f"  {info.description or '(no description)'}"))
        if isinstance(which, Path):
            out.print(Text(f"  file: {info.path}"))
        out.print(Text(f"  base: {info.base}" if info.base else "  base: none (a complete preset)"))
        for change in info.changes:
            out.print(Text(f"    {change}"))
        math = "the paper's" if not info.math else f"CHANGED from {PAPER}'s: {', '.join(info.math)}"
        out.print(Text(f"  math: {math}"))
