"""The Procfile format of Heroku, Foreman and honcho."""

from __future__ import annotations

import pytest

from paas.common.procfile import ProcfileError, parse_procfile


def test_commands_comments_and_blank_lines() -> None:
    text = "# the app\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\nworker:python worker.py\n"
    assert parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python worker.py",
    }


def test_a_colon_in_the_command_is_kept() -> None:
    assert parse_procfile("web: echo a:b")["web"] == "echo a:b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web gunicorn\n", r"Procfile:1: expected 'name: command'"),
        ("web: ok\nbad line\n", r"Procfile:2: expected"),
        ("web:\n", r"Procfile:1: process type 'web' has no command"),
        ("web: a\nweb: b\n", r"Procfile:2: process type 'web' is defined twice"),
        ("w*b: a\n", r"Procfile:1: invalid process type"),
        ("# only a comment\n", r"no process types"),
        ("", r"no process types"),
    ],
)
def test_a_bad_procfile_is_refused_with_its_line_number(text: str, message: str) -> None:
    with pytest.raises(ProcfileError, match=message):
        parse_procfile(text)
