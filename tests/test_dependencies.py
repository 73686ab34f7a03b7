"""Dependencies: ranges in pyproject.toml (so mtransfer installs beside a user's own torch), exact versions
of the tested machine in constraints.txt (which .ci/run and README's install line use), and the two agree."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [text for group in project["optional-dependencies"].values() for text in group]
    return [Requirement(text) for text in project["dependencies"] + extras]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact name==version pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_torch_is_a_range_not_a_pin() -> None:
    """An exact torch in the package's own dependencies makes pip replace the user's torch/CUDA build."""
    for requirement in _requirements():
        if requirement.name in ("torch", "torchvision"):
            assert not any(spec.operator == "==" for spec in requirement.specifier), requirement
            assert any(spec.operator == ">=" for spec in requirement.specifier), requirement


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    assert pins[canonicalize_name("torch")] == Version("2.14.1")
    assert pins[canonicalize_name("torchvision")] == Version("0.29.1")
    assert canonicalize_name("mtransfer") not in pins
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} has no exact version in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]} outside pyproject's {requirement}"
        )


def test_ci_and_readme_install_with_the_constraints() -> None:
    command = "pip install --quiet -e '.[test]' -c constraints.txt"
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' -c constraints.txt" in (ROOT / "README.md").read_text()
