"""The one way settings are validated: frozen dataclasses checked where plain values enter them.

Every settings section (``GuidanceSettings``, ``AlignSettings`` and the sections of ``mtransfer.app.settings``)
is a frozen dataclass that calls ``check_types`` first in its ``__post_init__`` and then states its own
rules with a ``rule_checker``; presets and overrides enter through ``from_mapping``, which names unknown
keys. Errors are one line, ``section.key: rule, got value``.

A field may declare which pipeline stage its value shapes, with ``field(metadata={STAGE: "align"})``
(``None``: no stage's results, e.g. a device or a preview interval); fields without a declaration shape
their section's stage (see ``mtransfer.app.settings``). This module only reads the declaration.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, TypeVar

from mtransfer.errors import UsageError

STAGE = "stage"
RECORDED_UNLESS = "recorded_unless"
"""Metadata of a setting added after run folders were made: at this value (the behaviour before it existed)
it is left out of the stage's recorded settings, so those folders still resume."""
"""The ``dataclasses.field`` metadata key naming the stage a setting shapes."""

_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
"""Annotations checked automatically; anything else (sizes, boxes, lists) is checked by the section's rules."""

Rule = Callable[[bool, str, str, Any], None]
T = TypeVar("T")


def rule_checker(section: str) -> Rule:
    """``require(ok, name, rule, value)`` raising ``section.name: rule, got value`` when ``ok`` is false."""

    def require(ok: bool, name: str, rule: str, value: Any) -> None:
        if not ok:
            raise UsageError(f"{section}.{name}: {rule}, got {value!r}")

    return require


def check_types(settings: Any, section: str) -> None:
    """Check every ``int``/``float``/``bool``/``str`` field against its annotation; ints given for floats
    become floats (TOML and flags write ``300`` for ``300.0``). A bool is never accepted as a number, a
    float must be finite (TOML reads ``nan`` and ``inf``) and an int must fit in 64 bits (torch's seeds and
    sizes do)."""
    for field in dataclasses.fields(settings):
        accepted = _SIMPLE_TYPES.get(str(field.type))
        if accepted is None:
            continue
        value = getattr(settings, field.name)
        if isinstance(value, bool) and field.type != "bool" or not isinstance(value, accepted):
            raise UsageError(f"{section}.{field.name}: expected {field.type}, got {value!r}")
        if field.type == "float":
            if not math.isfinite(value):
                raise UsageError(f"{section}.{field.name}: must be a finite number, got {value!r}")
            object.__setattr__(settings, field.name, float(value))
        if field.type == "int" and not -(2**63) <= value < 2**63:
            raise UsageError(f"{section}.{field.name}: must fit in 64 bits, got {value!r}")


def finite_numbers(value: Any) -> bool:
    """Whether ``value`` is a list or tuple of finite numbers (not bools), for list-valued settings."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def from_mapping(cls: type[T], section: str, values: Mapping[str, Any]) -> T:
    """Build the section ``cls`` from a preset table; an unknown key is named with the known ones."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{section}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    return cls(**values)


def declared_stage(field: dataclasses.Field, default: str | None) -> str | None:
    """The stage a field shapes: its own declaration, else its section's ``default``."""
    return field.metadata.get(STAGE, default)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable ``key: old → new`` lines between two nested settings records."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            lines += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return lines
    return [] if old == new else [f"{prefix}: {old!r} → {new!r}"]
