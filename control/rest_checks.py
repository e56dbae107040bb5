"""What the cluster can and cannot have: the checks cnm_http makes of a request against the
cluster view before it writes anything (pure functions; a failed check is schema.InvalidRequest,
HTTP 406). A dry run makes exactly the same checks."""

from __future__ import annotations

import os

from control import rest_models, schema
from control.cluster_view import ClusterView, place

MIN_SHARD_MEMORY = 1 << 20       # a shard smaller than 1 MB cannot hold a useful dataset
MAX_SHARDS_PER_NODE = 32         # redis-server processes a node is given at most
NODE_PORT_NAMES = {"ccs_port": "CCS", "gossip_port": "cluster_wd", "ccs_forward_port":
                   "heartbeatd", "rest_port": "cnm_http"}


def check_port(view: ClusterView, port: int, uid: int | None,
               allow_privileged: bool = False) -> None:
    """406 unless `port` is free for database `uid` (None: a new one) as far as CCS knows;
    whether the nodes can bind it is cnm_http's probe (rest_models.PortProbe)."""
    if port in schema.SHARD_PORTS:
        raise schema.InvalidRequest(f"port {port} is in the shards' range "
                                 f"{schema.SHARD_PORTS.start}-{schema.SHARD_PORTS.stop - 1}")
    if port < 1024 and not allow_privileged:
        raise schema.InvalidRequest(f"port {port} is privileged (below 1024; databases use "
                                    f"{schema.DB_PORTS.start}-{schema.DB_PORTS.stop - 1}): "
                                    "give allow_privileged_port to use it")
    for n, member in sorted(view.nodes.items()):
        for key, service in NODE_PORT_NAMES.items():
            if member.get(key) == port:
                raise schema.InvalidRequest(f"port {port} is used by {service} of node {n}")
    for other in view.bdbs.values():
        if other.uid != uid and other.port == port:
            raise schema.InvalidRequest(f"port {port} is used by database {other.uid} "
                                     f"({other.name})")
    for a in view.unfinished_updates(uid):
        if a.params.get("port") == port:
            raise schema.InvalidRequest(f"port {port} is being given to database {a.object_uid}")


def check_name(view: ClusterView, name: str, uid: int | None) -> None:
    for other in view.bdbs.values():
        if other.uid != uid and other.name == name:
            raise schema.InvalidRequest(f"name {name!r} is used by database {other.uid}")
    for a in view.unfinished_updates(uid):
        if a.params.get("name") == name:
            raise schema.InvalidRequest(f"name {name!r} is being given to database "
                                     f"{a.object_uid}")


def check_memory(memory_size: int, shards_count: int) -> None:
    if memory_size // shards_count < MIN_SHARD_MEMORY:
        raise schema.InvalidRequest(f"memory_size {memory_size} gives each of {shards_count} shards "
                                 f"less than {MIN_SHARD_MEMORY >> 20} MB")


def check_placement(view: ClusterView, count: int, replication: bool,
                    shard_memory: int = 0, policy: dict | None = None) -> list[tuple]:
    """Where `count` new masters (and replicas) would go among the nodes up, each shard booking
    `shard_memory` bytes; 406 if nowhere (too many shards, or not enough memory)."""
    load = view.load()
    placement = place(count, replication, view.up, load)
    crowded = {n: c for n, c in load.items() if c > MAX_SHARDS_PER_NODE}
    if crowded:
        raise schema.InvalidRequest(
            f"{count * (2 if replication else 1)} more shards do not fit on the "
            f"{len(view.up)} nodes up (at most {MAX_SHARDS_PER_NODE} shards per node)")
    new = {}
    for master, replica in placement:
        for node in (master, replica):
            if node is not None:
                new[node] = new.get(node, 0) + shard_memory
    check_memory_fits(view, new, policy)
    return placement


def booked_memory(view: ClusterView) -> dict[int, int]:
    """Bytes the shards of every database book on each node: its memory_size / shards_count
    per shard (master or replica)."""
    booked: dict[int, int] = {}
    for shard in view.shards.values():
        bdb = view.bdbs.get(shard.bdb_uid)
        if bdb is None:
            continue
        size = (bdb.memory_size or 0) // max(bdb.shards_count or 1, 1)
        booked[shard.node_uid] = booked.get(shard.node_uid, 0) + size
    return booked


def check_memory_fits(view: ClusterView, new: dict[int, int], policy: dict | None) -> None:
    """406 if `new` bytes on each node, on top of what its shards book already, exceed the
    node's memory (its heartbeat's memory_total) plus the cluster's overbooking percent;
    `shards_overbooking` (Redis Enterprise's policy name) turns the check off."""
    policy = {**schema.CLUSTER_POLICY_DEFAULTS, **(policy or {})}
    if policy["shards_overbooking"] or not new:
        return
    booked = booked_memory(view)
    factor = 1 + policy["overbooking_percent"] / 100
    for node, more in sorted(new.items()):
        total = (view.beats.get(node) or {}).get("memory_total")
        if not total or not more:
            continue                    # a node that does not report its memory: not checked
        capacity = int(total * factor)
        if booked.get(node, 0) + more > capacity:
            raise schema.InvalidRequest(
                f"not enough memory on node {node}: {_size(more)} more on the "
                f"{_size(booked.get(node, 0))} its shards book exceeds its {_size(capacity)} "
                f"({_size(total)} with overbooking_percent {policy['overbooking_percent']}; a "
                "replicated database books its memory twice)")


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MB"


def plan_create(view: ClusterView, body: rest_models.BdbCreate,
                policy: dict | None = None) -> tuple[dict, list[tuple]]:
    """The new database's record (without uid/status) and its placement, or InvalidRequest."""
    record = body.model_dump()
    allow_privileged = record.pop("allow_privileged_port")
    check_name(view, record["name"], None)
    if record["port"] is None:
        used = {b.port for b in view.bdbs.values()}
        used |= {a.params.get("port") for a in view.unfinished_updates(None)}
        used |= {member.get(k) for member in view.nodes.values() for k in NODE_PORT_NAMES}
        record["port"] = schema.free_db_port(used)
    else:
        check_port(view, record["port"], None, allow_privileged)
    check_memory(record["memory_size"], record["shards_count"])
    placement = check_placement(view, record["shards_count"], record["replication"],
                                record["memory_size"] // record["shards_count"], policy)
    return record, placement


def plan_update(view: ClusterView, current: schema.Bdb, given: dict,
                policy: dict | None = None) -> tuple[str | None, dict]:
    """The action a PUT starts, (name, params), or (None, {}) if nothing changes."""
    uid = current.uid
    given = dict(given)
    allow_privileged = given.pop("allow_privileged_port", False)
    changes = {k: v for k, v in given.items() if getattr(current, k) != v}
    if not changes:
        return None, {}
    if "shards_count" in changes:
        if len(changes) > 1:
            raise schema.InvalidRequest("change shards_count alone, not with "
                                     + ", ".join(sorted(k for k in changes if k != "shards_count")))
        old, new = current.shards_count, changes["shards_count"]
        if new < old:
            raise schema.InvalidRequest(f"shards_count can only grow (it is {old}, asked {new})")
        if new % old:
            raise schema.InvalidRequest(f"shards_count must be a multiple of the current {old} "
                                     f"(asked {new})")
        check_memory(current.memory_size, new)
        check_placement(view, new - old, current.replication)   # memory: the same in all
        return "bdb_reshard", {"shards_count": new}
    if "name" in changes:
        check_name(view, changes["name"], uid)
    if "port" in changes:
        check_port(view, changes["port"], uid, allow_privileged)
    shards_count = current.shards_count or 1
    if "memory_size" in changes:
        check_memory(changes["memory_size"], shards_count)
        grown = changes["memory_size"] - (current.memory_size or 0)
        if grown > 0:            # every shard of the database grows where it is
            new: dict[int, int] = {}
            for s in view.shards_of(uid):
                node = view.shards[s].node_uid
                new[node] = new.get(node, 0) + grown // shards_count
            check_memory_fits(view, new, policy)
    if changes.get("replication") and not current.replication:
        load = view.load()
        place(0, True, view.up, load)           # two nodes up, or InvalidRequest
        if sum(load.values()) + current.shards_count > MAX_SHARDS_PER_NODE * len(view.up):
            raise schema.InvalidRequest(f"{current.shards_count} replicas do not fit on the "
                                     f"{len(view.up)} nodes up")
        # the replicas book the database's memory a second time, spread over the nodes
        memory = changes.get("memory_size", current.memory_size or 0)
        check_memory_fits(view, {n: memory // len(view.up) for n in view.up}, policy)
    return "bdb_update", changes


def check_backup_location(location: str | None) -> None:
    """406 if the folder for backups is a file (a folder not there yet is made when needed)."""
    if location and os.path.exists(location) and not os.path.isdir(location):
        raise schema.InvalidRequest(f"backup location {location} is a file, not a folder")
