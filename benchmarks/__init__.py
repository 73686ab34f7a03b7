"""Benchmark scripts, run from the repository root: ``python -m benchmarks.guided_step`` (the same as
``mtransfer bench``; the code lives in ``mtransfer.bench``), ``python -m benchmarks.flow_fps``,
``python -m benchmarks.plot``, the judge's calibration (``judge_calibration``) and our edits of the
authors' examples (``paper_examples``). See BENCHMARKS.md.
"""
