"""Did an edit reach its target motion? ``motion_verdict`` compares a measured flow with the target inside
the edit mask and labels the result ``reached``, ``partial`` or ``missed``, with the figures behind it.

The measure is the mean end-point error over the mask's pixels that stay visible under the target (as in
``metrics.fidelity``), relative to the mean target motion over the same pixels: a picture that did not
move at all scores about 1, a perfect edit 0. A flow from the guiding estimator says what the guidance
achieved by its own measure; a flow from the judge (``mtransfer eval``) says it independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtransfer.evaluation.metrics import _mask, end_point_error
from mtransfer.flows import occlusion_mask

REACHED_SHARE = 0.25
"""Reached: the error is at most a quarter of the motion, i.e. the content went three quarters of the way
or more; below that a viewer sees the motion that was asked for, slightly short or off."""
MISSED_SHARE = 0.75
"""Missed: the error is three quarters of the motion or more; an unmoved picture scores about 1, so the
content covered at most a quarter of the way (or went elsewhere)."""
TOLERANCE_PX = 1.0
"""Errors up to one pixel always count as reached: flow estimators are not more precise than that (RAFT's
end-point error on real images is about a pixel, whole-pixel worlds such as ``offline-demo`` round to
one), so a small motion is not failed for a sub-pixel difference."""
VERDICTS = ("reached", "partial", "missed")


@dataclass(frozen=True)
class Verdict:
    """The label and its figures: mean error and mean target motion (px) over ``pixels`` pixels."""

    label: str
    error_px: float
    motion_px: float
    pixels: int
    measured_by: str

    @property
    def share(self) -> float | None:
        """The error relative to the motion (None for a target that does not move in the mask)."""
        return self.error_px / self.motion_px if self.motion_px > 0 else None

    def figures(self) -> str:
        """The figures that decided the label, in words."""
        share = f" ({self.share:.0%} of it)" if self.share is not None else ""
        return (f"achieved flow {self.error_px:.2f} px off a {self.motion_px:.2f} px target motion{share}, "
                f"mean over the edit mask, measured by {self.measured_by}")

    def describe(self) -> str:
        """One line for a status or a report: the label, then its figures."""
        return f"{self.label}: {self.figures()}"

    def record(self) -> dict[str, object]:
        """For run.json, manifests and the web app: plain JSON values (``from_record`` reads them back)."""
        return {"label": self.label, "flow_error_px": self.error_px, "motion_px": self.motion_px,
                "pixels": self.pixels, "measured_by": self.measured_by,
                "relative_error": self.share}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Verdict:
        """The verdict that ``record()`` wrote (run.json, a manifest's frame record)."""
        return cls(str(record["label"]), float(record["flow_error_px"]), float(record["motion_px"]),
                   int(record["pixels"]), str(record["measured_by"]))

def counted_pixels(target: torch.Tensor, edit_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(H, W)`` pixels a verdict averages over: inside ``edit_mask`` (None = everywhere) and still in
    sight under ``target``; when that leaves none (everything leaves the frame), the whole mask."""
    target = target.detach().float().cpu()
    inside = _mask(None if edit_mask is None else edit_mask.detach().cpu(), target)
    counted = inside & (occlusion_mask(target)[0, 0] > 0)
    return counted if counted.any() else inside


def verdict_of(error_px: float, motion_px: float, pixels: int, measured_by: str) -> Verdict:
    """The label for a mean error against a mean motion, by ``REACHED_SHARE``, ``MISSED_SHARE`` and ``TOLERANCE_PX``."""
    if error_px <= max(REACHED_SHARE * motion_px, TOLERANCE_PX):
        label = "reached"
    elif error_px < max(MISSED_SHARE * motion_px, TOLERANCE_PX):
        label = "partial"
    else:
        label = "missed"
    return Verdict(label, error_px, motion_px, pixels, measured_by)


def motion_verdict(
    measured: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor | None = None, *, measured_by: str
) -> Verdict:
    """The verdict on ``measured`` ``(2, H, W)`` against ``target`` over ``counted_pixels(target, edit_mask)``;
    ``measured_by`` names the estimator that measured the flow."""
    measured, target = measured.detach().float().cpu(), target.detach().float().cpu()
    counted = counted_pixels(target, edit_mask)
    error = float(end_point_error(measured, target)[counted].mean())
    motion = float(target.norm(dim=0)[counted].mean())
    return verdict_of(error, motion, int(counted.sum()), measured_by)
