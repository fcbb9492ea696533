"""Log drain URLs: which ones paas can forward to, checked the same in the CLI and the scheduler.

    syslog://HOST:PORT          RFC 5424 messages over TCP, octet-counted (RFC 6587)
    http://HOST[:PORT]/PATH     POSTs of batches in Heroku's application/logplex-1 framing
    https://HOST[:PORT]/PATH    the same over TLS; user:password@ in the URL is sent as
                                basic authentication

It only reads the text; it never resolves a host or opens a connection.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from paas.common.errors import InvalidInput

SCHEMES = ("syslog", "http", "https")
# A DNS name as resolvers take it: at most 253 characters of dot-separated labels,
# each 1 to 63 letters, digits, '-' and '_', not starting or ending with '-'. One
# label at a time: a single pattern for the whole name with an optional dot
# backtracks exponentially on a long bad name (the scheduler runs this too).
_MAX_HOST_NAME = 253
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_MAX_URL = 2048


class DrainURLError(InvalidInput):
    """A drain URL paas cannot forward to; the message names the URL and the fix."""


@dataclass(frozen=True)
class DrainURL:
    """A checked drain URL and its parts."""

    url: str  # as given, less surrounding blanks
    scheme: str  # syslog, http or https
    host: str  # IPv6 without brackets
    port: int  # the default of http(s) when the URL has none

    @property
    def is_syslog(self) -> bool:
        return self.scheme == "syslog"


def parse_drain_url(text: str) -> DrainURL:
    """Check `text` as a drain URL; raise DrainURLError saying what is wrong."""
    url = text.strip()
    if not url:
        raise DrainURLError("no drain URL given: e.g. syslog://logs.example.com:514")
    if len(url) > _MAX_URL:
        raise DrainURLError(f"drain URL is longer than {_MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise DrainURLError(f"invalid drain URL {url!r}: it contains blanks or control characters")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise DrainURLError(
            f"invalid drain URL {url!r}: expected syslog://HOST:PORT or https://HOST/PATH"
        )
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        hint = " (TLS syslog is not supported yet: use https://)" if scheme == "syslog+tls" else ""
        raise DrainURLError(
            f"unsupported drain URL scheme {scheme!r} in {url!r}: use syslog, http or https{hint}"
        )
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise DrainURLError(
            f"invalid port in drain URL {url!r}: expected a number from 1 to 65535"
        ) from None
    host = parts.hostname or ""
    if not host:
        raise DrainURLError(f"drain URL {url!r} names no host")
    if not _valid_host(host):
        raise DrainURLError(f"invalid host {host!r} in drain URL {url!r}")
    if port == 0:
        raise DrainURLError(f"invalid port 0 in drain URL {url!r}: expected 1 to 65535")
    if scheme == "syslog":
        if port is None:
            raise DrainURLError(f"syslog drain URL {url!r} needs a port: syslog://HOST:PORT")
        if parts.username is not None or parts.password is not None:
            raise DrainURLError(f"syslog drain URL {url!r} cannot carry a user or password")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise DrainURLError(
                f"syslog drain URL {url!r} has a path or query: expected syslog://HOST:PORT"
            )
    elif parts.fragment:
        raise DrainURLError(f"drain URL {url!r} has a #fragment, which is never sent")
    if port is None:
        port = 443 if scheme == "https" else 80
    return DrainURL(url=url, scheme=scheme, host=host, port=port)


def redacted(url: str) -> str:
    """`url` with any password hidden, for logs and events (the app's own log stream)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _valid_host_name(host) and not host.replace(".", "").isdigit()
    return True


def _valid_host_name(host: str) -> bool:
    if not 0 < len(host) <= _MAX_HOST_NAME:
        return False
    labels = host.removesuffix(".").split(".")  # a trailing dot: the name is absolute
    return all(_LABEL.fullmatch(label) for label in labels)
