"""mtransfer: transfer the motion of a video onto still images with motion-guided diffusion.

``mtransfer.MotionGuidancePipeline`` (a diffusers pipeline, see ``mtransfer.pipeline.diffusers_pipeline``) is
imported on first use, by module name, so ``import mtransfer`` and ``mtransfer --help`` stay free of torch.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"MotionGuidancePipeline", "MotionGuidancePipelineOutput"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("mtransfer.pipeline.diffusers_pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
