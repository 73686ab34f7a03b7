"""What each command says when weights are missing (``WeightsMissing``): its own flags that point at local
weights or need none. Core modules word the problem in settings; only here are the flags known, and
tests/test_hints.py parses every flag named here against the command it is shown for."""

from __future__ import annotations

WEIGHT_FREE = ("without any download: --pipeline offline-demo (an exact toy model that moves the picture by "
               "whole-pixel shifts) or --pipeline tiny (a random tiny Stable Diffusion: checks the whole path, "
               "noise-like pictures)")
"""The two presets that need no weights, for the commands that take a preset and guide an edit."""

HINTS: dict[str, dict[str, str]] = {
    "run": {
        "raft": "--set estimator.weights=PATH and --set video.weights=PATH take a local RAFT .pth, "
                f"--set video.estimator=tvl1 needs none; {WEIGHT_FREE}",
        "diffusion": f"--set model.model=PATH takes a local diffusers folder; {WEIGHT_FREE}",
    },
    "edit": {
        "raft": f"--raft-weights PATH takes a local RAFT .pth, --estimator pyramid needs none; {WEIGHT_FREE}",
        "diffusion": f"--model PATH takes a local diffusers folder; {WEIGHT_FREE}",
    },
    "generate": {
        "diffusion": "--model PATH takes a local diffusers folder; --model tiny (random, offline) checks the path",
    },
    "flow": {"raft": "--weights PATH takes a local RAFT .pth, --estimator tvl1 needs none"},
    "eval": {"raft": "--estimator tvl1 judges without any weights"},
}


def weights_hint(command: str | None, kind: str) -> str | None:
    """The flags ``command`` offers for missing weights of ``kind`` (``"raft"``, ``"diffusion"``); None if none."""
    return HINTS.get(command or "", {}).get(kind)
