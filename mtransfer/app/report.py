"""``report.html``: one self-contained page to judge a run (or a single edit) in a browser.

On top, a viewer over the frames (slider, arrow keys, play button) shows the driving frame (the source for
a single edit), the target flow, the result and the achieved flow side by side, enlarged with crisp pixels
when the run is small. The result flips to the source (hover it, or the toggle) and the achieved flow to
an error heat map ``|achieved − target|`` in px with its colour bar. Flow pictures have a colour-wheel
legend with the px scale, and a frame without motion says so instead of showing a white box. Below come
the per-frame numbers (whatever the caller gives: time, flow error, energies, metrics) as small plots over
the frames (a figure alone, or with a reference figure dashed beside it, ``Plot``) and a sortable table, the
output files, and the settings folded away.

Plain HTML, CSS (``report_assets/report.css``) and a short script (``report_assets/report.js``), package
data embedded in the page; pictures are relative paths (or inline data), so the page opens from
disk with no server and no network, and survives moving the folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from mtransfer.files import json_number, to_uint8, write_bytes
from mtransfer.flows.viz import HEAT_STOPS, color_wheel




@dataclass(frozen=True)
class ReportFrame:
    """One frame of the viewer. Paths are relative to the report's folder.

    ``driving`` is None for a single edit (the source takes its place), ``result`` None for --flow-only
    (the edit mask takes its place), ``achieved_flow``/``flow_error`` None where no edit was made.
    ``figures`` are the frame's numbers, keyed by name (``flow_error_px`` reads "flow error (px)").
    """

    index: int
    target_flow: str
    motion_px: float
    still: bool = False
    driving: str | None = None
    result: str | None = None
    achieved_flow: str | None = None
    flow_error: str | None = None
    edit_mask: str | None = None
    status: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    plan: str = ""  # the frame's place in a clip's frame plan: "key", "warm from 3", or "" (no plan, still)


@dataclass(frozen=True)
class Plot:
    """A plot of the figure ``key`` over the frames, with the figure ``reference`` (if any) drawn dashed on
    the same axis as a yardstick; ``caption`` says what both are."""

    key: str
    caption: str
    reference: str | None = None


@dataclass(frozen=True)
class Report:
    """Everything the page shows. ``flow_scale_px`` is the speed drawn fully saturated in the flow
    pictures (the legend's rim), ``error_scale_px`` the top of the error map's colour bar."""

    title: str
    summary: list[str]
    source: str
    frames: list[ReportFrame]
    flow_scale_px: float
    error_scale_px: float
    settings: dict[str, Any]
    fps: float = 0.0
    files: list[str] = field(default_factory=list)
    pictures: list[tuple[str, str]] = field(default_factory=list)  # (path, caption) shown under the figures
    plots: list[Plot] = field(default_factory=list)
    """Plots drawn first; every other figure gets a plot of its own unless ``table_only`` names it."""
    table_only: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    """Column names of figure keys where ``figure_label``'s reading of the key is not enough."""


def _asset(name: str) -> str:
    """A file of ``report_assets/`` (package data), embedded in every page so that it opens offline."""
    return (resources.files("mtransfer.app") / "report_assets" / name).read_text(encoding="utf-8")


STYLE = _asset("report.css")
SCRIPT = _asset("report.js")

STATUS_TEXT = {
    "edited": "",
    "reached": "reached the target motion",
    "partial": "PARTIAL: part of the target motion",
    "missed": "MISSED the target motion",
    "still": "no motion to follow: the source is kept",
    "diverged": "DIVERGED: last good estimate",
}


def _key_marks(frames: list[ReportFrame]) -> str:
    """Tick marks under the frame slider at the plan's keys (the frames edited from the shared start)."""
    keys = [position for position, frame in enumerate(frames) if frame.plan == "key"]
    if not keys:
        return ""
    return '<datalist id="keys">' + "".join(f'<option value="{p}"></option>' for p in keys) + "</datalist>"


def figure_label(key: str, labels: dict[str, str] | None = None) -> str:
    """A readable column name for a figure key: its entry in ``labels``, else ``final_energy.flow`` →
    "final energy flow", ``flow_error_px`` → "flow error (px)", ``seconds`` → "seconds"."""
    if labels and key in labels:
        return labels[key]
    words = key.replace(".", " ").replace("_", " ").split()
    units = {"px": "px", "s": "s", "db": "dB", "pct": "%"}
    if len(words) > 1 and words[-1].lower() in units:
        return " ".join(words[:-1]) + f" ({units[words[-1].lower()]})"
    return " ".join(words)


IDENTIFIERS = {"pid", "frame", "parent", "verdict"}
"""Entries of a frame's record that are not figures to plot: numbers that name something (the worker's
process, the frame, a warm frame's parent), and the verdict, which the frame's status shows in words."""


def figure_values(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) record, flattened to ``outer.inner`` keys; flags, text and identifiers
    (``IDENTIFIERS``) are left out; "inf" is infinity (``mtransfer.files.json_ready``)."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if key in IDENTIFIERS:
            continue
        if isinstance(value, dict):
            values.update(figure_values(value, f"{prefix}{key}."))
        elif (number := json_number(value)) is not None:
            values[prefix + key] = number
    return values


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _sort_value(value: float) -> str:
    """A table cell's ``data-value``, as the page's script reads numbers (``Number("Infinity")``)."""
    return repr(value) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")


def _figure_keys(frames: list[ReportFrame]) -> list[str]:
    """Every frame's figure keys, each frame's order kept: a key first seen in a later frame goes right
    after the key before it there (frame 0, the source, lacks the edit's figures)."""
    keys: list[str] = []
    for frame in frames:
        position = 0
        for key in frame.figures:
            if key not in keys:
                keys.insert(position, key)
            position = keys.index(key) + 1
    return keys


def _png_data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- the viewer ----------------------------------------------------------------------------------------


def _panels(report: Report) -> list[tuple[str, str, str]]:
    """``(key, title, title in the alternative mode)`` of the viewer's columns, left to right."""
    single = report.frames[0].driving is None
    has_results = any(frame.result is not None for frame in report.frames)
    panels = [("first", "source image" if single else "driving frame", ""), ("target", "target flow", "")]
    if has_results:
        panels += [("result", "result", "source image"), ("achieved", "achieved flow", "|achieved − target| (px)")]
    else:
        panels.append(("mask", "edit mask", ""))
    return panels


def _frame_panels(report: Report, frame: ReportFrame) -> dict[str, dict[str, str | None]]:
    """What each column shows for one frame: picture, a note replacing it, a detail line under it."""
    columns = {key for key, _, _ in _panels(report)}
    panels: dict[str, dict[str, str | None]] = {
        "first": {"src": frame.driving or report.source, "detail": f"frame {frame.index}" if frame.driving else ""},
        "target": {
            "src": frame.target_flow,
            "note": "no motion" if frame.still else "",
            "detail": f"largest motion {frame.motion_px:.2f} px",
        },
        "mask": {"src": frame.edit_mask, "detail": "white: guidance may change these pixels"},
    }
    if frame.result is not None:
        detail = "; ".join(text for text in (frame.plan, STATUS_TEXT.get(frame.status, frame.status)) if text)
        panels["result"] = {"src": frame.result, "detail": detail}
        no_edit = "" if frame.achieved_flow else "no edit was made for this frame"
        panels["achieved"] = {
            "src": frame.achieved_flow, "error": frame.flow_error, "note": no_edit,
            "detail": "" if no_edit else "measured from the source to the result",
            "error_detail": "" if no_edit else "per pixel; brighter is further off",
        }
    return {key: shown for key, shown in panels.items() if key in columns}


def _frame_numbers(report: Report, frame: ReportFrame) -> str:
    parts = [] if len(report.frames) == 1 else [f"frame {frame.index}"]
    parts += [f"{figure_label(k, report.labels)} {_number(v)}" for k, v in frame.figures.items()]
    return " · ".join(parts)


def _viewer(report: Report, start: int) -> str:
    frames, first = report.frames, report.frames[start]
    panels = _panels(report)
    shown = _frame_panels(report, first)
    figures = []
    for key, title, alternative in panels:
        now = shown[key]
        css = "pic result" if key == "result" else "pic"
        placeholder = now["src"] or report.source  # hidden under the note; keeps the panel's size
        pictures = f'<img class="main" src="{html.escape(placeholder)}" alt="{html.escape(title)}">'
        if key == "result":
            pictures += f'<img class="alt" src="{html.escape(report.source)}" alt="source image">'
        if key == "result":
            caption = (f'<span class="result-title">{html.escape(title)}</span>'
                       f'<span class="flip-title">{html.escape(alternative)} (flipped)</span>')
        elif alternative:
            caption = f'<span class="normal-title">{html.escape(title)}</span><span class="error-title">{html.escape(alternative)}</span>'
        else:
            caption = html.escape(title)
        empty = " empty" if now.get("note") or not now["src"] else ""
        figures.append(
            f'<figure class="panel" data-panel="{key}"><div class="{css}{empty}">{pictures}'
            f'<div class="note">{html.escape(now.get("note") or "")}</div></div>'
            f'<figcaption>{caption}<span class="detail">{html.escape(now.get("detail") or "")}</span></figcaption></figure>'
        )
    has_results = any(key == "result" for key, _, _ in panels)
    controls = []
    if len(frames) > 1:
        controls += [
            '<button id="prev" type="button" aria-label="previous frame">&#9664;</button>',
            '<button id="play" type="button">&#9654; play</button>',
            '<button id="next" type="button" aria-label="next frame">&#9654;</button>',
            f'<input id="slider" type="range" min="0" max="{len(frames) - 1}" value="{start}" aria-label="frame"'
            + (' list="keys">' if any(frame.plan == "key" for frame in frames) else ">")
            + _key_marks(frames),
            f'<output id="frame-label">frame {first.index} / {frames[-1].index}</output>',
        ]
    if has_results:
        controls += [
            '<label title="or hover the result; key S"><input id="flip" type="checkbox"> show the source</label>',
            '<label title="key E"><input id="errmap" type="checkbox"> error map</label>',
        ]
    else:
        controls.append('<input id="flip" type="checkbox" hidden>')
    keys = "&larr; &rarr; step, space plays, " if len(frames) > 1 else ""
    hint = f'<p class="hint">Keys: {keys}S flips the result to the source (so does hovering it), E shows the error map.</p>' \
        if has_results else ""
    stops = ", ".join(f"rgb{stop}" for stop in HEAT_STOPS)
    legend = (
        f'<div class="legend"><div><img src="{_png_data_uri(color_wheel(96))}" alt="flow colour wheel">'
        f'<span>Flow colours: hue = direction (right red, down yellow, left cyan, up blue),<br>'
        f'white centre = no motion, the rim = {report.flow_scale_px:.2f} px (faster: darker)</span></div>'
        + (f'<div class="errorbar"><span>0</span><div class="colorbar" style="background: linear-gradient(to right, {stops})">'
           f'</div><span>&ge; {report.error_scale_px:.2f} px of |achieved &minus; target|</span></div>' if has_results else "")
        + "</div>"
    )
    return (
        f'<section class="viewer"><div class="controls">{"".join(controls)}</div>'
        f'<div class="panels" style="--columns: {len(panels)}">{"".join(figures)}</div>'
        f'<p class="numbers" id="numbers">{html.escape(_frame_numbers(report, first))}</p>{legend}{hint}</section>'
    )


# --- figures, files, settings --------------------------------------------------------------------------


def _plottable(frames: list[ReportFrame], key: str) -> list[tuple[int, float]]:
    return [(f.index, f.figures[key]) for f in frames if key in f.figures and math.isfinite(f.figures[key])]


def _plot(frames: list[ReportFrame], plot: Plot, start: int, label: str) -> str:
    """An inline SVG line plot of one figure (and its dashed reference) over the frames, with a cursor at
    the shown frame; points of the figure select their frame."""
    width, height, left, right, top, bottom = 260, 100, 44, 8, 8, 18
    points = _plottable(frames, plot.key)
    reference = _plottable(frames, plot.reference) if plot.reference else []
    values = [v for _, v in points + reference]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    last = max(frames[-1].index, 1)
    dx = (width - left - right) / last

    def xy(index: int, value: float) -> tuple[float, float]:
        return left + dx * index, top + (height - top - bottom) * (high - value) / (high - low)

    def line(series: list[tuple[int, float]], css: str = "") -> str:
        joined = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, v in series)
        return f'<polyline class="{css}" points="{joined}"/>' if series else ""

    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" data-frame="{i}"><title>frame {i}: {_number(v)}</title></circle>'
        for i, v in points for x, y in [xy(i, v)]
    )
    cursor = left + dx * frames[start].index
    return (
        f'<figure><svg class="plot" viewBox="0 0 {width} {height}" data-x0="{left}" data-dx="{dx:.4f}" role="img" '
        f'data-key="{html.escape(plot.key)}" aria-label="{html.escape(label)} over frames">'
        f'<rect class="frame" x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}"/>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_number(high)}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{_number(low)}</text>'
        f'<text x="{left}" y="{height - 4}">frame 0</text>'
        f'<text x="{width - right}" y="{height - 4}" text-anchor="end">{frames[-1].index}</text>'
        f'<line class="cursor" x1="{cursor:.1f}" x2="{cursor:.1f}" y1="{top}" y2="{height - bottom}"/>'
        f'{line(reference, "reference")}{line(points)}{dots}</svg>'
        f'<figcaption>{html.escape(plot.caption)}</figcaption></figure>'
    )


def _figures(report: Report, start: int) -> str:
    frames = report.frames
    keys = _figure_keys(frames)
    drawn = {key for plot in report.plots for key in (plot.key, plot.reference) if key}
    plots = report.plots + [
        Plot(key, figure_label(key, report.labels)) for key in keys
        if key not in drawn and key not in report.table_only
    ]
    svgs = [
        _plot(frames, plot, start, figure_label(plot.key, report.labels)) for plot in plots
        if len(frames) > 1 and _plottable(frames, plot.key)
    ]
    planned = any(frame.plan for frame in frames)
    heads = ["frame", "status"] + (["plan"] if planned else []) + [figure_label(k, report.labels) for k in keys]
    head = "".join(f'<th scope="col"><button type="button">{html.escape(h)}</button></th>' for h in heads)
    rows = []
    for position, frame in enumerate(frames):
        cells = [f'<td data-value="{frame.index}">{frame.index}</td>',
                 f'<td data-value="{html.escape(frame.status)}">{html.escape(frame.status)}</td>']
        if planned:
            cells.append(f'<td data-value="{html.escape(frame.plan)}">{html.escape(frame.plan)}</td>')
        for key in keys:
            value = frame.figures.get(key)
            cells.append(f'<td data-value="{_sort_value(value)}">{_number(value)}</td>' if value is not None
                         else '<td data-value="">&ndash;</td>')
        current = ' class="current"' if position == start else ""
        rows.append(f'<tr data-frame="{position}"{current}>{"".join(cells)}</tr>')
    plots_html = f'<div class="plots">{"".join(svgs)}</div>' if svgs else ""
    table = (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>')
    pictures = "".join(
        f'<figure class="pictures"><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for path, caption in report.pictures
    )
    hint = '<p class="hint">Click a column to sort, a row or a point to show that frame.</p>' if len(frames) > 1 else ""
    heading = "Figures" if len(frames) == 1 else "Per-frame figures"
    return f"<h2>{heading}</h2>{plots_html}{table}{hint}{pictures}"


def _settings_table(config: dict[str, Any]) -> str:
    rows = []
    for section, values in config.items():
        if isinstance(values, dict):
            rows += [(f"{section}.{key}", json.dumps(value)) for key, value in values.items()]
        else:
            rows.append((section, json.dumps(values)))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
    return f'<details><summary>Settings</summary><div class="scroll"><table class="settings">{body}</table></div></details>'


def _page_data(report: Report, start: int) -> str:
    """The per-frame panels and numbers as JSON for the script, safe inside ``<script>``."""
    data = {
        "start": start,
        "fps": min(max(report.fps, 1.0), 30.0),
        "frames": [
            {"index": f.index, "panels": _frame_panels(report, f), "numbers": _frame_numbers(report, f)} for f in report.frames
        ],
    }
    return json.dumps(data).replace("<", "\\u003c")  # no "</script>" or "<!--" can end the element early


def render_report(report: Report) -> str:
    """The page as a string. The viewer opens on the frame with the largest target motion."""
    if not report.frames:
        raise ValueError("a report needs at least one frame")
    start = max(range(len(report.frames)), key=lambda i: report.frames[i].motion_px)
    files = " ".join(f'<a href="{html.escape(path)}">{html.escape(path)}</a>' for path in report.files)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head>\n<body>"
        f"<h1>{html.escape(report.title)}</h1>"
        f'<div class="summary">{"".join(f"<p>{html.escape(line)}</p>" for line in report.summary)}</div>'
        + _viewer(report, start)
        + _figures(report, start)
        + (f'<h2>Files</h2><p class="files">{files}</p>' if files else "")
        + _settings_table(report.settings)
        + f'<script type="application/json" id="report-data">{_page_data(report, start)}</script>'
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(path: Path, report: Report) -> Path:
    """``render_report`` written atomically to ``path``."""
    return write_bytes(path, render_report(report).encode("utf-8", errors="backslashreplace"))
