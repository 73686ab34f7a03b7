"""Benchmarks: the guided step (``guided_step``), flow extraction (``flow_fps``), the judge's calibration
(``judge_calibration``) and our edits of the authors' examples (``paper_examples``).

Run from the repository root, e.g. ``python -m benchmarks.guided_step --help``; see BENCHMARKS.md.
"""
