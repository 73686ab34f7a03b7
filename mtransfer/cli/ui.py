"""``mtransfer ui``: start the local web app (Motion, Edit and Video tabs)."""

from __future__ import annotations

import errno
import socket
import time

import typer

from mtransfer.cli import app, console
from mtransfer.errors import Interrupted, UsageError
from mtransfer.presets import available_pipelines

INSTALL = "pip install 'mtransfer[ui]'"


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, so that a bad host or a busy port is one line naming the flag
    (Gradio reports both as "Cannot find empty port"), before the page is built."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # Gradio takes [::1] too
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET  # as the server (uvicorn) chooses
    try:
        addresses = socket.getaddrinfo(bare, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host}: not an address or host name this machine knows "
                         f"({getattr(exc, 'strerror', None) or exc}); use 127.0.0.1 (this machine only) "
                         "or 0.0.0.0 (every interface)") from None
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: already in use on {host} (another server listens there); "
                                 "choose another --port") from None
            if exc.errno == errno.EACCES:
                raise UsageError(f"--port {port}: permission denied (ports below 1024 need privileges); "
                                 "choose another --port") from None
            raise UsageError(f"--host {host}: cannot listen there ({exc.strerror}); use 127.0.0.1 (this machine "
                             "only) or 0.0.0.0 (every interface)") from None


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on; 0.0.0.0 makes the app reachable from "
                             "other machines (there is no login)."),
    port: int = typer.Option(7860, min=1, max=65535, help="Port to listen on."),
    pipeline: str = typer.Option(
        "offline-demo", "--pipeline", "-p",
        help=f"Preset selected at start ({', '.join(available_pipelines())}) or a .toml path; the default needs no "
        "weights and moves pictures."
    ),
) -> None:
    """Start the web app: build a motion on an image, edit the image, transfer a clip's motion (outputs/ui/)."""
    check_address(host, port)
    try:
        from mtransfer.ui.app import launch
    except ModuleNotFoundError as exc:
        if exc.name != "gradio" and not (exc.name or "").startswith("gradio."):
            raise
        raise UsageError(f"the web app needs Gradio, which is not installed: {INSTALL}") from None
    from mtransfer.ui.jobs import JobQueue

    demo, jobs = None, JobQueue()
    try:
        demo, _ = launch(pipeline, host, port, queue=jobs, quiet=True, prevent_thread_lock=True)
        console.print(f"mtransfer ui on http://{host}:{port} (Ctrl-C stops it); results go to outputs/ui/",
                      highlight=False)
        while demo.is_running:
            time.sleep(0.2)
    except OSError as exc:
        if "Cannot find empty port" not in str(exc):  # Gradio's words for a port taken since the check
            raise
        raise UsageError(f"--port {port} on {host}: the server could not start ({str(exc).split('.')[0]}); "
                         "choose another --port") from None
    except KeyboardInterrupt:
        # Gradio's own wait swallows Ctrl-C (exit 0); this one stops now, also while starting (its server
        # thread is a daemon: nothing outlives the process), but lets the running job stop first.
        stopped = stop_jobs(jobs)
        if demo is not None:
            demo.close(verbose=False)
        raise Interrupted(f"the web app stopped{stopped}; results already written are kept in outputs/ui/") from None


STOP_WAIT_S = 120.0
"""How long shutdown waits for the running job to reach its next step (a second Ctrl-C stops at once)."""


def stop_jobs(jobs) -> str:
    """Stop the web app's running job at its next step and wait for it, so that its run folder is left as
    Ctrl-C leaves the CLI's (finished frames recorded, lock released); says which job stopped and how."""
    if jobs.current is not None and jobs.current.running:
        console.print(f"stopping: '{jobs.current.title}' stops at its next step (Ctrl-C again stops at once)",
                      highlight=False)
    try:
        job = jobs.shutdown(STOP_WAIT_S)
    except KeyboardInterrupt:
        return " without waiting for the running job"
    if job is None:
        return ""
    if job.running:
        return f" while '{job.title}' still ran (it did not stop within {STOP_WAIT_S:.0f} s)"
    if job.error is None:
        return f"; '{job.title}' had just finished"
    if job.name != "video":
        return f"; '{job.title}' stopped: {job.error}"
    kept = str(job.error).split("; run the same command again")[0]  # the runner's words are for the CLI
    return f"; '{job.title}' stopped: {kept}; Resume in the Video tab continues it"
