"""The evaluate stage: every result judged independently of the estimator that guided it."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from mtransfer.app.settings import RunSettings
from mtransfer.evaluation import evaluate_run, judge_estimator_name
from mtransfer.files import json_ready, with_infinities
from mtransfer.layouts import EVALUATION, FRAMES
from mtransfer.pipeline.stages.context import RunContext, supersede_changed


def judge_name(settings: RunSettings) -> str:
    """The estimator that judges the results: ``evaluation.estimator``, or the automatic choice here."""
    return settings.evaluation.estimator or judge_estimator_name(settings.estimator.name)


def evaluate_stage(ctx: RunContext) -> dict[str, Any] | None:
    """Judge every result independently of the estimator that guided it (``evaluate_run``): fidelity,
    preservation, temporal consistency; the evaluation, or None with ``evaluation.enabled = false``.

    Each judged frame's figures are recorded in the manifest as it finishes, so an interrupted evaluation
    resumes at the next frame; results (re)made by this run are judged again. The temporal figures (cheap,
    from pairs of frames) and ``evaluation.json`` are redone whenever any frame was judged.
    """
    settings = ctx.stage_settings["evaluate"]
    path = ctx.folder / EVALUATION
    if not ctx.settings.evaluation.enabled:
        moved = ctx.manifest.supersede(["evaluate"], [path]) if "evaluate" in ctx.manifest.record["stages"] else None
        kept = f"; the earlier evaluation moved to {escape(str(moved))}" if moved is not None else ""
        ctx.console.print(f"evaluation off (evaluation.enabled = false){kept}; `mtransfer eval` can judge the "
                          "run later", highlight=False)
        return None
    remade = "guide" in ctx.computed
    if ctx.manifest.is_done("evaluate", settings) and not remade and path.exists():
        # as the manifest and the report hold it (`mtransfer eval` may have rewritten evaluation.json since)
        record = with_infinities(ctx.manifest.stage("evaluate"))
        return {"folder": str(ctx.folder), "kind": "run", "judge": record["judge"], "summary": record["summary"],
                "frames": list(record["frames"].values())}
    supersede_changed(ctx, "evaluate", settings, "re-evaluating", "the earlier evaluation")
    if remade:  # figures of the results this run replaced no longer hold
        ctx.manifest.record["stages"].pop("evaluate", None)
    frames = sorted(int(p.stem) for p in (ctx.folder / FRAMES).glob("*.png") if p.stem.isdigit())
    record = ctx.manifest.begin("evaluate", settings, total=len(frames))
    known = {int(name): row for name, row in record["frames"].items()}
    name = judge_name(ctx.settings)
    task = ctx.progress.add_task(f"evaluate ({name})", total=len(frames), completed=len(known))

    def judged(index: int, row: dict[str, Any]) -> None:
        ctx.manifest.frame_done("evaluate", index, json_ready(row))
        ctx.count("evaluate")
        ctx.progress.advance(task)

    evaluation = evaluate_run(ctx.folder, device=ctx.device, estimator=name,
                              max_side=ctx.settings.evaluation.max_side, known=known, on_frame=judged)
    for row in evaluation["frames"]:  # now with the temporal figures
        record["frames"][f"{row['frame']:04d}"] = json_ready(row)
    ctx.manifest.finish("evaluate", judge=evaluation["judge"], summary=json_ready(evaluation["summary"]))
    return evaluation
