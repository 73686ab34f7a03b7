"""What the stages of a run share: the run context, and what one stage hands to the next."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from mtransfer.app.settings import RunSettings
from mtransfer.flows.ops import compose
from mtransfer.layouts import STAGE_OUTPUTS, frame_file
from mtransfer.pipeline.manifest import Manifest


@dataclass
class RunContext:
    """What every stage needs: inputs, validated settings, the run folder and its manifest, progress."""

    video: Path
    frame_count: int
    fps: float
    folder: Path
    settings: RunSettings
    stage_settings: dict[str, dict[str, Any]]
    manifest: Manifest
    device: torch.device
    progress: Progress
    console: Console
    image: Path | None = None  # the image and its working size: from the align stage on
    region_mask: Path | None = None
    size: tuple[int, int] = (0, 0)
    frame_size: tuple[int, int] | None = None  # (height, width) the driving frames are decoded at; None: as recorded
    resources: ExitStack = field(default_factory=ExitStack)  # closed when the run ends (e.g. speed switches)
    computed: dict[str, int] = field(default_factory=dict)

    def file(self, kind: str, index: int) -> Path:
        """The numbered file of one frame, e.g. ``frames/0003.png`` (``mtransfer.layouts.frame_file``)."""
        return self.folder / frame_file(kind, index)

    def pending(self, stage: str, indices: range, *kinds: str) -> list[int]:
        """Frames of ``indices`` not yet recorded as done by ``stage`` or whose files have gone missing."""
        done = self.manifest.done_frames(stage)
        return [i for i in indices if i not in done or not all(self.file(kind, i).exists() for kind in kinds)]

    def count(self, stage: str) -> None:
        self.computed[stage] = self.computed.get(stage, 0) + 1


@dataclass(frozen=True)
class Clip:
    """The decoded driving frames ``(T, 3, h, w)`` in [0, 1] and their rate (after the stride)."""

    frames: torch.Tensor
    fps: float


@dataclass(frozen=True)
class Motion:
    """The target image ``(3, H, W)``, its target flows ``(T, 2, H, W)`` and edit masks ``(T, 1, H, W)``."""

    source: torch.Tensor
    flows: torch.Tensor
    masks: torch.Tensor
    max_magnitude: float
    still: list[bool]


@dataclass(frozen=True)
class DrivingFlows:
    """The driving flows ``(T, 2, h, w)`` as the flow stage estimated them (frame 0: zero): from frame 0
    to frame t (``reference = "first"``), or from frame t-1 to t (``"previous"``, ``video.flow = chained``)."""

    measured: torch.Tensor
    reference: str

    def from_first(self) -> torch.Tensor:
        """Frame 0 → t for every t: the motion a still image must follow (steps composed in order)."""
        if self.reference == "first":
            return self.measured
        totals = [self.measured[0]]
        for step in self.measured[1:]:
            totals.append(compose(totals[-1], step))  # 0 → t-1, then t-1 → t
        return torch.stack(totals)


def supersede_changed(ctx: RunContext, stage: str, settings: dict[str, Any], doing: str, kept: str) -> None:
    """Results of a stage in ``REDONE_ON_CHANGE`` made with other settings are moved to ``superseded/``
    before they are redone, like any other stale result, and the user is told what changed."""
    changes = ctx.manifest.stale_stages({stage: settings}).get(stage)
    if not changes:
        return
    moved = ctx.manifest.supersede([stage], [ctx.folder / name for name in STAGE_OUTPUTS[stage]])
    shown = "; ".join(changes[:2]) + (f"; and {len(changes) - 2} more" if len(changes) > 2 else "")
    where = f"; {kept} moved to {escape(str(moved))}" if moved is not None else ""
    ctx.console.print(f"{doing} with other settings ({escape(shown)}){where}", highlight=False)
