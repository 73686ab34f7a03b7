"""The ``mtransfer`` command line: one typer app, one module per sub-command."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from rich.console import Console

from mtransfer.errors import MtransferError

app = typer.Typer(
    name="mtransfer",
    help="Transfer the motion of a video onto still images with motion-guided diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Keeps sub-command names mandatory even while only one command is registered."""


def main() -> None:
    """Entry point: user-fixable problems become one red line and exit status 2, never a traceback."""
    from mtransfer.cli import commands  # noqa: F401  (registers the sub-commands)

    try:
        app(standalone_mode=False)
    except MtransferError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # "[ray]" is text
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume.")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors (bad option values, missing arguments)
        exc.show()
        sys.exit(exc.exit_code)
