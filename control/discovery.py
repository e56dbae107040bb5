"""Discovery: where a client finds a database by its name, as sentinel_service and pdns_server
both answer it. This module owns the view they serve and how it is computed from CCS; the two
services only speak their protocols over it.

A database's endpoint is a proxy, never a shard: every node's dmcproxy can serve every
database, and the database's proxy policy (Redis Enterprise's) says which of them are advertised:

- `all-nodes`: every node whose proxy serves it (the default: what dmc runs);
- `all-master-shards`: the nodes that hold one of its master shards;
- `single`: one node, the first of the ones above.

A node serves a database when it is a member, its heartbeat is alive, its dmcproxy is RUNNING
(as the heartbeat reports it) and that dmcproxy has acknowledged a map of the database. The
order is stable: nodes holding a master shard first, then by uid; the first is the database's
*master* endpoint, the one Sentinel gives (`get-master-addr-by-name`). When a policy names no
serving node (its master shards' nodes are down), the other serving nodes are advertised, so a
client is never sent nowhere while a proxy serves.

DNS names (under the cluster's FQDN, `dmc cluster create --name`, default DEFAULT_FQDN):
`redis-<port>.<fqdn>` (the external name) and `redis-<port>.internal.<fqdn>` (RE's internal
name) for each database; `node<uid>.<fqdn>` for each node (the zone's name servers).

This module is pure (no I/O, importable by the schema); control/discovery_follower.py reads
the view from CCS and keeps it current.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control import schema

DEFAULT_FQDN = "cluster.dmc.local"
FQDN = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                  r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")   # a cluster's name
PROXY_POLICIES = ("single", "all-master-shards", "all-nodes")
DEFAULT_PROXY_POLICY = "all-nodes"
DNS_TTL = 5                 # seconds: a moved endpoint is followed within a heartbeat's TTL + this


def dns_name(port: int, fqdn: str) -> str:
    """The database's external DNS name (RE's `dns_address_master`)."""
    return f"redis-{port}.{fqdn}"


def internal_dns_name(port: int, fqdn: str) -> str:
    return f"redis-{port}.internal.{fqdn}"


def node_dns_name(uid: int, fqdn: str) -> str:
    return f"node{uid}.{fqdn}"


def run_id(*parts) -> str:
    """A stable 40-hex id (Sentinel's run ids) for what `parts` name."""
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


@dataclass(frozen=True)
class NodeView:
    uid: int
    address: str
    sentinel_port: int | None
    dns_port: int | None
    up: bool                  # its heartbeat is alive


@dataclass(frozen=True)
class DbEndpoint:
    uid: int
    name: str
    port: int
    policy: str
    addresses: tuple[str, ...]        # node addresses advertised, the master endpoint first

    @property
    def master(self) -> str | None:
        return self.addresses[0] if self.addresses else None


@dataclass
class DiscoveryView:
    fqdn: str
    nodes: dict[int, NodeView] = field(default_factory=dict)
    dbs: dict[int, DbEndpoint] = field(default_factory=dict)
    read_at: float = 0.0              # wall-clock time of the CCS read (0: never read)
    serial: int = 0                   # the zone's SOA serial, as CCS holds it (cluster:dns_zone)

    def digest(self) -> str:
        """A hash of what the zone answers (names, addresses, name servers): equal views on two
        nodes have equal digests; the master's pdns_server gives the zone a new serial when the
        digest changes."""
        zone = sorted(self.dns_records().items()), [(n.uid, n.address) for n in
                                                     self.name_servers()], self.fqdn.lower()
        return hashlib.sha1(repr(zone).encode()).hexdigest()

    def to_json(self) -> dict:
        """What the on-disk cache keeps (run/discovery_view.json)."""
        return {"fqdn": self.fqdn, "read_at": self.read_at, "serial": self.serial,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "dbs": [asdict(d) for d in self.dbs.values()]}

    @classmethod
    def from_json(cls, data: dict) -> DiscoveryView:
        nodes = (NodeView(**n) for n in data["nodes"])
        dbs = (DbEndpoint(**{**d, "addresses": tuple(d["addresses"])}) for d in data["dbs"])
        return cls(data["fqdn"], {n.uid: n for n in nodes}, {d.uid: d for d in dbs},
                   data.get("read_at", 0.0), data.get("serial", 0))

    def by_name(self, name: str) -> DbEndpoint | None:
        return next((d for d in self.dbs.values() if d.name == name), None)

    def dns_records(self) -> dict[str, tuple[str, ...]]:
        """Lower-case DNS name (no trailing dot) -> addresses, for every name of the zone."""
        out = {node_dns_name(n.uid, self.fqdn).lower(): (n.address,)
               for n in self.nodes.values()}
        for d in self.dbs.values():
            out[dns_name(d.port, self.fqdn).lower()] = d.addresses
            out[internal_dns_name(d.port, self.fqdn).lower()] = d.addresses
        return out

    def name_servers(self) -> list[NodeView]:
        """The nodes whose pdns_server is up: the zone's NS records."""
        return [n for _, n in sorted(self.nodes.items()) if n.up and n.dns_port]

    def sentinels(self) -> list[NodeView]:
        return [n for _, n in sorted(self.nodes.items()) if n.up and n.sentinel_port]


# ---- the view, from CCS's records (pure) -------------------------------------------------------

def serving_nodes(bdb_uid: int, nodes: dict[int, dict], beats: dict[int, dict | None],
                  acks: dict[int, dict]) -> list[int]:
    """The members whose dmcproxy serves the database now."""
    out = []
    for uid in sorted(nodes):
        beat = beats.get(uid)
        if not beat or uid not in acks:
            continue
        states = {s["name"]: s["state"] for s in beat.get("services", [])}
        if states.get("dmcproxy") == "RUNNING":
            out.append(uid)
    return out


def advertised(policy: str, serving: list[int], master_nodes: set[int]) -> list[int]:
    """The nodes a policy advertises, from the serving ones (see the module's docstring)."""
    ordered = sorted(serving, key=lambda u: (u not in master_nodes, u))
    if policy == "all-nodes":
        return ordered
    chosen = [u for u in ordered if u in master_nodes] or ordered
    return chosen[:1] if policy == "single" else chosen


def build_view(fqdn: str, nodes: dict[int, dict], beats: dict[int, dict | None],
               bdbs: dict[int, schema.Bdb], shards: dict[int, schema.Shard],
               acks: dict[int, dict[int, dict]], read_at: float = 0.0,
               serial: int = 0) -> DiscoveryView:
    view = DiscoveryView(fqdn, read_at=read_at, serial=serial)
    for uid, info in nodes.items():
        view.nodes[uid] = NodeView(uid, info["address"], info.get("sentinel_port"),
                                   info.get("dns_port"), bool(beats.get(uid)))
    for uid, record in bdbs.items():
        if record.status != "active":
            continue
        masters = {s.node_uid for s in shards.values() if s.bdb_uid == uid and s.role == "master"}
        serving = serving_nodes(uid, nodes, beats, acks.get(uid) or {})
        policy = record.proxy_policy or DEFAULT_PROXY_POLICY
        chosen = advertised(policy, serving, masters)
        view.dbs[uid] = DbEndpoint(uid, record.name, record.port, policy,
                                   tuple(nodes[u]["address"] for u in chosen))
    return view
