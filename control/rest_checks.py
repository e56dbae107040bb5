"""What the cluster can and cannot have: the checks cnm_http makes of a request against the
cluster view before it writes anything (pure functions; a failed check is schema.InvalidRequest,
HTTP 406). A dry run makes exactly the same checks."""

from __future__ import annotations

import os

from control import schema
from control.cluster_view import ClusterView, place

MIN_SHARD_MEMORY = 1 << 20       # a shard smaller than 1 MB cannot hold a useful dataset
MAX_SHARDS_PER_NODE = 32         # redis-server processes a node is given at most
NODE_PORT_NAMES = {"ccs_port": "CCS", "gossip_port": "cluster_wd", "ccs_forward_port":
                   "heartbeatd", "rest_port": "cnm_http"}


def check_port(view: ClusterView, port: int, uid: int | None) -> None:
    """406 unless `port` is free for database `uid` (None: a new one)."""
    if port in schema.SHARD_PORTS:
        raise schema.InvalidRequest(f"port {port} is in the shards' range "
                                 f"{schema.SHARD_PORTS.start}-{schema.SHARD_PORTS.stop - 1}")
    if port < 1024 and os.geteuid() != 0:
        raise schema.InvalidRequest(f"port {port} is privileged (below 1024)")
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


def check_placement(view: ClusterView, count: int, replication: bool) -> list[tuple]:
    """Where `count` new masters (and replicas) would go among the nodes up; 406 if nowhere."""
    load = view.load()
    placement = place(count, replication, view.up, load)
    crowded = {n: c for n, c in load.items() if c > MAX_SHARDS_PER_NODE}
    if crowded:
        raise schema.InvalidRequest(
            f"{count * (2 if replication else 1)} more shards do not fit on the "
            f"{len(view.up)} nodes up (at most {MAX_SHARDS_PER_NODE} shards per node)")
    return placement


def plan_create(view: ClusterView, body: schema.BdbCreate) -> tuple[dict, list[tuple]]:
    """The new database's record (without uid/status) and its placement, or InvalidRequest."""
    record = body.model_dump()
    check_name(view, record["name"], None)
    if record["port"] is None:
        used = {b.port for b in view.bdbs.values()}
        used |= {a.params.get("port") for a in view.unfinished_updates(None)}
        used |= {member.get(k) for member in view.nodes.values() for k in NODE_PORT_NAMES}
        record["port"] = schema.free_db_port(used)
    else:
        check_port(view, record["port"], None)
    check_memory(record["memory_size"], record["shards_count"])
    placement = check_placement(view, record["shards_count"], record["replication"])
    return record, placement


def plan_update(view: ClusterView, current: schema.Bdb, given: dict) -> tuple[str | None, dict]:
    """The action a PUT starts, (name, params), or (None, {}) if nothing changes."""
    uid = current.uid
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
        check_placement(view, new - old, current.replication)
        return "bdb_reshard", {"shards_count": new}
    if "name" in changes:
        check_name(view, changes["name"], uid)
    if "port" in changes:
        check_port(view, changes["port"], uid)
    if "memory_size" in changes:
        check_memory(changes["memory_size"], current.shards_count)
    if changes.get("replication") and not current.replication:
        load = view.load()
        place(0, True, view.up, load)           # two nodes up, or InvalidRequest
        if sum(load.values()) + current.shards_count > MAX_SHARDS_PER_NODE * len(view.up):
            raise schema.InvalidRequest(f"{current.shards_count} replicas do not fit on the "
                                     f"{len(view.up)} nodes up")
    return "bdb_update", changes


def check_backup_location(location: str | None) -> None:
    """406 if the folder for backups is a file (a folder not there yet is made when needed)."""
    if location and os.path.exists(location) and not os.path.isdir(location):
        raise schema.InvalidRequest(f"backup location {location} is a file, not a folder")
