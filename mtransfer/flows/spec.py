"""A one-line language for target motions, so the command line can say which motion it wants.

Grammar::

    spec   := term ("|" term)*                 a | b  means "a, then b" (flows chained with compose)
    term   := name "(" [arg ("," arg)*] ")" ["*" number]
    arg    := value | key "=" value            positional arguments first, then keywords
    value  := number ["%"]                     or, for mask=, a file path (quotes optional)

Motions and their arguments (``=`` gives the default; angles in degrees, counter-clockwise on screen)::

    translate(dx, dy=0)
    rotate(degrees, cx=50%, cy=50%)
    scale(factor, cx=50%, cy=50%)
    stretch(factor, angle=0, cx=50%, cy=50%)
    shear(shx, shy=0, cx=50%, cy=50%)
    twirl(degrees, radius=50%, cx=50%, cy=50%)
    bulge(strength, radius=50%, cx=50%, cy=50%)
    wobble(amplitude, wavelength=50%, seed=0)
    homography(x1, y1, x2, y2, x3, y3, x4, y4)   where the corners top-left, top-right,
                                                 bottom-right, bottom-left go
    homography(h11, h12, h13, h21, h22, h23, h31, h32, h33)   a pixel-coordinate matrix

Percentages: positions (``cx``, ``x1`` ...) are a share of the span between the first and last pixel
centres, so ``cx=50%`` is the image centre and ``x2=100%`` the last column; horizontal lengths
(``dx``) are a share of the width, vertical ones (``dy``) of the height, and ``radius``,
``amplitude`` and ``wavelength`` of the shorter side. Other arguments take plain numbers.

Every term also takes ``mask=path.png`` (the motion only where the mask is white, soft in between;
resized to the image) and an optional trailing ``* strength`` that scales its displacements.

Examples::

    translate(10, 0)
    rotate(20, cx=50%, cy=40%) | translate(10, 0)
    twirl(90, radius=30%) * 0.5
    scale(1.2, mask=cat_mask.png) | bulge(0.3, radius=20%, cx=60%, cy=30%)
    homography(0, 5%, 100%, 0, 95%, 100%, 5%, 95%)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Collection
from typing import Callable

import torch

from mtransfer.choices import HOMOGRAPHY_USAGE, MOTION_ARGUMENTS, motion_usage
from mtransfer.errors import UsageError, input_error
from mtransfer.flows import elementary
from mtransfer.flows.io import FLOW_SUFFIXES, motion_problem, read_flow, read_mask_on
from mtransfer.flows.ops import compose, resize_flow, restrict, scale_motion

# How a percentage is resolved for each kind of argument (see the module docstring).
_PLAIN, _X, _Y, _DX, _DY, _SIDE = "plain", "x", "y", "dx", "dy", "side"


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str = _PLAIN
    default: str | None = None  # written in the spec language itself; None = required
    control: tuple[str, str, float, str] | None = None
    """A front end's slider: lowest, highest value, step, start (values in the spec language); None: none."""


@dataclass(frozen=True)
class Control:
    """One parameter's slider for a front end, resolved for one image size: the parameter's name in the
    spec language, its range, step and start value (positions and lengths in pixels)."""

    name: str
    minimum: float
    maximum: float
    step: float
    value: float


@dataclass(frozen=True)
class _Motion:
    params: tuple[_Param, ...]
    build: Callable[..., torch.Tensor]  # (height, width, **resolved arguments, device=) -> (2, H, W)


def _centred(function: Callable[..., torch.Tensor], *names: str) -> Callable[..., torch.Tensor]:
    """Adapt an elementary flow whose trailing ``center`` is given as the two arguments ``cx, cy``."""

    def build(height: int, width: int, cx: float, cy: float, device=None, **arguments: float) -> torch.Tensor:
        values = [arguments[name] for name in names]
        return function(height, width, *values, center=(cx, cy), device=device)

    return build


def _wobble(height: int, width: int, amplitude: float, wavelength: float, seed: float, device=None) -> torch.Tensor:
    if seed != int(seed):
        raise ValueError(f"seed must be a whole number, got {seed}")
    return elementary.wobble(height, width, amplitude, wavelength, int(seed), device=device)


_CONTROLS: dict[tuple[str, str], tuple[str, str, float, str]] = {
    ("translate", "dx"): ("-50%", "50%", 1, "10"), ("translate", "dy"): ("-50%", "50%", 1, "0"),
    ("rotate", "degrees"): ("-180", "180", 1, "15"),
    ("scale", "factor"): ("0.5", "2", 0.01, "1.2"),
    ("stretch", "factor"): ("0.5", "2", 0.01, "1.2"), ("stretch", "angle"): ("-90", "90", 1, "0"),
    ("shear", "shx"): ("-1", "1", 0.01, "0.2"), ("shear", "shy"): ("-1", "1", 0.01, "0"),
    ("twirl", "degrees"): ("-360", "360", 1, "60"), ("twirl", "radius"): ("1", "100%", 1, "50%"),
    ("bulge", "strength"): ("-1", "1", 0.01, "0.3"), ("bulge", "radius"): ("1", "100%", 1, "50%"),
    ("wobble", "amplitude"): ("0", "12.5%", 0.5, "4"), ("wobble", "wavelength"): ("2", "100%", 1, "50%"),
    ("wobble", "seed"): ("0", "100", 1, "0"),
}
"""A front end's slider per parameter (lowest, highest, step, start; in the spec language): the web app's
controls are made from these; the centre ``cx, cy`` has none (it is placed on the image)."""

_BUILDERS: dict[str, Callable[..., torch.Tensor]] = {
    "translate": elementary.translation,
    "rotate": _centred(elementary.rotation, "degrees"),
    "scale": _centred(elementary.scaling, "factor"),
    "stretch": _centred(elementary.stretch, "factor", "angle"),
    "shear": _centred(elementary.shear, "shx", "shy"),
    "twirl": _centred(elementary.twirl, "degrees", "radius"),
    "bulge": _centred(elementary.bulge, "strength", "radius"),
    "wobble": _wobble,
}
MOTIONS: dict[str, _Motion] = {
    name: _Motion(tuple(_Param(*param, control=_CONTROLS.get((name, param[0]))) for param in MOTION_ARGUMENTS[name]), build)
    for name, build in _BUILDERS.items()
}
ALIASES = {"translation": "translate", "rotation": "rotate", "scaling": "scale"}

_TERM = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*(?:\*\s*([^()*]+?))?\s*$", re.DOTALL)


def motion_controls(name: str, height: int, width: int) -> list[Control]:
    """The sliders of motion ``name`` on a ``height`` x ``width`` image, in parameter order: every parameter
    with a ``control`` (the centre ``cx, cy`` has none: a front end places it on the image)."""
    resolve = _Resolver(name, name, height, width)
    return [
        Control(param.name, *(resolve.value(param.name, param.kind, text) for text in param.control[:2]),
                param.control[2], resolve.value(param.name, param.kind, param.control[3]))
        for param in MOTIONS[name].params if param.control is not None
    ]


def parse_flow_spec(
    spec: str, height: int, width: int, *, device: torch.device | str | None = None,
    mask_sizes: Collection[tuple[int, int]] = (),
) -> torch.Tensor:
    """The ``(2, H, W)`` float32 flow that ``spec`` describes for an image of ``height`` x ``width`` pixels.

    A term's ``mask=`` image must be ``height`` x ``width`` or one of ``mask_sizes`` (``read_mask_on``)."""
    flow = None
    for term in spec_terms(spec, height, width):
        term_flow = build_term(term, height, width, device=device, spec=spec, mask_sizes=mask_sizes)
        flow = term_flow if flow is None else compose(flow, term_flow)
    problem = motion_problem(flow)
    if problem:
        raise _spec_error(spec, problem)
    return flow


@dataclass(frozen=True)
class MotionTerm:
    """One term of a spec with its arguments resolved for one image size (positions and lengths in pixels).

    ``arguments`` are ``(name, value)`` pairs in the motion's parameter order, defaults filled in; a
    homography's are ``x1, y1, ..., x4, y4`` (where the corners go) or ``h11 ... h33`` (the matrix).
    ``format_spec`` writes terms back as spec text, so a front end can edit terms as numbers.
    """

    name: str
    arguments: tuple[tuple[str, float], ...]
    mask: str | None = None
    strength: float | None = None

    @property
    def values(self) -> dict[str, float]:
        return dict(self.arguments)


_CORNER_NAMES = tuple(f"{axis}{i}" for i in range(1, 5) for axis in "xy")
_MATRIX_NAMES = tuple(f"h{r}{c}" for r in range(1, 4) for c in range(1, 4))


def spec_terms(spec: str, height: int, width: int) -> list[MotionTerm]:
    """The terms of ``spec`` with every argument resolved to a number for a ``height`` x ``width`` image."""
    terms = _split_top_level(spec, "|")
    if not spec.strip() or any(not term.strip() for term in terms):
        raise _spec_error(spec, "empty motion; write e.g. 'rotate(20) | translate(10, 0)'", usage=True)
    return [_read_term(spec, term, height, width) for term in terms]


def format_spec(terms: list[MotionTerm]) -> str:
    """Spec text for ``terms`` (pixels as plain numbers), read back by ``spec_terms`` to the same terms."""
    return " | ".join(_format_term(term) for term in terms)


def _format_term(term: MotionTerm) -> str:
    values = [_number_text(value) for _, value in term.arguments]
    if term.name == "homography":
        texts = values
    else:
        texts = values[:1] + [f"{name}={text}" for (name, _), text in zip(term.arguments[1:], values[1:])]
    if term.mask is not None:
        texts.append(f"mask={_quoted(term.mask)}")
    text = f"{term.name}({', '.join(texts)})"
    return text if term.strength is None else f"{text} * {_number_text(term.strength)}"


def _number_text(value: float) -> str:
    """The shortest text that reads back as the same float (``repr``), without a trailing ``.0``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _quoted(path: str) -> str:
    plain = re.fullmatch(r"[\w./\\:-]+", path) is not None
    return path if plain else (f'"{path}"' if '"' not in path else f"'{path}'")


def image_corners(height: int, width: int) -> list[tuple[float, float]]:
    """The ``(x, y)`` pixel centres of the corners top-left, top-right, bottom-right, bottom-left: the
    points whose destinations ``homography(x1, y1, ..., x4, y4)`` gives, in that order."""
    return [(0.0, 0.0), (width - 1.0, 0.0), (width - 1.0, height - 1.0), (0.0, height - 1.0)]


def build_term(
    term: MotionTerm, height: int, width: int, *, device: torch.device | str | None = None, spec: str | None = None,
    mask_sizes: Collection[tuple[int, int]] = (),
) -> torch.Tensor:
    """The ``(2, H, W)`` flow of one term (its mask, checked by ``read_mask_on``, and strength applied)."""
    spec = format_spec([term]) if spec is None else spec
    values = term.values
    try:
        if term.name == "homography":
            if tuple(values) == _CORNER_NAMES:
                coords = list(values.values())
                matrix = elementary.homography_from_points(
                    image_corners(height, width), [coords[i : i + 2] for i in range(0, 8, 2)]
                )
            elif tuple(values) == _MATRIX_NAMES:
                matrix = [[values[f"h{r}{c}"] for c in range(1, 4)] for r in range(1, 4)]
            else:
                raise ValueError(f"takes 8 corner coordinates or 9 matrix entries: {HOMOGRAPHY_USAGE}")
            flow = elementary.homography(height, width, matrix, device=device)
        elif term.name in MOTIONS:
            flow = MOTIONS[term.name].build(height, width, **values, device=device)
        else:
            raise _spec_error(spec, f"unknown motion '{term.name}'", usage=True)
    except ValueError as exc:
        raise _spec_error(spec, f"{term.name}: {exc}") from None
    if term.mask is not None:
        flow = restrict(flow, read_mask_on(term.mask, (height, width), mask_sizes, "motion mask").to(flow.device))
    if term.strength is not None:
        flow = scale_motion(flow, term.strength)
    return flow


def load_flow(
    file_or_spec: str | Path, height: int, width: int, *, device: torch.device | str | None = None,
    mask_sizes: Collection[tuple[int, int]] = (), spec_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A target flow from a ``.flo``/``.npy``/KITTI ``.png`` file or from a spec, checked to be ``height`` x ``width``.

    Anything with parentheses is a spec. Otherwise it is a file, and a name ending in a flow suffix
    that does not exist is reported as a missing file rather than as a bad spec. ``spec_size`` is the
    grid a spec's pixels mean (the image the user gave, one unit for every command): the spec is built
    there and resized to ``height`` x ``width`` with its vectors scaled (``resize_flow``); a file is
    always on the ``height`` x ``width`` grid.
    """
    text = str(file_or_spec).strip()
    if "(" in text:
        if spec_size is not None and tuple(spec_size) != (height, width):
            flow = parse_flow_spec(text, *spec_size, mask_sizes=[*mask_sizes, (height, width)])
            return resize_flow(flow, (height, width)).to(device)
        return parse_flow_spec(text, height, width, device=device, mask_sizes=mask_sizes)
    path = Path(text)
    if path.suffix.lower() not in FLOW_SUFFIXES:
        if path.is_file():
            raise input_error(path, f"unknown flow file type '{path.suffix}'; use .flo, .npy or KITTI .png")
        raise _spec_error(text, "not a flow file or a motion like 'rotate(20)'", usage=True)
    flow = read_flow(path)
    if tuple(flow.shape[-2:]) != (height, width):
        raise input_error(
            path,
            f"flow is {flow.shape[-2]}x{flow.shape[-1]} (height x width) but the image is {height}x{width}; "
            "the flow must be on the image's pixel grid",
        )
    problem = motion_problem(flow)
    if problem:
        raise input_error(path, problem)
    return flow.to(device)


def _spec_error(spec: str, problem: str, usage: bool = False) -> UsageError:
    tail = f"; valid motions: {motion_usage()}" if usage else ""
    return UsageError(f"flow spec '{spec}': {problem}{tail}")


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _read_term(spec: str, term: str, height: int, width: int) -> MotionTerm:
    match = _TERM.match(term)
    if not match:
        raise _spec_error(spec, f"cannot read '{term.strip()}', expected name(arguments)", usage=True)
    name, body, strength_text = match.groups()
    name = ALIASES.get(name.lower(), name.lower())
    if name != "homography" and name not in MOTIONS:
        raise _spec_error(spec, f"unknown motion '{name}'", usage=True)
    positional, keywords = _split_arguments(spec, name, body)
    mask_path = keywords.pop("mask", None)
    resolve = _Resolver(spec, name, height, width)
    try:
        if name == "homography":
            if keywords:
                raise _spec_error(spec, f"homography takes positional numbers only, not '{next(iter(keywords))}='")
            arguments = _homography_arguments(resolve, positional)
        else:
            arguments = _bind(resolve, MOTIONS[name], positional, keywords)
    except ValueError as exc:
        raise _spec_error(spec, f"{name}: {exc}") from None
    strength = None if strength_text is None else resolve.number("strength", strength_text)
    return MotionTerm(name, tuple(arguments.items()), mask_path, strength)


def _split_arguments(spec: str, name: str, body: str) -> tuple[list[str], dict[str, str]]:
    """Positional value texts and keyword value texts of one term; quotes around values are removed."""
    positional, keywords = [], {}
    if not body.strip():
        return positional, keywords
    for raw in _split_top_level(body, ","):
        key, sep, value = raw.partition("=")
        is_keyword = bool(sep) and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", key) is not None
        text = _unquote(value if is_keyword else raw)
        if not text:
            raise _spec_error(spec, f"{name}: empty argument in '{body.strip()}'")
        if is_keyword:
            key = key.strip().lower()
            if key in keywords:
                raise _spec_error(spec, f"{name}: '{key}' given twice")
            keywords[key] = text
        elif keywords:
            raise _spec_error(spec, f"{name}: positional argument '{raw.strip()}' after a keyword argument")
        else:
            positional.append(text)
    return positional, keywords


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _bind(resolve: _Resolver, motion: _Motion, positional: list[str], keywords: dict[str, str]) -> dict[str, float]:
    """Match argument texts to a motion's parameters (defaults filled in) and resolve them to numbers."""
    names = [p.name for p in motion.params]
    if len(positional) > len(names):
        raise ValueError(f"takes at most {len(names)} arguments ({', '.join(names)}), got {len(positional)}")
    texts = dict(zip(names, positional))
    for key, value in keywords.items():
        if key not in names:
            raise ValueError(f"unknown argument '{key}'; it takes {', '.join(names)} and mask")
        if key in texts:
            raise ValueError(f"'{key}' given both by position and by name")
        texts[key] = value
    values = {}
    for param in motion.params:
        text = texts.get(param.name, param.default)
        if text is None:
            raise ValueError(f"missing argument '{param.name}'")
        values[param.name] = resolve.value(param.name, param.kind, text)
    return values


def _homography_arguments(resolve: _Resolver, positional: list[str]) -> dict[str, float]:
    """Either where the four image corners go (8 coordinates) or the 3x3 matrix itself (9 entries)."""
    if len(positional) == 8:
        return {
            name: resolve.value(f"coordinate {i + 1}", _X if i % 2 == 0 else _Y, text)
            for i, (name, text) in enumerate(zip(_CORNER_NAMES, positional))
        }
    if len(positional) == 9:
        return {name: resolve.number(f"entry {i + 1}", text) for i, (name, text) in enumerate(zip(_MATRIX_NAMES, positional))}
    raise ValueError(f"takes 8 corner coordinates or 9 matrix entries, got {len(positional)}: {HOMOGRAPHY_USAGE}")


class _Resolver:
    """Turns argument texts into pixels/numbers for one image size, with errors that name the spec."""

    def __init__(self, spec: str, motion: str, height: int, width: int) -> None:
        self.spec, self.motion = spec, motion
        self.share_of = {
            _X: width - 1,
            _Y: height - 1,
            _DX: width,
            _DY: height,
            _SIDE: min(height, width),
        }

    def number(self, name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _spec_error(self.spec, f"{self.motion}: {name} must be a number, got '{text.strip()}'") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise _spec_error(self.spec, f"{self.motion}: {name} must be finite, got '{text.strip()}'")
        return value

    def value(self, name: str, kind: str, text: str) -> float:
        text = text.strip()
        if not text.endswith("%"):
            return self.number(name, text)
        if kind == _PLAIN:
            raise _spec_error(self.spec, f"{self.motion}: {name} takes a plain number, not a percentage")
        return self.number(name, text[:-1]) / 100.0 * self.share_of[kind]
