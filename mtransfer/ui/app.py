"""The Gradio page of ``mtransfer ui``: the Motion, Edit and Video tabs (one module each) over one state.

Only layout and wiring live in the tab modules; the pieces with logic are plain functions in
``mtransfer.ui.motion``, ``mtransfer.ui.uploads`` and ``mtransfer.ui.jobs`` (tested without a browser).
Problems reach the page as ``gr.Error`` messages (``session.shows_problems``); the server keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from mtransfer.presets import available_pipelines
from mtransfer.ui import edit_tab, motion_tab, video_tab
from mtransfer.ui.jobs import JobQueue
from mtransfer.ui.session import Shared
from mtransfer.ui.uploads import UploadLimits


def build_app(pipeline: str = "tiny", root: Path = Path("outputs/ui"), limits: UploadLimits = UploadLimits()) -> gr.Blocks:
    """The page; ``pipeline`` is the preset (name or .toml) selected at start, ``root`` the outputs folder."""
    root.mkdir(parents=True, exist_ok=True)
    presets = list(dict.fromkeys([pipeline, *available_pipelines()]))
    with gr.Blocks(title="mtransfer", analytics_enabled=False) as demo:
        shared = Shared(root=root, limits=limits, queue=JobQueue(), pipeline=pipeline, presets=presets,
                        session=gr.State(None))
        gr.Markdown("## mtransfer: motion guidance — build a motion, see it, then edit an image or run a clip")
        with gr.Tab("Motion"):
            built = motion_tab.build(shared)
        with gr.Tab("Edit"):
            edit_tab.build(shared, built.spec)
        with gr.Tab("Video"):
            video_tab.build(shared)
    return demo


def launch(pipeline: str, host: str, port: int, root: Path = Path("outputs/ui"), **kwargs: Any):
    """Start the server (never a public share link); returns Gradio's ``(app, local_url, share_url)``."""
    limits = UploadLimits()
    demo = build_app(pipeline, root, limits)
    demo.queue(default_concurrency_limit=4)
    return demo, demo.launch(
        server_name=host, server_port=port, share=False, max_file_size=limits.largest_bytes,
        allowed_paths=[str(root.resolve())], ssr_mode=False, footer_links=[], show_error=True,
        theme=gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"]),
        **kwargs,
    )
