"""``MotionGuidancePipeline``: motion guidance in the shape of a diffusers pipeline, for scripts.

A front end like the CLI: the components are wrapped in the same ``StableDiffusionBackend``, the edit is
run by the same ``Editor`` (``prepare`` then ``edit``) with settings read from a preset (``paper`` unless
``preset=`` says otherwise) plus the call's arguments, so a call equals ``mtransfer edit`` with the same
settings, pixel for pixel. There is no safety checker: the pipeline edits the caller's own image.

    pipe = MotionGuidancePipeline.from_pretrained("CompVis/stable-diffusion-v1-4").to("cuda")
    result = pipe(Image.open("cat.png"), "translate(16, 0)", prompt="a cat", height=512, width=512)
    result.images[0].save("edited.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from mtransfer.app import Editor, load_settings
from mtransfer.app.models import load_estimator
from mtransfer.diffusion.backends import SD_SIZE_MULTIPLE
from mtransfer.diffusion.stable_diffusion import CHECKPOINT_SUFFIXES, backend_from_components, load_components
from mtransfer.errors import UsageError
from mtransfer.estimators import DIFFERENTIABLE
from mtransfer.files import to_uint8
from mtransfer.flows.spec import load_flow
from mtransfer.guidance.edit import motionless
from mtransfer.guidance.sampler import StopSampling

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class MotionGuidancePipelineOutput(BaseOutput):
    """``images``: the edit (one, as ``output_type`` says); ``achieved_flow`` ``(2, H, W)``: the flow the
    estimator measures from the source to the edit; ``losses``: one record per guided pass (step,
    recursion, energy terms, gradient norm); ``diverged``/``divergence``: whether the sampler stopped on a
    NaN or an exploding latent (then ``images`` holds its last good estimate) and why."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    achieved_flow: torch.Tensor
    losses: list[dict]
    diverged: bool = False
    divergence: str | None = None


class MotionGuidancePipeline(DiffusionPipeline):
    """Edit an image so that its content moves along a target flow (Geng & Owens, ICLR 2024).

    Built with ``from_pretrained`` (a Hub id, a diffusers folder, ``"tiny"``), ``from_single_file`` (a
    ``.safetensors``/``.ckpt``), or from a Stable Diffusion pipeline's components:
    ``MotionGuidancePipeline(**sd.components, flow_estimator="raft-large")``. ``flow_estimator`` is a
    differentiable estimator's name (``raft-large``, ``raft-small``, ``pyramid``; loaded with the preset's
    ``[estimator]`` settings) or a ``FlowEstimator``; ``None`` takes the ``paper`` preset's (RAFT-large).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["flow_estimator"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        flow_estimator: Any = None,
        safety_checker: Any = None,  # accepted so that ``**sd.components`` works; not used
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = False,
    ) -> None:
        super().__init__()
        self._interrupt = False
        if flow_estimator is None or isinstance(flow_estimator, str):
            flow_estimator = _estimator(flow_estimator, "paper")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            flow_estimator=flow_estimator,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, *, flow_estimator: Any = None,
        torch_dtype: torch.dtype | None = None, **kwargs: Any,
    ) -> MotionGuidancePipeline:
        """The pipeline over the SD 1.x/2.x that ``--model`` would load: a Hugging Face id (cache honoured,
        ``HF_HUB_OFFLINE`` respected), a diffusers folder, a checkpoint file or ``"tiny"``/``"tiny-sd2"``
        (random, offline). A model that cannot be had is a one-line ``MtransferError``."""
        if kwargs:
            raise UsageError(f"from_pretrained: unsupported argument(s) {', '.join(sorted(kwargs))}; "
                             "mtransfer takes flow_estimator and torch_dtype")
        parts = load_components(pretrained_model_name_or_path, dtype=torch_dtype or torch.float32)
        return cls(**parts, flow_estimator=flow_estimator)

    @classmethod
    def from_single_file(
        cls, path: str | Path, *, flow_estimator: Any = None, torch_dtype: torch.dtype | None = None
    ) -> MotionGuidancePipeline:
        """The pipeline over one ``.safetensors``/``.ckpt`` checkpoint of SD 1.x/2.x (original layout),
        read offline with the configs mtransfer ships."""
        if Path(path).suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UsageError(f"from_single_file: {path} is not a {' or '.join(CHECKPOINT_SUFFIXES)} file")
        return cls.from_pretrained(path, flow_estimator=flow_estimator, torch_dtype=torch_dtype)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in ``callback_on_step_end`` to stop after that step (as diffusers)."""
        return self._interrupt

    def check_inputs(
        self, image: Any, flow: Any, height: int | None, width: int | None, edit_mask: Any, output_type: str,
        callback_on_step_end: Any, callback_on_step_end_tensor_inputs: Any,
    ) -> None:
        """Refuse what cannot be edited before any model runs; each error names the argument."""
        if not isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            raise UsageError(f"image: expected a PIL image, an (H, W, 3) array or a (3, H, W) tensor, "
                             f"got {type(image).__name__}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % SD_SIZE_MULTIPLE):
                raise UsageError(f"{name}: must be a positive multiple of {SD_SIZE_MULTIPLE}, got {value!r}")
        if not isinstance(flow, (str, Path, np.ndarray, torch.Tensor)):
            raise UsageError(f"flow: expected a motion such as 'translate(8, 0)', a flow file or a (2, H, W) "
                             f"array/tensor in pixels, got {type(flow).__name__}")
        if edit_mask is not None and not isinstance(edit_mask, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            raise UsageError(
                f"edit_mask: expected a PIL image, an (H, W) array or tensor, got {type(edit_mask).__name__}"
            )
        if output_type not in OUTPUT_TYPES:
            raise UsageError(f"output_type: must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise UsageError("callback_on_step_end: must be callable (pipe, step, timestep, callback_kwargs)")
        if not isinstance(callback_on_step_end_tensor_inputs, (list, tuple)) or not all(
            name in self._callback_tensor_inputs for name in callback_on_step_end_tensor_inputs
        ):
            raise UsageError(
                f"callback_on_step_end_tensor_inputs: must be a list of {', '.join(self._callback_tensor_inputs)}, "
                f"got {callback_on_step_end_tensor_inputs!r}"
            )

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        flow: str | Path | np.ndarray | torch.Tensor,
        prompt: str = "",
        edit_mask: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        recursions: int | None = None,
        guidance_weight: float | None = None,
        flow_weight: float | None = None,
        color_weight: float | None = None,
        clip_grad: float | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        preset: str | Path = "paper",
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
    ) -> MotionGuidancePipelineOutput | tuple:
        """Move ``image`` by ``flow`` and return the edit.

        ``image`` is resized to ``height`` x ``width`` (default: its own size; Lanczos, as ``mtransfer edit``
        does) and ``flow`` is given at that size: a motion (``'rotate(20) | translate(10, 0)'``), a flow
        file, or ``(2, H, W)`` pixels. ``edit_mask`` (H, W) in [0, 1] (white = may change) at that size.
        ``None`` arguments keep the ``preset``'s values (the paper's: 500 steps, 10 recursions, guidance
        weight 300, flow weight 3, colour weight 100, clip 200, CFG ``guidance_scale`` 7.5). The recursion
        noise comes from a generator seeded with ``generator.initial_seed()`` (``--seed``; 0 without one).
        ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` runs after every DDIM step (after its
        last recursion) with the tensors ``callback_on_step_end_tensor_inputs`` names (``latents``, the step's
        result ``(1, 4, H/8, W/8)``); a returned dict's ``latents`` is what the next step starts from (the
        last step's is decoded), and setting ``pipe._interrupt = True`` ends the edit after that step.
        """
        self.check_inputs(
            image, flow, height, width, edit_mask, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self._interrupt = False
        source = _image_tensor(image, height, width)
        size = tuple(source.shape[-2:])
        target_flow = _flow_tensor(flow, size)
        mask = None if edit_mask is None else _mask_tensor(edit_mask, size)
        overrides = {
            "model.size": list(size), "model.prompt": prompt, "guidance.steps": num_inference_steps,
            "guidance.recursions": recursions, "guidance.guidance_weight": guidance_weight,
            "guidance.flow_weight": flow_weight, "guidance.color_weight": color_weight,
            "guidance.clip_grad": clip_grad, "guidance.cfg_scale": guidance_scale,
            "guidance.seed": None if generator is None else generator.initial_seed(),
        }
        given = [f"{key}={_toml(value)}" for key, value in overrides.items() if value is not None]
        settings = load_settings(preset, given)
        components = {name: getattr(self, name) for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        device = self._execution_device
        backend = backend_from_components(components, type(self).__name__, device=device, dtype=self.unet.dtype)
        editor = Editor(backend, self.flow_estimator, settings, device)
        guidance = settings.guidance
        with self.progress_bar(total=guidance.steps * (1 + guidance.recursions)) as bar:
            state = editor.prepare(source, prompt, progress=bar.update)
            bar.n = guidance.steps  # forward noising ("random") reports no steps

            def step_end(step: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
                available = {"latents": latents}
                tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, step, timestep, tensors)
                replaced = _callback_latents(outputs, latents)
                if self.interrupt:
                    raise StopSampling(latents if replaced is None else replaced)
                return replaced

            result = editor.edit(
                state, target_flow, edit_mask=mask, progress=bar.update,
                step_end=None if callback_on_step_end is None else step_end,
            )
        images = _output(result.image, output_type)
        if not return_dict:
            return (images,)
        return MotionGuidancePipelineOutput(
            images=images, achieved_flow=result.achieved_flow.cpu(), losses=result.losses,
            diverged=result.diverged, divergence=result.divergence,
        )


def _callback_latents(outputs: Any, latents: torch.Tensor) -> torch.Tensor | None:
    """The ``latents`` a callback returned (None when it returned none), checked against the step's own."""
    if outputs is None:
        return None
    if not isinstance(outputs, dict):
        raise UsageError(f"callback_on_step_end: must return a dict (or None), got {type(outputs).__name__}")
    replaced = outputs.get("latents")
    if replaced is not None and (not isinstance(replaced, torch.Tensor) or replaced.shape != latents.shape):
        got = tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else type(replaced).__name__
        raise UsageError(f"callback_on_step_end: returned latents {got}, expected a tensor {tuple(latents.shape)}")
    return replaced


def _estimator(name: str | None, preset: str) -> Any:
    """The estimator ``name`` (default: the preset's) with the preset's ``[estimator]`` settings, on the CPU."""
    if name is not None and name not in DIFFERENTIABLE:
        raise UsageError(
            f"flow_estimator: {name!r} is not a differentiable estimator; use one of {', '.join(DIFFERENTIABLE)}"
        )
    settings = load_settings(preset, [] if name is None else [f"estimator.name={_toml(name)}"])
    return load_estimator(settings.estimator, "cpu", for_guidance=True)


def _toml(value: Any) -> str:
    """A value as the TOML text a ``section.key=value`` override takes."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _image_tensor(image: Any, height: int | None, width: int | None) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] at ``height`` x ``width``: PIL images resized as ``load_image`` resizes."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise UsageError(f"image: a tensor must be (3, H, W) in [0, 1], got shape {tuple(tensor.shape)}")
        image = PIL.Image.fromarray(to_uint8(tensor))
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"image: an array must be (H, W, 3), got shape {image.shape}")
        array = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        image = PIL.Image.fromarray(array)
    rgb = image.convert("RGB")
    size = (height or rgb.height, width or rgb.width)
    if size[0] % SD_SIZE_MULTIPLE or size[1] % SD_SIZE_MULTIPLE:
        raise UsageError(f"image: {size[0]}x{size[1]} (height x width) is not a multiple of {SD_SIZE_MULTIPLE}; "
                         "pass height= and width=")
    if rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), PIL.Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _flow_tensor(flow: Any, size: tuple[int, int]) -> torch.Tensor:
    if isinstance(flow, (str, Path)):
        target = load_flow(flow, *size)
    else:
        target = torch.as_tensor(np.asarray(flow) if isinstance(flow, np.ndarray) else flow).detach().float().cpu()
        if tuple(target.shape) != (2, *size):
            raise UsageError(f"flow: shape {tuple(target.shape)}, expected (2, {size[0]}, {size[1]}) for the image")
    if motionless(target):
        raise UsageError("flow: moves no pixel, so there is nothing to edit (the result would be the source)")
    return target


def _mask_tensor(mask: Any, size: tuple[int, int]) -> torch.Tensor:
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32) if isinstance(mask, np.ndarray) else mask).float().cpu()
    tensor = tensor.squeeze(0) if tensor.dim() == 3 else tensor
    if tuple(tensor.shape) != size:
        raise UsageError(f"edit_mask: shape {tuple(tensor.shape)}, expected ({size[0]}, {size[1]}) like the image")
    if not 0 <= float(tensor.min()) <= float(tensor.max()) <= 1 or float(tensor.max()) == 0:
        raise UsageError("edit_mask: values must be in [0, 1] with something editable (white = may change)")
    return tensor[None]


def _output(image: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """The edit ``(3, H, W)`` as diffusers returns images: PIL list, ``(1, H, W, 3)`` array or ``(1, 3, H, W)``."""
    image = image.detach().float().cpu().clamp(0, 1)
    if output_type == "pt":
        return image[None]
    if output_type == "np":
        return image.permute(1, 2, 0).numpy()[None]
    return [PIL.Image.fromarray(to_uint8(image))]  # the very bytes `mtransfer edit` writes to edited.png
