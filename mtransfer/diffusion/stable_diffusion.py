"""Stable Diffusion 1.x/2.x as a ``DiffusionBackend``: real weights, or a tiny random model built offline.

Real models come from a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), a Hugging Face id (cache honoured, ``HF_HUB_OFFLINE``
respected) or a single ``.safetensors``/``.ckpt`` file in the original layout (read with diffusers'
single-file loader and the configs shipped in ``configs/``, so no config is fetched). ``model="tiny"``
builds a randomly initialised SD whose configs are the real SD v1.4 ones (``configs/sd-v1-4/``) scaled
down, saves it as a diffusers folder once, and loads it through the very same code as a real model, so
everything downstream of loading is exercised without any download; ``"tiny-sd2"`` is the same from the
SD 2.1 configs (v-prediction).

Epsilon and v-prediction models (the scheduler's ``prediction_type``) both work: the backend turns a
v-prediction into the noise it implies, so the sampler's x0 estimate, DDIM steps, inversion and guided
step stay written in the eps form and are exact for both. SDXL is refused, as a file (``_single_file_config``)
and as a folder or id (``backend_from_components``).

The tiny model keeps the real VAE downsampling factor of 8 (four VAE blocks), because latent-grid
arithmetic (image size → latent size, flows resized to the latent grid) must be right for real models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import try_to_load_from_cache
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from mtransfer.diffusion.ddim import eps_from_v
from mtransfer.errors import InputError, UsageError, WeightsMissing, input_error

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = CONFIGS / "sd-v1-4"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TINY_NAME = "tiny-sd-v1"  # bump when the tiny recipe changes so stale caches are not reused
TINY_SEED = 0
TINY_MODELS = {"tiny": (TINY_NAME, "sd-v1-4"), "tiny-sd2": ("tiny-sd-v2", "sd-2-1")}
"""Model name -> (cache folder name, the shipped configs it is scaled down from)."""
PREDICTION_TYPES = ("epsilon", "v_prediction")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

# The real SD v1.4 architecture shrunk until a 64x64 image runs encode/eps/decode in well under a second
# on a CPU, keeping every block type (cross-attention in the UNet, four VAE stages = factor 8, CLIP text).
_TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
        "sample_size": 8,
    },
    "vae": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64},
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    "scheduler": {},
}
# A few merges so common words become single tokens; the byte alphabet alone already covers any text.
_TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>"), ("e", "r</w>")]


def real_config(name: str, family: str = "sd-v1-4") -> dict[str, Any]:
    """The published config of one component (``unet``, ``vae``, ``text_encoder`` or ``scheduler``) of
    ``family``: ``sd-v1-4`` or ``sd-2-1`` (folders of ``configs/`` laid out as diffusers saves them)."""
    file = "scheduler/scheduler_config.json" if name == "scheduler" else f"{name}/config.json"
    path = CONFIGS / family / file
    if name not in _TINY_OVERRIDES or not path.is_file():
        raise ValueError(f"no {family} config named {name!r}; choose one of unet, vae, text_encoder, scheduler")
    return json.loads(path.read_text())


def tiny_config(name: str, family: str = "sd-v1-4") -> dict[str, Any]:
    """The tiny model's config of one component: the real one with ``_TINY_OVERRIDES`` applied."""
    return {**real_config(name, family), **_TINY_OVERRIDES[name]}


def sd_alphas_cumprod() -> torch.Tensor:
    """The SD v1 training schedule's alpha bars (1000 float32 values), exactly as diffusers computes them."""
    return DDIMScheduler.from_config(real_config("scheduler")).alphas_cumprod


class StableDiffusionBackend:
    """SD 1.x/2.x components behind the ``DiffusionBackend`` interface (weights frozen, eval mode).

    ``prediction_type`` is what the UNet predicts (the scheduler config's): ``"epsilon"`` or
    ``"v_prediction"``; ``eps`` returns the noise estimate either way.
    """

    batch_invariant = False  # convolution kernels sum in another order at another batch size

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        alphas_cumprod: torch.Tensor,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.text_encoder = (
            _placed(m, self.device, dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)
        )
        self.tokenizer = tokenizer
        self.alphas_cumprod = alphas_cumprod
        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int, int]:
        if height % self.vae_scale or width % self.vae_scale:
            raise UsageError(
                f"image size {height}x{width} is not a multiple of {self.vae_scale}, which Stable Diffusion needs"
            )
        return self.vae.config.latent_channels, height // self.vae_scale, width // self.vae_scale

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior mean times the scaling factor: deterministic, so inversion is reproducible."""
        self.latent_size(*images.shape[-2:])
        x = images.to(self.device, self.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``x / 2 + 0.5`` of the VAE's output ``x`` for ``latents / scaling_factor``, unclamped; written with
        the authors' float operations (``1 / scale * z``, ``x / 2 + 0.5``) so their step is matched closely."""
        x = self.vae.decode(1.0 / self.scaling_factor * latents.to(self.dtype)).sample
        return x / 2 + 0.5

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def eps(self, z: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        out = self.unet(z.to(self.dtype), int(t), encoder_hidden_states=cond.to(self.dtype)).sample
        if self.prediction_type == "v_prediction":
            return eps_from_v(z.to(out.dtype), out, float(self.alphas_cumprod[int(t)]))
        return out


def _placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` in ``dtype`` on ``device``, converted only where it is not already (fake-tensor models,
    used to measure memory, cannot be converted onto the device they are on)."""
    if model.dtype != dtype:
        model = model.to(dtype)
    here = model.device
    if here.type != device.type or (device.index is not None and here.index != device.index):
        model = model.to(device)
    return model


def load_stable_diffusion(
    model: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionBackend:
    """Load SD 1.x/2.x from a diffusers folder, a Hugging Face id, a ``.safetensors``/``.ckpt`` file, or
    ``"tiny"``/``"tiny-sd2"`` (random, built offline).

    Anything that keeps the model from loading becomes a one-line ``MtransferError`` saying how to
    provide it; there is no fallback to another model.
    """
    return backend_from_components(load_components(model, dtype=dtype), str(model), device=device, dtype=dtype)


def load_components(model: str | Path = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` of ``model`` (any name
    ``load_stable_diffusion`` takes), on the CPU; a model that cannot be had is a one-line error."""
    if str(model) in TINY_MODELS:
        return _load_components(tiny_stable_diffusion_folder(str(model)), str(model), dtype, {})
    path = _checked_location(model)
    if path is not None and path.is_file():
        return _load_single_file(path, dtype)
    if path is not None:
        return _load_components(path, str(path), dtype, {})
    return _load_components(str(model), str(model), dtype, _hub_options())


def check_available(model: str | Path = DEFAULT_MODEL) -> None:
    """Fail now, in one line, when ``model`` certainly cannot be loaded; reads no weights.

    Long runs call this before their first stage, so a missing model is not discovered only after
    minutes of flow estimation. A Hub id passes when it is cached or the Hub can be reached.
    """
    found, _ = model_location(model)
    if not found:
        raise _load_error(str(model), "model_index.json", FileNotFoundError("not cached"), _hub_options())


def model_location(model: str | Path = DEFAULT_MODEL) -> tuple[bool, str]:
    """Whether ``load_stable_diffusion(model)`` would find the model, and where (reads no weights).

    A Hub id is found when the Hugging Face cache holds it, or when it is not cached but the Hub can be
    reached (it is then downloaded on first use); offline (``HF_HUB_OFFLINE`` or no network) only the
    cache counts. An incomplete local folder raises its one-line error.
    """
    if str(model) in TINY_MODELS:
        return True, "built offline (random weights)"
    path = _checked_location(model)
    if path is not None:
        return True, f"local {'checkpoint file' if path.is_file() else 'folder'} {path}"
    hub = _hub_options()
    cached = try_to_load_from_cache(str(model), "model_index.json", cache_dir=hub["cache_dir"])
    if isinstance(cached, str):
        return True, f"Hugging Face cache ({Path(cached).parent})"
    if hub["local_files_only"]:
        why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {
            "1", "ON", "YES", "TRUE"} else "the Hub cannot be reached"
        return False, f"not in the Hugging Face cache and {why}"
    return True, "not cached: downloaded from the Hub on first use (about 4 GB)"


def _checked_location(model: str | Path) -> Path | None:
    """A complete local diffusers folder or an existing checkpoint file as a Path, None for a Hub id;
    anything else is a one-line error."""
    path = Path(model).expanduser()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise input_error(path, "no such checkpoint file")
        return path
    if path.is_dir():
        missing = [c for c in ("model_index.json", *COMPONENTS) if not (path / c).exists()]
        if missing:
            raise input_error(
                path, f"not a diffusers Stable Diffusion folder (missing {', '.join(missing)}); save one with "
                "StableDiffusionPipeline.save_pretrained or download a full model snapshot"
            )
        return path
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(model)) or path.is_file():
        problem = "is a file, expected a model folder" if path.is_file() else "no such model folder"
        raise input_error(
            path, f"{problem}; pass a diffusers folder (model_index.json, unet/, vae/, ...), "
            f"a .safetensors or .ckpt checkpoint file, or a Hugging Face id such as {DEFAULT_MODEL}"
        )
    return None


def _hub_options() -> dict[str, Any]:
    """Offline mode and cache location read now, so settings made after import are honoured.

    When the Hub's host name does not even resolve, the lookup is cache-only from the start: the same
    model from the local cache, without half a minute of download retries before the inevitable error.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    cache = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]).expanduser() / "hub") if os.environ.get("HF_HOME") else None
    )
    return {"local_files_only": offline or not _hub_resolves(), "cache_dir": cache}


def _hub_resolves() -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _load_components(source: str | Path, label: str, dtype: torch.dtype, hub: dict[str, Any]) -> dict[str, Any]:
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **hub),
        "vae": lambda: AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **hub),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **hub),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **hub),
        "scheduler": lambda: DDIMScheduler.from_pretrained(source, subfolder="scheduler", **hub),
    }
    parts = {}
    with _quiet_hub_libraries():
        for name, load in loaders.items():
            try:
                parts[name] = load()
            except Exception as exc:  # noqa: BLE001 - every way of failing to get weights must end as one line
                raise _load_error(label, name, exc, hub) from None
    return parts


def backend_from_components(
    parts: dict[str, Any], label: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionBackend:
    """The backend over SD components (``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and a ``scheduler``
    whose ``alphas_cumprod`` and ``prediction_type`` are the training schedule's), moved to ``device`` and
    ``dtype``; ``label`` names them in errors. A scheduler that predicts neither eps nor v is refused, and so is
    a tokenizer without a vocabulary (transformers builds one from nothing when the vocabulary files are
    missing, which would turn every prompt into the same few ids). An SDXL UNet (size and pooled-text
    conditioning, ``addition_embed_type``) and an inpainting/depth UNet (not 4 input channels) are refused:
    the guided sampler feeds neither."""
    unet = parts["unet"].config
    if unet.get("addition_embed_type") is not None:
        raise InputError(
            f"Stable Diffusion '{label}': its UNet takes {unet['addition_embed_type']!r} extra conditioning (SDXL), "
            "which mtransfer does not support; use a Stable Diffusion 1.x or 2.x model"
        )
    if unet.get("in_channels") != 4:
        raise InputError(f"Stable Diffusion '{label}': its UNet takes {unet.get('in_channels')} input channels "
                         "(an inpainting or depth model); mtransfer needs a plain text-to-image model with 4")
    tokenizer = parts["tokenizer"]
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise InputError(f"Stable Diffusion '{label}': its tokenizer has no vocabulary (vocab.json and merges.txt "
                         "missing); use a complete model")
    prediction = parts["scheduler"].config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise InputError(
            f"Stable Diffusion '{label}': its scheduler's prediction_type is {prediction!r}; mtransfer's sampler "
            f"supports {' and '.join(PREDICTION_TYPES)}"
        )
    return StableDiffusionBackend(
        parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
        parts["scheduler"].alphas_cumprod, device=device, dtype=dtype, prediction_type=prediction,
    )


# --- single-file checkpoints -----------------------------------------------------------------------------

_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_TEXT_ENCODERS = {  # the key only that family's text encoder has -> the shipped configs of the family
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": "sd-v1-4",
    "cond_stage_model.transformer.embeddings.token_embedding.weight": "sd-v1-4",
    "cond_stage_model.model.token_embedding.weight": "sd-2-1",
}
_FAMILY_TOKENIZERS = {"sd-v1-4": DEFAULT_MODEL, "sd-2-1": "stabilityai/stable-diffusion-2-1"}
"""Where a real checkpoint's tokenizer comes from (``tokenizer/`` of this Hub id, from the cache when
offline): a checkpoint file holds weights only, and CLIP's vocabulary is 2 MB the package does not ship."""


def _load_single_file(path: Path, dtype: torch.dtype) -> dict[str, Any]:
    """An original-layout checkpoint through ``StableDiffusionPipeline.from_single_file``, configured
    from the shipped configs (or the tiny model's folder) so that nothing is fetched for the configs."""
    from diffusers import StableDiffusionPipeline

    config, tokenizer = _single_file_config(path, _checkpoint_shapes(path))
    with _quiet_hub_libraries():
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(config), tokenizer=tokenizer, torch_dtype=dtype, local_files_only=True,
                safety_checker=None, feature_extractor=None,
            )
        except Exception as exc:  # noqa: BLE001 - a checkpoint diffusers cannot convert is one line naming it
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            problem = f"diffusers could not load this checkpoint ({type(exc).__name__}: {reason})"
            raise input_error(path, problem) from None
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
            "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)}


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a checkpoint, read without loading the weights where the format allows."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line naming it
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise input_error(path, f"not a readable {path.suffix} checkpoint ({type(exc).__name__}: {reason})") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise input_error(path, f"not a checkpoint: it holds a {type(state).__name__}, not a dict of tensors")
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _single_file_config(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[Path, CLIPTokenizer]:
    """The diffusers config folder and the tokenizer for a checkpoint, told apart by its tensors.

    SD 1.x (CLIP text encoder) and 2.x (OpenCLIP) at their real sizes use ``configs/sd-v1-4`` and
    ``configs/sd-2-1``; a checkpoint with the tiny models' sizes uses the tiny folder. A 2.x file is
    taken for the 768² v-prediction model, as diffusers does: a file cannot tell 2.x-base (epsilon) from it.
    """
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        raise input_error(
            path, "an SDXL checkpoint, which mtransfer does not support (two text encoders and size conditioning "
            "the guided sampler does not feed); use a Stable Diffusion 1.x or 2.x checkpoint"
        )
    if _UNET_IN not in shapes:
        raise input_error(path, f"not a Stable Diffusion checkpoint in the original layout (no {_UNET_IN})")
    channels, unet_in = shapes[_UNET_IN][0], shapes[_UNET_IN][1]
    if unet_in != 4:
        raise input_error(path, f"its UNet takes {unet_in} input channels (an inpainting or depth model); "
                          "mtransfer needs a plain text-to-image checkpoint with 4")
    family = next((f for key, f in _TEXT_ENCODERS.items() if key in shapes), None)
    if family is None:
        raise input_error(
            path, "no CLIP or OpenCLIP text encoder found (cond_stage_model.*); not an SD 1.x/2.x checkpoint"
        )
    if channels == real_config("unet", family)["block_out_channels"][0]:
        return CONFIGS / family, _hub_tokenizer(path, _FAMILY_TOKENIZERS[family])
    tiny = next((name for name, (_, f) in TINY_MODELS.items() if f == family), None)
    if tiny is not None and channels == tiny_config("unet", family)["block_out_channels"][0]:
        folder = tiny_stable_diffusion_folder(tiny)
        return folder, CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    raise input_error(path, f"a {family} checkpoint whose UNet has {channels} base channels, a size mtransfer has "
                      "no config for; save it as a diffusers folder and pass that")


def _hub_tokenizer(path: Path, repo: str) -> CLIPTokenizer:
    hub = _hub_options()
    try:
        with _quiet_hub_libraries():
            tokenizer = CLIPTokenizer.from_pretrained(repo, subfolder="tokenizer", **hub)
        if len(tokenizer) > len(tokenizer.all_special_tokens):  # not one built from nothing (see _backend)
            return tokenizer
    except Exception:  # noqa: BLE001 - a missing tokenizer is one line saying where to get it
        pass
    raise input_error(
        path, f"the checkpoint needs the CLIP tokenizer of {repo}, which is not in the Hugging Face cache; "
        f"download it with `huggingface-cli download {repo} --include 'tokenizer/*'`"
    )


@contextmanager
def _quiet_hub_libraries() -> Iterator[None]:
    """Mute diffusers/transformers chatter (progress bars, accelerate hints) while loading; errors still raise."""
    previous = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()  # from_single_file's "Loading pipeline components" bar
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # deprecation notes between the HF libraries
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(previous[0])
        transformers_logging.set_verbosity(previous[1])
        if bars[0]:
            transformers_logging.enable_progress_bar()
        if bars[1]:
            diffusers_logging.enable_progress_bar()


def _load_error(label: str, component: str, exc: Exception, hub: dict[str, Any]) -> InputError:
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    what = f"could not load the {component} of Stable Diffusion '{label}' ({type(exc).__name__}: {reason})"
    if not hub:  # a local folder
        return InputError(f"{what}; check that the folder is a complete diffusers save of an SD 1.x or 2.x model")
    where = "it is not in the Hugging Face cache and the Hub cannot be reached (offline)" if hub[
        "local_files_only"
    ] else "it could not be downloaded and is not in the Hugging Face cache"
    login = " after accepting its licence and `huggingface-cli login`" if "gated" in reason.lower() else ""
    return WeightsMissing(
        f"{what}: {where}; download it on a connected machine with "
        f"`huggingface-cli download {label}`{login} and copy the cache (HF_HOME), "
        "or set model.model to a local diffusers folder", "diffusion",
    )


# --- the tiny random model -------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where mtransfer keeps things it builds once: ``$MTRANSFER_CACHE`` or ``~/.cache/mtransfer``."""
    return Path(os.environ.get("MTRANSFER_CACHE") or "~/.cache/mtransfer").expanduser()


def tiny_stable_diffusion_folder(model: str = "tiny") -> Path:
    """The tiny SD ``model`` (``"tiny"`` or ``"tiny-sd2"``) as a diffusers folder, built on first use and then reused.

    It is built in a temporary folder beside its final place and renamed into place, so a crash or a
    concurrent build never leaves a half-written model that later runs would trust.
    """
    name, family = TINY_MODELS[model]
    final = cache_root() / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        configs = {part: tiny_config(part, family) for part in _TINY_OVERRIDES}
        write_random_stable_diffusion(staging, configs, TINY_SEED)
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():  # not just a lost race with another process that built it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def random_stable_diffusion(
    size: str = "tiny", *, seed: int = TINY_SEED, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionBackend:
    """A randomly initialised SD v1.4 in memory, ``"tiny"`` or ``"real"`` size (for benchmarks: no disk).

    Same seed, same weights as the cached ``"tiny"`` folder. The tokenizer is always the tiny one (its
    ids fit the real vocabulary) and the VAE scaling factor is calibrated to the random VAE.
    """
    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    config = tiny_config if size == "tiny" else real_config
    unet, vae, text_encoder = _random_models({name: config(name) for name in _TINY_OVERRIDES}, seed)
    return StableDiffusionBackend(
        unet, vae, text_encoder, _tiny_tokenizer(), sd_alphas_cumprod(), device=device, dtype=dtype
    )


def write_random_stable_diffusion(folder: Path, configs: dict[str, dict[str, Any]], seed: int) -> None:
    """Save randomly initialised models with these configs (+ the tiny tokenizer) as a diffusers folder."""
    unet, vae, text_encoder = _random_models(configs, seed)
    with _quiet_hub_libraries():
        text_encoder.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    _write_tiny_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", configs["scheduler"].get("_class_name", "DDIMScheduler")],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _random_models(
    configs: dict[str, dict[str, Any]], seed: int
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    vocab, _ = _tiny_vocab()
    text = {k: v for k, v in configs["text_encoder"].items() if k != "architectures"}
    # Token ids must index the embedding table and name the tiny tokenizer's own specials.
    text.update(
        vocab_size=max(text["vocab_size"], len(vocab)),
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    _calibrate_latent_scale(vae)
    return unet, vae, text_encoder


@torch.no_grad()
def _calibrate_latent_scale(vae: AutoencoderKL) -> None:
    """Set ``scaling_factor`` so latents have unit spread, as SD's 0.18215 does for its trained VAE.

    A random VAE's latents are far smaller; left that way, every latent would sit deep inside the noise
    and the UNet's group norms would blow tiny differences up, making DDIM chaotic for no real reason.
    """
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    spread = vae.encode(images).latent_dist.mean.std()
    vae.register_to_config(scaling_factor=float(1 / spread))


def _tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout in small: the 256 byte symbols, the same with ``</w>``, a few merges, the specials."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in _TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, list(_TINY_MERGES)


def _tiny_tokenizer() -> CLIPTokenizer:
    vocab, merges = _tiny_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _write_tiny_tokenizer(folder: Path) -> None:
    """The files a real SD ``tokenizer/`` folder has: vocab.json, merges.txt and the tokenizer config."""
    vocab, merges = _tiny_vocab()
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "<|endoftext|>", **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
