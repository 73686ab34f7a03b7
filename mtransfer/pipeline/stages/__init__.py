"""The six stages of ``mtransfer run``: decode → flow → align → guide → evaluate → encode, one module each.

Each stage is a function of the run context (and of the previous stage's output) returning its own
output. Work happens frame by frame: a frame's files are written atomically, then the manifest records
the frame, so a stage resumes at the unrecorded frames and a finished stage only reloads its files.
What a stage hands on is read back from the files it wrote (driving frames, driving flows, results) or,
for the cheap and deterministic alignment, recomputed from those files on every run and used from
memory by the guide stage; so a resumed run computes exactly what an uninterrupted one would.

A frame's target flow goes: ``decode`` (the driving frame) → ``flow`` (its motion measured on the video's
grid) → ``align`` (laid onto the image: ``Motion.flows[t]``) → ``guide`` (a job for the executor, edited by
``mtransfer.app.frames.edit_frames`` with ``Editor`` from where the frame plan starts it) →
``frames/NNNN.png``, which ``evaluate`` judges independently (``mtransfer.evaluation``) for the manifest,
the report and the terminal. ``mtransfer flow`` runs the first two stages and ``render_driving_flow``
instead of the rest. The run folder's layout is ``mtransfer.layouts``.
"""

from __future__ import annotations

from mtransfer.pipeline.stages.align import align_stage
from mtransfer.pipeline.stages.context import Clip, DrivingFlows, Motion, RunContext
from mtransfer.pipeline.stages.decode import decode_stage
from mtransfer.pipeline.stages.encode import encode_stage
from mtransfer.pipeline.stages.evaluate import evaluate_stage, judge_name
from mtransfer.pipeline.stages.flow import flow_stage, render_driving_flow
from mtransfer.pipeline.stages.guide import KILL_AFTER_ENV, guide_stage, plan_line

__all__ = [
    "Clip", "DrivingFlows", "KILL_AFTER_ENV", "Motion", "RunContext", "align_stage", "decode_stage",
    "encode_stage", "evaluate_stage", "flow_stage", "guide_stage", "judge_name", "plan_line", "render_driving_flow",
]
