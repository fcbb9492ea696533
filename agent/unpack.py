"""Unpacking a slug's tar safely, and the manifest that later proves the tree unchanged.

A slug comes from the network and is never trusted. `unpack` extracts a gzip'd
tar into a fresh temporary directory beside the destination and renames it into
place only once the whole tree is written and described: a refused tar, a full
disk or any other failure leaves nothing behind. It refuses (UnsafeSlug):

- a name that is absolute, holds `..`, is overlong, or comes twice;
- a device, a fifo or any other type than file, directory and link;
- a symbolic link whose target is absolute or, resolved, lies outside the tree;
  a member under a symbolic link (nothing is ever written through one);
- a hard link to anything but a regular file met earlier in the same tar;
- more than `max_bytes` of file contents, or more than `max_members` members
  (a tar bomb), or a decompressed stream past those bounds (a huge pax header).

tarfile's own `data` filter runs after these checks (modes without setuid or
group/other write, no owners), so both have to agree before a member is written.

The Manifest lists every entry of the tree as written (type, mode, size, sha256
of a file, target of a link). `verify` compares a tree with it without following
links: a changed, missing or retyped entry is a difference. Entries the manifest
does not list are allowed, as an app may write caches (`__pycache__`) into its
working directory.

Everything here blocks (file I/O, hashing): callers run it in a thread.

    manifest = unpack(Path("slug.tar.gz"), Path("slugs/ab12..."), max_bytes=1 << 30)
    problem = verify(Path("slugs/ab12..."), manifest)   # "" when the tree is intact
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from paas.agent.errors import SlugDiskError, UnsafeSlug

DEFAULT_MAX_BYTES = 1 << 30  # file contents of one unpacked slug
DEFAULT_MAX_MEMBERS = 200_000
MAX_NAME = 1024  # characters of one member's path
MAX_COMPONENT = 255
# What the decompressed stream may hold beyond file contents: headers and padding.
HEADER_ALLOWANCE = 2048
READ_BLOCK = 1 << 20
TEMP_PREFIX = ".tmp-"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

FILE, DIR, LINK = "file", "dir", "link"


@dataclass(frozen=True)
class Entry:
    """One path of an unpacked tree, relative to its root, as written."""

    path: str
    kind: str  # FILE, DIR or LINK
    mode: int = 0  # permission bits (not for links)
    size: int = 0  # bytes of a file
    sha256: str = ""  # of a file's contents
    target: str = ""  # of a link


@dataclass(frozen=True)
class Manifest:
    """What `unpack` wrote: every entry, and the bytes of file contents in all."""

    entries: tuple[Entry, ...]
    size: int

    def to_json(self) -> str:
        return json.dumps({"size": self.size, "entries": [asdict(e) for e in self.entries]})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """The manifest in `text`; ValueError (or KeyError, TypeError) if it is not one."""
        data = json.loads(text)
        entries = tuple(Entry(**entry) for entry in data["entries"])
        return cls(entries, int(data["size"]))


def _normal(name: str) -> str:
    """A member's name as a relative path ("./a//b/" -> "a/b"), or UnsafeSlug."""
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeSlug(f"slug refused: {name!r} is an absolute path")
    if len(name) > MAX_NAME:
        raise UnsafeSlug(f"slug refused: a path of {len(name)} characters (at most {MAX_NAME})")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeSlug(f"slug refused: {name!r} holds '..'")
    if any(len(part) > MAX_COMPONENT for part in parts):
        raise UnsafeSlug(f"slug refused: {name!r} has a name over {MAX_COMPONENT} characters")
    if "\0" in name:
        raise UnsafeSlug(f"slug refused: {name!r} holds a NUL")
    return "/".join(parts) or "."


class _Guard:
    """The checks of every member, in the order the tar gives them, as a tarfile filter."""

    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.bytes = 0
        self.members = 0
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.links: set[str] = set()

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        self.members += 1
        if self.members > self.max_members:
            raise UnsafeSlug(f"slug refused: more than {self.max_members} members")
        name = _normal(member.name)
        if name == ".":
            return None  # the root itself: it exists already
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            kind = "fifo" if member.isfifo() else "device" if member.isdev() else "special file"
            raise UnsafeSlug(f"slug refused: {member.name!r} is a {kind}")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in self.links:
                raise UnsafeSlug(f"slug refused: {member.name!r} lies under the link {above!r}")
            if above in self.files:
                raise UnsafeSlug(f"slug refused: {member.name!r} lies under the file {above!r}")
        if name in self.files or name in self.links or (name in self.dirs and not member.isdir()):
            raise UnsafeSlug(f"slug refused: {member.name!r} comes twice")
        if member.issym():
            self._check_symlink(member, name)
            self.links.add(name)
        elif member.islnk():
            target = _normal(member.linkname)
            if target not in self.files:
                raise UnsafeSlug(
                    f"slug refused: hard link {member.name!r} to {member.linkname!r}, which is "
                    "no file of the slug before it"
                )
            self.files.add(name)
        elif member.isdir():
            self.dirs.add(name)
        else:
            self.bytes += member.size
            if self.bytes > self.max_bytes:
                raise UnsafeSlug(
                    f"slug refused: it unpacks to more than {_mib(self.max_bytes)} "
                    "(a tar bomb, or raise --slug-max-unpacked)"
                )
            self.files.add(name)
        try:
            filtered = tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise UnsafeSlug(f"slug refused: {exc}") from None
        return filtered.replace(name=name, deep=False)

    @staticmethod
    def _check_symlink(member: tarfile.TarInfo, name: str) -> None:
        target = member.linkname
        if not target or target.startswith("/") or "\0" in target:
            raise UnsafeSlug(
                f"slug refused: link {member.name!r} points to {target!r}, an absolute path"
            )
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeSlug(
                f"slug refused: link {member.name!r} points to {target!r}, outside the tree"
            )


class _Bounded:
    """A read-only stream that refuses to give more than `limit` bytes in all."""

    def __init__(self, raw: IO[bytes] | gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        data = self._raw.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise UnsafeSlug("slug refused: its tar decompresses past the size bound (a tar bomb)")
        return data


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def temp_sibling(dest: Path) -> Path:
    """A fresh name beside `dest`, in the same directory (so a rename is atomic)."""
    return dest.parent / f"{TEMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"


def unpack(
    tarball: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Manifest:
    """Extract `tarball` (gzip'd tar) to `dest`, which must not exist, and describe it.

    UnsafeSlug if the tar is refused, SlugDiskError if the disk fails or is full;
    either way nothing is left at `dest` nor beside it.
    """
    temp = temp_sibling(dest)
    temp.mkdir(mode=0o755)
    try:
        guard = _Guard(max_bytes, max_members)
        limit = max_bytes + HEADER_ALLOWANCE * max_members + (1 << 20)
        with gzip.open(tarball, "rb") as compressed:
            stream = _Bounded(compressed, limit)
            try:
                with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
                    tar.extractall(temp, filter=guard)
            except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeError) as exc:
                raise UnsafeSlug(f"slug refused: not a readable gzip'd tar ({exc})") from None
        manifest = describe(temp)
        os.rename(temp, dest)
        return manifest
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if exc.errno in DISK_ERRNOS:
            raise SlugDiskError(
                f"no space left on device while unpacking into {dest.parent}: {exc.strerror}"
            ) from None
        raise SlugDiskError(f"unpacking into {dest.parent} failed: {exc}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def describe(root: Path) -> Manifest:
    """The manifest of the tree at `root` as it is now; UnsafeSlug if a link leads out."""
    entries: list[Entry] = []
    total = 0
    real_root = os.path.realpath(root)
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(path)
                if real != real_root and not real.startswith(real_root + os.sep):
                    raise UnsafeSlug(f"slug refused: link {relative!r} leads outside the tree")
                entries.append(Entry(relative, LINK, target=os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(Entry(relative, DIR, mode=stat.S_IMODE(info.st_mode)))
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                entries.append(
                    Entry(
                        relative,
                        FILE,
                        mode=stat.S_IMODE(info.st_mode),
                        size=info.st_size,
                        sha256=_hash(path),
                    )
                )
            else:
                raise UnsafeSlug(f"slug refused: {relative!r} is no file, directory or link")
    return Manifest(tuple(entries), total)


def verify(root: Path, manifest: Manifest) -> str:
    """The first way the tree at `root` differs from `manifest`; "" if it matches."""
    for entry in manifest.entries:
        path = os.path.join(root, entry.path)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return f"{entry.path} is missing"
        except OSError as exc:
            return f"{entry.path}: {exc.strerror}"
        if entry.kind == LINK:
            if not stat.S_ISLNK(info.st_mode) or os.readlink(path) != entry.target:
                return f"{entry.path} is no longer the link it was"
            continue
        if stat.S_IMODE(info.st_mode) != entry.mode:
            return f"{entry.path} changed mode"
        if entry.kind == DIR:
            if not stat.S_ISDIR(info.st_mode):
                return f"{entry.path} is no longer a directory"
            continue
        if not stat.S_ISREG(info.st_mode):
            return f"{entry.path} is no longer a file"
        if info.st_size != entry.size:
            return f"{entry.path} changed size"
        try:
            if _hash(path) != entry.sha256:
                return f"{entry.path} changed content"
        except OSError as exc:
            return f"{entry.path}: {exc.strerror}"
    return ""


def _hash(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()
