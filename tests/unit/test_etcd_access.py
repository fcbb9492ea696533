"""load_etcd_access: which inputs go together, where the password comes from, key modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from paas.scheduler.etcd_access import EtcdAccessError, load_etcd_access


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_nothing_given_is_plaintext_without_a_user() -> None:
    access = load_etcd_access(environ={"PAAS_ETCD_PASSWORD": "ignored without a user"})
    assert not access.tls and not access.secured and access.password == ""


def test_the_password_file_wins_over_the_environment_and_loses_its_newline(
    tmp_path: Path,
) -> None:
    secret = write(tmp_path / "pw", "s3cret\n")
    access = load_etcd_access(
        user="paas", password_file=secret, environ={"PAAS_ETCD_PASSWORD": "other"}
    )
    assert access.password == "s3cret" and access.secured
    assert "s3cret" not in repr(access)


def test_the_environment_gives_the_password_when_there_is_no_file() -> None:
    access = load_etcd_access(user="paas", environ={"PAAS_ETCD_PASSWORD": "from-env"})
    assert access.password == "from-env"


def test_a_user_without_a_password_is_refused() -> None:
    with pytest.raises(EtcdAccessError, match="needs a password"):
        load_etcd_access(user="paas", environ={})


def test_a_cert_without_its_key_or_ca_is_refused(tmp_path: Path) -> None:
    cert = write(tmp_path / "c.crt", "cert", 0o644)
    with pytest.raises(EtcdAccessError, match="go together"):
        load_etcd_access(cert=cert)
    key = write(tmp_path / "c.key", "key")
    with pytest.raises(EtcdAccessError, match="needs --etcd-cacert"):
        load_etcd_access(cert=cert, key=key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_others_can_read_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    ca = write(tmp_path / "ca.crt", "ca", 0o644)
    cert = write(tmp_path / "c.crt", "cert", 0o644)
    key = write(tmp_path / "c.key", "key", mode)
    with pytest.raises(EtcdAccessError, match=f"mode {mode:04o}.*chmod 600"):
        load_etcd_access(cacert=ca, cert=cert, key=key)


def test_a_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(EtcdAccessError, match=r"cannot read etcd CA certificate .*missing"):
        load_etcd_access(cacert=tmp_path / "missing")
