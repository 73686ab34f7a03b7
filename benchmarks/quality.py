"""Quality with known answers: fidelity, preservation and temporal consistency of clips whose target motion
is exact, for warm starts off / 0.5 / 0.3 and frame batches of 1 / 4.

Each clip is a picture moved by an elementary motion that grows frame by frame (frame 0 is the picture
itself): ``translate`` (1 px right and 0.5 px down per frame), ``rotate`` (2 degrees per frame), ``zoom``
(2 % per frame) and ``region`` (a box moving 1 px right per frame on a still background). No video is
decoded: the frames go through the guide stage's own per-frame code (``edit_frames``, the warm-start and
batching rules included) with the models loaded once per picture. Each result is then judged like
``mtransfer eval`` judges a run (``mtransfer.evaluation``): end-point error of the judge's flow inside the
edit mask and the share within 1 px, PSNR / SSIM outside it, and the warping error between consecutive
results next to the naive baseline's. The default run uses the ``offline-demo`` model (exact: it knows the
picture under every whole-pixel shift within 6 px) at a small size; ``--model`` runs any Stable Diffusion
model with the ``paper`` preset instead. The default (cat; translate and region; 3 moving frames; 24×32;
10 steps; a ±3 px family) keeps to a few minutes on a CPU. Usage::

    python -m benchmarks.quality [--pictures cat,coffee] [--clips translate,rotate,zoom,region] [--frames 4]
        [--size 24x32] [--model PATH] [--set guidance.steps=20] [--write-benchmarks] [--json report.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.exact_world import picture_path, write_section
from mtransfer.app import Editor, RunSettings, load_settings
from mtransfer.bench.measure import run_script
from mtransfer.errors import MtransferError
from mtransfer.evaluation import fidelity, judge_motion, load_judge, preservation, temporal_consistency
from mtransfer.files import load_image, write_json
from mtransfer.flows import rotation, scaling, translation
from mtransfer.flows.align import motion_mask
from mtransfer.app.frames import FrameInput, edit_frames

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Quality: warm starts and frame batches (`benchmarks/quality.py`)"
FIDELITY_TOLERANCE_PX = 0.5


def _region(height: int, width: int, t: int) -> torch.Tensor:
    flow = torch.zeros(2, height, width)
    flow[0, height // 4 : height // 2, width // 4 : width // 2] = 1.0 * t
    return flow


CLIPS: dict[str, Callable[[int, int, int], torch.Tensor]] = {
    "translate": lambda h, w, t: translation(h, w, 1.0 * t, 0.5 * t),
    "rotate": lambda h, w, t: rotation(h, w, 2.0 * t),
    "zoom": lambda h, w, t: scaling(h, w, 1 + 0.02 * t),
    "region": _region,
}
SETTINGS = {  # name: (video.warm_start, video.batch)
    "full, batch 1": (0.0, 1),
    "warm 0.5": (0.5, 1),
    "warm 0.3": (0.3, 1),
    "full, batch 4": (0.0, 4),
}


def run_clip(editor: Editor, state: Any, source: torch.Tensor, flows: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Edit frames 1.. of a clip as the guide stage does (in order, or in batches); the per-frame outputs."""
    settings = editor.settings
    inputs = [
        FrameInput(t, flow, motion_mask(flow, settings.align.mask_threshold, settings.align.mask_margin)[0])
        for t, flow in enumerate(flows) if t > 0
    ]
    outputs: list[Any] = []
    batch = settings.video.batch
    for start in range(0, len(inputs), batch):
        group = inputs[start : start + batch]
        if batch == 1 and outputs and settings.video.warm_start:  # warm from the frame before (plan "chain")
            group = [dataclasses.replace(group[0], role="warm", parent=group[0].index - 1,
                                         parent_flow=flows[group[0].index - 1], parent_latent=outputs[-1].latent)]
        outputs.extend(edit_frames(editor, tuple(group), state, None))
    return [{"image": o.image, "mask": i.mask, **o.record} for o, i in zip(outputs, inputs)]


def judge_clip(judge: Any, source: torch.Tensor, flows: list[torch.Tensor], frames: list[dict[str, Any]],
               use_mask: bool) -> dict[str, float]:
    """The clip's mean figures (``mtransfer.evaluation``)."""
    results = torch.stack([frame["image"] for frame in frames])
    targets = torch.stack(flows[1:])
    measured = judge_motion(judge, source[None].expand(len(results), -1, -1, -1), results, targets).flow
    per_frame = []
    for frame, flow, got in zip(frames, targets, measured):
        mask = frame["mask"] if use_mask else None
        per_frame.append({**fidelity(got, flow, mask), **preservation(source, frame["image"], mask)})
    temporal = temporal_consistency(torch.cat((source[None], results)), torch.stack(flows), source)

    def mean(values: Sequence[float | None]) -> float:  # inf (identical background) stays inf
        kept = [v for v in values if v is not None]
        return statistics.fmean(kept) if kept else float("nan")

    return {
        "epe_edit": mean([f["epe_edit"] for f in per_frame]),
        "within_1px_edit": mean([f["within_1px_edit"] for f in per_frame]),
        "psnr": mean([f["psnr"] for f in per_frame]),
        "ssim": mean([f["ssim"] for f in per_frame]),
        "warping_error": mean(temporal["warping_error"]),
        "baseline_warping_error": mean(temporal["baseline_warping_error"]),
        "passes": mean([frame["passes"] for frame in frames]),
        "seconds": mean([frame["seconds"] for frame in frames]),
    }


def run(base: RunSettings, pictures: list[str], clips: list[str], frames: int) -> dict[str, Any]:
    rows = []
    judge = load_judge(base.estimator.name)
    with tempfile.TemporaryDirectory() as folder:
        for picture in pictures:
            source = load_image(picture_path(picture, Path(folder)), base.model.size)
            height, width = source.shape[-2:]
            with Editor.load(base, source) as loaded:
                state = loaded.prepare(source)
                for clip in clips:
                    flows = [CLIPS[clip](height, width, t) for t in range(frames + 1)]
                    for name, (warm, batch) in SETTINGS.items():
                        video = dataclasses.replace(base.video, warm_start=warm, batch=batch,
                                                    plan="chain" if warm else "independent")
                        editor = Editor(loaded.backend, loaded.estimator, dataclasses.replace(base, video=video),
                                        loaded.device)
                        edited = run_clip(editor, state, source, flows)
                        figures = judge_clip(judge, source, flows, edited, base.align.edit_mask)
                        rows.append({"picture": picture, "clip": clip, "setting": name, **figures})
    return {"preset": base.name, "model": base.model.model, "size": list(base.model.size),
            "steps": base.guidance.steps, "recursions": base.guidance.recursions, "frames": frames,
            "judge": judge.name, "rows": rows, "summary": summary(rows)}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: the figures averaged over pictures and clips, and the fidelity change from full runs."""
    out = []
    for name in SETTINGS:
        own = [row for row in rows if row["setting"] == name]
        line = {"setting": name, **{key: _mean_of_known([row[key] for row in own]) for key in own[0]
                                    if key not in ("picture", "clip", "setting")}}
        full = [row for row in rows if row["setting"] == "full, batch 1"]
        line["epe_change"] = line["epe_edit"] - statistics.fmean(row["epe_edit"] for row in full)
        line["worst_epe_change"] = max(
            row["epe_edit"] - match["epe_edit"] for row in own for match in full
            if (match["picture"], match["clip"]) == (row["picture"], row["clip"])
        )
        out.append(line)
    return out


def _mean_of_known(values: list[float]) -> float:
    """The mean over the clips where a figure exists (nan: none, e.g. no background under a whole-image move)."""
    known = [v for v in values if v == v]
    return statistics.fmean(known) if known else float("nan")


COLUMNS = [("epe_edit", "EPE in mask (px)", "{:.2f}"), ("within_1px_edit", "within 1 px", "{:.0%}"),
           ("psnr", "PSNR out (dB)", "{:.1f}"), ("ssim", "SSIM out", "{:.3f}"),
           ("warping_error", "warp err", "{:.4f}"), ("baseline_warping_error", "naive warp err", "{:.4f}"),
           ("passes", "passes/frame", "{:.0f}"), ("seconds", "s/frame", "{:.2f}"),
           ("epe_change", "Δ EPE vs full", "{:+.2f}"), ("worst_epe_change", "worst clip Δ", "{:+.2f}")]


def _cell(fmt: str, value: float) -> str:
    """A figure, or "–" where no pixel qualified (e.g. no background outside a whole-image motion)."""
    return "–" if value != value else fmt.format(value)


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"quality: {report['preset']} ({report['model']}), judge {report['judge']}")
    table.add_column("setting")
    for _, label, _ in COLUMNS:
        table.add_column(label, justify="right")
    for line in report["summary"]:
        table.add_row(line["setting"], *[_cell(fmt, line[key]) for key, _, fmt in COLUMNS])
    return table


def verdicts(report: dict[str, Any]) -> list[str]:
    """Plain statements, from the figures, of whether each warm start keeps fidelity within the tolerance."""
    lines = []
    for line in report["summary"]:
        if not line["setting"].startswith("warm"):
            continue
        mean_ok = line["epe_change"] <= FIDELITY_TOLERANCE_PX
        worst_ok = line["worst_epe_change"] <= FIDELITY_TOLERANCE_PX
        saved = 1 - line["passes"] / report["summary"][0]["passes"]
        lines.append(
            f"- **{line['setting']}** ({saved:.0%} fewer passes per frame): fidelity "
            + ("stays" if mean_ok else "does **not** stay")
            + f" within {FIDELITY_TOLERANCE_PX} px of full runs on average ({line['epe_change']:+.2f} px)"
            + ("" if worst_ok == mean_ok else ", but " if mean_ok else ", though ")
            + ("" if worst_ok == mean_ok else
               f"the worst clip {'misses' if not worst_ok else 'keeps'} it ({line['worst_epe_change']:+.2f} px)")
            + "."
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    height, width = report["size"]
    lines = [
        SECTION, "",
        f"`python -m benchmarks.quality --write-benchmarks` (written by the script): preset `{report['preset']}` "
        f"(model `{report['model']}`) at {height}×{width}, {report['steps']} steps × {report['recursions']} "
        f"recursions, {report['frames']} moving frames per clip, clips "
        f"{', '.join(sorted({r['clip'] for r in report['rows']}))} on {', '.join(sorted({r['picture'] for r in report['rows']}))}; "
        f"judge `{report['judge']}`. Means over pictures and clips; Δ EPE is against the full runs of the same clips, "
        "warp err is the mean |colour| warping error between consecutive results (naive: the source splatted "
        "forward); PSNR/SSIM are over the clips with a background (inf: identical to the source). Seconds are "
        "wall time on the shared, busy 2-core CPU machine and include the first edit's warm-up in the first "
        "setting: read passes, not seconds, for cost.",
        "",
        "| setting | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for line in report["summary"]:
        lines.append(f"| {line['setting']} | " + " | ".join(_cell(fmt, line[key]) for key, _, fmt in COLUMNS) + " |")
    lines += ["", *verdicts(report), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", default="cat", help="comma-separated: cat or skimage.data names")
    parser.add_argument("--clips", default="translate,region", help=f"comma-separated, from {', '.join(CLIPS)}")
    parser.add_argument("--frames", type=int, default=3, help="moving frames per clip (after frame 0)")
    parser.add_argument("--size", default="24x32", help="working size HEIGHTxWIDTH")
    parser.add_argument("--model", help="a Stable Diffusion model (folder or id): runs the paper preset with it")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="override a preset value, e.g. guidance.steps=20 (repeatable)")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--write-benchmarks", action="store_true", help=f"put the table into BENCHMARKS.md ({SECTION!r})")
    args = parser.parse_args(argv)
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    unknown = [c for c in clips if c not in CLIPS]
    if unknown:
        raise MtransferError(f"--clips: unknown clip {unknown[0]!r}; choose from {', '.join(CLIPS)}")
    if args.frames < 2:
        raise MtransferError(f"--frames: need at least 2 moving frames, got {args.frames}")
    height, _, width = args.size.partition("x")
    overrides = [f"model.size=[{height}, {width}]", *args.settings]
    preset = "offline-demo"
    if not args.model:  # small enough for a few minutes on a shared CPU: shifts up to 3 px, 10 steps
        overrides = ["model.family_radius=3", "guidance.steps=10", *overrides]
    if args.model:
        preset, overrides = "paper", [f"model.model={args.model!r}", *overrides]
    base = load_settings(preset, overrides)
    report = run(base, [p.strip() for p in args.pictures.split(",") if p.strip()], clips, args.frames)
    Console(width=max(Console().width, 140)).print(report_table(report))
    for line in verdicts(report):
        print(line)
    if args.json:
        write_json(args.json, report)
    if args.write_benchmarks:
        write_section(ROOT / "BENCHMARKS.md", markdown(report), SECTION)
    return report


if __name__ == "__main__":
    run_script(main)
