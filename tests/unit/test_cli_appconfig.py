"""DIR/paas.toml and DIR/.env: what `paas deploy` sends beside the Procfile, checked
before anything is sent."""

from __future__ import annotations

import pytest

from paas.cli.appconfig import AppConfigError, parse_app_config, parse_dotenv
from paas.common.configvars import ConfigVarsError, check_config_vars
from paas.proto import paas_pb2 as pb
from paas.scheduler.settings import placement_of

TYPES = ["web", "worker"]


def test_every_key_becomes_its_process_setting() -> None:
    settings = parse_app_config(
        """
        [types.web]
        stop_grace = 60
        boot_timeout = 120.5
        check = "port"
        backoff_cap = 300
        backoff_reset = 600

        [types.worker]
        check = "none"
        stop_after_disconnected = 2
        """,
        TYPES,
    )
    assert settings == {
        "web": pb.ProcessSettings(
            stop_grace=60,
            boot_timeout=120.5,
            check=pb.ProcessSettings.CHECK_PORT,
            backoff_cap=300,
            backoff_reset=600,
        ),
        "worker": pb.ProcessSettings(
            check=pb.ProcessSettings.CHECK_NONE, stop_after_disconnected=2
        ),
    }


@pytest.mark.parametrize("text", ["", "# nothing here\n", "[types]\n"])
def test_an_empty_file_sets_nothing(text: str) -> None:
    assert parse_app_config(text, TYPES) == {}


def test_a_type_may_leave_keys_out_for_the_agents_defaults() -> None:
    settings = parse_app_config("[types.web]\nstop_grace = 5\n", TYPES)
    assert settings["web"] == pb.ProcessSettings(stop_grace=5)
    assert settings["web"].check == pb.ProcessSettings.CHECK_DEFAULT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[types.web]\nstop_grace = -1\n",
         "paas.toml: types.web.stop_grace: must not be negative, got -1"),
        ("[types.web]\nboot_timeout = \"2m\"\n",
         'paas.toml: types.web.boot_timeout: expected a number of seconds, got "2m"'),
        ("[types.web]\nbackoff_cap = true\n",
         "paas.toml: types.web.backoff_cap: expected a number of seconds, got true"),
        ("[types.web]\nbackoff_reset = inf\n",
         "paas.toml: types.web.backoff_reset: expected a finite number of seconds, got inf"),
        ("[types.web]\nstop_grace = 0\n",
         "paas.toml: types.web.stop_grace: must be above 0 (leave it out for the default)"),
        ("[types.web]\ncheck = \"http\"\n",
         'paas.toml: types.web.check: expected "port" or "none", got "http"'),
        ("[types.web]\ncheck = 1\n",
         'paas.toml: types.web.check: expected "port" or "none", got 1'),
        ("[types.web]\nstop_grase = 5\n",
         "paas.toml: types.web.stop_grase: unknown key (known: stop_grace, boot_timeout, check, "
         "backoff_cap, backoff_reset, stop_after_disconnected, constraints, spread, "
         "distinct_hosts, memory, cpu, health, min_healthy, max_parallel, progress_deadline, "
         "auto_rollback)"),
        ("[types.web]\nconstraints = [\"zone>=eu-1\"]\n",
         "paas.toml: types.web.constraints: unknown operator '>=' in 'zone>=eu-1': "
         "use LABEL=VALUE or LABEL!=VALUE"),
        ("[types.web]\nconstraints = \"zone=eu-1\"\n",
         'paas.toml: types.web.constraints: expected an array like ["zone=eu-1"], '
         'got "zone=eu-1"'),
        ("[types.web]\nmemory = \"lots\"\n",
         'paas.toml: types.web.memory: expected a size like "512M" or "2G", got \'lots\''),
        ("[types.web]\ncpu = -1\n",
         "paas.toml: types.web.cpu: must be a number of cores above 0, got -1"),
        ("[types.web]\ndistinct_hosts = \"yes\"\n",
         'paas.toml: types.web.distinct_hosts: expected true or false, got "yes"'),
        ("[types.web]\nspread = 3\n",
         "paas.toml: types.web.spread: expected a node label name, got 3"),
        ("[types.wbe]\nstop_grace = 5\n",
         "paas.toml: types.wbe: no process type 'wbe' in the Procfile (it has: web, worker)"),
        ("[web]\nstop_grace = 5\n",
         "paas.toml: web: unknown key (a paas.toml has only [types.TYPE] tables)"),
        ("types = 3\n", "paas.toml: types: expected tables like [types.web]"),
        ("[types]\nweb = 3\n", "paas.toml: types.web: expected a table [types.web], got 3"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_the_file_the_key_and_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(AppConfigError) as raised:
        parse_app_config(text, TYPES)
    assert str(raised.value) == message


def test_placement_keys_become_process_settings() -> None:
    text = (
        '[types.web]\nconstraints = ["zone=eu-1", "disk!=hdd"]\nspread = "zone"\n'
        'distinct_hosts = true\nmemory = "512M"\ncpu = 0.5\n'
    )
    web = parse_app_config(text, TYPES)["web"]
    assert list(web.constraints) == ["zone=eu-1", "disk!=hdd"]
    assert (web.spread, web.distinct_hosts, web.memory, web.cpu) == ("zone", True, 512 << 20, 0.5)
    # The scheduler reads the same rules back from what it is sent.
    rules = placement_of(web)
    assert rules.memory == 512 << 20 and rules.constraints[1].op == "!="


def test_bad_toml_names_the_file_and_the_line() -> None:
    with pytest.raises(AppConfigError, match=r"^/app/paas.toml: not valid TOML: .*line 2") as err:
        parse_app_config("[types.web]\nstop_grace = = 5\n", TYPES, source="/app/paas.toml")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- .env


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("A=1\nB=two words\n", {"A": "1", "B": "two words"}),
        ("export A=1\n", {"A": "1"}),
        ("# a comment\n\nA='quoted'\n", {"A": "quoted"}),
        ('A="line\\nbreak"\n', {"A": "line\nbreak"}),
        # Literal, as honcho and foreman read it: nothing expands from the shell of
        # whoever deploys, nor from the file itself.
        ("A=${HOME}/x\n", {"A": "${HOME}/x"}),
        ('A="${HOME}"\n', {"A": "${HOME}"}),
        ("A=1\nB=${A}\n", {"A": "1", "B": "${A}"}),
        ("A=${PAAS_TEST_UNSET:-default}\n", {"A": "${PAAS_TEST_UNSET:-default}"}),
        ("A=$HOME\n", {"A": "$HOME"}),
        ("BARE\nA=1\n", {"A": "1"}),  # a key without a value sets nothing
        ("A=\n", {"A": ""}),
        ("\ufeffA=1\n", {"A": "1"}),
    ],
    ids=["plain", "export", "quotes", "escape", "brace", "quoted-brace", "same-file",
         "default", "dollar", "bare", "empty", "bom"],
)  # fmt: skip
def test_dotenv_values_are_literal(text: str, env: dict[str, str]) -> None:
    assert parse_dotenv(text) == env


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BAD-KEY=1\n", "invalid config var name 'BAD-KEY'"),
        ("1A=1\n", "invalid config var name '1A'"),
        ("A=x\0y\n", "config var A has a NUL byte in its value"),
        ("A=" + "x" * (32 * 1024) + "\n", "an app may have at most 32 KiB"),
    ],
)
def test_dotenv_vars_the_scheduler_refuses_are_refused_the_same(text: str, message: str) -> None:
    with pytest.raises(ConfigVarsError) as raised:
        parse_dotenv(text)
    assert message in str(raised.value)
    with pytest.raises(ConfigVarsError) as scheduler:
        check_config_vars(dict(line.split("=", 1) for line in text.splitlines()))
    assert str(raised.value) == str(scheduler.value)


def test_the_rollout_keys_become_their_settings() -> None:
    settings = parse_app_config(
        """
        [types.web]
        health = "/healthz"
        min_healthy = 0
        max_parallel = "25%"
        progress_deadline = 60
        auto_rollback = true

        [types.worker]
        max_parallel = 2
        """,
        TYPES,
    )
    assert settings["web"] == pb.ProcessSettings(
        health="/healthz",
        min_healthy=0.0,
        max_parallel="25%",
        progress_deadline=60,
        auto_rollback=True,
    )
    assert settings["web"].HasField("min_healthy"), "0 is said, not the default"
    assert settings["worker"].max_parallel == "2"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("max_parallel = 0", 'types.web.max_parallel: expected a count from 1 or "1%"'),
        ('max_parallel = "0%"', "types.web.max_parallel"),
        ('max_parallel = "150%"', "types.web.max_parallel"),
        ("max_parallel = 1.5", "types.web.max_parallel"),
        ("min_healthy = -1", "types.web.min_healthy: must be between 0 and 3600"),
        ('min_healthy = "3"', "types.web.min_healthy: expected a number of seconds"),
        ('health = "healthz"', 'types.web.health: expected an HTTP path starting with "/"'),
        ('health = "/a b"', "types.web.health"),
        ("progress_deadline = 0", "types.web.progress_deadline: must be above 0"),
        ('auto_rollback = "yes"', "types.web.auto_rollback: expected true or false"),
    ],
)
def test_rollout_keys_out_of_range_are_one_line(line: str, problem: str) -> None:
    with pytest.raises(AppConfigError) as refused:
        parse_app_config(f"[types.web]\n{line}\n", TYPES)
    assert problem in str(refused.value) and "\n" not in str(refused.value)
