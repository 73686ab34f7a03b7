"""Benchmarks of mtransfer's hot paths: the guided step (``guided_step``) and flow extraction (``flow_fps``).

Run from the repository root, e.g. ``python -m benchmarks.guided_step --help``; see BENCHMARKS.md.
"""
