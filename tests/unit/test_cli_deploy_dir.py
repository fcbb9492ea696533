"""`paas deploy DIR`: what is read from DIR, and what is refused before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from paas.cli.commands import read_app_dir
from paas.cli.errors import CommandError
from paas.cli.main import run
from paas.common.configvars import CONFIG_VARS_LIMIT, PROCFILE_LIMIT
from paas.common.ports import free_port


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler address where nobody listens: any call made would say so."""
    monkeypatch.setenv("PAAS_SCHEDULER", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("PAAS_APP", "shop")


def app_dir(tmp_path: Path, procfile: str | bytes = "web: python app.py\n") -> Path:
    path = tmp_path / "Procfile"
    if isinstance(procfile, bytes):
        path.write_bytes(procfile)
    else:
        path.write_text(procfile, encoding="utf-8")
    return tmp_path


def refused(words: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a deploy refused before anything was sent."""
    assert run(words) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "cannot reach the scheduler" not in lines[0], "a call was made"
    assert captured.out == ""
    return lines[0]


def test_dotenv_values_are_sent_literally_not_expanded_from_the_deployers_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAAS_TEST_SECRET", "from-my-shell")
    (app_dir(tmp_path) / ".env").write_text(
        "URL=https://${PAAS_TEST_SECRET}@db/x\nPLAIN=$PAAS_TEST_SECRET\nREF=${URL}\n"
    )
    assert read_app_dir(tmp_path).env == {
        "URL": "https://${PAAS_TEST_SECRET}@db/x",
        "PLAIN": "$PAAS_TEST_SECRET",
        "REF": "${URL}",
    }


def test_a_procfile_saved_with_a_bom_is_read_without_it(tmp_path: Path) -> None:
    source = read_app_dir(app_dir(tmp_path, "\ufeffweb: python app.py\r\n".encode()))
    assert source.procfile == "web: python app.py\n"


@pytest.mark.parametrize(
    ("dotenv", "message"),
    [
        ("A=1\nBAD KEY=1\n", ".env:2: expected KEY=VALUE, got 'BAD KEY=1'"),
        ("BAD-KEY=1\n", "error: invalid config var name 'BAD-KEY': use letters, digits and "
                        "'_', not starting with a digit"),
        ("2FAST=1\n", "error: invalid config var name '2FAST'"),
        ("A=x\0y\n", "error: config var A has a NUL byte in its value"),
        ("A=" + "x" * CONFIG_VARS_LIMIT + "\n",
         f"error: config vars take {CONFIG_VARS_LIMIT + 1} bytes; an app may have at most "
         "32 KiB of keys and values"),
    ],
)  # fmt: skip
def test_config_vars_the_scheduler_would_refuse_are_refused_before_sending(
    tmp_path: Path, dotenv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (app_dir(tmp_path) / ".env").write_text(dotenv)
    assert message in refused(["deploy", str(tmp_path)], capsys)


def test_a_procfile_over_64_kib_is_refused_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "web: echo " + "x" * PROCFILE_LIMIT + "\n"
    line = refused(["deploy", str(app_dir(tmp_path, text))], capsys)
    assert line == (
        f"error: {tmp_path / 'Procfile'} takes {len(text)} bytes; at most 64 KiB are allowed"
    )


def test_a_procfile_with_a_nul_is_refused_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(["deploy", str(app_dir(tmp_path, "web: echo a\0b\n"))], capsys)
    assert line == f"error: {tmp_path / 'Procfile'} has a NUL byte"


@pytest.mark.parametrize("name", ["Procfile", ".env"])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app_dir(tmp_path)
    (tmp_path / name).write_bytes(b"A=\xff\xfe\n")
    line = refused(["deploy", str(tmp_path)], capsys)
    assert line.startswith(f"error: cannot read {tmp_path / name}: ")


def test_read_app_dir_raises_command_errors(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no Procfile in"):
        read_app_dir(tmp_path)
