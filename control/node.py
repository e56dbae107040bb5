"""A node on disk: its identity and ports (`node.json`), the folders of its services, and the
configuration files it writes for itself: `supervisord.conf` (one program per service) and
`ccs/ccs.conf` (its copy of the cluster configuration store).

A node's folder:
    node.json            who the node is: uid, address, ports, first peers
    supervisord.conf     written by `write_configs`; `supervisorctl -c supervisord.conf` works
    supervisor.sock      supervisord's unix socket (XML-RPC), used by `dmc services`; in
                         /tmp/dmc-sockets/ when this folder is too deep for a socket name
    supervisord.pid
    logs/                one log per service, and supervisord's own
    ccs/                 ccs.conf, and the CCS copy's append-only file
    state.json           cluster_wd's durable election state: term, vote, members
    run/                 what services tell each other on this node: lease.json, history.jsonl,
                         removed.json (the node was removed from the cluster)
    certs/               the cluster CA and the node's certificates (control/certificates.py)

This module never starts anything; `control.local_cluster` and the services do.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import secrets
import sys
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import trio
from supervisor.xmlrpc import SupervisorTransport

from control.discovery import DEFAULT_FQDN
from dmc.processes import REDIS_SERVER, unix_socket_path

# supervisord program name -> the module it runs (None: the CCS redis-server)
SERVICE_MODULES = {
    "ccs": None,
    "cluster_wd": "control.cluster_wd",
    "heartbeatd": "control.heartbeatd",
    "redis_mgr": "control.redis_mgr",
    "dmcproxy": "control.node_proxy",
    "cnm_exec": "control.cnm_exec",
    "node_wd": "control.node_wd",
    "cnm_http": "control.cnm_http",
    "job_scheduler": "control.job_scheduler",
    "sentinel_service": "control.sentinel_service",
    "pdns_server": "control.pdns_server",
    "metrics_exporter": "control.metrics_exporter",
    "stats_archiver": "control.stats_archiver",
    "alert_mgr": "control.alert_mgr",
    "resource_mgr": "control.resource_mgr",
    "cm_server": "control.cm_server",
}
SERVICES = tuple(SERVICE_MODULES)
# The cluster's own core, without databases: what the control-plane tests run.
CORE_SERVICES = ("ccs", "cluster_wd", "heartbeatd")

# A CCS copy that nobody has made writable refuses writes: min-replicas-to-write set this high
# makes a master-role redis-server answer every write with -NOREPLICAS. cluster_wd lowers it to 0
# only while this node is the elected master and holds its lease.
FENCED_MIN_REPLICAS = 2_147_483_647


@dataclass
class NodeConfig:
    uid: int
    address: str
    home: str
    ccs_port: int
    gossip_port: int
    ccs_forward_port: int          # heartbeatd: a local port that leads to the CCS master
    ccs_tls_port: int = 0          # CCS over TLS: what other nodes use (replication, heartbeats,
                                   # the forwarder); 0: none (control_plane_encryption off)
    control_plane_encryption: bool = True   # mutual TLS between nodes (certificates.py "cp")
    rest_port: int = 8080          # cnm_http: the REST API over HTTP (RE's port)
    rest_tls_port: int = 9443      # cnm_http: the REST API over HTTPS (RE's port)
    rest_http: bool = True         # serve rest_port too (False: HTTPS only)
    sentinel_port: int = 8001      # sentinel_service: the discovery service (RE's port)
    dns_port: int = 53             # pdns_server: the cluster's DNS zone, UDP and TCP
    metrics_port: int = 8070       # metrics_exporter: Prometheus's /metrics (RE's port)
    ui_port: int = 8443            # cm_server: the web UI (RE's port)
    ui_certfile: str | None = None   # cm_server serves HTTPS with this certificate and key
                                     # (none: the node's `api` one, ui_certificate())
    ui_keyfile: str | None = None
    cluster_fqdn: str = DEFAULT_FQDN   # the cluster's name: its DNS zone
    admin: dict = field(default_factory=dict)   # the REST API's admin: {username, salt, hash}
    services: list[str] = field(default_factory=lambda: list(SERVICES))   # what supervisord runs
    peers: dict[int, dict] = field(default_factory=dict)   # first members, uid -> member info
    record_history: bool = False   # cluster_wd appends every observation to run/history.jsonl
    shard_ping_deadline: float = 1.5   # node_wd: a shard that does not answer PING so fast failed
    proxy_input_budget: int = 1 << 30  # dmcproxy: unparsed input of all its clients (0: none)
    min_free_disk_ratio: float = 0.05   # node_wd: less free disk than this share is `low`
    # metrics_exporter serves https with this certificate and key (PEM files) when both are
    # set, else http: point them at the node's certificate once the cluster has one
    metrics_tls_cert: str | None = None
    metrics_tls_key: str | None = None
    netns: str | None = None       # run the node's processes inside this network namespace
    python: str = sys.executable

    # ---- paths ---------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return Path(self.home)

    @property
    def supervisor_conf(self) -> Path:
        return self.dir / "supervisord.conf"

    @property
    def supervisor_sock(self) -> Path:
        return Path(unix_socket_path(self.dir / "supervisor.sock"))

    @property
    def supervisor_pidfile(self) -> Path:
        return self.dir / "supervisord.pid"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def shards_dir(self) -> Path:
        """redis_mgr's shards: shards/<uid>/ holds redis.conf, redis.pid and its data."""
        return self.dir / "shards"

    @property
    def history_file(self) -> Path:
        return self.run_dir / "history.jsonl"

    @property
    def removed_file(self) -> Path:
        """Written when the node was removed from the cluster: it stays out."""
        return self.run_dir / "removed.json"

    @property
    def ccs_socket(self) -> Path:
        """CCS's plaintext for the node's own services (and the host's `dmc`): a unix socket,
        mode 0700 (see plain_tcp)."""
        return Path(unix_socket_path(self.run_dir / "ccs.sock"))

    @property
    def forward_socket(self) -> Path:
        """heartbeatd's forwarder to the CCS master, for the node's own services."""
        return Path(unix_socket_path(self.run_dir / "ccs_forward.sock"))

    @property
    def plain_tcp(self) -> bool:
        """Whether CCS's plain port and the forwarder also listen on TCP (the node's
        address): only where no other host can reach them (a loopback address, as every
        node of a local cluster has) or with control-plane encryption off (nothing is
        encrypted then anyway). A node on a routable address serves plaintext CCS on its
        unix sockets only; other nodes reach it on its TLS port."""
        return not self.cpine or ipaddress.ip_address(self.address).is_loopback

    @property
    def lease_file(self) -> Path:
        return self.run_dir / "lease.json"

    @property
    def proxy_stats_sock(self) -> Path:
        """The node's dmcproxy serves its endpoints' stats here (control/proxy_stats.py)."""
        return Path(unix_socket_path(self.run_dir / "dmcproxy.sock"))

    @property
    def metrics_url(self) -> str:
        scheme = "https" if self.metrics_tls_cert and self.metrics_tls_key else "http"
        return f"{scheme}://{self.address}:{self.metrics_port}/metrics"

    @property
    def cpine(self) -> bool:
        """Control-plane encryption: on (the default) when the node has its certificates."""
        return self.control_plane_encryption and bool(self.ccs_tls_port) and \
            (self.dir / "certs" / "cp.pem").exists()

    def control_plane_tls(self):
        from control.tls import ControlPlaneTLS
        return ControlPlaneTLS(self.dir, self.cpine)

    def ui_certificate(self) -> tuple[str, str] | None:
        """The certificate and key cm_server serves HTTPS with: node.json's ui_certfile and
        ui_keyfile, else the node's `api` certificate (the cluster CA's, renewed with the REST
        API's, or the operator's), else none: the UI is served over HTTP."""
        if self.ui_certfile and self.ui_keyfile:
            return self.ui_certfile, self.ui_keyfile
        from control.tls import cert_file, key_file
        cert, key = cert_file(self.dir, "api"), key_file(self.dir, "api")
        return (str(cert), str(key)) if cert.exists() and key.exists() else None

    def member_info(self) -> dict:
        """What the other nodes know of this one (gossiped, and kept in CCS)."""
        return {"uid": self.uid, "address": self.address, "gossip_port": self.gossip_port,
                "ccs_port": self.ccs_port, "ccs_forward_port": self.ccs_forward_port,
                "ccs_tls_port": self.ccs_tls_port if self.cpine else 0,
                "rest_port": self.rest_port, "rest_tls_port": self.rest_tls_port,
                "rest_http": self.rest_http, "sentinel_port": self.sentinel_port,
                "dns_port": self.dns_port, "metrics_port": self.metrics_port,
                "ui_port": self.ui_port, "ui_tls": self.ui_certificate() is not None}

    # ---- persistence ---------------------------------------------------------------------

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["peers"] = {str(k): v for k, v in self.peers.items()}
        atomic_write(self.dir / "node.json", json.dumps(data, indent=2))

    @classmethod
    def load(cls, home: str | Path) -> NodeConfig:
        data = json.loads((Path(home) / "node.json").read_text())
        data["peers"] = {int(k): v for k, v in data["peers"].items()}
        return cls(**data)

    # ---- generated configuration ---------------------------------------------------------

    def write_configs(self) -> None:
        for sub in ("logs", "ccs", "run", "shards"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "ccs" / "ccs.conf", self._ccs_conf())
        atomic_write(self.supervisor_conf, self._supervisor_conf())

    def _ccs_conf(self) -> str:
        return "\n".join([
            f"bind {self.address}",
            f"port {self.ccs_port if self.plain_tcp else 0}",
            f"unixsocket {self.ccs_socket}",
            "unixsocketperm 700",
            f"dir {self.dir / 'ccs'}",
            "daemonize no",
            "protected-mode no",
            'save ""',
            # Every copy of the configuration fsyncs each change: after a whole-cluster crash,
            # the shard roles on disk must be the ones the shards' data followed.
            "appendonly yes",
            "appendfsync always",
            "replica-read-only yes",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            f"min-replicas-to-write {FENCED_MIN_REPLICAS}",
            "min-replicas-max-lag 10",
            *self._ccs_tls_conf(),
            "",
        ])

    def _ccs_tls_conf(self) -> list[str]:
        """Other nodes reach this CCS copy over mutual TLS only (its tls-port: a client must
        show a certificate the cluster CA signed), and it replicates its master over TLS; the
        plain port is for the node's own services."""
        if not self.cpine:
            return []
        certs = self.dir / "certs"
        return [f"tls-port {self.ccs_tls_port}", f"tls-cert-file {certs / 'cp.pem'}",
                f"tls-key-file {certs / 'cp.key'}", f"tls-ca-cert-file {certs / 'ca.pem'}",
                "tls-auth-clients yes", "tls-replication yes"]

    def _supervisor_conf(self) -> str:
        d, logs = self.dir, self.dir / "logs"
        commands = {name: f"{self.python} -m {module} --node-dir {d}" if module else
                    f"{REDIS_SERVER} {d / 'ccs' / 'ccs.conf'}"
                    for name, module in SERVICE_MODULES.items()}
        sections = [
            f"[unix_http_server]\nfile={self.supervisor_sock}\nchmod=0700\n",
            (f"[supervisord]\nlogfile={logs / 'supervisord.log'}\npidfile={self.supervisor_pidfile}\n"
            # umask 077: the services' logs, CCS's append-only file (users' password hashes)
            # and the shards' data are readable by the cluster's own user only.
            f"childlogdir={logs}\nidentifier=dmc-node-{self.uid}\ndirectory={d}\numask=077\n"
            f"environment=PYTHONPATH=\"{_project_root()}\",PYTHONUNBUFFERED=\"1\"\n"),
            ("[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"),
            f"[supervisorctl]\nserverurl=unix://{self.supervisor_sock}\n",
        ]
        for priority, name in enumerate(self.services, start=1):
            sections.append(
                f"[program:{name}]\ncommand={commands[name]}\npriority={priority * 10}\n"
                # supervisord's own back-off: a service that dies within startsecs is retried
                # after 1, 2, 3... seconds, startretries times, then marked FATAL.
                "autostart=true\nautorestart=true\nstartsecs=1\nstartretries=10\n"
                "stopsignal=TERM\nstopwaitsecs=5\nstopasgroup=true\nkillasgroup=true\n"
                f"redirect_stderr=true\nstdout_logfile={logs / (name + '.log')}\n"
                "stdout_logfile_maxbytes=10MB\nstdout_logfile_backups=2\n")
        return "\n".join(sections)

    def supervisord_argv(self) -> list[str]:
        argv = [self.python, "-m", "supervisor.supervisord", "-c", str(self.supervisor_conf)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv


def admin_credentials(username: str, password: str) -> dict:
    """What a node keeps of the cluster admin's password: a salted scrypt hash."""
    salt = secrets.token_hex(16)
    return {"username": username, "salt": salt, "hash": _scrypt(password, salt)}


def check_admin(admin: dict, username: str, password: str) -> bool:
    return bool(admin) and secrets.compare_digest(username, admin["username"]) and \
        secrets.compare_digest(_scrypt(password, admin["salt"]), admin["hash"])


def _scrypt(password: str, salt: str) -> str:
    return hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1).hex()


def supervisor_rpc(sock_path) -> xmlrpc.client.ServerProxy:
    """The XML-RPC interface of a node's supervisord, over its unix socket."""
    return xmlrpc.client.ServerProxy(
        "http://supervisor", transport=SupervisorTransport(None, None, f"unix://{sock_path}"))


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def atomic_write(path: Path, text: str) -> None:
    """Write by rename, with the data synced first: readers never see half a file, and after a
    crash the file is either the old one or the new one. Readable by its owner only (node.json
    holds the admin's password hash, maps the shards' addresses): nothing a node writes is
    world-readable."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)           # a .tmp left by an older version
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def service_command(name: str, service: Callable[[NodeConfig], object]) -> click.Command:
    """The `python -m control.<name> --node-dir DIR` entry point that supervisord runs: the
    service object, built from the node's configuration, has an async `run`."""
    @click.command(name=name, help=f"Run {name} for the node whose folder is NODE_DIR.")
    @click.option("--node-dir", required=True, type=click.Path(exists=True, file_okay=False))
    def main(node_dir):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        trio.run(service(NodeConfig.load(node_dir)).run)
    return main
