"""The Video tab: lay a clip's motion onto the Motion tab's image through the CLI's own pipeline
(``run_pipeline``), flow-only first, with per-frame previews and per-frame progress, alignment controls
that map onto ``[align]``, then the full run (which resumes), and the resumption of any unfinished run
folder under the app's outputs."""

from __future__ import annotations

import html
import io
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console

from mtransfer.app import load_settings
from mtransfer.errors import MtransferError, UsageError
from mtransfer.files import load_image, to_uint8
from mtransfer.flows import read_mask
from mtransfer.pipeline.runner import RunRequest, run_pipeline
from mtransfer.layouts import REPORT, RESULT_MP4, SIDE_BY_SIDE
from mtransfer.ui.jobs import Job, JobProgress, Outputs
from mtransfer.ui.runs import resume_request, unfinished_runs
from mtransfer.ui.session import (
    QUIET, FLOW_PX, POLL_S, RESULT_PX, SHOWN, Session, Shared, file_link, job_html, legend, log_problem, page_error,
    preset_choice, problem_html, session_of, shows_problems,
)
from mtransfer.ui.uploads import accept_video, new_run_folder, safe_stem
from mtransfer.video import probe_video


def video_work(job: Job, request: RunRequest):
    """The job: the staged pipeline on the clip, its console output kept off the server's terminal and
    its progress (a cancel point at every frame and pass) shown in the page; leaves the job's ``outputs``
    for any page (the one that started it may have been closed meanwhile)."""
    job.begin("flow-only preview" if request.flow_only else "running the clip", 0)
    log = io.StringIO()
    folder = run_pipeline(request, Console(file=log, width=120, force_terminal=False), JobProgress(job))
    count = len(list((folder / "flow_color").glob("*.png")))
    side = folder / SIDE_BY_SIDE
    finished = not request.flow_only and side.exists()
    last = folder / "flow_color" / f"{count - 1:04d}.png"
    summary = f"done in {job.seconds:.1f} s: " + (f"{count} frames edited; source | result side by side"
                                                   if finished else f"the motion of {count} frames (flow only)")
    job.outputs = Outputs(summary, folder, picture=None if finished or not last.exists() else last,
                          video=side if finished else None, report=folder / REPORT)
    return folder


PICK_REGION = "Region of the image that moves: click two opposite corners"
FIRST_CORNER = "First corner placed: now click the opposite corner"


def clips_folder(session: Session) -> Path:
    """Where a session's clip and a copy of its image go, named after the uploads (so that the clip's report
    is titled "pan onto cat", from ``run``'s file names)."""
    folder = session.folder / "clips"
    folder.mkdir(exist_ok=True)
    return folder


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


def parse_region(text: str) -> tuple[float, float, float, float] | None:
    """``"x0, y0, x1, y1"`` (pixels of the working size, or fractions when all lie in [0, 1]); empty = none."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        return None
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(f"align region '{text}': expected four numbers x0, y0, x1, y1")
    return values  # type: ignore[return-value]


def corners_region(first: tuple[float, float], second: tuple[float, float], size: tuple[int, int]) -> str:
    """Two clicked corners (pixels of a ``size`` (height, width) picture) as the region text in fractions."""
    height, width = size
    (ax, ay), (bx, by) = first, second
    x0, x1 = sorted((min(max(ax, 0), width) / width, min(max(bx, 0), width) / width))
    y0, y1 = sorted((min(max(ay, 0), height) / height, min(max(by, 0), height) / height))
    if x1 - x0 < 1 / width or y1 - y0 < 1 / height:
        raise UsageError("the two corners of the region must differ in x and in y; click two opposite corners")
    return f"{x0:.3f}, {y0:.3f}, {x1:.3f}, {y1:.3f}"


def region_picture(session: Session, region: str, corner: tuple[float, float] | None = None) -> np.ndarray:
    """The image with the region (fractions or working-size pixels, drawn as fractions when all lie in
    [0, 1]) outlined, the whole image when there is none (it all moves), and a first clicked corner marked."""
    picture = Image.fromarray(to_uint8(session.image))
    draw = ImageDraw.Draw(picture)
    height, width = session.size
    try:
        box = parse_region(region)
    except MtransferError:
        box = None
    if box is None and not region.strip():
        box = (0.0, 0.0, 1.0, 1.0)
    if box is not None and all(0 <= v <= 1 for v in box):
        x0, y0, x1, y1 = box
        draw.rectangle((x0 * width, y0 * height, x1 * width - 1, y1 * height - 1), outline=(255, 64, 32), width=2)
    if corner is not None:
        x, y = corner
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=(255, 64, 32), width=2)
    return np.asarray(picture)


def align_overrides(fit: str, strength: float, region: str, mask_region: bool, session: Session,
                    spatial_sigma: float, temporal: str, temporal_amount: float) -> tuple[str, ...]:
    """The alignment controls as ``[align]`` overrides (the same keys as a preset or ``--set``)."""
    overrides = [f'align.fit="{fit}"', f"align.strength={float(strength)}", f"align.spatial_sigma={float(spatial_sigma)}",
                 f'align.temporal="{temporal}"', f"align.temporal_amount={float(temporal_amount)}"]
    if mask_region:
        if not session.mask:
            raise UsageError("no mask to use as the region: upload one in the Motion tab, or untick the box")
        overrides.append(f'align.region="{Path(session.mask).resolve().as_posix()}"')
    elif (box := parse_region(region)) is not None:
        overrides.append(f"align.region=[{', '.join(repr(v) for v in box)}]")
    return tuple(overrides)


def build(shared: Shared) -> None:
    """Lay out the Video tab in the current context and wire its events."""
    align = load_settings(shared.pipeline).align  # the controls start at the preset's alignment

    def follow(job: Job, out: Path, flow_only: bool, extra: dict):
        """Clear the last results, stream the job's status while the page is open (closing it leaves the
        job running: the Jobs tab shows it), then the results of ``out`` (or why there are none)."""
        yield {video_status: job_html(job), frame_slider: gr.update(visible=False), frame_panel_image: None,
               video_result: None, video_side: None, video_links: "", **extra}
        while not job.finished.wait(POLL_S):
            yield {video_status: job_html(job)}
        if job.cancelled:
            yield {video_status: html.escape(f"cancelled while {job.status().split(' · ')[0]}: the worker "
                                             f"stopped; finished frames are kept in {out} and Resume continues "
                                             "from them"),
                   resume_choice: gr.update(choices=choices())}
            return
        if job.error is not None:
            raise page_error(job.error)
        count = len(list((out / "flow_color").glob("*.png")))
        result, side = out / RESULT_MP4, out / SIDE_BY_SIDE
        last = max(count - 1, 0)  # the flow preview opens on the last frame: the first one has no motion yet
        yield {
            video_status: html.escape(job.outputs.summary),
            frame_slider: gr.update(maximum=last, value=last, visible=True),
            frame_panel_image: frame_panel(out, last),
            shown_folder: str(out),
            video_result: str(result) if result.exists() and not flow_only else None,
            video_side: str(side) if side.exists() and not flow_only else None,
            video_links: f"{file_link(out / REPORT, REPORT)} · run folder `{out}`",
            resume_choice: gr.update(choices=choices()),
        }

    def on_preset(preset):
        """Another preset chosen: the frame count shows its ``video.max_frames``."""
        try:
            return load_settings(preset).video.max_frames
        except MtransferError:  # a preset name being typed: its problem is said when a job starts
            return gr.skip()

    def on_clip(session, clip_upload):
        """A clip uploaded: checked now (one message when it is not a usable clip), copied to the session."""
        if clip_upload is None:
            return None, ""
        try:
            folder = clips_folder(session) if session is not None else new_run_folder(shared.root, "clip")
            state = accepted_clip(clip_upload, folder)
        except MtransferError as exc:
            log_problem(exc)
            return None, problem_html(exc)
        info = probe_video(Path(state["clip"]))
        return state, html.escape(f"clip {state['name']}: {info.frame_count} frames, {info.width}x{info.height}")

    def accepted_clip(clip_upload: str, folder: Path) -> dict:
        """The checked copy of an uploaded clip in ``folder``, as the tab keeps it."""
        name = Path(clip_upload).name
        clip = accept_video(clip_upload, folder, shared.limits, safe_stem(name, "driving"))
        return {"upload": clip_upload, "clip": str(clip), "name": name}

    @shows_problems
    def on_video(session, video_state, clip_upload, preset, frames, fit, strength, region, mask_region,
                 spatial_sigma, temporal, temporal_amount, flow_only):
        session = session_of(session)
        if clip_upload is None:
            raise UsageError("upload a clip first (Driving clip)")
        if video_state is None or video_state.get("upload") != clip_upload:  # pressed before its check came back
            video_state = accepted_clip(clip_upload, clips_folder(session))
        clip = Path(video_state["clip"])
        if clip.parent != clips_folder(session):  # uploaded before the image
            clip = accept_video(clip, clips_folder(session), shared.limits, clip.stem)
        image = clips_folder(session) / f"{safe_stem(session.name, 'image')}.png"
        if not image.exists():
            shutil.copyfile(session.folder / "source.png", image)
        overrides = (*align_overrides(fit, strength, region, mask_region, session, spatial_sigma, temporal,
                                      temporal_amount), f"video.max_frames={int(frames or 0)}")
        runs = session.clip_runs  # one run folder per clip and settings: the same again resumes it, other
        key = (str(clip), preset, overrides)  # settings get their own (the runner refuses to mix them)
        out = runs.setdefault(key, session.folder / ("video" if not runs else f"video-{len(runs) + 1:02d}"))
        request = RunRequest(video=clip, image=image, pipeline=preset, overrides=overrides, out=out,
                             flow_only=flow_only)
        title = f"{'flow-only preview' if flow_only else 'clip'} {video_state['name']} onto {session.name}"
        job = shared.queue.submit("video", lambda job: video_work(job, request), title=title, folder=request.out)
        yield from follow(job, request.out, flow_only, {video_state_box: video_state})

    @shows_problems
    def on_resume(folder):
        if not folder:
            raise UsageError("no unfinished run chosen: Refresh the list, then pick one")
        if Path(folder).resolve() not in [f.resolve() for f in unfinished_runs(shared.root)]:
            raise UsageError(f"{folder}: not an unfinished run folder under {shared.root}")
        request = resume_request(Path(folder))
        job = shared.queue.submit("video", lambda job: video_work(job, request), title=f"resumed clip {Path(folder).parent.name}/{Path(folder).name}",
                                  folder=request.out)
        yield from follow(job, request.out, False, {})

    def on_frame(folder, index):
        return frame_panel(Path(folder), int(index)) if folder else None

    def choices() -> list[str]:
        return [str(folder) for folder in unfinished_runs(shared.root)]

    def on_refresh():
        found = choices()
        return gr.update(choices=found, value=found[0] if found else None)

    @shows_problems
    def on_pick(session, region, corner, evt: gr.SelectData):
        """A click on the image: the first corner of the region, then the opposite one."""
        session = session_of(session)
        x, y = (float(v) for v in evt.index)
        if corner is None:
            return region, gr.update(value=region_picture(session, region, (x, y)), label=FIRST_CORNER), (x, y)
        region = corners_region(tuple(corner), (x, y), session.size)
        return region, gr.update(value=region_picture(session, region), label=PICK_REGION), None

    def on_session(session):
        return None if session is None else region_picture(session, "")

    @shows_problems
    def on_region_text(session, region):
        session = session_of(session)
        parse_region(region)  # a malformed box is named now, not when the run starts
        return region_picture(session, region), None

    video_state_box = gr.State(None)
    corner = gr.State(None)
    shown_folder = gr.State(None)
    with gr.Row():
        with gr.Column():
            clip_upload = gr.File(label="Driving clip (mp4, gif, ...)", elem_id="clip-upload")
            clip_status = gr.HTML(elem_id="clip-status")
        video_preset = preset_choice(shared, "video-preset")
        frames = gr.Number(load_settings(shared.pipeline).video.max_frames, label="Frames of the clip to use "
                           "(0 = all; follows the preset)", info="video.max_frames", minimum=0, precision=0,
                           elem_id="video-frames")
    gr.Markdown("The clip's motion is laid onto the Motion tab's image. **Alignment**: where on the image the "
                "motion goes (click two opposite corners on the image, or type the box), how the clip is fitted "
                "into it, how strong, and how much it is smoothed. Each control's settings key (`[align]`) is "
                "written under it.")
    with gr.Row():
        with gr.Column(scale=2):
            region_image = gr.Image(label=PICK_REGION,
                                    interactive=False, height=260, elem_id="region-image", format="png")
        with gr.Column(scale=3):
            region = gr.Textbox(label="Region that moves: x0, y0, x1, y1 (fractions of width and height; "
                                      "empty = the whole image)", info="align.region",
                                value=", ".join(f"{v:g}" for v in align.region) if isinstance(align.region, tuple)
                                else "", elem_id="align-region")
            mask_region = gr.Checkbox(False, label="Use the Motion tab's mask as the region instead")
            with gr.Row():
                fit = gr.Dropdown(["cover", "contain", "stretch"], value=align.fit,
                                  label="How the clip fits the region",
                                  info="align.fit")
                strength = gr.Slider(0, 3, value=align.strength, step=0.05, label="Strength (1 = as filmed)",
                                     info="align.strength")
            with gr.Row():
                spatial_sigma = gr.Slider(0, 10, value=align.spatial_sigma, step=0.5,
                                          label="Blur of each frame's motion (px)", info="align.spatial_sigma")
                temporal = gr.Dropdown(["none", "ema", "gaussian"], value=align.temporal,
                                       label="Smoothing over frames", info="align.temporal", elem_id="align-temporal")
                temporal_amount = gr.Number(align.temporal_amount, minimum=0, step=0.1,
                                            label="Smoothing amount (ema: share kept, below 1; gaussian: sigma in "
                                                  "frames)", info="align.temporal_amount",
                                            elem_id="align-temporal-amount")
    with gr.Row():
        flow_only = gr.Button("Flow-only preview", elem_id="flow-only")
        run_clip = gr.Button("Run the clip (resumes)", variant="primary", elem_id="run-clip")
        cancel_video = gr.Button("Cancel", elem_id="cancel-video")
    with gr.Row():
        resume_choice = gr.Dropdown(choices(), label="Unfinished runs under the outputs folder", scale=4,
                                    allow_custom_value=False, elem_id="resume-choice")
        refresh = gr.Button("Refresh list", scale=1, elem_id="resume-refresh")
        resume = gr.Button("Resume", scale=1, elem_id="resume")
    video_status = gr.HTML(elem_id="video-status")
    frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame-slider")
    with gr.Row(equal_height=True):
        frame_panel_image = gr.Image(label="driving frame | its motion on the image (flow colours) | edit mask",
                                     interactive=False, height=FLOW_PX, elem_id="frame-panel", scale=4,
                                     elem_classes=SHOWN)
        legend(elem_id="video-legend")
    with gr.Row():
        shown = {"interactive": False, "height": RESULT_PX, "elem_classes": SHOWN}
        video_result = gr.Video(label="Result", elem_id="video-result", **shown)
        video_side = gr.Video(label="Source | result, side by side", elem_id="video-side", **shown)
    video_links = gr.Markdown(elem_id="video-links")

    outputs = [video_status, video_state_box, frame_slider, frame_panel_image, shown_folder, video_result, video_side,
               video_links, resume_choice]
    video_in = [shared.session, video_state_box, clip_upload, video_preset, frames, fit, strength, region,
                mask_region, spatial_sigma, temporal, temporal_amount]
    video_preset.change(on_preset, video_preset, frames, **QUIET)
    clip_upload.change(on_clip, [shared.session, clip_upload], [video_state_box, clip_status], **QUIET)
    flow_only.click(lambda *a: (yield from on_video(*a, True)), video_in, outputs, concurrency_limit=1, **QUIET)
    run_clip.click(lambda *a: (yield from on_video(*a, False)), video_in, outputs, concurrency_limit=1, **QUIET)
    resume.click(on_resume, [resume_choice], outputs, concurrency_limit=1, **QUIET)
    refresh.click(on_refresh, None, resume_choice, **QUIET)
    cancel_video.click(lambda: shared.queue.cancel("video"), None, video_status, **QUIET)
    frame_slider.change(on_frame, [shown_folder, frame_slider], frame_panel_image, trigger_mode="always_last",
                        **QUIET)
    shared.session.change(on_session, [shared.session], region_image, **QUIET)
    region_image.select(on_pick, [shared.session, region, corner], [region, region_image, corner], **QUIET)
    region.submit(on_region_text, [shared.session, region], [region_image, corner], **QUIET)
