"""The cluster configuration store's schema: key names, value encoding, change notices.
The full description, for operators, is CCS.md beside this file.

Values are msgpack maps, encoded with msgspec; a reader given a type (control/schema.py's records)
decodes straight into it. Every write a service makes goes through `write` (or `write_fields`,
`delete`), which also publishes the changed key's name on CHANGES so that services on every node
react without polling (PUBLISH on the master reaches subscribers of every replica through
replication), and returns only once a majority of the copies has it (`commit`).

The copies are ordered by POSITION, (term, index), kept in CCS itself: `commit` bumps its index
after the write, cluster_wd sets its term when its node's copy becomes the master's. It replicates
with the data and is on disk with it, so a copy restarted from its AOF still knows where it is; the
election votes only for a candidate whose copy is at least as far (control/election.py).

Only the elected master writes CCS; the copies of other nodes are read-only replicas, and a node's
own copy stays fenced (it refuses writes with -NOREPLICAS) unless cluster_wd made it writable.
"""

from __future__ import annotations

import msgspec
import trio

from control.redis_client import RedisUnavailable, ReplyError, checked, connect, subscribe

CHANGES = "ccs:changes"            # pub/sub: the name of every key that changed

MASTER = "cluster:master"          # {uid, term, address, ccs_port, since}
NODES = "cluster:nodes"            # hash: uid -> {uid, address, gossip_port, ccs_port, ...}
NODES_VERSION = "cluster:nodes_version"   # int, the members version cluster_wd gossips
FQDN = "cluster:fqdn"              # str: the cluster's name (its DNS zone), set by its first master
DNS_ZONE = "cluster:dns_zone"      # {serial, digest, time}: the zone's SOA serial (pdns_server)
POSITION = "ccs:position"          # hash {term, index}: where this copy is in CCS's history

# How long `commit` waits for a majority of the copies (WAIT): below the shortest per-call
# timeout of a CCS connection (1 s, connect_node's), so that the WAIT answers before it.
ACK_TIMEOUT_MS = 800


def heartbeat_key(uid: int) -> str:
    """node_heartbeat:<uid>: {time, started, address, services}; expires unless renewed."""
    return f"node_heartbeat:{uid}"


HEARTBEAT_TTL_MS = 3000


def pack(value) -> bytes:
    """A value (plain, or a msgspec Struct: a map of its fields) as msgpack; str as str, bytes
    as bin."""
    return msgspec.msgpack.encode(value)


def unpack(raw: bytes | None, type=None):
    """The msgpack value, as plain Python objects or, given a `type`, as that (a record)."""
    if raw is None:
        return None
    if type is None:
        return msgspec.msgpack.decode(raw)
    return msgspec.msgpack.decode(raw, type=type)


class NotAcknowledged(RedisUnavailable):
    """The master applied the write but fewer than a majority of the copies have it: it may be
    lost in a failover. The caller retries, as for any unavailable CCS (writes are idempotent)."""


def majority_replicas(members: int) -> int:
    """How many replicas, besides the master, make a majority of `members` copies."""
    return members // 2


async def commit(redis, commands: list[tuple], *, wait: bool = True) -> list:
    """Run `commands` on the master's copy (a pipeline; the first error reply raised), then
    bump POSITION's index and wait until a majority of the members' copies has both (WAIT:
    replication is one ordered stream, so a copy that has the bump has everything written
    before it). Past ACK_TIMEOUT_MS, NotAcknowledged. The replies of `commands`.
    `wait=False`: bumped, not waited for (cluster_wd's own records, which every new master
    writes again: its reconcile must not be held up, it fences the copy)."""
    replies = checked(await redis.pipeline([*commands, ("HINCRBY", POSITION, "index", 1),
                                            ("HLEN", NODES)]))
    wanted = majority_replicas(replies[-1]) if wait else 0
    if wanted:
        acked = await redis.execute("WAIT", wanted, ACK_TIMEOUT_MS)
        if acked < wanted:
            raise NotAcknowledged(f"ccs: {acked} of the {wanted} replicas a majority needs "
                                  f"acknowledged the write within {ACK_TIMEOUT_MS} ms")
    return replies[:len(commands)]


async def write(redis, key: str, value, *, field=None, px: int | None = None) -> None:
    """SET (or HSET of `field`) a msgpack value and announce the key on CHANGES; returns once a
    majority of the copies has it (`commit`)."""
    if field is not None:
        cmd = ("HSET", key, str(field), pack(value))
    elif px is not None:
        cmd = ("SET", key, pack(value), "PX", px)
    else:
        cmd = ("SET", key, pack(value))
    await commit(redis, [cmd, ("PUBLISH", CHANGES, key)])


async def write_fields(redis, key: str, values: dict) -> None:
    """HSET of several fields at once (one command: no reader sees some of them changed and
    not the others), announced on CHANGES; as `write`."""
    cmd = ("HSET", key, *(x for f, v in values.items() for x in (str(f), pack(v))))
    await commit(redis, [cmd, ("PUBLISH", CHANGES, key)])


async def delete(redis, key: str, *fields) -> None:
    """DEL the key (or HDEL its `fields`) and announce it on CHANGES; as `write`."""
    cmd = ("HDEL", key, *map(str, fields)) if fields else ("DEL", key)
    await commit(redis, [cmd, ("PUBLISH", CHANGES, key)])


def parse_position(reply) -> tuple[int, int]:
    """HMGET POSITION term index as (term, index); a copy that never had it is at (0, 0)."""
    term, index = reply
    return int(term or 0), int(index or 0)


async def read_position(redis) -> tuple[int, int]:
    """Where this copy is in CCS's history: (term, index), compared as a pair."""
    return parse_position(await redis.execute("HMGET", POSITION, "term", "index"))


async def read(redis, key: str, type=None):
    return unpack(await redis.execute("GET", key), type)


async def read_hash(redis, key: str, type=None) -> dict:
    """A hash whose fields are uids (nodes, databases, shards): {int uid: value}."""
    return int_hash(await redis.execute("HGETALL", key), type)


def int_hash(flat, type=None) -> dict:
    """HGETALL's flat reply of a hash keyed by uid, as {int uid: value}."""
    flat = flat or []
    return {int(k): unpack(v, type) for k, v in zip(flat[::2], flat[1::2])}


def str_hash(flat, type=None) -> dict:
    """HGETALL's flat reply of a hash keyed by strings (actions), as {str: value}."""
    flat = flat or []
    return {k.decode(): unpack(v, type) for k, v in zip(flat[::2], flat[1::2])}


async def connect_node(config, *, forwarded: bool = False, timeout: float = 1.0):
    """A connection to the node's own CCS copy (forwarded: to the master's, through
    heartbeatd) on its unix socket: the node's plaintext way in (NodeConfig.plain_tcp)."""
    port, path = (config.ccs_forward_port, config.forward_socket) if forwarded else \
        (config.ccs_port, config.ccs_socket)
    return await connect(config.address, port, timeout=timeout, unix_path=str(path))


def subscribe_node(config, channels: list[str], *, forwarded: bool = False,
                   timeout: float = 1.0):
    """`subscribe` on the node's own CCS copy (or the master's), as connect_node."""
    port, path = (config.ccs_forward_port, config.forward_socket) if forwarded else \
        (config.ccs_port, config.ccs_socket)
    return subscribe(config.address, port, channels, timeout=timeout, unix_path=str(path))


class Session:
    """A service's way to CCS on its node: reads from the node's own copy, writes through the
    node's `ccs_forward_port` (heartbeatd leads it to the master), and `changed`, an event set
    by every change notice. Connections are made lazily and dropped when they fail, so each
    call either works or raises RedisUnavailable / ReplyError; the caller decides to retry."""

    def __init__(self, address: str, ccs_port: int, forward_port: int,
                 sockets: dict[int, str] | None = None):
        # sockets: port -> the unix socket that serves it (a node's, NodeConfig.ccs_socket)
        self.address, self.ccs_port, self.forward_port = address, ccs_port, forward_port
        self.sockets = sockets or {}
        self._conns: dict[int, object] = {}
        self._locks: dict[int, object] = {}
        self.changed = None
        self.changed_keys: set[bytes] = set()

    @classmethod
    def of_node(cls, config) -> Session:
        return cls(config.address, config.ccs_port, config.ccs_forward_port,
                   {config.ccs_port: str(config.ccs_socket),
                    config.ccs_forward_port: str(config.forward_socket)})

    async def _conn(self, port: int):
        lock = self._locks.setdefault(port, trio.Lock())
        async with lock:
            conn = self._conns.get(port)
            if conn is None or conn.closed:
                conn = self._conns[port] = await connect(self.address, port, timeout=2.0,
                                                         unix_path=self.sockets.get(port))
            return conn

    async def local(self):
        """The node's own copy (read-only unless this node is the master)."""
        return await self._conn(self.ccs_port)

    async def master(self):
        """The master's copy, through the node's forwarded port."""
        return await self._conn(self.forward_port)

    async def watch(self, *, task_status=None) -> None:
        """Run forever: set `changed` (and remember the keys) on every change notice, and once
        a second anyway, so that a missed notice only delays a reaction."""
        self.changed = trio.Event()
        started = False
        while True:
            try:
                async with subscribe(self.address, self.ccs_port, [CHANGES],
                                     unix_path=self.sockets.get(self.ccs_port)) as sub:
                    if not started and task_status is not None:
                        task_status.started()
                        started = True
                    while True:
                        with trio.move_on_after(1.0):
                            _channel, key = await sub.__anext__()
                            self.changed_keys.add(key)
                        self.changed.set()
                        self.changed = trio.Event()
            except (RedisUnavailable, ReplyError, OSError):
                if not started and task_status is not None:
                    task_status.started()
                    started = True
                self.changed.set()
                self.changed = trio.Event()
                await trio.sleep(0.5)

    def poke(self) -> None:
        """Wake whoever waits in wait_changed, as a change notice would (from this process)."""
        if self.changed is not None:
            self.changed.set()

    async def wait_changed(self, timeout: float = 1.0) -> set[bytes]:
        """Wait for a change notice (at most `timeout`); the keys noticed since the last call."""
        if self.changed is not None:
            with trio.move_on_after(timeout):
                await self.changed.wait()
        else:
            await trio.sleep(timeout)
        keys, self.changed_keys = self.changed_keys, set()
        return keys

    async def aclose(self) -> None:
        for conn in self._conns.values():
            await conn.aclose()
        self._conns.clear()
