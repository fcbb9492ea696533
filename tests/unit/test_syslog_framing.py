"""What a drain receives: RFC 5424 messages, octet-counted (RFC 6587), and logplex POSTs."""

from __future__ import annotations

import re

from paas.proto import paas_pb2 as pb
from paas.scheduler.syslog import (
    LOGPLEX_CONTENT_TYPE,
    frame,
    frames,
    logplex_headers,
    message,
    priority,
)

TOKEN = "d.0e3f7c2a-4a3b-4c1e-9d2f-1b2c3d4e5f60"
# 2026-11-28T19:47:03.123456+00:00
STAMP = 1795895223.123456

# RFC 5424 HEADER SP STRUCTURED-DATA [SP MSG], with the fields this project fills.
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 "
    r"(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    r"(?P<msgid>[!-~]{1,32}) (?P<sd>-)(?: (?P<msg>.*))?",
    re.DOTALL,
)


def line(text: str, instance: str = "web.3", stream: str = "stdout") -> pb.LogLine:
    return pb.LogLine(timestamp=STAMP, app="shop", instance=instance, stream=stream, text=text)


def unframe(data: bytes) -> list[bytes]:
    """An RFC 6587 octet-counting reader, as a receiver has one."""
    messages = []
    while data:
        length, space, rest = data.partition(b" ")
        assert space and length.isdigit(), data[:40]
        messages.append(rest[: int(length)])
        data = rest[int(length) :]
    return messages


def test_a_line_becomes_an_rfc5424_message_as_heroku_writes_them() -> None:
    msg = message(line("listening on 5003"), TOKEN)
    assert msg == (
        b"<190>1 2026-11-28T19:47:03.123456+00:00 "
        b"d.0e3f7c2a-4a3b-4c1e-9d2f-1b2c3d4e5f60 shop web.3 - - listening on 5003"
    )
    fields = RFC5424.fullmatch(msg.decode())
    assert fields is not None
    assert fields["hostname"] == TOKEN
    assert (fields["app"], fields["procid"], fields["msg"]) == (
        "shop",
        "web.3",
        "listening on 5003",
    )


def test_severity_follows_the_stream_in_facility_local7() -> None:
    assert priority("stdout") == 23 * 8 + 6
    assert priority("stderr") == 23 * 8 + 3
    assert priority("paas") == 23 * 8 + 5
    event = message(line("Scaled to web@2", instance="scheduler", stream="paas"), TOKEN)
    assert event.startswith(b"<189>1 ")
    assert b" shop scheduler - - Scaled to web@2" in event


def test_octet_count_is_the_length_in_bytes_not_characters() -> None:
    msg = message(line("café ☕ done"), TOKEN)
    framed = frame(msg)
    count, _, rest = framed.partition(b" ")
    assert int(count) == len(msg) == len(rest)
    assert len(msg) > len(msg.decode())
    assert rest.decode().endswith("café ☕ done")


def test_frames_of_a_batch_read_back_one_message_per_line_in_order() -> None:
    texts = ["first", "", "has  two spaces", "ünïcödé", "x" * 10_000]
    data = frames([line(t) for t in texts], TOKEN)
    messages = unframe(data)
    assert len(messages) == len(texts)
    for raw, text in zip(messages, texts, strict=True):
        fields = RFC5424.fullmatch(raw.decode())
        assert fields is not None, raw[:80]
        assert (fields["msg"] or "") == text


def test_empty_or_spaced_header_fields_stay_parseable() -> None:
    msg = message(line("hi", instance=""), "")
    assert msg.endswith(b" - shop - - - hi")
    odd = message(pb.LogLine(timestamp=STAMP, app="my app", instance="web 1", text="x"), TOKEN)
    fields = RFC5424.fullmatch(odd.decode())
    assert fields is not None
    assert (fields["app"], fields["procid"]) == ("my_app", "web_1")


def test_logplex_post_headers_count_the_messages_and_name_the_batch() -> None:
    body = frames([line("a"), line("b"), line("c")], TOKEN)
    headers = logplex_headers(3, "frame-1", TOKEN)
    assert headers["Content-Type"] == LOGPLEX_CONTENT_TYPE == "application/logplex-1"
    assert headers["Logplex-Msg-Count"] == "3" == str(len(unframe(body)))
    assert headers["Logplex-Frame-Id"] == "frame-1"
    assert headers["Logplex-Drain-Token"] == TOKEN
