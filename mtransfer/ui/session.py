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
from mtransfer.errors import MtransferError
from mtransfer.files import load_image, to_uint8
from mtransfer.flows import read_mask
from mtransfer.ui import motion
from mtransfer.ui.jobs import Job, JobQueue
from mtransfer.ui.uploads import UploadLimits

CANVAS_LONGEST = 512  # the motion is drawn on the image fitted into this many pixels
POLL_S = 0.3  # how often a running job's status is sent to the page


def canvas_size(height: int, width: int, longest: int = CANVAS_LONGEST) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class Session:
    """What one browser tab has built: its run folder, the image on the motion canvas, the mask (its file,
    named in spec terms, and its picture, shown on the canvas; ``mask_painted``: it came from the brush)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        original = load_image(folder / "source.png")
        self.original_size = tuple(original.shape[-2:])
        self.size = canvas_size(*self.original_size)
        self.image = load_image(folder / "source.png", size=self.size)
        self.mask: str | None = None
        self.mask_image: torch.Tensor | None = None
        self.mask_painted = False
        self.arrow_start: tuple[float, float] | None = None
        self.edits = 0

    def set_mask(self, path: Path | None, painted: bool = False) -> None:
        self.mask = None if path is None else str(path)
        self.mask_image = None if path is None else read_mask(path, size=self.size)
        self.mask_painted = painted and path is not None

    def flow(self, spec: str) -> torch.Tensor:
        if not spec.strip():
            return torch.zeros(2, *self.size)
        return motion.spec_flow(spec, *self.size, allowed_folder=self.folder)


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


def page_error(exc: BaseException) -> gr.Error:
    """What the page shows: the one-line message of a problem the user can fix, else the exception's name."""
    text = str(exc) if isinstance(exc, MtransferError) else f"unexpected {type(exc).__name__}: {exc}"
    return gr.Error(text, duration=None)


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
        raise gr.Error("upload an image first (Motion tab)", duration=None)
    return session


def picture(image: torch.Tensor | None) -> np.ndarray | None:
    return None if image is None else to_uint8(image)


def file_link(path: Path, label: str) -> str:
    return f"[{label}](/gradio_api/file={path.resolve()})"


def job_html(job: Job) -> str:
    """A running job as the page shows it: a progress bar over its current phase and its status line."""
    bar = f'<progress value="{job.done}" max="{job.total}"></progress>' if job.total else "<progress></progress>"
    return f"{bar} {html.escape(job.status())}"
