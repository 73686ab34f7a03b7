"""The application layer: what every front end (the CLI, the video pipeline, workers, a web app) shares.

- ``settings``: ``load_settings(preset, overrides)`` → ``RunSettings``, every section typed and validated
  once; each setting declares the pipeline stage it shapes (``STAGES``, ``RunSettings.stage_settings``).
- ``models``: ``load_backend``, ``load_estimator`` (refuses a non-differentiable guidance estimator),
  ``check_models`` (missing weights before any work), ``cpu_warning``.
- ``editor``: ``Editor``: load the models once, ``prepare`` a source, ``edit`` it under many flows;
  ``EditorCache`` keeps the last loaded models for the next job that needs the same ones (the web app).
- ``executors``: where a run's frame edits happen: here (``LocalExecutor``) or on a pool of Ray actors
  (``RayExecutor``), chosen by ``[execution]`` (``ExecutionSettings``); imported on its own, not here.
- ``trajectory``: ``save_trajectory`` / ``load_trajectory``, a generated image's DDIM latents on disk.
- ``versions``: ``versions()``, the library versions a result records.
"""

from __future__ import annotations

from mtransfer.app.editor import Editor, EditorCache
from mtransfer.app.models import check_models, cpu_warning, load_backend, load_estimator
from mtransfer.app.settings import (
    STAGES,
    EstimatorSettings,
    EvaluationSettings,
    ExecutionSettings,
    ModelSettings,
    OutputSettings,
    RunSettings,
    VideoSettings,
    load_settings,
)
from mtransfer.app.versions import versions

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
    "versions",
]
