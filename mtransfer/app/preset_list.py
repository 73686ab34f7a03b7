"""What ``mtransfer presets`` says about a preset: its description, its base, what it changes from that base,
and whether its math is the paper's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtransfer.app.settings import RunSettings
from mtransfer.presets import EXTENDS, load_pipeline, pipeline_path, read_preset_file, resolve_preset

PAPER = "paper"
MATH_SECTIONS = ("guidance", "estimator")
"""The sections whose guide-stage settings make the update rule and its numbers, beside ``MATH_MODEL_KEYS``;
a preset whose values there differ from ``paper``'s does not compute what the paper computes. Settings that
shape no stage (``preview_every``, ``device``, ``model.speed``'s execution switches) are not counted."""
MATH_MODEL_KEYS = ("model", "dtype")


@dataclass(frozen=True)
class PresetInfo:
    """One preset as listed: ``changes`` are ``key = value (base: value)`` lines, ``math`` the settings in which
    it departs from the paper's math (empty: the paper's)."""

    name: str
    path: Path
    description: str
    base: str | None
    changes: list[str]
    math: list[str]


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any) -> str:
    return json.dumps(value) if value is not None else "(not set)"


def math_departures(settings: RunSettings, paper: RunSettings) -> list[str]:
    """``section.key`` of each setting of the paper's math (``MATH_SECTIONS``, ``MATH_MODEL_KEYS``) that differs."""
    mine, theirs = settings.by_stage()["guide"], paper.by_stage()["guide"]
    keys = [(name, key) for name in MATH_SECTIONS for key in theirs.get(name, {})]
    keys += [("model", key) for key in MATH_MODEL_KEYS]
    return [f"{name}.{key}" for name, key in keys if mine.get(name, {}).get(key) != theirs.get(name, {}).get(key)]


def describe_preset(name_or_path: str | Path) -> PresetInfo:
    """The listing of one preset (a shipped name or a .toml path), its bases resolved."""
    path = pipeline_path(name_or_path)
    own = read_preset_file(path)
    base = own.get(EXTENDS)
    changes = []
    if base is not None:
        resolved, files = resolve_preset(path)
        inherited, _ = resolve_preset(files[1])
        mine, theirs = _flat(resolved), _flat(inherited)
        changes = [f"{key} = {_shown(mine[key])} ({base}: {_shown(theirs.get(key))})"
                   for key in mine if key != "description" and mine[key] != theirs.get(key)]
    settings = RunSettings.from_config(load_pipeline(path))
    paper = RunSettings.from_config(load_pipeline(PAPER))
    return PresetInfo(name=path.stem, path=path, description=str(own.get("description", "")),
                      base=base, changes=changes, math=math_departures(settings, paper))
