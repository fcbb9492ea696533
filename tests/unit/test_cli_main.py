"""The command line's words, options and exit codes, for input no server is needed for.

0 success, 1 a refused request or bad input, 2 a usage error; every expected
error is one line on stderr starting with `error: `.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from paas.cli.main import COMMANDS, Command, Scope, build_parser, run
from paas.cli.up import sanitise_app_name
from paas.common.ports import free_port

COMMANDS_WORDS = [
    ["up"],
    ["scheduler"],
    ["agent"],
    ["apps"],
    ["apps", "create"],
    ["apps", "destroy"],
    ["deploy"],
    ["config"],
    ["config", "get"],
    ["config", "set"],
    ["config", "unset"],
    ["config", "load"],
    ["releases"],
    ["releases", "info"],
    ["rollback"],
    ["scale"],
    ["run"],
    ["ps"],
    ["why"],
    ["restart"],
    ["stop"],
    ["nodes"],
    ["nodes", "drain"],
    ["nodes", "remove"],
    ["nodes", "undrain"],
    ["logs"],
    ["drains"],
    ["drains", "add"],
    ["drains", "remove"],
    ["tokens"],
    ["tokens", "create"],
    ["tokens", "revoke"],
    ["cluster"],
    ["cluster", "init"],
    ["credentials"],
    ["credentials", "create"],
    ["credentials", "revoke"],
]


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> str:
    """No app from the environment, and a scheduler address where nobody listens
    (plaintext: what these tests show comes before any credentials matter)."""
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.delenv("PAAS_APP", raising=False)
    monkeypatch.delenv("PAAS_CREDENTIALS", raising=False)
    monkeypatch.setenv("PAAS_INSECURE", "1")
    monkeypatch.setenv("PAAS_SCHEDULER", address)
    return address


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "words", [[], *COMMANDS_WORDS], ids=lambda words: " ".join(words) or "paas"
)
def test_help_of_every_command_exits_0(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*words, "--help"]) == 0
    assert "usage: paas" in capsys.readouterr().out


def test_the_help_tests_cover_the_command_table() -> None:
    assert {tuple(words) for words in COMMANDS_WORDS} == {command.words for command in COMMANDS}


def test_paas_help_lists_every_command_and_each_parent_its_subcommands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in COMMANDS:
        *parent, word = command.words
        assert run([*parent, "--help"]) == 0
        listing = capsys.readouterr().out
        assert f"    {word} " in listing or f"    {word}\n" in listing, (command.words, listing)
        assert command.summary in " ".join(listing.split())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command.words))
def test_each_command_takes_the_options_of_its_scope(
    command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*command.words, "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert ("--scheduler" in usage) == (command.scope is not Scope.LOCAL)
    assert ("[-a NAME]" in usage) == (command.scope is Scope.APP)


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["frobnicate", "web"]) == 2
    assert "invalid choice: 'frobnicate'" in one_error_line(capsys.readouterr().err)


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 2
    one_error_line(capsys.readouterr().err)


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ps", "--bogus"]) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["web=abc"], "invalid count 'abc'"),
        (["web=-1"], "invalid count '-1'"),
        (["web"], "invalid formation 'web'"),
        (["web=100000"], "over the maximum"),
        (["web=1", "web+2"], "given more than once"),
        (["we b=1"], "invalid process type"),
        (["web=\N{ARABIC-INDIC DIGIT THREE}"], "invalid count '\N{ARABIC-INDIC DIGIT THREE}'"),
        (["web=\N{SUPERSCRIPT TWO}"], "invalid count '\N{SUPERSCRIPT TWO}'"),
        (["web+" + "9" * 5000], "invalid count"),
        (["web=1\n"], "invalid count"),
    ],
)
def test_bad_formation_is_refused_before_anything_is_sent(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The scheduler is unreachable: a "cannot reach" error would mean a call was made.
    assert run(["scale", "-a", "shop", *words]) == 1
    captured = capsys.readouterr()
    assert message in one_error_line(captured.err)
    assert captured.out == ""


def test_scale_without_words_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["scale", "-a", "shop"]) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "words",
    [["ps"], ["scale", "web=1"], ["logs"], ["deploy", "."], ["restart"], ["stop", "web.1"]],
)
def test_a_missing_app_is_an_error(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(words) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == "error: no app given: use -a NAME or set PAAS_APP"


def test_an_unreachable_scheduler_is_an_error_naming_it(
    nowhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["nodes"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot reach the scheduler at {nowhere}: is it running? (`paas up`)"


def test_app_comes_from_paas_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PAAS_APP", "shop")
    assert run(["ps"]) == 1
    assert "cannot reach the scheduler" in one_error_line(capsys.readouterr().err)


def test_options_may_come_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert run(["--scheduler", f"127.0.0.1:{port}", "-a", "shop", "ps"]) == 1
    assert f"127.0.0.1:{port}" in one_error_line(capsys.readouterr().err)


def test_every_replica_is_named_when_none_answers(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    assert run(["nodes", "--scheduler", f"{first},{second}"]) == 1
    assert f"at {first},{second}:" in one_error_line(capsys.readouterr().err)


def test_a_bad_scheduler_address_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["nodes", "--scheduler", "nohost"]) == 2
    assert "invalid address 'nohost'" in one_error_line(capsys.readouterr().err)


def test_a_bad_procfile_is_refused_with_its_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Procfile").write_text("web: ok\nthis line is wrong\n")
    assert run(["deploy", "-a", "shop", str(tmp_path)]) == 1
    assert f"{tmp_path / 'Procfile'}:2:" in one_error_line(capsys.readouterr().err)


def test_a_missing_procfile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["deploy", "-a", "shop", str(tmp_path)]) == 1
    assert "no Procfile in" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", ["Bad_Name", "shop\n", "shop\r\n"])
def test_a_bad_app_name_is_refused(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["apps", "create", name]) == 1
    assert f"invalid app name {name!r}" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "process",
    ["web.x", "web.0", "we b", "web\n", "web.1\n", "web.\N{ARABIC-INDIC DIGIT ONE}"],
)
def test_a_bad_process_filter_is_a_usage_error(
    process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["logs", "-a", "shop", "-p", process]) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["stop", "web"], "error: invalid instance name 'web': expected TYPE.N, e.g. web.3 "
                          "(to stop them all: `paas scale web=0`)"),
        (["stop", "web.0"], "error: invalid instance name 'web.0': expected TYPE.N, e.g. web.3"),
        (["stop", "we b.1"], "error: invalid process type 'we b': use letters, digits, '_' "
                             "and '-' (at most 63)"),
        (["restart", "web.x"], "error: invalid instance name 'web.x': expected TYPE.N, e.g. web.3"),
        (["restart", "we!b"], "error: invalid process type 'we!b': use letters, digits, '_' "
                              "and '-' (at most 63)"),
        (["ps", "web.0"], "error: invalid instance name 'web.0': expected TYPE.N, e.g. web.3"),
        (["stop", "web.\N{ARABIC-INDIC DIGIT THREE}"],
         "error: invalid instance name 'web.\N{ARABIC-INDIC DIGIT THREE}': expected TYPE.N, "
         "e.g. web.3"),
        (["stop", "web.\N{SUPERSCRIPT TWO}"],
         "error: invalid instance name 'web.\N{SUPERSCRIPT TWO}': expected TYPE.N, e.g. web.3"),
        (["logs", "--since", "\N{ARABIC-INDIC DIGIT THREE}m"], "error: --since: invalid time "
         "'\N{ARABIC-INDIC DIGIT THREE}m': expected a duration like 30s, 10m, 1h, 2d or an "
         "ISO-8601 time like 2026-01-31T12:00:00Z"),
        (["logs", "--since", "soon"], "error: --since: invalid time 'soon': expected a duration "
         "like 30s, 10m, 1h, 2d or an ISO-8601 time like 2026-01-31T12:00:00Z"),
        (["logs", "--since", "2999-01-01"], "error: --since: invalid time '2999-01-01': it is "
                                            "in the future"),
        (["logs", "--previous", "web"], "error: --previous: invalid instance name 'web': "
                                        "expected TYPE.N, e.g. web.3"),
    ],
)  # fmt: skip
def test_a_bad_instance_or_time_is_refused_before_anything_is_sent(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The scheduler is unreachable: a "cannot reach" error would mean a call was made.
    assert run([*words, "-a", "shop"]) == 1
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == message
    assert captured.out == ""


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["logs", "-n", "\N{ARABIC-INDIC DIGIT THREE}"], "expected a whole number"),
        (["logs", "-n", "\N{SUPERSCRIPT TWO}"], "expected a whole number"),
        (["logs", "--previous", "web.1", "-f"], "cannot be followed (-f)"),
        (["logs", "--previous", "web.1", "-p", "web"], "leave out -p"),
        (["stop"], "the following arguments are required: INSTANCE"),
        (["restart", "web", "worker"], "unrecognized arguments: worker"),
    ],
)
def test_contradictory_or_missing_words_are_usage_errors(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*words, "-a", "shop"]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_a_bad_paas_toml_is_refused_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    (tmp_path / "paas.toml").write_text("[types.web]\nstop_grace = -5\n")
    assert run(["deploy", "-a", "shop", str(tmp_path)]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {tmp_path / 'paas.toml'}: types.web.stop_grace: must not be negative, got -5"
    )


def test_up_scale_needs_deploy(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["up", "--scale", "web=1"]) == 2
    assert "--deploy" in one_error_line(capsys.readouterr().err)


def test_up_checks_the_formation_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    assert run(["up", "--deploy", str(tmp_path), "--scale", "web=x"]) == 1
    assert "invalid count 'x'" in one_error_line(capsys.readouterr().err)


def test_scheduler_flags_become_its_config() -> None:
    args = build_parser().parse_args(
        ["scheduler", "--etcd", "http://10.0.0.1:2379,10.0.0.2:2379/", "--listen", "0.0.0.0:7070"]
    )
    assert args.etcd == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert args.listen == "0.0.0.0:7070"
    assert args.node_grace == 10.0


def test_agent_flags_become_its_config() -> None:
    args = build_parser().parse_args(
        ["agent", "--join", "a:7070,b:7070", "--name", "node-1", "--listen", "127.0.0.2:7071",
         "--ports", "20000-20999", "--label", "zone=a", "--label", "disk=ssd",
         "--slug-cache-budget", "512MiB", "--slug-max-unpacked", "3gib"]
    )  # fmt: skip
    assert args.join == ["a:7070", "b:7070"]
    assert args.ports == (20000, 20999)
    assert args.slug_cache_budget == 512 << 20 and args.slug_max_unpacked == 3 << 30
    assert dict(args.label) == {"zone": "a", "disk": "ssd"}


@pytest.mark.parametrize(
    "words",
    [
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--ports", "9-1"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--label", "nolabel"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--slug-cache-budget", "2GB"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--slug-cache-budget", "-1"],
        ["scheduler", "--etcd", "a:1", "--listen", "nowhere"],
        ["up", "--agents", "0"],
    ],
)
def test_bad_daemon_flags_are_usage_errors(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(words) == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "words",
    [
        ["up", "--agents", "\N{ARABIC-INDIC DIGIT THREE}"],
        ["up", "--node-grace", "\N{ARABIC-INDIC DIGIT THREE}"],
        ["up", "--node-grace", "1_0"],
        ["up", "--node-grace", "nan"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--ports",
         "\N{ARABIC-INDIC DIGIT FIVE}000-6000"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--capacity",
         "\N{SUPERSCRIPT TWO}"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--log-spool-files",
         "\N{FULLWIDTH DIGIT ONE}"],
        ["agent", "--join", "a:1", "--name", "n", "--listen", "x:1", "--log-buffer-lines",
         "9" * 5000],
        ["agent", "--join", "a:\N{ARABIC-INDIC DIGIT ONE}", "--name", "n", "--listen", "x:1"],
        ["agent", "--join", "a:1", "--name", "n\n", "--listen", "x:1"],
        ["scheduler", "--etcd", "a:1", "--listen", "x:1", "--leader-ttl", "\N{SUPERSCRIPT TWO}"],
    ],
)  # fmt: skip
def test_daemon_numbers_and_names_are_ascii_and_whole(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Parsing only: were a flag taken, run() would start the daemon.
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(words)
    assert exited.value.code == 2
    one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("directory", "app"),
    [("hello", "hello"), ("My_App 2", "my-app-2"), ("2fast", "fast"), ("...", "app")],
)
def test_up_names_the_app_after_its_directory(directory: str, app: str) -> None:
    assert sanitise_app_name(directory) == app


def test_the_real_program_prints_one_line_and_no_traceback(nowhere: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paas", "scale", "-a", "shop", "web=abc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "invalid count 'abc'" in one_error_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://logs.example.com/x", "unsupported drain URL scheme 'ftp'"),
        ("syslog://logs.example.com", "needs a port"),
        ("syslog://logs.example.com:99999", "invalid port"),
    ],
)
def test_a_bad_drain_url_is_refused_before_anything_is_sent(
    url: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nobody listens at PAAS_SCHEDULER: an attempt to call would say so instead.
    assert run(["drains", "add", url, "-a", "shop"]) == 1
    assert problem in one_error_line(capsys.readouterr().err)


def test_drains_need_an_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["drains", "add", "syslog://logs.example.com:514"]) == 1
    assert "no app given" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- apps destroy


@pytest.mark.parametrize(
    ("words", "given"),
    [
        (["apps", "destroy", "shop"], ""),
        (["apps", "destroy", "shop", "--confirm", "shp"], " (--confirm names 'shp')"),
        (["apps", "destroy", "shop", "--confirm", ""], " (--confirm names '')"),
        (["apps", "destroy", "shop", "--confirm", "SHOP"], " (--confirm names 'SHOP')"),
    ],
)
def test_apps_destroy_without_the_name_repeated_changes_nothing(
    words: list[str], given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nobody listens at PAAS_SCHEDULER: were a call made, it would say so instead.
    assert run(words) == 1
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == (
        "error: destroying shop stops its instances and deletes its releases, config and "
        "logs for good: to go ahead, repeat its name with --confirm: "
        f"`paas apps destroy shop --confirm shop`{given}"
    )
    assert captured.out == ""


def test_apps_destroy_checks_the_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["apps", "destroy", "Shop", "--confirm", "Shop"]) == 1
    assert "invalid app name 'Shop'" in one_error_line(capsys.readouterr().err)


def test_apps_destroy_needs_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["apps", "destroy", "--confirm", "shop"]) == 2
    assert "required: NAME" in one_error_line(capsys.readouterr().err)


def test_apps_destroy_does_not_take_the_app_from_paas_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PAAS_APP", "shop")
    assert run(["apps", "destroy", "--confirm", "shop"]) == 2
    one_error_line(capsys.readouterr().err)
    assert run(["apps", "destroy", "-a", "shop", "--confirm", "shop"]) == 2
    one_error_line(capsys.readouterr().err)


def test_a_confirmed_destroy_is_sent(nowhere: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["apps", "destroy", "shop", "--confirm", "shop"]) == 1
    assert "cannot reach the scheduler" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [
        ["tokens", "create", "--ttl", "0"],
        ["tokens", "create", "--ttl", "1y"],
        ["tokens", "create", "--ttl", "-5m"],
        ["tokens", "create", "--uses", "0"],
        ["tokens", "revoke"],
    ],
)
def test_bad_token_options_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2
    one_error_line(capsys.readouterr().err)


def test_durations_read_as_people_write_them() -> None:
    from paas.cli.argtypes import duration

    assert [duration(text) for text in ("45", "45s", "30m", "1h", "7d")] == [
        45.0,
        45.0,
        1800.0,
        3600.0,
        7 * 86400.0,
    ]
