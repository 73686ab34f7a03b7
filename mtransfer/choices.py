"""Names the command line offers as choices, in a module that imports nothing heavy.

``mtransfer --help`` and every sub-command's ``--help`` print these before torch is imported (a second);
the modules that implement each choice import them from here and check that they agree.
"""

from __future__ import annotations

from typing import Literal

FLOW_MODES = ("direct", "chained")
INIT_MODES = ("shared", "previous")
PLANS = ("independent", "chain", "keys")
"""Which frames of a clip start from another frame's result (``VideoSettings.plan``, ``mtransfer.app.plan``)."""
WARM_FROM = ("previous", "key")
"""The frame a warm frame starts from: the moving frame before it, or its segment's key."""
WARM_WARPS = ("none", "image", "latent")
"""How a warm start is moved by the motion from its parent to it before re-noising (``warped_start``)."""
EXECUTORS = ("local", "ray")
DEFAULT_MAX_SIDE = 1024
"""Longest side video frames are measured at unless ``video.size`` says otherwise (``VideoSettings.max_side``)."""

ESTIMATORS = ("raft-large", "raft-small", "tvl1", "ilk", "pyramid")
DIFFERENTIABLE = ("raft-large", "raft-small", "pyramid")
"""The estimators the guidance energy can differentiate through (``mtransfer.estimators`` checks each class)."""

Reference = Literal["first", "previous"]
"""Flow from the first frame to each frame, or from the previous one."""
