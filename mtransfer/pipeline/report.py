"""``report.html``: one self-contained page per run, in the spirit of the paper's project page.

For every frame a row shows the driving frame, the target (aligned) flow and the edit; hovering the edit
swaps it for the source image or the target flow (a radio button chooses which). Plain HTML and CSS with
a three-line script, relative paths only, so the page opens from disk and survives moving the folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtransfer.files import write_bytes


@dataclass(frozen=True)
class ReportFrame:
    """One row of the report; paths are relative to the run folder, ``result`` is None for --flow-only."""

    index: int
    driving: str
    flow_color: str
    edit_mask: str
    result: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.muted { color: #777; }
.media { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.media figure, .row figure { margin: 0; }
figcaption { font-size: .85em; color: #555; text-align: center; }
img, video { display: block; max-width: 100%; image-rendering: auto; }
.row { display: grid; grid-template-columns: 5em repeat(3, 1fr); gap: .6em; align-items: center;
       border-top: 1px solid #eee; padding: .5em 0; }
.row .label { font-weight: 600; } .row .label span { display: block; font-weight: 400; font-size: .8em; color: #777; }
.swap { position: relative; cursor: crosshair; }
.swap img.alt { position: absolute; inset: 0; width: 100%; height: 100%; opacity: 0; }
body[data-hover=source] .swap:hover img.source, body[data-hover=flow] .swap:hover img.flow { opacity: 1; }
table { border-collapse: collapse; font-size: .9em; } td { padding: .15em .8em .15em 0; vertical-align: top; }
td:first-child { color: #555; white-space: nowrap; } code { font-size: .95em; }
"""

SCRIPT = """
for (const radio of document.querySelectorAll('input[name=hover]'))
  radio.addEventListener('change', () => { document.body.dataset.hover = radio.value; });
"""


def _img(src: str, alt: str, css: str = "") -> str:
    css_attr = f' class="{css}"' if css else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{css_attr} loading="lazy">'


def _figure(inner: str, caption: str) -> str:
    return f"<figure>{inner}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _row(frame: ReportFrame, source: str) -> str:
    label = f'<div class="label">frame {frame.index}'
    label += "".join(f"<span>{html.escape(k)}: {html.escape(v)}</span>" for k, v in frame.notes.items()) + "</div>"
    driving = _figure(_img(frame.driving, f"driving frame {frame.index}"), "driving frame")
    flow = _figure(_img(frame.flow_color, f"target flow {frame.index}"), "target flow")
    if frame.result is None:
        last = _figure(_img(frame.edit_mask, f"edit mask {frame.index}"), "edit mask")
    else:
        swap = (
            '<div class="swap">'
            + _img(frame.result, f"edit {frame.index}")
            + _img(source, "source image", "alt source")
            + _img(frame.flow_color, "target flow", "alt flow")
            + "</div>"
        )
        last = _figure(swap, "motion-edited (hover)")
    return f'<div class="row">{label}{driving}{flow}{last}</div>'


def _settings_table(config: dict[str, Any]) -> str:
    rows = []
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                rows.append((f"{section}.{key}", json.dumps(value)))
        else:
            rows.append((section, json.dumps(values)))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_report(
    title: str,
    summary: list[str],
    source: str,
    frames: list[ReportFrame],
    media: list[tuple[str, str]],
    config: dict[str, Any],
) -> str:
    """The page as a string. ``media`` is ``(relative path, caption)`` of the animations shown on top."""
    top = []
    for path, caption in media:
        if path.endswith(".mp4"):
            inner = f'<video src="{html.escape(path)}" controls loop muted autoplay playsinline></video>'
        else:
            inner = _img(path, caption)
        top.append(_figure(inner, caption))
    top.append(_figure(_img(source, "source image"), "source image"))
    has_results = any(frame.result is not None for frame in frames)
    hover = (
        '<p>Hover an edit to see <label><input type="radio" name="hover" value="source" checked> the source '
        'image</label> <label><input type="radio" name="hover" value="flow"> the target flow</label></p>'
        if has_results else '<p class="muted">Flow only: no edits were made (--flow-only).</p>'
    )
    rows = "".join(_row(frame, source) for frame in frames)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f'<body data-hover="source"><h1>{html.escape(title)}</h1>'
        + "".join(f'<p class="muted">{html.escape(line)}</p>' for line in summary)
        + f'<div class="media">{"".join(top)}</div><h2>Frames</h2>{hover}{rows}'
        + f"<h2>Settings</h2>{_settings_table(config)}<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(path: Path, *args: Any, **kwargs: Any) -> Path:
    """``render_report`` written atomically to ``path``."""
    return write_bytes(path, render_report(*args, **kwargs).encode("utf-8", errors="backslashreplace"))
