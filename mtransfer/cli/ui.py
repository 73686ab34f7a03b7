"""``mtransfer ui``: start the local web app (Motion, Edit and Video tabs)."""

from __future__ import annotations

import typer

from mtransfer.cli import app, console
from mtransfer.errors import UsageError
from mtransfer.presets import available_pipelines

INSTALL = "pip install 'mtransfer[ui]'"


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on; 0.0.0.0 makes the app reachable from "
                             "other machines (there is no login)."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    pipeline: str = typer.Option(
        "tiny", "--pipeline", "-p", help=f"Preset selected at start ({', '.join(available_pipelines())}) or a .toml path."
    ),
) -> None:
    """Start the web app: build a motion on an image, edit the image, transfer a clip's motion (outputs/ui/)."""
    try:
        from mtransfer.ui.app import launch
    except ModuleNotFoundError as exc:
        if exc.name != "gradio" and not (exc.name or "").startswith("gradio."):
            raise
        raise UsageError(f"the web app needs Gradio, which is not installed: {INSTALL}") from None
    console.print(f"mtransfer ui on http://{host}:{port} (Ctrl-C stops it); results go to outputs/ui/",
                  highlight=False)
    launch(pipeline, host, port, quiet=True)
