"""Real local clusters for the database tests: started, waited for, stopped, and their election
histories checked when they stop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import redis
import trio
from dmc._fastpath import slot_of
from waiting import wait_until

from control import ccs, history, rest_models, schema
from control.local_cluster import LocalCluster, loopback_addresses
from control.node import CORE_SERVICES, SERVICES
from control.redis_client import ReplyError
from dmc.processes import free_port


# How long a new cluster may take to elect its master: on a loaded shared machine, the services'
# Python start alone has taken 40 s (a wait on a condition: a quick start is not slowed).
START_TIMEOUT = 90.0

# What databases and the REST API need (rest_cluster(services=...)): the observability and
# discovery services are left out (their routes answer from what CCS has).
DATABASE_SERVICES = [s for s in SERVICES if s in (*CORE_SERVICES, "redis_mgr", "dmcproxy",
                                                  "cnm_exec", "node_wd", "cnm_http")]


def api_answers(config, auth) -> bool:
    """The node's cnm_http answers an authenticated request."""
    try:
        return httpx.get(f"http://{config.address}:{config.rest_port}/v1/cluster", auth=auth,
                         timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def rest_cluster(home, first_address: str, nodes: int = 3, timeout: float = START_TIMEOUT,
                 **create_options) -> Iterator[LocalCluster]:
    """A cluster whose every node's REST API answers; stopped and checked on the way out.
    `create_options` go to LocalCluster.create (services=[...]: fewer services per node)."""
    c = LocalCluster.create(home, loopback_addresses(nodes, first_address), record_history=True,
                            timeout=timeout, **create_options)
    try:
        for config in c.nodes.values():
            wait_until(lambda cfg=config: api_answers(cfg, c.admin_login()), timeout,
                       what=f"cnm_http of node {config.uid}")
        yield c
    finally:
        c.stop()
    found = history.violations(history.load_dir(c.home))
    assert found == [], found


def rest_client(cluster: LocalCluster, timeout: float = 10, node: int = 1) -> httpx.Client:
    """An httpx client of a node's REST API (node 1's by default), logged in as the cluster's
    admin."""
    config = cluster.nodes[node]
    return httpx.Client(base_url=f"http://{config.address}:{config.rest_port}",
                        auth=cluster.admin_login(), timeout=timeout)


def plain(record) -> dict | None:
    """A CCS record as the msgpack map CCS holds: tests read what the wire carries."""
    return None if record is None else schema.as_dict(record)


class Cluster:
    """A LocalCluster and the few things these tests ask of its CCS (records as plain maps).
    Its nodes run DATABASE_SERVICES unless `services` says otherwise: each service more is a
    Python process per node to start and stop with every module's cluster."""

    def __init__(self, home, first_address: str, **create_options):
        self.lc = LocalCluster.create(home, loopback_addresses(3, first_address),
                                      record_history=True,
                                      **{"timeout": START_TIMEOUT,
                                         "services": DATABASE_SERVICES, **create_options})

    def master_ccs(self):
        """The NodeConfig of the node whose CCS copy is the master's, as the nodes' copies say
        (read on their unix sockets: a node on a routable address serves CCS in plaintext
        nowhere else; a socket is a file, reached from any network namespace). The newest
        master record wins: a node cut off by a partition keeps the one of the term it knew
        (a test read the old master's copy, stale, for a minute)."""
        newest = None
        for config in self.lc.nodes.values():
            try:
                r = redis.Redis(unix_socket_path=str(config.ccs_socket), socket_timeout=1,
                                socket_connect_timeout=1)
                m = ccs.unpack(r.get(ccs.MASTER))
            except redis.RedisError:
                continue
            if m and (newest is None or m["term"] > newest["term"]):
                newest = m
        found = None if newest is None else next(
            (c for c in self.lc.nodes.values()
             if (c.address, c.ccs_port) == (newest["address"], newest["ccs_port"])), None)
        if found is None:
            raise AssertionError("no CCS copy answers")
        return found

    def ccs(self, fn):
        """Run `await fn(conn)` against the master's CCS copy; retried while a master is
        being elected."""
        async def run():
            conn = await ccs.connect_node(self.master_ccs(), timeout=2.0)
            async with conn:
                return await fn(conn)
        deadline = time.monotonic() + 15
        while True:
            try:
                return trio.run(run)
            except (OSError, AssertionError, ReplyError) as exc:
                # NOREPLICAS: the copy read as the master's is fenced (its lease ran out, or a
                # new master is taking over); any other refusal is the answer
                refused = isinstance(exc, ReplyError) and not str(exc).startswith("NOREPLICAS")
                if refused or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def submit_create(self, name="db", shards=2, replication=True, port=None,
                      **fields) -> tuple[int, str]:
        """A new database record and its bdb_create action, as cnm_http writes them: (database
        uid, action uid)."""
        port = port or free_port()

        async def create(r):
            uid = await schema.next_uid(r, "bdb")
            spec = rest_models.BdbCreate(name=name, port=port, shards_count=shards,
                                    replication=replication, **fields).model_dump(
                                        exclude=set(schema.REQUEST_FLAGS))
            await schema.put_bdb(r, schema.Bdb(**spec, uid=uid, status="pending"))
            action = await schema.submit(r, schema.new_action("bdb_create", "bdb", uid, {}),
                                         lock_bdb=uid)
            return uid, action.action_uid
        return self.ccs(create)

    def create_db(self, name="db", shards=2, replication=True, port=None, **fields) -> dict:
        uid, action = self.submit_create(name, shards, replication, port, **fields)
        self.wait_action(action)
        return self.bdb(uid)

    def submit(self, name, object_type, object_uid, params, bdb_uid) -> str:
        async def go(r):
            action = schema.new_action(name, object_type, object_uid, params, bdb_uid=bdb_uid)
            return (await schema.submit(r, action, lock_bdb=bdb_uid)).action_uid
        return self.ccs(go)

    def action(self, uid: str) -> dict | None:
        return plain(self.ccs(lambda r: schema.get_action(r, uid)))

    def wait_action(self, uid: str, timeout: float = 90.0) -> dict:
        action = wait_until(lambda: (a := self.action(uid))
                            and a["status"] in ("completed", "failed") and a,
                            timeout=timeout, interval=0.1, what=f"action {uid}")
        assert action["status"] == "completed", action
        return action

    def run(self, name, object_type, object_uid, params, bdb_uid) -> dict:
        return self.wait_action(self.submit(name, object_type, object_uid, params, bdb_uid))

    def bdb(self, uid):
        return plain(self.ccs(lambda r: schema.get_bdb(r, uid)))

    def shards(self, bdb_uid) -> dict[int, dict]:
        return {u: plain(s) for u, s in self.ccs(schema.shards).items() if s.bdb_uid == bdb_uid}

    def states(self) -> dict[int, dict]:
        return self.ccs(lambda r: ccs.read_hash(r, schema.SHARD_STATE))

    def address(self, shard) -> tuple[str, int]:
        return self.lc.nodes[shard["node_uid"]].address, shard["port"]

    def client(self, node: int, port: int, **kw) -> redis.Redis:
        return redis.Redis(self.lc.nodes[node].address, port, **{"socket_timeout": 5, **kw})

    def master_of_key(self, bdb_uid, key: bytes) -> dict:
        slot = slot_of(key)
        return next(s for s in self.shards(bdb_uid).values() if s["role"] == "master"
                    and any(a <= slot <= b for a, b in s["slots"]))

    def wait_proxies_current(self, bdb_uid) -> None:
        """Until the dmcproxy of every node whose heartbeat is alive serves the newest map."""
        async def current(r):
            shard_map = await ccs.read(r, schema.map_key(bdb_uid))
            acks = await ccs.read_hash(r, schema.ack_key(bdb_uid))
            up = [u for u in self.lc.nodes if await r.execute("EXISTS", ccs.heartbeat_key(u))]
            return shard_map and all((acks.get(u) or {}).get("version") == shard_map["version"]
                                     for u in up)
        wait_until(lambda: self.ccs(current), timeout=20, what="every proxy on the newest map")

    def close(self):
        self.lc.stop()
        found = history.violations(history.load_dir(self.lc.home))
        assert found == [], found
