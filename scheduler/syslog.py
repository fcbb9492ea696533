"""How log lines look on the wire to a log drain: RFC 5424 syslog messages, octet-counted.

One message per line, in RFC 5424's own layout:

    <190>1 2026-11-28T19:47:03.123456+00:00 d.1f0e... shop web.3 - - listening on 5003

PRI is facility local7 with severity info for stdout, err for stderr and
notice for paas's own lines; the timestamp is RFC 3339 with microseconds in
UTC; HOSTNAME is the drain's token (so the receiver can tell drains apart, as
with Heroku); APP-NAME the app; PROCID the instance (`web.3`, or `scheduler`);
MSGID and STRUCTURED-DATA both NIL (`- -`); MSG the line's text, UTF-8 without
a BOM.

This is not logplex's message format, though it borrows its ideas: logplex
leaves STRUCTURED-DATA out (one `-`, then the text), and its APP-NAME is `app`
for the app's output (`heroku` for the platform's lines), not the app's name.
A receiver that parses RFC 5424 reads paas's messages; one that splits
logplex's by position would take the second `-` for the first word of the text.

Framing, RFC 6587 octet counting: `LEN SP MESSAGE`, LEN the message's length
in bytes. A syslog drain gets a stream of such frames over TCP. An HTTP drain
gets a batch of them as the body of a POST with logplex's HTTP headers
(`Content-Type: application/logplex-1`, `Logplex-Msg-Count`, `Logplex-Frame-Id`,
`Logplex-Drain-Token`; see `logplex_headers`), the messages inside still in the
RFC 5424 layout above.

Pure functions: it formats bytes and never does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from paas.common.logformat import PAAS_STREAM, timestamp
from paas.proto import paas_pb2 as pb

LOGPLEX_CONTENT_TYPE = "application/logplex-1"
_FACILITY_LOCAL7 = 23
_SEVERITY = {"stderr": 3, PAAS_STREAM: 5}  # err, notice; anything else: info (6)
_NIL = "-"
# RFC 5424's limits on the header fields (printable US-ASCII, no spaces).
_MAX_HOSTNAME = 255
_MAX_APP_NAME = 48
_MAX_PROCID = 128


def priority(stream: str) -> int:
    """PRI of a line of `stream`: facility local7, severity by stream."""
    return _FACILITY_LOCAL7 * 8 + _SEVERITY.get(stream, 6)


def message(line: pb.LogLine, hostname: str) -> bytes:
    """The RFC 5424 message of one log line, sent under `hostname` (the drain token)."""
    header = " ".join(
        (
            f"<{priority(line.stream)}>1",
            timestamp(line.timestamp),
            _field(hostname, _MAX_HOSTNAME),
            _field(line.app, _MAX_APP_NAME),
            _field(line.instance, _MAX_PROCID),
            _NIL,  # MSGID
            _NIL,  # STRUCTURED-DATA
        )
    )
    return f"{header} {line.text}".encode(errors="replace")


def frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: the message's byte length, a space, the message."""
    return b"%d %s" % (len(msg), msg)


def frames(lines: Sequence[pb.LogLine], hostname: str) -> bytes:
    """The lines as consecutive octet-counted messages: a syslog TCP stream's bytes,
    or an application/logplex-1 body."""
    return b"".join(frame(message(line, hostname)) for line in lines)


def logplex_headers(count: int, frame_id: str, token: str) -> dict[str, str]:
    """The headers of a logplex POST of `count` messages. `frame_id` names the batch:
    a retry of the same batch carries the same one, so a receiver can drop repeats."""
    return {
        "Content-Type": LOGPLEX_CONTENT_TYPE,
        "Logplex-Msg-Count": str(count),
        "Logplex-Frame-Id": frame_id,
        "Logplex-Drain-Token": token,
    }


def _field(value: str, limit: int) -> str:
    """A header field as RFC 5424 allows it: printable ASCII without spaces, or `-`."""
    cleaned = "".join(c if "!" <= c <= "~" else "_" for c in value[:limit])
    return cleaned or _NIL
