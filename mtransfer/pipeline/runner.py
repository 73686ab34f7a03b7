"""``run_pipeline``: check the inputs, open (or resume) the run folder, run the stages top to bottom.
``extract_flow`` (``mtransfer flow``) runs the decode and flow stages under the same folder rules.

Everything that can be wrong with the inputs or settings is checked before the run folder is touched, so
a bad command never changes earlier results. Resuming is the default: the same command continues where
a killed run stopped. When the inputs or the settings that shape the results changed, the run refuses to
mix old and new results; ``--restart`` then moves the affected stages' files to ``superseded/<time>/``
inside the run folder (nothing is deleted) and recomputes them, keeping the stages that are still valid.
``--restart`` with nothing changed redoes every stage the same way. The evaluation and the encoding are
derived from the frames and need no ``--restart``: when only their settings changed they are redone.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.text import Text

from mtransfer.app.executors import import_ray
from mtransfer.app.models import check_models, world_warning
from mtransfer.app.settings import (
    REDONE_ON_CHANGE,
    AlignSettings,
    STAGES,
    EstimatorSettings,
    ModelSettings,
    OutputSettings,
    RunSettings,
    VideoSettings,
    shape_note,
)
from mtransfer.app.versions import versions
from mtransfer.errors import Interrupted, MtransferError, UsageError, input_error, require_file
from mtransfer.estimators import load_named_estimator
from mtransfer.evaluation import evaluation_table
from mtransfer.evaluation.verdict import VERDICTS
from mtransfer.files import ensure_writable, load_image, read_json_object, remove_stale_temporaries, write_json
from mtransfer.flows.io import read_mask
from mtransfer.guidance.config import GuidanceSettings
from mtransfer.flows.align import mask_box, pixel_box, source_box
from mtransfer.pipeline.manifest import MANIFEST, Manifest, RunLock, content_id, fingerprint
from mtransfer.layouts import STAGE_OUTPUTS, SUMMARY
from mtransfer.pipeline.stages import (
    RunContext,
    align_stage,
    decode_stage,
    encode_stage,
    evaluate_stage,
    flow_stage,
    guide_stage,
    judge_name,
    render_driving_flow,
)
from mtransfer.presets import load_pipeline
from mtransfer.progress import progress_bar
from mtransfer.video import large_flow_warning, probe_video


@dataclass(frozen=True)
class RunRequest:
    """One ``mtransfer run``: inputs, the pipeline preset and its overrides, and what to do with the folder."""

    video: Path
    image: Path
    pipeline: str = "paper"
    overrides: tuple[str, ...] = ()
    out: Path | None = None
    restart: bool = False
    flow_only: bool = False


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs after checking: fingerprints, frame count and rate, working size, region mask file."""

    prints: dict[str, dict[str, Any]]
    frame_count: int
    fps: float
    size: tuple[int, int]
    region_mask: Path | None
    flow_size: tuple[int, int]
    video_size: tuple[int, int]
    image_size: tuple[int, int] = (0, 0)  # the image as given, before the working size


def default_folder(video: Path, image: Path) -> Path:
    return Path("outputs") / f"{video.stem}-onto-{image.stem}"


def check_inputs(request: RunRequest, settings: RunSettings) -> CheckedInputs:
    """Probe the video, read the image and region, and check sizes and boxes: one-line errors, no writes."""
    video = settings.video
    info, frame_count = _probe(request.video, settings)
    flow_size = video.frame_size(info.height, info.width)  # refuses frames too small to measure
    image = load_image(request.image)
    size = settings.model.working_size(tuple(image.shape[-2:]), request.image)
    prints = {"video": fingerprint(request.video), "image": fingerprint(request.image)}
    region_mask = None
    region = settings.align.region
    if isinstance(region, str):
        region_mask = require_file(region, "region mask")
        mask_box(read_mask(region_mask, size), region_mask)  # readable and not empty
        prints["region_mask"] = fingerprint(region_mask)
    elif region is not None:
        pixel_box(region, *size)
    if settings.align.source_region is not None:
        source_box(settings.align.source_region, *flow_size)
    return CheckedInputs(prints, frame_count, info.fps / video.stride, size, region_mask, flow_size,
                         (info.height, info.width), tuple(image.shape[-2:]))


def _probe(path: Path, settings: RunSettings) -> tuple[Any, int]:
    """The video's properties and how many frames ``[video]`` keeps (at least 2, or a one-line error)."""
    video = settings.video
    info = probe_video(path)
    frame_count = math.ceil(info.frame_count / video.stride)
    if video.max_frames:
        frame_count = min(frame_count, video.max_frames)
    if frame_count < 2:
        raise input_error(path, f"only {frame_count} frame with stride {video.stride}; motion needs 2 or more")
    return info, frame_count


def _as_json_reads_it(value: Any) -> Any:
    """``value`` as the manifest will read it back (tuples as lists, keys as strings), so comparisons match."""
    return json.loads(json.dumps(value))


def stage_settings(settings: RunSettings, inputs: CheckedInputs, flow_only: bool) -> dict[str, dict[str, Any]]:
    """What each stage's results depend on: the settings each declares it shapes (``RunSettings``), the
    inputs' content, the resolved working size and judge. The device and the output encoding shape no
    frame: resuming a CPU run on a GPU is allowed, changing ``[output]`` only re-encodes and changing
    ``[evaluation]`` only re-evaluates (``REDONE_ON_CHANGE``). A run without edits (``flow_only``) or with
    ``evaluation.enabled = false`` has no evaluation for the report to depend on."""
    ids = {name: content_id(print_) for name, print_ in inputs.prints.items()}
    skip = ("guide", "evaluate") if flow_only else () if settings.evaluation.enabled else ("evaluate",)
    return settings.stage_settings(
        {
            "decode": {"inputs": {"video": ids["video"]}, **_capped_size(settings.video, *inputs.video_size)},
            "align": {"inputs": {"image": ids["image"], "region_mask": ids.get("region_mask")},
                      "model": {"size": list(inputs.size)}},
            "evaluate": {"evaluation": {"estimator": judge_name(settings)}},
            "encode": {"flow_only": flow_only},
        },
        skip=skip,
    )


def _capped_size(video: VideoSettings, height: int, width: int) -> dict[str, Any]:
    """The decode stage's record of the size ``video.max_side`` gives a large clip (``video.size`` stays 0 in
    the settings): the cap shapes the frames only when it applies, and then its size is what they depend on."""
    return {"video": {"size": list(video.frame_size(height, width))}} if video.capped(height, width) else {}


def size_notes(video: VideoSettings, height: int, width: int, frames: int, option: str) -> list[str]:
    """What a clip's size means for its flow: scaled down by ``video.max_side``, or still very large."""
    notes = []
    flow_height, flow_width = video.frame_size(height, width)
    if video.capped(height, width):
        notes.append(f"note: the clip is {height}x{width} (height x width); its flow is measured at {flow_height}x"
                     f"{flow_width} (longest side at most {video.max_side} px); {option} chooses another size")
    warning = large_flow_warning(flow_height, flow_width, frames)
    if warning:
        notes.append(f"warning: {warning}")
    return notes


def _resolve_changes(manifest: Manifest, wanted: dict[str, dict[str, Any]], restart: bool, console: Console) -> None:
    """Refuse to mix results made with other settings, or (``--restart``) move them aside."""
    math_stages = {name: wanted[name] for name in STAGES if name in wanted and name not in REDONE_ON_CHANGE}
    stale = manifest.stale_stages(math_stages)
    recorded = [name for name in STAGES if name in manifest.record["stages"]]
    if not stale and not (restart and recorded):
        return
    first = STAGES.index(next(iter(stale))) if stale else 0
    affected = list(STAGES[first:])
    if not restart:
        name = next(iter(stale))
        changes = stale[name]
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UsageError(
            f"{manifest.folder}: holds results made with other settings ({shown}); use --out NEW_FOLDER to keep "
            f"them, or --restart to move the {', '.join(a for a in affected if a in recorded)} results to "
            f"{manifest.folder / 'superseded'} and recompute"
        )
    paths = [manifest.folder / name for stage in affected for name in STAGE_OUTPUTS[stage]]
    moved = manifest.supersede(affected, paths)
    if moved is not None:
        console.print(f"--restart: moved the earlier {', '.join(affected)} results to {escape(str(moved))}",
                      highlight=False)


def verdict_line(frames: dict[str, Any]) -> str:
    """How the edited frames came out by the guiding estimator's verdicts, e.g. "edits: 5 reached, 2 partial"."""
    labels = [record["verdict"]["label"] for record in frames.values()
              if isinstance(record, dict) and isinstance(record.get("verdict"), dict)]
    counts = ", ".join(f"{labels.count(label)} {label}" for label in VERDICTS if label in labels)
    return f"edits (by the guiding estimator): {counts}" if counts else "edits: none made (every frame still)"


def _readable_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest's record if it can be read, else ``None``: an interrupt note must not fail on a manifest
    cut short or damaged by the very interruption it reports."""
    try:
        return read_json_object(path, "run manifest") if path.is_file() else None
    except (MtransferError, OSError):
        return None


@contextmanager
def interrupt_note(folder: Path) -> Iterator[None]:
    """Ctrl-C during a run becomes ``Interrupted``: which frames of which stage are kept, and how to resume,
    said on the terminal and recorded in the manifest (``mark_interrupted``)."""
    try:
        yield
    except KeyboardInterrupt:
        kept = "nothing finished yet"
        manifest_path = folder / MANIFEST
        record = _readable_manifest(manifest_path)
        if record is not None:
            stages = record.get("stages") if isinstance(record.get("stages"), dict) else {}
            parts = [f"{name} {len(stage.get('frames', {}))} of {stage.get('total', '?')} frames"
                     if stage.get("status") != "done" else f"{name} done"
                     for name, stage in stages.items() if isinstance(stage, dict)]
            kept = ", ".join(parts) or kept
            if isinstance(record.get("stages"), dict):  # a damaged manifest is left as it is
                try:
                    Manifest(folder, record).mark_interrupted(kept)
                except OSError:
                    pass  # the stop itself must still be reported; the frames are kept either way
        raise Interrupted(f"{folder}: kept {kept}; run the same command again to resume from there") from None


@contextmanager
def _run_folder(
    folder: Path, wanted: dict[str, dict[str, Any]], restart: bool, header: dict[str, Any], console: Console
) -> Iterator[Manifest]:
    """Lock the run folder, refuse (or with ``restart`` move aside) results made with other settings, and
    record what this run is made from."""
    ensure_writable(folder)
    with RunLock(folder), interrupt_note(folder):
        remove_stale_temporaries(folder)  # left by a run killed mid-write; the lock says no write is running
        manifest = Manifest.open(folder)
        _resolve_changes(manifest, wanted, restart, console)
        manifest.update_header({"command": " ".join(sys.argv), **header, "versions": versions()})
        yield manifest


def run_pipeline(request: RunRequest, console: Console, progress: Progress | None = None) -> Path:
    """Run (or resume) the whole pipeline for ``request``; returns the run folder. ``progress`` replaces the
    console's progress bar (a front end that shows the stages' tasks its own way)."""
    started = time.perf_counter()
    config = load_pipeline(request.pipeline, request.overrides)
    settings = RunSettings.from_config(config)
    inputs = check_inputs(request, settings)
    for note in size_notes(settings.video, *inputs.video_size, inputs.frame_count,
                           "--set video.size=[HEIGHT, WIDTH] (or video.max_side=0: as recorded)"):
        console.print(Text(note), highlight=False, soft_wrap=True)
    if note := shape_note(inputs.image_size, inputs.size, str(request.image)):
        console.print(Text(note), highlight=False, soft_wrap=True)
    if not request.flow_only:
        check_models(settings.model, settings.estimator)
        if settings.evaluation.enabled:
            load_named_estimator(judge_name(settings))  # a judge without its weights: one line now, not after the edits
        if settings.execution.executor == "ray":
            import_ray()  # its absence is a one-line error now, not after the flow stage
    device = settings.model.torch_device()
    folder = request.out or default_folder(request.video, request.image)
    wanted = stage_settings(settings, inputs, request.flow_only)
    header = {"pipeline": settings.name, "config": _as_json_reads_it(config), "inputs": inputs.prints,
              "device": str(device),
              "flow_only": request.flow_only}
    with _run_folder(folder, wanted, request.restart, header, console) as manifest:
        with (progress if progress is not None else progress_bar(console, 18)) as progress, ExitStack() as resources:
            ctx = RunContext(
                video=request.video, frame_count=inputs.frame_count, fps=inputs.fps, folder=folder,
                settings=settings, stage_settings=wanted, manifest=manifest, device=device, progress=progress,
                console=console, resources=resources, image=request.image, region_mask=inputs.region_mask,
                size=inputs.size, frame_size=inputs.flow_size if inputs.flow_size != inputs.video_size else None,
            )
            clip = decode_stage(ctx)                             # the driving frames
            driving = flow_stage(ctx, clip)                      # their motion, on the video's grid
            motion = align_stage(ctx, driving)                   # laid onto the image: target flows, edit masks
            if not request.flow_only and (outside := world_warning(settings.model, list(motion.flows),
                                                                   list(motion.masks))):
                console.print(Text(f"warning: {outside}"), highlight=False, soft_wrap=True)
            results = None if request.flow_only else guide_stage(ctx, motion)  # one edit per target flow
            evaluation = None if request.flow_only else evaluate_stage(ctx)    # judged independently
            encode_stage(ctx, clip, motion, results, evaluation)
    if request.flow_only:
        console.print("evaluation skipped: --flow-only made no edits to judge", highlight=False)
    elif evaluation is not None:
        console.print(evaluation_table(evaluation))
    done = ", ".join(f"{count} {stage}" for stage, count in ctx.computed.items()) or "nothing (all up to date)"
    if not request.flow_only:
        console.print(verdict_line(manifest.stage("guide")["frames"]), highlight=False)
    console.print(f"[green]finished[/] in {time.perf_counter() - started:.1f} s: computed {done}; see {escape(str(folder / 'report.html'))}",
                  highlight=False)
    return folder


@dataclass(frozen=True)
class FlowRequest:
    """One ``mtransfer flow``: the clip, which frames and estimator (``[video]``), where, and ``--restart``."""

    video: Path
    settings: VideoSettings
    device: str = "cpu"
    out: Path | None = None
    restart: bool = False
    quiet: bool = False  # no progress (``--quiet``)


def extract_flow(request: FlowRequest, console: Console) -> dict[str, Any]:
    """``mtransfer flow``: the decode and flow stages of a run (same folder rules: resume, refuse, supersede),
    then the flows' pictures; returns the summary also written to ``summary.json``."""
    started = time.perf_counter()
    settings = RunSettings(
        name="flow", model=ModelSettings(size=(), device=request.device), estimator=EstimatorSettings(),
        guidance=GuidanceSettings(), video=request.settings, align=AlignSettings(), output=OutputSettings(),
    )
    info, frame_count = _probe(request.video, settings)
    device = settings.model.torch_device()
    frame_size = settings.video.frame_size(info.height, info.width)
    for note in size_notes(settings.video, info.height, info.width, frame_count,
                           "--size HEIGHTxWIDTH (or --max-side 0: as recorded)"):
        console.print(Text(note), highlight=False, soft_wrap=True)
    folder = request.out or Path("outputs") / f"{request.video.stem}-flow"
    prints = {"video": fingerprint(request.video)}
    own = settings.stage_settings({"decode": {"inputs": {"video": content_id(prints["video"])},
                                              **_capped_size(settings.video, info.height, info.width)}},
                                  skip=("align", "guide", "evaluate"))
    wanted = {stage: own[stage] for stage in ("decode", "flow", "encode")}
    header = {"pipeline": "flow", "config": _as_json_reads_it({"video": settings.as_record()["video"]}), "inputs": prints,
              "device": str(device)}
    fps = info.fps / settings.video.stride
    with _run_folder(folder, wanted, request.restart, header, console) as manifest:
        with progress_bar(console, quiet=request.quiet) as progress:
            ctx = RunContext(
                video=request.video, frame_count=frame_count, fps=fps, folder=folder, settings=settings,
                stage_settings=wanted, manifest=manifest, device=device, progress=progress, console=console,
                frame_size=frame_size if frame_size != (info.height, info.width) else None,
            )
            clip = decode_stage(ctx)
            driving = flow_stage(ctx, clip)
            records = render_driving_flow(ctx, clip, driving)
    video = settings.video
    summary = {
        "video": str(request.video),
        "source": asdict(info),
        "clip": {"fps": fps, "frame_count": frame_count, "width": clip.frames.shape[-1],
                 "height": clip.frames.shape[-2]},
        "stride": video.stride,
        "estimator": video.estimator,
        "weights": video.weights or None,
        "device": str(device),
        "reference": driving.reference,
        "mean_magnitude": sum(record["mean_magnitude"] for record in records) / len(records),
        "max_magnitude": max(record["max_magnitude"] for record in records),
        "computed": dict(ctx.computed),
        "seconds": time.perf_counter() - started,
        "output": str(folder),
        "frames": records,
    }
    write_json(folder / SUMMARY, summary)
    return summary
