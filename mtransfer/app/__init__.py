"""The application layer: what every front end (the CLI, the video pipeline, workers, a web app) shares.

- ``settings``: ``load_settings(preset, overrides)`` → ``RunSettings``, every section typed and validated
  once; each setting declares the pipeline stage it shapes (``STAGES``, ``RunSettings.stage_settings``).
- ``models``: ``load_backend``, ``load_estimator`` (refuses a non-differentiable guidance estimator),
  ``check_models`` (missing weights before any work), ``cpu_warning``, ``world_warning`` (a target motion
  outside the exact model's world).
- ``editor``: ``Editor``: load the models once, ``prepare`` a source, ``edit`` it under many flows;
  ``EditorCache`` keeps the last loaded models for the next job that needs the same ones (the web app).
- ``executors``: where a run's frame edits happen: here (``LocalExecutor``) or on a pool of Ray actors
  (``RayExecutor``), chosen by ``[execution]`` (``ExecutionSettings``); imported on its own, not here.
- ``trajectory``: ``save_trajectory`` / ``load_trajectory``, a generated image's DDIM latents on disk.
- ``versions``: ``versions()``, the library versions a result records.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Editor": "editor", "EditorCache": "editor",
    "check_models": "models", "cpu_warning": "models", "load_backend": "models", "load_estimator": "models",
    "world_warning": "models",
    "STAGES": "settings", "EstimatorSettings": "settings", "EvaluationSettings": "settings",
    "ExecutionSettings": "settings", "ModelSettings": "settings", "OutputSettings": "settings",
    "RunSettings": "settings", "VideoSettings": "settings", "load_settings": "settings",
}
"""Where each name lives: imported on first use, so that ``mtransfer --help`` does not load torch. A name
that is also a submodule's (``versions``) is not listed: once the submodule is imported, the package
attribute is the module, so import it from its module."""


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mtransfer.app' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mtransfer.app.{_HOMES[name]}"), name)


__all__ = [
    "STAGES",
    "Editor",
    "EditorCache",
    "EstimatorSettings",
    "EvaluationSettings",
    "ExecutionSettings",
    "ModelSettings",
    "OutputSettings",
    "RunSettings",
    "VideoSettings",
    "check_models",
    "cpu_warning",
    "load_backend",
    "load_estimator",
    "load_settings",
    "world_warning",
]
