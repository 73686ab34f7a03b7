"""The Jobs tab: the server's jobs, whichever page started them. A job outlives the page that started it,
so any page (a reloaded or a new one) shows the running job's progress in words with a Cancel, and the
finished jobs with their result, report and run folder. It refreshes itself every ``REFRESH_S``."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from mtransfer.errors import MtransferError
from mtransfer.ui.jobs import Job, JobQueue
from mtransfer.ui.session import RESULT_PX, Shared, job_html, warning_html

REFRESH_S = 1.0
RESULT_STYLE = f"height: {RESULT_PX}px; max-width: 100%; object-fit: contain; image-rendering: pixelated"
"""How a result is shown: at a readable height whatever its working size (small ones pixel for pixel)."""


def file_url(path: Path) -> str:
    """Where the page fetches a file of the outputs folder (the server serves only that folder)."""
    return html.escape(f"/gradio_api/file={path.resolve()}", quote=True)


def running_html(queue: JobQueue) -> str:
    """The running job: its title, progress in words and run folder; or that none runs."""
    job = queue.current
    if job is None or not job.running:
        return "<p>No job is running.</p>"
    folder = f" · run folder <code>{html.escape(str(job.folder))}</code>" if job.folder else ""
    return (f'<div class="mtransfer-job" data-state="{job.state()}"><strong>#{job.number} {html.escape(job.title)}'
            f"</strong> — {job.state()}<br>{job_html(job)}{folder}</div>")


def _ended(job: Job) -> str:
    """A finished job as a card: what came of it in words, then its result, report and folder."""
    if job.outputs is not None:
        words = job.outputs.summary
    elif job.cancelled:
        words = str(job.error)
    else:
        words = f"{job.state()}: " + (str(job.error) if isinstance(job.error, MtransferError)
                                      else f"unexpected {type(job.error).__name__}: {job.error}")
    parts = [f"<strong>#{job.number} {html.escape(job.title)}</strong> — {job.state()} after {job.seconds:.0f} s",
             f"<br>{html.escape(words)}{warning_html(job)}"]
    outputs = job.outputs
    if outputs is not None and outputs.picture is not None and outputs.picture.exists():
        parts.append(f'<br><img src="{file_url(outputs.picture)}" alt="result of job {job.number}" '
                     f'style="{RESULT_STYLE}">')
    if outputs is not None and outputs.video is not None and outputs.video.exists():
        parts.append(f'<br><video src="{file_url(outputs.video)}" controls loop muted style="{RESULT_STYLE}"></video>')
    links = []
    if outputs is not None and outputs.report is not None and outputs.report.exists():
        links.append(f'<a href="{file_url(outputs.report)}" target="_blank">report.html</a>')
    if job.folder is not None:
        links.append(f"run folder <code>{html.escape(str(job.folder))}</code>")
    if links:
        parts.append("<br>" + " · ".join(links))
    return f'<div class="mtransfer-job" data-state="{job.state()}" style="margin-bottom: 1em">{"".join(parts)}</div>'


def finished_html(queue: JobQueue) -> str:
    """Every finished job the server remembers, the newest first."""
    ended = [job for job in queue.jobs() if not job.running]
    return "".join(_ended(job) for job in ended) or "<p>No finished job yet.</p>"


def build(shared: Shared) -> tuple[gr.HTML, gr.HTML]:
    """Lay out the Jobs tab; returns its two views (the running job, the finished ones) for the page's load."""
    gr.Markdown("Jobs belong to the server: closing or reloading the page leaves a job running, and every page "
                "shows it here. One job runs at a time.")
    running = gr.HTML(running_html(shared.queue), elem_id="jobs-running")
    cancel = gr.Button("Cancel the running job", elem_id="jobs-cancel")
    cancel_note = gr.Markdown(elem_id="jobs-cancel-note")
    gr.Markdown("### Finished jobs")
    finished = gr.HTML(finished_html(shared.queue), elem_id="jobs-finished")

    def refresh():
        job = shared.queue.current
        note = gr.skip() if job is not None and job.running else ""  # "cancelling ..." goes with its job
        return running_html(shared.queue), finished_html(shared.queue), note

    gr.Timer(REFRESH_S).tick(refresh, None, [running, finished, cancel_note], show_progress="hidden", queue=False)
    cancel.click(lambda: (shared.queue.cancel(), running_html(shared.queue)), None, [cancel_note, running],
                 show_progress="hidden")
    return running, finished
