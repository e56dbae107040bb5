"""node_wd: the node's health watchdog, a service of its own (supervisord program `node_wd`).

On every node it probes the node's shards: each shard that CCS places on this node and whose
process redis_mgr reports running gets a PING every PROBE_EVERY seconds; one that does not answer
within the deadline (node.json's `shard_ping_deadline`, default 1.5 s) is reported
`unresponsive` in CCS's `shard_health` hash, and `ok` again once it answers. So a shard that is
paused (SIGSTOP), swapping or stuck in the kernel is treated as failed, not only one whose
process has exited (redis_mgr notices those itself, to start them again). An error reply
(-LOADING, -BUSY) is an answer: the shard is alive, only busy. A master that stopped answering
and was failed over meanwhile is killed (see `_fence`); redis_mgr starts it as a replica.

It also watches the node itself, every HEALTH_EVERY seconds: the free space of the disk that
holds the node's folder (`low` under node.json's `min_free_disk_ratio` of it) and whether the
node's own CCS copy answers PING within the deadline (a copy that does not cannot tell the
node's services what to do). Both go to CCS's `node_health` hash (field: the node), through the
master, when a status changes.

On the master node it is also the cluster's high-availability policy, over the cluster view
(control/cluster_view.py) of heartbeats, `shard_state` and `shard_health`:

- a master shard that failed (node down, process down, or unresponsive) with a replica that
  serves (reported running and answering PING now: a report from before a restart of its node
  may be stale) gets a forced `shard_failover` action, which cnm_exec runs; the old master comes back
  as a replica, on its node or on another if its node is down;
- a failed master without such a replica is started again where it is (`restart_after` on its
  record, for redis_mgr), unless the database's only disk copy is on a replica on its way back
  (a whole-cluster restart), for at most RECOVERY_WAIT;
- a replica on a node down for REPLICA_HA_AFTER is placed on another node (replica HA), unless
  its master is down too (it may then hold the only copy: it is waited for).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time

import trio

from control import ccs, redis_mgr, schema, shard_link
from control.cluster_view import (ClusterView, master_here, node_load, pair_nodes, pick_node,
                                  read_view, serving_replica)
from control.node import NodeConfig, service_command
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("node_wd")

PROBE_EVERY = 0.2           # each shard of the node is PINGed this often
POLICY_EVERY = 0.25         # the master's HA checks, without change notices
REPLICA_HA_AFTER = 5.0      # a replica on a node down this long is re-created elsewhere
# ... and never in the first HA_STARTUP_GRACE s of this node_wd's HA checks: after a whole-cluster
# restart every node looks down until its heartbeat reaches the new master, and a replica
# re-created elsewhere leaves its old folder -- maybe the database's only disk copy -- deleted
HA_STARTUP_GRACE = 15.0
BUSY_SAMPLE = 0.2           # s over which a shard that does not answer is seen using the CPU
RECOVERY_WAIT = 60.0        # a dead master waits this long for the replica holding its data
HEALTH_EVERY = 2.0          # the node's disk and own CCS copy are checked this often
NODE_HEALTH = "node_health"     # hash: node uid -> {uid, ccs, disk, disk_free, disk_total, ...}


class NodeWd:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.deadline = config.shard_ping_deadline
        self.session = ccs.Session.of_node(config)
        self.probers: dict[int, tuple[int, trio.CancelScope]] = {}   # shard uid -> (port, task)
        self.answers: dict[int, str | None] = {}    # shard uid -> None (answered) or why not
        self.reported: dict[int, dict] = {}         # shard uid -> the health last written
        self.node_down_since: dict[int, float] = {}
        self.ha_since: float | None = None          # the first HA check of this process

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.watch)
            nursery.start_soon(self._probe_loop)
            nursery.start_soon(self._health_loop)
            while True:
                await self.session.wait_changed(POLICY_EVERY)
                try:
                    local = await self.session.local()
                    if await master_here(local, self.config.uid):
                        await self.enforce(local)
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("HA check skipped: %s", exc)

    # ---- the node itself (every node) ---------------------------------------------------------

    async def node_health(self) -> dict:
        """The node's disk and its own CCS copy, now."""
        disk = await trio.to_thread.run_sync(shutil.disk_usage, self.config.dir)
        ccs_error = None
        try:
            with trio.fail_after(self.deadline):
                async with await ccs.connect_node(self.config, timeout=self.deadline) as conn:
                    await conn.execute("PING")
        except trio.TooSlowError:
            ccs_error = f"no answer to PING within {self.deadline}s"
        except (RedisUnavailable, ReplyError) as exc:
            ccs_error = str(exc)
        low = disk.free < disk.total * self.config.min_free_disk_ratio
        return {"uid": self.config.uid, "ccs": "unreachable" if ccs_error else "ok",
                "ccs_error": ccs_error, "disk": "low" if low else "ok",
                "disk_free": disk.free, "disk_total": disk.total, "time": time.time()}

    async def _health_loop(self) -> None:
        reported = None
        while True:
            health = await self.node_health()
            status = (health["ccs"], health["disk"])
            if status != reported:
                if health["ccs"] != "ok" or health["disk"] != "ok":
                    log.warning("node %d: CCS %s, disk %s (%d bytes free)", self.config.uid,
                                health["ccs"], health["disk"], health["disk_free"])
                try:
                    await ccs.write(await self.session.master(), NODE_HEALTH, health,
                                    field=self.config.uid)
                    reported = status
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("node health not reported: %s", exc)
            await trio.sleep(HEALTH_EVERY)

    # ---- shard probes (every node) -----------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Every PROBE_EVERY: which shards are this node's, one prober task each (so a shard
        that hangs delays no other), and what their probes found, reported."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await self.probe_all(nursery)
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("probe postponed: %s", exc)
                await trio.sleep(PROBE_EVERY)

    async def probe_all(self, nursery) -> None:
        local = await self.session.local()
        shards = await schema.shards(local)
        states = await ccs.read_hash(local, schema.SHARD_STATE)
        mine = {u: s for u, s in shards.items() if s.node_uid == self.config.uid
                and (states.get(u) or {}).get("status") == "running"
                and states[u].get("node_uid") == self.config.uid
                and states[u].get("port") == s.port}
        for uid, shard in mine.items():
            prober = self.probers.get(uid)
            if prober is None or prober[0] != shard.port:
                if prober is not None:
                    prober[1].cancel()
                self.answers.pop(uid, None)
                scope = trio.CancelScope()
                self.probers[uid] = (shard.port, scope)
                nursery.start_soon(self._probe, uid, shard, scope)
        for uid in [u for u in self.probers if u not in mine]:
            self.probers.pop(uid)[1].cancel()
            self.answers.pop(uid, None)
        for uid, error in list(self.answers.items()):
            if uid not in mine:         # its prober ended meanwhile (the shard moved away)
                continue
            await self._report(uid, mine[uid], error)
            if error is not None:
                self._fence(uid, mine[uid], states[uid])
        gone = [u for u in self.reported if u not in mine]
        if gone:
            await ccs.delete(await self.session.master(), schema.SHARD_HEALTH, *gone)
            for uid in gone:
                self.reported.pop(uid, None)

    async def _probe(self, uid: int, shard: schema.Shard, scope: trio.CancelScope) -> None:
        """PING the shard every PROBE_EVERY (on its unix socket: shard_link); answers[uid]:
        None while it answers within the deadline, else why not."""
        conn = None
        with scope:
            try:
                while True:
                    started = trio.current_time()
                    try:
                        if conn is None or conn.closed:
                            conn = await shard_link.local_link(self.config, shard).connect(
                                timeout=self.deadline)
                        await conn.execute("PING")
                        self.answers[uid] = None
                    except ReplyError:
                        self.answers[uid] = None        # -LOADING, -BUSY: alive, busy
                    except RedisUnavailable as exc:
                        # A script or a long command runs its busy-reply-threshold (5 s)
                        # before redis-server answers -BUSY, and no answer at all before: a
                        # process on the CPU is busy, not dead (a stopped or hung one is not)
                        self.answers[uid] = None if await self._on_cpu(uid) else str(exc)
                    await trio.sleep_until(started + PROBE_EVERY)
            finally:
                if conn is not None:
                    with trio.CancelScope(shield=True):
                        await conn.aclose()

    async def _on_cpu(self, uid: int) -> bool:
        """The shard's main thread runs, and wanted the CPU (ran, or waited its turn on a run
        queue) at least half of BUSY_SAMPLE seconds. Counting the wait matters on a loaded
        machine: a script that loops gets only its share of the cores there, and by CPU time
        alone would look dead and be failed over."""
        pid = redis_mgr.read_pid(self.config.shards_dir / str(uid))
        before = pid and cpu_demand(pid)
        if not before:
            return False
        await trio.sleep(BUSY_SAMPLE)
        after = cpu_demand(pid)
        return bool(after) and after[0] == "R" and after[1] - before[1] >= BUSY_SAMPLE / 2

    def _fence(self, uid: int, shard: schema.Shard, state: dict) -> None:
        """A master that stopped answering and has since been failed over (its record now says
        replica) is killed: were it to resume, it would answer as a master the writes a proxy
        had sent it meanwhile, and lose them when it resyncs as a replica. redis_mgr starts it
        again, as the replica its record asks for."""
        stopped_as = (self.reported.get(uid) or {}).get("role")
        if stopped_as != "master" or shard.role != "replica":
            return
        pid = redis_mgr.read_pid(self.config.shards_dir / str(uid))
        if pid is None or pid != state.get("pid"):
            return
        log.warning("shard %d (pid %d) was failed over while not answering: killed", uid, pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def _report(self, uid: int, shard: schema.Shard, error: str | None) -> None:
        status = "ok" if error is None else "unresponsive"
        old = self.reported.get(uid)
        if old is not None and (old["status"], old["port"]) == (status, shard.port):
            return          # (its role is the one it had when it stopped answering)
        if error is not None:
            log.warning("shard %d (port %d) did not answer PING within %.1fs: %s", uid,
                        shard.port, self.deadline, error)
        elif old is not None:
            log.info("shard %d answers PING again", uid)
        value = {"uid": uid, "node_uid": self.config.uid, "port": shard.port,
                 "status": status, "role": shard.role, "since": time.time(),
                 "error": error, "deadline": self.deadline}
        await ccs.write(await self.session.master(), schema.SHARD_HEALTH, value, field=uid)
        self.reported[uid] = value

    # ---- the HA policy (the master node) -----------------------------------------------------

    async def enforce(self, redis) -> None:
        view = await read_view(redis)
        up = set(view.up) | {self.config.uid}      # this one runs: its heartbeat may lag
        now = time.monotonic()
        if self.ha_since is None:
            self.ha_since = now
        for uid in view.nodes:
            if uid in up:
                self.node_down_since.pop(uid, None)
            else:
                self.node_down_since.setdefault(uid, now)
        for shard in view.shards.values():
            bdb = view.bdbs.get(shard.bdb_uid)
            if bdb is None or bdb.status in ("pending", "deleting"):
                continue
            if shard.role == "master" and view.failed(shard):
                await self._master_failed(redis, shard, view, bdb)
            elif shard.role == "replica" and shard.node_uid not in up and \
                    now - self.node_down_since.get(shard.node_uid, now) >= REPLICA_HA_AFTER \
                    and now - self.ha_since >= HA_STARTUP_GRACE:
                master = view.shards.get(shard.master_uid)
                if master is not None and not view.failed(master):
                    await self._replace_replica(redis, shard, view)

    @staticmethod
    def _disk_copy_on_replica(master: schema.Shard, view: ClusterView, bdb: schema.Bdb) -> bool:
        """Only the replicas write to disk: a master that died has nothing to start from, its
        replica has it all."""
        return schema.persists(bdb, "replica") and not schema.persists(bdb, "master") and \
            any(r.master_uid == master.uid for r in view.shards.values())

    async def _master_failed(self, redis, shard: schema.Shard, view: ClusterView,
                             bdb: schema.Bdb) -> None:
        replica = serving_replica(shard, view.shards, view.states, view.health, set(view.up))
        if replica is None:
            # Nothing to fail over to: the master comes back where it is, if its node is up;
            # but not empty while the replica holding the database's only disk copy is on its
            # way back (a whole-cluster restart), unless it stays away RECOVERY_WAIT.
            state = view.states.get(shard.uid) or {}
            if self._disk_copy_on_replica(shard, view, bdb) and \
                    time.time() - state.get("since", time.time()) < RECOVERY_WAIT:
                return
            if shard.node_uid in view.up and state.get("status") == "down" and \
                    (shard.restart_after or 0) < state.get("since", 0):
                shard.restart_after = time.time()
                await schema.put_shard(redis, shard)
            return
        if not await self._answers(shard_link.link(self.config, replica, bdb, view.nodes)):
            return      # its state is from before a restart of its node: not yet back
        action = schema.new_action("shard_failover", "shard", shard.uid,
                                   {"forced": True, "reason": "master shard down"})
        action.bdb_uid = shard.bdb_uid
        try:
            await schema.submit(redis, action, lock_bdb=shard.bdb_uid)
            log.warning("shard %d failed: failing over to shard %d", shard.uid,
                        replica.uid)
        except schema.Conflict:
            pass        # a running action holds the database; it will meet the failure itself

    async def _answers(self, target: shard_link.ShardLink) -> bool:
        """The shard answers PING within the deadline, now."""
        try:
            async with await target.connect(timeout=self.deadline) as conn:
                return await conn.execute("PING") == b"PONG"
        except (RedisUnavailable, ReplyError):
            return False

    async def _replace_replica(self, redis, shard: schema.Shard, view: ClusterView) -> None:
        target = pick_node(view.up, pair_nodes(shard, view.shards), node_load(view.shards))
        if target is None:
            return
        log.warning("replica shard %d: node %d is down, re-created on node %d",
                    shard.uid, shard.node_uid, target)
        await schema.relocate(redis, shard, target, view.shards)


def cpu_demand(pid: int) -> tuple[str, float] | None:
    """(state, seconds the process's main thread has run or waited runnable on a run queue) of
    a process: /proc/<pid>/stat, and /proc/<pid>/schedstat's first two fields (ns); without
    schedstat (a kernel without CONFIG_SCHED_INFO), its CPU time alone (utime + stime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            ran, waited = f.read().split()[:2]
        return fields[0], (int(ran) + int(waited)) / 1e9
    except (OSError, ValueError):
        return fields[0], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


main = service_command("node_wd", NodeWd)

if __name__ == "__main__":
    main()
