"""pki.py: the certificate profile (role and name round trip), CSR signing, key files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from paas.common import pki
from paas.common.pki import CertificateAuthority, Identity, Role


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.mark.parametrize("role", list(Role))
def test_role_and_name_round_trip_through_a_certificate(
    ca: CertificateAuthority, role: Role
) -> None:
    creds = ca.issue_credentials(Identity(role, "node-1"), dt.timedelta(hours=1))
    assert creds.identity == Identity(role, "node-1")
    assert pki.identity_of(creds.cert) == Identity(role, "node-1")


def test_node_certificate_carries_its_name_as_a_dns_san(ca: CertificateAuthority) -> None:
    creds = ca.issue_credentials(Identity(Role.NODE, "web-host"), dt.timedelta(hours=1))
    san = creds.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "web-host" in san.get_values_for_type(x509.DNSName)


def test_scheduler_certificate_carries_ip_and_dns_sans(ca: CertificateAuthority) -> None:
    sans = pki.hosts_to_sans(["127.0.0.1", "sched.example", "127.0.0.1", "[::1]"])
    creds = ca.issue_credentials(Identity(Role.SCHEDULER, "s1"), dt.timedelta(hours=1), sans)
    san = creds.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["sched.example"]


def test_a_certificate_without_a_role_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(pki.PKIError, match="no paas role"):
        pki.identity_of(ca.cert)


def test_csr_is_signed_for_the_identity_the_signer_grants_not_the_one_asked(
    ca: CertificateAuthority,
) -> None:
    key = pki.generate_key()
    csr = pki.make_csr(key, Identity(Role.ADMIN, "mallory"))
    cert = ca.sign_csr(csr, Identity(Role.NODE, "node-2"), dt.timedelta(hours=24))
    assert pki.identity_of(cert) == Identity(Role.NODE, "node-2")
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.cert)


def test_a_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(pki.make_csr(pki.generate_key(), Identity(Role.NODE, "n")))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the ECDSA signature's last integer: still parses, no longer verifies
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PKIError, match="signature does not verify"):
        ca.sign_csr(tampered, Identity(Role.NODE, "n"), dt.timedelta(hours=1))
    with pytest.raises(pki.PKIError, match="not a PEM certificate signing request"):
        pki.load_csr(b"not a csr")


def test_expiry_and_serial(ca: CertificateAuthority) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    creds = ca.issue_credentials(Identity(Role.ADMIN, "a"), dt.timedelta(days=90))
    assert (
        before + dt.timedelta(days=90) <= creds.expires <= before + dt.timedelta(days=90, minutes=1)
    )
    assert creds.serial == format(creds.cert.serial_number, "x")
    again = ca.issue_credentials(Identity(Role.ADMIN, "a"), dt.timedelta(days=90))
    assert again.serial != creds.serial


def test_an_already_expired_certificate_can_be_made_for_tests(ca: CertificateAuthority) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    creds = ca.issue_credentials(
        Identity(Role.ADMIN, "old"), dt.timedelta(days=1), not_before=start
    )
    assert creds.expires < dt.datetime.now(dt.UTC)


def test_ca_digest_is_sha256_hex_of_the_der(ca: CertificateAuthority) -> None:
    assert len(ca.digest) == 64 and int(ca.digest, 16) >= 0
    assert ca.digest == pki.ca_digest(pki.load_cert_pem(ca.cert_pem))


def test_credentials_file_round_trip_is_0600(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.issue_credentials(Identity(Role.ADMIN, "admin"), dt.timedelta(days=1))
    path = tmp_path / "sub" / "admin.credentials"
    pki.write_credentials(path, creds)
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = pki.read_credentials(path)
    assert back.identity == creds.identity and back.serial == creds.serial
    assert back.ca_cert == ca.cert
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["admin.credentials"]


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o666])
def test_a_credentials_file_looser_than_0600_is_refused_in_one_line(
    ca: CertificateAuthority, tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "creds"
    pki.write_credentials(path, ca.issue_credentials(Identity(Role.ADMIN, "a"), dt.timedelta(1)))
    os.chmod(path, mode)
    with pytest.raises(pki.CredentialsFileError) as err:
        pki.read_credentials(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"{mode:04o}" in message


def test_a_missing_credentials_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(pki.CredentialsFileError, match="does not exist"):
        pki.read_credentials(tmp_path / "nope")


def test_credentials_from_another_ca_in_one_file_are_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.create()
    creds = other.issue_credentials(Identity(Role.ADMIN, "a"), dt.timedelta(days=1))
    mixed = pki.Credentials(ca_cert=ca.cert, cert=creds.cert, key=creds.key)
    path = tmp_path / "mixed"
    pki.write_private_file(path, mixed.to_pem())
    with pytest.raises(pki.CredentialsFileError, match="not issued by the CA"):
        pki.read_credentials(path)


def test_ca_save_and_load_refuses_to_overwrite_and_a_loose_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    ca.save(tmp_path)
    assert os.stat(tmp_path / pki.CA_KEY_FILE).st_mode & 0o777 == 0o600
    assert CertificateAuthority.load(tmp_path).digest == ca.digest
    with pytest.raises(pki.PKIError, match="refusing to overwrite"):
        CertificateAuthority.create().save(tmp_path)
    assert CertificateAuthority.load(tmp_path).digest == ca.digest
    os.chmod(tmp_path / pki.CA_KEY_FILE, 0o644)
    with pytest.raises(pki.CredentialsFileError, match="0644"):
        CertificateAuthority.load(tmp_path)


def test_write_without_overwrite_keeps_the_first_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    pki.write_private_file(path, b"one", overwrite=False)
    with pytest.raises(pki.PKIError, match="already exists"):
        pki.write_private_file(path, b"two", overwrite=False)
    assert path.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_sans_file_round_trip(tmp_path: Path) -> None:
    assert pki.read_sans(tmp_path) == []
    pki.write_sans(tmp_path, ["sched.example", "10.0.0.5"])
    assert pki.read_sans(tmp_path) == ["sched.example", "10.0.0.5"]
