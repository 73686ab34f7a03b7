"""Independent evaluation of motion-guided edits: the motion-fidelity judge, metrics, run-folder evaluation.

``judge`` measures the motion an edit shows (robust to large motions), ``metrics`` turns it and the
images into fidelity, preservation and temporal-consistency figures, ``verdict`` labels an edit reached /
partial / missed, ``evaluate`` applies them to a run or edit folder (``mtransfer eval``, and the ``evaluate`` stage of ``mtransfer run``), ``table`` prints it;
``figures`` names the figures once.
"""

from mtransfer.evaluation.evaluate import EVALUATION, evaluate_run, read_evaluation
from mtransfer.evaluation.figures import FIGURE_TABLE, FIGURES, Figure, summary_line
from mtransfer.evaluation.judge import Judgement, judge_estimator_name, judge_motion, load_judge
from mtransfer.evaluation.metrics import end_point_error, fidelity, preservation, temporal_consistency, warping_error
from mtransfer.evaluation.table import evaluation_table
from mtransfer.evaluation.verdict import VERDICTS, Verdict, motion_verdict

__all__ = [
    "EVALUATION",
    "VERDICTS",
    "Verdict",
    "FIGURES",
    "FIGURE_TABLE",
    "Figure",
    "Judgement",
    "end_point_error",
    "evaluate_run",
    "evaluation_table",
    "fidelity",
    "judge_estimator_name",
    "judge_motion",
    "load_judge",
    "motion_verdict",
    "preservation",
    "read_evaluation",
    "summary_line",
    "temporal_consistency",
    "warping_error",
]
