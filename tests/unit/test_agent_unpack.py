"""The slug unpacker: a normal tree comes out whole and described; a hostile tar (a path
out of the tree, a link out, a device, a bomb) is refused with nothing left behind."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from paas.agent import unpack
from paas.agent.errors import SlugDiskError, UnsafeSlug

Member = Callable[[tarfile.TarFile], None]


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))

    return add


def special(name: str, kind: bytes, linkname: str = "", size: int = 0) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = kind, linkname, 0o755
        if size:
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
        else:
            tar.addfile(info)

    return add


def directory(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Member:
    return special(name, tarfile.SYMTYPE, target)


def hardlink(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, target)


def slug(tmp_path: Path, *members: Member) -> Path:
    path = tmp_path / "slug.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for add in members:
            add(tar)
    return path


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "slugs").mkdir()
    return tmp_path / "slugs" / "abc"


def test_a_normal_tree_unpacks_with_its_modes_and_inner_links(tmp_path: Path, dest: Path) -> None:
    tarball = slug(
        tmp_path,
        directory("./"),
        file("./Procfile", b"web: ./run\n"),
        file("./run", b"#!/bin/sh\necho hi\n", mode=0o755),
        directory("./lib"),
        file("./lib/a.txt", b"a" * 1000),
        symlink("./lib/current", "a.txt"),
        symlink("./top", "lib/../Procfile"),
        directory("./node_modules/.bin"),
        directory("./node_modules/tool"),
        file("./node_modules/tool/cli.js", b"//"),
        symlink("./node_modules/.bin/tool", "../tool/cli.js"),
        hardlink("./lib/b.txt", "./lib/a.txt"),
    )
    manifest = unpack.unpack(tarball, dest, max_bytes=10_000)
    assert (dest / "Procfile").read_text() == "web: ./run\n"
    assert stat.S_IMODE((dest / "run").stat().st_mode) == 0o755
    assert (dest / "lib" / "current").read_bytes() == b"a" * 1000
    assert os.readlink(dest / "node_modules/.bin/tool") == "../tool/cli.js"
    assert (dest / "lib" / "b.txt").stat().st_ino == (dest / "lib" / "a.txt").stat().st_ino
    paths = {entry.path: entry for entry in manifest.entries}
    assert paths["run"].kind == unpack.FILE and paths["run"].mode == 0o755
    assert paths["lib/current"].kind == unpack.LINK and paths["lib"].kind == unpack.DIR
    assert manifest.size == len(b"web: ./run\n#!/bin/sh\necho hi\n") + 2000 + 2
    assert unpack.verify(dest, manifest) == ""
    assert unpack.Manifest.from_json(manifest.to_json()) == manifest
    assert leftovers(dest.parent) == ["abc"]


def test_verify_names_a_changed_missing_or_retyped_entry(tmp_path: Path, dest: Path) -> None:
    tarball = slug(tmp_path, file("a", b"one"), file("b", b"two"), symlink("c", "a"))
    manifest = unpack.unpack(tarball, dest)
    (dest / "__pycache__").mkdir()  # what an app writes is no difference
    assert unpack.verify(dest, manifest) == ""
    (dest / "a").write_bytes(b"ONE")  # same size
    assert unpack.verify(dest, manifest) == "a changed content"
    (dest / "a").write_bytes(b"one")
    (dest / "b").unlink()
    assert unpack.verify(dest, manifest) == "b is missing"
    (dest / "b").write_bytes(b"two")
    (dest / "c").unlink()
    (dest / "c").symlink_to("b")
    assert unpack.verify(dest, manifest) == "c is no longer the link it was"
    (dest / "c").unlink()
    (dest / "c").symlink_to("a")
    (dest / "a").chmod(0o600)
    assert unpack.verify(dest, manifest) == "a changed mode"


HOSTILE: dict[str, tuple[list[Member], str]] = {
    "absolute path": ([file("/etc/evil")], "absolute path"),
    "dot-dot": ([file("../evil")], "holds '..'"),
    "dot-dot inside": ([directory("a"), file("a/../../evil")], "holds '..'"),
    "absolute symlink": ([symlink("etc", "/etc")], "absolute path"),
    "symlink out": ([directory("a"), symlink("a/up", "../../..")], "outside the tree"),
    "write through a symlink": (
        [directory("d"), symlink("d/here", "."), file("d/here/x")],
        "lies under the link",
    ),
    "symlink to the root's parent via a link": (
        [directory("d"), symlink("d/root", ".."), symlink("d/out", "root/../x")],
        "outside",
    ),
    "hard link out": ([hardlink("passwd", "../../etc/passwd")], "holds '..'"),
    "hard link to an absolute path": ([hardlink("passwd", "/etc/passwd")], "absolute path"),
    "hard link to no member": ([hardlink("passwd", "etc/passwd")], "no file of the slug"),
    "character device": ([special("null", tarfile.CHRTYPE)], "is a device"),
    "block device": ([special("sda", tarfile.BLKTYPE)], "is a device"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "is a fifo"),
    "a name twice": ([file("a"), symlink("a", "/etc/passwd")], "comes twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_tar_is_refused_and_leaves_nothing(tmp_path: Path, dest: Path, case: str) -> None:
    members, message = HOSTILE[case]
    tarball = slug(tmp_path, file("Procfile", b"web: x"), *members)
    with pytest.raises(UnsafeSlug, match=message):
        unpack.unpack(tarball, dest)
    assert leftovers(dest.parent) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_a_tar_bomb_over_the_size_bound_is_refused(tmp_path: Path, dest: Path) -> None:
    big = b"\0" * (3 << 20)  # compresses to a few KiB
    tarball = slug(tmp_path, file("a", big), file("b", big))
    assert tarball.stat().st_size < 100_000
    with pytest.raises(UnsafeSlug, match="unpacks to more than 5 MiB"):
        unpack.unpack(tarball, dest, max_bytes=5 << 20)
    assert leftovers(dest.parent) == []


def test_too_many_members_are_refused(tmp_path: Path, dest: Path) -> None:
    tarball = slug(tmp_path, *(file(f"f{i}") for i in range(20)))
    with pytest.raises(UnsafeSlug, match="more than 10 members"):
        unpack.unpack(tarball, dest, max_members=10)
    assert leftovers(dest.parent) == []


def test_a_huge_header_is_refused_before_it_is_read_whole(tmp_path: Path, dest: Path) -> None:
    # A pax header tarfile would read into memory: the decompressed stream is bounded.
    tarball = slug(tmp_path, special("x", tarfile.XHDTYPE, size=4 << 20), file("a"))
    with pytest.raises(UnsafeSlug):
        unpack.unpack(tarball, dest, max_bytes=1 << 20, max_members=10)
    assert leftovers(dest.parent) == []


def test_not_a_tar_is_refused(tmp_path: Path, dest: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all" * 100)
    with pytest.raises(UnsafeSlug, match="not a readable gzip'd tar"):
        unpack.unpack(junk, dest)
    assert leftovers(dest.parent) == []


def test_a_full_disk_while_unpacking_leaves_nothing_half_written(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = slug(tmp_path, file("a", b"1" * 100), file("b", b"2" * 100), file("c", b"3"))
    real = tarfile.TarFile.makefile
    written: list[str] = []

    def makefile(self: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        written.append(target)
        real(self, member, target)

    monkeypatch.setattr(tarfile.TarFile, "makefile", makefile)
    with pytest.raises(SlugDiskError, match="no space left on device"):
        unpack.unpack(tarball, dest)
    assert written  # one file was written before the disk was full
    assert leftovers(dest.parent) == []
