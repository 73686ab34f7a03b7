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


def storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``, in allocator blocks."""
    seen = {t.untyped_storage()._cdata: -(-t.untyped_storage().nbytes() // BLOCK) * BLOCK for t in tensors}
    return sum(seen.values())


def resident_tensors(*holders: Any) -> list[torch.Tensor]:
    """The parameters, buffers and plain tensors a backend or estimator keeps between passes (its weights,
    or the exact model's images)."""
    found = []
    for holder in holders:
        if isinstance(holder, torch.nn.Module):
            found += [*holder.parameters(), *holder.buffers()]
        elif isinstance(holder, torch.Tensor):
            found.append(holder)
        elif hasattr(holder, "__dict__") and not isinstance(holder, type):
            found += resident_tensors(*(value for value in vars(holder).values()
                                        if isinstance(value, (torch.nn.Module, torch.Tensor))))
    return found


@dataclasses.dataclass(frozen=True)
class MemoryFigure:
    """One measured pass: the peak and its three parts in bytes, and its model FLOPs (guided, and unguided
    for the steps the schedule leaves unguided)."""

    speed: str
    batch: int
    size: tuple[int, int]
    weights: int
    saved_for_backward: int
    transient: int
    flops: int
    plain_flops: int

    @property
    def peak(self) -> int:
        return self.weights + self.saved_for_backward + self.transient


@contextmanager
def fake_mode(mode: Any = None) -> Iterator[None]:
    """Fake tensors for everything made inside (models included), with stand-ins for reads of values
    (``AllocationTracker``); the random VAE's latent scale, which is calibrated on data, keeps its
    config's value (it scales values, never shapes). Models made in one fake mode must be measured in
    the same ``mode`` (a ``FakeTensorMode``): another would copy their weights into new fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mtransfer.diffusion import stable_diffusion

    calibrate = stable_diffusion._calibrate_latent_scale
    stable_diffusion._calibrate_latent_scale = lambda vae: None
    try:
        with mode or FakeTensorMode(allow_non_fake_inputs=True), AllocationTracker():
            yield
    finally:
        stable_diffusion._calibrate_latent_scale = calibrate


@contextmanager
def fake_models(size: str = "real", raft: str = "raft-large") -> Iterator[tuple[Any, Any]]:
    """SD v1 (``real`` configs, or ``tiny``) and RAFT (5 iterations, as in guidance) on fake tensors."""
    from mtransfer.bench.guided_step import BenchSettings, build_models

    with fake_mode():
        yield build_models(BenchSettings(device="cpu", size=64, variants=("baseline",), model=size, raft=raft))


def measure_pass(backend: Any, estimator: Any, size: int | tuple[int, int], batch: int, speed: str,
                 guidance: Any = None, plain_flops: bool = True) -> MemoryFigure:
    """Follow the allocations of one guided pass of ``batch`` images at ``size`` with ``speed`` switches
    (``""``: models as loaded, for any backend) and count its FLOPs; ``guidance`` is a ``GuidanceSettings``
    (default: the paper's); ``plain_flops`` False skips counting the unguided pass. Call it on fake
    models for a figure at any size, or on real CPU models to compare the method with the allocator.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from mtransfer.bench.guided_step import PAPER, SCHEDULE_POSITION
    from mtransfer.diffusion import ddim_timesteps
    from mtransfer.flows import reference_occlusion_mask, rotation
    from mtransfer.guidance import MotionTarget, guided_eps
    from mtransfer.speed import speed_switches

    guidance = guidance or PAPER
    height, width = (size, size) if isinstance(size, int) else size
    weights = storage_bytes(resident_tensors(backend, estimator))
    schedule = ddim_timesteps(len(backend.alphas_cumprod), PAPER.steps)
    t = schedule[int(SCHEDULE_POSITION * len(schedule))]
    channels, latent_height, latent_width = backend.latent_size(height, width)
    # NHWC weights hold the same bytes, and fake parameters cannot be re-laid out in place: layout is left out.
    switches = dataclasses.replace(parse_fast_path(speed), channels_last=False) if speed else None
    chosen = fast_path(backend, estimator, switches) if switches else speed_switches(backend, estimator, "")
    with torch.no_grad():  # the text encoder runs once per edit, not per pass: outside the count
        cond, uncond = backend.condition(["a photo"] * batch), backend.condition([""] * batch)
    tracker = AllocationTracker()
    with chosen as (fast_backend, fast_estimator), tracker:
        with torch.no_grad():
            a_t = float(backend.alphas_cumprod[t])  # a stand-in on fake tensors: values never change memory
            source = torch.rand(batch, 3, height, width)
            flow = rotation(height, width, 5.0)[None].expand(batch, -1, -1, -1).contiguous()
            target = MotionTarget(source=source, flow=flow, occlusion=reference_occlusion_mask(flow))
            latent = torch.randn(batch, channels, latent_height, latent_width)
            if switches and switches.cache_source:  # the cache is filled once per edit, not per pass
                fast_estimator(source, source)

        def run(scale: float) -> None:
            guided_eps(fast_backend, fast_estimator, latent, t, a_t, cond, uncond, target,
                       cfg_scale=guidance.cfg_scale, guidance_scale=scale, clip_grad=guidance.clip_grad)

        tracker.peak, tracker.at_backward = tracker.live, None  # from here on: the pass itself
        run(guidance.guidance_weight)
        held, peak = tracker.at_backward or 0, tracker.peak
        # FLOPs in passes of their own: the counter's module hooks keep checkpointed activations alive longer
        with FlopCounterMode(display=False) as counter:
            run(guidance.guidance_weight)
        with FlopCounterMode(display=False) as plain:
            if plain_flops:
                run(0.0)
    return MemoryFigure(speed=speed or "as loaded", batch=batch, size=(height, width), weights=weights,
                        saved_for_backward=held, transient=peak - held, flops=counter.get_total_flops(),
                        plain_flops=plain.get_total_flops())


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
    for column in ("speed", "batch", "weights", "saved for backward", "transient", "peak", "fits 12 GiB",
                   "TFLOP/pass"):
        table.add_column(column, justify="left" if column == "speed" else "right")
    for row in report["rows"]:
        table.add_row(row["speed"], str(row["batch"]), *(f"{row[key] / GIB:.2f}" for key in
                      ("weights", "saved_for_backward", "transient", "peak")),
                      "yes" if row["peak"] <= 12 * GIB else "no", f"{row['flops'] / 1e12:.2f}")
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
