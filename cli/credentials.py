"""The CLI's side of the cluster's trust: which credentials it presents, and the commands
that make them: `paas cluster init`, `paas credentials create|revoke`, `paas credentials`.

What the CLI presents: `--insecure` or PAAS_INSECURE=1 for plaintext (to an
`--insecure` scheduler); else the credentials file of `--credentials FILE`, else
$PAAS_CREDENTIALS, else ~/.config/paas/credentials. A file that is missing or looser
than 0600 is one line naming it and how to get one; nothing is sent.

`paas credentials create NAME` makes the key here and sends only a CSR: the scheduler
signs it (role admin, that name) and the key never leaves this host. The new file is
written 0600 to --out (default ./NAME.credentials), never over an existing file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from paas.cli import render
from paas.cli.client import SchedulerClient
from paas.cli.errors import CommandError
from paas.cli.timespec import parse_duration
from paas.common.names import check_credential_name
from paas.common.pki import (
    ADMIN_CERT_FILE,
    ADMIN_CREDENTIALS_FILE,
    FIRST_ADMIN_TTL,
    CertificateAuthority,
    Credentials,
    Identity,
    PKIError,
    Role,
    generate_key,
    load_cert_pem,
    make_csr,
    read_credentials,
    write_credentials,
    write_sans,
)

DEFAULT_CREDENTIALS = Path("~/.config/paas/credentials")
# The CA name of a local cluster (`paas up`): its credentials may replace each other at
# the default path, and nothing else's.
LOCAL_CA_NAME = "paas up local cluster CA"
FIRST_ADMIN_NAME = "admin"
_TRUE = ("1", "true", "yes", "on")


def insecure(args: argparse.Namespace) -> bool:
    """--insecure, or PAAS_INSECURE=1."""
    if getattr(args, "insecure", False):
        return True
    return os.environ.get("PAAS_INSECURE", "").strip().lower() in _TRUE


def credentials_path(args: argparse.Namespace) -> tuple[Path, str]:
    """The credentials file to present, and what named it (for the error line)."""
    given = getattr(args, "credentials", None)
    if given:
        return Path(given).expanduser(), "--credentials"
    env = os.environ.get("PAAS_CREDENTIALS", "").strip()
    if env:
        return Path(env).expanduser(), "PAAS_CREDENTIALS"
    return DEFAULT_CREDENTIALS.expanduser(), "the default"


def client_tls(args: argparse.Namespace) -> Credentials | None:
    """What the CLI presents to the scheduler: None for plaintext (--insecure)."""
    if insecure(args):
        return None
    path, source = credentials_path(args)
    if not path.exists():
        raise CommandError(
            f"no credentials at {path} ({source}): `paas up` prints the `export "
            "PAAS_CREDENTIALS=...` line, `paas cluster init` writes DIR/admin.credentials, an "
            "admin makes more with `paas credentials create NAME`; --insecure talks plaintext "
            "to an --insecure scheduler"
        )
    creds = read_credentials(path)
    if creds.expires <= dt.datetime.now(dt.UTC):
        raise CommandError(
            f"the credentials in {path} expired at {creds.expires:%Y-%m-%d %H:%M} UTC: ask an "
            "admin for new ones (`paas credentials create NAME`)"
        )
    return creds


def connect(addresses: list[str], args: argparse.Namespace) -> SchedulerClient:
    """A client of the scheduler presenting what `args` and the environment say."""
    return SchedulerClient(addresses, tls=client_tls(args))


# ------------------------------------------------------------------ paas cluster init


def cluster_init(args: argparse.Namespace) -> int:
    """A new CA in --dir and the first admin credentials; refuses to overwrite a CA."""
    directory = Path(args.dir).expanduser().resolve()
    sans = list(args.san or [])
    creds_path = init_cluster_dir(directory, sans)
    render.info(f"paas: made a cluster CA in {directory} (keep {directory}/ca.key secret)")
    render.out(f"export PAAS_CREDENTIALS={creds_path}")
    return 0


def init_cluster_dir(directory: Path, sans: list[str], ca_name: str = "") -> Path:
    """CA, DIR/sans, and DIR/admin.credentials (a year); the credentials' path."""
    try:
        ca = CertificateAuthority.create(ca_name) if ca_name else CertificateAuthority.create()
        ca.save(directory)
    except PKIError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write the CA in {directory}: {exc.strerror}") from None
    if sans:
        write_sans(directory, sans)
    admin = ca.issue_credentials(Identity(Role.ADMIN, FIRST_ADMIN_NAME), FIRST_ADMIN_TTL)
    path = directory / ADMIN_CREDENTIALS_FILE
    write_credentials(path, admin, overwrite=False)
    (directory / ADMIN_CERT_FILE).write_bytes(admin.cert_pem)
    return path


def install_local_default(creds_path: Path) -> Path | None:
    """Copy a local cluster's admin credentials to the default path, so `paas` finds them
    with nothing set, unless a file there is another cluster's (not a `paas up` one).
    The path written, or None if it was left alone."""
    default = DEFAULT_CREDENTIALS.expanduser()
    if default.exists():
        try:
            theirs = read_credentials(default)
        except PKIError:
            return None
        if theirs.ca_cert.subject.rfc4514_string() != f"CN={LOCAL_CA_NAME},O=paas":
            return None
    write_credentials(default, read_credentials(creds_path))
    return default


# ------------------------------------------------------------------ paas credentials


def prepare_create(args: argparse.Namespace) -> None:
    check_credential_name(args.name)
    args.ttl_seconds = int(parse_duration(args.ttl)) if args.ttl else 0
    out = Path(args.out or f"{args.name}.credentials").expanduser()
    if out.exists():
        raise CommandError(f"{out} exists already: choose another --out")
    args.out_path = out


async def create(client: SchedulerClient, args: argparse.Namespace) -> None:
    key = generate_key()  # made here; only its public half leaves, in the CSR
    response = await client.create_credentials(
        args.name, make_csr(key, Identity(Role.ADMIN, args.name)), args.ttl_seconds
    )
    creds = Credentials(
        ca_cert=load_cert_pem(response.ca_certificate),
        cert=load_cert_pem(response.certificate),
        key=key,
    )
    if creds.cert.public_key() != key.public_key():
        raise CommandError("the scheduler signed another key than the one sent")
    write_credentials(args.out_path, creds, overwrite=False)
    expires = dt.datetime.fromtimestamp(response.credential.expires_at, dt.UTC)
    render.info(
        f"paas: credentials {args.name} (serial {response.credential.serial}, expires "
        f"{expires:%Y-%m-%d %H:%M} UTC) written to {args.out_path}"
    )
    render.out(f"export PAAS_CREDENTIALS={args.out_path.resolve()}")


async def list_(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.credentials(await client.list_credentials(), as_json=args.json)


async def revoke(client: SchedulerClient, args: argparse.Namespace) -> None:
    check_credential_name(args.name)
    credential = await client.revoke_credentials(args.name)
    render.out(
        f"Revoked credentials {credential.name} (serial {credential.serial}): every "
        "replica refuses them from the next call on"
    )
