"""Running the ``mtransfer`` entry point inside the test process (no new interpreter, no torch start-up)."""

from __future__ import annotations

import sys

import pytest

from mtransfer.cli import main


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *arguments: object) -> tuple[int, str]:
    """``mtransfer ARGUMENTS`` through the real entry point: its exit status and what it wrote to stderr."""
    monkeypatch.setattr(sys, "argv", ["mtransfer", *map(str, arguments)])
    try:
        main()
        code = 0
    except SystemExit as exited:
        code = exited.code
    return code, capsys.readouterr().err
