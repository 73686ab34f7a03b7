"""The guided-step benchmark's command line, in a module that imports nothing heavy, so that
``mtransfer bench --help`` and its usage errors answer before torch and diffusers are imported."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

GPU_VARIANTS = ("baseline", "tf32", "bf16", "sdpa", "channels-last", "cache-source", "checkpoint", "fast")
CPU_VARIANTS = ("baseline", "sdpa", "cache-source", "fast")
GPU_SIZE, CPU_SIZE = 512, 64


def parse(argv: Sequence[str] | None, prog: str = "mtransfer bench") -> argparse.Namespace:
    """The parsed options; ``--help`` and usage errors exit here (argparse's ``SystemExit``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time one motion-guided pass (random SD v1.4 + RAFT) for the baseline and fast variants.",
    )
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda if available)")
    parser.add_argument("--size", type=int, help=f"image side in pixels (default {GPU_SIZE} on GPU, {CPU_SIZE} on CPU)")
    parser.add_argument(
        "--variants",
        help=f"comma-separated specs such as bf16+sdpa (default GPU: {','.join(GPU_VARIANTS)}; CPU: {','.join(CPU_VARIANTS)})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per variant before timing")
    parser.add_argument(
        "--model",
        default="real",
        help="real (SD v1.4 architecture, random weights), tiny (tests), or a diffusers folder / HF id of trained weights",
    )
    parser.add_argument("--raft", default="raft-large", choices=("raft-large", "raft-small"))
    parser.add_argument("--raft-iterations", type=int, default=5)
    parser.add_argument("--raft-weights", default="random", help="random, or a local RAFT .pth state dict")
    parser.add_argument("--run-steps", type=int, default=2, help="DDIM steps of the short run used for latent drift")
    parser.add_argument("--run-recursions", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile on top of the fastest set (slow to warm up)"
    )
    parser.add_argument(
        "--memory", action="store_true",
        help=f"instead of timing: the peak memory of one guided pass, followed allocation by allocation on fake "
             f"tensors (no GPU, no weights; default --size {GPU_SIZE})",
    )
    parser.add_argument("--batch", default="1,2", help="with --memory: comma-separated batch sizes (default 1,2)")
    parser.add_argument(
        "--speed", help="with --memory: comma-separated switch sets (default: baseline, bf16, each checkpointing, ...)"
    )
    parser.add_argument(
        "--cross-check", action="store_true",
        help="with --memory: also run the method on real CPU tensors (tiny models, 128px) against the resident set",
    )
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the per-variant split here")
    return parser.parse_args(argv)
