"""Imports each sub-command module so that it registers itself on the app (order = order in --help)."""

from mtransfer.cli import run, edit, generate, motion, flow, bench, doctor, eval, presets, ui  # noqa: F401
