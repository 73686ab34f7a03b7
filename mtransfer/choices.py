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

MOTION_ARGUMENTS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "translate": (("dx", "dx", None), ("dy", "dy", "0")),
    "rotate": (("degrees", "plain", None), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "scale": (("factor", "plain", None), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "stretch": (("factor", "plain", None), ("angle", "plain", "0"), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "shear": (("shx", "plain", None), ("shy", "plain", "0"), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "twirl": (("degrees", "plain", None), ("radius", "side", "50%"), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "bulge": (("strength", "plain", None), ("radius", "side", "50%"), ("cx", "x", "50%"), ("cy", "y", "50%")),
    "wobble": (("amplitude", "side", None), ("wavelength", "side", "50%"), ("seed", "plain", "0")),
}
"""Each motion's arguments as (name, what a percentage is of, default in the spec language or None =
required); ``mtransfer.flows.spec`` builds its registry from this table (the kinds are explained there)."""
HOMOGRAPHY_USAGE = "homography(x1, y1, ..., x4, y4) or homography(h11, ..., h33)"


def motion_usage() -> str:
    """Every motion with its arguments, for error messages and ``--help`` texts."""
    signatures = [
        f"{name}({', '.join(arg if default is None else f'{arg}={default}' for arg, _, default in params)})"
        for name, params in MOTION_ARGUMENTS.items()
    ]
    return ", ".join([*signatures, HOMOGRAPHY_USAGE])
