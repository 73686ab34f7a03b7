"""Reading and atomically writing the files mtransfer produces: images, JSON, arrays.

Every write goes to a temporary file in the destination folder and is renamed into place, so a run
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtransfer.errors import NAME_MAX, OutputError, input_error, name_too_long_to_write, output_error, require_file
from mtransfer.layouts import EDIT_RECORD, SUPERSEDED

MAX_IMAGE_PIXELS = 120_000_000
"""Largest image mtransfer reads (120 megapixels, e.g. 12000x10000, above any phone camera): decoding
a bigger one needs gigabytes of memory for a picture that is worked on at 512x512 anyway. Pillow's own
limit (89 megapixels, with a warning, and an error at twice that) is replaced by this one."""

_UMASK = os.umask(0)
os.umask(_UMASK)

# What ``atomic_path`` names its temporaries: ``.<stem>.<8 random characters><suffix>`` (``mkstemp``).
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)?$")


def _failed_write(exc: BaseException) -> bool:
    """An exception that means the bytes did not reach the disk: OSError, or torch's wrapped write errors."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RuntimeError) and any(
        mark in str(exc) for mark in ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it.

    A write that fails (disk full, read-only folder, a file where a folder goes, torch's "unexpected
    pos") becomes an ``OutputError`` naming ``path``; the previous file at ``path``, if any, is untouched.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp_path, path)
    except Exception as exc:
        if _failed_write(exc) and not isinstance(exc, OutputError):
            raise output_error(path, exc) from exc
        raise
    finally:
        if tmp_path is not None:
            try:
                tmp_path.unlink(missing_ok=True)
            except OSError:
                pass


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary left by ``atomic_path`` (a write killed before its rename)."""
    return _TEMPORARY.match(path.name) is not None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the half-written temporaries a killed run left in ``folder`` (recursively); only call this
    while holding the folder's run lock, when no write of this folder can be in progress. They are
    never results: a result only exists once its temporary has been renamed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.rglob(".*"):
            if path.is_file() and is_temporary(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def ensure_writable(folder: str | Path, option: str = "--out") -> Path:
    """Check, before any work, that results can be written into ``folder`` (created later if missing).

    The folder, or the nearest existing folder above it, must be a folder and accept a new file (tried
    with a probe file that is removed again, so read-only mounts and permissions are both caught).
    """
    folder = Path(folder)
    if any(len(os.fsencode(part)) > NAME_MAX for part in folder.parts):  # refused only once a write is tried
        raise name_too_long_to_write(folder)
    existing = folder
    try:
        while not existing.exists():  # a name over the file system's limit raises here, not in a write
            if existing.parent == existing:
                break
            existing = existing.parent
    except OSError as exc:
        raise output_error(folder, exc) from None
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
        raise OutputError(f"{folder}: {where}, not a folder; choose another {option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mtransfer-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


RESCUE_FOLDER = "mtransfer-rescue"
_RESCUE_RECORD = "rescued.json"


def _short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def rescue_folder(folder: str | Path, key: Any) -> Path:
    """Where results meant for ``folder`` and made with ``key`` (what they depend on, JSON-ready) are kept
    when writing them there failed: ``<temp>/mtransfer-rescue/<name>-<folder hash>-<key hash>``, so a
    rerun of the same command finds them and a rerun with other settings does not."""
    folder = Path(folder)
    name = folder.name[:100]  # the hashes tell folders apart; a name near the file system's limit must still fit
    return Path(tempfile.gettempdir()) / RESCUE_FOLDER / f"{name}-{_short_hash(str(folder.resolve()))}-{_short_hash(key)}"


@contextmanager
def rescue_on_failure(folder: str | Path, key: Any, save: Callable[[Path], Any]) -> Iterator[None]:
    """Around the final writes of a command whose work is all in memory: when one fails (disk full, ...),
    ``save(elsewhere)`` writes the results into ``rescue_folder(folder, key)`` (beside a record of ``key``)
    and the error says where, so that hours of computing are not lost to a full disk: the same command run
    again finds them there (``take_rescued``) and only writes them."""
    try:
        yield
    except OutputError as exc:
        target = rescue_folder(folder, key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            save(fresh)
            write_json(fresh / _RESCUE_RECORD, {"folder": str(Path(folder).resolve()), "key": key})
            shutil.rmtree(target, ignore_errors=True)  # an older rescue of the very same results
            os.replace(fresh, target)
        except (OSError, OutputError):
            raise exc from None
        raise OutputError(f"{exc}; the results were saved to {target}: run the same command again to write them "
                          f"to {folder} without recomputing") from None


def take_rescued(folder: str | Path, key: Any, clear: Callable[[], Any] | None = None) -> Path | None:
    """Write the results a failed write left in ``rescue_folder(folder, key)`` into ``folder`` (``run.json``
    last) and remove the rescue; None when there are none for exactly this folder and ``key``. When this
    write fails too, the rescue stays and the error says so. ``clear`` as for ``staged_folder``."""
    rescued = rescue_folder(folder, key)
    try:
        record = json.loads((rescued / _RESCUE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    plain_key = json.loads(json.dumps(key, default=str))
    if not isinstance(record, dict) or record.get("key") != plain_key or record.get("folder") != str(Path(folder).resolve()):
        return None
    try:
        with staged_folder(folder, clear=clear) as stage:
            for path in rescued.rglob("*"):
                if path.is_file() and path.name != _RESCUE_RECORD:
                    target = stage / path.relative_to(rescued)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        shutil.copy2(path, target)
                    except OSError as exc:
                        raise output_error(target, exc) from None
    except OutputError as exc:
        raise OutputError(f"{exc}; the earlier results are still in {rescued}") from None
    shutil.rmtree(rescued, ignore_errors=True)
    return rescued


def other_rescues(folder: str | Path, key: Any) -> list[tuple[Path, Any]]:
    """Rescued results meant for ``folder`` but made with another key: ``(where, their key)``, to be named
    (never used) by a command that is about to recompute."""
    folder = Path(folder)
    mine = rescue_folder(folder, key)
    found = []
    for path in sorted(mine.parent.glob(f"{folder.name}-{_short_hash(str(folder.resolve()))}-*")):
        if path == mine or not path.is_dir():
            continue
        try:
            record = json.loads((path / _RESCUE_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("folder") == str(folder.resolve()):
            found.append((path, record.get("key")))
    return found


@contextmanager
def staged_folder(
    folder: str | Path, last: str = EDIT_RECORD, clear: Callable[[], Any] | None = None
) -> Iterator[Path]:
    """Yield a hidden sibling folder to write a set of files into; on success move them into ``folder``
    (``last`` last, so its presence means the set is complete). A failed write (disk full, ...) happens in
    the sibling, which is removed, so ``folder`` never holds half of the new set beside the old record.
    ``clear()`` runs once the new set is complete, just before it moves in (to move an old set aside)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        yield stage
        if clear is not None:
            clear()
        files = sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: p.name == last)
        for path in files:
            target = folder / path.relative_to(stage)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            except OSError as exc:
                raise output_error(target, exc) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_ready(value: Any) -> Any:
    """``value`` with its infinite floats written as the strings "inf" / "-inf" (JSON has no infinity; an
    identical picture's PSNR is one) and NaN as null (no number at all); ``with_infinities`` and
    ``json_number`` read them back. The one encoding of non-finite numbers: ``write_json`` applies it."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def with_infinities(value: Any) -> Any:
    """The inverse of ``json_ready``: the strings "inf" / "-inf" anywhere in a record become floats."""
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: with_infinities(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_infinities(v) for v in value]
    return value


def json_number(value: Any) -> float | None:
    """A number of a JSON record as a float (the strings "inf" / "-inf" as infinities), else None."""
    value = with_infinities(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def write_json(path: str | Path, record: Any) -> Path:
    """``record`` as JSON, atomically; infinities and NaN as ``json_ready`` writes them."""
    return write_bytes(path, (json.dumps(json_ready(record), indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = require_file(path, "JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise input_error(path, f"not valid JSON ({exc})") from None


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """``read_json`` for files that must hold a JSON object (manifests, ``run.json``): anything else
    (``[]``, ``null``, a number) is a one-line error naming the file."""
    record = read_json(path)
    if not isinstance(record, dict):
        raise input_error(Path(path), f"{what} must be a JSON object, found {type(record).__name__ if record is not None else 'null'}")
    return record


@contextmanager
def open_image(path: str | Path, what: str = "image") -> Iterator[Image.Image]:
    """Open an image file, refusing unreadable files and images over ``MAX_IMAGE_PIXELS`` with one line."""
    path = require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # this module checks the size itself
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            with img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise input_error(path, f"is {width}x{height} (width x height), {width * height / 1e6:.0f} "
                                      f"megapixels, over mtransfer's limit of {MAX_IMAGE_PIXELS / 1e6:.0f}; "
                                      "downscale it first")
                img.load()
                yield img
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise input_error(path, f"not a readable {what} ({exc.__class__.__name__})") from None


def _unit_array(img: Image.Image) -> np.ndarray:
    """An image as a float32 ``(H, W, 3)`` array in [0, 1], whatever its mode and bit depth.

    16- and 32-bit integer greyscale (``I;16``, ``I``: 16-bit PNGs and TIFFs) is scaled from 0..65535,
    float greyscale (``F``) is taken as already in [0, 1]; everything else goes through Pillow's RGB.
    """
    if img.mode.startswith("I") or img.mode == "F":
        scale = 1.0 if img.mode == "F" else 65535.0
        grey = np.asarray(img.convert("F") if img.mode != "F" else img, dtype=np.float32) / scale
        if not np.isfinite(grey).all():
            raise ValueError("image holds non-finite values")
        return np.repeat(grey.clip(0.0, 1.0)[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as a float tensor ``(3, H, W)`` in [0, 1]; ``size`` is (height, width) to resize to.

    8-bit images are resized by Pillow (Lanczos) and kept exact when not resized; deeper images are
    read at their full depth (a 16-bit greyscale PNG is not clipped to white) and resized the same way.
    """
    with open_image(path) as img:
        try:
            array = _unit_array(img)
        except ValueError as exc:
            raise input_error(path, str(exc)) from None
        if size is not None and img.size != (size[1], size[0]):
            if img.mode.startswith("I") or img.mode == "F":
                grey = Image.fromarray(np.ascontiguousarray(array[..., 0]), mode="F")
                grey = np.asarray(grey.resize((size[1], size[0]), Image.Resampling.LANCZOS), dtype=np.float32)
                array = np.repeat(grey.clip(0.0, 1.0)[..., None], 3, axis=2)
            else:
                resized = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS)
                array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` float in [0, 1] → ``(H, W, C)`` uint8 array."""
    image = image.detach().float().cpu().clamp(0, 1)
    return (image * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def save_image(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write an image atomically; tensors are ``(C, H, W)`` in [0, 1], arrays ``(H, W[, C])`` uint8."""
    array = to_uint8(image) if isinstance(image, torch.Tensor) else image
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return Path(path)


def supersede(folder: str | Path, paths: Iterable[Path]) -> Path | None:
    """Move ``paths`` (inside ``folder``) to ``folder/superseded/<time>/``, keeping their place below
    ``folder``; the new folder, or None when none of them exists. Nothing is deleted: the user can compare
    or restore the old results from there."""
    folder = Path(folder)
    moved_to = None
    for path in paths:
        if not path.exists():
            continue
        if moved_to is None:
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace(":", "-")
            moved_to = folder / SUPERSEDED / stamp
            for attempt in range(2, 1000):
                if not moved_to.exists():
                    break
                moved_to = folder / SUPERSEDED / f"{stamp}-{attempt}"
        target = moved_to / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    return moved_to
