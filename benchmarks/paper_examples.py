"""Our motion-guided edits of the authors' published examples, judged next to the authors' own results.

The six examples (source, target flow, authors' result; see ``../shared/paper_examples/README.md``) live
outside the repository: ``shared/paper_examples`` beside the checkout or ``$MTRANSFER_PAPER_EXAMPLES``. For each
one this runs ``mtransfer edit`` with the example's target flow and a prompt from its name, then reports
the judge's fidelity (``mtransfer.evaluation``) of our result and of the authors' result at the same size,
and preservation outside the moving region (PSNR/SSIM against the source).

The preset is ``paper`` when Stable Diffusion v1.4 and RAFT-large weights are on this machine (so anyone
with a GPU reproduces the real comparison), else ``tiny`` (random weights, pyramid estimator, 64x64): that
only exercises the code, and its pictures are noise. Usage::

    python -m benchmarks.paper_examples [--examples cat.v4.tilt30,...] [--pipeline auto|paper|tiny|...]
        [--size 64] [--out outputs/paper-examples] [--json benchmarks/results/paper-examples.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mtransfer.bench.measure import run_script
from mtransfer.errors import MtransferError, input_error
from mtransfer.evaluation import evaluate_run, fidelity, judge_motion, load_judge, preservation
from mtransfer.files import load_image, write_json
from mtransfer.flows import read_flow, resize_flow, write_flow
from mtransfer.flows.align import motion_mask

EXAMPLES_ENV = "MTRANSFER_PAPER_EXAMPLES"
REPOSITORY = Path(__file__).resolve().parent.parent


def examples_folder() -> Path:
    """``$MTRANSFER_PAPER_EXAMPLES``, else ``shared/paper_examples`` beside the checkout (or beside the folder
    holding it, for git worktrees such as ``wt/NAME``); the first candidate when none exists."""
    if os.environ.get(EXAMPLES_ENV):
        return Path(os.environ[EXAMPLES_ENV])
    candidates = [base / "shared" / "paper_examples" for base in (REPOSITORY.parent, REPOSITORY.parent.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0])


@dataclass(frozen=True)
class Example:
    """One published example: ``source``, ``authors`` (3, H, W) in [0, 1] and ``target`` (2, H, W) in px."""

    name: str
    source: torch.Tensor
    authors: torch.Tensor
    target: torch.Tensor
    folder: Path

    @property
    def prompt(self) -> str:
        """"a photo of a cat" from "real.cat.uninvert.rotate": the name minus version, inversion and motion."""
        words = [w for w in self.name.split(".")[:-1] if w not in ("real", "uninvert") and not w[1:].isdigit()]
        return f"a photo of a {' '.join(words)}"


def example_names(folder: Path | None = None) -> list[str]:
    folder = folder or examples_folder()
    return sorted(p.name for p in folder.iterdir() if (p / "target_flow.npy").is_file()) if folder.is_dir() else []


def load_example(name: str, folder: Path | None = None) -> Example:
    path = (folder or examples_folder()) / name
    if not path.is_dir():
        raise input_error(path, f"no such example (set ${EXAMPLES_ENV} to the paper_examples folder)")
    return Example(name, load_image(path / "source.png"), load_image(path / "authors_result.png"),
                   read_flow(path / "target_flow.npy"), path)


def at_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An image ``(3, H, W)`` resized (antialiased) to ``size``."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def paper_weights_present() -> bool:
    """SD v1.4 in the Hugging Face cache and RAFT-large weights here (looked up locally, nothing downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    from mtransfer.diffusion.stable_diffusion import DEFAULT_MODEL
    from mtransfer.estimators.raft import has_local_weights

    return has_local_weights("raft-large") and isinstance(try_to_load_from_cache(DEFAULT_MODEL, "model_index.json"), str)


def judged(judge, source: torch.Tensor, result: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Fidelity over the moving region and preservation outside it, for one result at the target's size."""
    mask = motion_mask(target)[0]
    measured = judge_motion(judge, source[None], result[None], target).flow[0]
    return {**fidelity(measured, target, mask), **preservation(source, result, mask)}


def edit_example(example: Example, pipeline: str, size: tuple[int, int] | None, out: Path, device: str) -> Path:
    """Run ``mtransfer edit`` on the example (flow resized to the working size) and return its folder."""
    folder = out / example.name
    flow_path = out / f"{example.name}.flow.npy"  # beside the edit folder, which holds one edit's files only
    working = size or tuple(example.target.shape[-2:])
    write_flow(flow_path, resize_flow(example.target, working))
    command = [sys.executable, "-m", "mtransfer", "edit", str(example.folder / "source.png"), "--flow", str(flow_path),
               "--prompt", example.prompt, "--pipeline", pipeline, "--out", str(folder), "--device", device]
    if size is not None:
        command += ["--size", f"{size[0]}x{size[1]}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise MtransferError(f"mtransfer edit failed on {example.name}: {(done.stderr or done.stdout).strip()[-400:]}")
    return folder


def compare(names: list[str], pipeline: str, size: tuple[int, int] | None, out: Path, device: str) -> list[dict]:
    """Our edit and the authors' result of each example, judged alike at our working size.

    ``evaluate_run`` judges our edit folder over the target's moving region (``motion_mask``); ``judged``
    does the same for the authors' result brought to that size.
    """
    rows = []
    for name in names:
        example = load_example(name)
        folder = edit_example(example, pipeline, size, out, device)
        ours = evaluate_run(folder, device=device)
        judge = load_judge(ours["judge"]["guidance_estimator"], device)
        working = tuple(load_image(folder / "source.png").shape[-2:])
        target = resize_flow(example.target, working)
        source = load_image(folder / "source.png")
        authors = judged(judge, source, at_size(example.authors, working), target)
        rows.append({"example": name, "prompt": example.prompt, "size": list(working),
                     "judge": ours["judge"]["estimator"], "ours": ours["frames"][0], "authors": authors})
    return rows


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def table(rows: list[dict], pipeline: str) -> Table:
    out = Table(title=f"paper examples: ours ({pipeline}) vs the authors' results, judged alike")
    for header in ("example", "size", "EPE ours", "EPE authors", "PSNR ours", "PSNR authors", "SSIM ours", "SSIM authors"):
        out.add_column(header, justify="right" if header != "example" else "left")
    for row in rows:
        ours, authors = row["ours"], row["authors"]
        out.add_row(row["example"], "x".join(map(str, row["size"])),
                    _fmt(ours["epe_edit"], "{:.1f}"), _fmt(authors["epe_edit"], "{:.1f}"),
                    _fmt(ours["psnr"], "{:.1f}"), _fmt(authors["psnr"], "{:.1f}"),
                    _fmt(ours["ssim"], "{:.3f}"), _fmt(authors["ssim"], "{:.3f}"))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", help="comma-separated example names [default: all]")
    parser.add_argument("--pipeline", default="auto", help="auto (paper when its weights are here, else tiny) or a preset")
    parser.add_argument("--size", type=int, help="working size (square) [default: 512 for paper, 64 otherwise]")
    parser.add_argument("--out", type=Path, default=Path("outputs/paper-examples"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    folder = examples_folder()
    if not folder.is_dir():
        raise input_error(folder, f"no paper examples here; set ${EXAMPLES_ENV} to the folder holding them")
    names = args.examples.split(",") if args.examples else example_names(folder)
    pipeline = ("paper" if paper_weights_present() else "tiny") if args.pipeline == "auto" else args.pipeline
    side = args.size or (None if pipeline == "paper" else 64)
    rows = compare(names, pipeline, None if side is None else (side, side), args.out, args.device)
    Console().print(table(rows, pipeline))
    if args.json:
        write_json(args.json, {"pipeline": pipeline, "rows": rows})
    return rows


if __name__ == "__main__":
    run_script(main)
