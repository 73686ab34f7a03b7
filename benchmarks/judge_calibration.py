"""Calibrating the motion-fidelity judge on the authors' published examples.

For each example the judge measures the flow from the source to four images and reports the mean
end-point error against the target flow over the moving, visible pixels (``|target| > 0.5`` px):

- (a) the authors' motion-guided result;
- (b) the source itself (no motion);
- (c) the source splatted forward by the target flow (``splat_image``): a perfect but crude motion;
- (d) a wrong motion: the source splatted forward by the *reversed* target, ``-T`` (the target mirrored
  through zero motion). Negating only ``u`` would leave a vertical motion such as ``teapot.v8.up150``
  unchanged, so it cannot serve as a wrong motion on every example.

A good judge puts (a) and (c) close together and far below (b) and (d) on every example; ``separation``
is ``min(b, d) / max(a, c)``. Besides the judge's fused flow, both of its hypotheses alone are reported
(``direct``: the estimator from zero motion, ``residual``: the estimator after warping back by the
target) so the choice can be checked. Usage::

    python -m benchmarks.judge_calibration [--examples NAME,...] [--estimator tvl1] [--json PATH]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mtransfer.bench.measure import run_script
from benchmarks.paper_examples import EXAMPLES_ENV, example_names, examples_folder, load_example
from mtransfer.errors import input_error
from mtransfer.estimators import load_named_estimator
from mtransfer.evaluation import judge_motion
from mtransfer.evaluation.metrics import end_point_error
from mtransfer.files import write_json
from mtransfer.flows import occlusion_mask, splat_image

CASES = ("authors", "source", "warped", "reversed")
HYPOTHESES = ("judge", "direct", "residual")


def calibrate_example(name: str, estimator: Any) -> dict[str, Any]:
    """Mean EPE (px) on the moving visible pixels for each case and hypothesis of one example."""
    example = load_example(name)
    source, target = example.source[None], example.target[None]
    images = {
        "authors": example.authors[None],
        "source": source,
        "warped": splat_image(source, target),
        "reversed": splat_image(source, -target),
    }
    moving = ((target.norm(dim=1) > 0.5) & (occlusion_mask(target)[:, 0] > 0))
    figures: dict[str, Any] = {"example": name, "mean_motion_px": float(target.norm(dim=1)[moving].mean())}
    for case, image in images.items():
        judgement = judge_motion(estimator, source, image, target)
        for hypothesis, flow in zip(HYPOTHESES, (judgement.flow, judgement.direct, judgement.residual)):
            figures[f"{hypothesis}_{case}"] = float(end_point_error(flow, target)[moving].mean())
    good = max(figures["judge_authors"], figures["judge_warped"])
    figures["separation"] = min(figures["judge_source"], figures["judge_reversed"]) / max(good, 1e-6)
    return figures


def table(rows: list[dict], hypothesis: str) -> Table:
    out = Table(title=f"judge calibration ({hypothesis}): mean EPE px on moving pixels")
    for header in ("example", "mean |T|", "(a) authors", "(b) no motion", "(c) warped", "(d) reversed", "separation"):
        out.add_column(header, justify="left" if header == "example" else "right")
    for row in rows:
        cells = [f"{row[f'{hypothesis}_{case}']:.1f}" for case in CASES]
        b_d = min(row[f"{hypothesis}_source"], row[f"{hypothesis}_reversed"])
        a_c = max(row[f"{hypothesis}_authors"], row[f"{hypothesis}_warped"])
        out.add_row(row["example"], f"{row['mean_motion_px']:.1f}", *cells, f"{b_d / max(a_c, 1e-6):.1f}x")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", help="comma-separated example names [default: all]")
    parser.add_argument("--estimator", default="tvl1", help="the judge's estimator [default: tvl1]")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    folder = examples_folder()
    if not folder.is_dir():
        raise input_error(folder, f"no paper examples here; set ${EXAMPLES_ENV} to the folder holding them")
    estimator = load_named_estimator(args.estimator)
    torch.set_grad_enabled(False)
    rows = [calibrate_example(name, estimator) for name in (args.examples.split(",") if args.examples else example_names(folder))]
    console = Console()
    for hypothesis in HYPOTHESES:
        console.print(table(rows, hypothesis))
    if args.json:
        write_json(args.json, {"estimator": args.estimator, "rows": rows})
    return rows


if __name__ == "__main__":
    run_script(main)
