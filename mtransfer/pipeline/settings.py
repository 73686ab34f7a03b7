"""The validated settings of a ``mtransfer run``: one dataclass per pipeline section.

A preset (``mtransfer.presets.load_pipeline``) is plain nested dicts; ``RunSettings.from_config`` checks
every section once, here at the edge, so the stages can trust their inputs. Sizes are ``(height, width)``
like everywhere in mtransfer; TOML has no null, so "not set" is written ``0``, ``""`` or ``[]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from mtransfer.errors import MtransferError
from mtransfer.estimators import ESTIMATORS
from mtransfer.guidance.config import GuidanceConfig
from mtransfer.pipeline.align import AlignConfig
from mtransfer.pipeline.executors import ExecutionSettings
from mtransfer.presets import section
from mtransfer.speed import parse_fast_path

FLOW_MODES = ("direct", "chained")
INIT_MODES = ("shared", "previous")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OFFLINE_MODELS = ("tiny", "exact")


def _check(section_name: str, name: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise MtransferError(f"{section_name}.{name}: {rule}, got {value!r}")


def _from_mapping(cls: type, section_name: str, values: Mapping[str, Any]) -> Any:
    """Build a settings dataclass from a table; unknown keys and wrong types name the key."""
    known = {field.name: field for field in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise MtransferError(f"{section_name}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    for name, value in values.items():
        expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(known[name].type))
        if expected is not None:
            wrong_bool = isinstance(value, bool) and expected is not bool
            _check(section_name, name, isinstance(value, expected) and not wrong_bool,
                   f"expected {known[name].type}", value)
    return cls(**values)


def _size(section_name: str, value: Any) -> tuple[int, int] | None:
    """``[height, width]`` → a tuple; ``[]`` or ``0`` → None."""
    if value in ([], (), 0, None):
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    _check(section_name, "size", ok, "must be [height, width] in pixels, or [] for the input's own size", value)
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: which diffusion model edits the image, at what size, on what device.

    ``model`` is a Hugging Face id, a local diffusers folder, ``"tiny"`` (random tiny SD, offline) or
    ``"exact"`` (the exact denoiser over the target image under a family of motions, see
    ``mtransfer.diffusion.exact``; its ``family_*`` settings choose the motions). ``size`` is the working
    ``[height, width]``: the target image is resized to it; ``[]`` keeps the image's own size, which
    Stable Diffusion needs to be a multiple of 8. ``device = "auto"`` picks CUDA when available.
    ``speed`` names execution switches of ``mtransfer.speed`` (e.g. ``"sdpa+cache-source"``; ``""`` runs
    the models as loaded); see BENCHMARKS.md for what each costs and how far it drifts.
    """

    model: str = "CompVis/stable-diffusion-v1-4"
    size: Any = (512, 512)
    prompt: str = ""
    dtype: str = "float32"
    device: str = "auto"
    family_step: int = 0
    family_radius: int = 2
    family_rotations: Any = (0.0,)
    family_scales: Any = (1.0,)
    speed: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size("model", self.size))
        if self.speed:
            parse_fast_path(self.speed)  # unknown or contradictory switches are refused before any work
        _check("model", "model", bool(self.model), "must name a model", self.model)
        _check("model", "dtype", self.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}", self.dtype)
        _check("model", "family_step", self.family_step >= 0, "must be >= 0 (0 = 1/16 of the short side)",
               self.family_step)
        _check("model", "family_radius", self.family_radius >= 0, "must be >= 0", self.family_radius)
        for name in ("family_rotations", "family_scales"):
            value = getattr(self, name)
            ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
            _check("model", name, ok, "must be a non-empty list of numbers", value)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        _check("model", "family_scales", all(s > 0 for s in self.family_scales), "must be positive",
               self.family_scales)

    @property
    def is_offline(self) -> bool:
        return self.model in OFFLINE_MODELS

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise MtransferError(f"model.device: not a device name, got {self.device!r} (use auto, cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MtransferError(f"--device {self.device}: no CUDA GPU is visible to torch; use --device cpu or auto")
        return device


@dataclass(frozen=True)
class EstimatorSettings:
    """``[estimator]``: the differentiable flow estimator inside the guidance energy."""

    name: str = "raft-large"
    iterations: int = 0
    weights: str = ""

    def __post_init__(self) -> None:
        _check("estimator", "name", self.name in ESTIMATORS, f"must be one of {', '.join(ESTIMATORS)}", self.name)
        _check("estimator", "iterations", self.iterations >= 0, "must be >= 0 (0 = the estimator's default)",
               self.iterations)


@dataclass(frozen=True)
class VideoSettings:
    """``[video]``: which frames drive the motion, how their flow is measured, how frames are chained.

    - ``stride`` / ``max_frames``: keep frames 0, stride, 2*stride, ...; at most ``max_frames`` (0 = all).
    - ``size``: ``[height, width]`` or a short side the frames are resized to before flow estimation
      (0 = as recorded). The flow is resized to the target image afterwards (``[align]``).
    - ``flow``: ``direct`` estimates frame 0 → frame t for each t (no drift, but large motions are hard);
      ``chained`` estimates t-1 → t and composes them (small steps, but errors accumulate).
    - ``estimator`` / ``iterations`` / ``weights``: the (not necessarily differentiable) video estimator.
    - ``init``: ``shared`` starts every frame from the source's inverted noise; ``previous`` shifts that
      start towards the previous frame's result (``previous_frame_start``), for smoother sequences.
    """

    stride: int = 1
    max_frames: int = 0
    size: Any = 0
    flow: str = "direct"
    estimator: str = "raft-large"
    iterations: int = 0
    weights: str = ""
    batch_size: int = 4
    init: str = "shared"

    def __post_init__(self) -> None:
        _check("video", "stride", self.stride >= 1, "must be at least 1", self.stride)
        _check("video", "max_frames", self.max_frames == 0 or self.max_frames >= 2,
               "must be 0 (all) or at least 2", self.max_frames)
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            _check("video", "size", self.size >= 0, "must be a short side >= 0 or [height, width]", self.size)
        else:
            object.__setattr__(self, "size", _size("video", self.size))
        _check("video", "flow", self.flow in FLOW_MODES, f"must be one of {', '.join(FLOW_MODES)}", self.flow)
        _check("video", "estimator", self.estimator in ESTIMATORS, f"must be one of {', '.join(ESTIMATORS)}",
               self.estimator)
        _check("video", "iterations", self.iterations >= 0, "must be >= 0 (0 = default)", self.iterations)
        _check("video", "batch_size", self.batch_size >= 1, "must be at least 1", self.batch_size)
        _check("video", "init", self.init in INIT_MODES, f"must be one of {', '.join(INIT_MODES)}", self.init)

    @property
    def resize(self) -> tuple[int, int] | int | None:
        return self.size or None


@dataclass(frozen=True)
class OutputSettings:
    """``[output]``: how the results are encoded (no effect on the frames themselves).

    ``fps`` 0 = the driving clip's rate after ``stride``; ``crf`` is the H.264 quality (lower = better).
    """

    fps: float = 0.0
    crf: int = 18

    def __post_init__(self) -> None:
        _check("output", "fps", self.fps >= 0, "must be >= 0 (0 = the video's)", self.fps)
        _check("output", "crf", 0 <= self.crf <= 51, "must be in 0..51", self.crf)


@dataclass(frozen=True)
class RunSettings:
    """Every section of a pipeline, validated."""

    name: str
    model: ModelSettings
    estimator: EstimatorSettings
    guidance: GuidanceConfig
    video: VideoSettings
    align: AlignConfig
    output: OutputSettings
    execution: ExecutionSettings = ExecutionSettings()

    def __post_init__(self) -> None:
        if self.execution.executor == "ray" and self.video.init == "previous":
            raise MtransferError(
                'video.init = "previous" edits the frames strictly one after another, so Ray cannot spread them '
                'over workers; use video.init = "shared" with --executor ray, or --executor local'
            )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunSettings:
        known = {"name", "description", "model", "estimator", "guidance", "video", "align", "output", "execution"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise MtransferError(f"pipeline '{config.get('name')}': unknown section [{unknown[0]}] "
                                 f"(known: {', '.join(sorted(known - {'name', 'description'}))})")
        return cls(
            name=str(config.get("name", "")),
            model=_from_mapping(ModelSettings, "model", section(config, "model")),
            estimator=_from_mapping(EstimatorSettings, "estimator", section(config, "estimator")),
            guidance=GuidanceConfig.from_mapping(section(config, "guidance")),
            video=_from_mapping(VideoSettings, "video", section(config, "video")),
            align=AlignConfig.from_mapping(section(config, "align")),
            output=_from_mapping(OutputSettings, "output", section(config, "output")),
            execution=_from_mapping(ExecutionSettings, "execution", section(config, "execution")),
        )

    def as_record(self) -> dict[str, Any]:
        """The settings as JSON-ready nested dicts (tuples become lists), as stored in the manifest."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
