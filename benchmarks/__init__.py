"""Benchmark scripts, run from the repository root: ``python -m benchmarks.guided_step`` (the same as
``mtransfer bench``; the code lives in ``mtransfer.bench``), ``python -m benchmarks.flow_fps`` and
``python -m benchmarks.plot``. See BENCHMARKS.md.
"""
