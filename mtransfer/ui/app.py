"""The Gradio page of ``mtransfer ui``: Motion, Edit and Video tabs over the package's own functions.

Only layout and wiring live here; the pieces with logic are plain functions in ``mtransfer.ui.motion``,
``mtransfer.ui.uploads`` and ``mtransfer.ui.jobs`` (tested without a browser). Problems reach the page
as ``gr.Error`` messages; the server keeps serving.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from mtransfer.app import Editor, check_models, load_settings, versions  # noqa: E402
from mtransfer.errors import Interrupted, MtransferError, UsageError  # noqa: E402
from mtransfer.files import load_image, to_uint8  # noqa: E402
from mtransfer.flows import read_flow, read_mask, resize_flow, spec_terms, write_flow  # noqa: E402
from mtransfer.guidance.outputs import write_edit  # noqa: E402
from mtransfer.pipeline.runner import RunRequest, run_pipeline  # noqa: E402
from mtransfer.presets import available_pipelines  # noqa: E402
from mtransfer.ui import motion  # noqa: E402
from mtransfer.ui.jobs import Job, JobQueue  # noqa: E402
from mtransfer.ui.uploads import UploadLimits, accept_image, accept_mask, accept_video, new_run_folder  # noqa: E402

CANVAS_LONGEST = 512  # the motion is drawn on the image fitted into this many pixels
POLL_S = 0.3


def canvas_size(height: int, width: int, longest: int = CANVAS_LONGEST) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _picture(image: torch.Tensor | None) -> np.ndarray | None:
    return None if image is None else to_uint8(image)


def _error(exc: BaseException) -> gr.Error:
    """What the page shows: the one-line message of a problem the user can fix, else the exception's name."""
    text = str(exc) if isinstance(exc, MtransferError) else f"unexpected {type(exc).__name__}: {exc}"
    return gr.Error(text, duration=None)


def _file_link(path: Path, label: str) -> str:
    return f"[{label}](/gradio_api/file={path.resolve()})"


class Session:
    """What one browser tab has built: its run folder, the image on the motion canvas, the mask."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        original = load_image(folder / "source.png")
        self.original_size = tuple(original.shape[-2:])
        self.size = canvas_size(*self.original_size)
        self.image = load_image(folder / "source.png", size=self.size)
        self.mask: str | None = None
        self.arrow_start: tuple[float, float] | None = None
        self.edits = 0

    def flow(self, spec: str) -> torch.Tensor:
        if not spec.strip():
            return torch.zeros(2, *self.size)
        return motion.spec_flow(spec, *self.size, allowed_folder=self.folder)


def build_app(pipeline: str = "tiny", root: Path = Path("outputs/ui"), limits: UploadLimits = UploadLimits()) -> gr.Blocks:
    """The page; ``pipeline`` is the preset (name or .toml) selected at start, ``root`` the outputs folder."""
    root.mkdir(parents=True, exist_ok=True)
    queue = JobQueue()
    presets = list(dict.fromkeys([pipeline, *available_pipelines()]))

    def session_of(session: Session | None) -> Session:
        if session is None:
            raise gr.Error("upload an image first (Motion tab)", duration=None)
        return session

    # --- Motion tab -------------------------------------------------------------------------------------
    def render(session: Session, spec: str, note: str = "") -> tuple:
        flow = session.flow(spec)
        arrows, color, moved = motion.previews(session.image, flow)
        peak = float(flow.norm(dim=0).max())
        status = note or (f"motion up to {peak:.1f} px on the {session.size[1]}x{session.size[0]} canvas"
                          if spec.strip() else "no motion yet: pick one and press Add motion, or type a spec")
        return _picture(arrows), _picture(color), _picture(moved), status

    def on_image(upload):
        if upload is None:
            return gr.skip()
        try:
            folder = new_run_folder(root, "session")
            try:
                accept_image(upload, folder, limits)
                session = Session(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        except MtransferError as exc:
            raise _error(exc) from None
        return (session, "", *render(session, ""), *_slider_updates("translate", session.size), "translate", None, None)

    def on_mask(session, upload, spec):
        session = session_of(session)
        if upload is None:
            session.mask = None
            return render(session, spec, "mask removed")
        try:
            session.mask = str(accept_mask(upload, session.folder, session.size, limits))
        except MtransferError as exc:
            raise _error(exc) from None
        return render(session, spec, "mask set: 'keep to mask' motions and arrows move only the white part")

    def _slider_updates(kind: str, size: tuple[int, int], values: list[float] | None = None) -> list:
        specs = motion.sliders(kind, *size)
        updates = []
        for i in range(motion.SLIDER_COUNT):
            if i < len(specs):
                s = specs[i]
                value = s.value if values is None else values[i]
                updates.append(gr.update(label=s.name, minimum=s.minimum, maximum=s.maximum, step=s.step,
                                         value=value, visible=True))
            else:
                updates.append(gr.update(visible=False))
        return updates

    def on_kind(session, kind):
        session = session_of(session)
        return _slider_updates(kind, session.size)

    def controls_term(session: Session, kind, a, b, c, cx, cy, keep_to_mask):
        center = None if cx is None or cy is None else (cx, cy)
        mask = session.mask if keep_to_mask and session.mask else None
        return motion.controls_to_term(kind, [a, b, c], center, *session.size, mask=mask)

    def on_controls(session, spec, kind, a, b, c, cx, cy, keep_to_mask):
        """A control moved: edit the last term when it is of the same kind, else add one."""
        session = session_of(session)
        try:
            term = controls_term(session, kind, a, b, c, cx, cy, keep_to_mask)
            terms = spec_terms(spec, *session.size) if spec.strip() else []
            same = terms and terms[-1].name == kind and terms[-1].strength is None
            spec = (motion.replace_last if same else motion.append_term)(spec, term, *session.size)
            return (spec, *render(session, spec))
        except MtransferError as exc:
            raise _error(exc) from None

    def on_add(session, spec, kind, a, b, c, cx, cy, keep_to_mask):
        session = session_of(session)
        try:
            spec = motion.append_term(spec, controls_term(session, kind, a, b, c, cx, cy, keep_to_mask), *session.size)
            return (spec, *render(session, spec))
        except MtransferError as exc:
            raise _error(exc) from None

    def on_remove_last(session, spec):
        session = session_of(session)
        try:
            terms = spec_terms(spec, *session.size) if spec.strip() else []
            spec = motion.format_spec(terms[:-1]) if len(terms) > 1 else ""
            return (spec, *render(session, spec))
        except MtransferError as exc:
            raise _error(exc) from None

    def on_spec(session, spec):
        """Typed spec text: preview it and show its last term in the controls (when they can)."""
        session = session_of(session)
        try:
            shown = render(session, spec)
            terms = spec_terms(spec, *session.size) if spec.strip() else []
        except MtransferError as exc:
            raise _error(exc) from None
        try:
            kind, values, center = motion.term_to_controls(terms[-1], *session.size)
        except (IndexError, MtransferError):
            return (*shown, *[gr.skip()] * (motion.SLIDER_COUNT + 3))
        values = values + [0.0] * (motion.SLIDER_COUNT - len(values))
        cx, cy = center if center is not None else (gr.skip(), gr.skip())
        return (*shown, *_slider_updates(kind, session.size, values), kind, cx, cy)

    def on_click(session, spec, mode, kind, a, b, c, cx, cy, keep_to_mask, evt: gr.SelectData):
        session = session_of(session)
        x, y = (float(v) for v in evt.index)
        if mode.startswith("arrow"):
            if session.arrow_start is None:
                session.arrow_start = (x, y)
                return (spec, *render(session, spec, f"arrow starts at ({x:.0f}, {y:.0f}); click where it ends"),
                        gr.skip(), gr.skip())
            start, session.arrow_start = session.arrow_start, None
            spec = motion.append_term(spec, motion.arrow_to_term(start, (x, y), session.mask), *session.size)
            return (spec, *render(session, spec), gr.skip(), gr.skip())
        if not motion.has_center(kind):
            return (spec, *render(session, spec, f"{kind} has no centre"), gr.skip(), gr.skip())
        return (*on_controls(session, spec, kind, a, b, c, x, y, keep_to_mask), x, y)

    def on_download(session, spec, suffix):
        session = session_of(session)
        try:
            flow = session.flow(spec)
            return str(write_flow(session.folder / f"motion{suffix}", flow))
        except MtransferError as exc:
            raise _error(exc) from None

    # --- Edit tab --------------------------------------------------------------------------------------
    def edit_work(job: Job, session: Session, settings, spec: str, prompt: str, folder: Path):
        source_path = session.folder / "source.png"
        working = settings.model.working_size(session.original_size, source_path)
        source = load_image(source_path, size=working)
        target = resize_flow(session.flow(spec), working)
        job.begin("loading models", 0)
        guidance = settings.guidance
        warnings: list[str] = []
        with Editor.load(settings, source, warn=warnings.append) as editor:
            job.begin(guidance.source_noise, guidance.steps)
            state = editor.prepare(source, prompt or None, progress=job.tick)
            job.begin("guide", guidance.steps * guidance.recursions)
            result = editor.edit(state, target, progress=job.tick)
        record = {
            "command": "ui edit", "image": "source.png", "flow": spec, "drawn_at": list(session.size),
            "prompt": prompt or settings.model.prompt, "pipeline": settings.name, "size": list(working),
            "device": str(editor.device), "model": asdict(settings.model), "estimator": asdict(settings.estimator),
            "guidance": asdict(guidance), "seed": guidance.seed, "versions": versions(), "warnings": warnings,
        }
        job.begin("writing", 0)
        write_edit(folder, source, target, result, record)
        archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
        return result, Path(archive)

    def on_edit(session, spec, preset, prompt):
        session = session_of(session)
        if not spec.strip():
            raise gr.Error("no motion yet: build one in the Motion tab", duration=None)
        try:
            settings = load_settings(preset, [])
            check_models(settings.model, settings.estimator)
            session.flow(spec)  # a bad spec fails here, before the job starts
            session.edits += 1
            folder = session.folder / f"edit-{session.edits:02d}"
            job = queue.submit("edit", lambda job: edit_work(job, session, settings, spec, prompt, folder))
        except MtransferError as exc:
            raise _error(exc) from None
        while not job.finished.wait(POLL_S):
            yield {edit_status: job.status()}
        if job.error is not None:
            raise _error(job.error)
        result, archive = job.result
        error = (result.achieved_flow.float().cpu() - read_flow(folder / "target_flow.flo")).norm(dim=0)
        final = result.losses[-1] if result.losses else {}
        yield {
            edit_status: (f"done in {time.perf_counter() - job.started:.1f} s: flow error mean "
                          f"{float(error.mean()):.2f} px, max {float(error.max()):.2f} px"
                          + (f", final flow loss {final['flow']:.4g}" if "flow" in final else "")
                          + (" — DIVERGED: " + str(result.divergence) if result.diverged else "")),
            edit_result: str(folder / "edited.png"),
            edit_target: str(folder / "target_flow.png"),
            edit_achieved: str(folder / "achieved_flow.png"),
            edit_error: str(folder / "flow_error.png"),
            edit_loss: str(folder / "loss.png"),
            edit_zip: str(archive),
            edit_links: f"{_file_link(folder / 'report.html', 'report.html')} · run folder `{folder}`",
        }

    # --- Video tab -------------------------------------------------------------------------------------
    def video_work(job: Job, request: RunRequest):
        job.begin("flow-only preview" if request.flow_only else "running the clip", 0)
        log = io.StringIO()
        try:
            return run_pipeline(request, Console(file=log, width=120, force_terminal=False))
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None

    def on_video(session, video_state, clip_upload, preset, strength, fit, flow_only):
        session = session_of(session)
        try:
            if clip_upload is None and video_state is None:
                raise UsageError("upload a clip first")
            if video_state is None or video_state.get("upload") != clip_upload:
                clip = accept_video(clip_upload, session.folder, limits)
                video_state = {"upload": clip_upload, "clip": str(clip)}
            request = RunRequest(
                video=Path(video_state["clip"]), image=session.folder / "source.png", pipeline=preset,
                overrides=(f"align.strength={float(strength)}", f'align.fit="{fit}"'),
                out=session.folder / "video", flow_only=flow_only,
            )
            job = queue.submit("video", lambda job: video_work(job, request))
        except MtransferError as exc:
            raise _error(exc) from None
        frames_done = lambda: len(list((request.out / "frames").glob("*.png")))  # noqa: E731
        while not job.finished.wait(POLL_S):
            extra = "" if flow_only else f" · {frames_done()} frames edited"
            yield {video_status: job.status() + extra, video_state_box: video_state}
        if job.error is not None:
            raise _error(job.error)
        count = len(list((request.out / "flow_color").glob("*.png")))
        result = request.out / "result.mp4"
        yield {
            video_status: f"done in {time.perf_counter() - job.started:.1f} s: {count} frames"
                          + ("" if flow_only else ", result below"),
            video_state_box: video_state,
            frame_slider: gr.update(maximum=max(count - 1, 0), value=0, visible=True),
            frame_panel: _frame_panel(request.out, 0),
            video_result: str(result) if result.exists() and not flow_only else None,
            video_links: f"{_file_link(request.out / 'report.html', 'report.html')} · run folder `{request.out}`",
        }

    def on_frame(session, index):
        session = session_of(session)
        return _frame_panel(session.folder / "video", int(index))

    def on_cancel():
        return queue.cancel()

    # --- layout ----------------------------------------------------------------------------------------
    with gr.Blocks(title="mtransfer", analytics_enabled=False) as demo:
        session_state = gr.State(None)
        video_state_box = gr.State(None)
        gr.Markdown("## mtransfer: motion guidance — build a motion, see it, then edit an image or run a clip")
        with gr.Tab("Motion"):
            with gr.Row():
                with gr.Column(scale=3):
                    image_upload = gr.File(label="Image (png, jpg, ...)", elem_id="image-upload")
                    canvas = gr.Image(label="Image with the motion's arrows — click to place a centre or an arrow",
                                      interactive=False, elem_id="canvas", format="png")
                    click_mode = gr.Radio(["set the centre", "arrow: start → end (translate the masked region)"],
                                          value="set the centre", label="A click on the image does")
                    mask_upload = gr.File(label="Mask of what moves (white = moves; optional)", elem_id="mask-upload")
                with gr.Column(scale=2):
                    kind = gr.Dropdown(list(motion.CONTROL_KINDS), value="translate", label="Motion",
                                       elem_id="motion-kind")
                    sliders = [gr.Slider(label=f"p{i}", elem_id=f"slider-{i}") for i in range(motion.SLIDER_COUNT)]
                    with gr.Row():
                        cx = gr.Number(label="centre x (px)", elem_id="cx")
                        cy = gr.Number(label="centre y (px)", elem_id="cy")
                    keep_to_mask = gr.Checkbox(label="keep to mask", value=False)
                    with gr.Row():
                        add = gr.Button("Add motion", elem_id="add-motion", variant="primary")
                        remove = gr.Button("Remove last")
                    spec = gr.Textbox(label="Motion spec (the --flow language; edit, then Preview spec text)",
                                      elem_id="spec", lines=2)
                    apply = gr.Button("Preview spec text", elem_id="apply-spec")
                    status = gr.Markdown(elem_id="motion-status")
            with gr.Row():
                color = gr.Image(label="Flow colours", interactive=False, elem_id="flow-color", format="png")
                moved = gr.Image(label="Image moved by the flow (cheap forward warp)", interactive=False,
                                 elem_id="flow-warp", format="png")
            with gr.Row():
                save_flo = gr.Button("Download .flo")
                save_npy = gr.Button("Download .npy")
                flow_file = gr.File(label="Flow file", elem_id="flow-file")
        with gr.Tab("Edit"):
            with gr.Row():
                preset = gr.Dropdown(presets, value=pipeline, label="Preset", allow_custom_value=True,
                                     elem_id="edit-preset")
                prompt = gr.Textbox(label="Prompt (optional)")
            with gr.Row():
                run_edit = gr.Button("Run edit", variant="primary", elem_id="run-edit")
                cancel_edit = gr.Button("Cancel")
            edit_status = gr.Markdown(elem_id="edit-status")
            with gr.Row():
                edit_result = gr.Image(label="Edited image", interactive=False, height=240, elem_id="edit-result")
                edit_target = gr.Image(label="Target flow", interactive=False, height=240)
                edit_achieved = gr.Image(label="Achieved flow", interactive=False, height=240)
                edit_error = gr.Image(label="Flow error (achieved − target)", interactive=False, height=240)
            with gr.Row():
                edit_loss = gr.Image(label="Losses", interactive=False)
                with gr.Column():
                    edit_zip = gr.File(label="Run folder (zip)")
                    edit_links = gr.Markdown()
        with gr.Tab("Video"):
            with gr.Row():
                clip_upload = gr.File(label="Driving clip (mp4, gif, ...)", elem_id="clip-upload")
                with gr.Column():
                    video_preset = gr.Dropdown(presets, value=pipeline, label="Preset", allow_custom_value=True)
                    strength = gr.Slider(0, 3, value=1, step=0.05, label="align.strength (1 = as filmed)")
                    fit = gr.Dropdown(["cover", "contain", "stretch"], value="cover", label="align.fit")
            gr.Markdown("The clip's motion is laid onto the Motion tab's image.")
            with gr.Row():
                flow_only = gr.Button("Flow-only preview", elem_id="flow-only")
                run_clip = gr.Button("Run the clip (resumes)", variant="primary")
                cancel_video = gr.Button("Cancel")
            video_status = gr.Markdown(elem_id="video-status")
            frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame-slider")
            frame_panel = gr.Image(label="driving | target flow on the image | edit mask", interactive=False, height=260,
                                   elem_id="frame-panel")
            video_result = gr.Video(label="Result", interactive=False)
            video_links = gr.Markdown()

        previews_out = [canvas, color, moved, status]
        controls_in = [session_state, spec, kind, *sliders, cx, cy, keep_to_mask]
        image_upload.upload(on_image, [image_upload],
                            [session_state, spec, *previews_out, *sliders, kind, cx, cy])
        mask_upload.change(on_mask, [session_state, mask_upload, spec], previews_out)
        kind.input(on_kind, [session_state, kind], sliders)
        for control in [*sliders, keep_to_mask]:
            (control.release if isinstance(control, gr.Slider) else control.input)(
                on_controls, controls_in, [spec, *previews_out])
        for number in (cx, cy):
            number.submit(on_controls, controls_in, [spec, *previews_out])
        add.click(on_add, controls_in, [spec, *previews_out])
        remove.click(on_remove_last, [session_state, spec], [spec, *previews_out])
        spec_out = [*previews_out, *sliders, kind, cx, cy]
        spec.submit(on_spec, [session_state, spec], spec_out)
        apply.click(on_spec, [session_state, spec], spec_out)
        canvas.select(on_click, [session_state, spec, click_mode, *controls_in[2:]], [spec, *previews_out, cx, cy])
        save_flo.click(lambda s, t: on_download(s, t, ".flo"), [session_state, spec], flow_file)
        save_npy.click(lambda s, t: on_download(s, t, ".npy"), [session_state, spec], flow_file)
        edit_outputs = [edit_status, edit_result, edit_target, edit_achieved, edit_error, edit_loss, edit_zip, edit_links]
        run_edit.click(on_edit, [session_state, spec, preset, prompt], edit_outputs, concurrency_limit=1)
        cancel_edit.click(on_cancel, None, edit_status)
        video_outputs = [video_status, video_state_box, frame_slider, frame_panel, video_result, video_links]
        video_in = [session_state, video_state_box, clip_upload, video_preset, strength, fit]
        flow_only.click(lambda *a: (yield from on_video(*a, True)), video_in, video_outputs, concurrency_limit=1)
        run_clip.click(lambda *a: (yield from on_video(*a, False)), video_in, video_outputs, concurrency_limit=1)
        cancel_video.click(on_cancel, None, video_status)
        frame_slider.release(on_frame, [session_state, frame_slider], frame_panel)
    return demo


def _frame_panel(folder: Path, index: int) -> np.ndarray | None:
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
