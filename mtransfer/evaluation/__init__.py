"""Independent evaluation of motion-guided edits: the motion-fidelity judge, metrics, run-folder evaluation.

``judge`` measures the motion an edit shows (robust to large motions), ``metrics`` turns it and the
images into fidelity, preservation and temporal-consistency figures, ``evaluate`` applies both to a run
or edit folder (``mtransfer eval``).
"""

from mtransfer.evaluation.evaluate import EVALUATION, evaluate_run
from mtransfer.evaluation.judge import Judgement, judge_estimator_name, judge_motion, load_judge
from mtransfer.evaluation.metrics import end_point_error, fidelity, preservation, temporal_consistency, warping_error

__all__ = [
    "EVALUATION",
    "Judgement",
    "end_point_error",
    "evaluate_run",
    "fidelity",
    "judge_estimator_name",
    "judge_motion",
    "load_judge",
    "preservation",
    "temporal_consistency",
    "warping_error",
]
