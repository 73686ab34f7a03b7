"""Fast start: --help of the app and of every sub-command must not import the heavy stack."""

import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "numpy", "PIL", "cv2", "scipy", "matplotlib", "diffusers", "transformers", "gradio", "ray")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['mtransfer', *{args!r}]\n"
    "try:\n    runpy.run_module('mtransfer', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "print('HEAVY', ' '.join(m for m in {heavy!r} if m in sys.modules))\n"
)


def _command_names() -> list[str]:
    """Every registered sub-command, read from the app in a fresh process (this one may have torch loaded)."""
    listing = subprocess.run(
        [sys.executable, "-c", "from mtransfer.cli import app, commands\n"
         "print(' '.join(c.name or c.callback.__name__ for c in app.registered_commands))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return listing.stdout.split()


COMMANDS = _command_names()


def test_every_command_is_probed():
    assert {"run", "edit", "generate", "motion", "flow", "bench", "eval", "presets", "ui", "doctor"} <= set(COMMANDS)


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in COMMANDS]], ids=" ".join)
def test_help_imports_no_heavy_library(args):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    print(f"mtransfer {' '.join(args)}: {seconds:.2f} s")  # a measure (pytest -s), not a timed assertion
    assert "Usage" in done.stdout or "usage" in done.stdout, done.stdout + done.stderr
    line = [text for text in done.stdout.splitlines() if text.startswith("HEAVY")][-1]
    assert line.split()[1:] == [], f"{' '.join(args)} imported {line}"


def test_bench_usage_error_before_heavy_imports():
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=["bench", "--repeats", "x"], heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert "--repeats" in done.stderr
    assert done.stdout.splitlines()[-1].split()[1:] == []


def test_choices_name_the_estimator_classes():
    from mtransfer import choices
    from mtransfer.estimators import _CLASSES

    assert choices.ESTIMATORS == tuple(_CLASSES)
    assert choices.DIFFERENTIABLE == tuple(name for name, cls in _CLASSES.items() if cls.differentiable)


def test_motion_help_lists_every_motion_the_parser_builds():
    from mtransfer.choices import motion_usage
    from mtransfer.flows import parse_flow_spec
    from mtransfer.flows.spec import MOTIONS

    usage = motion_usage()
    for name, motion in MOTIONS.items():
        required = [param.name for param in motion.params if param.default is None]
        assert f"{name}(" in usage
        flow = parse_flow_spec(f"{name}({', '.join('1' for _ in required)})", 64, 64)
        assert flow.shape == (2, 64, 64)
