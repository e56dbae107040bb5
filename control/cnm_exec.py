"""cnm_exec: the state machines that change databases, run by the master node.

Every node runs cnm_exec; only the one on the master node acts, and it reads and writes CCS on
its own copy only, which is writable only while its node is the elected master holding a lease
(control/election.py). So a node that lost its mastership cannot change anything: its writes are
refused (-NOREPLICAS, -READONLY) and its running actions stop.

An action (`actions` hash, see control/bdb.py) is a list of steps. After each step the action's
`state` (whatever the steps want to remember), step name and progress are written to CCS before
the next step starts, so that a new master resumes a half-done action from the step that was
running; every step is written to be run again safely.

The machines:
    bdb_create      place shards, wait for redis_mgr to run them, write the shard map, wait for
                    every node's dmcproxy to serve it, mark the database active
    bdb_update      apply new settings (memory, eviction, password, persistence, replication
                    on/off); wait for shards and proxies to apply them
    bdb_delete      withdraw the endpoint, stop the shards, forget the database
    shard_failover  promote a master's replica; graceful (pause, catch up, switch) while the
                    master lives, forced when it is dead
    shard_migrate   move a shard to another node: a new replica there, then a graceful switch
    node_add        wait until a node that joined runs its services and serves every database
    node_remove     move every shard off a node (a shard_migrate each), then the node leaves
    bdb_reshard     more shards: split each master's slots (replicate, then split; below)
    bdb_backup      an RDB of every slot range (from the replicas) and a manifest, in a folder
    bdb_import      load a backup, or any RDB file, into a database through its endpoint

How slots move (the choice DESIGN.md leaves open): **replicate, then split**. A new shard starts
as a replica of the master whose slots it will take, and catches up by replication (diskless).
Then every node's dmcproxy pauses the database (it keeps reading clients but sends nothing to
shards, and reports when what it had sent is answered); the new replica's offset is checked
equal to its master's; it is promoted; the new map gives it its slots and resumes the proxies.
Clients see a pause of a few milliseconds and never an error; no acknowledged write is lost,
because every write acknowledged before the pause is on the new shard, and none is sent during
it. Then each shard deletes the keys of slots it no longer owns (the proxies never route to
them). A shard migration is the same switch without the split.

High availability, also run here: a master shard reported dead by its node's redis_mgr, or on a
node whose heartbeat expired, is failed over to its replica (forced failover); the old master
comes back as a replica on its node, or on another node if its node is down (replica HA).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import trio
import trio.lowlevel
from dmc._fastpath import slot_of

from control import backup_mgr, ccs, schema
from control.cluster_wd import request
from control.node import NodeConfig, service_command
from control.redis_client import RedisUnavailable, ReplyError, connect
from dmc.shard_map import ShardMap

log = logging.getLogger("cnm_exec")

TICK = 0.25                 # HA checks and action pick-up without change notices
SYNC_TIMEOUT = 60.0         # a new replica has this long to catch up
START_TIMEOUT = 30.0        # redis_mgr has this long to start a shard
ACK_TIMEOUT = 10.0          # every live node's dmcproxy has this long to install a map
REPLICA_HA_AFTER = 5.0      # a replica on a node down this long is re-created elsewhere
RECOVERY_WAIT = 60.0        # a dead master waits this long for the replica holding its data
MAX_ATTEMPTS = 5            # a step that meets an unreachable shard or CCS is retried so often
BACKUP_CATCH_UP = 5.0       # a backup reads a replica only if it catches up this fast


class ActionFailed(Exception):
    """The action cannot complete; its message is shown to the user."""


class NotMaster(Exception):
    """This node stopped being the master: leave the action to the next one."""


# ---- the service ---------------------------------------------------------------------------

class CnmExec:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.running: dict[str, trio.CancelScope] = {}
        self.node_down_since: dict[int, float] = {}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.watch)
            while True:
                await self.session.wait_changed(TICK)
                try:
                    if await self.is_master():
                        await self.tick(nursery)
                    else:
                        for scope in self.running.values():
                            scope.cancel()
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("tick skipped: %s", exc)

    async def is_master(self) -> bool:
        return await master_here(await self.session.local(), self.config.uid)

    async def tick(self, nursery) -> None:
        redis = await self.session.local()
        for uid, action in (await schema.actions(redis)).items():
            if action["status"] in ("pending", "active") and uid not in self.running:
                machine = MACHINES.get(action["name"])
                if machine is None:
                    action.update(status="failed", error=f"unknown action {action['name']}")
                    await schema.put_action(redis, action)
                    continue
                self.running[uid] = trio.CancelScope()
                nursery.start_soon(self._run_action, machine, action)
        await self.watch_health(redis)

    async def _run_action(self, machine, action: dict) -> None:
        uid = action["action_uid"]
        with self.running[uid]:
            try:
                await machine(self, await self.session.local(), action).run()
            except (RedisUnavailable, ReplyError, NotMaster) as exc:
                log.warning("action %s (%s) left for the next master: %s", uid, action["name"], exc)
            finally:
                self.running.pop(uid, None)

    # ---- high availability -----------------------------------------------------------------

    async def watch_health(self, redis) -> None:
        nodes = await ccs.read_hash(redis, ccs.NODES)
        up = await nodes_up(redis, nodes)
        now = time.monotonic()
        for uid in nodes:
            if uid in up:
                self.node_down_since.pop(uid, None)
            else:
                self.node_down_since.setdefault(uid, now)
        shards = await schema.shards(redis)
        states = await ccs.read_hash(redis, schema.SHARD_STATE)
        bdbs = await schema.bdbs(redis)
        for shard in shards.values():
            bdb = bdbs.get(shard["bdb_uid"])
            if bdb is None or bdb.get("status") in ("pending", "deleting"):
                continue
            state = states.get(shard["uid"]) or {}
            dead = shard["node_uid"] not in up or state.get("status") == "down"
            if shard["role"] == "master" and dead:
                await self._master_down(redis, shard, shards, states, up, bdb)
            elif shard["role"] == "replica" and shard["node_uid"] not in up and \
                    now - self.node_down_since.get(shard["node_uid"], now) >= REPLICA_HA_AFTER \
                    and not self._master_dead(shard, shards, states, up):
                # (a replica whose master is down too may hold the only copy: it is waited for)
                await self._replace_replica(redis, shard, shards, up)

    @staticmethod
    def _master_dead(replica, shards, states, up) -> bool:
        master = shards.get(replica.get("master_uid"))
        return master is None or master["node_uid"] not in up or \
            (states.get(master["uid"]) or {}).get("status") == "down"

    @staticmethod
    def _disk_copy_on_replica(master, shards, bdb) -> bool:
        """Only the replicas write to disk: a master that died has nothing to start from, its
        replica has it all."""
        return schema.persists(bdb, "replica") and not schema.persists(bdb, "master") and \
            any(r.get("master_uid") == master["uid"] for r in shards.values())

    async def _master_down(self, redis, shard, shards, states, up, bdb) -> None:
        replica = next((r for r in shards.values() if r.get("master_uid") == shard["uid"]
                        and r["role"] == "replica" and r["node_uid"] in up
                        and (states.get(r["uid"]) or {}).get("status") == "running"), None)
        if replica is None:
            # Nothing to fail over to: the master comes back where it is, if its node is up;
            # but not empty while the replica holding the database's only disk copy is on its
            # way back (a whole-cluster restart), unless it stays away RECOVERY_WAIT.
            state = states.get(shard["uid"]) or {}
            if self._disk_copy_on_replica(shard, shards, bdb) and \
                    time.time() - state.get("since", time.time()) < RECOVERY_WAIT:
                return
            if shard["node_uid"] in up and state.get("status") == "down" and \
                    shard.get("restart_after", 0) < state.get("since", 0):
                shard["restart_after"] = time.time()
                await schema.put_shard(redis, shard)
            return
        action = schema.new_action("shard_failover", "shard", shard["uid"],
                                   {"forced": True, "reason": "master shard down"})
        action["bdb_uid"] = shard["bdb_uid"]
        try:
            await schema.submit(redis, action, lock_bdb=shard["bdb_uid"])
            log.warning("shard %d down: failing over to shard %d", shard["uid"], replica["uid"])
        except schema.Conflict:
            pass        # a running action holds the database; it will meet the failure itself

    async def _replace_replica(self, redis, shard, shards, up) -> None:
        target = pick_node(up, pair_nodes(shard, shards), node_load(shards))
        if target is None:
            return
        log.warning("replica shard %d: node %d is down, re-created on node %d",
                    shard["uid"], shard["node_uid"], target)
        await relocate(redis, shard, target, shards)


# ---- helpers over CCS ------------------------------------------------------------------------

async def master_here(local, node_uid: int) -> bool:
    """This node is the elected master and its own CCS copy (`local`) is the master copy."""
    master = await ccs.read(local, ccs.MASTER)
    if not master or master["uid"] != node_uid:
        return False
    return "role:master" in (await local.execute("INFO", "replication")).decode()


async def nodes_up(redis, nodes: dict) -> set[int]:
    """Nodes whose heartbeat key has not expired."""
    if not nodes:
        return set()
    keys = [ccs.heartbeat_key(uid) for uid in nodes]
    flags = await redis.pipeline([("EXISTS", k) for k in keys])
    return {uid for uid, f in zip(nodes, flags) if f == 1}


def pick_node(up, excluded, load: dict[int, int]) -> int | None:
    """The least loaded node of `up` outside `excluded` (its load then counted), or None."""
    candidates = sorted(n for n in up if n not in excluded)
    if not candidates:
        return None
    (node, _), = schema.place(1, False, candidates, load)
    return node


def pair_nodes(shard: dict, shards: dict) -> set[int]:
    """The nodes of the shard's master and replicas: where a copy of it must not go."""
    return {s["node_uid"] for s in shards.values() if s["uid"] != shard["uid"] and
            (s["uid"] == shard.get("master_uid") or s.get("master_uid") == shard["uid"])}


async def relocate(redis, shard: dict, node: int, shards: dict) -> None:
    """Place the shard on `node`, on a free port there (redis_mgr starts it, and the old
    node's stops it)."""
    shard.update(node_uid=node, port=schema.free_shard_port({s["port"] for s in shards.values()}))
    await schema.put_shard(redis, shard)


def node_load(shards: dict) -> dict[int, int]:
    load: dict[int, int] = {}
    for s in shards.values():
        load[s["node_uid"]] = load.get(s["node_uid"], 0) + 1
    return load


async def replication_info(address: str, port: int) -> dict[str, str]:
    async with await connect(address, port) as conn:
        text = (await conn.execute("INFO", "replication")).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


# ---- the machines ----------------------------------------------------------------------------

class Machine:
    """Steps run in order; after each, the action's state is saved (see the module's doc)."""

    steps: tuple[tuple[str, int], ...] = ()      # (method name, progress when done)

    def __init__(self, exec_: CnmExec, redis, action: dict):
        self.exec = exec_
        self.redis = redis
        self.action = action
        self.state = action.setdefault("state", {})

    async def run(self) -> None:
        action = self.action
        done = self.state.get("done", 0)
        action["status"] = "active"
        try:
            for i, (name, progress) in enumerate(self.steps):
                if i < done:
                    continue
                action["step"] = name
                await self.save()
                try:
                    await getattr(self, name)()
                except (RedisUnavailable, ReplyError) as exc:
                    # A shard or CCS did not answer: the step is tried again on a later tick
                    # (or by the next master), a few times, then the action fails.
                    self.state["attempts"] = self.state.get("attempts", 0) + 1
                    if self.state["attempts"] >= MAX_ATTEMPTS:
                        raise ActionFailed(f"step {name}: {exc}") from None
                    await self.save()
                    raise
                self.state["done"] = i + 1
                action["progress"] = progress
                await self.save()
            action.update(status="completed", step="done", progress=100)
            await self.finish(ok=True)
        except ActionFailed as exc:
            log.warning("action %s (%s) failed: %s", action["action_uid"], action["name"], exc)
            action.update(status="failed", error=str(exc))
            await self.finish(ok=False)
        await self.save()
        await self.release()

    async def save(self) -> None:
        try:
            await schema.put_action(self.redis, self.action)
        except ReplyError as exc:
            if exc.kind in ("NOREPLICAS", "READONLY"):
                raise NotMaster(str(exc)) from exc
            raise

    async def finish(self, ok: bool) -> None:
        """What the machine does at the end (both ways); the lock is released after."""

    async def release(self) -> None:
        bdb_uid = self.action.get("bdb_uid") or (
            self.action["object_uid"] if self.action["object_type"] == "bdb" else None)
        if bdb_uid is not None:
            await schema.release(self.redis, bdb_uid, self.action["action_uid"])

    # ---- reading the world -------------------------------------------------------------

    async def bdb(self, uid: int | None = None) -> dict:
        found = await schema.get_bdb(self.redis, uid if uid is not None else self.bdb_uid)
        if found is None:
            raise ActionFailed(f"database {uid or self.bdb_uid} does not exist")
        return found

    @property
    def bdb_uid(self) -> int:
        return self.action["object_uid"]

    async def nodes(self) -> dict[int, dict]:
        return await ccs.read_hash(self.redis, ccs.NODES)

    async def up(self) -> set[int]:
        return await nodes_up(self.redis, await self.nodes())

    async def shards_of(self, bdb_uid: int) -> dict[int, dict]:
        return {u: s for u, s in (await schema.shards(self.redis)).items()
                if s["bdb_uid"] == bdb_uid}

    async def address(self, shard: dict) -> tuple[str, int]:
        nodes = await self.nodes()
        return nodes[shard["node_uid"]]["address"], shard["port"]

    # ---- waiting for the nodes ---------------------------------------------------------

    async def wait_running(self, uids, timeout: float = START_TIMEOUT) -> None:
        """Until redis_mgr reports every shard in `uids` running."""
        deadline = trio.current_time() + timeout
        while True:
            states = await ccs.read_hash(self.redis, schema.SHARD_STATE)
            shards = await schema.shards(self.redis)
            waiting = [u for u in uids if (states.get(u) or {}).get("status") != "running"
                       or states[u]["node_uid"] != shards[u]["node_uid"]
                       or states[u]["port"] != shards[u]["port"]]
            if not waiting:
                return
            failed = [u for u in waiting if (states.get(u) or {}).get("status") == "error"]
            if failed or trio.current_time() > deadline:
                raise ActionFailed(f"shards {waiting} did not start")
            await self.exec.session.wait_changed(0.2)

    async def wait_synced(self, replica: dict, timeout: float = SYNC_TIMEOUT) -> None:
        """Until the replica has loaded its master's data and its link is up."""
        deadline = trio.current_time() + timeout
        address = await self.address(replica)
        while True:
            try:
                info = await replication_info(*address)
                if info.get("role") == "slave" and info.get("master_link_status") == "up" \
                        and info.get("master_sync_in_progress") == "0":
                    return
            except (RedisUnavailable, ReplyError):
                pass
            if trio.current_time() > deadline:
                raise ActionFailed(f"replica shard {replica['uid']} did not sync in {timeout}s")
            await trio.sleep(0.05)

    async def wait_caught_up(self, master: dict, replica: dict, timeout: float = 10.0) -> None:
        """Until the replica has applied everything its master has (writes are paused)."""
        deadline = trio.current_time() + timeout
        m_addr, r_addr = await self.address(master), await self.address(replica)
        while True:
            m, r = await replication_info(*m_addr), await replication_info(*r_addr)
            if r.get("master_link_status") == "up" and \
                    r.get("slave_repl_offset") == m.get("master_repl_offset"):
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"replica shard {replica['uid']} did not catch up "
                                   f"(master offset {m.get('master_repl_offset')}, replica "
                                   f"{r.get('slave_repl_offset')})")
            await trio.sleep(0.005)

    async def current_map(self, bdb_uid: int) -> dict | None:
        return await ccs.read(self.redis, schema.map_key(bdb_uid))

    async def publish_map(self, bdb_uid: int, masters: list[dict], *, paused: bool) -> int:
        """Write the next version of the database's map; returns it."""
        old = await self.current_map(bdb_uid)
        version = (old["version"] if old else 0) + 1
        nodes = await self.nodes()
        value = {"version": version, "paused": paused,
                 "shards": [{"uid": s["uid"], "address": schema.shard_address(s, nodes),
                             "slots": s["slots"]} for s in sorted(masters, key=lambda s:
                                                                  s["slots"][0][0])]}
        try:
            ShardMap.from_dict(value)       # every slot owned once, or nothing is published
        except ValueError as exc:
            raise ActionFailed(f"shard map of database {bdb_uid} not published: {exc}") from None
        await ccs.write(self.redis, schema.map_key(bdb_uid), value)
        return version

    async def wait_acks(self, bdb_uid: int, version: int, timeout: float = ACK_TIMEOUT,
                        required: bool = True) -> None:
        """Until the dmcproxy of every live node has installed `version` (and, for a paused
        map, has no request in flight)."""
        deadline = trio.current_time() + timeout
        while True:
            up = await self.up()
            acks = await ccs.read_hash(self.redis, schema.ack_key(bdb_uid))
            missing = sorted(n for n in up if (acks.get(n) or {}).get("version", 0) < version)
            if not missing:
                return
            if trio.current_time() > deadline:
                if required:
                    raise ActionFailed(f"the proxies of nodes {missing} did not install shard "
                                       f"map version {version}")
                log.warning("proxies of nodes %s did not ack map %d", missing, version)
                return
            await self.exec.session.wait_changed(0.05)

    async def masters_of(self, bdb_uid: int) -> list[dict]:
        return [s for s in (await self.shards_of(bdb_uid)).values() if s["role"] == "master"]

    async def new_shard(self, bdb_uid: int, node_uid: int, role: str, slots,
                        master_uid: int | None = None) -> dict:
        used = {s["port"] for s in (await schema.shards(self.redis)).values()}
        shard = {"uid": await schema.next_uid(self.redis, "shard"), "bdb_uid": bdb_uid,
                 "node_uid": node_uid, "role": role, "port": schema.free_shard_port(used),
                 "slots": slots, "master_uid": master_uid}
        await schema.put_shard(self.redis, shard)
        return shard

    async def add_missing_replicas(self, strict: bool) -> list[dict]:
        """A replica, on another node, for each master of the database that has none. With
        `strict`, a master that cannot have one fails the action; else it is left without."""
        shards = await self.shards_of(self.bdb_uid)
        have = {s["master_uid"] for s in shards.values() if s["role"] == "replica"}
        up = await self.up()
        load = node_load(await schema.shards(self.redis))
        added = []
        for master in [s for s in shards.values() if s["role"] == "master"]:
            if master["uid"] in have:
                continue
            node = pick_node(up, {master["node_uid"]}, load)
            if node is None:
                if strict:
                    raise ActionFailed("replication needs a second node up")
                break
            added.append(await self.new_shard(self.bdb_uid, node, "replica", master["slots"],
                                              master["uid"]))
        return added

    async def switch(self, bdb_uid: int, promote: list[tuple[dict, dict]], masters_after) -> None:
        """The paused switch: pause every proxy, wait until each (master, replica) pair in
        `promote` is caught up, promote the replicas, then publish `masters_after()` (called
        once the promotions are done) unpaused."""
        current = await self.masters_of(bdb_uid)
        version = await self.publish_map(bdb_uid, current, paused=True)
        try:
            await self.wait_acks(bdb_uid, version)
            for master, replica in promote:
                await self.wait_caught_up(master, replica)
            for _master, replica in promote:
                async with await connect(*await self.address(replica)) as conn:
                    await conn.execute("REPLICAOF", "NO", "ONE")
            masters = await masters_after()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.publish_map(bdb_uid, await self.masters_of(bdb_uid), paused=False)
            raise
        version = await self.publish_map(bdb_uid, masters, paused=False)
        await self.wait_acks(bdb_uid, version, required=False)


class BdbCreate(Machine):
    steps = (("place", 20), ("start_shards", 60), ("sync_replicas", 75), ("publish", 85),
             ("serve", 95), ("activate", 100))

    async def place(self) -> None:
        """Every slot range gets a master (and a replica); run again after a master change,
        it places only what the previous run had not."""
        bdb = await self.bdb()
        covered = [m["slots"] for m in await self.masters_of(bdb["uid"])]
        missing = [r for r in schema.split_slots(bdb["shards_count"]) if r not in covered]
        if missing:
            load = node_load(await schema.shards(self.redis))
            try:
                placement = schema.place(len(missing), bdb["replication"],
                                         sorted(await self.up()), load)
            except schema.InvalidRequest as exc:
                raise ActionFailed(str(exc)) from None
            for slots, (m_node, r_node) in zip(missing, placement):
                master = await self.new_shard(bdb["uid"], m_node, "master", slots)
                if r_node is not None:
                    await self.new_shard(bdb["uid"], r_node, "replica", slots, master["uid"])
        if bdb["replication"]:
            await self.add_missing_replicas(strict=True)

    async def start_shards(self) -> None:
        deadline = trio.current_time() + START_TIMEOUT
        while True:
            await self.replace_on_down_nodes()
            try:
                await self.wait_running(list(await self.shards_of(self.bdb_uid)), timeout=2.0)
                return
            except ActionFailed:
                if trio.current_time() > deadline:
                    raise

    async def replace_on_down_nodes(self) -> None:
        """Shards placed on a node that went down before they ran are placed again (a master
        node killed during the create, say), never beside their master or replica."""
        up = await self.up()
        every = await schema.shards(self.redis)
        mine = {u: s for u, s in every.items() if s["bdb_uid"] == self.bdb_uid}
        for shard in mine.values():
            if shard["node_uid"] in up:
                continue
            node = pick_node(up, pair_nodes(shard, mine), node_load(every))
            if node is not None:
                await relocate(self.redis, shard, node, every)

    async def sync_replicas(self) -> None:
        for shard in (await self.shards_of(self.bdb_uid)).values():
            if shard["role"] == "replica":
                await self.wait_synced(shard)

    async def publish(self) -> None:
        self.state["version"] = await self.publish_map(
            self.bdb_uid, await self.masters_of(self.bdb_uid), paused=False)

    async def serve(self) -> None:
        await self.wait_acks(self.bdb_uid, self.state["version"], required=False)

    async def activate(self) -> None:
        bdb = await self.bdb()
        bdb["status"] = "active"
        await schema.put_bdb(self.redis, bdb)

    async def finish(self, ok: bool) -> None:
        if not ok:
            bdb = await schema.get_bdb(self.redis, self.bdb_uid)
            if bdb is not None:
                bdb["status"] = "creation-failed"
                await schema.put_bdb(self.redis, bdb)


class BdbUpdate(Machine):
    steps = (("apply", 30), ("replicas", 80), ("settle", 100))

    async def apply(self) -> None:
        bdb = await self.bdb()
        changes = {k: v for k, v in self.action["params"].items() if k != "shards_count"}
        self.state["replication"] = changes.get("replication", bdb["replication"])
        bdb.update(changes)
        bdb["version"] = bdb.get("version", 0) + 1
        await schema.put_bdb(self.redis, bdb)

    async def replicas(self) -> None:
        shards = await self.shards_of(self.bdb_uid)
        replicas = [s for s in shards.values() if s["role"] == "replica"]
        if self.state["replication"]:
            added = await self.add_missing_replicas(strict=True)
            await self.wait_running([s["uid"] for s in added])
            for shard in added:
                await self.wait_synced(shard)
        else:
            if replicas:
                await ccs.delete(self.redis, schema.SHARDS, *(r["uid"] for r in replicas))

    async def settle(self) -> None:
        """Until every live node's dmcproxy serves the new record (its password, say); shards
        get their memory limit and eviction policy from redis_mgr in the same pass."""
        version = (await self.bdb())["version"]
        deadline = trio.current_time() + ACK_TIMEOUT
        while trio.current_time() < deadline:
            up = await self.up()
            acks = await ccs.read_hash(self.redis, schema.ack_key(self.bdb_uid))
            if all((acks.get(n) or {}).get("bdb_version", 0) >= version for n in up):
                return
            await self.exec.session.wait_changed(0.1)
        log.warning("database %d: not every proxy acknowledged version %d", self.bdb_uid,
                    version)


class BdbDelete(Machine):
    steps = (("withdraw", 30), ("stop_shards", 80), ("forget", 100))

    async def withdraw(self) -> None:
        bdb = await self.bdb()
        bdb["status"] = "deleting"
        await schema.put_bdb(self.redis, bdb)
        await ccs.delete(self.redis, schema.map_key(self.bdb_uid))

    async def stop_shards(self) -> None:
        shards = await self.shards_of(self.bdb_uid)
        if shards:
            await ccs.delete(self.redis, schema.SHARDS, *shards)
        deadline = trio.current_time() + START_TIMEOUT
        while trio.current_time() < deadline:
            states = await ccs.read_hash(self.redis, schema.SHARD_STATE)
            up = await self.up()
            if not [u for u in shards if u in states and states[u]["node_uid"] in up]:
                break
            await self.exec.session.wait_changed(0.2)
        if shards:
            await self.redis.execute("HDEL", schema.SHARD_STATE, *map(str, shards))

    async def forget(self) -> None:
        await self.redis.execute("DEL", schema.ack_key(self.bdb_uid))
        await ccs.delete(self.redis, schema.BDBS, self.bdb_uid)


class ShardFailover(Machine):
    """object_uid: the master shard (or its replica). params.forced: the master is dead."""
    steps = (("failover", 80), ("reattach", 100))

    async def _pair(self) -> tuple[dict, dict]:
        shards = await schema.shards(self.redis)
        shard = shards.get(self.action["object_uid"])
        if shard is None:
            raise ActionFailed(f"shard {self.action['object_uid']} does not exist")
        self.action["bdb_uid"] = shard["bdb_uid"]
        if "pair" in self.state:
            m, r = self.state["pair"]
            return shards[m], shards[r]
        master = shard if shard["role"] == "master" else shards.get(shard["master_uid"])
        replica = next((s for s in shards.values() if s.get("master_uid") == master["uid"]
                        and s["role"] == "replica"), None)
        if replica is None:
            raise ActionFailed(f"shard {master['uid']} has no replica to fail over to")
        self.state["pair"] = [master["uid"], replica["uid"]]
        return master, replica

    async def failover(self) -> None:
        master, replica = await self._pair()
        if master["role"] == "replica" and replica["role"] == "master":
            return          # done before a master change
        bdb_uid = master["bdb_uid"]

        async def swapped() -> list[dict]:
            replica.update(role="master", master_uid=None)
            master.update(role="replica", master_uid=replica["uid"])
            master.pop("restart_after", None)
            await schema.put_shard(self.redis, replica)
            await schema.put_shard(self.redis, master)
            return await self.masters_of(bdb_uid)

        if self.action["params"].get("forced"):
            async with await connect(*await self.address(replica)) as conn:
                await conn.execute("REPLICAOF", "NO", "ONE")
            version = await self.publish_map(bdb_uid, await swapped(), paused=False)
            await self.wait_acks(bdb_uid, version, required=False)
        else:
            await self.switch(bdb_uid, [(master, replica)], swapped)

    async def reattach(self) -> None:
        """The old master is now a replica of the new one: on its node if that node is up,
        else on another (replica HA)."""
        shards = await schema.shards(self.redis)
        old, new = (shards[u] for u in self.state["pair"])
        up = await self.up()
        if old["node_uid"] not in up:
            node = pick_node(up, {new["node_uid"]}, node_load(shards))
            if node is None:
                return
            await relocate(self.redis, old, node, shards)
        try:
            await self.wait_running([old["uid"]], timeout=10.0)
        except ActionFailed:
            log.warning("old master shard %d not back yet as a replica", old["uid"])


class ShardMigrate(Machine):
    """object_uid: the shard; params.target_node_uid. A new copy on the target node takes its
    place; a master's switch is paused (see the module's doc)."""
    steps = (("copy", 40), ("sync", 60), ("switch_over", 90), ("retire", 100))

    async def copy(self) -> None:
        shards = await schema.shards(self.redis)
        shard = shards.get(self.action["object_uid"])
        if shard is None:
            raise ActionFailed(f"shard {self.action['object_uid']} does not exist")
        self.action["bdb_uid"] = shard["bdb_uid"]
        target = int(self.action["params"]["target_node_uid"])
        if target not in await self.up():
            raise ActionFailed(f"node {target} is not up")
        if "new" in self.state:
            return
        master_uid = shard["uid"] if shard["role"] == "master" else shard["master_uid"]
        new = await self.new_shard(shard["bdb_uid"], target, "replica", shard["slots"],
                                   master_uid)
        self.state.update(new=new["uid"], old=shard["uid"], was_master=shard["role"] == "master")

    async def sync(self) -> None:
        shards = await schema.shards(self.redis)
        new = shards[self.state["new"]]
        await self.wait_running([new["uid"]])
        await self.wait_synced(new)

    async def switch_over(self) -> None:
        if not self.state["was_master"]:
            return
        shards = await schema.shards(self.redis)
        old, new = shards[self.state["old"]], shards[self.state["new"]]
        if new["role"] == "master":
            return

        async def moved() -> list[dict]:
            new.update(role="master", master_uid=None)
            await schema.put_shard(self.redis, new)
            for s in shards.values():       # the other replicas follow the new master
                if s.get("master_uid") == old["uid"] and s["uid"] != new["uid"]:
                    s["master_uid"] = new["uid"]
                    await schema.put_shard(self.redis, s)
            old.update(role="replica", master_uid=new["uid"])
            await schema.put_shard(self.redis, old)
            return await self.masters_of(old["bdb_uid"])

        await self.switch(old["bdb_uid"], [(old, new)], moved)

    async def retire(self) -> None:
        await ccs.delete(self.redis, schema.SHARDS, self.state["old"])


class BdbReshard(Machine):
    """params.shards_count: a multiple of the current count; each master's slots are split."""
    steps = (("plan", 10), ("copy", 40), ("split", 70), ("clean", 85), ("replicate", 100))

    async def plan(self) -> None:
        bdb = await self.bdb()
        new_count = int(self.action["params"]["shards_count"])
        masters = sorted(await self.masters_of(self.bdb_uid), key=lambda s: s["slots"][0][0])
        if "pieces" in self.state:
            return
        if new_count % len(masters):
            raise ActionFailed(f"{new_count} shards is not a multiple of {len(masters)}")
        parts = new_count // len(masters)
        self.state["pieces"] = {str(m["uid"]): schema.halve(m["slots"], parts) for m in masters}
        self.state["replication"] = bool(bdb["replication"])

    async def copy(self) -> None:
        if "children" in self.state:
            return
        up = await self.up()
        load = node_load(await schema.shards(self.redis))
        children = {}
        for m_uid, pieces in self.state["pieces"].items():
            for piece in pieces[1:]:
                node = pick_node(up, set(), load)
                if node is None:
                    raise ActionFailed("no node is up to place shards on")
                shard = await self.new_shard(self.bdb_uid, node, "replica", piece, int(m_uid))
                children.setdefault(m_uid, []).append(shard["uid"])
        self.state["children"] = children
        await self.save()
        all_children = [u for us in children.values() for u in us]
        await self.wait_running(all_children)
        shards = await schema.shards(self.redis)
        for uid in all_children:
            await self.wait_synced(shards[uid])

    async def split(self) -> None:
        shards = await schema.shards(self.redis)
        children = self.state["children"]
        if all(shards[u]["role"] == "master" for us in children.values() for u in us):
            return
        pairs = [(shards[int(m)], shards[u]) for m, us in children.items() for u in us]

        async def split_masters() -> list[dict]:
            for m_uid, pieces in self.state["pieces"].items():
                master = shards[int(m_uid)]
                master["slots"] = pieces[0]
                await schema.put_shard(self.redis, master)
                for uid in children[m_uid]:
                    shards[uid].update(role="master", master_uid=None)
                    await schema.put_shard(self.redis, shards[uid])
            return await self.masters_of(self.bdb_uid)

        await self.switch(self.bdb_uid, pairs, split_masters)
        # The replicas of a split master keep only its remaining slots.
        for s in (await self.shards_of(self.bdb_uid)).values():
            if s["role"] == "replica" and s.get("master_uid") is not None:
                m = shards.get(s["master_uid"])
                if m and s["slots"] != m["slots"]:
                    s["slots"] = m["slots"]
                    await schema.put_shard(self.redis, s)

    async def clean(self) -> None:
        for shard in await self.masters_of(self.bdb_uid):
            await drop_foreign_keys(await self.address(shard), shard["slots"])

    async def replicate(self) -> None:
        bdb = await self.bdb()
        bdb["shards_count"] = len(await self.masters_of(self.bdb_uid))
        await schema.put_bdb(self.redis, bdb)
        if not self.state["replication"]:
            return
        added = await self.add_missing_replicas(strict=False)
        await self.wait_running([s["uid"] for s in added])


class NodeAdd(Machine):
    """object_uid: a node that joined through cluster_wd. Done when its heartbeat is in CCS with
    its database services running, and its dmcproxy serves the newest map of every database;
    from then on placement uses it."""
    steps = (("heartbeat", 40), ("serve", 100))

    async def heartbeat(self) -> None:
        uid = self.action["object_uid"]
        deadline = trio.current_time() + START_TIMEOUT
        while True:
            beat = await ccs.read(self.redis, ccs.heartbeat_key(uid))
            states = {s["name"]: s["state"] for s in (beat or {}).get("services", [])}
            if beat and all(states.get(n) == "RUNNING" for n in ("redis_mgr", "dmcproxy")):
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"node {uid} is not up with its services ({states})")
            await self.exec.session.wait_changed(0.2)

    async def serve(self) -> None:
        uid = self.action["object_uid"]
        deadline = trio.current_time() + ACK_TIMEOUT
        while True:
            behind = []
            for bdb_uid in await schema.bdbs(self.redis):
                current = await self.current_map(bdb_uid)
                ack = (await ccs.read_hash(self.redis, schema.ack_key(bdb_uid))).get(uid) or {}
                if current and ack.get("version", 0) < current["version"]:
                    behind.append(bdb_uid)
            if not behind:
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"node {uid} does not serve databases {behind}")
            await self.exec.session.wait_changed(0.2)


class NodeRemove(Machine):
    """object_uid: the node. Every shard on it moves to another node (one shard_migrate action
    each, run by this same cnm_exec, so each takes its database's lock like any change), then the
    node leaves the membership through cluster_wd. The master node itself is not removed."""
    steps = (("drain", 90), ("leave", 100))

    @property
    def node_uid(self) -> int:
        return self.action["object_uid"]

    async def drain(self) -> None:
        if self.node_uid == self.exec.config.uid:
            raise ActionFailed("the master node cannot remove itself; remove it from another "
                               "master (stop it first, and another node takes over)")
        children = self.state.setdefault("children", {})
        deadline = trio.current_time() + 600
        while True:
            shards = {u: s for u, s in (await schema.shards(self.redis)).items()
                      if s["node_uid"] == self.node_uid}
            if not shards:
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"shards {sorted(shards)} still on node {self.node_uid}")
            for uid, shard in shards.items():
                child = children.get(str(uid))
                if child is not None:
                    found = await schema.get_action(self.redis, child)
                    if found and found["status"] in ("pending", "active"):
                        continue
                    if found and found["status"] == "failed":
                        raise ActionFailed(f"moving shard {uid}: {found['error']}")
                target = await self._target(shard)
                action = schema.new_action("shard_migrate", "shard", uid,
                                           {"target_node_uid": target})
                action["bdb_uid"] = shard["bdb_uid"]
                try:
                    await schema.submit(self.redis, action, lock_bdb=shard["bdb_uid"])
                except schema.Conflict:
                    continue            # its database is busy: tried again below
                children[str(uid)] = action["action_uid"]
                await self.save()
            self.action["progress"] = max(self.action["progress"], 90 - 9 * len(shards))
            await self.save()
            await self.exec.session.wait_changed(0.2)

    async def _target(self, shard: dict) -> int:
        every = await schema.shards(self.redis)
        node = pick_node(await self.up(), {self.node_uid} | pair_nodes(shard, every),
                         node_load(every))
        if node is None:
            raise ActionFailed(f"no node can take shard {shard['uid']}")
        return node

    async def leave(self) -> None:
        try:
            reply = await request(self.exec.config.address, self.exec.config.gossip_port,
                                  {"op": "leave", "uid": self.node_uid}, 5.0)
        except (OSError, trio.TooSlowError, ValueError) as exc:
            raise RedisUnavailable(f"cluster_wd did not answer: {exc!r}") from exc
        if not reply.get("ok"):
            raise ActionFailed(f"node {self.node_uid} did not leave: {reply.get('error')}")


class BdbBackup(Machine):
    """params.location: the folder (default: the database's backup_location); params.scheduled:
    submitted by job_scheduler. One RDB per master shard's slots, streamed from its replica
    when one runs and has caught up, else from the master (control/backup_mgr.py), then the
    manifest; the backup is listed only once complete. The database record keeps the outcome:
    last_backup_time (when the last good one was taken), last_backup_id, backup_status,
    backup_failure_reason.

    A master shard that goes down stops the backup at once: its failover waits for the
    database's lock, and a backup must never hold it up."""
    steps = (("plan", 5), ("fetch", 90), ("seal", 100))

    async def plan(self) -> None:
        if "backup_id" in self.state:
            return
        bdb = await self.bdb()
        if bdb.get("status") != "active":
            raise ActionFailed(f"database {self.bdb_uid} is {bdb.get('status')}, not active")
        location = self.action["params"].get("location") or \
            backup_mgr.location_of(bdb, self.exec.config.dir)
        now = time.time()
        backup_id = backup_mgr.new_backup_id(now)
        masters = sorted(await self.masters_of(self.bdb_uid), key=lambda s: s["slots"][0][0])
        self.state.update(backup_id=backup_id, time=now, name=bdb.get("name"), files={},
                          folder=str(backup_mgr.bdb_folder(Path(location), bdb) / backup_id),
                          ranges=[m["slots"] for m in masters])

    async def fetch(self) -> None:
        ranges = self.state["ranges"]
        for i, slots in enumerate(ranges, start=1):
            if str(i) in self.state["files"]:
                continue
            self.state["files"][str(i)] = await self._unless_a_master_dies(
                self._fetch_one, i, slots)
            self.action["progress"] = 5 + 85 * len(self.state["files"]) // len(ranges)
            await self.save()

    async def _fetch_one(self, i: int, slots) -> dict:
        """shard-<i>.rdb, the RDB of `slots`, in the partial folder: its manifest entry."""
        master, source = await self._source(slots)
        address = await self.address(source)
        dest = backup_mgr.partial_folder(Path(self.state["folder"])) / f"shard-{i}.rdb"
        try:
            got = await backup_mgr.fetch_rdb(*address, dest)
        except backup_mgr.BackupError as exc:
            raise ActionFailed(f"shard {source['uid']}: {exc}") from None
        self.state.setdefault("redis_version", await backup_mgr.redis_version(*address))
        return {"slots": slots, "file": dest.name, **got, "source_shard_uid": source["uid"],
                "role": source["role"], "master_shard_uid": master["uid"]}

    async def _source(self, slots) -> tuple[dict, dict]:
        """The master that holds `slots`, and where to read them: a replica on a live node that
        has caught up with what the master had when asked (so the backup holds every write
        acknowledged before it started), else the master itself."""
        shards = await self.shards_of(self.bdb_uid)
        master = next((s for s in shards.values() if s["role"] == "master"
                       and s["slots"] == slots), None)
        if master is None:
            raise ActionFailed(f"no master shard holds slots {slots} any more")
        states = await ccs.read_hash(self.redis, schema.SHARD_STATE)
        up = await self.up()
        for replica in shards.values():
            if replica.get("master_uid") == master["uid"] and replica["role"] == "replica" \
                    and replica["node_uid"] in up \
                    and (states.get(replica["uid"]) or {}).get("status") == "running" \
                    and await self._caught_up(master, replica):
                return master, replica
        return master, master

    async def _caught_up(self, master: dict, replica: dict) -> bool:
        """Whether the replica reaches the master's current replication offset within
        BACKUP_CATCH_UP (a replica just synced gets its first writes only after about a
        second)."""
        try:
            target = int((await replication_info(*await self.address(master)))
                         .get("master_repl_offset", 0))
            address = await self.address(replica)
            deadline = trio.current_time() + BACKUP_CATCH_UP
            while True:
                info = await replication_info(*address)
                if info.get("master_link_status") == "up" and \
                        info.get("master_sync_in_progress") == "0" and \
                        int(info.get("slave_repl_offset", -1)) >= target:
                    return True
                if trio.current_time() > deadline:
                    log.warning("backup of database %d: replica shard %d is behind, reading "
                                "master shard %d", self.bdb_uid, replica["uid"], master["uid"])
                    return False
                await trio.sleep(0.02)
        except (RedisUnavailable, ReplyError):
            return False

    async def _unless_a_master_dies(self, fn, *args):
        """fn(*args), cancelled with ActionFailed as soon as a master shard of the database is
        reported down or its node's heartbeat expires."""
        outcome: dict = {}

        async def work(scope) -> None:
            try:
                outcome["result"] = await fn(*args)
            except (OSError, ReplyError, ActionFailed) as exc:
                outcome["error"] = exc          # raised by the caller, not in a group
            scope.cancel()

        async def watch(scope) -> None:
            while True:
                try:
                    down = await self._masters_down()
                except (RedisUnavailable, ReplyError):
                    down = []
                if down:
                    outcome["down"] = down
                    scope.cancel()
                    return
                await self.exec.session.wait_changed(TICK)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
        if "down" in outcome:
            raise ActionFailed(f"master shards {outcome['down']} went down; the backup gave "
                               "way to their failover")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    async def _masters_down(self) -> list[int]:
        shards = await self.shards_of(self.bdb_uid)
        states = await ccs.read_hash(self.redis, schema.SHARD_STATE)
        up = await self.up()
        return sorted(u for u, s in shards.items() if s["role"] == "master" and (
            s["node_uid"] not in up or (states.get(u) or {}).get("status") == "down"))

    async def seal(self) -> None:
        final = Path(self.state["folder"])
        files = [self.state["files"][str(i)] for i in range(1, len(self.state["ranges"]) + 1)]
        manifest = {"backup_id": self.state["backup_id"], "bdb_uid": self.bdb_uid,
                    "name": self.state["name"], "time": self.state["time"],
                    "redis_version": self.state.get("redis_version"),
                    "keys": sum(f["keys"] for f in files), "shards": files,
                    "scheduled": bool(self.action["params"].get("scheduled")),
                    "action_uid": self.action["action_uid"]}
        if not (final / backup_mgr.MANIFEST).exists():
            await trio.to_thread.run_sync(backup_mgr.seal, backup_mgr.partial_folder(final),
                                          final, manifest)
        self.action["result"] = {"backup_id": manifest["backup_id"], "path": str(final),
                                 "keys": manifest["keys"], "files": len(files)}

    async def finish(self, ok: bool) -> None:
        if not ok and "folder" in self.state:
            shutil.rmtree(backup_mgr.partial_folder(Path(self.state["folder"])),
                          ignore_errors=True)
        bdb = await schema.get_bdb(self.redis, self.bdb_uid)
        if bdb is None:
            return
        if ok:
            bdb.update(last_backup_time=self.state["time"], backup_status="succeeded",
                       last_backup_id=self.state["backup_id"], backup_failure_reason=None)
        else:
            bdb.update(backup_status="failed", backup_failure_reason=self.action.get("error"))
        await schema.put_bdb(self.redis, bdb)


class BdbImport(Machine):
    """params: backup_path (a backup's folder) or rdb_path (an RDB file: a backup's, or a
    plain redis-server's); flush: empty the database first. Backup files are checked against
    their manifest's sha256 first. Every key is written through the database's endpoint on
    this node (control/backup_mgr.py), so a backup of any shard count loads into a database of
    any other; RESTORE ... REPLACE makes a file loaded twice (after a master change) harmless."""
    steps = (("check", 10), ("flush", 15), ("load", 100))

    async def check(self) -> None:
        bdb = await self.bdb()
        if bdb.get("status") != "active":
            raise ActionFailed(f"database {self.bdb_uid} is {bdb.get('status')}, not active")
        if "files" in self.state:
            return
        params = self.action["params"]
        try:
            if params.get("backup_path"):
                manifest = await trio.to_thread.run_sync(backup_mgr.read_manifest,
                                                         Path(params["backup_path"]))
                files = await trio.to_thread.run_sync(backup_mgr.verify, manifest)
            else:
                await trio.to_thread.run_sync(backup_mgr.check_rdb_file,
                                              Path(params["rdb_path"]))
                files = [{"path": params["rdb_path"], "slots": None}]
        except backup_mgr.BackupError as exc:
            raise ActionFailed(str(exc)) from None
        self.state.update(files=files, loaded=0, keys=0)

    async def endpoint(self):
        bdb = await self.bdb()
        return await connect(self.exec.config.address, bdb["port"], timeout=30.0,
                             password=bdb.get("authentication_redis_pass") or None)

    async def flush(self) -> None:
        if self.action["params"].get("flush"):
            async with await self.endpoint() as conn:
                await conn.execute("FLUSHALL")

    async def load(self) -> None:
        bdb = await self.bdb()
        files = self.state["files"]
        saved = trio.current_time()

        async def progress(done: int, total: int) -> None:
            nonlocal saved
            part = (self.state["loaded"] + (done / total if total else 1)) / len(files)
            self.action["progress"] = 15 + int(84 * part)
            if trio.current_time() - saved > 0.5:
                saved = trio.current_time()
                await self.save()

        for i in range(self.state["loaded"], len(files)):
            try:
                keys = await backup_mgr.load_rdb(
                    Path(files[i]["path"]), (self.exec.config.address, bdb["port"]),
                    password=bdb.get("authentication_redis_pass") or None,
                    slots=files[i]["slots"], progress=progress,
                    work_dir=self.exec.config.dir / "tmp" / f"import-{self.action['action_uid']}")
            except backup_mgr.BackupError as exc:
                raise ActionFailed(str(exc)) from None
            self.state["loaded"] = i + 1
            self.state["keys"] += keys
            self.action["result"] = {"keys": self.state["keys"], "files": i + 1}
            await self.save()


async def drop_foreign_keys(address: tuple[str, int], slots, batch: int = 500) -> int:
    """UNLINK every key of the shard whose slot is outside `slots`; returns how many."""
    owned = bytearray(16384)
    for a, b in slots:
        owned[a:b + 1] = b"\x01" * (b - a + 1)
    dropped = 0
    async with await connect(*address, timeout=10.0) as conn:
        cursor = b"0"
        while True:
            cursor, keys = await conn.execute("SCAN", cursor, "COUNT", batch)
            foreign = [k for k in keys if not owned[slot_of(k)]]
            if foreign:
                await conn.execute("UNLINK", *foreign)
                dropped += len(foreign)
            if cursor == b"0":
                return dropped


MACHINES = {"bdb_create": BdbCreate, "bdb_update": BdbUpdate, "bdb_delete": BdbDelete,
            "shard_failover": ShardFailover, "shard_migrate": ShardMigrate,
            "bdb_reshard": BdbReshard, "node_add": NodeAdd,
            "node_remove": NodeRemove, "bdb_backup": BdbBackup, "bdb_import": BdbImport}

main = service_command("cnm_exec", CnmExec)

if __name__ == "__main__":
    main()
