"""The leader's log drains: each app's whole log stream forwarded to syslog and HTTP endpoints.

For every drain stored in etcd the leader runs one `Forwarder`. It follows the
app's stream through the same merge `paas logs -f` reads (app output of every
instance on every node, and the scheduler's own `paas[scheduler]` events),
keeps what the endpoint has not taken yet in a queue of about QUEUE_LINES
lines, and sends it in batches: RFC 5424 frames over one TCP connection to a
syslog drain, logplex POSTs to an HTTP one (`syslog.py` makes the bytes).

It never slows the app or the leader. While an endpoint is slow or down the
forwarder retries the same batch, waiting RETRY_FIRST seconds doubling to
RETRY_MAX; while its queue is full it reads no more of the stream, so the merge
and the agents hold back (they keep the lines in their buffers and spools, and
serve them from its cursors when it reads again): a drain that recovers gets
every line still kept. `dropped` counts only lines that left retention before
the drain got to them (the agents' notices say how many, and go out to the
drain where the gap is). An endpoint that starts or stops failing is a
scheduler event in the app's log.

Delivery is at least once across a change of leader: every SAVE_EVERY seconds
the forwarder saves in etcd the last line delivered of each (node, instance)
and a time before which everything was delivered; a new leader resumes from
there, so it repeats at most the lines of those few seconds. Within one
leader a batch whose delivery failed is sent again whole (an HTTP batch keeps
its Logplex-Frame-Id, so the receiver can drop the repeat).

    drains = Drains(store, events, stream=reader.merged_batches)  # logreader.LogReader
    drains.on_leadership(True)     # start a forwarder per stored drain
    drains.kick()                  # a drain was added: look again
    await drains.forget(app, url)  # a drain was removed: stop it now

It decides nothing about which lines an app has or their order (the merge,
logreader.py and logmerge.py, does), never reaches into the API, and builds no
etcd key (store.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Protocol

import aiohttp

from paas.common.drainurl import DrainURL, parse_drain_url, redacted
from paas.common.logformat import lost_count, timestamp
from paas.common.logruns import lines_of_runs
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import DeliveryError
from paas.scheduler.events import EventLog, notice
from paas.scheduler.logmerge import Cursors
from paas.scheduler.logreader import LogStream
from paas.scheduler.store import (
    ConflictError,
    DrainProgress,
    DrainRecord,
    NotLeaderError,
    Store,
    StoreError,
)
from paas.scheduler.syslog import frames, logplex_headers

log = logging.getLogger(__name__)

# Lines a drain holds for its endpoint; with this many it reads no more until some go.
QUEUE_LINES = 10_000
# A failed batch is sent again after RETRY_FIRST seconds, doubling up to RETRY_MAX.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# How often a drain's progress is saved in etcd: what a new leader may repeat.
SAVE_EVERY = 3.0
# One connection attempt, one write, one POST: longer is a failure.
SEND_TIMEOUT = 10.0
# A resumed drain reads at most this much history (the queue bounds what it keeps).
RESUME_LINES = 100_000
# How much earlier than the oldest undelivered line a resumed drain starts: lines of
# instances it has no cursor of yet, still held by the merge or on their way.
RESUME_MARGIN = 2.0
# A reader whose stream ended (it should not) starts again after this.
REREAD_AFTER = 1.0
SYSLOG_BATCH_LINES = 1024
HTTP_BATCH_LINES = 500


class Endpoint(Protocol):
    """Where a drain's batches go."""

    batch_lines: int

    async def send(self, lines: Sequence[pb.LogLine], batch_id: str) -> None:
        """Deliver `lines` or raise DeliveryError; `batch_id` is the same on a retry."""

    async def close(self) -> None: ...


class SyslogEndpoint:
    """RFC 5424 messages, octet-counted, over one TCP connection, opened again when it
    breaks. A syslog receiver never answers, so delivered means written to the socket:
    what the kernel held when a connection broke may be lost (as with any syslog/TCP)."""

    batch_lines = SYSLOG_BATCH_LINES

    def __init__(self, target: DrainURL, token: str) -> None:
        self._target = target
        self._token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, lines: Sequence[pb.LogLine], batch_id: str) -> None:
        where = f"{self._target.host}:{self._target.port}"
        if self._reader is not None and self._reader.at_eof():
            await self.close()  # the receiver hung up: a write might still "succeed"
        if self._writer is None:
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    self._reader, self._writer = await asyncio.open_connection(
                        self._target.host, self._target.port
                    )
            except TimeoutError:
                raise DeliveryError(f"cannot connect to {where}: timed out") from None
            except OSError as exc:
                raise DeliveryError(f"cannot connect to {where}: {_reason(exc)}") from None
        try:
            self._writer.write(frames(lines, self._token))
            async with asyncio.timeout(SEND_TIMEOUT):
                await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            await self.close()
            reason = "it takes nothing (timed out)" if isinstance(exc, TimeoutError) else exc
            raise DeliveryError(f"sending to {where} failed: {_reason(reason)}") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


class HTTPEndpoint:
    """Batches POSTed in Heroku's application/logplex-1 framing; any 2xx answer means
    delivered. A user and password in the URL go as basic authentication."""

    batch_lines = HTTP_BATCH_LINES

    def __init__(self, target: DrainURL, token: str) -> None:
        self._target = target
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def send(self, lines: Sequence[pb.LogLine], batch_id: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT),
                headers={"User-Agent": "paas-logdrain"},
            )
        where = f"{self._target.host}:{self._target.port}"
        try:
            async with self._session.post(
                self._target.url,
                data=frames(lines, self._token),
                headers=logplex_headers(len(lines), batch_id, self._token),
                allow_redirects=False,
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(
                        f"{where} answered HTTP {response.status} {response.reason or ''}".strip()
                    )
        except TimeoutError:
            raise DeliveryError(f"{where} did not answer within {SEND_TIMEOUT:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"cannot POST to {where}: {_reason(exc)}") from None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def endpoint_for(drain: DrainRecord) -> Endpoint:
    target = parse_drain_url(drain.url)
    if target.is_syslog:
        return SyslogEndpoint(target, drain.token)
    return HTTPEndpoint(target, drain.token)


class Forwarder:
    """One drain: follows its app's stream, queues, sends, retries, saves progress."""

    def __init__(
        self,
        drain: DrainRecord,
        progress: DrainProgress | None,
        stream: LogStream,
        store: Store,
        events: EventLog,
        endpoint: Endpoint | None = None,
        app_id: str = "",
    ) -> None:
        self.drain = drain
        self._app_id = app_id  # the app's id: its lines of no other app of the same name
        start = progress or DrainProgress(cursors={}, since=drain.created_at)
        # Since the drain was added (saved with its progress, so they survive a new
        # leader; lines sent after the last save and sent again then count twice).
        self.sent = start.sent  # lines delivered
        self.dropped = start.lost  # lines that left retention before it got to them
        self.problem = ""  # the last delivery failure, "" while it delivers
        self._stream = stream
        self._store = store
        self._events = events
        self._endpoint = endpoint or endpoint_for(drain)
        self._name = redacted(drain.url)
        self._queue: deque[pb.LogLine] = deque()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()  # lines went out: a full queue may have room again
        self._delivered = dict(start.cursors)  # (node, instance) -> last seq delivered
        self._read = Cursors.of(start.cursors)  # ... read from the stream
        self._since = start.since
        self._read_up_to = start.since  # the newest line read
        if start.dropped:
            # A leader of before cursors dropped lines it did not report: this one does.
            self._queue.append(self._notice(f"{start.dropped} lines dropped", start.since))
            self.dropped += start.dropped
        self._saved: DrainProgress | None = progress
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self._save_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._endpoint.close()

    def view(self) -> pb.LogDrain:
        return pb.LogDrain(
            app=self.drain.app,
            url=self.drain.url,
            token=self.drain.token,
            sent=self.sent,
            dropped=self.dropped,
            problem=self.problem,
        )

    # ------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        while True:
            request = pb.LogsRequest(
                app=self.drain.app,
                app_id=self._app_id,
                follow=True,
                lines=RESUME_LINES,
                since=max(self._since, self._read_up_to - RESUME_MARGIN),
                after=self._read.all(),
            )
            try:
                async for batch in self._stream(request):
                    self._offer(batch.runs)
                    while len(self._queue) >= QUEUE_LINES:
                        # Read no more: the stream waits, and upstream keeps the lines.
                        self._taken.clear()
                        await self._taken.wait()
                log.warning("drain %s of %s: the log stream ended", self._name, self.drain.app)
            except Exception:
                # A bug must not end forwarding for good: say so loudly and go on.
                log.exception(
                    "drain %s of %s: following the log failed", self._name, self.drain.app
                )
            await asyncio.sleep(REREAD_AFTER)

    def _offer(self, runs: Sequence[pb.LogRun]) -> None:
        """Queue the lines it has not had; count those notices say left retention."""
        # Not what it had (a restarted reader's overlap); a line each, as they are sent.
        fresh = lines_of_runs(self._read.fresh(runs))
        if not fresh:
            return
        self._read_up_to = max(self._read_up_to, fresh[-1].timestamp)
        self._queue.extend(fresh)
        for line in fresh:
            if not line.seq:
                self.dropped += lost_count(line.text)
        self._arrived.set()

    def _notice(self, text: str, first: float) -> pb.LogLine:
        return notice(
            self.drain.app,
            f"{text} since {timestamp(first)} (the log drain was slow or unreachable)",
        )

    # ------------------------------------------------------------ sending

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = list(islice(self._queue, self._endpoint.batch_lines))
            await self._deliver(batch)
            for _ in batch:
                self._queue.popleft()
            self._taken.set()
            self.sent += len(batch)
            for line in batch:
                if line.seq:
                    self._delivered[(line.node, line.instance)] = line.seq

    async def _deliver(self, batch: list[pb.LogLine]) -> None:
        """Send `batch` until the endpoint takes it, waiting longer after each failure."""
        batch_id = uuid.uuid4().hex
        delay = RETRY_FIRST
        while True:
            try:
                await self._endpoint.send(batch, batch_id)
            except DeliveryError as exc:
                if not self.problem:
                    log.warning("drain %s of %s: %s", self._name, self.drain.app, exc)
                    self._events.add(
                        self.drain.app,
                        f"Log drain {self._name} failing: {exc}; retrying, lines wait "
                        "where they are kept until it delivers again",
                    )
                self.problem = str(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            if self.problem:
                self.problem = ""
                log.info("drain %s of %s delivers again", self._name, self.drain.app)
                self._events.add(self.drain.app, f"Log drain {self._name} delivers again")
            return

    # ------------------------------------------------------------ progress

    def progress(self) -> DrainProgress:
        """What a new leader resumes from: cursors of what was delivered, a time
        before which every line was delivered, the drops not yet reported."""
        oldest = self._queue[0].timestamp if self._queue else self._read_up_to
        return DrainProgress(
            cursors=dict(self._delivered),
            since=max(self._since, oldest - RESUME_MARGIN),
            sent=self.sent,
            lost=self.dropped,
        )

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            progress = self.progress()
            saved = self._saved
            if (
                saved is not None
                and saved.cursors == progress.cursors
                and saved.lost == progress.lost
            ):
                continue  # nothing new delivered: spare etcd the write
            try:
                await self._store.save_drain_progress(self.drain, progress)
            except (ConflictError, NotLeaderError):
                return  # removed, or no longer ours to save
            except StoreError as exc:
                log.warning(
                    "drain %s of %s: cannot save progress: %s", self._name, self.drain.app, exc
                )
                continue
            self._saved = progress


class Drains:
    """The leader's forwarders, one per stored drain: started when this replica leads,
    stopped when it no longer does or the drain is removed."""

    def __init__(self, store: Store, events: EventLog, stream: LogStream) -> None:
        self._store = store
        self._events = events
        self._stream = stream
        self._forwarders: dict[tuple[str, str], Forwarder] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_leadership(self, leading: bool) -> None:
        if leading and self._task is None:
            self._task = asyncio.create_task(self._run())
        elif not leading and self._task is not None:
            self._task.cancel()
            self._task = None

    def kick(self) -> None:
        """Say: the stored drains may have changed, look again."""
        self._dirty.set()

    async def forget(self, app: str, url: str) -> None:
        """Stop the forwarder of a drain just removed, before the call returns."""
        forwarder = self._forwarders.pop((app, url), None)
        if forwarder is not None:
            await forwarder.stop()
        self.kick()

    def view(self, drain: DrainRecord) -> pb.LogDrain:
        """The drain with its forwarder's counts (zero until it started)."""
        forwarder = self._forwarders.get((drain.app, drain.url))
        if forwarder is not None and forwarder.drain.token == drain.token:
            return forwarder.view()
        return pb.LogDrain(app=drain.app, url=drain.url, token=drain.token)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # This run's own forwarders: a run cancelled as the next starts stops only them.
        forwarders = self._forwarders = {}
        try:
            self.kick()
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    await self._sync()
                except NotLeaderError:
                    return
                except StoreError as exc:
                    log.warning("log drains: cannot read them, retrying: %s", exc)
                    await asyncio.sleep(1.0)
                    self.kick()
        finally:
            if self._forwarders is forwarders:
                self._forwarders = {}
            await asyncio.shield(asyncio.gather(*(f.stop() for f in forwarders.values())))

    async def _sync(self) -> None:
        """Run a forwarder for each stored drain, and none for any other."""
        wanted = {(d.app, d.url): d for d in await self._store.drains()}
        apps = await self._store.apps() if wanted.keys() - self._forwarders.keys() else {}
        for key, forwarder in list(self._forwarders.items()):
            if key not in wanted or wanted[key].token != forwarder.drain.token:
                del self._forwarders[key]
                await forwarder.stop()
        for key, drain in wanted.items():
            if key in self._forwarders:
                continue
            progress = await self._store.drain_progress(drain)
            app = apps.get(drain.app)
            forwarder = Forwarder(
                drain,
                progress,
                self._stream,
                self._store,
                self._events,
                app_id=app.id if app else "",
            )
            self._forwarders[key] = forwarder
            forwarder.start()
            log.info(
                "drain %s of %s: forwarding%s",
                redacted(drain.url),
                drain.app,
                " (resumed)" if progress else "",
            )


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
