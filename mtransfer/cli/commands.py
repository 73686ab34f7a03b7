"""Imports each sub-command module so that it registers itself on the app."""

from mtransfer.cli import flow  # noqa: F401
