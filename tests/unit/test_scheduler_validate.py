"""Requests are checked at the scheduler as if no CLI existed: each refusal names the
field and the rule, and what is fine passes."""

from __future__ import annotations

import pytest

from paas.common.configvars import CONFIG_VARS_LIMIT, PROCFILE_LIMIT
from paas.common.errors import InvalidInput
from paas.proto import paas_pb2 as pb
from paas.scheduler.validate import check_agent_message, check_request

PROCFILE = "web: python3 -m http.server $PORT\n"


def deploy(**fields: object) -> pb.DeployRequest:
    values: dict[str, object] = {"app": "shop", "dir": "/srv/shop", "procfile": PROCFILE}
    values.update(fields)
    return pb.DeployRequest(**values)  # type: ignore[arg-type]


def test_a_good_deploy_passes() -> None:
    check_request(
        deploy(
            env={"PORT_BASE": "5000", "_X": "", "a1": "x=y"},
            settings={"web": pb.ProcessSettings(stop_grace=5)},
        )
    )


@pytest.mark.parametrize("key", ["", "BAD KEY", "A=B", "1ABC", "A-B", "Ä", "A\0"])
def test_a_deploy_with_an_env_key_no_process_can_take_is_refused_naming_it(key: str) -> None:
    with pytest.raises(InvalidInput, match="invalid config var name") as raised:
        check_request(deploy(env={key: "1"}))
    assert repr(key) in str(raised.value)


@pytest.mark.parametrize(
    ("request_", "names"),
    [
        (deploy(env={"KEY": "a\0b"}), "KEY"),
        (deploy(procfile="web: echo \0 hi\n"), "Procfile"),
        (deploy(dir="/srv/\0shop"), "app directory"),
    ],
)
def test_a_nul_byte_anywhere_in_a_deploy_is_refused(request_: pb.DeployRequest, names: str) -> None:
    with pytest.raises(InvalidInput, match="NUL") as raised:
        check_request(request_)
    assert names in str(raised.value)


def test_config_vars_above_the_limit_are_refused_with_the_limit() -> None:
    with pytest.raises(InvalidInput, match=f"{CONFIG_VARS_LIMIT // 1024} KiB"):
        check_request(deploy(env={"BIG": "x" * (3 * 1024 * 1024)}))
    check_request(deploy(env={"BIG": "x" * (CONFIG_VARS_LIMIT - 3)}))


def test_a_procfile_above_the_limit_is_refused_with_the_limit() -> None:
    big = PROCFILE + "#" * PROCFILE_LIMIT
    with pytest.raises(InvalidInput, match=f"{PROCFILE_LIMIT // 1024} KiB"):
        check_request(deploy(procfile=big))


@pytest.mark.parametrize(
    "request_",
    [
        deploy(app=""),
        deploy(app="Shop"),
        deploy(dir="srv/shop"),
        deploy(dir="/" + "d" * 5000),
        deploy(settings={"bad type": pb.ProcessSettings()}),
        deploy(settings={"web": pb.ProcessSettings(check=7)}),  # type: ignore[arg-type]
    ],
)
def test_malformed_deploys_are_refused(request_: pb.DeployRequest) -> None:
    with pytest.raises(InvalidInput):
        check_request(request_)


def change(type_: str, count: int, op: int = pb.FormationChange.SET) -> pb.FormationChange:
    return pb.FormationChange(type=type_, op=op, count=count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        [],
        [change("web", -1)],
        [change("web", 1001)],
        [change("web", 1, op=9)],
        [change("", 1)],
        [change("we b", 1)],
        [change("web", 1), change("web", 2)],
    ],
)
def test_bad_formation_changes_are_refused(changes: list[pb.FormationChange]) -> None:
    with pytest.raises(InvalidInput):
        check_request(pb.ScaleRequest(app="shop", changes=changes))


def test_a_good_scale_passes() -> None:
    check_request(pb.ScaleRequest(app="shop", changes=[change("web", 3), change("worker", 0)]))


@pytest.mark.parametrize(
    "request_",
    [
        pb.CreateAppRequest(name="-shop"),
        pb.RestartRequest(app="shop", process="web.x"),
        pb.RestartRequest(app="shop", process="we b"),
        pb.StopRequest(app="shop", instance="web"),
        pb.DrainRequest(node=""),
        pb.DrainRequest(node="node 1"),
        pb.LogsRequest(app="shop", lines=-1),
        pb.LogsRequest(app="shop", lines=10**9),
        pb.LogsRequest(app="shop", since=float("nan")),
        pb.LogsRequest(app="shop", process="web.0"),
        pb.AddDrainRequest(app="shop", url="syslog://\0"),
        pb.ListDrainsRequest(app=""),
        pb.ListInstancesRequest(app="SHOP"),
    ],
)
def test_malformed_requests_are_refused(request_: object) -> None:
    with pytest.raises(InvalidInput):
        check_request(request_)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_",
    [
        pb.ListAppsRequest(),
        pb.ListNodesRequest(),
        pb.ListInstancesRequest(),
        pb.RestartRequest(app="shop"),
        pb.RestartRequest(app="shop", process="web"),
        pb.RestartRequest(app="shop", process="web.3"),
        pb.LogsRequest(app="shop", process="scheduler", lines=500),
        pb.DrainRequest(node="node-1"),
    ],
)
def test_good_requests_pass(request_: object) -> None:
    check_request(request_)  # type: ignore[arg-type]


def test_destroy_needs_the_name_repeated() -> None:
    check_request(pb.DestroyAppRequest(name="shop", confirm="shop"))
    for confirm in ("", "shop2", "SHOP"):
        with pytest.raises(InvalidInput, match="--confirm NAME must repeat the app's name"):
            check_request(pb.DestroyAppRequest(name="shop", confirm=confirm))


def test_an_agents_hello_is_checked() -> None:
    def hello(**fields: object) -> pb.AgentMessage:
        values: dict[str, object] = {"name": "node-1", "address": "127.0.0.2:7001"}
        values.update(fields)
        return pb.AgentMessage(hello=pb.Hello(**values))  # type: ignore[arg-type]

    check_agent_message(hello())
    for bad in (hello(name=""), hello(name="a/b"), hello(address="nowhere"), hello(capacity=-1)):
        with pytest.raises(InvalidInput):
            check_agent_message(bad)
