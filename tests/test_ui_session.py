"""How the web app's handlers meet Gradio: the wrapper that shows problems in the page keeps what Gradio reads."""

from __future__ import annotations

import inspect

import pytest

gr = pytest.importorskip("gradio", reason="web app test skipped: gradio not installed (pip install '.[ui]')")

from gradio.helpers import special_args  # noqa: E402

from mtransfer.errors import MtransferError  # noqa: E402
from mtransfer.ui.session import shows_problems  # noqa: E402


def test_shows_problems_keeps_what_gradio_injects_and_turns_problems_into_page_messages():
    """Gradio reads a handler's signature to inject event data and progress and its kind to stream
    generators: the wrapped handler must get both, and an MtransferError must become a page message."""
    seen = {}

    def on_select(spec: str, evt: gr.SelectData, progress=gr.Progress()):
        seen.update(index=evt.index, progress=progress)
        raise MtransferError("mask 'x.png': not a readable image")

    def streaming(spec):
        yield spec
        raise ValueError("a bug stays a bug")

    wrapped = shows_problems(on_select)
    event = gr.EventData(None, {"index": [3, 4], "value": None, "selected": True})
    inputs, progress_index, event_index, _ = special_args(wrapped, inputs=["translate(1)"], event_data=event)
    assert (event_index, progress_index) == (1, 2)
    with pytest.raises(gr.Error, match="mask 'x.png': not a readable image"):
        wrapped(*inputs)
    assert seen["index"] == [3, 4] and isinstance(seen["progress"], gr.Progress)

    wrapped_stream = shows_problems(streaming)
    assert inspect.isgeneratorfunction(wrapped_stream)
    stream = wrapped_stream("rotate(2)")
    assert next(stream) == "rotate(2)"
    with pytest.raises(ValueError, match="a bug stays a bug"):
        next(stream)


def test_event_data_before_the_sliders_varargs_is_injected():
    """The Motion tab's click handler takes the sliders last, as ``*values``, after the event data."""

    @shows_problems
    def on_click(spec: str, evt: gr.SelectData, *values):
        return spec, evt.index, values

    event = gr.EventData(None, {"index": [7, 8], "value": None, "selected": True})
    inputs, _, event_index, _ = special_args(on_click, inputs=["rotate(5)", 1.0, 2.0, 3.0], event_data=event)
    assert event_index == 1
    assert on_click(*inputs) == ("rotate(5)", [7, 8], (1.0, 2.0, 3.0))


def test_a_user_error_is_one_line_on_the_server_and_a_bug_keeps_its_traceback(capsys):
    """What the user can fix prints one line on the server's terminal and no traceback (Gradio prints one
    unless told not to); an unexpected error still prints its traceback."""
    from mtransfer.errors import InputError
    from mtransfer.ui.session import page_error

    shown = page_error(InputError("upload 'notes.txt': not a readable image"))
    assert shown.message == "upload 'notes.txt': not a readable image" and not shown.print_exception
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == 1 and logged[0].endswith("web app: upload 'notes.txt': not a readable image")
    bug = page_error(ZeroDivisionError("division by zero"))
    assert bug.message == "unexpected ZeroDivisionError: division by zero" and bug.print_exception
