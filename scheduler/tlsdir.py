"""A replica's TLS from `--tls-dir DIR`: the cluster CA, and a serving certificate it
issues itself at start.

The certificate (role scheduler, the replica's id as its name) names every host
clients and agents may dial it by: the hosts of --listen and --advertise (all of
this host's names when --listen is a wildcard), the --san names, and those kept in
DIR/sans by `paas cluster init --san`. The same certificate is the replica's
client certificate when it dials agents. Files are read here, once, at start.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from paas.common.addresses import parse_address
from paas.common.pki import (
    ADMIN_CERT_FILE,
    SCHEDULER_TTL,
    CertificateAuthority,
    Credentials,
    Identity,
    PKIError,
    Role,
    hosts_to_sans,
    load_cert_pem,
    read_sans,
)


@dataclass(frozen=True)
class SchedulerTLS:
    ca: CertificateAuthority
    credentials: Credentials  # this replica's serving (and agent-dialing) certificate
    first_admin: x509.Certificate | None  # DIR/admin.crt, entered in etcd on first use


def serving_hosts(addresses: Sequence[str], sans: Sequence[str]) -> list[str]:
    """The names a replica serving on `addresses` is reached by, then `sans`."""
    hosts: list[str] = []
    for address in addresses:
        if not address:
            continue
        host, _ = parse_address(address)
        host = host.strip("[]")
        try:
            wildcard = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            wildcard = False
        if wildcard:
            hosts += [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
        else:
            hosts.append(host)
    hosts += list(sans)
    return list(dict.fromkeys(h for h in hosts if h))


def load_scheduler_tls(
    directory: Path, replica_id: str, addresses: Sequence[str], sans: Sequence[str]
) -> SchedulerTLS:
    """The CA in `directory` and a fresh serving certificate; PKIError if unusable."""
    ca = CertificateAuthority.load(directory)
    hosts = serving_hosts(addresses, [*sans, *read_sans(directory)])
    creds = ca.issue_credentials(
        Identity(Role.SCHEDULER, replica_id), SCHEDULER_TTL, hosts_to_sans(hosts)
    )
    first_admin = None
    admin = directory / ADMIN_CERT_FILE
    if admin.exists():
        try:
            first_admin = load_cert_pem(admin.read_bytes())
        except (OSError, PKIError) as exc:
            raise PKIError(f"{admin}: {exc}") from None
    return SchedulerTLS(ca=ca, credentials=creds, first_admin=first_admin)
