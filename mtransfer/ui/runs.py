"""Clip runs under the app's outputs folder that have no finished result, and the request that finishes one.

A run folder's ``manifest.json`` records the inputs' paths and the resolved preset (``config``), so a run
is resumed from its folder alone: the stored preset is written back as ``pipeline.toml`` in the folder
and the runner, given the same inputs and settings, continues from the last finished frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtransfer.errors import InputError, MtransferError
from mtransfer.files import read_json, write_bytes
from mtransfer.pipeline.manifest import MANIFEST
from mtransfer.pipeline.runner import RunRequest

STORED_PIPELINE = "pipeline.toml"


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        record = read_json(folder / MANIFEST)
    except MtransferError:
        return None
    return record if isinstance(record, dict) else None


def has_result(record: dict[str, Any]) -> bool:
    """A finished clip: every stage done, guide included (a flow-only preview has no edited frames)."""
    stages = record.get("stages", {})
    return not record.get("flow_only") and all(
        isinstance(stages.get(name), dict) and stages[name].get("status") == "done" for name in ("guide", "encode")
    )


def unfinished_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (one or two levels down) whose clip has no finished result: interrupted
    runs and flow-only previews, newest first."""
    folders = [path.parent for pattern in (f"*/{MANIFEST}", f"*/*/{MANIFEST}") for path in root.glob(pattern)]
    found = [(folder, record) for folder in folders if (record := _manifest(folder)) is not None]
    unfinished = [(folder, record) for folder, record in found if not has_result(record)]
    return [folder for folder, record in sorted(unfinished, key=lambda item: item[1].get("updated", ""), reverse=True)]


def toml_text(config: dict[str, Any]) -> str:
    """A resolved preset (nested plain dicts, as stored in a manifest) as TOML: JSON's strings, numbers,
    booleans and arrays are TOML's too."""
    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)

    lines = [f"{key} = {value(v)}" for key, v in config.items() if not isinstance(v, dict)]
    for name, table in config.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{key} = {value(v)}" for key, v in table.items())]
    return "\n".join(lines) + "\n"


def resume_request(folder: Path) -> RunRequest:
    """The request that finishes the clip of ``folder`` with its stored inputs and settings (a flow-only
    preview goes on to the edited clip); a one-line error when the folder or an input is gone."""
    record = _manifest(folder)
    if record is None or not isinstance(record.get("config"), dict):
        raise InputError(f"{folder}: not a run folder (no readable {MANIFEST} with the run's settings)")
    inputs = record.get("inputs", {})
    paths = {}
    for what in ("video", "image"):
        path = Path(inputs.get(what, {}).get("path", ""))
        if not path.is_file():
            raise InputError(f"{folder}: its {what} {path} is gone, so the run cannot be resumed")
        paths[what] = path
    pipeline = write_bytes(folder / STORED_PIPELINE, toml_text(record["config"]).encode())
    return RunRequest(video=paths["video"], image=paths["image"], pipeline=str(pipeline), out=folder)
