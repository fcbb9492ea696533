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


@pytest.mark.parametrize(
    ("text", "commands"),
    [
        ("\ufeffweb: python app.py\n", {"web": "python app.py"}),
        ("\ufeff# saved by Notepad\r\nweb: a\r\n", {"web": "a"}),
        ("web: a\r\nworker: b\r\n", {"web": "a", "worker": "b"}),
        ("web: a\rworker: b", {"web": "a", "worker": "b"}),
        ("web: a\n\nworker: b", {"web": "a", "worker": "b"}),
        # Only \n, \r\n and \r end a line (as foreman splits): the rest is the command's.
        ("web: printf 'a\x0cb'\n", {"web": "printf 'a\x0cb'"}),
        ("web: echo a\x85b\n", {"web": "echo a\x85b"}),
        ("web: echo a\u2028b\u2029c\n", {"web": "echo a\u2028b\u2029c"}),
        ("web: echo a\x1cb\x1dc\x1ed\x0be\n", {"web": "echo a\x1cb\x1dc\x1ed\x0be"}),
    ],
    ids=["bom", "bom-crlf", "crlf", "cr", "blank", "ff", "nel", "u2028", "separators"],
)
def test_lines_end_only_at_newlines_and_a_bom_is_no_text(
    text: str, commands: dict[str, str]
) -> None:
    assert parse_procfile(text) == commands


def test_a_bom_inside_the_text_is_not_skipped() -> None:
    with pytest.raises(ProcfileError, match=r"Procfile:2: invalid process type"):
        parse_procfile("web: a\n\ufeffworker: b\n")


def test_a_line_number_counts_newlines_only() -> None:
    with pytest.raises(ProcfileError, match=r"Procfile:2: expected 'name: command'"):
        parse_procfile("web: a\x0cb\u2028c\nnot a line\n")
