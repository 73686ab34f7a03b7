"""The judge's calibration and the paper-examples benchmark on the authors' published examples.

They are read from ``shared/paper_examples`` beside the checkout (or ``$MTRANSFER_PAPER_EXAMPLES``) and
never copied into the repository; without them these tests skip and say so.
"""

from __future__ import annotations

import pytest

from benchmarks.paper_examples import EXAMPLES_ENV, example_names, examples_folder

pytestmark = pytest.mark.skipif(
    not example_names(),
    reason=f"the authors' examples are not at {examples_folder()} (set ${EXAMPLES_ENV} to their folder)",
)


@pytest.mark.parametrize("name", ["lion.v3.left50", "real.waterfall.uninvert.curveLeft"])
def test_judge_ranks_authors_and_warped_source_well_ahead_of_no_motion_and_wrong_motion(name) -> None:
    from benchmarks.judge_calibration import calibrate_example
    from mtransfer.estimators import load_named_estimator

    figures = calibrate_example(name, load_named_estimator("tvl1"))
    good = max(figures["judge_authors"], figures["judge_warped"])
    bad = min(figures["judge_source"], figures["judge_reversed"])
    assert bad > 2 * good, figures  # "well ahead": at least twice the error


def test_paper_examples_benchmark_runs_one_example_with_a_weight_free_preset(tmp_path) -> None:
    from benchmarks.paper_examples import main

    rows = main(["--examples", "lion.v3.left50", "--pipeline", "tiny", "--size", "64", "--out", str(tmp_path)])
    (row,) = rows
    assert row["prompt"] == "a photo of a lion" and row["size"] == [64, 64]
    assert (tmp_path / "lion.v3.left50" / "evaluation.json").is_file()
    for figures in (row["ours"], row["authors"]):
        assert figures["epe_edit"] is not None and figures["psnr"] is not None
    assert row["authors"]["ssim"] > row["ours"]["ssim"]  # random weights keep nothing of the background
