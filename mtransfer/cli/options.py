"""Turning command-line flags into preset overrides, shared by the commands that read presets."""

from __future__ import annotations

import json
from pathlib import Path

from mtransfer.errors import UsageError
from mtransfer.presets import parse_override

QUIET_HELP = ("No progress (bars on a terminal, timestamped lines in a log); warnings, errors and the last line "
              "still print.")


def preset_overrides(
    pipeline: str | Path, settings: list[str], flags: dict[str, object], size: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``--set`` values first, then ``--size``, the dedicated flags and ``extra`` (ready-made overrides of
    other flags), so that flags win over ``--set``; a size given either way is kept as given
    (``model.keep_aspect=false``) unless ``--set`` says otherwise.

    ``flags`` maps ``section.key`` to a flag's value; flags left unset (None) change nothing. A ``--set`` that a
    flag replaces is still checked (the preset with the ``--set`` values alone is validated): a malformed value
    is refused, not hidden by the flag.
    """
    from mtransfer.app.settings import load_settings  # torch: imported when a command runs, not for --help
    from mtransfer.video import parse_size

    overrides = list(settings)
    if size is not None:
        parsed = parse_size(size)
        if isinstance(parsed, int):
            raise UsageError(f"--size {size}: give the working size as HEIGHTxWIDTH, e.g. 512x512")
        overrides.append(f"model.size=[{parsed[0]}, {parsed[1]}]")
    named = {override.partition("=")[0].strip() for override in overrides}
    if "model.size" in named and "model.keep_aspect" not in named:
        overrides.append("model.keep_aspect=false")  # a size the user gives is the size they want
    overrides += [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    overrides += extra
    by_flags = {tuple(parse_override(text)[0]) for text in overrides[len(settings):]}
    if any(tuple(parse_override(text)[0]) in by_flags for text in settings):
        load_settings(pipeline, settings)
    return overrides
