"""The Motion tab: upload an image and a mask, build the motion with controls, clicks or spec text, see it
previewed live, download it as a flow file. The logic is in ``mtransfer.ui.motion``; this is the wiring."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from mtransfer.errors import MtransferError
from mtransfer.flows import spec_terms, write_flow
from mtransfer.ui import motion
from mtransfer.ui.session import (
    CANVAS_LONGEST, QUIET, Session, Shared, legend, log_problem, picture, problem_html, session_of, shows_problems,
)
from mtransfer.ui.uploads import accept_image, accept_mask, accept_painted_mask, new_run_folder


@dataclass
class MotionTab:
    """What the other tabs read from this one: the spec text box (the motion being built)."""

    spec: gr.Textbox


# The drag arrow: Gradio has no drag event on images, so this script (run once by the hidden ``gr.HTML``
# component that carries the result) follows a press on the canvas picture to its release, draws the
# arrow meanwhile, and sends "x0 y0 x1 y1" in pixels of the picture (object-fit: contain undone) as the
# component's value with a change event. A press and release on the same spot is left to be a click.
DRAG_JS = r"""
window.mtransferDrag = {props, trigger};
if (window.mtransferDragReady) return;
window.mtransferDragReady = true;
const MIN_PX = 4;  // shorter moves on the screen are clicks
let start = null, line = null;
function picture() { return document.querySelector('#canvas img'); }
function toPicture(img, clientX, clientY) {
  const r = img.getBoundingClientRect();
  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
  const left = r.left + (r.width - img.naturalWidth * s) / 2, top = r.top + (r.height - img.naturalHeight * s) / 2;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi - 1);
  return [clamp((clientX - left) / s, img.naturalWidth), clamp((clientY - top) / s, img.naturalHeight)];
}
function drawLine(x0, y0, x1, y1) {
  if (!line) {
    line = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    line.setAttribute('style', 'position:fixed;left:0;top:0;width:100vw;height:100vh;pointer-events:none;z-index:1000');
    line.innerHTML = '<defs><marker id="mtransfer-head" markerWidth="8" markerHeight="8" refX="6" refY="4" orient="auto">' +
      '<path d="M0,0 L8,4 L0,8 z" fill="#ff2a1a"/></marker></defs>' +
      '<line stroke="#ff2a1a" stroke-width="3" marker-end="url(#mtransfer-head)"/>';
    document.body.appendChild(line);
  }
  const l = line.querySelector('line');
  l.setAttribute('x1', x0); l.setAttribute('y1', y0); l.setAttribute('x2', x1); l.setAttribute('y2', y1);
}
function swallowClick(event) { event.stopImmediatePropagation(); event.preventDefault(); }
document.addEventListener('dragstart', e => { if (e.target === picture()) e.preventDefault(); }, true);
document.addEventListener('pointerdown', e => {
  const img = picture();
  if (e.button !== 0 || !img || e.target !== img || !img.naturalWidth) return;
  start = {x: e.clientX, y: e.clientY, at: toPicture(img, e.clientX, e.clientY)};
}, true);
document.addEventListener('pointermove', e => {
  if (start && Math.hypot(e.clientX - start.x, e.clientY - start.y) >= MIN_PX) drawLine(start.x, start.y, e.clientX, e.clientY);
}, true);
document.addEventListener('pointerup', e => {
  if (!start) return;
  const begin = start, img = picture();
  start = null;
  if (line) { line.remove(); line = null; }
  if (!img || Math.hypot(e.clientX - begin.x, e.clientY - begin.y) < MIN_PX) return;
  const end = toPicture(img, e.clientX, e.clientY);
  window.addEventListener('click', swallowClick, true);  // the click ending a drag is not a click on the image
  setTimeout(() => window.removeEventListener('click', swallowClick, true), 300);
  const {props, trigger} = window.mtransferDrag;
  props.value = [...begin.at, ...end].map(v => v.toFixed(1)).join(' ');
  trigger('change');
}, true);
"""


def render(session: Session, spec: str, note: str = "") -> tuple:
    """Canvas with arrows (and the mask), flow colours, the moved image and a status line for ``spec``."""
    flow = session.flow(spec)
    arrows, color, moved = motion.previews(session.image, flow, session.mask_image)
    peak = float(flow.norm(dim=0).max()) * session.scale
    height, width = session.original_size
    status = note or (f"motion up to {peak:.1f} px of the {width}x{height} image"
                      if spec.strip() else "no motion yet: pick one and press Add motion, drag on the image, "
                                           "or type a spec")
    return picture(arrows), picture(color), picture(moved), status


WORDS = {
    "dx": "shift to the right (px of the image)", "dy": "shift down (px of the image)",
    "degrees": "angle (degrees, counter-clockwise)", "factor": "factor (1 = unchanged)",
    "angle": "direction of the stretch (degrees)", "shx": "horizontal shear", "shy": "vertical shear",
    "radius": "radius (px of the image)", "strength": "strength (below 0 pinches, above 0 bulges)",
    "amplitude": "amplitude (px of the image)", "wavelength": "wavelength (px of the image)", "seed": "random seed",
}
"""The sliders' labels in words; the spec language's name of each is written under it."""


def slider_words(name: str) -> str:
    """``dx`` → "shift to the right (px of the image)"; a homography's ``top-left dx`` → "top-left corner: ..."."""
    corner, _, axis = name.rpartition(" ")
    return f"{corner} corner: {WORDS[axis]}" if corner else WORDS.get(name, name)


def slider_updates(kind: str, size: tuple[int, int], values: list[float] | None = None) -> list:
    """Updates of the ``SLIDER_COUNT`` sliders for ``kind`` (its start values unless ``values``)."""
    specs = motion.sliders(kind, *size)
    updates = []
    for i in range(motion.SLIDER_COUNT):
        if i < len(specs):
            s = specs[i]
            value = s.value if values is None else values[i]
            updates.append(gr.update(label=slider_words(s.name), info=s.name, minimum=s.minimum,
                                     maximum=s.maximum, step=s.step, value=value, visible=True))
        else:
            updates.append(gr.update(visible=False))
    return updates


def painter_value(session: Session) -> dict:
    """The mask painter showing the session's image with nothing painted yet."""
    return {"background": picture(session.image), "layers": [], "composite": None}


def build(shared: Shared) -> MotionTab:
    """Lay out the Motion tab's components in the current context and wire their events.

    The sliders come last among a handler's inputs (``*values``), as many as the motion with the most.
    """

    image_outputs = 10 + motion.SLIDER_COUNT  # what on_image updates besides its note

    def on_image(upload):
        """An uploaded image: a new session on it, or one message under the upload (nothing else changes)."""
        if upload is None:
            return (*[gr.skip()] * image_outputs, "")
        folder = new_run_folder(shared.root, "session")
        try:
            accept_image(upload, folder, shared.limits)
            session = Session(folder, Path(upload).name)
        except MtransferError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            log_problem(exc)
            return (*[gr.skip()] * image_outputs, problem_html(exc))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return (session, "", *render(session, ""), *slider_updates("translate", session.original_size), "translate",
                None, None, painter_value(session), "")

    def on_mask(session, upload, spec):
        """An uploaded mask (or its removal); a bad one is one message under the upload."""
        try:
            session = session_of(session)
            if upload is None:
                session.set_mask(None)
                return (*render(session, spec, "mask removed"), "")
            session.set_mask(accept_mask(upload, session.folder, session.original_size, shared.limits))
        except MtransferError as exc:
            log_problem(exc)
            return (*[gr.skip()] * 4, problem_html(exc))
        return (*render(session, spec, "mask set: 'keep to mask' motions and arrows move only the white part"), "")

    @shows_problems
    def on_paint(session, painted, spec):
        """Strokes painted over the image: they are the mask (as if uploaded); none left removes it."""
        if session is None or painted is None:
            return (gr.skip(),) * 4
        layers = [layer for layer in painted.get("layers") or [] if layer is not None]
        path = accept_painted_mask(layers[0], session.folder, session.original_size) if layers else None
        if path is None:
            if not session.mask_painted:
                return (gr.skip(),) * 4
            session.set_mask(None)
            return render(session, spec, "painted mask removed")
        session.set_mask(path, painted=True)
        return render(session, spec, "mask painted: 'keep to mask' motions and arrows move only the painted part")

    @shows_problems
    def on_kind(session, kind):
        session = session_of(session)
        return slider_updates(kind, session.original_size)

    def controls_term(session: Session, kind, cx, cy, keep_to_mask, values):
        center = None if cx is None or cy is None else (cx, cy)
        mask = session.mask if keep_to_mask and session.mask else None
        return motion.controls_to_term(kind, list(values), center, *session.original_size, mask=mask)

    @shows_problems
    def on_controls(session, spec, kind, cx, cy, keep_to_mask, *values):
        """A control moved: edit the last term when it is of the same kind, else add one."""
        session = session_of(session)
        term = controls_term(session, kind, cx, cy, keep_to_mask, values)
        terms = spec_terms(spec, *session.original_size) if spec.strip() else []
        same = terms and terms[-1].name == kind and terms[-1].strength is None
        spec = (motion.replace_last if same else motion.append_term)(spec, term, *session.original_size)
        return (spec, *render(session, spec))

    @shows_problems
    def on_add(session, spec, kind, cx, cy, keep_to_mask, *values):
        session = session_of(session)
        term = controls_term(session, kind, cx, cy, keep_to_mask, values)
        spec = motion.append_term(spec, term, *session.original_size)
        return (spec, *render(session, spec))

    @shows_problems
    def on_remove_last(session, spec):
        session = session_of(session)
        terms = spec_terms(spec, *session.original_size) if spec.strip() else []
        spec = motion.format_spec(terms[:-1]) if len(terms) > 1 else ""
        return (spec, *render(session, spec))

    @shows_problems
    def on_spec(session, spec):
        """Typed spec text: preview it and show its last term in the controls (when they can)."""
        session = session_of(session)
        shown = render(session, spec)
        terms = spec_terms(spec, *session.original_size) if spec.strip() else []
        try:
            kind, values, center = motion.term_to_controls(terms[-1], *session.original_size)
        except (IndexError, MtransferError):
            return (*shown, *[gr.skip()] * (motion.SLIDER_COUNT + 3))
        values = values + [0.0] * (motion.SLIDER_COUNT - len(values))
        cx, cy = center if center is not None else (gr.skip(), gr.skip())
        return (*shown, *slider_updates(kind, session.original_size, values), kind, cx, cy)

    def add_arrow(session: Session, spec: str, start, end) -> tuple:
        spec = motion.append_term(spec, motion.arrow_to_term(start, end, session.mask), *session.original_size)
        return (spec, *render(session, spec))

    @shows_problems
    def on_drag(session, spec, dragged):
        session = session_of(session)
        start, end = motion.parse_arrow(dragged)
        return add_arrow(session, spec, session.to_image(*start), session.to_image(*end))

    @shows_problems
    def on_click(session, spec, mode, kind, cx, cy, keep_to_mask, evt: gr.SelectData, *values):
        session = session_of(session)
        x, y = session.to_image(*(float(v) for v in evt.index))
        if mode.startswith("arrow"):
            if session.arrow_start is None:
                session.arrow_start = (x, y)
                return (spec, *render(session, spec, f"arrow starts at ({x:.0f}, {y:.0f}); click where it ends"),
                        gr.skip(), gr.skip())
            start, session.arrow_start = session.arrow_start, None
            return (*add_arrow(session, spec, start, (x, y)), gr.skip(), gr.skip())
        if not motion.has_center(kind):
            return (spec, *render(session, spec, f"{kind} has no centre"), gr.skip(), gr.skip())
        return (*on_controls(session, spec, kind, x, y, keep_to_mask, *values), x, y)

    @shows_problems
    def on_download(session, spec, suffix):
        session = session_of(session)
        return str(write_flow(session.folder / f"motion{suffix}", session.flow(spec)))

    # --- layout ----------------------------------------------------------------------------------------
    tint = ", ".join(str(round(255 * c)) for c in motion.MASK_TINT)  # the brush paints in the canvas's mask colour
    with gr.Row():
        with gr.Column(scale=3):
            image_upload = gr.File(label="Image (png, jpg, ...)", elem_id="image-upload")
            image_note = gr.HTML(elem_id="image-note")
            canvas = gr.Image(label="The motion's arrows over the image (mask in blue) — drag an arrow to translate "
                                    "the masked region, click to place a centre", interactive=False,
                              elem_id="canvas", format="png")
            dragged = gr.HTML("", html_template="", js_on_load=DRAG_JS, elem_id="canvas-drag", visible="hidden")
            click_mode = gr.Radio(["set the centre", "arrow: click start, then end (translate the masked region)"],
                                  value="set the centre", label="A click on the image does")
            with gr.Accordion("Mask of what moves (optional): paint it, or upload one (white = moves)", open=True):
                painter = gr.ImageEditor(
                    label="Paint what moves", elem_id="mask-painter", type="numpy", image_mode="RGBA",
                    sources=(), transforms=(), layers=False, format="png", height=360,
                    brush=gr.Brush(colors=[f"rgba({tint}, 0.6)"], color_mode="fixed", default_size=24),
                    eraser=gr.Eraser(default_size=24),
                )
                mask_upload = gr.File(label="or upload a mask", elem_id="mask-upload")
                mask_note = gr.HTML(elem_id="mask-note")
        with gr.Column(scale=2):
            kind = gr.Dropdown(list(motion.CONTROL_KINDS), value="translate", label="Motion", elem_id="motion-kind")
            start = motion.sliders("translate", CANVAS_LONGEST, CANVAS_LONGEST)  # until an image sets the ranges
            sliders = [gr.Slider(s.minimum, s.maximum, value=s.value, step=s.step, label=slider_words(s.name),
                                 info=s.name, elem_id=f"slider-{i}") for i, s in enumerate(start)]
            sliders += [gr.Slider(label=f"p{i}", elem_id=f"slider-{i}", visible=False)
                        for i in range(len(start), motion.SLIDER_COUNT)]
            with gr.Row():
                cx = gr.Number(label="centre x (px of the image)", info="cx", elem_id="cx")
                cy = gr.Number(label="centre y (px of the image)", info="cy", elem_id="cy")
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
        legend(elem_id="motion-legend")
    with gr.Row():
        save_flo = gr.Button("Download .flo", elem_id="save-flo")
        save_npy = gr.Button("Download .npy", elem_id="save-npy")
        flow_file = gr.File(label="Flow file", elem_id="flow-file")

    # --- events ----------------------------------------------------------------------------------------
    session_state = shared.session
    previews_out = [canvas, color, moved, status]
    controls_in = [session_state, spec, kind, cx, cy, keep_to_mask, *sliders]
    image_upload.upload(on_image, [image_upload],
                        [session_state, spec, *previews_out, *sliders, kind, cx, cy, painter, image_note], **QUIET)
    mask_upload.change(on_mask, [session_state, mask_upload, spec], [*previews_out, mask_note], **QUIET)
    painter.change(on_paint, [session_state, painter, spec], previews_out, **QUIET)
    kind.input(on_kind, [session_state, kind], sliders, **QUIET)
    for control in [*sliders, keep_to_mask]:  # a user's change only (a drag, a number typed): always the last one
        control.input(on_controls, controls_in, [spec, *previews_out], trigger_mode="always_last", **QUIET)
    for number in (cx, cy):
        number.submit(on_controls, controls_in, [spec, *previews_out], **QUIET)
    add.click(on_add, controls_in, [spec, *previews_out], **QUIET)
    remove.click(on_remove_last, [session_state, spec], [spec, *previews_out], **QUIET)
    spec_out = [*previews_out, *sliders, kind, cx, cy]
    spec.submit(on_spec, [session_state, spec], spec_out, **QUIET)
    apply.click(on_spec, [session_state, spec], spec_out, **QUIET)
    dragged.change(on_drag, [session_state, spec, dragged], [spec, *previews_out], **QUIET)
    canvas.select(on_click, [session_state, spec, click_mode, *controls_in[2:]], [spec, *previews_out, cx, cy], **QUIET)
    save_flo.click(lambda s, t: on_download(s, t, ".flo"), [session_state, spec], flow_file, **QUIET)
    save_npy.click(lambda s, t: on_download(s, t, ".npy"), [session_state, spec], flow_file, **QUIET)
    return MotionTab(spec=spec)
