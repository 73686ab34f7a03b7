"""Peak memory of one guided pass, measured by following every allocation and free, without a GPU.

The real pass (``mtransfer.guidance.sampler.guided_eps``, unchanged) runs on fake tensors
(``torch._subclasses.FakeTensorMode``: shapes, dtypes and storages, no data, no memory), with the real
SD v1 UNet/VAE/CLIP configs and RAFT's architecture. ``AllocationTracker``, a ``TorchDispatchMode`` above
the fake mode, sees every aten op, including autograd's backward and checkpointing's recomputation, adds
each new storage an op returns to the live total and subtracts it when the storage dies (a weak reference).
The report splits the peak into:

- ``weights``: every parameter and buffer of the UNet, VAE, text encoder and RAFT (resident during an edit);
- ``saved_for_backward``: what is alive when the backward pass starts (inputs, activations autograd keeps,
  the forward's outputs);
- ``transient``: the rest of the peak (the largest temporaries of the forward or backward).

What it does not see, and a GPU adds: the CUDA context (~0.5 GiB, outside PyTorch's allocator), cuDNN/cuBLAS
workspaces, and the caching allocator's rounding and fragmentation beyond 512-byte blocks. Autocast is
CPU autocast (its op lists are close to CUDA's, not identical). Values are not computed: a scalar read
(``.item()``, ``float()``) gets a stand-in, so nothing that depends on values (none in the pass) is checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mtransfer.speed import fast_path, parse_fast_path

DEFAULT_SPEEDS = (
    "baseline", "sdpa", "bf16", "bf16+sdpa", "checkpoint-unet", "checkpoint-vae", "checkpoint-raft",
    "checkpoint", "sdpa+checkpoint", "fast", "fast+checkpoint",
)
"""The settings ``mtransfer bench --memory`` reports by default (each for every ``--batch``)."""

GIB = 2**30
BLOCK = 512
"""The CUDA caching allocator hands out multiples of 512 bytes; storages are rounded up to it."""

aten = torch.ops.aten


def _stand_in(func: Any, args: tuple) -> Any:
    """A value for an op that would read data the fake tensors do not have; ``None`` for any other op."""
    if func is aten._local_scalar_dense.default:
        dtype = args[0].dtype
        return True if dtype == torch.bool else 1.0 if dtype.is_floating_point else 1
    if func is aten.equal.default:  # the RAFT source cache asks whether the source is unchanged: it is
        return True
    return None


class AllocationTracker(TorchDispatchMode):
    """Live bytes of every storage created inside it, their peak, and their total when backward starts."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.at_backward: int | None = None
        self._storages: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        stand_in = _stand_in(func, args)
        if stand_in is not None:
            return stand_in
        if self.at_backward is None and torch._C._current_graph_task_id() != -1:
            self.at_backward = self.live
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self._follow(value)
        return out

    def _follow(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._storages and self._storages[key]() is not None:
            return  # a view or an in-place result: no new memory
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self.live += size
        self.peak = max(self.peak, self.live)
        self._storages[key] = weakref.ref(storage, lambda _ref, key=key, size=size: self._freed(key, size, _ref))

    def _freed(self, key: int, size: int, ref: weakref.ref) -> None:
        if self._storages.get(key) is ref:
            del self._storages[key]
        self.live -= size


def storage_bytes(modules: Sequence[torch.nn.Module]) -> int:
    """Bytes of the distinct storages of the modules' parameters and buffers."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            seen[storage._cdata] = -(-storage.nbytes() // BLOCK) * BLOCK
    return sum(seen.values())


@dataclasses.dataclass(frozen=True)
class MemoryFigure:
    """One measured pass: the peak and its three parts, in bytes."""

    speed: str
    batch: int
    size: int
    weights: int
    saved_for_backward: int
    transient: int

    @property
    def peak(self) -> int:
        return self.weights + self.saved_for_backward + self.transient


@contextmanager
def fake_models(size: str = "real", raft: str = "raft-large") -> Iterator[tuple[Any, Any]]:
    """SD v1 (``real`` configs, or ``tiny``) and RAFT built on fake tensors, inside the fake mode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mtransfer.bench.guided_step import build_models, BenchSettings

    with FakeTensorMode(allow_non_fake_inputs=True), _uncalibrated():
        settings = BenchSettings(device="cpu", size=64, variants=("baseline",), model=size, raft=raft)
        yield build_models(settings)


@contextmanager
def _uncalibrated() -> Iterator[None]:
    """The random VAE's latent scale is calibrated on data, which fake tensors do not have; it only
    scales values, never shapes, so it keeps the config's."""
    from mtransfer.diffusion import stable_diffusion

    calibrate = stable_diffusion._calibrate_latent_scale
    stable_diffusion._calibrate_latent_scale = lambda vae: None
    try:
        yield
    finally:
        stable_diffusion._calibrate_latent_scale = calibrate


def measure_pass(backend: Any, estimator: Any, size: int, batch: int, speed: str) -> MemoryFigure:
    """Follow the allocations of one guided pass of ``batch`` images at ``size``² with ``speed`` switches.

    Call it on fake models (``fake_models``) for a figure at any size, or on real CPU models to compare
    the method with the allocator.
    """
    from mtransfer.bench.guided_step import PAPER, SCHEDULE_POSITION
    from mtransfer.diffusion import ddim_timesteps
    from mtransfer.flows import reference_occlusion_mask, rotation
    from mtransfer.guidance import MotionTarget, guided_eps

    weights = storage_bytes([backend.unet, backend.vae, backend.text_encoder, *_modules(estimator)])
    schedule = ddim_timesteps(len(backend.alphas_cumprod), PAPER.steps)
    t = schedule[int(SCHEDULE_POSITION * len(schedule))]
    channels, height, width = backend.latent_size(size, size)
    text = backend.text_encoder.config
    # NHWC weights hold the same bytes, and fake parameters cannot be re-laid out in place: layout is left out.
    switches = dataclasses.replace(parse_fast_path(speed), channels_last=False)
    tracker = AllocationTracker()
    with fast_path(backend, estimator, switches) as (fast_backend, fast_estimator), tracker:
        with torch.no_grad():
            a_t = float(backend.alphas_cumprod[t])  # a stand-in on fake tensors: values never change memory
            source = torch.rand(batch, 3, size, size)
            flow = rotation(size, size, 5.0)[None].expand(batch, -1, -1, -1).contiguous()
            target = MotionTarget(source=source, flow=flow, occlusion=reference_occlusion_mask(flow))
            cond = torch.randn(batch, text.max_position_embeddings, text.hidden_size)
            uncond = torch.randn_like(cond)
            latent = torch.randn(batch, channels, height, width)
            if switches.cache_source:  # the cache is filled once per edit, not per pass
                fast_estimator(source, source)
        tracker.peak, tracker.at_backward = tracker.live, None  # from here on: the pass itself
        guided_eps(
            fast_backend, fast_estimator, latent, t, a_t, cond, uncond, target,
            cfg_scale=PAPER.cfg_scale, guidance_scale=PAPER.guidance_weight, clip_grad=PAPER.clip_grad,
        )
    held = tracker.at_backward or 0
    return MemoryFigure(speed=speed, batch=batch, size=size, weights=weights,
                        saved_for_backward=held, transient=tracker.peak - held)


def _modules(estimator: Any) -> list[torch.nn.Module]:
    return [estimator] if isinstance(estimator, torch.nn.Module) else []


def memory_report(size: int, batches: Sequence[int], speeds: Sequence[str], model: str = "real",
                  raft: str = "raft-large") -> dict[str, Any]:
    """Every ``speed`` x ``batch`` pass at ``size``² measured on one set of fake models (JSON-ready)."""
    for spec in speeds:
        parse_fast_path(spec)
    rows = []
    with fake_models(model, raft) as (backend, estimator):
        for batch in batches:
            for spec in speeds:
                figure = measure_pass(backend, estimator, size, batch, spec)
                rows.append({**dataclasses.asdict(figure), "peak": figure.peak})
    return {"benchmark": "guided_pass_memory", "model": model, "raft": raft, "size": size,
            "method": "FakeTensorMode + AllocationTracker (mtransfer.bench.memory)", "rows": rows}


def memory_table(report: dict[str, Any]) -> Any:
    """The report as a rich table, GiB."""
    from rich.table import Table

    table = Table(title=f"peak memory of one guided pass at {report['size']}px ({report['model']} SD v1 + "
                        f"{report['raft']}, measured on fake tensors), GiB")
    for column in ("speed", "batch", "weights", "saved for backward", "transient", "peak", "fits 12 GiB"):
        table.add_column(column, justify="left" if column == "speed" else "right")
    for row in report["rows"]:
        table.add_row(row["speed"], str(row["batch"]), *(f"{row[key] / GIB:.2f}" for key in
                      ("weights", "saved_for_backward", "transient", "peak")),
                      "yes" if row["peak"] <= 12 * GIB else "no")
    return table


CROSS_CHECK_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
"""glibc then maps every allocation above 64 KiB on its own and unmaps it on free, so the resident set
follows the tensors instead of keeping freed memory for reuse."""


def rss_cross_check(size: int = 128, model: str = "tiny", raft: str = "raft-small",
                    speed: str = "baseline") -> dict[str, Any]:
    """The same pass on real CPU tensors in a fresh process: the tracker's figure and the measured rise
    of the resident set (``PeakMemory``), both excluding the weights."""
    done = subprocess.run(
        [sys.executable, "-m", "mtransfer.bench.memory", str(size), model, raft, speed],
        env={**os.environ, **CROSS_CHECK_ENV}, capture_output=True, text=True, timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"memory cross-check failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_probe(size: int, model: str, raft: str, speed: str) -> dict[str, Any]:
    import gc

    from mtransfer.bench.guided_step import BenchSettings, build_models
    from mtransfer.bench.measure import PeakMemory

    settings = BenchSettings(device="cpu", size=size, variants=("baseline",), model=model, raft=raft)
    backend, estimator = build_models(settings)
    measure_pass(backend, estimator, size, 1, speed)  # first use: lazy initialisations are not the pass
    gc.collect()
    meter = PeakMemory(torch.device("cpu"))
    with meter.measure():
        figure = measure_pass(backend, estimator, size, 1, speed)
    return {"size": size, "model": model, "raft": raft, "speed": figure.speed,
            "tracked_bytes": figure.saved_for_backward + figure.transient, "rss_bytes": meter.peak_bytes}


if __name__ == "__main__":  # the cross-check's fresh process: python -m mtransfer.bench.memory SIZE MODEL RAFT SPEED
    torch.set_num_threads(1)
    print(json.dumps(_rss_probe(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])))
