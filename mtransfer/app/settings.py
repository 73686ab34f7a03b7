"""Every setting of mtransfer, typed and validated once, each declaring which stage's results it shapes.

A preset (``mtransfer.presets.load_pipeline``) is plain nested dicts; ``load_settings`` turns a preset and
its overrides into ``RunSettings``, checking every section here at the edge (``mtransfer.validation``), so
everything after can trust its inputs. The objects are frozen dataclasses of plain values: they pickle,
so a worker process can be handed them and load its own models (``mtransfer.app.Editor.load``).

Stages: ``decode → flow → align → guide → evaluate → encode`` (``STAGES``). Each section of ``RunSettings`` names the
stage its fields shape by default, and a field may override it with ``field(metadata={STAGE: ...})``
(``None``: shapes no stage's results). ``RunSettings.stage_settings`` derives from these declarations what
each stage's results depend on, which is what resuming compares and ``--restart`` acts on; a field added
to a section invalidates its stage and every later one with no other edit. Sizes are ``(height, width)``;
TOML has no null, so "not set" is written ``0``, ``""`` or ``[]``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Collection, Mapping

import torch

from mtransfer.choices import DEFAULT_MAX_SIDE, EXECUTORS, FLOW_MODES, INIT_MODES, PLANS, WARM_FROM, WARM_WARPS
from mtransfer.diffusion.backends import SD_SIZE_MULTIPLE, sd_size_fix
from mtransfer.devices import parse_device
from mtransfer.errors import UsageError, input_error
from mtransfer.estimators import ESTIMATORS
from mtransfer.guidance.config import GuidanceSettings
from mtransfer.flows.align import FITS, MAX_BLUR_SIGMA, TEMPORAL, align_flow, smooth_over_time
from mtransfer.presets import load_pipeline, section
from mtransfer.speed import parse_fast_path
from mtransfer.validation import RECORDED_UNLESS, STAGE, check_types, declared_stage, finite_numbers, from_mapping, rule_checker
from mtransfer.video import MIN_SIDE, output_size

STAGES = ("decode", "flow", "align", "guide", "evaluate", "encode")
"""The stages of a video run, in order; each stage's results depend on the settings of all before it."""

REDONE_ON_CHANGE = ("evaluate", "encode")
"""Stages whose results are figures and files derived from the frames: when their settings change, a run
moves their earlier results to ``superseded/`` and redoes them instead of refusing to go on."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OFFLINE_MODELS = ("tiny", "tiny-sd2", "exact")
MIN_FPS, MAX_FPS = 0.01, 1000.0
"""Frame rates an encoded result may have (``output.fps``): a frame per 100 s up to high-speed footage."""

_align_require = rule_checker("align")


@dataclass(frozen=True)
class AlignSettings:
    """How the driving motion is laid onto the target image (the ``[align]`` section of a pipeline).

    - ``fit``: ``stretch`` (ignore aspect), ``cover`` (fill the region, crop the overflow, centred) or
      ``contain`` (fit inside the region, pad with zero motion, centred).
    - ``region``: where the motion goes on the target: ``[x0, y0, x1, y1]`` in pixels, or in fractions of
      the width/height when all four values lie in [0, 1]; or the path of a mask image (white = motion).
      Empty = the whole image.
    - ``source_region``: the box of the driving frame to take the motion from (same units); empty = all.
    - ``feather``: width in target pixels of a linear ramp that fades the motion in at the region's edge.
    - ``strength``: multiplies every displacement (1 = the video's motion, 0.5 = half as far).
    - ``spatial_sigma``: Gaussian blur of the fitted flow, in target pixels (0 = off).
    - ``temporal`` / ``temporal_amount``: ``ema`` keeps ``amount`` of the previous smoothed flow per frame
      (in [0, 1)); ``gaussian`` blurs over time with sigma ``amount`` frames. Frame 0 stays the reference.
    - ``mask_threshold`` / ``mask_margin``: a pixel is edited when it, or a pixel moving onto it, moves
      more than ``mask_threshold`` px; the edit region is then grown by ``mask_margin`` px.
    - ``edit_mask``: false lets guidance change the whole image (the paper's setting for single edits).
    """

    fit: str = "cover"
    region: tuple[float, float, float, float] | str | None = None
    source_region: tuple[float, float, float, float] | None = None
    feather: int = 0
    strength: float = 1.0
    spatial_sigma: float = 0.0
    temporal: str = "none"
    temporal_amount: float = 0.0
    mask_threshold: float = 0.5
    mask_margin: int = 8
    edit_mask: bool = True

    def __post_init__(self) -> None:
        check_types(self, "align")
        _align_require(self.fit in FITS, "fit", f"must be one of {', '.join(FITS)}", self.fit)
        _align_require(self.temporal in TEMPORAL, "temporal", f"must be one of {', '.join(TEMPORAL)}", self.temporal)
        if self.temporal == "ema":
            _align_require(0 <= self.temporal_amount < 1, "temporal_amount", "must be in [0, 1) for ema", self.temporal_amount)
        _align_require(self.temporal_amount >= 0, "temporal_amount", "must be >= 0", self.temporal_amount)
        _align_require(self.temporal_amount <= MAX_BLUR_SIGMA, "temporal_amount",
                 f"must be at most {MAX_BLUR_SIGMA:g} (frames)", self.temporal_amount)
        for name in ("feather", "mask_margin"):
            _align_require(getattr(self, name) >= 0, name, "must be a whole number of pixels >= 0", getattr(self, name))
        _align_require(0 <= self.spatial_sigma <= MAX_BLUR_SIGMA, "spatial_sigma",
                 f"must be >= 0 and at most {MAX_BLUR_SIGMA:g} (pixels)", self.spatial_sigma)
        _align_require(self.mask_threshold >= 0, "mask_threshold", "must be >= 0", self.mask_threshold)
        for name in ("region", "source_region"):
            value = getattr(self, name)
            if value is None or (name == "region" and isinstance(value, str)):
                continue
            ok = (isinstance(value, (list, tuple)) and len(value) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
            _align_require(ok, name, "must be [x0, y0, x1, y1] (pixels or fractions)"
                     + (" or a mask image path" if name == "region" else ""), value)
            object.__setattr__(self, name, tuple(float(v) for v in value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AlignSettings:
        """Build from a pipeline's ``[align]`` table; ``""`` and ``[]`` mean "not set" (TOML has no null)."""
        return from_mapping(cls, "align", {k: (None if v in ("", []) else v) for k, v in values.items()})

    def align_flow(self, flow: torch.Tensor, size: tuple[int, int], region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One driving flow laid onto an image of ``size`` (``mtransfer.flows.align.align_flow``);
        ``region_mask`` is the loaded mask image when ``region`` names one."""
        return align_flow(
            flow, size, fit=self.fit, region=self.region if isinstance(self.region, tuple) else None,
            region_mask=region_mask, source_region=self.source_region, spatial_sigma=self.spatial_sigma,
            feather=self.feather, strength=self.strength,
        )

    def align_flows(self, flows: torch.Tensor, size: tuple[int, int], region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A clip's driving flows ``(T, 2, h, w)`` (frame 0 first) → target flows ``(T, 2, H, W)``."""
        return smooth_over_time(self.align_flow(flows, size, region_mask), self.temporal, self.temporal_amount)



NO_STAGE: dict[str, Any] = {STAGE: None}
"""Metadata of a setting that shapes no stage's results (a device, a batch size, a preview interval)."""


MAX_WORKING_PIXELS = 4096 * 4096
"""Largest working size of an edit (16 megapixels): Stable Diffusion v1 is trained at 512x512, and a guided
pass at 4096x4096 already needs more memory than any GPU has; anything larger is a typo, not a request."""


def _size(section_name: str, value: Any) -> tuple[int, int] | None:
    """``[height, width]`` → a tuple; ``[]`` or ``0`` → None."""
    if value in ([], (), 0, None):
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    rule_checker(section_name)(ok, "size", "must be [height, width] in pixels, or [] for the input's own size", value)
    return int(value[0]), int(value[1])


def fit_longer_side(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """``image_size`` scaled so that its longer side is the longer side of ``size`` and its shape is kept,
    each side rounded to a multiple of ``SD_SIZE_MULTIPLE`` (at least one multiple)."""
    scale = max(size) / max(image_size)
    return tuple(max(SD_SIZE_MULTIPLE, round(side * scale / SD_SIZE_MULTIPLE) * SD_SIZE_MULTIPLE)  # type: ignore[return-value]
                 for side in image_size)


SHAPE_TOLERANCE = 0.05
"""A working size whose width:height differs from the image's by more than this share changes the picture's
shape visibly and is said (``shape_note``); rounding to multiples of 8 alone moves it by up to ~3 % at the
offline demo's 128 px and less at larger sizes, which is not worth a line."""


def shape_note(image_size: tuple[int, int], working: tuple[int, int], what: str = "the image") -> str | None:
    """A note when editing at ``working`` stretches the picture of ``image_size``, with the size that would not."""
    (height, width), (work_height, work_width) = image_size, working
    before, after = width / height, work_width / work_height
    kept = fit_longer_side(image_size, working)
    if abs(after / before - 1) <= SHAPE_TOLERANCE or kept == tuple(working):
        return None  # within rounding, or already the closest shape-keeping size (multiples of 8)
    return (f"note: {what} is {height}x{width} (height x width) and is edited at {work_height}x{work_width}, which "
            f"changes its shape (width:height {before:.2f} → {after:.2f}); --size {kept[0]}x{kept[1]} keeps it")


def _working_size_problem(height: int, width: int) -> str | None:
    if height * width > MAX_WORKING_PIXELS:
        return (f"{height}x{width} (height x width) is over the largest working size, {MAX_WORKING_PIXELS:,} pixels "
                "(4096x4096); use --size 512x512 (Stable Diffusion's own) or another size under the limit")
    return None


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: which diffusion model edits the image, at what size, on what device.

    ``model`` is a Hugging Face id, a local diffusers folder, a ``.safetensors``/``.ckpt`` checkpoint of
    SD 1.x/2.x, ``"tiny"`` / ``"tiny-sd2"`` (random tiny SD 1.x / 2.x v-prediction, offline) or
    ``"exact"`` (the exact denoiser over the target image under a family of motions, see
    ``mtransfer.diffusion.exact``; its ``family_*`` settings choose the motions). ``size`` is the working
    ``[height, width]``: the target image is resized to it; ``[]`` keeps the image's own size. With
    ``keep_aspect`` (the shipped presets) ``size`` is a scale instead: the image's longer side becomes the
    longer of ``size`` and the other side keeps the image's shape, both multiples of 8 (``fit_longer_side``);
    ``--size`` asks for a fixed size and turns it off. Stable Diffusion needs multiples of 8 (``SD_SIZE_MULTIPLE``). ``device = "auto"`` picks CUDA when available.
    ``speed`` names execution switches of ``mtransfer.speed`` (e.g. ``"sdpa+cache-source"``; ``""`` runs
    the models as loaded); see BENCHMARKS.md for what each costs and how far it drifts.
    """

    model: str = "CompVis/stable-diffusion-v1-4"
    size: Any = field(default=(512, 512), metadata={STAGE: "align"})
    keep_aspect: bool = field(default=False, metadata={STAGE: "align"})
    prompt: str = ""
    dtype: str = "float32"
    device: str = field(default="auto", metadata=NO_STAGE)
    family_step: int = 0
    family_radius: int = 2
    family_rotations: Any = (0.0,)
    family_scales: Any = (1.0,)
    speed: str = ""

    def __post_init__(self) -> None:
        check_types(self, "model")
        require = rule_checker("model")
        object.__setattr__(self, "size", _size("model", self.size))
        if self.speed:
            parse_fast_path(self.speed)  # unknown or contradictory switches are refused before any work
        require(bool(self.model), "model", "must name a model", self.model)
        require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        require(self.family_step >= 0, "family_step", "must be >= 0 (0 = 1/16 of the short side)", self.family_step)
        require(self.family_radius >= 0, "family_radius", "must be >= 0", self.family_radius)
        for name in ("family_rotations", "family_scales"):
            value = getattr(self, name)
            require(finite_numbers(value) and len(value) > 0, name, "must be a non-empty list of finite numbers", value)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        require(all(s > 0 for s in self.family_scales), "family_scales", "must be positive", self.family_scales)
        if self.size is not None and (problem := _working_size_problem(*self.size)):
            raise UsageError(f"model.size {problem}")
        if self.size is not None and self.model != "exact" and (fixed := sd_size_fix(*self.size)):
            raise UsageError(f"model.size {self.size[0]}x{self.size[1]}: Stable Diffusion needs multiples of 8; "
                                 f"use --size {fixed[0]}x{fixed[1]}")

    @property
    def is_offline(self) -> bool:
        return self.model in OFFLINE_MODELS

    def working_size(self, image_size: tuple[int, int], image: Path | None = None) -> tuple[int, int]:
        """The size edits run at: ``size``, or the image's own ``image_size`` when ``size`` is ``[]``
        (refused with the ``--size`` to use when Stable Diffusion cannot take it)."""
        if self.size is not None:
            return fit_longer_side(image_size, self.size) if self.keep_aspect else self.size
        height, width = image_size
        if problem := _working_size_problem(height, width):
            raise input_error(image, f"model.size = [] edits at the image's own size, but {problem}") \
                if image is not None else UsageError(f"the image's own size {problem}")
        if self.model != "exact" and (fixed := sd_size_fix(height, width)):
            problem = (f"is {height}x{width} (height x width) but Stable Diffusion needs multiples of 8; "
                       f"pass --size {fixed[0]}x{fixed[1]} to resize it")
            raise input_error(image, problem) if image is not None else UsageError(f"the image {problem}")
        return height, width

    def torch_device(self) -> torch.device:
        return parse_device(self.device, "model.device")


@dataclass(frozen=True)
class EstimatorSettings:
    """``[estimator]``: the flow estimator inside the guidance energy (it must be differentiable, which
    ``mtransfer.app.models.load_estimator`` checks); also the form ``VideoSettings`` hands its video
    estimator over in. ``iterations`` 0 and ``weights`` ``""`` keep the estimator's defaults.

    ``weights`` (RAFT only): torchvision's weights by name (``"C_T_V1"``: the original "raft-things", as
    the authors use; ``"DEFAULT"``), a local ``.pth`` path, ``"random"``, or ``""`` (``$MTRANSFER_RAFT_WEIGHTS``,
    else ``DEFAULT``). ``autocast`` (RAFT only): the original RAFT's fp16 mixed precision on CUDA, as the
    authors run it; no effect on the CPU."""

    name: str = "raft-large"
    iterations: int = 0
    weights: str = ""
    autocast: bool = False

    def __post_init__(self) -> None:
        check_types(self, "estimator")
        require = rule_checker("estimator")
        require(self.name in ESTIMATORS, "name", f"must be one of {', '.join(ESTIMATORS)}", self.name)
        require(self.iterations >= 0, "iterations", "must be >= 0 (0 = the estimator's default)", self.iterations)
        if not self.name.startswith("raft-"):  # a preset's RAFT weights do not apply to a weight-free estimator
            object.__setattr__(self, "weights", "")
            object.__setattr__(self, "autocast", False)


@dataclass(frozen=True)
class VideoSettings:
    """``[video]``: which frames drive the motion, how their flow is measured, how frames are chained.

    - ``stride`` / ``max_frames``: keep frames 0, stride, 2*stride, ...; at most ``max_frames`` (0 = all).
    - ``size``: ``[height, width]`` or a short side the frames are resized to before flow estimation
      (0 = as recorded, up to ``max_side``). The flow is resized to the target image afterwards (``[align]``).
    - ``max_side``: with ``size = 0``, frames whose longer side exceeds this are scaled down to it (aspect
      kept): a frame's flow is measured at about RAFT's training resolution and twice the edit's working size
      instead of spending minutes and hundreds of MB per 8K frame on detail the 512 px edit cannot use.
      0 = no cap. It shapes results only through the size it gives, which the decode stage records.
    - ``flow``: ``direct`` estimates frame 0 → frame t for each t (no drift, but large motions are hard);
      ``chained`` estimates t-1 → t and composes them (small steps, but errors accumulate).
    - ``estimator`` / ``iterations`` / ``weights``: the (not necessarily differentiable) video estimator.
    - ``batch_size``: frame pairs per estimator call (memory only).
    - ``plan``: which moving frames are edited from the shared start (*keys*) and which start from another
      frame's result (*warm*, see ``mtransfer.app.plan``): ``independent`` (every frame a key), ``chain``
      (a key where the motion starts, then each frame from the one before) or ``keys`` (also a key every
      ``key_every`` moving frames). A warm frame starts from its parent (``warm_from``: the frame before it,
      or its segment's key) as ``warm_start`` or ``init`` say; ``key_change`` > 0 makes a warm frame a key
      when its target flow differs from its parent's by more than that many px somewhere (a cut, a jolt).
      Keys run in parallel on every executor; a warm frame starts as soon as its parent is written.
    - ``warm_start``: a fraction ``s`` in (0, 1): a warm frame starts from its parent's result re-noised to
      the step at which the last ``s`` of the schedule begins and runs only those steps (``warm_start_step``),
      so it pays about ``s`` of the passes. ``warm_warp``: before re-noising, move the parent's result by the
      target motion from the parent to the frame (``image``: the decoded picture, re-encoded; ``latent``: the
      latent itself; ``none``).
    - ``init``: ``shared`` (the shared start, or ``warm_start``) or ``previous``: a warm frame runs the whole
      schedule from the shared start shifted towards its parent's result (``previous_frame_start``).
    - ``batch``: frames edited together when they are ready at the same time and start at the same level,
      one UNet/decoder/estimator call per pass for all of them where that leaves every item's arithmetic as
      it is (``batch_invariant``); otherwise one after another. Results equal ``batch = 1`` either way
      (declared as shaping no stage, like ``batch_size``). Memory grows with it.
    """

    stride: int = 1
    max_frames: int = 0
    size: Any = 0
    flow: str = field(default="direct", metadata={STAGE: "flow"})
    estimator: str = field(default="raft-large", metadata={STAGE: "flow"})
    iterations: int = field(default=0, metadata={STAGE: "flow"})
    weights: str = field(default="", metadata={STAGE: "flow"})
    batch_size: int = field(default=4, metadata=NO_STAGE)
    init: str = field(default="shared", metadata={STAGE: "guide"})
    warm_start: float = field(default=0.0, metadata={STAGE: "guide"})
    plan: str = field(default="independent", metadata={STAGE: "guide", RECORDED_UNLESS: "independent"})
    key_every: int = field(default=0, metadata={STAGE: "guide", RECORDED_UNLESS: 0})
    warm_from: str = field(default="previous", metadata={STAGE: "guide", RECORDED_UNLESS: "previous"})
    key_change: float = field(default=0.0, metadata={STAGE: "guide", RECORDED_UNLESS: 0.0})
    warm_warp: str = field(default="none", metadata={STAGE: "guide", RECORDED_UNLESS: "none"})
    batch: int = field(default=1, metadata=NO_STAGE)
    max_side: int = field(default=DEFAULT_MAX_SIDE, metadata=NO_STAGE)

    def __post_init__(self) -> None:
        check_types(self, "video")
        require = rule_checker("video")
        require(self.stride >= 1, "stride", "must be at least 1", self.stride)
        require(self.max_frames == 0 or self.max_frames >= 2, "max_frames", "must be 0 (all) or at least 2",
                self.max_frames)
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            require(self.size >= 0, "size", "must be a short side >= 0 or [height, width]", self.size)
        else:
            object.__setattr__(self, "size", _size("video", self.size))
        require(self.flow in FLOW_MODES, "flow", f"must be one of {', '.join(FLOW_MODES)}", self.flow)
        require(self.estimator in ESTIMATORS, "estimator", f"must be one of {', '.join(ESTIMATORS)}", self.estimator)
        require(self.iterations >= 0, "iterations", "must be >= 0 (0 = default)", self.iterations)
        require(self.batch_size >= 1, "batch_size", "must be at least 1", self.batch_size)
        require(self.init in INIT_MODES, "init", f"must be one of {', '.join(INIT_MODES)}", self.init)
        require(0 <= self.warm_start < 1, "warm_start", "must be 0 (off) or a fraction in (0, 1)", self.warm_start)
        require(not (self.warm_start and self.init == "previous"), "warm_start",
                'and init = "previous" both choose where a frame starts; use one of them', self.warm_start)
        require(self.plan in PLANS, "plan", f"must be one of {', '.join(PLANS)}", self.plan)
        chained = self.init == "previous" or self.warm_start > 0
        if self.plan == "independent":
            require(not chained, "plan",
                    f'"independent" starts every frame from the shared start, but video.'
                    f'{"warm_start" if self.warm_start else "init"} starts a frame from another one\'s result; '
                    'set video.plan = "chain" (each frame from the one before) or "keys"', self.plan)
        else:
            require(chained, "plan", "needs video.warm_start = s (the share of the schedule a warm frame runs, "
                    'e.g. 0.5) or video.init = "previous" (how a frame starts from its parent)', self.plan)
        require(self.key_every >= 0, "key_every", "must be 0 or at least 1", self.key_every)
        require((self.plan == "keys") == (self.key_every > 0), "key_every",
                'is how many moving frames a key serves: set it (at least 1) with plan = "keys" and only then',
                self.key_every)
        require(self.warm_from in WARM_FROM, "warm_from", f"must be one of {', '.join(WARM_FROM)}", self.warm_from)
        require(self.key_change >= 0, "key_change", "must be >= 0 px (0 = off)", self.key_change)
        require(self.warm_warp in WARM_WARPS, "warm_warp", f"must be one of {', '.join(WARM_WARPS)}",
                self.warm_warp)
        require(self.warm_warp == "none" or self.warm_start > 0, "warm_warp",
                "moves a warm start (video.warm_start > 0) before it is re-noised; set warm_start too",
                self.warm_warp)
        require(self.batch >= 1, "batch", "must be at least 1", self.batch)
        require(self.max_side == 0 or self.max_side >= MIN_SIDE, "max_side",
                f"must be 0 (no cap) or at least {MIN_SIDE} px", self.max_side)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` a ``height`` x ``width`` clip is decoded and measured at: ``size``, else
        the clip's own size scaled down to ``max_side`` when it is larger (a side under ``MIN_SIDE`` is refused)."""
        if self.size:
            return output_size(height, width, self.size)
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            return output_size(height, width, (max(1, round(height * scale)), max(1, round(width * scale))))
        return output_size(height, width, None)

    def capped(self, height: int, width: int) -> bool:
        """Whether ``max_side`` scales this clip down (``size`` not set and the clip larger than the cap)."""
        return not self.size and self.frame_size(height, width) != (height, width)

    @property
    def flow_estimator(self) -> EstimatorSettings:
        """The video estimator in the form every estimator is loaded from."""
        return EstimatorSettings(self.estimator, self.iterations, self.weights)


@dataclass(frozen=True)
class OutputSettings:
    """``[output]``: how the results are encoded (no effect on the frames themselves).

    ``fps`` 0 = the driving clip's rate after ``stride``; ``crf`` is the H.264 quality (lower = better).
    """

    fps: float = 0.0
    crf: int = 18

    def __post_init__(self) -> None:
        check_types(self, "output")
        require = rule_checker("output")
        require(self.fps == 0 or MIN_FPS <= self.fps <= MAX_FPS, "fps",
                f"must be 0 (the video's) or in [{MIN_FPS:g}, {MAX_FPS:g}] frames per second", self.fps)
        require(0 <= self.crf <= 51, "crf", "must be in 0..51", self.crf)


@dataclass(frozen=True)
class EvaluationSettings:
    """``[evaluation]``: the independent judge of a run's results (``mtransfer.evaluation``), run by the
    ``evaluate`` stage after the edits; its figures go to ``evaluation.json``, the manifest and the report.

    - ``enabled``: judge the results at the end of a run (``false``: skip; ``mtransfer eval`` can later).
    - ``estimator``: the judge; ``""`` picks RAFT-large or RAFT-small when their weights are on this machine
      and they did not guide the edit, else TV-L1 (``judge_estimator_name``). Never the guidance estimator.
    - ``max_side``: the long side (px) the judge measures at, which bounds its cost per frame (TV-L1 runs
      on the CPU); larger images are measured shrunk and their flows scaled back.
    """

    enabled: bool = True
    estimator: str = ""
    max_side: int = 256

    def __post_init__(self) -> None:
        check_types(self, "evaluation")
        require = rule_checker("evaluation")
        require(self.estimator in ("", *ESTIMATORS), "estimator", f"must be \"\" (automatic) or one of "
                f"{', '.join(ESTIMATORS)}", self.estimator)
        require(self.max_side >= 16, "max_side", "must be at least 16 px", self.max_side)


@dataclass(frozen=True)
class ExecutionSettings:
    """``[execution]``: where the guide stage's frames are edited (``mtransfer.app.executors``). Shapes no
    stage's results: a frame is the same bytes whichever executor made it, so a run started with one
    executor resumes with the other.

    - ``executor``: ``local`` (this process) or ``ray`` (a pool of Ray actors, one model each).
    - ``address``: the Ray cluster to join (``"auto"``: the one ``ray start --head`` started on this
      machine; ``"ray://host:10001"``: a remote one); ``""`` starts a local Ray instance over this machine.
    - ``workers``: how many actors (0: one per ``gpus_per_worker`` GPUs of the cluster, or a few CPU
      actors on a cluster without GPUs).
    - ``gpus_per_worker``: GPUs each actor holds (a fraction packs several actors on a GPU); ignored on
      a cluster without GPUs or when ``model.device = "cpu"``.
    - ``max_retries``: how often a frame whose worker died is tried again on another worker.
    """

    executor: str = "local"
    address: str = ""
    workers: int = 0
    gpus_per_worker: float = 1.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        check_types(self, "execution")
        require = rule_checker("execution")
        require(self.executor in EXECUTORS, "executor", f"must be one of {', '.join(EXECUTORS)}", self.executor)
        require(self.workers >= 0, "workers", "must be >= 0 (0 = one per GPU, or a few CPU workers)", self.workers)
        require(self.gpus_per_worker > 0, "gpus_per_worker", "must be > 0 (e.g. 1, or 0.5 for two per GPU)",
                self.gpus_per_worker)
        require(self.max_retries >= 0, "max_retries", "must be >= 0", self.max_retries)
        require(ray_address_ok(self.address), "address",
                'must be "" (start Ray here), "auto", "local", "ray://HOST:PORT" or "HOST:PORT"', self.address)


def ray_address_ok(address: str) -> bool:
    """Whether ``address`` has a form ``ray.init`` accepts; whether a cluster answers there is found out by
    connecting, which the guide stage does before any work."""
    if address in ("", "auto", "local"):
        return True
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    return bool(colon and host and port.isdigit() and 0 < int(port) < 65536 and not any(c.isspace() for c in host))


@dataclass(frozen=True)
class RunSettings:
    """Every section of a pipeline, validated; each section's metadata names the stage it shapes by default
    (``[execution]`` none: it decides where frames are made, not what they are)."""

    name: str
    model: ModelSettings = field(metadata={STAGE: "guide"})
    estimator: EstimatorSettings = field(metadata={STAGE: "guide"})
    guidance: GuidanceSettings = field(metadata={STAGE: "guide"})
    video: VideoSettings = field(metadata={STAGE: "decode"})
    align: AlignSettings = field(metadata={STAGE: "align"})
    output: OutputSettings = field(metadata={STAGE: "encode"})
    evaluation: EvaluationSettings = field(default=EvaluationSettings(), metadata={STAGE: "evaluate"})
    execution: ExecutionSettings = field(default=ExecutionSettings(), metadata=NO_STAGE)

    def __post_init__(self) -> None:
        if self.evaluation.estimator and self.evaluation.estimator == self.estimator.name:
            raise UsageError(
                f"evaluation.estimator: {self.estimator.name} guides the edit, so it cannot judge it too; "
                'pick another estimator, or "" for the automatic choice'
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Validate a loaded preset (nested dicts); unknown sections and keys are named."""
        sections = {f.name: f for f in fields(cls) if f.name != "name"}
        unknown = sorted(set(config) - set(sections) - {"name", "description"})
        if unknown:
            raise UsageError(f"pipeline '{config.get('name')}': unknown section [{unknown[0]}] "
                                 f"(known: {', '.join(sorted(sections))})")
        values = {name: _section_from_mapping(SECTIONS[name], name, section(config, name)) for name in sections}
        return cls(name=str(config.get("name", "")), **values)

    def as_record(self) -> dict[str, Any]:
        """The settings as JSON-ready nested dicts (tuples become lists), as stored in the manifest."""
        return {f.name: _as_record(getattr(self, f.name)) for f in fields(self)}

    def by_stage(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{stage: {section: {key: value}}}``: each setting under the one stage it declares it shapes."""
        own: dict[str, dict[str, dict[str, Any]]] = {stage: {} for stage in STAGES}
        for section_field in fields(self):
            if section_field.name == "name":
                continue
            values = getattr(self, section_field.name)
            for setting in fields(values):
                stage = declared_stage(setting, section_field.metadata[STAGE])
                if stage is None:
                    continue
                if stage not in STAGES:
                    raise ValueError(f"{section_field.name}.{setting.name} declares unknown stage {stage!r}")
                value = getattr(values, setting.name)
                if RECORDED_UNLESS in setting.metadata and value == setting.metadata[RECORDED_UNLESS]:
                    continue
                own[stage].setdefault(section_field.name, {})[setting.name] = _as_record(value)
        return own

    def stage_settings(
        self, extra: Mapping[str, Mapping[str, Any]] | None = None, skip: Collection[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """What each stage's results depend on: its own settings and those of every earlier stage.

        ``extra`` adds per-stage entries that are not settings (input fingerprints, the resolved working
        size); a nested dict is merged into the section of the same name. Stages in ``skip`` (a run that
        stops before them) pass nothing on to later stages.
        """
        own = self.by_stage()
        for stage, entries in (extra or {}).items():
            for key, value in entries.items():
                own[stage][key] = {**own[stage].get(key, {}), **value} if isinstance(value, dict) else value
        result, carried = {}, {}
        for stage in STAGES:
            if stage not in skip:
                carried = _merged(carried, own[stage])
            result[stage] = json.loads(json.dumps(carried))
        return result


SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "estimator": EstimatorSettings,
    "guidance": GuidanceSettings,
    "video": VideoSettings,
    "align": AlignSettings,
    "output": OutputSettings,
    "evaluation": EvaluationSettings,
    "execution": ExecutionSettings,
}
"""The class that validates each section of a preset."""


def load_settings(pipeline: str | Path = "paper", overrides: Collection[str] = ()) -> RunSettings:
    """A preset (name or ``.toml`` path) with ``section.key=value`` overrides, validated: the one way in."""
    return RunSettings.from_config(load_pipeline(pipeline, list(overrides)))


def _section_from_mapping(cls: type, name: str, values: Mapping[str, Any]) -> Any:
    own = getattr(cls, "from_mapping", None)  # sections with their own reading of "not set" (align)
    return own(values) if own is not None else from_mapping(cls, name, values)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _as_record(value: Any) -> Any:
    """A settings value as plain data: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: _as_record(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_as_record(v) for v in value]
    return value
