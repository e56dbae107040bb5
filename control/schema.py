"""The CCS schema of databases: the keys, what a bdb, a shard, a shard map and an action record
hold, how they are written (each write announced on `ccs.CHANGES`), and what a user may ask for
(the pydantic models cnm_http validates with). cnm_http writes requests with these helpers,
cnm_exec's machines carry them out, redis_mgr, node_wd and the node's dmcproxy read them. The
schema is described for operators in CCS.md beside this file; where shards go and which have
failed is control/cluster_view.py.

Every value is a msgpack map (`ccs.pack`). The four records services change, Bdb, Shard, Action
and BdbMap, are msgspec Structs encoded as those same maps (field name -> value, every field
written, None as nil): `ccs.read(redis, key, Bdb)` and the readers below decode them. Decoding
gives a field the record lacks its default (a record written by hand or by an older version),
and ignores a field the Struct does not name: it is not kept, so the next write drops it.
"""

from __future__ import annotations

import random
import time
import uuid

import msgspec

from control import ccs
from control.discovery import DEFAULT_FQDN, DEFAULT_PROXY_POLICY, dns_name
from dmc.shard_map import SLOT_COUNT

# ---- keys ----------------------------------------------------------------------------------

BDBS = "bdbs"                      # hash: bdb uid -> bdb record
SHARDS = "shards"                  # hash: shard uid -> shard record
ACTIONS = "actions"                # hash: action uid -> action record
COUNTERS = "cluster:counters"      # hash: "bdb", "shard" -> last uid given
SHARD_STATE = "shard_state"        # hash: shard uid -> what redis_mgr saw of the process
SHARD_HEALTH = "shard_health"      # hash: shard uid -> what node_wd's PING probe saw
NODE_REST = "cluster:rest"         # hash: node uid -> {address, port} of its cnm_http
CLUSTER_POLICY = "cluster:policy"  # the cluster's settings (PUT /v1/cluster): ClusterPolicy


def map_key(bdb_uid: int) -> str:
    """bdb_map:<uid>: the database's shard map, {version, paused, shards: [{uid, address,
    slots}]}; the version only grows. Every node's dmcproxy serves from it."""
    return f"bdb_map:{bdb_uid}"


def ack_key(bdb_uid: int) -> str:
    """proxy_ack:<uid>: hash, node uid -> {version, paused, bdb_version, time}: the newest map
    (and database record version) each node's dmcproxy has installed for the database; for a
    paused map, written once nothing the proxy had sent is unanswered."""
    return f"proxy_ack:{bdb_uid}"


def endpoint_status_key(bdb_uid: int) -> str:
    """endpoint_status:<uid>: hash, node uid -> {status: "failed", reason, time}: a node whose
    dmcproxy cannot serve the database's endpoint (its port is taken, say); the field is
    deleted once it serves it."""
    return f"endpoint_status:{bdb_uid}"


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
MULTI_SLOT_POLICIES = ("refuse", "sequential")     # dmc/fastpath/sequential.pxi
TLS_VERSIONS = ("1.2", "1.3")            # min_data_TLS_version, min_control_TLS_version
TLS_MODES = ("disabled", "enabled")         # a database's client TLS (dmc/fastpath/tls.pxi)
ENABLED_DISABLED = ("enabled", "disabled")  # Redis Enterprise's switches (enforce_client_authentication)


# ---- what a user asks for (validated by pydantic in cnm_http) --------------------------------

# Every number a user gives has an upper bound in the schema (a 400 naming the field), so nothing
# larger than CCS's msgpack (64 bits) or Redis's `save` (a C long) can take reaches them.
MAX_MEMORY_SIZE = 1 << 50          # 1 PiB
MAX_SECONDS = 10 * 366 * 86400     # ten years
MAX_COUNT = (1 << 31) - 1
MAX_UID = (1 << 31) - 1
MAX_QUERY_BUFFER = 1 << 40
DEFAULT_QUERY_BUFFER = 1 << 30     # Redis's client-query-buffer-limit default

CLUSTER_POLICY_DEFAULTS = {"shards_overbooking": False, "overbooking_percent": 0,
                           # failed REST logins (control/access.py), RE's defaults
                           "login_lockout_threshold": 5, "login_lockout_duration": 1800,
                           "login_lockout_counter_reset_after": 900,
                           # TLS protocols and ciphers (RE's names): the data path (database
                           # endpoints, proxy to shard and the shards' tls-ports under DPINE)
                           # and the control plane (REST, UI, metrics, CCS, gossip); "": the
                           # TLS library's defaults
                           "min_data_TLS_version": "1.2", "data_cipher_list": "",
                           "data_cipher_suites_tls_1_3": "", "min_control_TLS_version": "1.2",
                           "control_cipher_suites": ""}


def data_tls_policy(policy: dict) -> dict:
    """The cluster's data-path TLS settings as dmcproxy's (ProxyConfig) tls_* fields."""
    return {"tls_min_version": policy.get("min_data_TLS_version") or "1.2",
            "tls_ciphers": policy.get("data_cipher_list") or "",
            "tls_ciphersuites": policy.get("data_cipher_suites_tls_1_3") or ""}


async def cluster_policy(redis) -> dict:
    return {**CLUSTER_POLICY_DEFAULTS, **(ccs.unpack(await redis.execute("GET", CLUSTER_POLICY))
                                          or {})}


REQUEST_FLAGS = ("allow_privileged_port",)   # in a request, not fields of the database


class InvalidRequest(ValueError):
    """A request that is well-formed but cannot be carried out (HTTP 406 with the reason)."""


class Conflict(RuntimeError):
    """The database is being changed by another action (HTTP 409)."""


def persists(bdb: Bdb, role: str) -> bool:
    """Does a shard of this role write the database to disk? With replication only the replicas
    do (a master does no disk I/O); without it, the master."""
    if bdb.data_persistence == "disabled":
        return False
    return role == "replica" or not bdb.replication


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


# ---- the records (msgspec Structs, encoded as the msgpack maps CCS.md describes) ------------

class Bdb(msgspec.Struct, kw_only=True):
    """bdbs:<uid>, a database. The settings are BdbCreate's (same names, same defaults); the
    rest is written by cnm_http at creation and by cnm_exec after."""
    uid: int
    name: str = ""
    port: int = 0
    memory_size: int = 100 << 20
    shards_count: int = 1
    replication: bool = False
    data_persistence: str = "disabled"
    aof_policy: str = "appendfsync-every-sec"
    snapshot_policy: list[dict] = msgspec.field(
        default_factory=lambda: [{"secs": 3600, "writes": 1}])
    authentication_redis_pass: str = ""
    eviction_policy: str = "volatile-lru"
    proxy_policy: str | None = None               # None: all-nodes (control/discovery.py)
    oss_cluster: bool = False                     # the OSS Cluster API (dmc/fastpath/cluster_api.pxi)
    proxy_threads: int = 1                        # event loops per node for its endpoint (dmc/endpoint.py)
    client_query_buffer_limit: int | None = None  # None: DEFAULT_QUERY_BUFFER (dmcproxy)
    alert_settings: dict | None = None            # BdbAlertSettings' fields (alert_mgr)
    roles_permissions: list[dict] = []            # [{role_uid, redis_acl_uid}] (access.py)
    multi_slot_commands: str = "refuse"           # or sequential (dmc/fastpath/sequential.pxi)
    tls_mode: str = "disabled"                    # enabled: clients speak TLS (dmc/fastpath/tls.pxi)
    enforce_client_authentication: str = "disabled"     # enabled: a client certificate is required
    data_internode_encryption: bool = False       # DPINE: proxy -> shard and replication over TLS
    authentication_ssl_client_certs: list[dict] = []    # [{client_cert: PEM}] trusted with the CA
    authorized_names: list[str] = []    # with client auth: a certificate must name one (CN/SAN)
    backup_interval: int = 0
    backup_location: str | None = None
    status: str = "active"                        # pending, active, deleting, creation-failed
    version: int = 0                              # + 1 per bdb_update (proxy_ack's bdb_version)
    action_uid: str | None = None                 # the bdb_create that made it
    redis_version: str | None = None
    created_time: float | None = None
    last_changed_time: float | None = None
    last_backup_time: float | None = None
    last_backup_id: str | None = None
    backup_status: str | None = None              # succeeded, failed
    backup_failure_reason: str | None = None


class Shard(msgspec.Struct, kw_only=True):
    """shards:<uid>, one redis-server of a database, placed on a node."""
    uid: int
    bdb_uid: int
    node_uid: int
    role: str                                     # master, replica
    port: int
    slots: list[list[int]]                        # [[first, last], ...]
    tls_port: int = 0                             # its tls-port, when its database has DPINE on
    master_uid: int | None = None                 # a replica's master
    restart_after: float | None = None            # node_wd: start a failed master again


class Action(msgspec.Struct, kw_only=True):
    """actions:<uid>, a change cnm_exec carries out (control/machines/)."""
    action_uid: str
    name: str
    object_type: str
    object_uid: int | None
    status: str = "pending"                       # pending, active, completed, failed
    progress: float = 0
    step: str = "queued"
    error: str | None = None
    params: dict = {}
    state: dict = {}                              # the machine's, saved after each step
    bdb_uid: int | None = None                    # whose lock is released at the end
    result: dict | None = None                    # what a bdb_backup or bdb_import made
    creation_time: float = 0
    update_time: float = 0


class MapShard(msgspec.Struct, kw_only=True):
    uid: int
    address: str                                  # host:port
    slots: list[list[int]]
    tls_port: int = 0                             # the shard's tls-port (DPINE), 0: none


class BdbMap(msgspec.Struct, kw_only=True):
    """bdb_map:<uid>, what every dmcproxy serves (dmc.shard_map.ShardMap.from_dict reads it)."""
    version: int
    paused: bool = False
    shards: list[MapShard] = []


def set_fields(record: msgspec.Struct, **fields) -> None:
    """Change fields of a record in place (a name the record does not have is AttributeError,
    not a new key)."""
    for name, value in fields.items():
        setattr(record, name, value)


def as_dict(record: msgspec.Struct) -> dict:
    """The record as the plain map CCS holds (for JSON, REST replies, tests)."""
    return msgspec.to_builtins(record)


# ---- records in CCS -------------------------------------------------------------------------

async def next_uid(redis, kind: str) -> int:
    return int(await redis.execute("HINCRBY", COUNTERS, kind, 1))


async def bdbs(redis) -> dict[int, Bdb]:
    return await ccs.read_hash(redis, BDBS, Bdb)


async def shards(redis) -> dict[int, Shard]:
    return await ccs.read_hash(redis, SHARDS, Shard)


async def actions(redis) -> dict[str, Action]:
    return ccs.str_hash(await redis.execute("HGETALL", ACTIONS), Action)


async def get_bdb(redis, uid: int) -> Bdb | None:
    return ccs.unpack(await redis.execute("HGET", BDBS, str(uid)), Bdb)


async def get_shard(redis, uid: int) -> Shard | None:
    return ccs.unpack(await redis.execute("HGET", SHARDS, str(uid)), Shard)


async def get_action(redis, uid: str) -> Action | None:
    return ccs.unpack(await redis.execute("HGET", ACTIONS, uid), Action)


async def get_map(redis, bdb_uid: int) -> BdbMap | None:
    return await ccs.read(redis, map_key(bdb_uid), BdbMap)


async def put_bdb(redis, bdb: Bdb) -> None:
    bdb.last_changed_time = time.time()
    await ccs.write(redis, BDBS, bdb, field=bdb.uid)


async def put_shard(redis, shard: Shard) -> None:
    await ccs.write(redis, SHARDS, shard, field=shard.uid)


async def put_shards(redis, *shards: Shard) -> None:
    """Several shard records in one write (a failover's two roles swapped at once)."""
    await ccs.write_fields(redis, SHARDS, {s.uid: s for s in shards})


async def put_action(redis, action: Action) -> None:
    action.update_time = time.time()
    await ccs.write(redis, ACTIONS, action, field=action.action_uid)


def new_action(name: str, object_type: str, object_uid: int | None, params: dict, *,
               bdb_uid: int | None = None) -> Action:
    now = time.time()
    return Action(action_uid=str(uuid.uuid4()), name=name, object_type=object_type,
                  object_uid=object_uid, params=params, bdb_uid=bdb_uid, creation_time=now,
                  update_time=now)


async def submit(redis, action: Action, *, lock_bdb: int | None = None) -> Action:
    """Record an action for cnm_exec (on the master) to run. With `lock_bdb`, the database is
    locked for it first: if another action holds the lock, Conflict."""
    if lock_bdb is not None:
        ok = await redis.execute("SET", lock_key(lock_bdb), action.action_uid, "NX")
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


async def release_ended(redis, actions: dict[str, Action]) -> list[int]:
    """Drop every database lock whose action has ended (completed or failed): a master that
    lost its CCS between an action's last save and its release leaves one behind, and nothing
    else would ever drop it (a chaos run's hour found two, every later change of both
    databases refused). A lock whose action is not recorded yet is a submit in progress: kept.
    Returns the databases whose lock was dropped."""
    dropped = []
    for uid in await bdbs(redis):
        holder = await redis.execute("GET", lock_key(uid))
        action = actions.get(holder.decode()) if holder else None
        if action is not None and action.status in ("completed", "failed"):
            await release(redis, uid, action.action_uid)
            dropped.append(uid)
    return dropped


async def relocate(redis, shard: Shard, node: int, shards: dict[int, Shard]) -> None:
    """Place the shard on `node`, on a free port there (redis_mgr starts it, and the old
    node's stops it)."""
    shard.node_uid = node
    used = used_shard_ports(shards)
    shard.port = free_shard_port(used)
    shard.tls_port = free_shard_port(used)
    await put_shard(redis, shard)


def shard_address(shard: Shard, nodes: dict[int, dict]) -> str:
    return f"{nodes[shard.node_uid]['address']}:{shard.port}"


def free_db_port(used: set[int]) -> int:
    for port in DB_PORTS:
        if port not in used:
            return port
    raise InvalidRequest("no free database port in 10000-19999")


def used_shard_ports(shards: dict[int, Shard]) -> set[int]:
    """Every port the shards hold: their ports and their tls-ports."""
    return {s.port for s in shards.values()} | {s.tls_port for s in shards.values() if s.tls_port}


def free_shard_port(used: set[int], rng: random.Random | None = None) -> int:
    rng = rng or random.Random()
    for _ in range(1000):
        port = rng.choice(SHARD_PORTS)
        if port not in used:
            used.add(port)
            return port
    raise InvalidRequest("no free shard port in 20000-29999")


def public_bdb(bdb: Bdb, nodes: dict[int, dict], shard_uids: list[int],
               fqdn: str = DEFAULT_FQDN, failures: dict[int, dict] | None = None,
               addresses: list[str] | None = None) -> dict:
    """The database as the REST API shows it (Redis Enterprise's field names); `failures`:
    its endpoint_status hash, the nodes that cannot serve its endpoint; `addresses`: where
    its endpoint is served now, as its proxy_policy advertises it (ClusterView.
    endpoint_addresses; default: every member)."""
    out = as_dict(bdb)
    out["shard_list"] = sorted(shard_uids)
    failed = [{"node_uid": n, "addr": (nodes.get(n) or {}).get("address"),
               "reason": f.get("reason"), "time": f.get("time")}
              for n, f in sorted((failures or {}).items()) if n in nodes]
    out["endpoints"] = [{"uid": f"{bdb.uid}:1", "port": bdb.port,
                         "dns_address_master": dns_name(bdb.port, fqdn),
                         "addr": addresses if addresses is not None
                         else [n["address"] for _, n in sorted(nodes.items())],
                         "addr_type": "external",
                         "proxy_policy": bdb.proxy_policy or DEFAULT_PROXY_POLICY,
                         "status": "failed" if failed else "active", "failed_nodes": failed}]
    return out


async def endpoint_failures(redis, uids) -> dict[int, dict[int, dict]]:
    """The endpoint_status hash of each database in `uids` (one round trip)."""
    uids = list(uids)
    if not uids:
        return {}
    replies = await redis.pipeline([("HGETALL", endpoint_status_key(u)) for u in uids])
    return {u: ccs.int_hash(reply) for u, reply in zip(uids, replies)
            if isinstance(reply, list) and reply}
