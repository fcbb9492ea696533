"""Packing a directory into a slug: the same tree gives the same digest, .slugignore
and .git leave files out, and a tree that cannot travel is refused with one line."""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from paas.cli.slugpack import PackedSlug, SlugPackError, pack
from paas.common.slugs import check_digest


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "static").mkdir(parents=True)
    (root / "Procfile").write_text("web: python3 serve.py\n")
    (root / "serve.py").write_text("print('hello')\n")
    (root / "static" / "index.html").write_text("<h1>hello</h1>\n")
    return root


@pytest.fixture
def packed_slugs() -> Iterator[list[PackedSlug]]:
    made: list[PackedSlug] = []
    yield made
    for slug in made:
        slug.remove()


def packed(directory: Path, made: list[PackedSlug], **kwargs: object) -> PackedSlug:
    slug = pack(directory, **kwargs)  # type: ignore[arg-type]
    made.append(slug)
    return slug


def names(slug: PackedSlug) -> list[str]:
    with tarfile.open(slug.path, "r:gz") as tar:
        return tar.getnames()


def test_the_digest_is_the_sha256_of_the_file_and_its_size(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    slug = packed(app, packed_slugs)
    data = slug.path.read_bytes()
    assert check_digest(slug.digest) == hashlib.sha256(data).hexdigest()
    assert slug.size == len(data)
    assert slug.files == 3
    assert names(slug) == ["Procfile", "serve.py", "static", "static/index.html"]


def test_an_unchanged_tree_packs_to_the_same_digest_and_a_change_to_another(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    first = packed(app, packed_slugs)
    second = packed(app, packed_slugs)
    assert first.path != second.path
    assert first.digest == second.digest
    stat = (app / "serve.py").stat()
    (app / "serve.py").write_text("print('hellO')\n")
    os.utime(app / "serve.py", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    assert packed(app, packed_slugs).digest != first.digest


def test_entries_carry_modes_and_mtimes_but_no_owner(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    script = app / "serve.py"
    script.chmod(0o750)
    os.utime(script, (1_700_000_000, 1_700_000_000))
    with tarfile.open(packed(app, packed_slugs).path, "r:gz") as tar:
        entry = tar.getmember("serve.py")
        assert (entry.mode, entry.mtime) == (0o750, 1_700_000_000)
        for member in tar.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")


def test_slugignore_patterns_leave_files_out(app: Path, packed_slugs: list[PackedSlug]) -> None:
    (app / "logs").mkdir()
    (app / "logs" / "today.log").write_text("x")
    (app / "static" / "keep.log").write_text("x")
    (app / "static" / "big.bin").write_text("x")
    (app / "static" / "logs").mkdir()
    (app / "static" / "logs" / "nested.txt").write_text("x")
    (app / "big.bin").write_text("x")
    (app / "notes.md").write_text("x")
    (app / ".slugignore").write_text(
        "# comments and blank lines are fine\n"
        "\n"
        "*.log\n"
        "!static/keep.log\n"  # negation
        "/logs/\n"  # a directory, anchored: static/logs stays
        "/big.bin\n"  # anchored: static/big.bin stays
        "notes.md\n"
    )
    assert names(packed(app, packed_slugs)) == [
        ".slugignore",
        "Procfile",
        "serve.py",
        "static",
        "static/big.bin",
        "static/index.html",
        "static/keep.log",
        "static/logs",
        "static/logs/nested.txt",
    ]


def test_a_directory_pattern_leaves_its_whole_subtree_out(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    (app / "node_modules" / "left" / "deep").mkdir(parents=True)
    (app / "node_modules" / "left" / "deep" / "x.js").write_text("x")
    (app / ".slugignore").write_text("node_modules/\n")
    assert not [name for name in names(packed(app, packed_slugs)) if "node_modules" in name]


def test_git_is_always_left_out(app: Path, packed_slugs: list[PackedSlug]) -> None:
    (app / ".git" / "objects").mkdir(parents=True)
    (app / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (app / "static" / ".git").write_text("gitdir: ../elsewhere\n")  # a submodule's file
    (app / ".gitignore").write_text("*.pyc\n")
    assert names(packed(app, packed_slugs)) == [
        ".gitignore",
        "Procfile",
        "serve.py",
        "static",
        "static/index.html",
    ]


def test_a_relative_symlink_inside_the_tree_travels(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    (app / "static" / "home.html").symlink_to("index.html")
    (app / "assets").symlink_to("static")
    with tarfile.open(packed(app, packed_slugs).path, "r:gz") as tar:
        assert tar.getmember("static/home.html").linkname == "index.html"
        assert tar.getmember("assets").issym()
        assert "assets/index.html" not in tar.getnames(), "a link is not followed"


@pytest.mark.parametrize("target", ["../outside.txt", "static/../../outside.txt", "/etc/passwd"])
def test_a_symlink_out_of_the_tree_is_refused_with_one_line(
    app: Path, packed_slugs: list[PackedSlug], target: str
) -> None:
    (app.parent / "outside.txt").write_text("secret")
    (app / "link").symlink_to(target)
    with pytest.raises(SlugPackError) as raised:
        packed(app, packed_slugs)
    message = str(raised.value)
    assert message.startswith(f"{app / 'link'} is a symlink to ")
    assert target in message and "\n" not in message


def test_a_symlink_left_out_by_slugignore_is_not_refused(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    (app / "venv-python").symlink_to("/usr/bin/python3")
    (app / ".slugignore").write_text("venv-python\n")
    assert "venv-python" not in names(packed(app, packed_slugs))


def test_a_file_that_grows_while_it_is_packed_is_refused(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    def append(path: Path) -> None:
        if path.name == "serve.py":
            with path.open("a") as file:
                file.write("print('more')\n")

    with pytest.raises(SlugPackError, match=r"serve\.py changed while it was packed"):
        packed(app, packed_slugs, before_read=append)


def test_a_file_that_shrinks_while_it_is_packed_is_refused(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    def truncate(path: Path) -> None:
        if path.name == "index.html":
            path.write_text("")

    with pytest.raises(SlugPackError, match=r"index\.html changed while it was packed"):
        packed(app, packed_slugs, before_read=truncate)


def test_a_file_deleted_while_the_tree_is_packed_is_refused(
    app: Path, packed_slugs: list[PackedSlug]
) -> None:
    def delete(path: Path) -> None:
        if path.name == "Procfile":
            (app / "serve.py").unlink()  # listed with the directory, not yet looked at

    with pytest.raises(SlugPackError, match=r"serve\.py changed while it was packed"):
        packed(app, packed_slugs, before_read=delete)


def test_a_socket_is_refused_and_named(app: Path, packed_slugs: list[PackedSlug]) -> None:
    path = app / "static" / "s"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(SlugPackError) as raised:
            packed(app, packed_slugs)
    assert str(raised.value) == (
        f"{path} is a socket, which cannot travel in a slug: list it in {app / '.slugignore'}"
    )


def test_a_fifo_is_refused(app: Path, packed_slugs: list[PackedSlug]) -> None:
    os.mkfifo(app / "pipe")
    with pytest.raises(SlugPackError, match=r"pipe is a named pipe \(fifo\)"):
        packed(app, packed_slugs)


def test_a_refused_pack_leaves_no_temporary_file(app: Path, tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    (app / "link").symlink_to("/etc/passwd")
    with pytest.raises(SlugPackError):
        pack(app, temp_dir=temp)
    assert list(temp.iterdir()) == []
