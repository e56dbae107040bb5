"""The OSS Cluster API's topology of a database, and the CLUSTER replies made from it.

With `oss_cluster` a database's endpoint looks like a node of a Redis Cluster whose nodes are
the proxies of the nodes that hold its master shards (Redis Enterprise's `all-master-shards`
policy); the data path (dmc/fastpath/cluster_api.pxi) answers CLUSTER SLOTS, SHARDS, NODES,
INFO and MYID with the replies made here, and -MOVED a key whose master shard is another
node's. This module is pure: a shard map and where each shard's node serves the database in,
replies out. It runs when a map or the setting changes, never per command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from dmc import _fastpath
from dmc.resp import Verbatim, encode_reply
from dmc.shard_map import ShardMap

Address = tuple[str, int]


def node_id(address: Address) -> str:
    """A cluster node's 40-hex-digit id: the same for a proxy address on every node and across
    restarts, so that a client sees one node id per address."""
    return hashlib.sha1(f"dmc-proxy:{address[0]}:{address[1]}".encode()).hexdigest()


@dataclass(frozen=True)
class ClusterTopology:
    """The cluster a client sees: its nodes (proxy addresses, in order of their first slot),
    the slot ranges each serves, and which of them is this proxy."""
    epoch: int                                    # the shard map's version
    nodes: tuple[Address, ...]
    ranges: tuple[tuple[tuple[int, int], ...], ...]   # per node, sorted
    myself: Address

    @classmethod
    def of(cls, shard_map: ShardMap, proxy_of: Callable[[Address], Address],
           myself: Address) -> "ClusterTopology":
        """proxy_of: the address of the proxy that serves the database on a shard's node."""
        owners: dict[Address, list[tuple[int, int]]] = {}
        for shard, ranges in zip(shard_map.shards, shard_map.ranges):
            owners.setdefault(proxy_of(shard), []).extend(ranges)
        merged = {node: tuple(_merge(r)) for node, r in owners.items()}
        nodes = tuple(sorted(merged, key=lambda n: merged[n][0][0]))
        return cls(shard_map.version, nodes, tuple(merged[n] for n in nodes), myself)

    def replies(self) -> dict[tuple[int, str], bytes]:
        """{(protocol, name): reply} for Proxy.set_cluster_api."""
        out = {}
        for proto in (2, 3):
            out[(proto, "slots")] = encode_reply(self.slots(), proto)
            out[(proto, "shards")] = encode_reply(self.shards(), proto)
            out[(proto, "nodes")] = encode_reply(Verbatim(self.nodes_text()), proto)
            out[(proto, "info")] = encode_reply(Verbatim(self.info_text()), proto)
            out[(proto, "myid")] = encode_reply(node_id(self.myself), proto)
        return out

    def slots(self) -> list:
        """CLUSTER SLOTS: [first, last, [ip, port, id, {}]] per range, by first slot."""
        rows = [[first, last, [host, port, node_id((host, port)), {}]]
                for (host, port), ranges in zip(self.nodes, self.ranges)
                for first, last in ranges]
        return sorted(rows, key=lambda row: row[0])

    def shards(self) -> list:
        """CLUSTER SHARDS: one shard per node, its proxy the shard's one master."""
        return [{"slots": [s for r in ranges for s in r],
                 "nodes": [{"id": node_id((host, port)), "port": port, "ip": host,
                            "endpoint": host, "role": "master", "replication-offset": 0,
                            "health": "online"}]}
                for (host, port), ranges in zip(self.nodes, self.ranges)]

    def nodes_text(self) -> str:
        """CLUSTER NODES; this proxy is listed (`myself`) even when its node holds no master
        shard, as a Redis Cluster node always lists itself."""
        lines = []
        listed = list(zip(self.nodes, self.ranges))
        if self.myself not in self.nodes:
            listed.append((self.myself, ()))
        for (host, port), ranges in listed:
            flags = "myself,master" if (host, port) == self.myself else "master"
            slots = " ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges)
            lines.append(f"{node_id((host, port))} {host}:{port}@0 {flags} - 0 0 {self.epoch} "
                         f"connected{' ' + slots if slots else ''}\n")
        return "".join(lines)

    def info_text(self) -> str:
        known = len(self.nodes) + (self.myself not in self.nodes)
        fields = {"cluster_state": "ok", "cluster_slots_assigned": 16384,
                  "cluster_slots_ok": 16384, "cluster_slots_pfail": 0, "cluster_slots_fail": 0,
                  "cluster_known_nodes": known, "cluster_size": len(self.nodes),
                  "cluster_current_epoch": self.epoch, "cluster_my_epoch": self.epoch,
                  "cluster_stats_messages_sent": 0, "cluster_stats_messages_received": 0,
                  "total_cluster_links_buffer_limit_exceeded": 0}
        return "".join(f"{k}:{v}\r\n" for k, v in fields.items())

    def node_of(self, shard_map: ShardMap, proxy_of: Callable[[Address], Address]
                ) -> tuple[dict[Address, int], list[str]]:
        """For Proxy.set_cluster_api: {shard: index of the node serving it, -1: this proxy},
        and the nodes' "ip:port"."""
        index = {node: i for i, node in enumerate(self.nodes)}
        node_of = {shard: (-1 if proxy_of(shard) == self.myself else index[proxy_of(shard)])
                   for shard in shard_map.shards}
        return node_of, [f"{h}:{p}" for h, p in self.nodes]


def _merge(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and out[-1][1] == first - 1:
            out[-1][1] = last
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


def apply(proxy: _fastpath.Proxy, shard_map: ShardMap | None,
          proxy_of: Callable[[Address], Address] | None, myself: Address) -> None:
    """Turn the OSS Cluster API on with the topology of shard_map (the map proxy has just
    installed), or off (shard_map None). Between two turns of proxy's loop."""
    if shard_map is None or proxy_of is None:
        proxy.set_cluster_api(None)
        return
    topology = ClusterTopology.of(shard_map, proxy_of, myself)
    node_of, addrs = topology.node_of(shard_map, proxy_of)
    proxy.set_cluster_api(topology.replies(), node_of, addrs)
