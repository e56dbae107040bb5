"""How a node's services open a connection to a shard (redis_mgr, node_wd, node_figures, the
machines of cnm_exec, backups): one way, chosen by the shard record and its database; and, by
the same rules, how the CLI reaches a member's CCS copy (`ccs_link`: `dmc node join`, `dmc
ccs-cli`).

- a shard on this node: its unix socket (`unixsocket` in the shard's folder, mode 0700, so only
  the node's own user reaches it; plaintext, as the node's certificates are that user's
  anyway), whether the database has DPINE or not, so switching DPINE never interrupts the
  node's own probes; a shard started before shards had one: its plain port;
- a shard on another node of a database with data_internode_encryption (DPINE): its
  tls-port, mutual TLS with this node's `cp` certificate (the shard requires a client
  certificate the cluster CA signed, and the client checks the shard's names the node);
- otherwise the shard's plain port.

With DPINE on, a shard serves no plain TCP port at all (`port 0`, see redis_mgr.shard_conf): a
redis-server binds its port and its tls-port to the same addresses, so a plain port open "for
the node's services only" would be as reachable from other hosts as the tls-port is. The unix
socket is what keeps the node's own services plaintext and local.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from control import schema
from control.redis_client import Redis, connect
from control.tls import ReloadingContext, ca_file, cert_file, key_file
from dmc.processes import unix_socket_path

SOCKET = "redis.sock"       # in the shard's folder

_client_contexts: dict[Path, ReloadingContext] = {}     # node folder -> its `cp` client side


def dpine(shard: schema.Shard, bdb: schema.Bdb) -> bool:
    """The database asks for data-path encryption and the shard has a tls-port (one made
    before tls-ports existed has none: it stays plaintext)."""
    return bool(bdb.data_internode_encryption) and bool(shard.tls_port)


def socket_path(shards_dir: Path, uid: int) -> Path:
    return Path(unix_socket_path(Path(shards_dir) / str(uid) / SOCKET))


def client_context(node_dir: Path) -> ssl.SSLContext:
    """The node's `cp` certificate as a TLS client's, loaded again when it was renewed."""
    node_dir = Path(node_dir)
    reloading = _client_contexts.get(node_dir)
    if reloading is None:
        reloading = _client_contexts[node_dir] = ReloadingContext(
            node_dir, "cp", server=False, verify_peer=True)
    reloading.refresh()
    return reloading.context


@dataclass(frozen=True)
class ShardLink:
    """Where and how to reach one shard; `connect` opens a connection, `cli_args` are
    redis-cli's options for the same."""
    host: str
    port: int
    unix_path: str | None = None
    tls_dir: Path | None = None     # TLS with this node folder's `cp` certificate

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}{' (TLS)' if self.tls_dir else ''}"

    async def connect(self, *, timeout: float = 1.0, password: str | None = None) -> Redis:
        return await connect(self.host, self.port, timeout=timeout, password=password,
                             unix_path=self.unix_path,
                             ssl_context=client_context(self.tls_dir) if self.tls_dir else None)

    def cli_args(self) -> list[str]:
        if self.unix_path:
            return ["-s", self.unix_path]
        args = ["-h", self.host, "-p", str(self.port)]
        if self.tls_dir:
            args += ["--tls", "--cacert", str(ca_file(self.tls_dir)),
                     "--cert", str(cert_file(self.tls_dir, "cp")),
                     "--key", str(key_file(self.tls_dir, "cp"))]
        return args


def link(config, shard: schema.Shard, bdb: schema.Bdb | None, nodes: dict) -> ShardLink:
    """How this node (`config`: its uid, address and folders) reaches `shard` (`nodes`: CCS's
    node records, for another node's address; `bdb`: the shard's database, None if gone)."""
    if shard.node_uid == config.uid:
        path = socket_path(config.shards_dir, shard.uid)
        return ShardLink(config.address, shard.port, str(path) if path.exists() else None)
    host = nodes[shard.node_uid]["address"]
    if bdb is not None and dpine(shard, bdb):
        return ShardLink(host, shard.tls_port, tls_dir=Path(config.dir))
    return ShardLink(host, shard.port)


def local_link(config, shard: schema.Shard) -> ShardLink:
    """A shard of this node (its unix socket, or its plain port if it has none)."""
    return link(config, shard, None, {})


def ccs_link(member: dict, local: dict, tls_dir: Path | None) -> ShardLink:
    """How this machine reaches the CCS copy of a member (`member`: its record in cluster:nodes
    or cluster:master): its unix socket when the member is a node of this machine (`local`:
    uid -> NodeConfig, a folder's nodes) that serves one; else its tls-port over mutual TLS with
    `tls_dir`'s `cp` certificate when the member has one (CPINE: a member on a routable address
    serves no plain TCP at all, NodeConfig.plain_tcp); else its plain port (CPINE off)."""
    config = local.get(member.get("uid"))
    if config is not None and config.address == member["address"] and \
            config.ccs_socket.exists():
        return ShardLink(config.address, config.ccs_port, str(config.ccs_socket))
    if member.get("ccs_tls_port") and tls_dir is not None:
        return ShardLink(member["address"], member["ccs_tls_port"], tls_dir=Path(tls_dir))
    return ShardLink(member["address"], member["ccs_port"])
