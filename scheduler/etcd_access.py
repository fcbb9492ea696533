"""How the scheduler proves itself to etcd: TLS material and a user's password.

Owns reading and checking the `--etcd-cacert/--etcd-cert/--etcd-key/--etcd-user/
--etcd-password-file` inputs (and PAAS_ETCD_PASSWORD) into one `EtcdAccess` value.
It never dials etcd (etcd_client.py does) and never logs a secret: the password and
the key are left out of the value's repr.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from paas.common.errors import InvalidInput
from paas.scheduler.errors import SchedulerError

PASSWORD_ENV = "PAAS_ETCD_PASSWORD"


class EtcdAccessError(SchedulerError, InvalidInput):
    """A TLS or auth input for etcd is missing, unreadable or too widely readable: bad
    input to `paas scheduler`, refused before it starts (never an RPC's answer)."""


@dataclass(frozen=True)
class EtcdAccess:
    """PEM bytes for TLS (all empty: plaintext) and a user (empty: no auth)."""

    ca: bytes = field(default=b"", repr=False)
    cert: bytes = field(default=b"", repr=False)
    key: bytes = field(default=b"", repr=False)
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert)

    @property
    def secured(self) -> bool:
        """TLS or a user: then a scheduler that cannot get in says so and exits."""
        return self.tls or bool(self.user)


def _read(path: Path, what: str, private: bool = False) -> bytes:
    try:
        mode = path.stat().st_mode
        if private and mode & 0o077:
            raise EtcdAccessError(
                f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        return path.read_bytes()
    except OSError as exc:
        raise EtcdAccessError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_etcd_access(
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    user: str = "",
    password_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> EtcdAccess:
    """Read and check the files; the password comes from the file, else PAAS_ETCD_PASSWORD.

    Small files read once at start-up, before the event loop runs."""
    env = os.environ if environ is None else environ
    if (cert is None) != (key is None):
        raise EtcdAccessError("--etcd-cert and --etcd-key go together: give both or neither")
    if cert is not None and cacert is None:
        raise EtcdAccessError("--etcd-cert needs --etcd-cacert (the CA that signed etcd's)")
    ca_pem = _read(cacert, "etcd CA certificate") if cacert is not None else b""
    cert_pem = _read(cert, "etcd client certificate") if cert is not None else b""
    key_pem = _read(key, "etcd client key", private=True) if key is not None else b""
    password = ""
    if password_file is not None:
        raw = _read(password_file, "etcd password file", private=True)
        password = raw.decode(errors="replace").rstrip("\r\n")
    elif user:
        password = env.get(PASSWORD_ENV, "")
    if user and not password:
        raise EtcdAccessError(
            f"--etcd-user {user} needs a password: --etcd-password-file FILE or {PASSWORD_ENV}"
        )
    if password and not user:
        raise EtcdAccessError("an etcd password without --etcd-user: name the user too")
    return EtcdAccess(ca=ca_pem, cert=cert_pem, key=key_pem, user=user, password=password)
