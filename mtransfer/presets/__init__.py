"""Named pipeline presets: TOML files shipped in ``mtransfer/presets/`` (package data, so an installed
mtransfer has them), chosen by name or path, overridable per key, and able to inherit.

A preset is a table of sections (``[model]``, ``[estimator]``, ``[guidance]``, ``[video]``, ``[align]``,
``[output]``); each section is validated by the dataclass that owns it, so this module only finds, reads
and merges. ``extends = "paper"`` (a shipped preset's name, or a ``.toml`` path relative to the file) makes a
preset its base plus the values it gives, key by key; bases may extend others, a cycle is refused. Relative
paths inside a file (``align.region``, ``*.weights``, a local ``model.model`` folder) are relative to that
file's folder. Overrides are ``section.key=value`` strings whose value is parsed as TOML (``20``, ``true``,
``"text"``, ``[512, 512]``) and otherwise taken as a plain string.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mtransfer.errors import UsageError, input_error, require_file

PRESETS_DIR = Path(__file__).resolve().parent

EXTENDS = "extends"
"""The key that names a preset's base."""

PATH_SETTINGS = (("align", "region"), ("estimator", "weights"), ("video", "weights"), ("model", "model"))
"""Settings that may hold a file or folder path, resolved against the preset file's folder (when they are
paths: a region box, a torchvision weights name or a Hugging Face id is left as it is)."""


def available_pipelines() -> list[str]:
    """Names of the presets shipped with mtransfer."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def pipeline_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Resolve a preset name (``paper``) or a path to a ``.toml`` file (relative to ``relative_to`` when
    given: the folder of a preset that extends it); a folder is named as such."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return require_file(candidate if relative_to is None else relative_to / candidate, "pipeline file")
    named = PRESETS_DIR / f"{name_or_path}.toml"
    if named.is_file():
        return named
    if relative_to is None and candidate.is_dir():
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


def read_preset_file(path: Path) -> dict[str, Any]:
    """One preset file as written (no base merged), its relative paths made relative to its folder.

    A UTF-8 byte-order mark, which some Windows editors write, is accepted."""
    try:
        config = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise input_error(path, f"not valid TOML ({exc})") from None
    except OSError as exc:
        raise input_error(path, f"cannot be read ({exc.strerror})") from None
    for section_name, key in PATH_SETTINGS:
        table = config.get(section_name)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            table[key] = _relative_to(path.parent, section_name, key, table[key])
    return config


def _relative_to(folder: Path, section_name: str, key: str, value: str) -> str:
    """``value`` with a relative path resolved against ``folder``: every ``align.region`` string (a mask),
    weights that name a file (a suffix or a folder part, not a torchvision name such as ``C_T_V1``) and a
    model that is a folder there (otherwise it is a Hugging Face id, such as ``CompVis/stable-diffusion-v1-4``)."""
    path = Path(value)
    if not value or path.is_absolute():
        return value
    if section_name == "model":
        return str(folder / path) if (folder / path).is_dir() else value
    if section_name == "align" or path.suffix or len(path.parts) > 1:
        return str(folder / path)
    return value


def resolve_preset(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """A preset file with its bases merged under it (``extends``), and the files it was made from, the
    file itself first. Values it gives replace its base's key by key; a base's ``description`` and ``name``
    are not inherited (they are the base's)."""
    config = read_preset_file(path)
    base = config.pop(EXTENDS, None)
    if base is None:
        return config, [path]
    if not isinstance(base, str) or not base.strip():
        raise input_error(path, f"{EXTENDS} must name a preset (e.g. {EXTENDS} = \"paper\") or a .toml path, "
                          f"not {base!r}")
    base_path = pipeline_path(base, relative_to=path.parent)
    seen = [*chain, path.resolve()]
    if base_path.resolve() in seen:
        loop = " -> ".join(str(p) for p in [*seen[seen.index(base_path.resolve()):], base_path.resolve()])
        raise input_error(path, f"{EXTENDS} = {base!r} makes a cycle: {loop}; a preset cannot extend itself")
    inherited, files = resolve_preset(base_path, tuple(seen))
    inherited.pop("description", None)
    inherited.pop("name", None)
    return merged(inherited, config), [path, *files]


def merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``own``'s values laid over it, tables merged key by key (arrays and values replaced)."""
    result = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def load_pipeline(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset (its bases merged) and apply ``section.key=value`` overrides; returns nested plain dicts."""
    path = pipeline_path(name_or_path)
    config, _ = resolve_preset(path)
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
