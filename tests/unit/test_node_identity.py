"""The node's certificate: when it renews, what a renewal must be, and how the first
start tells the cluster's scheduler from an impostor by the token's CA digest."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from paas.agent.enroll import JoinError, check_chain
from paas.agent.identity import IdentityError, NodeIdentity
from paas.common import pki
from paas.common.renewal import renew_at

NODE = pki.Identity(pki.Role.NODE, "node-1")
SCHEDULER = pki.Identity(pki.Role.SCHEDULER, "s1")


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create()


def test_a_certificate_renews_at_two_thirds_of_its_life_from_when_it_came() -> None:
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    day, six = start + dt.timedelta(hours=24), start + dt.timedelta(seconds=6)
    assert renew_at(start, day, start) == start + dt.timedelta(hours=16)
    assert renew_at(start, six, start) == start + dt.timedelta(seconds=4)
    # Backdated five minutes by the CA: the life counts from its receipt.
    backdated = start - dt.timedelta(minutes=5)
    assert renew_at(backdated, six, start) == start + dt.timedelta(seconds=4)
    # Read from a file with 3 h left: renewed at two thirds of those.
    assert renew_at(start, day, day - dt.timedelta(hours=3)) == day - dt.timedelta(hours=1)


def test_a_renewal_is_taken_for_the_new_key_written_0600_and_used(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "node-1" / "node.credentials"
    first = ca.issue_credentials(NODE, dt.timedelta(hours=1))
    pki.write_credentials(path, first)
    identity = NodeIdentity(path, first)
    csr = identity.begin_renewal()
    cert = pki.cert_pem(ca.sign_csr(csr, NODE, dt.timedelta(hours=1)))
    identity.complete_renewal(cert)
    assert identity.renewals == 1
    assert identity.credentials.serial != first.serial
    assert identity.credentials.key != first.key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pki.read_credentials(path).serial == identity.credentials.serial


def test_a_renewal_for_another_key_node_or_ca_is_refused(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "node.credentials"
    first = ca.issue_credentials(NODE, dt.timedelta(hours=1))
    identity = NodeIdentity(path, first)
    with pytest.raises(IdentityError, match="did not ask"):
        identity.complete_renewal(first.cert_pem)
    csr = identity.begin_renewal()
    other_key = pki.make_csr(pki.generate_key(), NODE)
    with pytest.raises(IdentityError, match="not for the key"):
        identity.complete_renewal(pki.cert_pem(ca.sign_csr(other_key, NODE, dt.timedelta(hours=1))))
    other = pki.Identity(pki.Role.NODE, "node-2")
    with pytest.raises(IdentityError, match="names"):
        identity.complete_renewal(pki.cert_pem(ca.sign_csr(csr, other, dt.timedelta(hours=1))))
    stranger = pki.CertificateAuthority.create()
    with pytest.raises(IdentityError, match="CA"):
        identity.complete_renewal(pki.cert_pem(stranger.sign_csr(csr, NODE, dt.timedelta(hours=1))))
    assert identity.credentials == first
    assert not path.exists()


def _served(
    ca: pki.CertificateAuthority, identity: pki.Identity = SCHEDULER
) -> list[x509.Certificate]:
    leaf = ca.issue_credentials(identity, dt.timedelta(hours=1))
    return [leaf.cert, ca.cert]


def test_the_scheduler_holding_the_pinned_ca_is_trusted(ca: pki.CertificateAuthority) -> None:
    assert check_chain("s:7070", _served(ca), ca.digest) == ca.cert


def test_a_scheduler_of_another_ca_is_an_impostor(ca: pki.CertificateAuthority) -> None:
    impostor = pki.CertificateAuthority.create()
    with pytest.raises(JoinError, match="impostor"):
        check_chain("s:7070", _served(impostor), ca.digest)
    with pytest.raises(JoinError, match="impostor"):
        check_chain("s:7070", [], ca.digest)


def test_a_leaf_not_issued_by_the_pinned_ca_is_an_impostor(ca: pki.CertificateAuthority) -> None:
    # An impostor that serves the real CA certificate beside its own leaf.
    impostor = pki.CertificateAuthority.create()
    leaf = _served(impostor)[0]
    with pytest.raises(JoinError, match="impostor"):
        check_chain("s:7070", [leaf, ca.cert], ca.digest)


def test_a_node_certificate_cannot_pose_as_the_scheduler(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(JoinError, match="not a scheduler"):
        check_chain("s:7070", _served(ca, NODE), ca.digest)


def test_the_scheduler_reissues_itself_a_certificate_naming_the_same_hosts(
    ca: pki.CertificateAuthority,
) -> None:
    from paas.scheduler.servingcert import reissue_like, renew_in

    first = ca.issue_credentials(
        SCHEDULER, dt.timedelta(hours=3), pki.hosts_to_sans(["127.0.0.1", "sched.example"])
    )
    again = reissue_like(ca, first, dt.timedelta(hours=3))
    assert again.identity == first.identity
    assert again.key != first.key and again.serial != first.serial
    names = x509.SubjectAlternativeName
    assert (
        again.cert.extensions.get_extension_for_class(names).value
        == first.cert.extensions.get_extension_for_class(names).value
    )
    now = dt.datetime.now(dt.UTC)
    assert renew_in(first, now, now) == pytest.approx(2 * 3600, abs=5)
