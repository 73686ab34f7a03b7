"""Clocks, memory meters and device peaks shared by the benchmarks.

Timing rules: every measured region starts and ends with a device synchronisation, so wall-clock time
covers all the work queued inside it. Phases *inside* one pass are timed without synchronising (that would
change what is measured): on CUDA with events recorded on the current stream, on the CPU with
``perf_counter`` (CPU kernels run synchronously, so a reading marks the end of all earlier work).
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Dense (no sparsity) peak TFLOP/s by device family and math precision, from NVIDIA's data sheets.
# Matched against torch.cuda.get_device_name() in order: more specific names first.
PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "NVL"), {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("H200", "NVL"), {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("H100", "PCIe"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("H100",), {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM (HBM3)
    (("H200",), {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # same compute as H100 SXM
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The data-sheet peak for ``precision`` (bf16, fp16, tf32, fp32) on a named GPU; None if unknown."""
    lowered = device_name.lower()
    for keys, peaks in PEAK_TFLOPS:
        if all(key.lower() in lowered for key in keys):
            return peaks.get(precision)
    return None


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device name, library versions, threads."""
    import diffusers
    import torchvision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        name, memory = platform.processor() or platform.machine(), None
    return {
        "type": device.type,
        "name": name,
        "memory_bytes": memory,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run ``call`` between two synchronisations; its result and the wall-clock seconds it took."""
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return result, time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


class PeakMemory:
    """Peak memory of a region: allocated CUDA memory, or the process's resident set on the CPU.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak (weights included). CPU: the
    resident set size sampled every 2 ms by a thread, minus what was resident before the region (so the
    already-loaded weights are not counted); ``None`` where ``/proc`` is missing.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.metric = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_increase"
        self.peak_bytes: int | None = None

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        before = _resident_bytes()
        if before is None:
            yield self
            return
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.wait(0.002):
                peak[0] = max(peak[0], _resident_bytes() or 0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            done.set()
            sampler.join()
            peak[0] = max(peak[0], _resident_bytes() or 0)
            self.peak_bytes = peak[0] - before


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Stamp(torch.autograd.Function):
    """Identity whose backward calls ``stamp``: marks when a gradient passes this point."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, stamp: Callable[[], None]) -> torch.Tensor:
        ctx.stamp = stamp
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.stamp()
        return grad, None


class PhaseTimer:
    """Forward and backward time of named modules inside one pass, without synchronising mid-pass.

    Forward: pre- and post-forward hooks stamp the start and end of each call. Backward: the module's
    inputs and outputs that need gradients are wrapped in an identity autograd function that stamps when
    the gradient passes, so a module's backward runs from the gradient reaching its output to the gradient
    leaving its last input. Modules called several times per pass add up their forward calls.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], device: torch.device) -> None:
        self.modules = dict(modules)
        self.device = device
        self._stamps: dict[str, list[Any]] = defaultdict(list)
        self._start: Any = None

    def _now(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, stamp: Any) -> float:
        if self.device.type == "cuda":
            return self._start.elapsed_time(stamp) / 1000.0
        return stamp - self._start

    def _stamper(self, key: str) -> Callable[[], None]:
        return lambda: self._stamps[key].append(self._now())

    @contextmanager
    def attached(self) -> Iterator[PhaseTimer]:
        """Hooks on the modules while the block runs; removed afterwards."""
        handles = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post_hook(name)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, name: str) -> Callable[..., tuple[tuple, dict]]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            self._stamps[f"{name}.fwd_start"].append(self._now())
            mark = self._stamper(f"{name}.bwd_end")
            return _map_tensors(args, mark), _map_tensors(kwargs, mark)

        return hook

    def _post_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            self._stamps[f"{name}.fwd_end"].append(self._now())
            return _map_tensors(output, self._stamper(f"{name}.bwd_start"))

        return hook

    def start(self) -> None:
        synchronize(self.device)
        self._stamps.clear()
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        """Seconds per phase of the pass since ``start``: ``<name>_fwd``, ``<name>_bwd`` and ``total``."""
        end = self._now()
        synchronize(self.device)
        at = {key: [self._seconds(stamp) for stamp in stamps] for key, stamps in self._stamps.items()}
        phases: dict[str, float] = {}
        for name in self.modules:
            starts, ends = at.get(f"{name}.fwd_start", []), at.get(f"{name}.fwd_end", [])
            phases[f"{name}_fwd"] = sum(b - a for a, b in zip(starts, ends))
        for name in self.modules:
            starts, ends = at.get(f"{name}.bwd_start", []), at.get(f"{name}.bwd_end", [])
            phases[f"{name}_bwd"] = max(ends) - min(starts) if starts and ends else 0.0
        phases["total"] = self._seconds(end)
        return phases


def _map_tensors(value: Any, stamp: Callable[[], None]) -> Any:
    """``value`` with every tensor that needs a gradient wrapped in ``_Stamp`` (tuples, lists, dicts too).

    Dict-like outputs (diffusers' ``BaseOutput``) are updated in place so their attributes follow.
    """
    if isinstance(value, torch.Tensor):
        return _Stamp.apply(value, stamp) if value.requires_grad and torch.is_grad_enabled() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(item, stamp) for item in value)
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _map_tensors(value[key], stamp)
    return value


def run_script(main: Callable[[], Any]) -> None:
    """Run a benchmark's ``main`` as a script: a user-fixable problem is one red line and exit status 2."""
    import sys

    from rich.console import Console
    from rich.markup import escape

    from mtransfer.errors import MtransferError

    try:
        main()
    except MtransferError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
