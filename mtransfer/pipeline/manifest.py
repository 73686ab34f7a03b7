"""The run folder's ``manifest.json``: what a run was made from and how far each stage got.

It records the resolved configuration, fingerprints of the input files, library versions, and for every
stage the settings its results depend on plus the frames already finished. It is rewritten atomically
after each frame, and each frame's files are written (atomically) before the manifest names them, so a
run killed at any moment resumes from the last finished frame and never trusts a half-written file.

Each stage's ``settings`` include the settings of the stages before it: when anything a stage depends on
changes, that stage and every later one hold results that must not be mixed with new ones.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from mtransfer.validation import differences
from mtransfer.layouts import RUN_MANIFEST
from mtransfer.errors import OutputError
from mtransfer.files import read_json, supersede, write_json

FORMAT = 1
MANIFEST = RUN_MANIFEST
LOCK = "run.lock"
FINGERPRINT_BYTES = 1 << 20


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of the first MiB: cheap, and it changes when the content does (mtime is informative)."""
    path = Path(path)
    stat = path.stat()
    with path.open("rb") as handle:
        digest = hashlib.sha256(handle.read(FINGERPRINT_BYTES)).hexdigest()
    modified = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    return {"path": str(path.resolve()), "bytes": stat.st_size, "sha256_first_mib": digest, "modified": modified}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def content_id(record: dict[str, Any]) -> str:
    """The part of a fingerprint that identifies content, as one short string for stage settings."""
    return f"{record['bytes']} bytes, sha256 {record['sha256_first_mib'][:16]}"


class RunLock:
    """One run per folder at a time: a ``run.lock`` file holding the owner's process id.

    A lock left by a process that no longer exists (a killed run) is taken over.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise OutputError(
                        f"{self.path.parent}: another mtransfer run (process {owner}) is using this folder; "
                        "wait for it or choose another --out"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        raise OutputError(f"{self.path}: could not take the run lock; remove the file if no run is active")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Manifest:
    """``manifest.json`` of one run folder, kept in memory and written through after every change."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        self.folder = folder
        self.record = record

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def open(cls, folder: Path) -> Manifest:
        """The folder's manifest, or a new empty one (nothing is written until ``save``).

        A folder holding files but no manifest is refused: mtransfer never writes into someone else's files.
        """
        path = folder / MANIFEST
        if path.exists():
            record = read_json(path)
            if not isinstance(record, dict) or record.get("format") != FORMAT or "stages" not in record:
                raise OutputError(f"{path}: not an mtransfer run manifest (format {FORMAT}); choose another --out")
            return cls(folder, record)
        if folder.exists() and any(p.name != LOCK for p in folder.iterdir()):
            raise OutputError(f"{folder}: exists and holds files but no {MANIFEST}; choose an empty or new --out folder")
        return cls(folder, {"format": FORMAT, "created": _now(), "stages": {}})

    def update_header(self, header: dict[str, Any]) -> None:
        """Record what this run is made from (config, inputs, versions, ...) and write the manifest; a
        stop of an earlier run (``mark_interrupted``) is history once this run has started."""
        self.record.pop("interrupted", None)
        self.record.update(header)
        self.save()

    def save(self) -> None:
        """Write the manifest atomically, the (long) per-stage records last so the header reads first."""
        self.record["updated"] = _now()
        self.record["stages"] = self.record.pop("stages")
        write_json(self.path, self.record)

    def mark_interrupted(self, kept: str) -> None:
        """After a stop (Ctrl-C, SIGTERM, the web app's shutdown): the stages that were running say
        ``interrupted`` and the run says when and what was kept, rather than "running" for ever. The next
        run of the same command sets them running again and resumes (``update_header`` drops the note)."""
        for stage in self.record["stages"].values():
            if isinstance(stage, dict) and stage.get("status") == "running":
                stage["status"] = "interrupted"
        self.record["interrupted"] = {"at": _now(), "kept": kept}
        self.save()

    # -- stages -------------------------------------------------------------------------------------

    def stage(self, name: str) -> dict[str, Any]:
        return self.record["stages"].setdefault(name, {"status": "pending", "frames": {}})

    def stale_stages(self, settings: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
        """Stages holding results made with other settings than ``settings``, with what changed."""
        stale = {}
        for name, wanted in settings.items():
            recorded = self.record["stages"].get(name, {})
            if recorded.get("frames") or recorded.get("status") == "done":
                changes = differences(recorded.get("settings"), wanted)
                if changes:
                    stale[name] = changes
        return stale

    def begin(self, name: str, settings: dict[str, Any], total: int) -> dict[str, Any]:
        """Mark a stage as running with these settings and ``total`` frames; finished frames are kept."""
        record = self.stage(name)
        record.update(settings=settings, total=total)
        if record["status"] != "done":
            record["status"] = "running"
        record.setdefault("started", _now())
        self.save()
        return record

    def done_frames(self, name: str) -> set[int]:
        return {int(index) for index in self.stage(name)["frames"]}

    def frame_done(self, name: str, index: int, info: dict[str, Any] | None = None) -> None:
        """Record one finished frame (its files already in place) and write the manifest."""
        self.stage(name)["frames"][f"{index:04d}"] = info or {}
        self.save()

    def finish(self, name: str, **info: Any) -> None:
        record = self.stage(name)
        record.update(status="done", finished=_now(), **info)
        self.save()

    def is_done(self, name: str, settings: dict[str, Any]) -> bool:
        record = self.record["stages"].get(name)
        return bool(record) and record.get("status") == "done" and record.get("settings") == settings

    def supersede(self, stages: Iterable[str], paths: Iterable[Path]) -> Path | None:
        """Move ``paths`` (a stage's outputs) to ``superseded/<time>/`` (``mtransfer.files.supersede``) and
        forget those stages' progress."""
        moved_to = supersede(self.folder, paths)
        for name in stages:
            self.record["stages"].pop(name, None)
        self.save()
        return moved_to
