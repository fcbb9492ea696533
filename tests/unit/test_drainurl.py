"""Drain URLs: what paas forwards to, and one clear error for everything else."""

from __future__ import annotations

import time

import pytest

from paas.common.drainurl import DrainURLError, parse_drain_url, redacted


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("syslog://logs.example.com:514", "syslog", "logs.example.com", 514),
        ("syslog://127.0.0.1:6514", "syslog", "127.0.0.1", 6514),
        ("syslog://[::1]:514", "syslog", "::1", 514),
        ("SYSLOG://Logs.Example.com:514/", "syslog", "logs.example.com", 514),
        ("http://collector.example.com/logs", "http", "collector.example.com", 80),
        ("https://collector.example.com/logs?key=1", "https", "collector.example.com", 443),
        ("http://127.0.0.1:8080/drain", "http", "127.0.0.1", 8080),
        ("https://user:secret@collector.example.com/x", "https", "collector.example.com", 443),
        ("  syslog://logs.example.com:514  ", "syslog", "logs.example.com", 514),
    ],
)
def test_accepted_urls_and_their_parts(url: str, scheme: str, host: str, port: int) -> None:
    parsed = parse_drain_url(url)
    assert (parsed.scheme, parsed.host, parsed.port) == (scheme, host, port)
    assert parsed.url == url.strip()
    assert parsed.is_syslog == (scheme == "syslog")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "no drain URL given"),
        ("logs.example.com:514", "expected syslog://HOST:PORT"),
        ("ftp://logs.example.com/x", "unsupported drain URL scheme 'ftp'"),
        ("syslog+tls://logs.example.com:6514", "TLS syslog is not supported yet"),
        ("syslog://logs.example.com", "needs a port"),
        ("syslog://logs.example.com:0", "invalid port 0"),
        ("syslog://logs.example.com:70000", "invalid port"),
        ("syslog://logs.example.com:abc", "invalid port"),
        ("syslog://:514", "names no host"),
        ("http:///path", "names no host"),
        ("syslog://logs.example.com:514/path", "has a path or query"),
        ("syslog://user:pw@logs.example.com:514", "cannot carry a user or password"),
        ("syslog://bad_host!:514", "invalid host"),
        ("syslog://999.1.1.1:514", "invalid host"),
        ("http://exa mple.com/", "blanks or control characters"),
        ("https://collector.example.com/x#frag", "#fragment"),
        ("syslog://a..b:514", "invalid host"),
        ("syslog://-a.b:514", "invalid host"),
        ("syslog://a-.b:514", "invalid host"),
        (f"syslog://{'a' * 64}.b:514", "invalid host"),
        (f"syslog://{'a.' * 127}b:514", "invalid host"),
        ("syslog://logs.example.com:\N{ARABIC-INDIC DIGIT FIVE}14", "invalid port"),
    ],
)
def test_refused_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(DrainURLError) as refused:
        parse_drain_url(url)
    message = str(refused.value)
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize("host", ["a" * 60 + "-", "a" * 30 + "." + "b" * 30 + "-", "a" * 300])
def test_a_long_bad_host_is_refused_at_once(host: str) -> None:
    # The scheduler checks AddDrain with this on its event loop: no backtracking
    # that grows with the length of the host (it once took seconds at 26 letters).
    started = time.perf_counter()
    with pytest.raises(DrainURLError, match="invalid host"):
        parse_drain_url(f"syslog://{host}:514")
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("host", ["a", "a.b", "a.b.", "x_y.example", "a" * 63 + ".b", "1a.com"])
def test_host_names_as_resolvers_take_them(host: str) -> None:
    assert parse_drain_url(f"syslog://{host}:514").host == host.lower()


def test_a_password_is_hidden_where_the_url_is_shown() -> None:
    assert redacted("https://user:secret@host.example/x") == "https://user:***@host.example/x"
    assert redacted("syslog://host.example:514") == "syslog://host.example:514"
