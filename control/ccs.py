"""The cluster configuration store's schema: key names, value encoding, change notices.
The full description, for operators, is CCS.md beside this file.

Values are msgpack maps. Every write a service makes goes through `write`, which also publishes
the changed key's name on CHANGES so that services on every node react without polling (PUBLISH
on the master reaches subscribers of every replica through replication).

Only the elected master writes CCS; the copies of other nodes are read-only replicas, and a node's
own copy stays fenced (it refuses writes with -NOREPLICAS) unless cluster_wd made it writable.
"""

from __future__ import annotations

import msgpack

from control.redis_client import ReplyError

CHANGES = "ccs:changes"            # pub/sub: the name of every key that changed

MASTER = "cluster:master"          # {uid, term, address, ccs_port, since}
NODES = "cluster:nodes"            # hash: uid -> {uid, address, gossip_port, ccs_port, ...}
NODES_VERSION = "cluster:nodes_version"   # int, the members version cluster_wd gossips


def heartbeat_key(uid: int) -> str:
    """node_heartbeat:<uid>: {time, started, address, services}; expires unless renewed."""
    return f"node_heartbeat:{uid}"


HEARTBEAT_TTL_MS = 3000


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes | None):
    if raw is None:
        return None
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


async def write(redis, key: str, value, *, field=None, px: int | None = None) -> None:
    """SET (or HSET of `field`) a msgpack value and announce the key on CHANGES."""
    if field is not None:
        cmd = ("HSET", key, str(field), pack(value))
    elif px is not None:
        cmd = ("SET", key, pack(value), "PX", px)
    else:
        cmd = ("SET", key, pack(value))
    for reply in await redis.pipeline([cmd, ("PUBLISH", CHANGES, key)]):
        if isinstance(reply, ReplyError):
            raise reply


async def read(redis, key: str):
    return unpack(await redis.execute("GET", key))


async def read_hash(redis, key: str) -> dict:
    flat = await redis.execute("HGETALL", key) or []
    return {int(k): unpack(v) for k, v in zip(flat[::2], flat[1::2])}
