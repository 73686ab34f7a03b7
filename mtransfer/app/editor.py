"""``Editor``: the models loaded once, then any number of motion-guided edits.

Every user of motion guidance goes through it: ``mtransfer edit`` (one edit), the guide stage of
``mtransfer run`` (one edit per frame of a video) and anything that serves edits from a long-lived
process. Loading is the slow part, so it happens once (``Editor.load``); then ``prepare`` does the
work that depends only on the source image and the prompt, and ``edit`` moves the source by one target
flow. Both wrap ``mtransfer.guidance.edit.prepare_source`` / ``edit_image``, which stay the public
lower-level API for code that brings its own models.

``Editor.load`` takes nothing but plain, picklable settings (``mtransfer.app.load_settings``), so a worker
process can be handed the settings and load its own copy of the models::

    settings = load_settings("paper", ["guidance.steps=100"])
    with Editor.load(settings, device="cuda") as editor:
        state = editor.prepare(image)
        result = editor.edit(state, target_flow)
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from contextlib import ExitStack
from typing import Callable, Hashable

import torch

from mtransfer.app.models import cpu_warning, load_backend, load_estimator
from mtransfer.app.settings import RunSettings
from mtransfer.diffusion import DiffusionBackend
from mtransfer.estimators import FlowEstimator
from mtransfer.guidance.config import GuidanceSettings
from mtransfer.guidance.edit import EditResult, Preview, Progress, SourceState, edit_image, edit_images, prepare_source
from mtransfer.guidance.sampler import StepHook
from mtransfer.speed import speed_switches


class Editor:
    """A diffusion backend and a differentiable flow estimator, loaded once, with the guidance settings.

    Build it with ``Editor.load``; ``close()`` (or leaving a ``with`` block) undoes the speed switches
    applied to the models. The attributes are read-only in spirit: ``backend``, ``estimator`` (both with
    ``model.speed`` applied), ``settings`` and ``device``.
    """

    def __init__(
        self, backend: DiffusionBackend, estimator: FlowEstimator, settings: RunSettings, device: torch.device,
        resources: ExitStack | None = None,
    ) -> None:
        self.backend = backend
        self.estimator = estimator
        self.settings = settings
        self.device = device
        self._resources = resources or ExitStack()

    @classmethod
    def load(
        cls,
        settings: RunSettings,
        source: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        *,
        frames: int = 1,
        warn: Callable[[str], None] | None = None,
    ) -> Editor:
        """Load the backend ``settings.model`` names and the guidance estimator ``settings.estimator``
        names on ``device`` (default ``settings.model.device``), with the ``model.speed`` switches on.

        ``source`` ``(3, H, W)`` is the image to edit at the working size: the exact model is built from
        it (Stable Diffusion ignores it). Once the models are loaded, ``warn`` receives the CPU warning
        (what real Stable Diffusion will cost for ``frames`` edits on a CPU), if there is one.
        """
        device = settings.model.torch_device() if device is None else torch.device(device)
        estimator = load_estimator(settings.estimator, device, for_guidance=True)
        backend = load_backend(settings.model, source, device)
        guidance = settings.guidance
        warning = cpu_warning(settings.model, device, guidance.steps * guidance.recursions, frames)
        if warning and warn is not None:
            warn(warning)
        resources = ExitStack()
        backend, estimator = resources.enter_context(speed_switches(backend, estimator, settings.model.speed))
        return cls(backend, estimator, settings, device, resources)

    @property
    def guidance(self) -> GuidanceSettings:
        return self.settings.guidance

    def prepare(
        self,
        source: torch.Tensor,
        prompt: str | None = None,
        *,
        trajectory: list[torch.Tensor] | None = None,
        progress: Progress | None = None,
    ) -> SourceState:
        """Encode ``source`` ``(3, H, W)`` in [0, 1], embed ``prompt`` (default ``model.prompt``) and find
        the source latent at every noise level (see ``prepare_source``); reuse the state for many edits."""
        prompt = self.settings.model.prompt if prompt is None else prompt
        if trajectory is not None:
            trajectory = [latent.to(self.device) for latent in trajectory]
        return prepare_source(self.backend, source, prompt, self.guidance, trajectory=trajectory, progress=progress)

    def edit(
        self,
        state: SourceState,
        target_flow: torch.Tensor,
        edit_mask: torch.Tensor | None = None,
        init_latent: torch.Tensor | None = None,
        progress: Progress | None = None,
        first_step: int = 0,
        preview: Preview | None = None,
        step_end: StepHook | None = None,
    ) -> EditResult:
        """Move the prepared source by ``target_flow`` ``(2, H, W)`` (see ``edit_image``); ``edit_mask``
        ``(1, H, W)`` marks where the image may change, ``init_latent`` replaces the shared start (the latent
        at step ``first_step`` for a warm start, which runs only the remaining steps); ``preview`` receives
        each one-step estimate ``guidance.preview_every`` takes, while the edit runs; ``step_end`` sees (and may
        replace) the latent after every step (``mtransfer.guidance.sampler.StepHook``)."""
        return edit_image(
            self.backend, self.estimator, state, target_flow.to(self.device), self.guidance,
            edit_mask=edit_mask, init_latent=init_latent, first_step=first_step, progress=progress, preview=preview,
            step_end=step_end,
        )

    def edit_many(
        self,
        state: SourceState,
        target_flows: torch.Tensor,
        edit_masks: list[torch.Tensor] | None = None,
        progress: Progress | None = None,
        init_latent: torch.Tensor | None = None,
        first_step: int = 0,
    ) -> list[EditResult]:
        """Several edits of the prepared source, ``target_flows`` ``(B, 2, H, W)``, computed as one batch
        (see ``edit_images``): each result is what ``edit`` gives for its flow alone. ``init_latent``
        ``(B, C, h, w)`` and ``first_step`` as in ``edit``, shared by the batch's starting level."""
        return edit_images(
            self.backend, self.estimator, state, target_flows.to(self.device), self.guidance,
            edit_masks=edit_masks, init_latent=init_latent, first_step=first_step, progress=progress,
        )

    def close(self) -> None:
        """Undo the speed switches on the shared modules (the models stay usable, as loaded)."""
        self._resources.close()

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loading_key(settings: RunSettings, source: torch.Tensor | None, device: torch.device) -> Hashable:
    """What ``Editor.load`` gives depends on: every ``[model]`` setting but those that only shape the edits
    (the prompt and the working size) or are resolved into ``device``, the estimator settings, and for the
    exact model the image it is built from (Stable Diffusion ignores the image). Derived rather than listed,
    so a model setting added later is part of the key."""
    model = dataclasses.replace(settings.model, prompt="", size=[], device="auto")
    key: tuple = (model, str(device), settings.estimator)
    if model.model == "exact":
        image = b"" if source is None else source.detach().float().cpu().contiguous().numpy().tobytes()
        key += (None if source is None else tuple(source.shape), hashlib.sha256(image).hexdigest())
    return key


class EditorCache:
    """The models of the last load, kept for the next edit that would load the same ones (a long-lived
    process such as the web app): ``editor(settings, source)`` reloads only when ``loading_key`` changes,
    and closes the models it replaces, so one set stays in memory; ``loads`` counts the loads. Safe to call
    from several threads."""

    def __init__(self) -> None:
        self.loads = 0
        self._lock = threading.RLock()
        self._key: Hashable | None = None
        self._loaded: Editor | None = None

    def editor(
        self,
        settings: RunSettings,
        source: torch.Tensor | None = None,
        device: str | torch.device | None = None,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> Editor:
        """An ``Editor`` with ``settings`` over the kept models, loading them first when they differ."""
        device = settings.model.torch_device() if device is None else torch.device(device)
        key = loading_key(settings, source, device)
        with self._lock:
            if self._loaded is None or key != self._key:
                self.close_models()
                self._loaded = Editor.load(settings, source, device)
                self._key = key
                self.loads += 1
            loaded = self._loaded
        guidance = settings.guidance
        warning = cpu_warning(settings.model, device, guidance.steps * guidance.recursions, 1)
        if warning and warn is not None:
            warn(warning)
        return Editor(loaded.backend, loaded.estimator, settings, loaded.device)

    def close_models(self) -> None:
        """Forget the kept models (undoing their speed switches); the next ``editor`` call loads again."""
        with self._lock:
            if self._loaded is not None:
                self._loaded.close()
            self._loaded = self._key = None
