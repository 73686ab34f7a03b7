"""Turning command-line flags into preset overrides, shared by the commands that read presets."""

from __future__ import annotations

import json

from mtransfer.errors import UsageError

QUIET_HELP = ("No progress (bars on a terminal, timestamped lines in a log); warnings, errors and the last line "
              "still print.")


def preset_overrides(settings: list[str], flags: dict[str, object], size: str | None = None) -> list[str]:
    """``--set`` values first, then ``--size`` and the dedicated flags, so that flags win over ``--set``; a size
    given either way is kept as given (``model.keep_aspect=false``) unless ``--set`` says otherwise.

    ``flags`` maps ``section.key`` to a flag's value; flags left unset (None) change nothing.
    """
    from mtransfer.video import parse_size  # torch: imported when a command runs, not for --help

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
    return overrides
