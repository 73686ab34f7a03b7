"""Fast start: --help must not import the heavy stack (torch, diffusers, gradio, ray)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "gradio", "ray")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['mtransfer', *{args!r}]\n"
    "try:\n    runpy.run_module('mtransfer', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "print('HEAVY', ' '.join(m for m in {heavy!r} if m in sys.modules))\n"
)


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in
                                               ("run", "edit", "generate", "flow", "eval", "presets", "ui", "doctor")]])
def test_help_imports_no_heavy_library(args):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    line = [text for text in done.stdout.splitlines() if text.startswith("HEAVY")][-1]
    assert line.split()[1:] == [], f"{' '.join(args)} imported {line}"


def test_choices_name_the_estimator_classes():
    from mtransfer import choices
    from mtransfer.estimators import _CLASSES

    assert choices.ESTIMATORS == tuple(_CLASSES)
    assert choices.DIFFERENTIABLE == tuple(name for name, cls in _CLASSES.items() if cls.differentiable)
