"""What every tab of the page shares: the state one browser tab builds (``Session``), the app-wide pieces
(``Shared``), and how a handler's problems reach the page (``shows_problems``).

Kept apart from ``app`` so that the tab modules can import it while ``app`` imports them.
"""

from __future__ import annotations

import functools
import html
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch

from mtransfer.app.editor import EditorCache
from mtransfer.app.preset_list import describe_preset
from mtransfer.errors import MtransferError, UsageError
from mtransfer.files import load_image, to_uint8
from mtransfer.flows import color_wheel, read_mask, resize_flow
from mtransfer.ui import motion
from mtransfer.ui.jobs import Job, JobQueue, say
from mtransfer.ui.uploads import UploadLimits

CANVAS_LONGEST = 512  # the motion is drawn on the image fitted into this many pixels
POLL_S = 0.3  # how often a running job's status is sent to the page
RESULT_PX = 360  # the height of a result picture and its source
FLOW_PX = 200  # the height of a flow picture and of the flow-colour legend
QUIET = {"show_progress": "hidden"}
"""For every event: a failed one shows its one message, not Gradio's "Error" over each output (progress
is the page's own status line)."""
SHOWN = ["mtransfer-shown"]  # the class of pictures that fill their frame (``app.CSS``)


def canvas_size(height: int, width: int, longest: int = CANVAS_LONGEST) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class Session:
    """What one browser tab has built: its run folder, the image on the motion canvas, the mask (its file,
    named in spec terms, and its picture, shown on the canvas; ``mask_painted``: it came from the brush).

    Motion specs are in pixels of the uploaded image (``original_size``), as ``motion --onto``, ``edit``
    and ``run`` read them, so a spec copied from the page moves the same content the same amount there;
    the canvas (``size``, at most ``CANVAS_LONGEST`` px) shows them scaled. ``name`` is the upload's file
    name, for titles only (the file is stored as ``source.png``).
    """

    def __init__(self, folder: Path, name: str = "the image") -> None:
        self.folder = folder
        self.name = name
        original = load_image(folder / "source.png")
        self.original_size = tuple(original.shape[-2:])
        self.size = canvas_size(*self.original_size)
        self.image = load_image(folder / "source.png", size=self.size)
        self.mask: str | None = None
        self.mask_image: torch.Tensor | None = None
        self.mask_painted = False
        self.arrow_start: tuple[float, float] | None = None
        self.edits = 0
        self.clip_runs: dict[tuple, Path] = {}  # (clip, preset, overrides) → its run folder

    @property
    def scale(self) -> float:
        """Image pixels per canvas pixel."""
        return self.original_size[1] / self.size[1]

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """A point clicked on the canvas (x, y canvas pixels) in pixels of the image."""
        return x * self.original_size[1] / self.size[1], y * self.original_size[0] / self.size[0]

    def set_mask(self, path: Path | None, painted: bool = False) -> None:
        self.mask = None if path is None else str(path)
        self.mask_image = None if path is None else read_mask(path, size=self.size)
        self.mask_painted = painted and path is not None

    def image_flow(self, spec: str) -> torch.Tensor:
        """The spec's flow on the uploaded image's grid, in its pixels."""
        if not spec.strip():
            return torch.zeros(2, *self.original_size)
        return motion.spec_flow(spec, *self.original_size, allowed_folder=self.folder)

    def flow(self, spec: str) -> torch.Tensor:
        """The spec's flow on the canvas, in canvas pixels (what the previews draw)."""
        if not spec.strip():
            return torch.zeros(2, *self.size)
        flow = self.image_flow(spec)
        return flow if tuple(flow.shape[-2:]) == self.size else resize_flow(flow, self.size)


@dataclass
class Shared:
    """The app-wide pieces every tab uses: the outputs folder, upload limits, the one job queue, the preset
    chosen at start and the offered ones, the page's per-browser-tab ``Session`` (a ``gr.State``), and the
    models kept loaded between jobs (``models``)."""

    root: Path
    limits: UploadLimits
    queue: JobQueue
    pipeline: str
    presets: list[str]
    session: gr.State
    models: EditorCache = field(default_factory=EditorCache)


def preset_choice(shared: Shared, elem_id: str) -> gr.Dropdown:
    """The preset dropdown (a name, or a typed .toml path) with the chosen preset's description under it."""
    dropdown = gr.Dropdown(shared.presets, value=shared.pipeline, label="Preset", allow_custom_value=True,
                           info=preset_words(shared.pipeline), elem_id=elem_id)
    dropdown.change(lambda name: gr.update(info=preset_words(name)), dropdown, dropdown, **QUIET)
    return dropdown


def preset_words(name: str) -> str:
    """A preset's description (its file's ``description``), or why there is none."""
    try:
        return describe_preset(name).description or "(no description)"
    except MtransferError as exc:
        return str(exc)


def log_problem(exc: BaseException) -> None:
    """One line on the server's terminal for a problem the page shows (no traceback: the user can fix it)."""
    say(str(exc) if isinstance(exc, MtransferError) else f"unexpected {type(exc).__name__}: {exc}")


def problem_html(exc: BaseException) -> str:
    """A problem as one message in the page (a status line), instead of Gradio's error on every output."""
    return f'<strong style="color: #b91c1c">problem:</strong> {html.escape(str(exc))}'


def page_error(exc: BaseException) -> gr.Error:
    """What the page shows: the one-line message of a problem the user can fix, else the exception's name;
    only the latter's traceback is printed on the server."""
    log_problem(exc)
    user = isinstance(exc, MtransferError)
    text = str(exc) if user else f"unexpected {type(exc).__name__}: {exc}"
    return gr.Error(text, duration=None, print_exception=not user)


def shows_problems(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with its ``MtransferError`` shown in the page as a message instead of a stack trace.

    The wrapper keeps the handler's signature and kind (``functools.wraps``; a generator stays a
    generator), because Gradio reads both: it injects ``gr.SelectData``/``gr.Progress`` parameters by
    annotation and default, and streams the updates of generator handlers.
    """
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def streaming(*args: Any, **kwargs: Any):
            try:
                return (yield from handler(*args, **kwargs))
            except MtransferError as exc:
                raise page_error(exc) from None

        return streaming

    @functools.wraps(handler)
    def plain(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except MtransferError as exc:
            raise page_error(exc) from None

    return plain


def session_of(session: Session | None) -> Session:
    if session is None:
        raise UsageError("upload an image first (Motion tab)")
    return session


def legend(elem_id: str) -> gr.Image:
    """The flow-colour legend beside the flow pictures, in the current layout context."""
    with gr.Column(scale=0, min_width=FLOW_PX):
        shown = gr.Image(to_uint8(color_wheel(FLOW_PX)), label="Flow colours", interactive=False, height=FLOW_PX,
                         elem_id=elem_id, format="png", show_label=True)
        gr.Markdown("hue: the direction of motion; strength: its speed; white: still", elem_id=f"{elem_id}-words")
    return shown


def picture(image: torch.Tensor | None) -> np.ndarray | None:
    return None if image is None else to_uint8(image)


def file_link(path: Path, label: str) -> str:
    return f"[{label}](/gradio_api/file={path.resolve()})"


def job_html(job: Job) -> str:
    """A running job as the page shows it: a progress bar over its current phase and its progress in words."""
    bar = f'<progress value="{job.done}" max="{job.total}"></progress>' if job.total else "<progress></progress>"
    return f"{bar} {html.escape(job.status())}" + warning_html(job)


def warning_html(job: Job) -> str:
    """The job's warning, if any, on a line of its own."""
    return f'<br><strong style="color: #b45309">warning:</strong> {html.escape(job.warning)}' if job.warning else ""
