"""Imports each sub-command module so that it registers itself on the app."""

from mtransfer.cli import flow, motion  # noqa: F401
from mtransfer.cli import run  # noqa: F401
from mtransfer.cli import edit  # noqa: F401
from mtransfer.cli import bench  # noqa: F401
