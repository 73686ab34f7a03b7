"""The web app's motion editing as plain functions (no Gradio): controls ↔ spec terms, arrows, previews.

The spec text (the ``--flow`` language) is the one record of the motion being built: the controls edit
its last term, "add" appends one, and any text the user types is read back into the controls
(``spec_terms``). Positions and lengths are pixels of the image the motion is drawn on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtransfer.errors import UsageError
from mtransfer.flows import (
    MotionTerm,
    flow_to_color,
    format_spec,
    move_image,
    parse_flow_spec,
    quiver_overlay,
    spec_terms,
)
from mtransfer.flows.spec import MOTIONS, Control, image_corners, motion_controls

CORNERS = ("top-left", "top-right", "bottom-right", "bottom-left")  # homography(x1, y1, ..., x4, y4) order
MASK_TINT = (0.1, 0.5, 1.0)  # the colour the mask is shown in (the flow's arrows are red)


def sliders(kind: str, height: int, width: int) -> list[Control]:
    """The sliders for ``kind`` on a ``height`` x ``width`` image (lengths in pixels of that image): the spec
    language's own (``motion_controls``), and for a homography where each corner goes, as offsets."""
    if kind in MOTIONS:
        return motion_controls(kind, height, width)
    if kind != "homography":
        raise UsageError(f"the controls do not offer '{kind}'; choose one of {', '.join(CONTROL_KINDS)}")
    return [  # the top corners start tilted inwards
        Control(f"{corner} {axis}", -span / 2, span / 2, 1, start)
        for corner, inward in zip(CORNERS, (1, -1, 0, 0))
        for axis, span, start in (("dx", width, inward * round(width / 20)), ("dy", height, 0))
    ]


CONTROL_KINDS = (*MOTIONS, "homography")  # homography as the four corners' offsets (its matrix form: spec text)
SLIDER_COUNT = max(len(sliders(kind, 2, 2)) for kind in CONTROL_KINDS)  # the page has this many sliders


def has_center(kind: str) -> bool:
    return kind in MOTIONS and "cx" in {param.name for param in MOTIONS[kind].params}


def controls_to_term(
    kind: str, values: list[float], center: tuple[float, float] | None, height: int, width: int,
    mask: str | None = None,
) -> MotionTerm:
    """The term the controls show: ``values`` for ``kind``'s sliders in order, ``center`` (x, y) in pixels
    (default: the image centre) for the motions that have one, ``mask`` a mask file the motion is kept to."""
    names = [slider.name for slider in sliders(kind, height, width)]
    if len(values) < len(names):
        raise UsageError(f"{kind} needs {len(names)} values ({', '.join(names)}), got {len(values)}")
    if kind == "homography":  # corner offsets → where the corners go
        arguments = [
            (f"{axis}{i}", corner[k] + float(values[2 * (i - 1) + k]))
            for i, corner in enumerate(image_corners(height, width), start=1)
            for k, axis in enumerate("xy")
        ]
        return MotionTerm(kind, tuple(arguments), mask)
    arguments = [(name, float(value)) for name, value in zip(names, values)]
    if has_center(kind):
        cx, cy = center if center is not None else ((width - 1) / 2, (height - 1) / 2)
        arguments += [("cx", float(cx)), ("cy", float(cy))]
    return MotionTerm(kind, tuple(arguments), mask)


def term_to_controls(term: MotionTerm, height: int, width: int) -> tuple[str, list[float], tuple[float, float] | None]:
    """What the controls show for ``term``: kind, slider values and centre (None for motions without one).

    Refuses terms the controls cannot show exactly (a homography given as a matrix, a strength factor),
    so that editing a slider never silently changes another part of the term.
    """
    if term.name not in CONTROL_KINDS:
        raise UsageError(f"'{term.name}' is edited in the spec text only")
    if term.strength is not None:
        raise UsageError(f"'{term.name}(...) * {term.strength:g}' is edited in the spec text only")
    values = term.values
    if term.name == "homography":
        if "x1" not in values:
            raise UsageError("a homography given as a matrix is edited in the spec text only")
        offsets = [values[f"{axis}{i}"] - corner[k]
                   for i, corner in enumerate(image_corners(height, width), start=1) for k, axis in enumerate("xy")]
        return term.name, offsets, None
    shown = [values[slider.name] for slider in sliders(term.name, height, width)]
    center = (values["cx"], values["cy"]) if has_center(term.name) else None
    return term.name, shown, center


def replace_last(spec: str, term: MotionTerm, height: int, width: int) -> str:
    """``spec`` with its last term replaced by ``term`` (or just ``term`` when ``spec`` is empty)."""
    terms = spec_terms(spec, height, width) if spec.strip() else []
    return format_spec([*terms[:-1], term])


def append_term(spec: str, term: MotionTerm, height: int, width: int) -> str:
    """``spec`` then ``term`` (composed: the new motion applies after the earlier ones)."""
    terms = spec_terms(spec, height, width) if spec.strip() else []
    return format_spec([*terms, term])


def arrow_to_term(start: tuple[float, float], end: tuple[float, float], mask: str | None = None) -> MotionTerm:
    """An arrow dragged from ``start`` to ``end`` (x, y pixels): translate what the mask holds by end - start."""
    return MotionTerm("translate", (("dx", float(end[0] - start[0])), ("dy", float(end[1] - start[1]))), mask)


def parse_arrow(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """The arrow the page's drag sends as text ``"x0 y0 x1 y1"`` (pixels of the canvas): start, end."""
    try:
        x0, y0, x1, y1 = (float(part) for part in text.split())
    except ValueError:
        raise UsageError(f"a dragged arrow is four numbers 'x0 y0 x1 y1', got '{text[:60]}'") from None
    return (x0, y0), (x1, y1)


def spec_flow(spec: str, height: int, width: int, allowed_folder: Path) -> torch.Tensor:
    """``parse_flow_spec`` for text typed in the page, whose ``mask=`` files must lie in ``allowed_folder``
    (the session's run folder), so the page cannot be used to read other files of the server."""
    folder = allowed_folder.resolve()
    for term in spec_terms(spec, height, width):
        if term.mask is not None and folder not in (Path(term.mask).resolve()).parents:
            raise UsageError(f"mask '{term.mask}': only masks uploaded in this page can be used")
    return parse_flow_spec(spec, height, width)


def previews(
    image: torch.Tensor, flow: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arrows over the image (the mask ``(1, H, W)``, if any, tinted in ``MASK_TINT``), the flow's colour
    coding and the image moved by it (a cheap forward warp), each ``(3, H, W)`` in [0, 1]; arrows are
    spaced for about 24 across the image."""
    step = max(4, round(max(image.shape[-2:]) / 24))
    shown = image if mask is None else torch.lerp(image, torch.tensor(MASK_TINT).view(3, 1, 1), 0.45 * mask)
    arrows = quiver_overlay(shown, flow, step=step)
    return arrows, flow_to_color(flow), move_image(image[None], flow[None])[0].clamp(0, 1)
