"""The Edit tab: a motion-guided edit of the Motion tab's image towards its motion, run as a job with
progress, then the result against the target (flows side by side, flow error, losses, the run folder)."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from mtransfer.app import Editor, check_models, load_settings, versions
from mtransfer.files import load_image
from mtransfer.flows import read_flow, resize_flow
from mtransfer.guidance.outputs import write_edit
from mtransfer.ui.jobs import Job
from mtransfer.ui.session import POLL_S, Session, Shared, file_link, page_error, session_of, shows_problems


def edit_work(job: Job, session: Session, settings, spec: str, prompt: str, folder: Path):
    """The job: load the models, edit the session's image towards ``spec``, write the run folder and its zip."""
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


def build(shared: Shared, spec: gr.Textbox) -> None:
    """Lay out the Edit tab in the current context; ``spec`` is the Motion tab's spec text box."""

    @shows_problems
    def on_edit(session, spec, preset, prompt):
        session = session_of(session)
        if not spec.strip():
            raise gr.Error("no motion yet: build one in the Motion tab", duration=None)
        settings = load_settings(preset, [])
        check_models(settings.model, settings.estimator)
        session.flow(spec)  # a bad spec fails here, before the job starts
        session.edits += 1
        folder = session.folder / f"edit-{session.edits:02d}"
        job = shared.queue.submit("edit", lambda job: edit_work(job, session, settings, spec, prompt, folder))
        while not job.finished.wait(POLL_S):
            yield {edit_status: job.status()}
        if job.error is not None:
            raise page_error(job.error)
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
            edit_links: f"{file_link(folder / 'report.html', 'report.html')} · run folder `{folder}`",
        }

    with gr.Row():
        preset = gr.Dropdown(shared.presets, value=shared.pipeline, label="Preset", allow_custom_value=True,
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

    edit_outputs = [edit_status, edit_result, edit_target, edit_achieved, edit_error, edit_loss, edit_zip, edit_links]
    run_edit.click(on_edit, [shared.session, spec, preset, prompt], edit_outputs, concurrency_limit=1)
    cancel_edit.click(shared.queue.cancel, None, edit_status)
