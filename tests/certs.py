"""A self-signed certificate for tests of a service served over HTTPS on its own certificate
(cm_server's `ui_certfile`, metrics_exporter's `metrics_tls_cert`): the certificate is its own
trust anchor (`ssl.create_default_context(cafile=certificate)`); and the probe of a TLS port's
oldest version (`tls_1_2_refused`) the TLS policy tests share."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(folder, address: str, stem: str = "server") -> tuple[str, str]:
    """PEM files `<stem>.crt` and `<stem>.key` in `folder`: a certificate for `address`, valid
    for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def tls_1_2_refused(host: str, port: int, cafile: str, cert=None) -> bool:
    """A client that speaks at most TLS 1.2 fails its handshake."""
    context = ssl.create_default_context(cafile=cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return False        # (in TLS 1.2 the client's certificate is part of the handshake)
    except (ssl.SSLError, ConnectionResetError):
        return True
