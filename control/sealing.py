"""Secrets CCS carries sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the cluster
CA's private key, which only the nodes hold (<node>/certs/ca.key). An operator's private key
(`cluster:certificates`) and the databases' passwords (`bdbs`' authentication_redis_pass) are
kept so. `cryptography` is imported only when a secret is sealed or opened.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from control.tls import certs_dir


def _secret_key(ca_key: bytes) -> bytes:
    """A key only the cluster's nodes can make: derived from the CA's private key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"dmc ccs secrets").derive(ca_key)


def _ca_key(ca) -> bytes:
    """The CA's private key: of a certificates.Pair, or read from a node's folder."""
    if isinstance(ca, (str, Path)):
        return (certs_dir(ca) / "ca.key").read_bytes()
    return ca.key


def seal(ca, secret: bytes) -> dict:
    """A secret as CCS may hold it ({nonce, sealed}); `ca`: a Pair or a node's folder."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = os.urandom(12)
    return {"nonce": nonce, "sealed": AESGCM(_secret_key(_ca_key(ca))).encrypt(nonce, secret,
                                                                               None)}


def unseal(ca, value: dict) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return AESGCM(_secret_key(_ca_key(ca))).decrypt(value["nonce"], value["sealed"], None)


SEALED_PREFIX = "sealed:"


def seal_text(node_dir: Path, text: str) -> str:
    """A secret string (a database password) as a CCS field may hold it: `sealed:<base64>`,
    AES-256-GCM under the cluster's key; an empty string stays empty. Without a CA (a node
    made before certificates), the text itself."""
    if not text:
        return text
    try:
        value = seal(node_dir, text.encode())
    except FileNotFoundError:
        return text
    return SEALED_PREFIX + base64.b64encode(value["nonce"] + value["sealed"]).decode()


def reveal_text(node_dir: Path, value: str | None) -> str | None:
    """The secret `seal_text` sealed; a value that is not sealed (written by hand, or by an
    older version) as it is."""
    if not value or not value.startswith(SEALED_PREFIX):
        return value
    raw = base64.b64decode(value[len(SEALED_PREFIX):])
    return unseal(node_dir, {"nonce": raw[:12], "sealed": raw[12:]}).decode()
