"""How releases are made (scheduler/releases.py, common/configvars.py) and how the
four release requests are checked (validate.py): pure, no I/O."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from paas.common.configvars import (
    CONFIG_VARS_LIMIT,
    ConfigVarsError,
    changed_config,
    check_config_vars,
    is_reserved,
)
from paas.common.errors import InvalidInput
from paas.common.names import InstanceName
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound, Refused
from paas.scheduler.releases import (
    ROLLING,
    Code,
    build_release,
    check_rollback_code,
    code_of,
    config_description,
    rollback_target,
    rollout_progress,
)
from paas.scheduler.releases_api import ReleasesService
from paas.scheduler.store import AppRecord, InstanceRecord, ReleaseRecord, SlugRecord, SlugRef
from paas.scheduler.validate import check_request

APP = AppRecord(name="shop", created_at=0.0, release=4)
SLUG = SlugRef("ab" * 32, 100)


def release(version: int, **fields: object) -> ReleaseRecord:
    values: dict[str, object] = {
        "app": "shop",
        "version": version,
        "dir": "",
        "commands": {"web": "serve", "worker": "work"},
        "env": {"A": "1"},
        "created_at": 1.0,
        "slug": SLUG,
    }
    values.update(fields)
    return ReleaseRecord(**values)  # type: ignore[arg-type]


def test_a_new_release_takes_the_next_version_and_names_the_one_in_force() -> None:
    made = build_release(APP, code_of(release(4)), {"B": "2"}, "Set B config vars", "alice",
                         ROLLING, now=5.0)  # fmt: skip
    assert (made.version, made.previous, made.by, made.status) == (5, 4, "alice", "rolling")
    assert made.slug == SLUG and made.commands == {"web": "serve", "worker": "work"}
    assert made.env == {"B": "2"} and made.created_at == 5.0 and made.dir == ""


def test_before_any_deploy_a_release_has_no_code() -> None:
    assert code_of(None).empty
    made = build_release(AppRecord("shop", 0.0, 0), code_of(None), {"A": "1"}, "Set A", "")
    assert (made.version, made.previous, made.slug, made.commands) == (1, 0, None, {})
    with pytest.raises(Refused, match="v1 of shop has no code"):
        check_rollback_code(made)
    check_rollback_code(release(2))
    check_rollback_code(release(3, slug=None, dir="/srv/shop"))


def test_descriptions_name_keys_never_values() -> None:
    assert config_description(["FOO", "BAR"], []) == "Set FOO, BAR config vars"
    assert config_description([], ["FOO"]) == "Unset FOO config vars"
    assert config_description(["A"], ["B"]) == "Set A config vars; Unset B config vars"


@pytest.mark.parametrize(
    ("version", "kept", "target"),
    [(0, [2, 3, 4], 3), (2, [2, 3, 4], 2), (4, [3, 4], 4)],
)
def test_rollback_goes_to_vn_or_the_one_before_the_current(
    version: int, kept: list[int], target: int
) -> None:
    assert rollback_target(APP, kept, version) == target


@pytest.mark.parametrize(
    ("app", "kept", "version", "problem"),
    [
        (APP, [3, 4], 99, "shop has no release v99"),
        (APP, [3, 4], 5, "shop has no release v5"),
        (APP, [3, 4], 1, "release v1 of shop is no longer kept (the scheduler keeps the last 2)"),
        (APP, [4], 0, "release v3 of shop is no longer kept"),
        (AppRecord("shop", 0.0, 1), [1], 0, "shop has only v1"),
        (AppRecord("shop", 0.0, 0), [], 0, "shop has no releases yet"),
    ],
)
def test_rollback_to_what_is_not_there_is_refused_naming_it(
    app: AppRecord, kept: list[int], version: int, problem: str
) -> None:
    with pytest.raises(NotFound) as raised:
        rollback_target(app, kept, version, keep_releases=2)
    assert problem in str(raised.value)


def instance(name: str, release: int, node: str = "node-1") -> InstanceRecord:
    return InstanceRecord("shop", InstanceName.parse(name), node, release, incarnation=7)


def test_rollout_progress_counts_the_formation_and_the_instances_up_on_the_release() -> None:
    records = [
        instance("web.1", 5),
        instance("web.2", 5),
        instance("web.3", 4),
        instance("worker.1", 5, node="node-2"),
        instance("clock.1", 5),  # not a type of the release
        InstanceRecord("other", InstanceName.parse("web.1"), "node-1", 5, 7),
    ]
    down = {"web.2"}
    wanted, replaced = rollout_progress(
        release(5),
        {"web": 3, "worker": 1, "clock": 1},
        records,
        lambda r: r.app == "shop" and str(r.name) not in down,
    )
    assert (wanted, replaced) == (4, 2)


def test_config_changes_are_checked_whole() -> None:
    assert changed_config({"A": "1", "B": "2"}, {"C": "3"}, ["A"]) == {"B": "2", "C": "3"}
    with pytest.raises(ConfigVarsError, match="config vars NOPE, GONE are not set"):
        changed_config({"A": "1"}, {}, ["NOPE", "GONE"])
    with pytest.raises(ConfigVarsError, match="config var A is both set and unset"):
        changed_config({"A": "1"}, {"A": "2"}, ["A"])
    half = "x" * (CONFIG_VARS_LIMIT // 2)
    with pytest.raises(ConfigVarsError, match="32 KiB"):
        changed_config({"A": half}, {"B": half}, [])
    # A key left from before the reserved rule can still be unset.
    assert changed_config({"PORT": "80", "A": "1"}, {}, ["PORT"]) == {"A": "1"}


@pytest.mark.parametrize("key", ["PORT", "DYNO", "PAAS_APP", "PAAS_", "PAAS_ANYTHING"])
def test_reserved_keys_are_refused_naming_them(key: str) -> None:
    assert is_reserved(key)
    with pytest.raises(ConfigVarsError, match=f"config var {key} is reserved"):
        check_config_vars({key: "1"})


@pytest.mark.parametrize("key", ["PORTS", "PORT_BASE", "DYNO_X", "paas_x", "MY_PAAS_X"])
def test_keys_that_only_look_reserved_are_fine(key: str) -> None:
    assert not is_reserved(key)
    check_config_vars({key: "1"})


# ------------------------------------------------------------------ validate.py


def test_good_release_requests_pass() -> None:
    check_request(pb.ListReleasesRequest(app="shop", limit=10))
    check_request(pb.ListReleasesRequest(app="shop"))
    check_request(pb.GetReleaseRequest(app="shop"))
    check_request(pb.GetReleaseRequest(app="shop", version=7))
    check_request(pb.RollbackRequest(app="shop"))
    check_request(pb.RollbackRequest(app="shop", version=3))
    check_request(pb.SetConfigRequest(app="shop", set={"A": "1", "B": ""}, unset=["C"]))
    check_request(pb.SetConfigRequest(app="shop", unset=["PORT"]))  # not set: the handler says


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (pb.ListReleasesRequest(app=""), "no app given"),
        (pb.ListReleasesRequest(app="Shop"), "invalid app name"),
        (pb.ListReleasesRequest(app="shop", limit=-1), "limit must be from 0"),
        (pb.ListReleasesRequest(app="shop", limit=5000), "limit must be from 0"),
        (pb.GetReleaseRequest(app="shop", version=-1), "a release version is from 1"),
        (pb.RollbackRequest(app="shop", version=-3), "a release version is from 1"),
        (pb.RollbackRequest(app="shop", version=10**11), "a release version is from 1"),
        (pb.SetConfigRequest(app="shop"), "no config var to set or unset given"),
        (pb.SetConfigRequest(app="shop", set={"1A": "x"}), "invalid config var name '1A'"),
        (pb.SetConfigRequest(app="shop", set={"A=B": "x"}), "invalid config var name 'A=B'"),
        (pb.SetConfigRequest(app="shop", set={"PORT": "1"}), "config var PORT is reserved"),
        (pb.SetConfigRequest(app="shop", set={"PAAS_X": "1"}), "config var PAAS_X is reserved"),
        (pb.SetConfigRequest(app="shop", set={"A": "a\0b"}), "config var A has a NUL byte"),
        (pb.SetConfigRequest(app="shop", set={"A": "x" * CONFIG_VARS_LIMIT}), "32 KiB"),
        (pb.SetConfigRequest(app="shop", unset=["A B"]), "invalid config var name 'A B'"),
        (pb.SetConfigRequest(app="shop", unset=["A", "A"]), "config var A is given more than once"),
        (pb.SetConfigRequest(app="shop", set={"A": "1"}, unset=["A"]), "A is both set and unset"),
        (pb.SetConfigRequest(app="shop", unset=["A" * (CONFIG_VARS_LIMIT + 1)]), "KiB"),
        (
            pb.DeployRequest(app="shop", dir="/srv", procfile="web: x\n", env={"DYNO": "1"}),
            "config var DYNO is reserved",
        ),
    ],
)
def test_bad_release_requests_are_refused_naming_the_rule(
    request_: pb.ListReleasesRequest, problem: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_request(request_)
    assert problem in str(raised.value)


def test_code_is_what_a_release_runs() -> None:
    assert Code(dir="/srv").empty is False
    assert Code(commands={"web": "x"}).empty is False


# ------------------------------------------------------------------ commit_release


class FakeStore:
    """What commit_release reads and writes, in memory."""

    def __init__(self, app: AppRecord, releases: list[ReleaseRecord], slugs: set[str]) -> None:
        self.app_record = app
        self.kept = {r.version: r for r in releases}
        self.slugs = slugs
        self.written: list[ReleaseRecord] = []

    async def app(self, name: str) -> AppRecord | None:
        return self.app_record if name == self.app_record.name else None

    async def release(self, app: str, version: int) -> ReleaseRecord | None:
        return self.kept.get(version)

    async def releases(self, app: str) -> list[ReleaseRecord]:
        return sorted(self.kept.values(), key=lambda r: r.version)

    async def formation(self, app: str) -> tuple[dict[str, int], int]:
        return {"web": 2}, 1

    async def slug(self, digest: str) -> SlugRecord | None:
        return SlugRecord(digest, 100, 1, 0.0) if digest in self.slugs else None

    async def add_release(
        self, app: AppRecord, release: ReleaseRecord, formation: dict[str, int], rev: int
    ) -> None:
        self.written.append(release)


class FakeGC:
    @contextlib.asynccontextmanager
    async def references(self) -> AsyncIterator[None]:
        yield

    def kick(self) -> None:
        pass


def service(store: FakeStore) -> ReleasesService:
    reconciler = SimpleNamespace(world=None, kick=lambda: None)
    events = SimpleNamespace(add=lambda app, text: None)
    return ReleasesService(store, None, reconciler, events, FakeGC(), 10)  # type: ignore[arg-type]


CONTEXT = SimpleNamespace(auth_context=lambda: {})  # a plaintext call: no certificate


async def test_a_rollback_to_a_release_whose_slug_is_gone_is_refused_writing_nothing() -> None:
    gone = SlugRef("cd" * 32, 100)
    store = FakeStore(APP, [release(3, slug=gone), release(4)], slugs={SLUG.digest})
    with pytest.raises(InvalidInput, match=f"slug {'cd' * 6} is no longer stored"):
        await service(store).Rollback(pb.RollbackRequest(app="shop"), CONTEXT)  # type: ignore[arg-type]
    assert store.written == []


async def test_set_config_keeps_the_code_and_rollback_takes_the_old_env() -> None:
    store = FakeStore(APP, [release(3, env={"OLD": "1"}), release(4)], slugs={SLUG.digest})
    made = await service(store).SetConfig(
        pb.SetConfigRequest(app="shop", set={"B": "2"}, unset=["A"]),
        CONTEXT,  # type: ignore[arg-type]
    )
    assert (made.version, made.previous, made.by) == (5, 4, "")
    assert made.description == "Set B config vars; Unset A config vars"
    assert dict(made.env) == {"B": "2"} and made.slug.digest == SLUG.digest
    assert made.status == pb.RELEASE_ROLLING
    back = await service(store).Rollback(pb.RollbackRequest(app="shop", version=3), CONTEXT)  # type: ignore[arg-type]
    assert back.description == "Rollback to v3" and dict(back.env) == {"OLD": "1"}
    with pytest.raises(InvalidInput, match="config var NOPE is not set"):
        await service(store).SetConfig(pb.SetConfigRequest(app="shop", unset=["NOPE"]), CONTEXT)  # type: ignore[arg-type]
    assert len(store.written) == 2


def test_rollback_alone_goes_to_the_release_in_force_before_the_current_one() -> None:
    """v4 failed (v3 stayed in force), v5 was made from v3: `paas rollback` is v3."""
    app = dataclasses.replace(APP, release=5)
    assert rollback_target(app, {1, 2, 3, 4, 5}, 0, previous=3) == 3
    assert rollback_target(app, {1, 2, 3, 4, 5}, 0) == 4  # a release with no previous
