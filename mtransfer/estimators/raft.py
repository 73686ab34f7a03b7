"""RAFT (Teed & Deng, ECCV 2020) from torchvision, wrapped as a differentiable ``FlowEstimator``.

Motion Guidance backpropagates the flow loss through RAFT into the image being edited, so nothing here
runs under ``no_grad``; callers decide. The network's own parameters are frozen because only the image
is ever optimised.
"""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import RAFT, Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small
from torchvision.models._api import WeightsEnum

from mtransfer.errors import UsageError, WeightsMissing, input_error

WEIGHTS_ENV = "MTRANSFER_RAFT_WEIGHTS"
"""Environment variable naming a local ``.pth`` state dict, used when no ``weights`` option is given."""

RANDOM_WEIGHTS = "random"
"""``weights`` value for an untrained network: shapes and gradients are real, the flow is not."""

DEFAULT_ITERATIONS = 12
"""RAFT's own default number of recurrent updates, used for flow extraction (guidance uses fewer)."""

_MIN_SIZE = 128
"""torchvision's correlation pyramid needs feature maps of at least 16x16 at 1/8 resolution."""

_VARIANTS: dict[str, tuple[Callable[..., RAFT], type[WeightsEnum]]] = {
    "raft-large": (raft_large, Raft_Large_Weights),
    "raft-small": (raft_small, Raft_Small_Weights),
}


class RaftEstimator(torch.nn.Module):
    """RAFT as a ``FlowEstimator``: images in [0, 1], any size, flow from ``source`` to ``target``.

    ``autocast`` runs it with the original RAFT's mixed precision (as the Motion Guidance authors do): the
    encoders and the update step under autocast, the correlation pyramid in fp32; the flow comes back fp32.
    The mixed precision applies on devices of type ``autocast_device`` in ``autocast_dtype`` — CUDA fp16,
    RAFT's own, unless a test runs the very same code under CPU bf16 — and changes nothing elsewhere.
    Wrappers that rebuild the estimator around another network use ``with_model``, which keeps all of this.
    """

    differentiable = True
    batch_invariant = False  # convolutions sum in another order at another batch size

    def __init__(
        self,
        model: RAFT,
        name: str,
        iterations: int = DEFAULT_ITERATIONS,
        autocast: bool = False,
        autocast_device: str = "cuda",
        autocast_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise UsageError(f"{name}: iterations must be at least 1, got {iterations}")
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.iterations = iterations
        self.autocast = autocast
        self.autocast_device = autocast_device
        self.autocast_dtype = autocast_dtype
        if autocast:
            _fp32_correlation(self.model, autocast_device)

    def with_model(self, model: torch.nn.Module) -> RaftEstimator:
        """This estimator (name, iterations, mixed precision) around another network, e.g. a cached or
        compiled one: the one way wrappers rebuild it, so no setting is dropped on the way."""
        return RaftEstimator(
            model, self.name, self.iterations, self.autocast, self.autocast_device, self.autocast_dtype
        )

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        height, width = source.shape[-2:]
        padded_height = max(_MIN_SIZE, -(-height // 8) * 8)
        padded_width = max(_MIN_SIZE, -(-width // 8) * 8)
        # Replicate-pad right and bottom so the network sees a valid size and the crop keeps the grid.
        images = F.pad(
            torch.cat((source, target)) * 2.0 - 1.0,
            (0, padded_width - width, 0, padded_height - height),
            mode="replicate",
        )
        first, second = images.chunk(2)
        mixed = self.autocast and images.device.type == self.autocast_device
        with torch.autocast(self.autocast_device, dtype=self.autocast_dtype, enabled=mixed):
            flow = self.model(first, second, num_flow_updates=self.iterations)[-1]
        return flow[..., :height, :width].float()


def _fp32_correlation(model: RAFT, device_type: str) -> None:
    """Build and look up the correlation pyramid in fp32 even under autocast, as the original RAFT does
    (once per correlation block: a rebuilt estimator shares its network's block)."""
    block = model.corr_block
    if getattr(block, "_mtransfer_fp32", None) == device_type:
        return
    block._mtransfer_fp32 = device_type
    for name in ("build_pyramid", "index_pyramid"):

        def fp32(*args: torch.Tensor, _method=getattr(block, name), **kwargs: torch.Tensor) -> torch.Tensor | None:
            with torch.autocast(device_type, enabled=False):
                return _method(*(t.float() for t in args), **{k: t.float() for k, t in kwargs.items()})

        setattr(block, name, fp32)


def load_raft(
    name: str = "raft-large",
    *,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
    iterations: int | None = None,
    autocast: bool = False,
) -> RaftEstimator:
    """Build RAFT-large or RAFT-small with trained weights.

    ``weights`` is the name of one of torchvision's weights for the variant (``Raft_Large_Weights``:
    ``C_T_V1`` = the original "raft-things" weights the Motion Guidance authors use, ``C_T_SKHT_V2`` =
    torchvision's ``DEFAULT``, ...), a local ``.pth`` state dict, ``"random"`` for an untrained network, or
    ``None``: then the file named by ``$MTRANSFER_RAFT_WEIGHTS``, else torchvision's ``DEFAULT``. Named
    weights come from the torch hub cache (downloaded once when online). Weights that cannot be had raise
    a one-line ``MtransferError``. ``autocast``: see ``RaftEstimator``.
    """
    if name not in _VARIANTS:
        raise UsageError(f"unknown RAFT variant {name!r}; choose one of {', '.join(_VARIANTS)}")
    build, weights_enum = _VARIANTS[name]
    model = build(weights=None)
    choice = _weights_choice(weights)
    if choice != RANDOM_WEIGHTS:
        if choice is None or choice in weights_enum.__members__:
            path, state = _hub_state_dict(name, weights_enum[choice or "DEFAULT"])
        else:
            origin = "the weights setting" if weights is not None else f"${WEIGHTS_ENV}"
            path = Path(choice)
            if not path.is_file():
                raise input_error(
                    path,
                    f"{'is a folder, expected a' if path.is_dir() else 'no such'} {name} weights file (given by "
                    f"{origin}); point it at a local .pth state dict "
                    f"or name torchvision's weights ({', '.join(weights_enum.__members__)})",
                )
            state = _read_state_dict(path, name)
        _load_checked(model, state, path, name)
    estimator = RaftEstimator(model, name, DEFAULT_ITERATIONS if iterations is None else iterations, autocast)
    # Built on the CPU: moved only elsewhere (a fake-tensor model, used to measure memory, cannot be moved).
    return estimator if torch.device(device).type == "cpu" else estimator.to(device)


def _weights_choice(weights: str | Path | None) -> str | None:
    """What ``weights`` means: itself, else ``$MTRANSFER_RAFT_WEIGHTS``, else None (torchvision's DEFAULT)."""
    return str(weights) if weights is not None else os.environ.get(WEIGHTS_ENV) or None


def _hub_cache_file(weights: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def weights_location(name: str, weights: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``load_raft(name, weights=weights)`` would find its weights, and where (reads none).

    Named weights not yet in the torch hub cache count as found when their download host resolves.
    """
    if name not in _VARIANTS:
        raise UsageError(f"unknown RAFT variant {name!r}; choose one of {', '.join(_VARIANTS)}")
    weights_enum = _VARIANTS[name][1]
    choice = _weights_choice(weights)
    if choice == RANDOM_WEIGHTS:
        return True, "random weights (nothing to find)"
    if choice is not None and choice not in weights_enum.__members__:
        return Path(choice).is_file(), f"local file {choice}" + ("" if Path(choice).is_file() else " (missing)")
    member = weights_enum[choice or "DEFAULT"]
    cached = _hub_cache_file(member)
    if cached.is_file():
        return True, f"torch hub cache {cached}"
    host = urlparse(member.url).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False, f"{member} not in the torch hub cache ({cached}) and {host} cannot be reached"
    return True, f"{member} not cached: downloaded from {host} on first use"


def has_local_weights(name: str) -> bool:
    """Whether ``load_raft(name)`` would find trained weights without the network.

    True when ``$MTRANSFER_RAFT_WEIGHTS`` names a file (it is checked against the variant only on loading)
    or torchvision's default weights for ``name`` are in the torch hub cache.
    """
    if name not in _VARIANTS:
        return False
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).is_file()
    return _hub_cache_file(_VARIANTS[name][1].DEFAULT).is_file()


def _hub_state_dict(name: str, weights: WeightsEnum) -> tuple[Path, Mapping[str, torch.Tensor]]:
    """torchvision's named weights from the hub cache; only a missing cache file touches the network."""
    cached = _hub_cache_file(weights)
    if cached.is_file():
        return cached, _read_state_dict(cached, name, hint="delete it so it is downloaded again")
    try:
        return cached, weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsMissing(
            f"{cached}: {name} weights {weights} missing and download failed ({reason}); on a connected machine "
            f"fetch {weights.url} into that path, or point estimator.weights / video.weights (or ${WEIGHTS_ENV}) "
            "at a local .pth, or use a weight-free estimator (tvl1 for the video's flow, pyramid inside guidance)",
            "raft",
        ) from None


def _read_state_dict(
    path: Path, name: str, hint: str = "give a torchvision RAFT .pth state dict"
) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many unrelated types for corrupt or foreign files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise input_error(path, f"not a readable {name} state dict ({reason}); {hint}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise input_error(path, f"not a {name} state dict (expected a mapping of tensors); {hint}")
    return state


def _load_checked(model: RAFT, state: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    """Load ``state`` strictly, turning a key or shape mismatch into a one-line error about ``path``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {kind} keys (e.g. {keys[0]!r})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", reshaped))
            if keys
        ]
        raise input_error(path, f"weights do not fit {name}: {', '.join(problems)}; is it the other RAFT variant?")
    model.load_state_dict(state)


class SourceCachedEncoder(torch.nn.Module):
    """One of RAFT's encoders with its output for the source images computed once per source.

    In the guidance energy RAFT always compares the same source with a new estimate, so the source's
    feature map and context features are reused while the source is unchanged (checked by value: one
    comparison per call). ``source_batch`` says how the input is laid out: the context encoder sees the
    source alone (``"all"``); the feature encoder sees source and target concatenated (``"first_half"``),
    and since it normalises per image (instance norm), encoding the halves apart gives the same maps.
    The cached part is a constant: no gradient flows back into the source.
    """

    def __init__(self, encoder: torch.nn.Module, source_batch: str) -> None:
        super().__init__()
        self.encoder, self.source_batch = encoder, source_batch
        self._source: torch.Tensor | None = None
        self._encoded: torch.Tensor | None = None

    def _encode_source(self, source: torch.Tensor) -> torch.Tensor:
        if self._source is None or self._source.shape != source.shape or not torch.equal(self._source, source):
            with torch.no_grad():
                self._encoded = self.encoder(source)
            self._source = source.detach().clone()
        return self._encoded

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.source_batch == "all":
            return self._encode_source(images)
        source, target = images.chunk(2)
        return torch.cat((self._encode_source(source), self.encoder(target)))


def source_cached(estimator: RaftEstimator) -> RaftEstimator:
    """The same RAFT with its source-side work (feature map, context features) cached per source image.

    Built from the network's own modules through torchvision's public ``RAFT`` constructor, so
    ``RAFT.forward`` runs unchanged and the original estimator is left as it was. Its flow and its
    gradient with respect to the target are RAFT's; the source gets no gradient.
    """
    if not isinstance(estimator, RaftEstimator):
        raise UsageError(f"cache-source only applies to RAFT, not to the {estimator.name} estimator")
    raft = estimator.model
    cached = RAFT(
        feature_encoder=SourceCachedEncoder(raft.feature_encoder, "first_half"),
        context_encoder=SourceCachedEncoder(raft.context_encoder, "all"),
        corr_block=raft.corr_block,
        update_block=raft.update_block,
        mask_predictor=raft.mask_predictor,
    )
    return estimator.with_model(cached)
