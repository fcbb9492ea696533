"""Packing an app's directory into a slug: a deterministic gzip-compressed tar.

Owns which files travel and how they are laid out, so that an unchanged tree
gives the same bytes, hence the same digest, and `paas deploy` uploads nothing
the scheduler already holds. Entries are sorted, the gzip header carries no
name and mtime 0, every entry has uid/gid 0 and no user or group names; file
modes and mtimes (whole seconds) are kept. The tar is written to a temporary
file while it is hashed (sha256 of the compressed bytes, common/slugs.py).

What is left out: `.git` at any depth, and whatever `DIR/.slugignore` names
(gitignore syntax, matched by `pathspec`; a directory left out takes its whole
subtree with it, as in git). The Procfile, `.env` and `paas.toml` travel like
any other file.

What is refused (SlugPackError, one line naming the path): a symlink that is
absolute or points out of DIR, a file that changes while it is read (size,
mtime or inode differ before and after), and special files (fifos, sockets,
devices): they cannot travel, so DIR/.slugignore must name them.

Blocking: `pack` reads the whole tree; async callers run it in
`asyncio.to_thread`. It never talks to the scheduler.

    packed = await asyncio.to_thread(pack, Path("examples/hello"))
    try:
        ...  # packed.digest, packed.size, packed.path
    finally:
        packed.remove()
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pathspec

from paas.cli.errors import CommandError
from paas.proto import paas_pb2 as pb

IGNORE_FILE = ".slugignore"
ALWAYS_LEFT_OUT = frozenset({".git"})
# zlib level 6: nearly the size of level 9 at a fraction of the time.
COMPRESS_LEVEL = 6


class SlugPackError(CommandError):
    """DIR cannot be packed as it is; the message names the path and why."""


@dataclass(frozen=True)
class PackedSlug:
    """A slug on local disk, in a temporary file the caller removes."""

    path: Path
    digest: str
    size: int
    files: int  # regular files and symlinks packed

    @property
    def slug(self) -> pb.Slug:
        return pb.Slug(digest=self.digest, size=self.size)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _HashingWriter:
    """A file object that hashes and counts what it writes to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def load_ignore(directory: Path) -> pathspec.GitIgnoreSpec:
    """DIR/.slugignore as a matcher (empty when there is none)."""
    path = directory / IGNORE_FILE
    lines: list[str] = []
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SlugPackError(f"cannot read {path}: {exc}") from None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def walk(directory: Path, ignore: pathspec.GitIgnoreSpec) -> Iterator[tuple[str, os.stat_result]]:
    """(relative POSIX path, lstat) of every entry that travels, sorted, depth first;
    a directory comes before what it holds."""

    def entries(relative: str) -> Iterator[tuple[str, os.stat_result]]:
        absolute = directory / relative if relative else directory
        try:
            names = sorted(os.listdir(absolute))
        except OSError as exc:
            raise SlugPackError(f"cannot read {absolute}: {exc.strerror}") from None
        for name in names:
            if name in ALWAYS_LEFT_OUT:
                continue
            path = f"{relative}/{name}" if relative else name
            try:
                info = os.lstat(directory / path)
            except FileNotFoundError:
                raise SlugPackError(changed_message(directory / path)) from None
            is_dir = stat.S_ISDIR(info.st_mode)
            if ignore.match_file(f"{path}/" if is_dir else path):
                continue
            yield path, info
            if is_dir:
                yield from entries(path)

    yield from entries("")


def check_link(directory: Path, relative: str) -> str:
    """The target of the symlink DIR/`relative`, if it stays inside DIR."""
    target = os.readlink(directory / relative)
    if os.path.isabs(target):
        raise SlugPackError(
            f"{directory / relative} is a symlink to the absolute path {target}: a slug "
            f"holds only the tree, so use a relative link inside it or list it in {IGNORE_FILE}"
        )
    resolved = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    if resolved == ".." or resolved.startswith("../"):
        raise SlugPackError(
            f"{directory / relative} is a symlink to {target}, out of {directory}: a slug "
            f"holds only the tree, so use a link inside it or list it in {IGNORE_FILE}"
        )
    return target


def pack(
    directory: Path,
    before_read: Callable[[Path], None] | None = None,
    temp_dir: Path | None = None,
) -> PackedSlug:
    """Pack `directory` into a temporary file; SlugPackError when it cannot be.

    `before_read(path)` is called for each regular file after it is first looked at
    and before it is read (a seam for progress and for tests of a changing tree).
    """
    directory = directory.resolve()
    ignore = load_ignore(directory)
    handle, name = tempfile.mkstemp(prefix="paas-slug-", suffix=".tar.gz", dir=temp_dir)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            writer = _HashingWriter(out)
            files = _write_tar(directory, ignore, writer, before_read)
        return PackedSlug(path, writer.sha256.hexdigest(), writer.size, files)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_tar(
    directory: Path,
    ignore: pathspec.GitIgnoreSpec,
    writer: _HashingWriter,
    before_read: Callable[[Path], None] | None,
) -> int:
    files = 0
    # filename="" and mtime=0: the gzip header names nothing and dates nothing.
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=writer, compresslevel=COMPRESS_LEVEL, mtime=0
        ) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, info in walk(directory, ignore):
            entry = _tar_info(relative, info)
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                entry.type = tarfile.DIRTYPE
                tar.addfile(entry)
            elif stat.S_ISLNK(mode):
                entry.type = tarfile.SYMTYPE
                entry.linkname = check_link(directory, relative)
                tar.addfile(entry)
                files += 1
            elif stat.S_ISREG(mode):
                _add_file(tar, directory / relative, entry, info, before_read)
                files += 1
            else:
                raise SlugPackError(
                    f"{directory / relative} is a {_kind(mode)}, which cannot travel in a "
                    f"slug: list it in {directory / IGNORE_FILE}"
                )
    return files


def _tar_info(relative: str, info: os.stat_result) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(relative)
    entry.mode = stat.S_IMODE(info.st_mode)
    entry.mtime = int(info.st_mtime)
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    return entry


def _add_file(
    tar: tarfile.TarFile,
    path: Path,
    entry: tarfile.TarInfo,
    before: os.stat_result,
    before_read: Callable[[Path], None] | None,
) -> None:
    changed = SlugPackError(changed_message(path))
    try:
        file = path.open("rb")
    except OSError as exc:
        raise SlugPackError(f"cannot read {path}: {exc.strerror}") from None
    with file:
        opened = os.fstat(file.fileno())
        if not _same(before, opened):
            raise changed
        if before_read is not None:
            before_read(path)
        entry.size = before.st_size
        try:
            tar.addfile(entry, _Exact(file, before.st_size))
        except _Short:
            raise changed from None
        if not _same(before, os.fstat(file.fileno())):
            raise changed


def changed_message(path: Path) -> str:
    return (
        f"{path} changed while it was packed: deploy again once it is quiet, or list it "
        f"in {IGNORE_FILE}"
    )


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ino,
    )


class _Short(Exception):
    """The file held fewer bytes than its size said."""


class _Exact:
    """Reads exactly `size` bytes of `file` (tarfile's copy), _Short if it ends early."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._left = size

    def read(self, count: int = -1) -> bytes:
        want = self._left if count < 0 else min(count, self._left)
        data = self._file.read(want)
        if len(data) < want:
            raise _Short()
        self._left -= len(data)
        return data


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (fifo)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def read_chunks(path: Path, size: int) -> Generator[bytes, None, None]:
    """The slug file's bytes in chunks of `size` (blocking; see client.upload_slug)."""
    with path.open("rb") as file:
        while chunk := file.read(size):
            yield chunk
