"""Every flag a hint names exists on the command that shows it, with a value the command accepts; without
weights, the default preset's error names the two weight-free presets and the exact flags."""

from __future__ import annotations

import re
import sys

import pytest
import typer
from torchvision.models._api import WeightsEnum

from mtransfer.app import load_settings
from mtransfer.cli import app, commands, main  # noqa: F401  (commands registers the sub-commands)
from mtransfer.cli.hints import HINTS

REQUIRED = {"run": ["clip.mp4", "--onto", "cat.png"], "edit": ["cat.png", "--flow", "translate(1, 0)"],
            "generate": ["a cat"], "flow": ["clip.mp4"], "eval": ["outputs/x"]}
"""Each command's required arguments, so that a hint's flags can be parsed as a whole command line."""
FLAG = re.compile("".join(f"(?<!`{name} )" for name in REQUIRED) + r"(?<![\w-])(--[a-z][a-z-]*)(?: (?!--)([^\s,;()]+))?")
"""A flag and the word after it (its value when the flag takes one); flags after another command's name,
as in `flow --weights`, belong to that command and are left out."""


def _command(name: str):  # noqa: ANN202  (typer's click Command)
    return typer.main.get_command(app).commands[name]


def _flags_of(text: str, command) -> list[list[str]]:
    """Each flag in ``text`` with its value if it takes one, as command-line words."""
    options = {option: param for param in command.params for option in param.opts}
    found = []
    for flag, value in FLAG.findall(text):
        assert flag in options, f"{flag} is not an option of `mtransfer {command.name}`"
        found.append([flag] if options[flag].is_flag else [flag, value])
    return found


def _parse(name: str, words: list[str]) -> None:
    """Parse ``mtransfer NAME REQUIRED WORDS`` with the command's own parser (types, choices, ranges)."""
    words = ["x.pth" if word == "PATH" else word for word in words]
    with _command(name).make_context(name, [*REQUIRED[name], *words]) as ctx:
        for override in ctx.params.get("settings") or []:
            load_settings("paper", [override.replace("x.pth", '"x.pth"')])  # a known setting, a valid value


@pytest.mark.parametrize(("name", "kind"), [(name, kind) for name, kinds in HINTS.items() for kind in kinds])
def test_every_hint_names_flags_the_command_parses(name, kind):
    flags = _flags_of(HINTS[name][kind], _command(name))
    assert flags, "a hint without a flag"
    for words in flags:
        _parse(name, words)


def test_the_checker_fails_on_a_flag_the_command_lacks():
    with pytest.raises(AssertionError, match="--weights is not an option of `mtransfer edit`"):
        _flags_of("give --weights PATH", _command("edit"))
    with pytest.raises(Exception, match="greater than or equal to 1"):  # typer's own click
        _parse("edit", ["--steps", "0"])  # below the option's minimum
    assert _flags_of("`flow --weights PATH`", _command("edit")) == []  # another command's flag


@pytest.mark.parametrize(("name", "arguments"), [("edit", ["sample_videos/cat.png", "--flow", "translate(3, 0)"]),
                                                 ("run", ["sample_videos/pan.mp4", "--onto", "sample_videos/cat.png"])])
def test_without_weights_the_default_preset_names_the_weight_free_ones(name, arguments, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("MTRANSFER_RAFT_WEIGHTS", raising=False)

    def offline(*_args, **_kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(sys, "argv", ["mtransfer", name, *arguments, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "no network in this test" in error
    assert "--pipeline offline-demo" in error and "--pipeline tiny" in error
    for words in _flags_of(error, _command(name)):
        _parse(name, words)
