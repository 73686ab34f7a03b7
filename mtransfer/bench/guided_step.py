"""Benchmark of one motion-guided DDIM pass, the unit of work of Motion Guidance, and of its fast paths.

The paper runs 500 DDIM steps x 10 recursions = 5,000 guided passes per edit; each pass is a CFG UNet
forward, a VAE-decoder forward, a RAFT forward and the backward through all three
(``mtransfer.guidance.sampler.guided_eps``, called here unchanged). The models are Stable Diffusion v1.4
and RAFT-large built from their real configs with random weights: speed does not depend on the weights.

For every variant (a set of ``mtransfer.speed`` switches, e.g. ``bf16+sdpa``) the same pass on the same
inputs is timed after the fp32 baseline, in the same process, so speed-ups are ratios on one machine:

- ``step_s``: median wall-clock seconds per guided pass (synchronised before and after);
- ``split_s``: UNet / VAE-decoder / flow forward and backward, timed inside the pass with CUDA events
  (CPU: ``perf_counter``) from module hooks, ``other`` = the rest (energy, ``x0``, clipping, casts);
  not measured under ``torch.compile``, where hooks would break the compiled graphs;
- ``plain_cfg_s``: an unguided CFG pass (what a step costs where the guidance schedule is 0);
- ``peak_memory_bytes``: see ``mtransfer.bench.measure.PeakMemory``;
- ``flops``: model FLOPs of one pass counted by ``torch.utils.flop_counter.FlopCounterMode`` (eager, classic
  attention; recomputation under checkpointing is not useful work and is not counted), ``tflops`` and
  ``utilisation`` against the device's data-sheet peak for the variant's precision;
- ``drift``: max |difference| from the baseline of the unguided CFG eps (model precision alone), of the
  guided eps (plus the energy gradient), and of the latent after a short guided run
  (``sample_motion_guided``, same seed); absolute and relative to the baseline's max |value|.

Run ``mtransfer bench --help`` (or ``python -m benchmarks.guided_step --help`` from a checkout).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from mtransfer.bench.options import CPU_SIZE, CPU_VARIANTS, GPU_SIZE, GPU_VARIANTS, parse
from mtransfer.bench.measure import PeakMemory, PhaseTimer, device_info, median, peak_tflops, timed
from mtransfer.devices import parse_device, release_memory
from mtransfer.diffusion import ddim_timesteps, forward_noise
from mtransfer.diffusion.backends import SD_SIZE_MULTIPLE, sd_size_fix
from mtransfer.diffusion.stable_diffusion import StableDiffusionBackend, load_stable_diffusion, random_stable_diffusion
from mtransfer.errors import DeviceError, MtransferError, UsageError
from mtransfer.estimators import load_raft
from mtransfer.estimators.raft import RaftEstimator
from mtransfer.bench.plot import plot_split
from mtransfer.files import ensure_writable, write_json
from mtransfer.flows import reference_occlusion_mask, rotation
from mtransfer.guidance import GuidanceSettings, MotionTarget, guided_eps, sample_motion_guided
from mtransfer.speed import FastPath, fast_path, parse_fast_path

RANDOM_MODELS = ("real", "tiny")
PAPER = GuidanceSettings()
SCHEDULE_POSITION = 0.5
"""Where in the paper's 500-step schedule the timed pass and the short run sit (0 = noisiest)."""


@dataclass(frozen=True)
class BenchSettings:
    """What to measure.

    ``model`` is ``"real"`` (SD v1.4 architecture, random weights), ``"tiny"`` (random, for tests) or a
    diffusers folder / Hugging Face id of trained weights (to check drift on a real model);
    ``raft_weights`` is ``"random"`` or a RAFT ``.pth`` file.
    """

    device: str
    size: int
    variants: tuple[str, ...]
    repeats: int = 3
    warmup: int = 1
    model: str = "real"
    raft: str = "raft-large"
    raft_iterations: int = 5
    raft_weights: str = "random"
    run_steps: int = 2
    run_recursions: int = 2
    cfg_scale: float = PAPER.cfg_scale
    guidance_weight: float = PAPER.guidance_weight
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < SD_SIZE_MULTIPLE or sd_size_fix(self.size, self.size):
            raise UsageError(
                f"--size must be a multiple of {SD_SIZE_MULTIPLE} (Stable Diffusion's latents are 1/8), got {self.size}"
            )
        if self.repeats < 1 or self.warmup < 0 or self.run_recursions < 1 or not 1 <= self.run_steps <= PAPER.steps:
            raise UsageError(
                f"--repeats and --run-recursions must be >= 1, --warmup >= 0, --run-steps in [1, {PAPER.steps}]"
            )
        for spec in self.variants:
            parse_fast_path(spec)


@dataclass(frozen=True)
class Problem:
    """The inputs every variant sees: one source, one target motion, one latent at one noise level."""

    target: MotionTarget
    cond: torch.Tensor
    uncond: torch.Tensor
    latent: torch.Tensor
    t: int
    a_t: float
    run_timesteps: list[int]


def build_models(settings: BenchSettings) -> tuple[StableDiffusionBackend, RaftEstimator]:
    """SD v1.4 (UNet, VAE, CLIP text encoder) and RAFT on the benchmark device, random unless told otherwise."""
    if settings.model in RANDOM_MODELS:
        backend = random_stable_diffusion(settings.model, seed=settings.seed, device=settings.device)
    else:
        backend = load_stable_diffusion(settings.model, device=settings.device)
    estimator = load_raft(
        settings.raft, device=settings.device, weights=settings.raft_weights, iterations=settings.raft_iterations
    )
    return backend, estimator


def synthetic_source(size: int, seed: int, device: torch.device) -> torch.Tensor:
    """A smooth colour image ``(1, 3, size, size)`` in [0, 1]: low-resolution noise, bicubically enlarged."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, 8, 8), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return image.clamp(0, 1).to(device)


def make_problem(backend: StableDiffusionBackend, settings: BenchSettings) -> tuple[Problem, dict[str, float]]:
    """Build the shared inputs and time the work an edit does once (not per pass)."""
    device = torch.device(settings.device)
    source = synthetic_source(settings.size, settings.seed, device)
    flow = rotation(settings.size, settings.size, 5.0, device=device)[None]
    occlusion, occlusion_s = timed(lambda: reference_occlusion_mask(flow), device)
    latent, encode_s = timed(lambda: backend.encode(source), device)
    (cond, uncond), text_s = timed(lambda: (backend.condition(["a photo"]), backend.condition([""])), device)
    schedule = ddim_timesteps(len(backend.alphas_cumprod), PAPER.steps)
    first = int(SCHEDULE_POSITION * (len(schedule) - settings.run_steps))
    run_timesteps = schedule[first : first + settings.run_steps]
    a_t = float(backend.alphas_cumprod[run_timesteps[0]])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(settings.seed)).to(latent)
    problem = Problem(
        target=MotionTarget(source=source, flow=flow, occlusion=occlusion),
        cond=cond,
        uncond=uncond,
        latent=forward_noise(latent, a_t, noise),
        t=run_timesteps[0],
        a_t=a_t,
        run_timesteps=run_timesteps,
    )
    return problem, {"encode_source_s": encode_s, "text_embeddings_s": text_s, "occlusion_mask_s": occlusion_s}


def guided_pass(
    backend: Any, estimator: Any, problem: Problem, settings: BenchSettings, guidance: float
) -> torch.Tensor:
    """One pass of the real guided-eps computation; returns the (guided) noise estimate."""
    return guided_eps(
        backend,
        estimator,
        problem.latent,
        problem.t,
        problem.a_t,
        problem.cond,
        problem.uncond,
        problem.target,
        cfg_scale=settings.cfg_scale,
        guidance_scale=guidance,
        clip_grad=PAPER.clip_grad,
    ).eps


def short_run(backend: Any, estimator: Any, problem: Problem, settings: BenchSettings) -> torch.Tensor:
    """A few guided DDIM steps with recursions from the problem's latent, seeded; the final latent."""
    config = GuidanceSettings(
        steps=settings.run_steps,
        recursions=settings.run_recursions,
        cfg_scale=settings.cfg_scale,
        guidance_weight=settings.guidance_weight,
        seed=settings.seed,
    )
    generator = torch.Generator(device=problem.latent.device).manual_seed(settings.seed)
    latent, _ = sample_motion_guided(
        backend,
        estimator,
        problem.latent,
        problem.run_timesteps,
        problem.cond,
        problem.uncond,
        problem.target,
        config,
        generator=generator,
    )
    return latent


def count_flops(
    backend: StableDiffusionBackend,
    estimator: RaftEstimator,
    problem: Problem,
    settings: BenchSettings,
    switches: FastPath,
) -> tuple[int, dict[str, int]]:
    """Model FLOPs of one guided pass and their split by component (eager, classic attention, fp32)."""
    math_only = FastPath(cache_source=switches.cache_source)
    with fast_path(backend, estimator, math_only) as (plain_backend, plain_estimator):
        if switches.cache_source:  # fill the cache first: its one-off work is not per-pass work
            with torch.no_grad():
                plain_estimator(problem.target.source, problem.target.source)
        with FlopCounterMode(display=False) as counter:
            guided_pass(plain_backend, plain_estimator, problem, settings, settings.guidance_weight)
        names = {
            "unet": type(backend.unet).__name__,
            "vae_decoder": type(backend.vae.decoder).__name__,
            "flow": type(plain_estimator).__name__,
        }
    counts = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}
    total = counter.get_total_flops()
    parts = {part: counts.get(name, 0) for part, name in names.items()}
    parts["other"] = total - sum(parts.values())
    return total, parts


def _precision(switches: FastPath) -> str:
    return switches.autocast or ("tf32" if switches.tf32 else "fp32")


def _max_abs(tensor: torch.Tensor) -> float:
    return float(tensor.detach().float().abs().max())


def _drift(value: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    difference = _max_abs(value - reference)
    return {"max_abs": difference, "relative": difference / max(_max_abs(reference), 1e-30)}


def measure_variant(
    spec: str,
    backend: StableDiffusionBackend,
    estimator: RaftEstimator,
    problem: Problem,
    settings: BenchSettings,
    reference: dict[str, torch.Tensor] | None,
    advance: Callable[[], None],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Time, split, meter and compare one variant; returns its record and its outputs (for drift)."""
    switches = parse_fast_path(spec)
    device = torch.device(settings.device)
    memory = PeakMemory(device)
    with fast_path(backend, estimator, switches) as (fast_backend, fast_estimator):

        def guided() -> torch.Tensor:
            return guided_pass(fast_backend, fast_estimator, problem, settings, settings.guidance_weight)

        def plain() -> torch.Tensor:
            return guided_pass(fast_backend, fast_estimator, problem, settings, 0.0)

        for _ in range(settings.warmup):
            guided()
            advance()
        if switches.compile:  # compile every graph the timed work meets before timing it
            guided()
            plain()
            short_run(fast_backend, fast_estimator, problem, settings)
        timer = (
            None
            if switches.compile
            else PhaseTimer(
                {"unet": fast_backend.unet, "vae": fast_backend.vae.decoder, "flow": fast_estimator}, device
            )
        )
        times, splits = [], []
        with memory.measure():
            for _ in range(settings.repeats):
                if timer is None:
                    eps, seconds = timed(guided, device)
                else:
                    with timer.attached():
                        timer.start()
                        eps, seconds = timed(guided, device)
                        splits.append(timer.stop())
                times.append(seconds)
                advance()
        plain_runs = [timed(plain, device) for _ in range(settings.repeats)]
        latent, run_seconds = timed(lambda: short_run(fast_backend, fast_estimator, problem, settings), device)
        advance()
    outputs = {"eps": eps, "cfg_eps": plain_runs[-1][0], "latent": latent}
    if not all(torch.isfinite(value).all() for value in outputs.values()):
        raise FloatingPointError("NaN/inf in the guided eps, the CFG eps or the run's latent")
    run_passes = settings.run_steps * settings.run_recursions
    record: dict[str, Any] = {
        "variant": spec,
        "label": switches.label,
        "switches": dataclasses.asdict(switches),
        "precision": _precision(switches),
        "step_s": median(times),
        "step_s_runs": times,
        "plain_cfg_s": median([seconds for _, seconds in plain_runs]),
        "split_s": _split(splits) if splits else None,
        "peak_memory_bytes": memory.peak_bytes,
        "memory_metric": memory.metric,
        "run": {"passes": run_passes, "s_per_pass": run_seconds / run_passes},
    }
    if reference is not None:
        record["drift"] = {name: _drift(value, reference[name]) for name, value in outputs.items()}
    return record, outputs


def _split(splits: list[dict[str, float]]) -> dict[str, float]:
    """Median of each phase over the passes; ``backward`` sums the modules' backward, ``other`` the rest."""
    phases = {key: median([split[key] for split in splits]) for key in splits[0]}
    total = phases.pop("total")
    phases["backward"] = sum(value for key, value in phases.items() if key.endswith("_bwd"))
    phases["other"] = max(total - sum(value for key, value in phases.items() if key != "backward"), 0.0)
    phases["total"] = total
    return phases


def projections(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Seconds per edit for each shipped preset, from the measured pass times (baseline and fastest).

    A preset with fewer steps or recursions than the paper, or another guidance schedule, changes the
    result, and says so. Only guided sampling is counted (not DDIM inversion or encoding).
    """
    from mtransfer.presets import available_pipelines, load_pipeline, section

    measured = [v for v in report["variants"] if v.get("status") == "ok"]
    if not measured:
        return []
    baseline = measured[0]
    fastest = min(measured, key=lambda v: v["step_s"])
    rows = []
    for name in available_pipelines():
        try:
            config = GuidanceSettings.from_mapping(section(load_pipeline(name), "guidance"))
        except MtransferError as exc:
            rows.append({"preset": name, "error": str(exc)})
            continue
        weights = config.step_weights()
        guided = config.recursions * sum(1 for w in weights if w > 0)
        plain = config.recursions * sum(1 for w in weights if w == 0)
        same = (config.steps, config.recursions, config.schedule, config.schedule_fraction) == (
            PAPER.steps,
            PAPER.recursions,
            PAPER.schedule,
            PAPER.schedule_fraction,
        )
        rows.append(
            {
                "preset": name,
                "steps": config.steps,
                "recursions": config.recursions,
                "guided_passes": guided,
                "plain_passes": plain,
                "changes_math": not same,
                **{
                    f"{variant['variant']}_edit_s": guided * variant["step_s"] + plain * variant["plain_cfg_s"]
                    for variant in (baseline, fastest)
                },
            }
        )
    return rows


def run_benchmark(settings: BenchSettings, console: Console | None = None) -> dict[str, Any]:
    """Measure every variant of ``settings`` (baseline first) and return the report (JSON-ready)."""
    console = console or Console(stderr=True)
    device = torch.device(settings.device)
    variants = list(dict.fromkeys(("baseline", *settings.variants)))
    notes = []
    if device.type == "cpu":
        notes.append(
            f"CPU smoke run at {settings.size}x{settings.size} (GPU default {GPU_SIZE}); CPU timings only check the harness"
        )
    if settings.model == "tiny":
        notes.append("tiny SD configs: numbers are not representative of SD v1.4")
    if settings.model in RANDOM_MODELS or settings.raft_weights == "random":
        notes.append(
            "random weights: timings are real, drift is only indicative (an untrained model amplifies "
            "precision errors differently, e.g. CFG 7.5 magnifies cond-uncond differences); check drift "
            "with trained weights (--model PATH, --raft-weights PATH) before adopting a lower precision"
        )
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # CUDA events in the phase timer are recorded on the current device
    torch.manual_seed(settings.seed)
    (backend, estimator), build_s = timed(lambda: build_models(settings), device)
    problem, prepare = make_problem(backend, settings)
    report: dict[str, Any] = {
        "benchmark": "guided_step",
        "device": device_info(device),
        "settings": dataclasses.asdict(settings),
        "notes": notes,
        "build_s": build_s,
        "once_per_edit_s": prepare,
        "variants": [],
    }
    flops_cache: dict[bool, tuple[int, dict[str, int]]] = {}
    reference = None
    passes_per_variant = settings.warmup + settings.repeats + 1
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("guided passes", total=passes_per_variant * len(variants))
        for spec in variants:
            progress.update(task, description=f"variant {spec}")
            switches = parse_fast_path(spec)
            try:
                record, outputs = measure_variant(
                    spec, backend, estimator, problem, settings, reference, lambda: progress.advance(task)
                )
                if switches.cache_source not in flops_cache:
                    flops_cache[switches.cache_source] = count_flops(backend, estimator, problem, settings, switches)
            except Exception as exc:  # noqa: BLE001 - one broken variant (a compiler bug, OOM, NaN) must not lose the rest
                release_memory(device)
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                report["variants"].append(
                    {"variant": spec, "label": switches.label, "status": "failed", "error": reason}
                )
                console.print(f"[yellow]variant {spec} failed:[/] {reason}", highlight=False)
                continue
            flops, parts = flops_cache[switches.cache_source]
            peak = peak_tflops(report["device"]["name"], record["precision"]) if device.type == "cuda" else None
            achieved = flops / record["step_s"] / 1e12
            baseline_s = report["variants"][0]["step_s"] if report["variants"] else record["step_s"]
            record.update(
                status="ok",
                speedup=baseline_s / record["step_s"],
                flops=flops,
                flops_by_component=parts,
                tflops=achieved,
                peak_tflops=peak,
                utilisation=None if peak is None else achieved / peak,
            )
            report["variants"].append(record)
            if reference is None:
                reference = outputs
    if report["variants"][0].get("status") != "ok":
        raise DeviceError(f"the baseline failed ({report['variants'][0]['error']}); no ratios can be computed")
    report["projections"] = projections(report)
    return report


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value * scale:.{digits}g}"


def report_table(report: dict[str, Any]) -> Table:
    """The variants side by side: time, speed-up, split, memory, TFLOP/s and drift."""
    device = report["device"]
    table = Table(title=f"guided pass at {report['settings']['size']}px on {device['name']} ({device['type']})")
    for column in (
        "variant",
        "step s",
        "speed-up",
        "unet f/b s",
        "vae f/b s",
        "flow f/b s",
        "other s",
        "peak MiB",
        "TFLOP/s",
        "% peak",
        "cfg-eps drift",
        "eps drift",
        "latent drift",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in report["variants"]:
        if v["status"] != "ok":
            table.add_row(v["variant"], f"failed: {v['error'][:60]}", *[""] * 11)
            continue
        split = v["split_s"]
        pairs = [
            f"{_fmt(split[m + '_fwd'])}/{_fmt(split[m + '_bwd'])}" if split else "n/a" for m in ("unet", "vae", "flow")
        ]
        drift = v.get("drift", {})
        table.add_row(
            v["variant"],
            _fmt(v["step_s"]),
            _fmt(v["speedup"]),
            *pairs,
            _fmt(split["other"]) if split else "n/a",
            _fmt(v["peak_memory_bytes"], 1 / 2**20, 5),
            _fmt(v["tflops"]),
            _fmt(v["utilisation"], 100),
            *(_fmt(drift[name]["relative"]) if drift else "-" for name in ("cfg_eps", "eps", "latent")),
        )
    return table


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """The benchmark's settings from its parsed command line (``mtransfer.bench.options.parse``)."""
    device = str(parse_device(args.device))
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            ensure_writable(path.parent, option)
    on_gpu = device.startswith("cuda")
    variants = tuple(args.variants.split(",")) if args.variants else (GPU_VARIANTS if on_gpu else CPU_VARIANTS)
    if args.compile and on_gpu:
        variants = (*variants, "fast+compile")
    elif args.compile:
        Console(stderr=True).print(
            "[yellow]--compile ignored on the CPU:[/] compiling takes many minutes there and says nothing about "
            "the GPU path (name a variant such as fast+compile in --variants to force it)"
        )
    return BenchSettings(
        device=device,
        size=args.size if args.size is not None else (GPU_SIZE if on_gpu else CPU_SIZE),
        variants=tuple(v.strip() for v in variants if v.strip()),
        repeats=args.repeats,
        warmup=args.warmup,
        model=args.model,
        raft=args.raft,
        raft_iterations=args.raft_iterations,
        raft_weights=args.raft_weights,
        run_steps=args.run_steps,
        run_recursions=args.run_recursions,
    )


def main(argv: Sequence[str] | None = None, prog: str = "mtransfer bench") -> dict[str, Any]:
    """Run from the command line; prints the table to stdout and writes ``--json`` / ``--plot``."""
    return run_parsed(parse(argv, prog))


def run_parsed(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for an already parsed command line (``mtransfer bench`` parses before importing torch)."""
    if args.memory:
        return memory_main(args)
    settings = settings_from(args)
    status = Console(stderr=True)
    if settings.device == "cpu" and args.size is None:
        status.print(
            f"[yellow]CPU run:[/] using {settings.size}x{settings.size} images instead of {GPU_SIZE}x{GPU_SIZE} (pass --size to change)"
        )
    report = run_benchmark(settings, status)
    out = Console(width=max(Console().width, 160))
    out.print(report_table(report))
    for note in report["notes"]:
        out.print(f"note: {note}", highlight=False)
    if args.json:
        write_json(args.json, report)
        status.print(f"wrote {args.json}")
    if args.plot:
        plot_split(report, args.plot)
        status.print(f"wrote {args.plot}")
    return report


def memory_main(args: argparse.Namespace) -> dict[str, Any]:
    """``--memory``: the measured peak of one pass per switch set and batch size, printed and ``--json``."""
    from mtransfer.bench.memory import DEFAULT_SPEEDS, memory_report, memory_table, rss_cross_check

    try:
        batches = [int(text) for text in args.batch.split(",")]
    except ValueError:
        raise UsageError(f"--batch {args.batch}: expected comma-separated whole numbers such as 1,2") from None
    if min(batches) < 1:
        raise UsageError(f"--batch {args.batch}: batch sizes must be at least 1")
    speeds = [spec.strip() for spec in args.speed.split(",")] if args.speed else list(DEFAULT_SPEEDS)
    model = args.model if args.model in RANDOM_MODELS else "real"
    size = args.size if args.size is not None else GPU_SIZE
    report = memory_report(size, batches, speeds, model=model, raft=args.raft)
    out = Console(width=max(Console().width, 120))
    out.print(memory_table(report))
    out.print("note: not counted: the CUDA context (~0.5 GiB), cuDNN/cuBLAS workspaces, allocator fragmentation",
              highlight=False)
    if args.cross_check:
        check = rss_cross_check()
        report["cross_check"] = check
        out.print(f"cross-check on real CPU tensors ({check['model']} SD + {check['raft']}, {check['size']}px, "
                  f"{check['speed']}): tracked {check['tracked_bytes'] / 2**20:.1f} MiB, resident set rose "
                  f"{check['rss_bytes'] / 2**20:.1f} MiB", highlight=False)
    if args.json:
        write_json(args.json, report)
        Console(stderr=True).print(f"wrote {args.json}")
    return report
