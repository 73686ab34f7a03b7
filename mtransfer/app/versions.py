"""What every result records about the software that made it."""

from __future__ import annotations

import importlib.metadata
import platform

import mtransfer


def versions() -> dict[str, str]:
    """Versions of the libraries whose numerics shape the results."""
    found = {"mtransfer": mtransfer.__version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "diffusers", "transformers", "av"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found
