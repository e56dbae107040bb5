"""The CCS schema of databases: the keys, what a bdb, a shard, a shard map and an action record
hold, how they are written (each write announced on `ccs.CHANGES`), and what a user may ask for
(the pydantic models cnm_http validates with). cnm_http writes requests with these helpers,
cnm_exec's machines carry them out, redis_mgr, node_wd and the node's dmcproxy read them. The
schema is described for operators in CCS.md beside this file; where shards go and which have
failed is control/cluster_view.py.

Every value is a msgpack map (`ccs.pack`).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from control import ccs
from control.discovery import DEFAULT_FQDN, DEFAULT_PROXY_POLICY, PROXY_POLICIES, dns_name
from dmc.shard_map import SLOT_COUNT

# ---- keys ----------------------------------------------------------------------------------

BDBS = "bdbs"                      # hash: bdb uid -> bdb record
SHARDS = "shards"                  # hash: shard uid -> shard record
ACTIONS = "actions"                # hash: action uid -> action record
COUNTERS = "cluster:counters"      # hash: "bdb", "shard" -> last uid given
SHARD_STATE = "shard_state"        # hash: shard uid -> what redis_mgr saw of the process
SHARD_HEALTH = "shard_health"      # hash: shard uid -> what node_wd's PING probe saw
NODE_REST = "cluster:rest"         # hash: node uid -> {address, port} of its cnm_http


def map_key(bdb_uid: int) -> str:
    """bdb_map:<uid>: the database's shard map, {version, paused, shards: [{uid, address,
    slots}]}; the version only grows. Every node's dmcproxy serves from it."""
    return f"bdb_map:{bdb_uid}"


def ack_key(bdb_uid: int) -> str:
    """proxy_ack:<uid>: hash, node uid -> {version, paused, bdb_version, time}: the newest map
    (and database record version) each node's dmcproxy has installed for the database; for a
    paused map, written once nothing the proxy had sent is unanswered."""
    return f"proxy_ack:{bdb_uid}"


def lock_key(bdb_uid: int) -> str:
    """bdb_lock:<uid>: the action uid that is changing the database; set with NX, so a second
    change while one runs is refused (HTTP 409)."""
    return f"bdb_lock:{bdb_uid}"


# ---- ranges of ports (Redis Enterprise's) ---------------------------------------------------

DB_PORTS = range(10000, 20000)
SHARD_PORTS = range(20000, 30000)

EVICTION_POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
                     "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


PERSISTENCE = ("disabled", "aof", "snapshot")
AOF_POLICIES = ("appendfsync-every-sec", "appendfsync-always")


# ---- what a user asks for (validated by pydantic in cnm_http) --------------------------------

class SnapshotRule(BaseModel):
    """One rule of a snapshot policy: an RDB is written `secs` seconds after at least `writes`
    writes (Redis Enterprise's snapshot_policy, Redis's `save <secs> <writes>`)."""
    model_config = ConfigDict(extra="forbid")

    secs: int = Field(ge=1)
    writes: int = Field(1, ge=1)


class AlertSetting(BaseModel):
    """One alert of a database (RE's `bdb_alert_settings_with_threshold`): on or off, and its
    threshold in the alert's unit (control/alerts.py), a number or RE's string of one."""
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: str | float | None = None


class BdbAlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bdb_size: AlertSetting | None = None
    bdb_high_latency: AlertSetting | None = None
    bdb_high_throughput: AlertSetting | None = None
    bdb_low_throughput: AlertSetting | None = None
    bdb_backup_delayed: AlertSetting | None = None
    bdb_long_running_action: AlertSetting | None = None


class BdbSettings(BaseModel):
    """The fields of a database a user sets; all optional, for PUT."""
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    port: int | None = Field(None, ge=1, le=65535)
    memory_size: int | None = Field(None, ge=1 << 20, description="bytes, split over the shards")
    shards_count: int | None = Field(None, ge=1, le=64)
    replication: bool | None = None
    data_persistence: Literal[PERSISTENCE] | None = Field(
        None, description="with replication only the replicas persist; without it, the master")
    aof_policy: Literal[AOF_POLICIES] | None = None
    snapshot_policy: list[SnapshotRule] | None = Field(
        None, min_length=1, description="data_persistence `snapshot`: save after `secs` "
        "seconds if at least `writes` writes were made (Redis's `save`)")
    authentication_redis_pass: str | None = Field(None, max_length=256)
    eviction_policy: Literal[EVICTION_POLICIES] | None = None
    backup_interval: int | None = Field(
        None, ge=0, description="seconds between scheduled backups (job_scheduler); 0: none")
    backup_location: str | None = Field(
        None, pattern=r"^/", max_length=4096, description="absolute path of the folder that "
        "holds the database's backups (default: `<cluster folder>/backups`); it must be "
        "reachable at this path from every node")
    proxy_policy: Literal[PROXY_POLICIES] | None = Field(
        None, description="which nodes' proxies DNS and Sentinel advertise (default all-nodes; "
        "see control/discovery.py)")
    alert_settings: BdbAlertSettings | None = Field(
        None, description="the database's alerts and thresholds (alert_mgr): bdb_size % of "
        "memory_size, bdb_high_latency µs, bdb_high/low_throughput ops/s, bdb_backup_delayed "
        "and bdb_long_running_action seconds")


class BdbCreate(BdbSettings):
    """POST /v1/bdbs: a name is required, everything else has Redis Enterprise's default."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    memory_size: int = Field(100 << 20, ge=1 << 20, description="bytes, split over the shards")
    shards_count: int = Field(1, ge=1, le=64)
    replication: bool = False
    data_persistence: Literal[PERSISTENCE] = "disabled"
    aof_policy: Literal[AOF_POLICIES] = "appendfsync-every-sec"
    snapshot_policy: list[SnapshotRule] = Field(
        default_factory=lambda: [SnapshotRule(secs=3600, writes=1)], min_length=1)
    authentication_redis_pass: str = Field("", max_length=256)
    eviction_policy: Literal[EVICTION_POLICIES] = "volatile-lru"
    backup_interval: int = Field(
        0, ge=0, description="seconds between scheduled backups (job_scheduler); 0: none")


class InvalidRequest(ValueError):
    """A request that is well-formed but cannot be carried out (HTTP 406 with the reason)."""


class Conflict(RuntimeError):
    """The database is being changed by another action (HTTP 409)."""


def persists(bdb: dict, role: str) -> bool:
    """Does a shard of this role write the database to disk? With replication only the replicas
    do (a master does no disk I/O); without it, the master."""
    if (bdb.get("data_persistence") or "disabled") == "disabled":
        return False
    return role == "replica" or not bdb.get("replication")


# ---- slots (pure) ----------------------------------------------------------------------------

def split_slots(count: int) -> list[list[list[int]]]:
    """The 16384 slots split evenly: one [[first, last]] per shard."""
    return [[[i * SLOT_COUNT // count, (i + 1) * SLOT_COUNT // count - 1]] for i in range(count)]


def halve(ranges: list[list[int]], parts: int) -> list[list[list[int]]]:
    """One shard's slot ranges split into `parts` consecutive pieces of (nearly) equal size."""
    slots = [s for a, b in ranges for s in range(a, b + 1)]
    if len(slots) < parts:
        raise InvalidRequest(f"a shard with {len(slots)} slots cannot be split in {parts}")
    pieces = []
    for i in range(parts):
        part = slots[i * len(slots) // parts:(i + 1) * len(slots) // parts]
        pieces.append(to_ranges(part))
    return pieces


def to_ranges(slots: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(slots):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


# ---- records in CCS -------------------------------------------------------------------------

async def next_uid(redis, kind: str) -> int:
    return int(await redis.execute("HINCRBY", COUNTERS, kind, 1))


async def bdbs(redis) -> dict[int, dict]:
    return await ccs.read_hash(redis, BDBS)


async def shards(redis) -> dict[int, dict]:
    return await ccs.read_hash(redis, SHARDS)


async def actions(redis) -> dict[str, dict]:
    return ccs.str_hash(await redis.execute("HGETALL", ACTIONS))


async def get_bdb(redis, uid: int) -> dict | None:
    return ccs.unpack(await redis.execute("HGET", BDBS, str(uid)))


async def get_action(redis, uid: str) -> dict | None:
    return ccs.unpack(await redis.execute("HGET", ACTIONS, uid))


async def put_bdb(redis, bdb: dict) -> None:
    bdb["last_changed_time"] = time.time()
    await ccs.write(redis, BDBS, bdb, field=bdb["uid"])


async def put_shard(redis, shard: dict) -> None:
    await ccs.write(redis, SHARDS, shard, field=shard["uid"])


async def put_action(redis, action: dict) -> None:
    action["update_time"] = time.time()
    await ccs.write(redis, ACTIONS, action, field=action["action_uid"])


def new_action(name: str, object_type: str, object_uid: int | None, params: dict) -> dict:
    now = time.time()
    return {"action_uid": str(uuid.uuid4()), "name": name, "object_type": object_type,
            "object_uid": object_uid, "status": "pending", "progress": 0, "step": "queued",
            "error": None, "params": params, "state": {}, "creation_time": now,
            "update_time": now}


async def submit(redis, action: dict, *, lock_bdb: int | None = None) -> dict:
    """Record an action for cnm_exec (on the master) to run. With `lock_bdb`, the database is
    locked for it first: if another action holds the lock, Conflict."""
    if lock_bdb is not None:
        ok = await redis.execute("SET", lock_key(lock_bdb), action["action_uid"], "NX")
        if ok is None:
            holder = (await redis.execute("GET", lock_key(lock_bdb)) or b"?").decode()
            raise Conflict(f"database {lock_bdb} is being changed by action {holder}")
    await put_action(redis, action)
    return action


async def release(redis, bdb_uid: int, action_uid: str) -> None:
    """Drop the database's lock if `action_uid` holds it."""
    await redis.execute("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "return redis.call('DEL', KEYS[1]) end return 0",
                        1, lock_key(bdb_uid), action_uid)


async def relocate(redis, shard: dict, node: int, shards: dict) -> None:
    """Place the shard on `node`, on a free port there (redis_mgr starts it, and the old
    node's stops it)."""
    shard.update(node_uid=node, port=free_shard_port({s["port"] for s in shards.values()}))
    await put_shard(redis, shard)


def shard_address(shard: dict, nodes: dict[int, dict]) -> str:
    return f"{nodes[shard['node_uid']]['address']}:{shard['port']}"


def free_db_port(used: set[int]) -> int:
    for port in DB_PORTS:
        if port not in used:
            return port
    raise InvalidRequest("no free database port in 10000-19999")


def free_shard_port(used: set[int], rng: random.Random | None = None) -> int:
    rng = rng or random.Random()
    for _ in range(1000):
        port = rng.choice(SHARD_PORTS)
        if port not in used:
            used.add(port)
            return port
    raise InvalidRequest("no free shard port in 20000-29999")


def public_bdb(bdb: dict, nodes: dict[int, dict], shard_uids: list[int],
               fqdn: str = DEFAULT_FQDN) -> dict:
    """The database as the REST API shows it (Redis Enterprise's field names)."""
    out = {k: v for k, v in bdb.items() if not k.startswith("_")}
    out["shard_list"] = sorted(shard_uids)
    out["endpoints"] = [{"uid": f"{bdb['uid']}:1", "port": bdb["port"],
                         "dns_address_master": dns_name(bdb["port"], fqdn),
                         "addr": [n["address"] for _, n in sorted(nodes.items())],
                         "addr_type": "external",
                         "proxy_policy": bdb.get("proxy_policy") or DEFAULT_PROXY_POLICY}]
    return out
