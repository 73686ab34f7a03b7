"""The verdict on an edit's motion (``mtransfer.evaluation.verdict``): exact flows with known errors."""

import pytest
import torch

from mtransfer.evaluation.verdict import Verdict, motion_verdict
from mtransfer.flows import translation


def _shift(dx: float, size: int = 32) -> torch.Tensor:
    return translation(size, size, dx, 0.0)


@pytest.mark.parametrize(("achieved_dx", "label"), [(8.0, "reached"), (6.5, "reached"), (4.0, "partial"),
                                                     (2.5, "partial"), (1.5, "missed"), (0.0, "missed")])
def test_label_follows_the_error_relative_to_the_motion(achieved_dx, label):
    verdict = motion_verdict(_shift(achieved_dx), _shift(8.0), measured_by="test")
    assert verdict.label == label
    assert verdict.error_px == pytest.approx(8.0 - achieved_dx, abs=1e-5)
    assert verdict.motion_px == pytest.approx(8.0)
    assert verdict.pixels == 32 * 24  # the 8 columns that leave the frame are left out


def test_a_small_motion_is_reached_within_the_tolerance():
    verdict = motion_verdict(_shift(1.2), _shift(2.0), measured_by="test")  # 40 % off, but under a pixel
    assert verdict.label == "reached" and verdict.share == pytest.approx(0.4, abs=1e-5)


def test_only_the_edit_mask_counts():
    target = _shift(8.0)
    achieved = target.clone()
    achieved[:, :, 16:] = 0  # the right half did not move
    left = torch.zeros(32, 32)
    left[:, :16] = 1
    assert motion_verdict(achieved, target, left, measured_by="test").label == "reached"
    right = 1 - left
    assert motion_verdict(achieved, target, right, measured_by="test").label == "missed"


def test_a_target_leaving_the_frame_everywhere_still_gets_a_verdict():
    verdict = motion_verdict(_shift(0.0, 16), _shift(40.0, 16), measured_by="test")
    assert verdict.label == "missed" and verdict.pixels == 16 * 16


def test_record_round_trips_and_describes_the_figures():
    verdict = motion_verdict(_shift(4.0), _shift(8.0), measured_by="the guiding estimator pyramid")
    again = Verdict.from_record(verdict.record())
    assert again == verdict
    assert again.describe() == ("partial: achieved flow 4.00 px off a 8.00 px target motion (50% of it), mean over "
                                "the edit mask, measured by the guiding estimator pyramid")
