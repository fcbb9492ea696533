"""What the CLI, the scheduler and the agents agree on about slugs.

A slug is an app's tree as a gzip-compressed tar, named by the sha256 of its
compressed bytes (64 lowercase hex digits). It travels in chunks of CHUNK_SIZE
bytes: each gRPC message stays well below the 4 MiB default, and each etcd value
below etcd's 1.5 MiB request limit. Pure: no I/O.
"""

from __future__ import annotations

import re

from paas.common.errors import InvalidInput

# Bytes per message on the wire (UploadSlug, FetchSlug) and per value in etcd.
CHUNK_SIZE = 512 * 1024
# The scheduler's default limit for one slug, compressed (--max-slug-size).
DEFAULT_MAX_SLUG_SIZE = 100 * 1024 * 1024

# How an agent's InstanceStatus.reason begins while an instance backs off because its
# slug cannot be had (fetched, checked, unpacked); `paas ps` shows that reason then.
NOT_READY = "slug not ready"

_DIGEST = re.compile(r"[0-9a-f]{64}")


class SlugError(InvalidInput):
    """A slug or its digest that breaks a rule; the message names which."""


def check_digest(digest: str) -> str:
    """`digest` if it is a sha256 in lowercase hex, else SlugError."""
    if not _DIGEST.fullmatch(digest):
        raise SlugError(f"invalid slug digest {digest!r}: want 64 lowercase hex digits (sha256)")
    return digest


def short_digest(digest: str) -> str:
    """The first 12 hex digits, as `paas deploy` and `paas ps` print it."""
    return digest[:12]


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB', as progress and `paas ps` print sizes."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
