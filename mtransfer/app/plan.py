"""The frame plan of a clip: which frames are edited from the shared start and which from another's result.

A clip's frames are edits of one source under many target flows. A *key* runs the whole schedule from the
shared start; a *warm* frame starts from its *parent*'s result (re-noised part way, ``warm_start``) and so
pays only the tail of the schedule, and inherits its parent's appearance, which keeps the clip together.
Frames without motion are *still*: the source itself, no edit. The plan is a forest: keys are roots, every
warm frame hangs under an earlier frame, so frames are ready in index order and keys can all run at once.

``frame_plan`` makes the plan from the settings (pure, no tensors but the optional flows); ``plan_jobs``
groups the frames still to do into executor jobs that carry the jobs they wait for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from mtransfer.choices import PLANS, WARM_FROM

STILL, KEY, WARM = "still", "key", "warm"


@dataclass(frozen=True)
class PlannedFrame:
    """One frame's place in the plan: its ``role`` and, for a warm frame, the ``parent`` it starts from."""

    index: int
    role: str
    parent: int | None = None


def frame_plan(
    still: Sequence[bool],
    plan: str,
    *,
    key_every: int = 0,
    warm_from: str = "previous",
    change: Callable[[int, int], float] | None = None,
    key_change: float = 0.0,
) -> list[PlannedFrame]:
    """The role of every frame of a clip whose frames are ``still`` (no motion) or moving.

    - ``independent``: every moving frame is a key.
    - ``chain``: the first moving frame after a still one is a key (the motion starts from rest and the
      previous result is the source itself); every other moving frame is warm from the moving frame before it.
    - ``keys``: as ``chain``, and a new key every ``key_every`` moving frames; ``warm_from = "key"`` makes each
      warm frame start from its segment's key instead of from the frame before it.

    With ``key_change > 0``, a frame that would be warm becomes a key when ``change(frame, parent)`` (the
    largest difference of their target flows, px) exceeds it, so a cut or a jolt does not drag a stale start.
    """
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}")
    if warm_from not in WARM_FROM:
        raise ValueError(f"unknown warm_from {warm_from!r}")
    if plan == "keys" and key_every < 1:
        raise ValueError("plan 'keys' needs key_every >= 1")
    planned: list[PlannedFrame] = []
    key = previous = None  # the current segment's key and the last moving frame, while moving
    served = 0  # moving frames since the segment's key, the key included
    for index, is_still in enumerate(still):
        if is_still:
            planned.append(PlannedFrame(index, STILL))
            key = previous = None
            continue
        parent = None
        if plan != "independent" and key is not None and not (plan == "keys" and served >= key_every):
            parent = key if warm_from == "key" else previous
            if key_change > 0 and change is not None and change(index, parent) > key_change:
                parent = None
        if parent is None:
            planned.append(PlannedFrame(index, KEY))
            key, served = index, 1
        else:
            planned.append(PlannedFrame(index, WARM, parent))
            served += 1
        previous = index
    return planned


def total_passes(planned: Sequence[PlannedFrame], steps: int, recursions: int, first_warm_step: int) -> int:
    """Guided passes of a plan: a key runs every step, a warm frame the steps from ``first_warm_step`` on."""
    per_frame = {STILL: 0, KEY: steps * recursions, WARM: (steps - first_warm_step) * recursions}
    return sum(per_frame[frame.role] for frame in planned)


@dataclass(frozen=True)
class PlannedJob:
    """Frames edited together (``frames``, same role, so same starting level) and the jobs whose results
    they start from (``after``, by each job's first frame); ``after`` is empty when every parent is done."""

    frames: tuple[int, ...]
    after: tuple[int, ...] = ()

    @property
    def index(self) -> int:
        return self.frames[0]


def plan_jobs(planned: Sequence[PlannedFrame], pending: Sequence[int], batch: int) -> list[PlannedJob]:
    """The pending moving frames as jobs of at most ``batch`` frames, in an order where every job comes after
    the jobs it waits for. Frames are grouped only when they are ready at the same moment and start at the
    same level: keys and frames whose parents are already done (all ready at once, in two groups by role), and
    warm frames whose parents all sit in the same job (ready when that job is written)."""
    roles = {frame.index: frame for frame in planned}
    waiting = set(pending)
    job_of: dict[int, int] = {}  # frame -> position of its job in ``jobs``
    open_job: dict[tuple[str, int | None], int] = {}  # (role, parent's job) -> the job still taking frames
    jobs: list[PlannedJob] = []
    for index in sorted(waiting):
        frame = roles[index]
        if frame.role == STILL:
            continue
        parent_job = job_of.get(frame.parent) if frame.parent in waiting else None
        group = (frame.role, parent_job)
        position = open_job.get(group)
        if position is None or len(jobs[position].frames) >= batch:
            position = open_job[group] = len(jobs)
            jobs.append(PlannedJob((), () if parent_job is None else (jobs[parent_job].index,)))
        jobs[position] = PlannedJob(jobs[position].frames + (index,), jobs[position].after)
        job_of[index] = position
    return jobs
