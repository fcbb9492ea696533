"""Drain URLs: what paas forwards to, and one clear error for everything else."""

from __future__ import annotations

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
    ],
)
def test_refused_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(DrainURLError) as refused:
        parse_drain_url(url)
    message = str(refused.value)
    assert problem in message
    assert "\n" not in message


def test_a_password_is_hidden_where_the_url_is_shown() -> None:
    assert redacted("https://user:secret@host.example/x") == "https://user:***@host.example/x"
    assert redacted("syslog://host.example:514") == "syslog://host.example:514"
