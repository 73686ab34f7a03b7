"""Fast paths for the guided step: switches that change how it is executed, never what it computes.

The guided step (``mtransfer.guidance.sampler.guided_eps``) is a CFG UNet forward, a VAE-decoder forward,
a RAFT forward and the backward pass through all three. Each switch below keeps that update rule and only
changes precision, kernels, memory layout or what is recomputed:

- ``autocast`` (``"bf16"``/``"fp16"``): the UNet, the decoder and the flow estimator run under autocast;
  their outputs are cast back to fp32, so ``x0``, the energy's reductions and the gradient clipping stay fp32.
- ``tf32``: TF32 tensor cores for fp32 matmuls and convolutions. Off means IEEE fp32 everywhere, the
  reference drift is measured against (PyTorch's own default already runs cuDNN convolutions in TF32).
- ``sdpa``: diffusers' ``AttnProcessor2_0`` (``scaled_dot_product_attention``, flash/memory-efficient
  kernels) in the UNet and the VAE; off means the classic ``AttnProcessor`` that materialises the
  attention matrix, as diffusers did when the paper was written.
- ``channels_last``: NHWC weights, so cuDNN picks its tensor-core convolution kernels without transposes.
- ``cache_source``: RAFT's source-side work (the source's feature map and context features) is computed
  once per source image instead of once per pass (``mtransfer.estimators.raft.source_cached``).
- ``checkpoint_unet`` / ``checkpoint_vae`` / ``checkpoint_raft``: gradient checkpointing (activations
  recomputed in the backward pass: less memory, more time) of the UNet and the VAE (diffusers' own) and of
  RAFT's encoders and update step (``torch.utils.checkpoint`` around each, ``RAFT.forward`` unchanged).
- ``compile``: ``torch.compile`` of the UNet, the decode call and the estimator.

``fast_path(backend, estimator, switches)`` applies a set of switches for the duration of a ``with``
block and undoes the ones that modify shared modules on exit, so one set of models serves every variant.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from mtransfer.errors import UsageError
from mtransfer.estimators.base import FlowEstimator
from mtransfer.estimators.raft import RaftEstimator, source_cached

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FastPath:
    """Which speed switches are on (see the module docstring); the default is the fp32 paper baseline."""

    autocast: str | None = None
    tf32: bool = False
    sdpa: bool = False
    channels_last: bool = False
    cache_source: bool = False
    checkpoint_unet: bool = False
    checkpoint_vae: bool = False
    checkpoint_raft: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise UsageError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}")

    @property
    def label(self) -> str:
        """The canonical spec of these switches, e.g. ``bf16+sdpa``; ``baseline`` when none is on."""
        names = [name for name, change in SWITCHES.items() if len(change) == 1 and _is_on(self, change)]
        return "+".join(names) or "baseline"


SWITCHES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "bf16": {"autocast": "bf16"},
    "fp16": {"autocast": "fp16"},
    "tf32": {"tf32": True},
    "sdpa": {"sdpa": True},
    "channels-last": {"channels_last": True},
    "cache-source": {"cache_source": True},
    "checkpoint-unet": {"checkpoint_unet": True},
    "checkpoint-vae": {"checkpoint_vae": True},
    "checkpoint-raft": {"checkpoint_raft": True},
    "checkpoint": {"checkpoint_unet": True, "checkpoint_vae": True, "checkpoint_raft": True},
    "compile": {"compile": True},
    "fast": {"autocast": "bf16", "sdpa": True, "channels_last": True, "cache_source": True},
}
"""Names usable in a variant spec. ``fast`` is every switch that pays on a GPU without changing memory
behaviour or needing a compiler: bf16 autocast, SDPA, channels-last and the RAFT source cache. ``checkpoint``
is all three checkpointing switches (only the decoder of the VAE runs in a guided pass)."""


def _is_on(switches: FastPath, change: dict[str, Any]) -> bool:
    return all(getattr(switches, key) == value for key, value in change.items())


def parse_fast_path(spec: str) -> FastPath:
    """``"bf16+sdpa"`` → ``FastPath(autocast="bf16", sdpa=True)``; names are the keys of ``SWITCHES``."""
    values: dict[str, Any] = {}
    for name in (part.strip() for part in spec.split("+")):
        if name not in SWITCHES:
            raise UsageError(f"unknown speed switch {name!r} in {spec!r}; choose from {', '.join(SWITCHES)}")
        for key, value in SWITCHES[name].items():
            if values.get(key, value) != value:
                raise UsageError(f"speed switches in {spec!r} disagree about {key}: {values[key]} vs {value}")
            values[key] = value
    return FastPath(**values)


@contextmanager
def fast_path(backend: Any, estimator: FlowEstimator, switches: FastPath) -> Iterator[tuple[Any, FlowEstimator]]:
    """Yield ``(backend, estimator)`` running with ``switches``; the originals are restored afterwards.

    ``backend`` is a ``StableDiffusionBackend`` (anything with ``unet``, ``vae``, ``eps`` and ``decode``).
    The yielded backend is a shallow copy whose ``eps``/``decode`` calls carry autocast and compilation;
    attention processors, memory format and checkpointing are set on the shared modules and undone on exit.
    """
    for needed in ("unet", "vae"):
        if not hasattr(backend, needed):
            raise UsageError(f"speed switches need a Stable Diffusion backend, got {type(backend).__name__}")
    with ExitStack() as stack:
        stack.enter_context(_float32_precision(switches.tf32))
        stack.enter_context(_attention(backend, sdpa=switches.sdpa))
        if switches.channels_last:
            stack.enter_context(_channels_last([backend.unet, backend.vae, *_modules(estimator)]))
        if switches.checkpoint_unet:
            stack.enter_context(_checkpointing(backend.unet))
        if switches.checkpoint_vae:
            stack.enter_context(_checkpointing(backend.vae))
        if switches.cache_source:
            estimator = source_cached(estimator)
        if switches.checkpoint_raft:
            stack.enter_context(_raft_checkpointing(estimator))
        yield _fast_backend(backend, switches), _fast_estimator(estimator, switches)


@contextmanager
def speed_switches(backend: Any, estimator: FlowEstimator, spec: str) -> Iterator[tuple[Any, FlowEstimator]]:
    """The presets' ``model.speed``: ``""`` leaves the models exactly as loaded, else ``fast_path(spec)``."""
    if not spec:
        yield backend, estimator
        return
    with fast_path(backend, estimator, parse_fast_path(spec)) as pair:
        yield pair


def _modules(estimator: FlowEstimator) -> list[torch.nn.Module]:
    return [estimator] if isinstance(estimator, torch.nn.Module) else []


def _autocast(call: Callable[..., torch.Tensor], device_type: str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """``call`` under autocast with its result cast back to fp32 (what follows it stays fp32)."""

    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return call(*args, **kwargs).float()

    return run


def _fast_backend(backend: Any, switches: FastPath) -> Any:
    """A shallow copy of ``backend`` whose ``eps`` and ``decode`` carry compilation and autocast."""
    fast = copy.copy(backend)
    if switches.compile:
        fast.unet = torch.compile(backend.unet)
        fast.decode = torch.compile(fast.decode)
    if switches.autocast is not None:
        device_type, dtype = backend.device.type, AUTOCAST_DTYPES[switches.autocast]
        fast.eps = _autocast(fast.eps, device_type, dtype)
        fast.decode = _autocast(fast.decode, device_type, dtype)
    return fast


class _AutocastEstimator(torch.nn.Module):
    """A differentiable estimator run under autocast, returning an fp32 flow."""

    differentiable = True

    def __init__(self, inner: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.name, self.device_type, self.dtype = inner, inner.name, device_type, dtype

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(source, target).float()


def _fast_estimator(estimator: FlowEstimator, switches: FastPath) -> FlowEstimator:
    if not isinstance(estimator, torch.nn.Module):  # classical estimators: nothing to speed up here
        return estimator
    if switches.compile:  # RAFT's network only: its padding's backward trips inductor (torch 2.14)
        estimator = (
            estimator.with_model(torch.compile(estimator.model))
            if isinstance(estimator, RaftEstimator)
            else torch.compile(estimator)
        )
    if switches.autocast is not None:
        device = next(estimator.parameters()).device
        estimator = _AutocastEstimator(estimator, device.type, AUTOCAST_DTYPES[switches.autocast])
    return estimator


@contextmanager
def _float32_precision(tf32: bool) -> Iterator[None]:
    """Allow or forbid TF32 in fp32 matmuls and cuDNN convolutions, restoring the previous flags.

    The ``allow_tf32`` flags are used rather than the newer ``fp32_precision`` ones because reading the
    former after setting the latter raises, and some of torch (inductor's conv templates) still reads them.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    previous = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = previous


@contextmanager
def _attention(backend: Any, *, sdpa: bool) -> Iterator[None]:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    models = (backend.unet, backend.vae)
    previous = [model.attn_processors for model in models]
    for model in models:
        model.set_attn_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
    try:
        yield
    finally:
        for model, processors in zip(models, previous):
            model.set_attn_processor(processors)


@contextmanager
def _channels_last(modules: list[torch.nn.Module]) -> Iterator[None]:
    for module in modules:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


@contextmanager
def _checkpointing(model: Any) -> Iterator[None]:
    model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        model.disable_gradient_checkpointing()


class _Checkpointed(torch.nn.Module):
    """One of RAFT's sub-modules whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # RAFT.forward reads e.g. update_block.hidden_state_size
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args: torch.Tensor) -> Any:
        if not torch.is_grad_enabled():
            return self.inner(*args)
        return torch.utils.checkpoint.checkpoint(self.inner, *args, use_reentrant=False)


_RAFT_CHECKPOINTED = ("feature_encoder", "context_encoder", "update_block", "mask_predictor")


@contextmanager
def _raft_checkpointing(estimator: FlowEstimator) -> Iterator[None]:
    """Checkpoint RAFT's encoders, update step and mask predictor (each call its own segment, so one
    update's activations are alive at a time in the backward pass); restored on exit."""
    if not isinstance(estimator, RaftEstimator):
        raise UsageError(f"checkpoint-raft only applies to RAFT, not to the {estimator.name} estimator")
    model = estimator.model
    previous = {name: getattr(model, name) for name in _RAFT_CHECKPOINTED if getattr(model, name) is not None}
    for name, module in previous.items():
        setattr(model, name, _Checkpointed(module))
    try:
        yield
    finally:
        for name, module in previous.items():
            setattr(model, name, module)
