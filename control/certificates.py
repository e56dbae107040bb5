"""The cluster's certificate authority and each node's certificates (with `cryptography`).

`dmc cluster create` makes a private CA (EC P-256, valid ten years) and, for each node, one
certificate per plane, signed by it:

    <node>/certs/ca.pem            the cluster CA's certificate (what clients verify against)
    <node>/certs/ca.key            the CA's private key: a node issues its own renewed certificates
    <node>/certs/<plane>.pem/.key  the node's certificate and key for `plane`:
                                   "api"  the REST API (cnm_http's HTTPS port)
                                   "cp"   the control plane (gossip, heartbeats, CCS; server and
                                          client authentication)
                                   "proxy"  the database endpoints' client TLS (tls_mode enabled;
                                          dmc/fastpath/tls.pxi), as Redis Enterprise's `proxy`
                                          certificate

Every certificate names the node's address (an IP SAN) and `node<uid>.<fqdn>`; node
certificates are valid CERT_DAYS (90, as Redis Enterprise's) and renewed by the node itself
once less than RENEW_BEFORE_DAYS (60) remain, so every 30 days (`renew_if_due`, run by cnm_http).
A renewed file replaces the old one by rename; a live TLS context loads it again
(`ReloadingContext`), so open connections are not dropped.

An operator may install certificates of their own (`PUT /v1/cluster/update_cert`, `dmc cluster
certificates set`): `check_pair` refuses a key that is not the certificate's, a certificate
that is expired or not yet valid, and a PEM that is not one. A certificate an operator
installed is not renewed by the node (it is theirs): `renew_if_due` renews only those the CA
signed.

Keys are written readable by their owner only (0600), certificates 0644. Nothing here logs a
key. A secret CCS must carry to every node (an operator's private key, a database password) is
sealed first (control/sealing.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control.sealing import reveal_text, seal, seal_text, unseal
from control.tls import ca_file, cert_file, certs_dir, key_file

CA_DAYS = 3650
CERT_DAYS = 90
RENEW_BEFORE_DAYS = 60
PLANES = ("api", "cp", "proxy")
# re-exported: a node's files (control/tls.py) and its sealed secrets (control/sealing.py)
__all__ = ["ca_file", "cert_file", "certs_dir", "key_file", "reveal_text", "seal", "seal_text",
           "unseal"]


class CertificateError(ValueError):
    """A certificate or key that cannot be used, with the reason (one line)."""


@dataclass
class Pair:
    certificate: bytes        # PEM
    key: bytes                # PEM (PKCS#8, unencrypted)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(fqdn: str) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dmc cluster CA {fqdn}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dmc")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Pair, node_uid: int, address: str, fqdn: str, *, days: float = CERT_DAYS,
          not_before: datetime.datetime | None = None) -> Pair:
    """A certificate for node `node_uid` at `address`, for server and client authentication."""
    ca_cert = x509.load_pem_x509_certificate(ca.certificate)
    ca_key = serialization.load_pem_private_key(ca.key, None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    names: list[x509.GeneralName] = [x509.DNSName(f"node{node_uid}.{fqdn}")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        names.append(x509.DNSName(address))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        f"node{node_uid}.{fqdn}"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dmc")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# ---- checks ----------------------------------------------------------------------------------

def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate ({exc})") from None


def check_pair(pair: Pair) -> x509.Certificate:
    """The certificate, if it is valid now and the key is its own; CertificateError if not."""
    cert = load_certificate(pair.certificate)
    try:
        key = serialization.load_pem_private_key(pair.key, None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            cert.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise CertificateError("the key does not belong to the certificate")
    now = _now()
    if cert.not_valid_after_utc <= now:
        raise CertificateError(f"the certificate expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise CertificateError(f"the certificate is valid only from "
                               f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def signed_by(cert: x509.Certificate, ca_pem: bytes) -> bool:
    ca_cert = load_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def describe(pem: bytes) -> dict:
    """What the REST API and `dmc cluster certificates` show of a certificate."""
    cert = load_certificate(pem)
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.timestamp(),
            "not_after": cert.not_valid_after_utc.timestamp(),
            "serial": format(cert.serial_number, "x")}


# ---- a node's files --------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_ca(node_dir: Path) -> Pair:
    d = certs_dir(node_dir)
    return Pair((d / "ca.pem").read_bytes(), (d / "ca.key").read_bytes())


def install_ca(node_dir: Path, ca: Pair) -> None:
    _write(certs_dir(node_dir) / "ca.key", ca.key, 0o600)
    _write(certs_dir(node_dir) / "ca.pem", ca.certificate, 0o644)


def install(node_dir: Path, plane: str, pair: Pair) -> None:
    """The plane's certificate and key, replaced by rename (key first: a reader that sees the
    new certificate finds its key)."""
    _write(key_file(node_dir, plane), pair.key, 0o600)
    _write(cert_file(node_dir, plane), pair.certificate, 0o644)


def read_pair(node_dir: Path, plane: str) -> Pair:
    return Pair(cert_file(node_dir, plane).read_bytes(), key_file(node_dir, plane).read_bytes())


def provision(node_dir: Path, ca: Pair, node_uid: int, address: str, fqdn: str) -> None:
    """A new node's certs folder: the CA and one certificate per plane."""
    install_ca(node_dir, ca)
    for plane in PLANES:
        install(node_dir, plane, issue(ca, node_uid, address, fqdn))


def renew_if_due(node_dir: Path, node_uid: int, address: str, fqdn: str, *,
                 now: datetime.datetime | None = None) -> list[str]:
    """Renew each of the node's CA-signed certificates that has less than RENEW_BEFORE_DAYS
    left; the planes renewed."""
    now = now or _now()
    try:
        ca = read_ca(node_dir)
    except FileNotFoundError:
        return []
    renewed = []
    for plane in PLANES:
        try:
            cert = load_certificate(cert_file(node_dir, plane).read_bytes())
        except (FileNotFoundError, CertificateError):
            cert = None
        if cert is not None and not signed_by(cert, ca.certificate):
            continue                    # the operator's own: theirs to renew
        if cert is None or cert.not_valid_after_utc - now < datetime.timedelta(
                days=RENEW_BEFORE_DAYS):
            install(node_dir, plane, issue(ca, node_uid, address, fqdn))
            renewed.append(plane)
    return renewed
