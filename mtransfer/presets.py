"""Named pipeline presets: TOML files shipped in ``mtransfer/pipelines/`` (package data, so an installed
mtransfer has them), chosen by name or path, overridable per key.

A preset is a table of sections (``[model]``, ``[estimator]``, ``[guidance]``, ``[video]``, ``[align]``,
``[output]``); each section is validated by the dataclass that owns it, so this module only finds, reads
and merges. Overrides are ``section.key=value`` strings whose value is parsed as TOML (``20``, ``true``,
``"text"``, ``[512, 512]``) and otherwise taken as a plain string.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mtransfer.errors import UsageError, input_error, require_file

PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"


def available_pipelines() -> list[str]:
    """Names of the presets shipped with mtransfer."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.toml"))


def pipeline_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``paper``) or a path to a ``.toml`` file; a folder is named as such."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return require_file(candidate, "pipeline file")
    named = PIPELINES_DIR / f"{name_or_path}.toml"
    if named.is_file():
        return named
    if candidate.is_dir():
        require_file(candidate, "pipeline file")
    raise UsageError(
        f"unknown pipeline '{name_or_path}': choose one of {', '.join(available_pipelines())} or give a .toml path"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"guidance.steps=50"`` → (["guidance", "steps"], 50)."""
    key, sep, raw = text.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or len(keys) < 2 or not all(keys):
        raise UsageError(f"bad override '{text}': expected section.key=value, e.g. guidance.steps=50")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def load_pipeline(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset and apply ``section.key=value`` overrides; returns nested plain dicts."""
    path = pipeline_path(name_or_path)
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise input_error(path, f"not valid TOML ({exc})") from None
    for text in overrides:
        keys, value = parse_override(text)
        table = config
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise UsageError(f"bad override '{text}': '{key}' is a value, not a section")
        table[keys[-1]] = value
    config.setdefault("name", path.stem)
    return config


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """One section of a loaded preset (empty when the preset leaves it out)."""
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"pipeline '{config.get('name')}': [{name}] must be a table")
    return dict(value)
