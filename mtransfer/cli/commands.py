"""Imports each sub-command module so that it registers itself on the app."""

from mtransfer.cli import flow, motion  # noqa: F401
