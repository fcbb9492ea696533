"""The upload progress bar: shown only on a terminal, and only for an upload that
takes more than a moment."""

from __future__ import annotations

import pytest

from paas.cli import render


def test_no_bar_when_not_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    # Under pytest stdout and stderr are not terminals: the default is off.
    with render.UploadProgress(1000) as progress:
        progress.update(0)
        progress.update(500)
    assert progress._bar is None
    assert capsys.readouterr() == ("", "")


def test_no_bar_for_an_upload_over_in_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "PROGRESS_AFTER", 3600.0)
    with render.UploadProgress(1000, shown=True) as progress:
        progress.update(500)
        assert progress._bar is None


def test_a_slow_upload_on_a_terminal_shows_a_bar_that_follows_the_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render, "PROGRESS_AFTER", 0.0)
    with render.UploadProgress(1000, shown=True) as progress:
        progress.update(100)
        bar = progress._bar
        assert bar is not None and progress._task is not None
        progress.update(0)  # a retried upload starts again
        assert bar.tasks[0].completed == 0
        progress.update(700)
        assert bar.tasks[0].completed == 700
    assert progress._bar is None, "stopped (and, being transient, erased) at the end"
