"""Stable Diffusion v1.x as a ``DiffusionBackend``: real weights, or a tiny random model built offline.

Real models come from a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a Hugging Face id (cache honoured, ``HF_HUB_OFFLINE``
respected). ``model="tiny"`` builds a randomly initialised SD whose configs are the real SD v1.4 ones
(``configs/sd-v1-4/``) scaled down, saves it as a diffusers folder once, and loads it through the very
same code as a real model, so everything downstream of loading is exercised without any download.

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

from mtransfer.errors import InputError, UsageError, WeightsMissing, input_error

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd-v1-4"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TINY_NAME = "tiny-sd-v1"  # bump when the tiny recipe changes so stale caches are not reused
TINY_SEED = 0

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


def real_config(name: str) -> dict[str, Any]:
    """The published SD v1.4 config of one component: ``unet``, ``vae``, ``text_encoder`` or ``scheduler``."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no SD v1.4 config named {name!r}; choose one of unet, vae, text_encoder, scheduler")
    return json.loads(path.read_text())


def tiny_config(name: str) -> dict[str, Any]:
    """The tiny model's config of one component: the real one with ``_TINY_OVERRIDES`` applied."""
    return {**real_config(name), **_TINY_OVERRIDES[name]}


def sd_alphas_cumprod() -> torch.Tensor:
    """The SD v1 training schedule's alpha bars (1000 float32 values), exactly as diffusers computes them."""
    return DDIMScheduler.from_config(real_config("scheduler")).alphas_cumprod


class StableDiffusionBackend:
    """SD v1.x components behind the ``DiffusionBackend`` interface (weights frozen, eval mode)."""

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
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.text_encoder = (
            (m if m.dtype == dtype else m.to(dtype)).to(self.device).eval().requires_grad_(False)
            for m in (unet, vae, text_encoder)
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
        return self.unet(z.to(self.dtype), int(t), encoder_hidden_states=cond.to(self.dtype)).sample


def load_stable_diffusion(
    model: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionBackend:
    """Load SD v1.x from a diffusers folder, a Hugging Face id, or ``"tiny"`` (random, built offline).

    Anything that keeps the model from loading becomes a one-line ``MtransferError`` saying how to
    provide it; there is no fallback to another model.
    """
    if str(model) == "tiny":
        return _load_components(tiny_stable_diffusion_folder(), "tiny", device, dtype, {})
    path = _checked_location(model)
    if path is not None:
        return _load_components(path, str(path), device, dtype, {})
    return _load_components(str(model), str(model), device, dtype, _hub_options())


def check_available(model: str | Path = DEFAULT_MODEL) -> None:
    """Fail now, in one line, when ``model`` certainly cannot be loaded; reads no weights.

    Long runs call this before their first stage, so a missing model is not discovered only after
    minutes of flow estimation. A Hub id passes when it is cached or the Hub can be reached.
    """
    if str(model) == "tiny" or _checked_location(model) is not None:
        return
    hub = _hub_options()
    if hub["local_files_only"]:
        cached = try_to_load_from_cache(str(model), "model_index.json", cache_dir=hub["cache_dir"])
        if not isinstance(cached, str):
            raise _load_error(str(model), "model_index.json", FileNotFoundError("not cached"), hub)


def _checked_location(model: str | Path) -> Path | None:
    """A complete local diffusers folder as a Path, None for a Hub id; anything else is a one-line error."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [c for c in ("model_index.json", *COMPONENTS) if not (path / c).exists()]
        if missing:
            raise input_error(
                path, f"not a diffusers Stable Diffusion folder (missing {', '.join(missing)}); save one with "
                "StableDiffusionPipeline.save_pretrained or download a full model snapshot"
            )
        return path
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(model)):
        raise input_error(
            path, "no such model folder; pass a diffusers folder (model_index.json, unet/, vae/, ...) or a "
            f"Hugging Face id such as {DEFAULT_MODEL}"
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


def _load_components(
    source: str | Path, label: str, device: str | torch.device, dtype: torch.dtype, hub: dict[str, Any]
) -> StableDiffusionBackend:
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
    return StableDiffusionBackend(
        parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
        parts["scheduler"].alphas_cumprod, device=device, dtype=dtype,
    )


@contextmanager
def _quiet_hub_libraries() -> Iterator[None]:
    """Mute diffusers/transformers chatter (progress bars, accelerate hints) while loading; errors still raise."""
    previous = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # deprecation notes between the HF libraries
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(previous[0])
        transformers_logging.set_verbosity(previous[1])
        if bars:
            transformers_logging.enable_progress_bar()


def _load_error(label: str, component: str, exc: Exception, hub: dict[str, Any]) -> InputError:
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    what = f"could not load the {component} of Stable Diffusion '{label}' ({type(exc).__name__}: {reason})"
    if not hub:  # a local folder
        return InputError(f"{what}; check that the folder is a complete diffusers save of an SD v1.x model")
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


def tiny_stable_diffusion_folder() -> Path:
    """The tiny SD as a diffusers folder, built on first use and then reused.

    It is built in a temporary folder beside its final place and renamed into place, so a crash or a
    concurrent build never leaves a half-written model that later runs would trust.
    """
    final = cache_root() / TINY_NAME
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=final.parent))
    try:
        write_random_stable_diffusion(staging, {name: tiny_config(name) for name in _TINY_OVERRIDES}, TINY_SEED)
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
