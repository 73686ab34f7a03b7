"""``mtransfer doctor``: what will happen on this machine, before a multi-hour run starts.

For the machine: torch and its CUDA build, the NVIDIA driver, each GPU with its free memory (or that there
is none). For each preset: whether its weights are found (``mtransfer.app.models.weights_found``, the
loaders' own lookups), the memory one guided pass needs (measured on fake tensors by
``mtransfer.bench.memory``, not estimated) against what is free, and the expected time per edit and per
clip: FLOPs per pass (counted in the same fake pass) x passes / (the device's data-sheet peak x
``EFFICIENCY``), marked as an estimate. When a preset cannot run, one line says what to change.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtransfer.app.models import CPU_ASSUMED_TFLOPS, load_backend, weights_found
from mtransfer.app.settings import RunSettings, load_settings
from mtransfer.bench.measure import peak_tflops
from mtransfer.bench.memory import GIB, MemoryFigure, fake_mode, measure_pass
from mtransfer.errors import MtransferError
from mtransfer.presets import available_pipelines
from mtransfer.speed import parse_fast_path

EFFICIENCY = 0.4
"""Assumed share of the data-sheet peak a guided pass sustains on a GPU (an estimate until
``python -m benchmarks.gpu_acceptance`` has measured it on that GPU)."""

CUDA_CONTEXT = GIB // 2
"""What the CUDA context takes on a GPU outside PyTorch's allocator (about 0.5 GiB)."""

CLIP_FRAMES = 48
"""Frames a clip is assumed to have when a preset takes every frame (``video.max_frames = 0``)."""

FIXES_TRIED = ("checkpoint", "sdpa+checkpoint", "bf16+sdpa+checkpoint")
"""Speed settings tried, in this order, when a preset does not fit: fp32 math first."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total: int
    free: int


@dataclass(frozen=True)
class Machine:
    """What this machine offers: library builds, driver, GPUs, and on the CPU the memory available."""

    torch: str
    cuda_build: str | None
    driver: str
    gpus: tuple[Gpu, ...]
    cpu_threads: int
    ram_available: int | None

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def machine() -> Machine:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(Gpu(index, torch.cuda.get_device_name(index), total, free))
    return Machine(torch.__version__, torch.version.cuda, _driver(), tuple(gpus), os.cpu_count() or 1,
                   _ram_available())


def _driver() -> str:
    version = Path("/proc/driver/nvidia/version")
    if version.is_file():
        first = version.read_text(errors="replace").splitlines()[0]
        return " ".join(first.split()[:8])
    return "no NVIDIA driver found (/proc/driver/nvidia/version is missing)"


def _ram_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class PresetCheck:
    """One preset on this machine; ``problems`` empty means it can run here."""

    name: str
    device: str
    weights: list[tuple[str, bool, str]]
    memory: MemoryFigure | None
    available: int | None
    guided_passes: int
    plain_passes: int
    frames: int
    seconds_per_edit: float | None
    rate_tflops: float | None
    problems: list[str] = field(default_factory=list)
    fix: str = ""

    @property
    def needed(self) -> int | None:
        if self.memory is None:
            return None
        return self.memory.peak + (CUDA_CONTEXT if self.device.startswith("cuda") else 0)


def _precision(speed: str) -> str:
    switches = parse_fast_path(speed) if speed else None
    if switches is None:
        return "fp32"
    return switches.autocast or ("tf32" if switches.tf32 else "fp32")


class FakeModels:
    """Fake-tensor models by what they are built from, shared between presets (paper and preview)."""

    def __init__(self) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        self._cache: dict[tuple, tuple[Any, Any]] = {}
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)  # the models' own: see fake_mode

    def get(self, settings: RunSettings) -> tuple[Any, Any]:
        from mtransfer.app.models import load_estimator
        from mtransfer.diffusion.stable_diffusion import random_stable_diffusion
        from mtransfer.estimators.raft import RaftEstimator

        model, estimator = settings.model, settings.estimator
        height, width = model.size or (512, 512)
        key = (model.model if model.model in ("tiny", "exact") else "real", model.dtype,
               (height, width, model.family_radius, model.family_step, model.family_rotations, model.family_scales)
               if model.model == "exact" else None, estimator)
        if key not in self._cache:
            if model.model == "exact":  # built for real (small) outside the fake mode: it checks its motions' values
                from torch._subclasses.fake_tensor import unset_fake_temporarily

                with unset_fake_temporarily(), torch.utils._python_dispatch._disable_current_modes():
                    backend = load_backend(model, _smooth_image(height, width), torch.device("cpu"))
            else:
                backend = random_stable_diffusion("tiny" if model.model == "tiny" else "real")
            random = dataclasses.replace(estimator, weights="random") if estimator.name.startswith("raft-") else estimator
            flow = load_estimator(random)
            if isinstance(flow, RaftEstimator) and flow.autocast:  # its CPU twin: the same mixed precision in bf16
                flow = RaftEstimator(flow.model, flow.name, flow.iterations, True, "cpu", torch.bfloat16)
            self._cache[key] = (backend, flow)
        return self._cache[key]


def _smooth_image(height: int, width: int) -> torch.Tensor:
    coarse = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)[0]


def check_preset(name: str, here: Machine, models: FakeModels, overrides: tuple[str, ...] = ()) -> PresetCheck:
    """Weights, memory, time and a fix for one preset on ``here``."""
    settings = load_settings(name, overrides)
    config = settings.guidance
    weights = config.step_weights()
    requested = settings.model.device
    device = here.device if requested == "auto" else requested
    frames = settings.video.max_frames or CLIP_FRAMES
    check = PresetCheck(
        name=name, device=device,
        weights=weights_found(settings.model, [settings.estimator, settings.video.flow_estimator]),
        memory=None, available=None,
        guided_passes=config.recursions * sum(1 for w in weights if w > 0),
        plain_passes=config.recursions * sum(1 for w in weights if w == 0),
        frames=frames, seconds_per_edit=None, rate_tflops=None,
    )
    for what, found, where in check.weights:
        if not found:
            check.problems.append(f"{what}: {where}")
            check.fix = check.fix or _weights_fix(what, settings)
    if device.startswith("cuda") and not here.gpus:
        check.problems.append(f"model.device = {requested!r} but no CUDA GPU is visible to torch")
        check.fix = check.fix or "--set model.device=\"cpu\" (slow for Stable Diffusion) or run it on a GPU machine"
    check.memory = _measure(settings, models, settings.model.speed)
    gpu = max(here.gpus, key=lambda g: g.free) if here.gpus else None
    check.available = gpu.free if device.startswith("cuda") and gpu else here.ram_available
    if check.available is not None and check.needed > check.available:
        where = f"{gpu.name} has {check.available / GIB:.1f} GiB free" if device.startswith("cuda") and gpu \
            else f"{check.available / GIB:.1f} GiB of RAM available"
        check.problems.append(f"one pass needs {check.needed / GIB:.1f} GiB, {where}")
        check.fix = check.fix or _memory_fix(settings, models, check)
    if device.startswith("cuda") and gpu:
        peak = peak_tflops(gpu.name, _precision(settings.model.speed))
        check.rate_tflops = None if peak is None else peak * EFFICIENCY
    else:
        check.rate_tflops = CPU_ASSUMED_TFLOPS
    if check.rate_tflops:
        work = check.guided_passes * check.memory.flops + check.plain_passes * check.memory.plain_flops
        check.seconds_per_edit = work / (check.rate_tflops * 1e12)
    return check


def _measure(settings: RunSettings, models: FakeModels, speed: str) -> MemoryFigure:
    with fake_mode(models.mode):
        backend, estimator = models.get(settings)
        size = settings.model.size or (512, 512)
        unguided = any(w == 0 for w in settings.guidance.step_weights())
        return measure_pass(backend, estimator, size, settings.video.batch, speed, settings.guidance, unguided)


def _weights_fix(what: str, settings: RunSettings) -> str:
    if what.startswith("Stable Diffusion"):
        return (f"on a connected machine `huggingface-cli download {settings.model.model}` and copy its cache "
                "(HF_HOME) here, or --set model.model=/path/to/diffusers-folder; without weights: --pipeline offline-demo")
    return ("copy the RAFT file named above into that path from a connected machine, or give a local .pth "
            "(estimator.weights / video.weights); without weights: --pipeline offline-demo")


def _memory_fix(settings: RunSettings, models: FakeModels, check: PresetCheck) -> str:
    """The first speed setting that fits (fp32 math first), else the size to halve to."""
    if settings.model.model != "exact":
        extra = CUDA_CONTEXT if check.device.startswith("cuda") else 0
        for spec in FIXES_TRIED:
            combined = "+".join(part for part in (settings.model.speed, spec) if part)
            try:
                figure = _measure(settings, models, combined)
            except MtransferError:  # contradicts the preset's own switches, or needs RAFT: not a fix here
                continue
            if figure.peak + extra <= check.available:
                math = "same fp32 math" if "bf16" not in combined else "bf16 autocast: check its drift first"
                return f"--set model.speed=\"{combined}\" ({figure.peak / GIB:.1f} GiB; {math})"
    height, width = settings.model.size or (512, 512)
    return f"--size {height // 2 // 8 * 8}x{width // 2 // 8 * 8} (a smaller working size), or a GPU with more memory"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.1f} s"


def doctor(pipeline: str, console: Any) -> int:
    """Print the screen; 0 when ``pipeline`` can run here, 1 when it cannot."""
    from rich.table import Table

    here = machine()
    console.print(f"[bold]This machine[/]: torch {here.torch}, CUDA build {here.cuda_build or 'none (CPU-only torch)'}, "
                  f"driver: {here.driver}", highlight=False)
    if here.gpus:
        for gpu in here.gpus:
            console.print(f"  cuda:{gpu.index} {gpu.name}: {gpu.free / GIB:.1f} of {gpu.total / GIB:.1f} GiB free",
                          highlight=False)
    else:
        ram = "unknown" if here.ram_available is None else f"{here.ram_available / GIB:.1f} GiB"
        console.print(f"  [yellow]no CUDA GPU is visible to torch[/]: everything runs on the CPU "
                      f"({here.cpu_threads} threads, {ram} RAM available)", highlight=False)
    models = FakeModels()
    names = list(dict.fromkeys([*available_pipelines(), pipeline])) if pipeline in available_pipelines() \
        else [*available_pipelines(), pipeline]
    checks = [check_preset(name, here, models) for name in names]
    table = Table(title="presets here (memory measured on fake tensors; times are estimates)")
    for column in ("preset", "device", "weights", "pass needs", "free", "passes/edit", "per edit", "per clip",
                   "can run"):
        table.add_column(column, justify="left" if column in ("preset", "weights", "can run") else "right")
    for check in checks:
        weights = "none needed" if not check.weights else ", ".join(
            f"{what.replace('Stable Diffusion', 'SD').replace(' weights', '')} {'found' if found else '[red]MISSING[/]'}"
            for what, found, _ in check.weights)
        table.add_row(
            check.name + (" (chosen)" if check.name == pipeline else ""), check.device, weights,
            f"{check.needed / GIB:.2f} GiB", "n/a" if check.available is None else f"{check.available / GIB:.1f} GiB",
            f"{check.guided_passes}+{check.plain_passes}", "~" + _duration(check.seconds_per_edit),
            f"~{_duration(None if check.seconds_per_edit is None else check.seconds_per_edit * max(check.frames - 1, 1))}"
            f" ({check.frames} fr.)",
            "[green]yes[/]" if not check.problems else "[red]no[/]",
        )
    console.print(table)
    for check in checks:
        if check.problems and check.name != pipeline:
            console.print(f"{check.name}: {check.problems[0]}; fix: {check.fix}", highlight=False)
    console.print(
        f"Estimates: FLOPs per pass (counted on fake tensors) x passes / (data-sheet peak x {EFFICIENCY:g}) on a GPU, "
        f"or an assumed {CPU_ASSUMED_TFLOPS:g} TFLOP/s on the CPU; measure with python -m benchmarks.gpu_acceptance. "
        "Passes: guided+unguided per edit; a clip edits every frame but the first. "
        f"GPU memory adds {CUDA_CONTEXT / GIB:g} GiB of CUDA context.", highlight=False)
    chosen = checks[names.index(pipeline)]
    if chosen.problems:
        for problem in chosen.problems:
            console.print(f"[red]{pipeline} cannot run here[/]: {problem}", highlight=False)
        console.print(f"fix: {chosen.fix}", highlight=False)
        return 1
    console.print(f"[green]{pipeline} can run here[/] on {chosen.device}.", highlight=False)
    return 0
