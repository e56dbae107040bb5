"""The cluster as CCS tells it, computed in one place: which nodes are up, how many shards each
holds, a shard's master/replica pair, whether a shard has failed, where new shards go, and
whether this node is the master. cnm_http validates requests against it, cnm_exec's machines
and node_wd's policy act on it, `dmc status` shows it.

A node is up while its heartbeat key (`node_heartbeat:<uid>`, written by its heartbeatd with
a 3 s expiry) exists. A shard has failed when its node is down, when its node's redis_mgr
reported its process `down`, or when its node's node_wd reported it `unresponsive` (no answer to
PING within the deadline): the three ways a shard stops serving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

from control import ccs, discovery, schema
from control.redis_client import RedisUnavailable, ReplyError, checked, info

UNFINISHED = ("pending", "active")


# ---- reading it ----------------------------------------------------------------------------

@dataclass
class ClusterView:
    """One consistent read of CCS (one pipeline), and the facts derived from it."""
    master: dict | None
    nodes: dict[int, dict]
    beats: dict[int, dict | None]
    bdbs: dict[int, schema.Bdb]
    shards: dict[int, schema.Shard]
    actions: dict[str, schema.Action] = field(default_factory=dict)
    states: dict[int, dict] = field(default_factory=dict)     # redis_mgr: the processes
    health: dict[int, dict] = field(default_factory=dict)     # node_wd: the PING probes

    @property
    def up(self) -> list[int]:
        """Members whose heartbeat key has not expired."""
        return sorted(u for u in self.nodes if self.beats.get(u))

    def running(self, service: str) -> list[int]:
        """Members up whose heartbeat says `service` is RUNNING under their supervisord."""
        return [u for u in self.up
                if any(s.get("name") == service and s.get("state") == "RUNNING"
                       for s in (self.beats.get(u) or {}).get("services", []))]

    def endpoint_addresses(self, bdb: schema.Bdb) -> list[str]:
        """Where the database's endpoint is served now, as its proxy_policy advertises it:
        the members up whose dmcproxy runs (control/discovery.py's rule, which DNS and
        Sentinel answer with); every member while none does yet (a database being made)."""
        serving = self.running("dmcproxy")
        masters = {s.node_uid for s in self.shards.values()
                   if s.bdb_uid == bdb.uid and s.role == "master"}
        chosen = discovery.advertised(bdb.proxy_policy or discovery.DEFAULT_PROXY_POLICY,
                                      serving, masters)
        return [self.nodes[u]["address"] for u in chosen] or \
            [n["address"] for _, n in sorted(self.nodes.items())]

    def load(self) -> dict[int, int]:
        """Shards per node up (0 for a node up without any)."""
        return node_load(self.shards, self.up)

    def shards_of(self, bdb_uid: int) -> list[int]:
        return sorted(u for u, s in self.shards.items() if s.bdb_uid == bdb_uid)

    def failed(self, shard: schema.Shard) -> bool:
        return shard_failed(shard, self.states, self.health, set(self.up))

    def unfinished_updates(self, exclude_bdb: int | None) -> list[schema.Action]:
        return [a for a in self.actions.values() if a.status in UNFINISHED
                and a.name == "bdb_update" and a.object_uid != exclude_bdb]


async def read_view(r, *, with_actions: bool = False) -> ClusterView:
    cmds = [("GET", ccs.MASTER), ("HGETALL", ccs.NODES), ("HGETALL", schema.BDBS),
            ("HGETALL", schema.SHARDS), ("HGETALL", schema.SHARD_STATE),
            ("HGETALL", schema.SHARD_HEALTH)] + \
        ([("HGETALL", schema.ACTIONS)] if with_actions else [])
    replies = checked(await r.pipeline(cmds))
    master = ccs.unpack(replies[0])
    nodes, states, health = (ccs.int_hash(replies[i]) for i in (1, 4, 5))
    bdbs = ccs.int_hash(replies[2], schema.Bdb)
    shards = ccs.int_hash(replies[3], schema.Shard)
    actions = ccs.str_hash(replies[6], schema.Action) if with_actions else {}
    beats = {}
    if nodes:
        uids = sorted(nodes)
        raw = await r.execute("MGET", *(ccs.heartbeat_key(u) for u in uids))
        beats = dict(zip(uids, map(ccs.unpack, raw)))
    return ClusterView(master, nodes, beats, bdbs, shards, actions, states, health)


async def nodes_up(redis, nodes: dict) -> set[int]:
    """Nodes whose heartbeat key has not expired."""
    if not nodes:
        return set()
    keys = [ccs.heartbeat_key(uid) for uid in nodes]
    flags = await redis.pipeline([("EXISTS", k) for k in keys])
    return {uid for uid, f in zip(nodes, flags) if f == 1}


async def tick_on_master(session, node_uid: int, tick, every: float, log) -> None:
    """Run forever: every `every` seconds, `await tick(local)` with the node's own CCS copy if
    this node is the master (a service of every node that only the master's acts); CCS being
    away skips a tick, logged."""
    while True:
        try:
            local = await session.local()
            if await master_here(local, node_uid):
                await tick(local)
        except (RedisUnavailable, ReplyError) as exc:
            log.info("tick skipped: %s", exc)
        await trio.sleep(every)


async def master_here(local, node_uid: int) -> bool:
    """This node is the elected master and its own CCS copy (`local`) is the master copy."""
    master = await ccs.read(local, ccs.MASTER)
    if not master or master["uid"] != node_uid:
        return False
    return (await info(local, "replication")).get("role") == "master"


# ---- shards --------------------------------------------------------------------------------

def shard_failed(shard: schema.Shard, states: dict, health: dict, up) -> bool:
    """Its node is down, its process is down, or it did not answer PING in time. A report about
    another placement of the shard (before a move) does not count."""
    if shard.node_uid not in up:
        return True
    if (states.get(shard.uid) or {}).get("status") == "down":
        return True
    probe = health.get(shard.uid) or {}
    return probe.get("status") == "unresponsive" and \
        (probe.get("node_uid"), probe.get("port")) == (shard.node_uid, shard.port)


def serving_replica(master: schema.Shard, shards: dict[int, schema.Shard], states: dict,
                    health: dict, up) -> schema.Shard | None:
    """A replica of `master` that runs, answers and holds a copy of its data (redis_mgr's
    `synced`; absent in a state an older redis_mgr wrote): what a failover promotes. Only one
    of the master's very slots: a reshard's new shard replicates the master it splits but owns
    only its piece (promoted in its place, the rest of the master's slots would have no
    owner)."""
    return next((r for r in shards.values() if r.master_uid == master.uid
                 and r.role == "replica" and r.slots == master.slots
                 and (states.get(r.uid) or {}).get("status") == "running"
                 and (states.get(r.uid) or {}).get("synced", True)
                 and not shard_failed(r, states, health, up)), None)


def pair_of(shard: schema.Shard, shards: dict[int, schema.Shard]) -> list[schema.Shard]:
    """The shards that hold the same slots: a master's replicas, a replica's master."""
    return [s for s in shards.values() if s.uid != shard.uid and (
        s.master_uid == shard.uid or s.uid == shard.master_uid)]


def pair_nodes(shard: schema.Shard, shards: dict[int, schema.Shard]) -> set[int]:
    """The nodes of the shard's master and replicas: where a copy of it must not go."""
    return {s.node_uid for s in pair_of(shard, shards)}


# ---- placement (pure) ----------------------------------------------------------------------

def node_load(shards: dict[int, schema.Shard], nodes=None) -> dict[int, int]:
    """Shards per node; with `nodes`, only those (each counted, 0 if it holds none)."""
    load: dict[int, int] = {n: 0 for n in nodes} if nodes is not None else {}
    for s in shards.values():
        n = s.node_uid
        if nodes is None or n in load:
            load[n] = load.get(n, 0) + 1
    return load


def place(count: int, replication: bool, nodes: list[int], load: dict[int, int],
          rng: random.Random | None = None) -> list[tuple[int, int | None]]:
    """Nodes for `count` masters and their replicas: [(master node, replica node or None)].
    Masters are spread over the least loaded nodes; a replica is never on its master's node.
    `load` counts the shards each node already holds and is updated."""
    if not nodes:
        raise schema.InvalidRequest("no node is up to place shards on")
    if replication and len(nodes) < 2:
        raise schema.InvalidRequest(
            f"replication needs two nodes up; the cluster has {len(nodes)}")
    rng = rng or random.Random()
    order = {uid: rng.random() for uid in nodes}       # ties broken at random, not by uid

    def least(excluded: int | None = None) -> int:
        return min((n for n in nodes if n != excluded), key=lambda n: (load.get(n, 0), order[n]))

    out = []
    for _ in range(count):
        m = least()
        load[m] = load.get(m, 0) + 1
        r = None
        if replication:
            r = least(excluded=m)
            load[r] = load.get(r, 0) + 1
        out.append((m, r))
    return out


def pick_node(up, excluded, load: dict[int, int]) -> int | None:
    """The least loaded node of `up` outside `excluded` (its load then counted), or None."""
    candidates = sorted(n for n in up if n not in excluded)
    if not candidates:
        return None
    (node, _), = place(1, False, candidates, load)
    return node
