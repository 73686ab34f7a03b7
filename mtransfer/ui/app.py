"""The Gradio page of ``mtransfer ui``: the Motion, Edit, Video and Jobs tabs (one module each) over one state.

Only layout and wiring live in the tab modules; the pieces with logic are plain functions in
``mtransfer.ui.motion``, ``mtransfer.ui.uploads`` and ``mtransfer.ui.jobs`` (tested without a browser).
Problems reach the page as ``gr.Error`` messages (``session.shows_problems``); the server keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from mtransfer.presets import available_pipelines
from mtransfer.ui import edit_tab, jobs_tab, motion_tab, video_tab
from mtransfer.ui.jobs import JobQueue
from mtransfer.ui.session import Shared
from mtransfer.ui.uploads import UploadLimits


CSS = """
.mtransfer-shown img, .mtransfer-shown video { width: 100%; height: 100%; object-fit: contain;
                                               image-rendering: pixelated; }
"""
"""Results and flows fill their frame whatever their working size (a 48x32 result is readable too)."""


def build_app(pipeline: str = "offline-demo", root: Path = Path("outputs/ui"), limits: UploadLimits = UploadLimits(),
              queue: JobQueue | None = None) -> gr.Blocks:
    """The page; ``pipeline`` is the preset (name or .toml) selected at start, ``root`` the outputs folder,
    ``queue`` the server's jobs (its owner stops them at shutdown)."""
    root.mkdir(parents=True, exist_ok=True)
    presets = list(dict.fromkeys([pipeline, *available_pipelines()]))
    queue = JobQueue() if queue is None else queue
    with gr.Blocks(title="mtransfer", analytics_enabled=False) as demo:
        shared = Shared(root=root, limits=limits, queue=queue, pipeline=pipeline, presets=presets,
                        session=gr.State(None))
        gr.Markdown("## mtransfer: motion guidance — build a motion, see it, then edit an image or run a clip")
        with gr.Tabs() as tabs:
            with gr.Tab("Motion", id="motion"):
                built = motion_tab.build(shared)
            with gr.Tab("Edit", id="edit"):
                edit_tab.build(shared, built.spec)
            with gr.Tab("Video", id="video"):
                video_tab.build(shared)
            with gr.Tab("Jobs", id="jobs"):
                running, finished = jobs_tab.build(shared)

        def on_load():
            """A page opened while a job runs shows it (the Jobs tab) instead of an empty canvas."""
            shown = gr.Tabs(selected="jobs") if queue.current is not None and queue.current.running else gr.skip()
            return shown, jobs_tab.running_html(queue), jobs_tab.finished_html(queue)

        demo.load(on_load, None, [tabs, running, finished], show_progress="hidden")
    return demo


def launch(pipeline: str, host: str, port: int, root: Path = Path("outputs/ui"), queue: JobQueue | None = None,
           **kwargs: Any):
    """Start the server (never a public share link); returns Gradio's ``(app, local_url, share_url)``."""
    limits = UploadLimits()
    demo = build_app(pipeline, root, limits, queue)
    demo.queue(default_concurrency_limit=4)
    return demo, demo.launch(
        server_name=host, server_port=port, share=False, max_file_size=limits.largest_bytes,
        allowed_paths=[str(root.resolve())], ssr_mode=False, footer_links=[], show_error=True, css=CSS,
        theme=gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"]),
        **kwargs,
    )
