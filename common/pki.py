"""The cluster's public-key infrastructure: one CA, certificates that carry a role and a name.

Every crypto operation comes from `cryptography`; TLS itself is gRPC's. Keys are EC
P-256 (BoringSSL, under gRPC, accepts them for both ends of a handshake). This module
owns the certificate profile (what a paas certificate holds) and the files that hold
keys; it never opens a socket and never talks to etcd.

A certificate says who holds it with one URI SAN, ``paas://role/<role>/<name>``
(also shown, for people, as subject OU=<role>, CN=<name>); `identity_of` reads it
back, and it is the only thing authorization trusts:

    admin       an operator; the name is the credential's (the "by" of releases)
    node        an agent; the name is the node name (also a DNS SAN, so the
                scheduler dialing an agent checks it reached that node)
    scheduler   a scheduler replica; DNS/IP SANs for the hosts it serves on

API (stable: other branches build on it)

    Role                        StrEnum: ADMIN, NODE, SCHEDULER
    Identity(role, name)        who a certificate names
    CertificateAuthority        .create(), .load(dir), .save(dir), .cert, .key,
                                .cert_pem, .digest,
                                .issue(identity, public_key, ttl, sans=(), not_before=None)
                                .sign_csr(csr_pem, identity, ttl, sans=()) -> x509.Certificate
                                .issue_credentials(identity, ttl, sans=()) -> Credentials
    Credentials(ca_cert, cert, key)
                                .identity, .serial, .expires, .ca_pem, .cert_pem,
                                .key_pem, .to_pem(), .from_pem(data, source)
    generate_key()              a fresh P-256 private key (stays where it is made)
    make_csr(key, identity)     a PEM CSR for that key (the signer decides the identity
                                it grants; the CSR's subject is only a request)
    load_csr(pem)               parse and verify a CSR's self-signature
    identity_of(cert)           Identity read from the URI SAN (PKIError if none)
    serial_of(cert)             the serial as lowercase hex, the form stored in etcd
    expires_at(cert)            not_valid_after as an aware UTC datetime
    ca_digest(cert)             sha256 of the CA certificate's DER, lowercase hex
    cert_pem(cert), load_cert_pem(data)
    write_credentials(path, creds, overwrite=True)
                                one file, CA cert + cert + key PEM, 0600, written atomically
    read_credentials(path)      refuses a file looser than 0600 (CredentialsFileError)
    write_private_file(path, data, overwrite=True), check_private_file(path)
    hosts_to_sans(hosts)        "127.0.0.1", "::1", "sched.example" -> IP or DNS SANs

Files in a cluster directory (`paas cluster init --dir DIR`):

    DIR/ca.crt              the CA certificate
    DIR/ca.key              the CA key, 0600
    DIR/sans                extra names for scheduler certificates, one a line (optional)
    DIR/admin.credentials   the first admin credentials, 0600
    DIR/admin.crt           their certificate alone (no key), for the scheduler to list

Errors: PKIError (InvalidInput) for anything wrong with a certificate, CSR or CA;
CredentialsFileError (PKIError) for a file that is missing, unreadable or too open.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paas.common.errors import InvalidInput

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SANS_FILE = "sans"
ADMIN_CREDENTIALS_FILE = "admin.credentials"
ADMIN_CERT_FILE = "admin.crt"

CA_TTL = dt.timedelta(days=3650)
FIRST_ADMIN_TTL = dt.timedelta(days=365)
ADMIN_TTL = dt.timedelta(days=90)
NODE_TTL = dt.timedelta(hours=24)
SCHEDULER_TTL = dt.timedelta(days=30)

# Certificates start a little in the past so a peer whose clock is slightly behind accepts them.
_BACKDATE = dt.timedelta(minutes=5)
_URI_PREFIX = "paas://role/"


class PKIError(InvalidInput):
    """A certificate, CSR or CA that cannot be used; the message says which and why."""


class CredentialsFileError(PKIError):
    """A credentials or key file that is missing, unreadable, malformed or not 0600."""


class Role(StrEnum):
    ADMIN = "admin"
    NODE = "node"
    SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: a role and, within it, a name."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        return f"{_URI_PREFIX}{self.role.value}/{self.name}"

    def __str__(self) -> str:
        return f"{self.role.value} {self.name!r}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _check_name(name: str) -> str:
    if not name or "/" in name or any(ord(c) < 0x21 or ord(c) > 0x7E for c in name):
        raise PKIError(f"invalid certificate name {name!r}: printable ASCII, no spaces or '/'")
    return name


def _subject(identity: Identity) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "paas"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )


def hosts_to_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Host names and IP literals as SANs, duplicates dropped, order kept."""
    out: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip().strip("[]")
        if not host:
            continue
        name: x509.GeneralName
        try:
            name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        if name not in out:
            out.append(name)
    return out


def identity_of(cert: x509.Certificate) -> Identity:
    """The role and name the certificate's URI SAN carries; PKIError if it carries none."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise PKIError("certificate carries no paas role (no subject alternative name)") from None
    for uri in ext.value.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(_URI_PREFIX):
            continue
        role_text, sep, name = uri[len(_URI_PREFIX) :].partition("/")
        try:
            role = Role(role_text)
        except ValueError:
            raise PKIError(f"certificate carries an unknown paas role {role_text!r}") from None
        if not sep or not name:
            raise PKIError(f"certificate's paas role {uri!r} has no name")
        return Identity(role, name)
    raise PKIError("certificate carries no paas role")


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def expires_at(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def ca_digest(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key_pem(data: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsFileError(f"{source}: no usable private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsFileError(f"{source}: the private key is not an EC key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, identity: Identity) -> bytes:
    """A PEM CSR for `key` asking for `identity` (the signer decides what it grants)."""
    _check_name(identity.name)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(identity))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """A parsed CSR whose self-signature holds (so its sender holds the key)."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PKIError("certificate signing request's signature does not verify")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise PKIError("certificate signing request must carry an EC P-256 key")
    return csr


def _leaf_extensions(
    builder: x509.CertificateBuilder, identity: Identity, sans: Sequence[x509.GeneralName]
) -> x509.CertificateBuilder:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if identity.role is Role.NODE:
        names.append(x509.DNSName(identity.name))
    names.extend(n for n in sans if n not in names)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role is not Role.ADMIN:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )


@dataclass(frozen=True)
class Credentials:
    """What one party presents: the CA certificate it trusts, its certificate, its key."""

    ca_cert: x509.Certificate
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def identity(self) -> Identity:
        return identity_of(self.cert)

    @property
    def serial(self) -> str:
        return serial_of(self.cert)

    @property
    def expires(self) -> dt.datetime:
        return expires_at(self.cert)

    @property
    def ca_pem(self) -> bytes:
        return cert_pem(self.ca_cert)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def to_pem(self) -> bytes:
        return self.ca_pem + self.cert_pem + self.key_pem

    @classmethod
    def from_pem(cls, data: bytes, source: str = "credentials") -> Credentials:
        """Parse the one-file form; the leaf is the certificate that matches the key."""
        key = _load_key_pem(data, source)
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise CredentialsFileError(f"{source}: no certificates in it") from None
        public = key.public_key()
        leaves = [c for c in certs if c.public_key() == public]
        others = [c for c in certs if c.public_key() != public]
        if len(leaves) != 1 or len(others) != 1:
            raise CredentialsFileError(
                f"{source}: expected a CA certificate, a certificate and its key"
            )
        creds = cls(ca_cert=others[0], cert=leaves[0], key=key)
        try:
            creds.cert.verify_directly_issued_by(creds.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CredentialsFileError(
                f"{source}: the certificate was not issued by the CA in the same file"
            ) from None
        return creds


class CertificateAuthority:
    """The cluster CA: its certificate and key, and the one place certificates are made."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if cert.public_key() != key.public_key():
            raise PKIError("CA certificate and CA key do not match")
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls, common_name: str = "paas cluster CA", ttl: dt.timedelta = CA_TTL
    ) -> CertificateAuthority:
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "paas"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def digest(self) -> str:
        return ca_digest(self.cert)

    def issue(
        self,
        identity: Identity,
        public_key: ec.EllipticCurvePublicKey,
        ttl: dt.timedelta,
        sans: Sequence[x509.GeneralName] = (),
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A certificate for `public_key` naming `identity`, valid for `ttl`.

        `not_before` (default: a few minutes ago) lets a test make one already expired.
        """
        _check_name(identity.name)
        start = not_before if not_before is not None else _now() - _BACKDATE
        end = start + ttl + (_BACKDATE if not_before is None else dt.timedelta(0))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(identity))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        return _leaf_extensions(builder, identity, sans).sign(self.key, hashes.SHA256())

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: Identity,
        ttl: dt.timedelta,
        sans: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        """Sign the key in a CSR for `identity`: the caller decides the identity, not the CSR."""
        public = load_csr(csr_pem).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # load_csr checked
        return self.issue(identity, public, ttl, sans)

    def issue_credentials(
        self,
        identity: Identity,
        ttl: dt.timedelta,
        sans: Sequence[x509.GeneralName] = (),
        not_before: dt.datetime | None = None,
    ) -> Credentials:
        """A fresh key and its certificate, made here (for a party on this same host)."""
        key = generate_key()
        cert = self.issue(identity, key.public_key(), ttl, sans, not_before)
        return Credentials(ca_cert=self.cert, cert=cert, key=key)

    def save(self, directory: Path) -> None:
        """Write DIR/ca.crt and DIR/ca.key (0600); refuses to overwrite either."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in (CA_CERT_FILE, CA_KEY_FILE):
            if (directory / name).exists():
                raise PKIError(f"{directory / name} already exists: refusing to overwrite a CA")
        write_private_file(directory / CA_KEY_FILE, _key_pem(self.key), overwrite=False)
        _write_atomically(directory / CA_CERT_FILE, self.cert_pem, 0o644, overwrite=False)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Read DIR/ca.crt and DIR/ca.key, refusing a key file looser than 0600."""
        key_path = directory / CA_KEY_FILE
        cert_path = directory / CA_CERT_FILE
        check_private_file(key_path)
        try:
            cert_data = cert_path.read_bytes()
            key_data = key_path.read_bytes()
        except OSError as exc:
            raise CredentialsFileError(
                f"cannot read the CA in {directory}: {exc.strerror} ({exc.filename})"
            ) from None
        try:
            cert = load_cert_pem(cert_data)
        except PKIError as exc:
            raise CredentialsFileError(f"{cert_path}: {exc}") from None
        return cls(cert, _load_key_pem(key_data, str(key_path)))


def read_sans(directory: Path) -> list[str]:
    """The extra scheduler names `paas cluster init --san` kept in DIR/sans (none if absent)."""
    try:
        text = (directory / SANS_FILE).read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_sans(directory: Path, names: Sequence[str]) -> None:
    _write_atomically(directory / SANS_FILE, "".join(f"{n}\n" for n in names).encode(), 0o644)


def check_private_file(path: Path) -> None:
    """Refuse a key-holding file that is missing or readable by anyone but its owner."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CredentialsFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise CredentialsFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CredentialsFileError(f"{path} is not a regular file")
    if mode & 0o077:
        raise CredentialsFileError(
            f"{path} is mode {stat.S_IMODE(mode):04o}; a file holding a key must be 0600 "
            f"(chmod 600 {path})"
        )


def _write_atomically(path: Path, data: bytes, mode: int, overwrite: bool = True) -> None:
    """Write a temporary file beside `path` with `mode`, then move it into place.

    Without `overwrite` the final step is a hard link, which fails if `path` exists,
    so two writers cannot both win.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PKIError(f"{path} already exists: refusing to overwrite it") from None
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_private_file(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write a file holding a key: 0600 from its first byte, atomically."""
    _write_atomically(path, data, 0o600, overwrite)


def write_credentials(path: Path, creds: Credentials, overwrite: bool = True) -> None:
    write_private_file(path, creds.to_pem(), overwrite)


def read_credentials(path: Path) -> Credentials:
    """Read a credentials file, refusing it if it is looser than 0600."""
    check_private_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialsFileError(f"cannot read {path}: {exc.strerror}") from None
    return Credentials.from_pem(data, str(path))
