"""One reading of device names (``--device``, ``model.device``) for every command: checked before any work."""

from __future__ import annotations

import torch

from mtransfer.errors import DeviceError

DEVICE_HELP = "auto, cpu, cuda, cuda:1, mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def parse_device(name: str, option: str = "--device") -> torch.device:
    """The torch device ``name`` means on this machine, or a one-line ``DeviceError``.

    ``auto`` picks CUDA when a GPU is visible, else the CPU. Names torch does not know, GPUs this
    machine does not have (``cuda`` without CUDA, ``cuda:3`` with two GPUs, ``mps`` off Apple silicon)
    and other device types (``meta``, ``xla``, ...) are refused, naming ``option``.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{option} {name}: not a device name (use {DEVICE_HELP})") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {name}: no CUDA GPU is visible to torch; use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{option} {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"{option} {name}: Apple's MPS is not available on this machine; use --device cpu or auto")
        return device
    raise DeviceError(f"{option} {name}: mtransfer runs on the CPU, CUDA or MPS only (use {DEVICE_HELP})")


def release_memory(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back to the GPU after models were dropped (Ray workers on
    the same GPUs, or the next variant of a benchmark, then get all of its memory); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
