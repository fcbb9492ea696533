"""The rollout's decisions (scheduler/rollout.py), as tables: what one step writes
for an app whose release is rolling, given its instances, surge copies and health."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import pytest

from paas.common.names import InstanceName
from paas.common.rollouts import max_parallel
from paas.proto import paas_pb2 as pb
from paas.scheduler.events import EventLog
from paas.scheduler.rollout import (
    Copy,
    Decision,
    Health,
    RolloutInput,
    Rollouts,
    decide,
)
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.settings import rollout_problem
from paas.scheduler.store import (
    AppRecord,
    DropSurge,
    InstanceRecord,
    NodeRecord,
    Promote,
    PutAppRelease,
    PutRelease,
    ReleaseRecord,
    StartSurge,
    Store,
    World,
)

APP = AppRecord("shop", 1.0, 5, id="id-shop", mod_revision=70, create_revision=3)
NOW = 1000.0
UP = Health(state=pb.UP, up_for=10.0)
BOOTING = Health(state=pb.STARTING)


def release(version: int = 5, **settings: object) -> ReleaseRecord:
    return ReleaseRecord(
        "shop",
        version,
        "/srv",
        {"web": f"serve v{version}"},
        {},
        created_at=NOW - 10,
        settings={"web": dict(settings)} if settings else {},
        status="rolling",
        previous=4,
        mod_revision=60 + version,
    )


def inst(index: int, version: int = 4, node: str = "a", health: Health = UP) -> Copy:
    return Copy(InstanceName("web", index), node, version, 100 + index, 100 + index, health)


def surge(index: int, health: Health = BOOTING, node: str = "a", version: int = 5) -> Copy:
    return Copy(InstanceName("web", index), node, version, 200 + index, 200 + index, health)


@dataclass
class Case:
    instances: list[Copy]
    surges: list[Copy] = field(default_factory=list)
    release: ReleaseRecord = field(default_factory=release)
    room: dict[str, int] = field(default_factory=lambda: {"a": 10, "b": 10})
    now: float = NOW
    superseded: list[ReleaseRecord] = field(default_factory=list)


def run(case: Case) -> Decision:
    return decide(
        RolloutInput(
            app=APP,
            release=case.release,
            formation={"web": len(case.instances)},
            instances=case.instances,
            surges=case.surges,
            room=case.room,
            now=case.now,
            superseded=case.superseded,
            previous=release(4),
            phase="",
        )
    )


def started(decision: Decision) -> list[str]:
    return [str(w.name) for w in decision.writes if isinstance(w, StartSurge)]


def promoted(decision: Decision) -> list[str]:
    return [str(w.surge.name) for w in decision.writes if isinstance(w, Promote)]


def dropped(decision: Decision) -> list[str]:
    return [str(w.surge.name) for w in decision.writes if isinstance(w, DropSurge)]


def status_of(decision: Decision, version: int = 5) -> str:
    puts = [w.release for w in decision.writes if isinstance(w, PutRelease)]
    found = [r for r in puts if r.version == version]
    return found[-1].status if found else ""


def test_a_rollout_starts_one_new_copy_beside_the_old_one_by_default() -> None:
    decision = run(Case([inst(1), inst(2), inst(3)]))
    assert started(decision) == ["web.1"]
    start = next(w for w in decision.writes if isinstance(w, StartSurge))
    assert (start.node, start.release) == ("a", 5), "same node: it has room"
    assert status_of(decision) == ""


def test_max_parallel_bounds_the_copies_in_flight() -> None:
    case = Case([inst(i) for i in range(1, 6)], release=release(max_parallel="2"))
    assert started(run(case)) == ["web.1", "web.2"]
    case.surges = [surge(1)]
    assert started(run(case)) == ["web.2"], "one in flight: one more"
    case.surges = [surge(1), surge(2)]
    assert started(run(case)) == []


def test_a_percentage_rounds_up_and_is_at_least_one() -> None:
    assert max_parallel("25%", 10) == 3
    assert max_parallel("1%", 10) == 1
    assert max_parallel("", 10) == 1
    case = Case([inst(i) for i in range(1, 11)], release=release(max_parallel="25%"))
    assert started(run(case)) == ["web.1", "web.2", "web.3"]


@pytest.mark.parametrize("bad", ["0", "0%", "150%", "-1", "two", "2.5", "%"])
def test_max_parallel_out_of_range_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="max_parallel"):
        max_parallel(bad, 10)


def test_a_copy_up_for_min_healthy_is_promoted_and_a_younger_one_waits() -> None:
    young = Health(state=pb.UP, up_for=1.0)
    decision = run(Case([inst(1), inst(2)], surges=[surge(1, young)]))
    assert promoted(decision) == [] and started(decision) == []
    assert decision.wake_in == pytest.approx(2.0), "look again when it has been up 3 s"

    decision = run(Case([inst(1), inst(2)], surges=[surge(1, UP)]))
    assert promoted(decision) == ["web.1"]
    assert started(decision) == ["web.2"], "the next one starts in the same step"
    promote = next(w for w in decision.writes if isinstance(w, Promote))
    assert promote.instance_revision == 101
    assert promote.surge.incarnation == 201, "the instance keeps the copy's incarnation"


def test_min_healthy_zero_promotes_as_soon_as_up() -> None:
    now_up = Health(state=pb.UP, up_for=0.0)
    case = Case([inst(1)], surges=[surge(1, now_up)], release=release(min_healthy=0.0))
    assert promoted(run(case)) == ["web.1"]


def test_the_last_promotion_succeeds_the_release_with_an_event() -> None:
    decision = run(Case([inst(1, version=5), inst(2)], surges=[surge(2, UP)]))
    assert promoted(decision) == ["web.2"]
    assert status_of(decision) == "succeeded" and decision.outcome == "succeeded"
    assert decision.events == ["Release v5 rolled out (2 instances in 10.0s)"]


def test_a_release_with_nothing_to_replace_succeeds_at_once() -> None:
    decision = run(Case([inst(1, version=5), inst(2, version=5)]))
    assert status_of(decision) == "succeeded"
    assert run(Case([])).outcome == "succeeded"
    assert run(Case([])).events == [], "nothing to replace is no news"


def test_a_first_release_succeeds_without_saying_it_rolled_out() -> None:
    # Its instances were placed with it, not replaced, and may not be up yet: "rolled
    # out (1 instance in 0.0s)" said more than was so (seen in `make run`).
    first = dataclasses.replace(release(), previous=0)
    decision = run(Case([inst(1, version=5), inst(2, version=5)], release=first))
    assert status_of(decision) == "succeeded"
    assert decision.events == []


def test_a_crashed_copy_fails_the_release_and_the_one_before_comes_back() -> None:
    crashed = Health(state=pb.BACKOFF, restarts=1, last_exit="exit 3", last_lines=("boom", "bye"))
    decision = run(Case([inst(1, version=5), inst(2), inst(3)], surges=[surge(2, crashed)]))
    assert dropped(decision) == ["web.2"] and started(decision) == [] and not promoted(decision)
    assert status_of(decision) == "failed" and decision.outcome == "failed"
    failed = next(w.release for w in decision.writes if isinstance(w, PutRelease))
    assert failed.status_reason == "its new copy of web.2 crashed (exit 3)"
    back = next(w for w in decision.writes if isinstance(w, PutAppRelease))
    assert back.version == 4
    assert decision.events[0] == (
        "Release v5 failed: its new copy of web.2 crashed (exit 3); v4 stays in force"
    )
    assert "web.2 (v5) output: bye" in decision.events
    assert any(e.startswith("1 of 3 web instances run v5") for e in decision.events)
    assert decision.rollback is None, "auto_rollback is off"


def test_a_restart_counts_as_a_crash_even_when_caught_starting_again() -> None:
    again = Health(state=pb.STARTING, restarts=1)
    assert run(Case([inst(1)], surges=[surge(1, again)])).outcome == "failed"


def test_a_slug_not_fetched_yet_is_no_crash() -> None:
    waiting = Health(state=pb.BACKOFF, reason="slug not ready: etcd down")
    assert run(Case([inst(1)], surges=[surge(1, waiting)])).outcome == ""


def test_no_progress_for_the_deadline_fails_the_release() -> None:
    case = Case([inst(1), inst(2)], surges=[surge(1)], release=release(progress_deadline=60.0))
    decision = run(case)
    assert decision.outcome == "" and decision.wake_in == pytest.approx(50.0)
    case.now = NOW + 51
    decision = run(case)
    assert decision.outcome == "failed" and dropped(decision) == ["web.1"]
    assert "no progress for 60s (0 of 2 web instances replaced)" in decision.events[0]


def test_a_promotion_is_progress_written_to_the_release() -> None:
    decision = run(Case([inst(1), inst(2)], surges=[surge(1, UP)]))
    put = next(w.release for w in decision.writes if isinstance(w, PutRelease))
    assert put.progress_at == NOW and put.status == "rolling"


def test_auto_rollback_asks_for_a_release_copying_the_one_before() -> None:
    crashed = Health(state=pb.CRASHED, last_exit="exit 1")
    case = Case([inst(1)], surges=[surge(1, crashed)], release=release(auto_rollback=True))
    decision = run(case)
    assert decision.rollback is not None and decision.rollback.version == 4
    rolled_back = dataclasses.replace(case.release, description="Rollback to v4 (v5 failed)")
    case.release = rolled_back
    assert run(case).rollback is None, "a rollback that fails does not roll back again"


def test_a_newer_release_supersedes_the_rolling_one_and_its_copies_go() -> None:
    case = Case(
        [inst(1, version=5), inst(2, version=4)],
        surges=[surge(2, UP, version=5)],
        release=dataclasses.replace(release(6), previous=5),
        superseded=[release(5)],
    )
    decision = run(case)
    assert status_of(decision, 5) == "failed"
    put = next(w.release for w in decision.writes if isinstance(w, PutRelease))
    assert put.status_reason == "superseded by v6"
    assert dropped(decision) == ["web.2"], "the superseded release's copies are removed"
    assert started(decision) == ["web.1"], "and the rollout goes on towards v6"


def test_a_release_that_supersedes_falls_back_past_the_superseded_one() -> None:
    v4 = dataclasses.replace(release(4), status="succeeded")
    v6 = dataclasses.replace(release(6), previous=5)
    crashed = Health(state=pb.CRASHED, last_exit="exit 1")
    base = RolloutInput(
        APP,
        v6,
        {"web": 1},
        [inst(1)],
        [surge(1, crashed, version=6)],
        {"a": 5},
        NOW,
        superseded=[release(5)],
        previous=release(5),
        phase="",
        history={4: v4, 5: release(5), 6: v6},
    )
    decision = decide(base)
    assert decision.outcome == "failed"
    back = next(w for w in decision.writes if isinstance(w, PutAppRelease))
    assert back.version == 4, "v5 never was in force whole"
    failed = next(
        w.release for w in decision.writes if isinstance(w, PutRelease) and w.release.version == 6
    )
    assert failed.previous == 4 and failed.status == "failed"


def test_a_copy_whose_node_is_gone_is_dropped_and_started_again_elsewhere() -> None:
    case = Case([inst(1), inst(2)], surges=[surge(1, node="gone")])
    decision = run(case)
    assert dropped(decision) == ["web.1"]
    assert "web.1" not in started(decision), "not in the txn that drops it: a key once per txn"
    case.surges = []
    assert started(run(case)) == ["web.1"]


def test_a_superseded_copy_is_replaced_by_one_of_the_new_release_a_step_later() -> None:
    case = Case(
        [inst(1), inst(2)],
        surges=[surge(1, UP, version=5)],
        release=dataclasses.replace(release(6), previous=5),
        superseded=[release(5)],
    )
    decision = run(case)
    assert dropped(decision) == ["web.1"] and started(decision) == ["web.2"]
    keys = [str(w.name) for w in decision.writes if isinstance(w, StartSurge)]
    keys += [str(w.surge.name) for w in decision.writes if isinstance(w, DropSurge | Promote)]
    assert len(keys) == len(set(keys))


def test_a_copy_made_redundant_by_a_move_is_dropped() -> None:
    # web.1 was moved off a draining node meanwhile: plan gave it the new release.
    decision = run(Case([inst(1, version=5, node="b"), inst(2)], surges=[surge(1)]))
    assert dropped(decision) == ["web.1"]
    assert started(decision) == ["web.2"]


def test_with_no_room_on_its_node_the_copy_goes_to_another() -> None:
    decision = run(Case([inst(1)], room={"a": 0, "b": 1}))
    start = next(w for w in decision.writes if isinstance(w, StartSurge))
    assert start.node == "b"


def test_with_no_room_anywhere_the_rollout_waits_and_says_so() -> None:
    decision = run(Case([inst(1)], room={"a": 0}))
    assert started(decision) == [] and decision.no_room == ["web"]
    assert decision.outcome == ""


def test_a_release_phase_runs_first_and_nothing_is_replaced_meanwhile() -> None:
    phased = dataclasses.replace(
        release(), commands={"web": "serve", "release": "migrate"}, phase_done=False
    )
    base = RolloutInput(APP, phased, {"web": 1}, [inst(1)], [], {"a": 5}, NOW, previous=release(4))
    decision = decide(base)
    assert decision.run_phase and decision.writes == []
    running = decide(dataclasses.replace(base, phase_running=True))
    assert not running.run_phase and running.writes == []
    failed = decide(dataclasses.replace(base, phase="exit 1"))
    assert failed.outcome == "failed" and started(failed) == []
    assert failed.events[0].startswith("Release v5 failed: release phase failed: exit 1")
    done = decide(dataclasses.replace(base, phase=""))
    assert started(done) == ["web.1"]
    put = next(w.release for w in done.writes if isinstance(w, PutRelease))
    assert put.phase_done, "a new leader does not run it again"


def test_a_release_that_is_not_rolling_leaves_only_stray_copies_to_remove() -> None:
    settled = dataclasses.replace(release(4), status="succeeded")
    decision = run(Case([inst(1), inst(2, version=5)], surges=[surge(1)], release=settled))
    assert dropped(decision) == ["web.1"] and started(decision) == []
    assert decision.outcome == ""


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (pb.ProcessSettings(max_parallel="0"), "max_parallel"),
        (pb.ProcessSettings(max_parallel="0%"), "max_parallel"),
        (pb.ProcessSettings(max_parallel="150%"), "max_parallel"),
        (pb.ProcessSettings(min_healthy=-1), "min_healthy"),
        (pb.ProcessSettings(health="healthz"), "health"),
        (pb.ProcessSettings(health="/a b"), "health"),
        (pb.ProcessSettings(progress_deadline=-5), "progress_deadline"),
    ],
)
def test_rollout_settings_out_of_range_are_one_line_problems(
    settings: pb.ProcessSettings, problem: str
) -> None:
    found = rollout_problem(settings)
    assert found is not None and found.startswith(problem) and "\n" not in found


def test_rollout_settings_in_range_are_fine() -> None:
    good = pb.ProcessSettings(
        health="/healthz?x=1", min_healthy=0, max_parallel="25%", progress_deadline=60
    )
    assert rollout_problem(good) is None


# ------------------------------------------------------------ the driver, no etcd


async def test_the_driver_calls_the_release_phase_hook_once_and_then_replaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def hook(record: ReleaseRecord) -> str | None:
        calls.append(record.version)
        await gate.wait()
        return None

    written: list[list[object]] = []

    class FakeStore(Store):
        def __init__(self) -> None:
            pass

    async def fake_write(store: object, app: object, writes: list[object]) -> int:
        written.append(writes)
        return 99

    kicks: list[None] = []
    sessions = Sessions(grace=5, on_change=lambda: None)
    sessions.attach(AgentSession(pb.Hello(name="a", address="127.0.0.2:1", capacity=10)))
    rollouts = Rollouts(FakeStore(), sessions, EventLog("t"), lambda: kicks.append(None), hook)
    phased = dataclasses.replace(release(), commands={"web": "serve", "release": "migrate"})
    world = World(
        apps={"shop": APP},
        formations={"shop": {"web": 1}},
        releases={"shop": phased},
        instances=[InstanceRecord("shop", InstanceName("web", 1), "a", 4, 101)],
        nodes={"a": NodeRecord("a", "127.0.0.2:1", 10)},
        history={
            ("shop", 5): phased,
            ("shop", 4): dataclasses.replace(release(4), status="succeeded"),
        },
    )
    monkeypatch.setattr("paas.scheduler.rollout.write_rollout", fake_write)
    try:
        assert await rollouts.step(world, {"a": 9}, {}) == 0
        await asyncio.sleep(0)
        assert await rollouts.step(world, {"a": 9}, {}) == 0, "running: not started twice"
        await asyncio.sleep(0)
        assert calls == [5] and written == []
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert kicks, "its end wakes the loop"
        assert await rollouts.step(world, {"a": 9}, {}) == 99
        assert calls == [5]
        kinds = sorted(type(w).__name__ for w in written[0])
        assert kinds == ["PutRelease", "StartSurge"]
    finally:
        rollouts.close()
