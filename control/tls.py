"""TLS between a node's services and the other nodes, with the certificates
control/certificates.py makes (this module imports only `ssl`, so services that merely speak
TLS do not load `cryptography`): where a node keeps them, contexts that load a renewed
certificate again, mutual TLS for the control plane, the cluster's control-plane TLS policy
(min_control_TLS_version, control_cipher_suites: `certs/tls_policy.json`, which the node's
cnm_http writes from CCS, applied by every context when the file changes), and a refused
handshake in one line.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import trio

DEFAULT_POLICY = {"min_version": "1.2", "ciphers": ""}
# Python's own default TLS 1.2 cipher string (3.10+; ssl.create_default_context's), restored
# when the cluster's control_cipher_suites is emptied again
DEFAULT_CIPHERS = ("@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:"
                   "!aDSS:!SHA1:!AESCCM")
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# how often a node's services look at their certificate files and the TLS policy file again
CERT_CHECK_EVERY = 5.0


def certs_dir(node_dir: Path) -> Path:
    return Path(node_dir) / "certs"


def ca_file(node_dir: Path) -> Path:
    return certs_dir(node_dir) / "ca.pem"


def cert_file(node_dir: Path, plane: str) -> Path:
    return certs_dir(node_dir) / f"{plane}.pem"


def key_file(node_dir: Path, plane: str) -> Path:
    return certs_dir(node_dir) / f"{plane}.key"


def policy_file(node_dir: Path) -> Path:
    return certs_dir(node_dir) / "tls_policy.json"


def read_policy(node_dir: Path) -> dict:
    """The control plane's TLS policy of the node ({min_version, ciphers}; defaults if none)."""
    try:
        return {**DEFAULT_POLICY, **json.loads(policy_file(node_dir).read_text())}
    except (OSError, ValueError):
        return dict(DEFAULT_POLICY)


def apply_policy(context: ssl.SSLContext, policy: dict) -> None:
    """The oldest TLS version and the TLS 1.2 ciphers of `policy` on a live context (new
    handshakes follow it; "" ciphers: Python's defaults)."""
    context.minimum_version = TLS_VERSIONS.get(policy.get("min_version"), ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(policy.get("ciphers") or DEFAULT_CIPHERS)


def files_stamp(paths) -> tuple:
    """The files' identities (mtime, inode; a renewal replaces a file by rename): a change
    means whoever loaded them must load them again (None for a file that is not there)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_ino))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


async def keep_following(refresh: Callable[[], bool], log: logging.Logger, what: str) -> None:
    """Every CERT_CHECK_EVERY, `refresh()` (a LiveContext's, hypercorn's reload): a changed
    certificate file or TLS policy is served to new connections, and said in `log`."""
    while True:
        await trio.sleep(CERT_CHECK_EVERY)
        if refresh():
            log.info("%s: serving the renewed certificate or TLS policy", what)


class LiveContext:
    """A server's or a client's SSLContext kept following its files: the certificate and key
    it presents, loaded again when they change (a renewal, an operator's certificate), and the
    node's control-plane TLS policy (`certs/tls_policy.json` of `node_dir`; None: the context's
    own defaults). The one way every control-plane TLS context of a node follows them, whoever
    made the context (ReloadingContext below, hypercorn's for the REST API and the UI,
    prometheus-client's for the metrics): `refresh` (cheap, a few stats) applies a change to
    the live context, so later handshakes use it and connections already open keep theirs."""

    def __init__(self, context: ssl.SSLContext, node_dir: Path | None, certfile, keyfile):
        self.context, self.node_dir = context, node_dir
        self.files = (str(certfile), str(keyfile))
        self._loaded: tuple | None = None
        self.refresh()

    def _stamp(self) -> tuple:
        policy = [policy_file(self.node_dir)] if self.node_dir is not None else []
        return files_stamp([*self.files, *policy])

    def refresh(self) -> bool:
        """Load the certificate (and the TLS policy) again if their files changed; True if it
        did."""
        stamp = self._stamp()
        if stamp == self._loaded:
            return False
        if self.node_dir is not None:
            apply_policy(self.context, read_policy(self.node_dir))
        self.context.load_cert_chain(*self.files)
        self._loaded = stamp
        return True


class ReloadingContext(LiveContext):
    """An SSLContext for one plane of a node (its certificate, the cluster CA), following the
    plane's certificate files and the node's TLS policy (LiveContext)."""

    def __init__(self, node_dir: Path, plane: str, *, server: bool, verify_peer: bool):
        self.plane = plane
        purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
        context = ssl.create_default_context(purpose, cafile=str(ca_file(node_dir)))
        if server:
            context.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_NONE
        else:
            # Nodes are named by address; the certificate names it (IP SAN).
            context.check_hostname = verify_peer
            context.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_NONE
        super().__init__(context, Path(node_dir), cert_file(node_dir, plane),
                         key_file(node_dir, plane))


class ControlPlaneTLS:
    """Mutual TLS between nodes (gossip, heartbeats, the CCS forwarder, CCS replication): both
    sides present their `cp` certificate and accept only one the cluster CA signed. A node
    without certificates (or with control_plane_encryption off) gets None and speaks plain
    TCP. Contexts are refreshed from disk when asked for, so a renewed certificate is used by
    the next connection."""

    def __init__(self, node_dir: Path, enabled: bool = True):
        self.enabled = enabled and cert_file(node_dir, "cp").exists()
        if self.enabled:
            self._server = ReloadingContext(node_dir, "cp", server=True, verify_peer=True)
            self._client = ReloadingContext(node_dir, "cp", server=False, verify_peer=True)

    def server(self) -> ssl.SSLContext | None:
        if not self.enabled:
            return None
        self._server.refresh()
        return self._server.context

    def client(self) -> ssl.SSLContext | None:
        if not self.enabled:
            return None
        self._client.refresh()
        return self._client.context


def handshake_error(exc: BaseException) -> str:
    """A failed TLS handshake, in one line an operator understands."""
    cause = exc.__cause__ or exc.__context__ or exc
    text = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
    return f"TLS handshake failed: {text}"
