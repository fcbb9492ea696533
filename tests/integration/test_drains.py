"""Log drains on a real cluster (etcd, a scheduler, 3 agents, real processes), delivering
to a real syslog/TCP listener and a real HTTP server started by the test: every line of
every instance arrives once and in order, with the right app and procid; scheduler events
too; a drain that was down gets every line or says how many it lost; a removed drain
gets nothing more; bad URLs are refused with nothing stored; a new leader resumes."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from paas.cli.localcluster import LocalCluster
from paas.common.ports import free_port
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration

APP = "shop"
COUNT = 2000
FLOOD = 20_000  # more than a drain's queue (10 000) holds while its endpoint is down
# counter prints COUNT numbered lines (a pause every 500), then idles.
# flood prints FLOOD numbered lines in a second or two, then idles.
# ticker prints a numbered line five times a second.
PROCFILE = f"""\
counter: python3 -u -c 'import time; [(print(f"line {{i}}"), i % 500 == 499 and time.sleep(0.05)) for i in range({COUNT})]; time.sleep(100000)'
flood: python3 -u -c 'import time; [(print(f"line {{i}}"), i % 500 == 499 and time.sleep(0.02)) for i in range({FLOOD})]; time.sleep(100000)'
ticker: python3 -u -c 'import itertools, time; [(print(f"tick {{i}}"), time.sleep(0.2)) for i in itertools.count(1)]'
"""  # noqa: E501

# RFC 5424 as the drains write it: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00) "
    r"(?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) - - (?P<msg>.*)",
    re.DOTALL,
)
DROPPED = re.compile(r"(\d+) lines dropped\b")


@dataclass
class Message:
    hostname: str
    app: str
    procid: str
    msg: str


def parse(raw: bytes) -> Message:
    fields = RFC5424.fullmatch(raw.decode())
    assert fields is not None, f"not an RFC 5424 message as expected: {raw[:120]!r}"
    return Message(fields["hostname"], fields["app"], fields["procid"], fields["msg"])


def unframe(buffer: bytearray) -> list[bytes]:
    """Take the complete octet-counted (RFC 6587) messages off the front of `buffer`."""
    messages: list[bytes] = []
    while True:
        length, space, _ = bytes(buffer[:12]).partition(b" ")
        if not space:
            return messages
        assert length.isdigit(), f"not octet-counted: {bytes(buffer[:40])!r}"
        end = len(length) + 1 + int(length)
        if len(buffer) < end:
            return messages
        messages.append(bytes(buffer[len(length) + 1 : end]))
        del buffer[:end]


@dataclass
class Received:
    """What a receiver got, in arrival order."""

    messages: list[Message] = field(default_factory=list)

    def numbered(self, procid: str, word: str = "line") -> list[int]:
        found = (re.fullmatch(rf"{word} (\d+)", m.msg) for m in self.messages if m.procid == procid)
        return [int(match.group(1)) for match in found if match]

    def texts(self, procid: str) -> list[str]:
        return [m.msg for m in self.messages if m.procid == procid]

    def dropped(self, by_drain: bool = False) -> int:
        """Lines the notices received say were dropped: by the drain itself (its queue
        was full), or anywhere (an agent's reader that fell behind says so too)."""
        notices = (DROPPED.match(m.msg) for m in self.messages)
        return sum(
            int(match.group(1))
            for match in notices
            if match and (not by_drain or "the log drain was slow" in match.string)
        )


class SyslogReceiver(Received):
    """A syslog server over TCP on 127.0.0.1, reading octet-counted RFC 5424 messages."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.connections = 0
        self.closed = 0  # connections the sender ended
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"syslog://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse connections and end those open, as a receiver that went down."""
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        buffer = bytearray()
        try:
            while chunk := await reader.read(1 << 16):
                buffer += chunk
                self.messages.extend(parse(raw) for raw in unframe(buffer))
            self.closed += 1
        finally:
            self._handlers.discard(task)
            writer.close()


class HTTPReceiver(Received):
    """An HTTP server on 127.0.0.1 taking logplex POSTs."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.posts: list[dict[str, str]] = []  # the logplex headers of each
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/logs"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/logs", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        body = bytearray(await request.read())
        raws = unframe(body)
        assert not body, "a partial frame at the end of a POST"
        self.posts.append(
            {
                key: request.headers.get(key, "")
                for key in ("Content-Type", "Logplex-Msg-Count", "Logplex-Frame-Id")
            }
        )
        assert int(request.headers["Logplex-Msg-Count"]) == len(raws)
        self.messages.extend(parse(raw) for raw in raws)
        return web.Response(status=204)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "Procfile").write_text(PROCFILE)
    return directory


@pytest.fixture
async def syslog() -> AsyncIterator[SyslogReceiver]:
    receiver = SyslogReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def http() -> AsyncIterator[HTTPReceiver]:
    receiver = HTTPReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


async def create_app(cluster: LocalCluster, app_dir: Path) -> None:
    created = await paas(cluster, "apps", "create", APP)
    assert created.returncode == 0, created.stderr
    deployed = await paas(cluster, "deploy", str(app_dir), app=APP)
    assert deployed.returncode == 0, deployed.stderr


async def scale(cluster: LocalCluster, *formation: str) -> None:
    scaled = await paas(cluster, "scale", *formation, app=APP)
    assert scaled.returncode == 0, scaled.stderr


async def add_drain(cluster: LocalCluster, url: str) -> str:
    """Add the drain; its token."""
    added = await paas(cluster, "drains", "add", url, app=APP)
    assert added.returncode == 0, added.stderr
    assert url in added.stdout
    drains = {d["url"]: d for d in await list_drains(cluster)}
    token: str = drains[url]["token"]
    assert re.fullmatch(r"d\.[0-9a-f-]{36}", token), token
    return token


async def list_drains(cluster: LocalCluster) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (await paas(cluster, "drains", "--json", app=APP)).json()
    return rows


async def drain_row(cluster: LocalCluster, url: str) -> dict[str, Any]:
    return next(row for row in await list_drains(cluster) if row["url"] == url)


async def app_log(cluster: LocalCluster) -> str:
    result = await paas(cluster, "logs", "-n", "1000", "-p", "scheduler", app=APP)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------- every line, once


async def test_every_line_of_every_instance_reaches_both_drains_once_in_order(
    cluster: LocalCluster, app_dir: Path, syslog: SyslogReceiver, http: HTTPReceiver
) -> None:
    await create_app(cluster, app_dir)
    syslog_token = await add_drain(cluster, syslog.url)
    http_token = await add_drain(cluster, http.url)
    await scale(cluster, "counter=3")
    instances = ["counter.1", "counter.2", "counter.3"]

    def complete(received: Received) -> bool:
        return all(COUNT - 1 in received.numbered(name) for name in instances)

    await wait_for(lambda: complete(syslog) and complete(http), timeout=90, what="every line")
    for received, token in ((syslog, syslog_token), (http, http_token)):
        for name in instances:
            assert received.numbered(name) == list(range(COUNT)), f"{name} lost or repeated"
        assert {m.hostname for m in received.messages} == {token}
        assert {m.app for m in received.messages} == {APP}
        assert received.dropped() == 0
    # The scheduler's own events come through the same stream.
    await wait_for(
        lambda: any("Scaled to" in text for text in syslog.texts("scheduler")),
        what="the scale event at the syslog drain",
    )
    assert any("Scaled to" in text for text in http.texts("scheduler"))
    assert all(post["Content-Type"] == "application/logplex-1" for post in http.posts)
    assert len({post["Logplex-Frame-Id"] for post in http.posts}) == len(http.posts)
    rows = {row["url"]: row for row in await list_drains(cluster)}
    assert set(rows) == {syslog.url, http.url}
    assert all(row["problem"] == "" and row["dropped"] == 0 for row in rows.values())
    assert rows[syslog.url]["sent"] >= 3 * COUNT


# ---------------------------------------------------------------- down, then back


async def test_a_drain_that_was_down_gets_every_line_or_says_how_many_it_dropped(
    cluster: LocalCluster, app_dir: Path
) -> None:
    receiver = SyslogReceiver()  # not listening yet: the endpoint is down
    await create_app(cluster, app_dir)
    await add_drain(cluster, receiver.url)

    async def failing() -> bool:
        return bool((await drain_row(cluster, receiver.url))["problem"])

    await wait_for(failing, timeout=30, what="the drain to report its endpoint down")
    await scale(cluster, "flood=1")

    async def flood_written() -> bool:
        result = await paas(cluster, "logs", "-n", "1", "-p", "flood.1", app=APP)
        return f"line {FLOOD - 1}" in result.stdout

    await wait_for(flood_written, timeout=60, what="the flood written")

    async def overflowing() -> bool:
        row = await drain_row(cluster, receiver.url)
        return bool(row["dropped"])

    await wait_for(overflowing, timeout=30, what="the drain's queue to overflow")
    await receiver.start()

    def accounted() -> bool:
        """Every line arrived, or those missing are counted in drop notices."""
        lines = receiver.numbered("flood.1")
        return bool(lines) and FLOOD - len(lines) <= receiver.dropped()

    async def delivering() -> bool:
        row = await drain_row(cluster, receiver.url)
        return not row["problem"]

    try:
        # Backing off, the drain tries again within 30 s of the endpoint's return.
        await wait_for(accounted, timeout=120, what="the queued lines and the drop notices")
        await wait_for(delivering, timeout=30, what="the drain to report no problem")
        lines = receiver.numbered("flood.1")
        assert lines == sorted(set(lines)), "a line repeated or out of order"
        missing = FLOOD - len(lines)
        # Never silently less: every line missing is in a notice (which may count a
        # few scheduler events dropped with them). The drain's own notices say what its
        # full queue dropped; an agent whose reader fell behind in the flood says so too.
        assert missing <= receiver.dropped(), (missing, receiver.dropped())
        assert missing > 0
        row = await drain_row(cluster, receiver.url)
        assert row["dropped"] == receiver.dropped(by_drain=True) > 0, row
        log = await app_log(cluster)
        assert f"Log drain {receiver.url} failing" in log
        caught_up = f"caught up: {receiver.dropped(by_drain=True)} lines were dropped"
        assert f"Log drain {receiver.url} {caught_up}" in log
    finally:
        await receiver.stop()


# ---------------------------------------------------------------- removal


async def test_a_removed_drain_receives_nothing_more(
    cluster: LocalCluster, app_dir: Path, syslog: SyslogReceiver, http: HTTPReceiver
) -> None:
    await create_app(cluster, app_dir)
    await add_drain(cluster, syslog.url)
    await add_drain(cluster, http.url)
    await scale(cluster, "ticker=1")
    await wait_for(lambda: len(syslog.numbered("ticker.1", "tick")) >= 3, timeout=60, what="ticks")
    removed = await paas(cluster, "drains", "remove", syslog.url, app=APP)
    assert removed.returncode == 0, removed.stderr
    assert f"Removed log drain {syslog.url}" in removed.stdout
    await wait_for(lambda: syslog.closed == syslog.connections, what="the connection closed")
    last = max(syslog.numbered("ticker.1", "tick"))
    # The drain still there hears of the removal, then ticks well beyond: the removed
    # one got none of them.
    await wait_for(
        lambda: any("removed" in text for text in http.texts("scheduler")),
        what="the removal event at the other drain",
    )
    await wait_for(
        lambda: max(http.numbered("ticker.1", "tick"), default=0) >= last + 10,
        timeout=60,
        what="ten more ticks at the other drain",
    )
    assert max(syslog.numbered("ticker.1", "tick")) == last
    assert [row["url"] for row in await list_drains(cluster)] == [http.url]
    again = await paas(cluster, "drains", "remove", syslog.url, app=APP)
    assert again.returncode == 1
    assert again.stderr.startswith("error: no log drain") and again.stderr.count("\n") == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "url",
    [
        "ftp://logs.example.com/x",
        "syslog://logs.example.com",
        "syslog://logs.example.com:99999",
        "syslog://:514",
        "logs.example.com:514",
        "http:///nohost",
    ],
)
async def test_bad_drain_urls_are_refused_and_nothing_is_stored(
    cluster: LocalCluster, app_dir: Path, url: str
) -> None:
    await create_app(cluster, app_dir)
    refused = await paas(cluster, "drains", "add", url, app=APP)
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    # The scheduler refuses it too, whatever the client.
    async with cluster.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pb_grpc.SchedulerStub(channel).AddDrain(pb.AddDrainRequest(app=APP, url=url))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await list_drains(cluster) == []


async def test_a_url_added_twice_an_unknown_app_and_no_url_are_refused(
    cluster: LocalCluster, app_dir: Path, syslog: SyslogReceiver
) -> None:
    await create_app(cluster, app_dir)
    await add_drain(cluster, syslog.url)
    twice = await paas(cluster, "drains", "add", syslog.url, app=APP)
    assert twice.returncode == 1
    assert "is already added to shop" in twice.stderr and twice.stderr.count("\n") == 1
    unknown = await paas(cluster, "drains", "add", syslog.url, app="nosuchapp")
    assert unknown.returncode == 1 and "unknown app 'nosuchapp'" in unknown.stderr
    no_url = await paas(cluster, "drains", "add", app=APP)
    assert no_url.returncode == 2
    assert len(await list_drains(cluster)) == 1
    listed = await paas(cluster, "drains", app=APP)
    assert listed.returncode == 0 and syslog.url in listed.stdout


# ---------------------------------------------------------------- a new leader


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        agents=2, node_grace=5.0, stop_grace=2.0, log_to=tmp_path / "logs", schedulers=2,
        leader_ttl=2,
    ) as started:  # fmt: skip
        yield started


async def test_a_new_leader_resumes_the_drain_repeating_only_a_few_seconds(
    replicated: LocalCluster, app_dir: Path, syslog: SyslogReceiver
) -> None:
    await create_app(replicated, app_dir)
    await add_drain(replicated, syslog.url)
    await scale(replicated, "ticker=1")
    await wait_for(
        lambda: len(syslog.numbered("ticker.1", "tick")) >= 25, timeout=60, what="25 ticks"
    )  # long enough for the progress to be saved (every 3 s)
    replicated.scheduler_process(0).send_signal(signal.SIGKILL)
    cut = max(syslog.numbered("ticker.1", "tick"))
    await wait_for(
        lambda: max(syslog.numbered("ticker.1", "tick")) >= cut + 25,
        timeout=90,
        what="ticks forwarded by the new leader",
    )
    ticks = syslog.numbered("ticker.1", "tick")
    counts: dict[int, int] = defaultdict(int)
    for tick in ticks:
        counts[tick] += 1
    assert set(counts) == set(range(1, max(ticks) + 1)), "a tick never arrived"
    repeated = [tick for tick, n in counts.items() if n > 1]
    # At least once: what the old leader sent after its last save comes again; the
    # save is every 3 s and ticks come five a second.
    assert len(repeated) <= 5 * 5, repeated
