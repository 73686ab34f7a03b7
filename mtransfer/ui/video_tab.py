"""The Video tab: lay a clip's motion onto the Motion tab's image through the CLI's own pipeline
(``run_pipeline``), flow-only first, with per-frame previews, then the full run (which resumes)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from rich.console import Console

from mtransfer.errors import MtransferError
from mtransfer.files import load_image, to_uint8
from mtransfer.flows import read_mask
from mtransfer.pipeline.runner import RunRequest, run_pipeline
from mtransfer.ui.jobs import Job
from mtransfer.ui.session import POLL_S, Shared, file_link, page_error, session_of, shows_problems
from mtransfer.ui.uploads import accept_video


def video_work(job: Job, request: RunRequest):
    """The job: the staged pipeline on the clip, its console output kept off the server's terminal."""
    job.begin("flow-only preview" if request.flow_only else "running the clip", 0)
    log = io.StringIO()
    try:
        return run_pipeline(request, Console(file=log, width=120, force_terminal=False))
    except KeyboardInterrupt:
        raise MtransferError("interrupted") from None


def frame_panel(folder: Path, index: int) -> np.ndarray | None:
    """One frame of a run folder side by side: driving frame | target flow (colours) | edit mask."""
    name = f"{index:04d}.png"
    flow_picture = folder / "flow_color" / name
    if not flow_picture.exists():
        return None
    target = load_image(flow_picture)
    size = tuple(target.shape[-2:])
    driving = load_image(folder / "driving" / name, size=size) if (folder / "driving" / name).exists() \
        else torch.zeros(3, *size)
    mask_path = folder / "edit_mask" / name
    mask = read_mask(mask_path, size=size).expand(3, -1, -1) if mask_path.exists() else torch.ones(3, *size)
    gap = torch.ones(3, size[0], 4)
    return to_uint8(torch.cat([driving, gap, target, gap, mask], dim=-1))


def build(shared: Shared) -> None:
    """Lay out the Video tab in the current context and wire its events."""

    @shows_problems
    def on_video(session, video_state, clip_upload, preset, strength, fit, flow_only):
        session = session_of(session)
        if clip_upload is None and video_state is None:
            raise MtransferError("upload a clip first")
        if video_state is None or video_state.get("upload") != clip_upload:
            clip = accept_video(clip_upload, session.folder, shared.limits)
            video_state = {"upload": clip_upload, "clip": str(clip)}
        request = RunRequest(
            video=Path(video_state["clip"]), image=session.folder / "source.png", pipeline=preset,
            overrides=(f"align.strength={float(strength)}", f'align.fit="{fit}"'),
            out=session.folder / "video", flow_only=flow_only,
        )
        job = shared.queue.submit("video", lambda job: video_work(job, request))
        frames_done = lambda: len(list((request.out / "frames").glob("*.png")))  # noqa: E731
        while not job.finished.wait(POLL_S):
            extra = "" if flow_only else f" · {frames_done()} frames edited"
            yield {video_status: job.status() + extra, video_state_box: video_state}
        if job.error is not None:
            raise page_error(job.error)
        count = len(list((request.out / "flow_color").glob("*.png")))
        result = request.out / "result.mp4"
        yield {
            video_status: f"done in {time.perf_counter() - job.started:.1f} s: {count} frames"
                          + ("" if flow_only else ", result below"),
            video_state_box: video_state,
            frame_slider: gr.update(maximum=max(count - 1, 0), value=0, visible=True),
            frame_panel_image: frame_panel(request.out, 0),
            video_result: str(result) if result.exists() and not flow_only else None,
            video_links: f"{file_link(request.out / 'report.html', 'report.html')} · run folder `{request.out}`",
        }

    def on_frame(session, index):
        session = session_of(session)
        return frame_panel(session.folder / "video", int(index))

    video_state_box = gr.State(None)
    with gr.Row():
        clip_upload = gr.File(label="Driving clip (mp4, gif, ...)", elem_id="clip-upload")
        with gr.Column():
            video_preset = gr.Dropdown(shared.presets, value=shared.pipeline, label="Preset", allow_custom_value=True)
            strength = gr.Slider(0, 3, value=1, step=0.05, label="align.strength (1 = as filmed)")
            fit = gr.Dropdown(["cover", "contain", "stretch"], value="cover", label="align.fit")
    gr.Markdown("The clip's motion is laid onto the Motion tab's image.")
    with gr.Row():
        flow_only = gr.Button("Flow-only preview", elem_id="flow-only")
        run_clip = gr.Button("Run the clip (resumes)", variant="primary")
        cancel_video = gr.Button("Cancel")
    video_status = gr.Markdown(elem_id="video-status")
    frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame-slider")
    frame_panel_image = gr.Image(label="driving | target flow on the image | edit mask", interactive=False,
                                 height=260, elem_id="frame-panel")
    video_result = gr.Video(label="Result", interactive=False)
    video_links = gr.Markdown()

    video_outputs = [video_status, video_state_box, frame_slider, frame_panel_image, video_result, video_links]
    video_in = [shared.session, video_state_box, clip_upload, video_preset, strength, fit]
    flow_only.click(lambda *a: (yield from on_video(*a, True)), video_in, video_outputs, concurrency_limit=1)
    run_clip.click(lambda *a: (yield from on_video(*a, False)), video_in, video_outputs, concurrency_limit=1)
    cancel_video.click(shared.queue.cancel, None, video_status)
    frame_slider.release(on_frame, [shared.session, frame_slider], frame_panel_image)
