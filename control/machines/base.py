"""What every state machine is made of: the step runner (an action's `state`, step and progress
saved to CCS after each step, so a new master resumes from the step that was running), and the
waits and writes the machines share: shard started, replica synced or caught up, shard map
published and installed by every node's dmcproxy, the paused switch."""

from __future__ import annotations

import logging

import trio

from control import ccs, schema
from control.cluster_view import ClusterView, node_load, nodes_up, pick_node, read_view
from control.redis_client import RedisUnavailable, ReplyError, info
from control.shard_link import ShardLink, link
from dmc.shard_map import ShardMap

log = logging.getLogger("cnm_exec")

TICK = 0.25                 # action pick-up (and a backup's watch) without change notices
SYNC_TIMEOUT = 60.0         # a new replica has this long to catch up
START_TIMEOUT = 30.0        # redis_mgr has this long to start a shard
ACK_TIMEOUT = 10.0          # every live node's dmcproxy has this long to install a map
MAX_ATTEMPTS = 5            # a step that meets an unreachable shard or CCS is retried so often
BACKUP_CATCH_UP = 5.0       # a backup reads a replica only if it catches up this fast
# s a shard read (or wait) that fails waits for node_wd to report its master failed (it does
# within 0.1 s of a process's death; more on a loaded machine) before the step is retried
MASTER_DOWN_GRACE = 2.0


class ActionFailed(Exception):
    """The action cannot complete; its message is shown to the user."""


class NotMaster(Exception):
    """This node stopped being the master: leave the action to the next one."""


async def replication_info(target: ShardLink) -> dict[str, str]:
    async with await target.connect() as conn:
        return await info(conn, "replication")


class Machine:
    """Steps run in order; after each, the action's state is saved (see control/machines/)."""

    steps: tuple[tuple[str, int], ...] = ()      # (method name, progress when done)

    def __init__(self, exec_, redis, action: schema.Action):
        # exec_: the cnm_exec service running it (its node's `config`, its CCS `session`)
        self.exec = exec_
        self.redis = redis
        self.action = action
        self.state = action.state

    async def run(self) -> None:
        action = self.action
        done = self.state.get("done", 0)
        action.status = "active"
        try:
            if "failed" in self.state:      # a failure whose undoing (finish) was cut short
                raise ActionFailed(self.state["failed"])
            for i, (name, progress) in enumerate(self.steps):
                if i < done:
                    continue
                action.step = name
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
                action.progress = progress
                await self.save()
            schema.set_fields(action, status="completed", step="done", progress=100)
            await self.finish(ok=True)
        except ActionFailed as exc:
            log.warning("action %s (%s) failed: %s", action.action_uid, action.name, exc)
            # Recorded before it is undone: a master that takes over half-way through the
            # undoing (finish) runs it again, not the step that failed.
            self.state["failed"] = action.error = str(exc)
            await self.reconnect()
            await self.save()
            try:
                await self.finish(ok=False)
            except ActionFailed as undo:
                log.warning("action %s (%s): %s", action.action_uid, action.name, undo)
            action.status = "failed"
        await self.save()
        await self.release()

    async def reconnect(self) -> None:
        """A CCS connection again if ours was closed: a request cancelled half-way (a step
        given up for a shard that went down) closes it, and the failure must still be saved
        -- else the action, left `active`, is run again by the next pick-up."""
        if self.redis.closed:
            self.redis = await self.exec.session.local()

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
        bdb_uid = self.action.bdb_uid or (
            self.action.object_uid if self.action.object_type == "bdb" else None)
        if bdb_uid is not None:
            await schema.release(self.redis, bdb_uid, self.action.action_uid)

    # ---- reading the world -------------------------------------------------------------

    async def bdb(self, uid: int | None = None) -> schema.Bdb:
        found = await schema.get_bdb(self.redis, uid if uid is not None else self.bdb_uid)
        if found is None:
            raise ActionFailed(f"database {uid or self.bdb_uid} does not exist")
        return found

    @property
    def bdb_uid(self) -> int:
        return self.action.object_uid

    async def nodes(self) -> dict[int, dict]:
        return await ccs.read_hash(self.redis, ccs.NODES)

    async def view(self) -> ClusterView:
        return await read_view(self.redis)

    async def up(self) -> set[int]:
        return await nodes_up(self.redis, await self.nodes())

    async def shards_of(self, bdb_uid: int) -> dict[int, schema.Shard]:
        return {u: s for u, s in (await schema.shards(self.redis)).items()
                if s.bdb_uid == bdb_uid}

    async def address(self, shard: schema.Shard) -> ShardLink:
        """How this node reaches the shard (its unix socket here, TLS with DPINE elsewhere)."""
        bdb = await schema.get_bdb(self.redis, shard.bdb_uid)
        return link(self.exec.config, shard, bdb, await self.nodes())

    # ---- waiting for the nodes ---------------------------------------------------------

    async def unless_a_master_dies(self, what: str, fn, *args):
        """fn(*args), cancelled with ActionFailed as soon as a master shard of the database is
        reported failed (control/cluster_view.py: node down, process down, or unresponsive):
        the action (`what`) gives way to the failover, which its lock of the database holds
        off meanwhile."""
        outcome: dict = {}

        async def work(scope) -> None:
            try:
                outcome["result"] = await fn(*args)
            except (OSError, ReplyError, ActionFailed) as exc:
                outcome["error"] = exc          # raised by the caller, not in a group
                # A read cut short by its master's death fails at once (its socket closes),
                # before node_wd has reported the shard failed: the watch has this long to
                # say so, and the action then gives way to the failover rather than retry.
                await trio.sleep(MASTER_DOWN_GRACE)
            scope.cancel()

        async def watch(scope) -> None:
            while True:
                try:
                    down = await self.masters_down()
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
        await self.reconnect()      # the one of them cancelled may have been mid-request
        if "down" in outcome:
            raise ActionFailed(f"master shards {outcome['down']} went down; the {what} gave "
                               "way to their failover")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    async def masters_down(self) -> list[int]:
        view = await self.view()
        return sorted(u for u, s in view.shards.items() if s.bdb_uid == self.bdb_uid
                      and s.role == "master" and view.failed(s))

    async def wait_running(self, uids, timeout: float = START_TIMEOUT) -> None:
        """Until redis_mgr reports every shard in `uids` running."""
        deadline = trio.current_time() + timeout
        while True:
            states = await ccs.read_hash(self.redis, schema.SHARD_STATE)
            shards = await schema.shards(self.redis)
            waiting = [u for u in uids if (states.get(u) or {}).get("status") != "running"
                       or states[u]["node_uid"] != shards[u].node_uid
                       or states[u]["port"] != shards[u].port]
            if not waiting:
                return
            failed = [u for u in waiting if (states.get(u) or {}).get("status") == "error"]
            if failed or trio.current_time() > deadline:
                raise ActionFailed(f"shards {waiting} did not start")
            await self.exec.session.wait_changed(0.2)

    async def wait_synced(self, replica: schema.Shard, timeout: float = SYNC_TIMEOUT) -> None:
        """Until the replica has loaded its master's data, its link is up and its master's
        writes reach it (see _wait_streaming)."""
        deadline = trio.current_time() + timeout
        address = await self.address(replica)
        while True:
            try:
                info = await replication_info(address)
                if info.get("role") == "slave" and info.get("master_link_status") == "up" \
                        and info.get("master_sync_in_progress") == "0":
                    break
            except (RedisUnavailable, ReplyError):
                pass
            if trio.current_time() > deadline:
                raise ActionFailed(f"replica shard {replica.uid} did not sync in {timeout}s")
            await trio.sleep(0.05)
        master = (await schema.shards(self.redis)).get(replica.master_uid)
        if master is not None:
            await self._wait_streaming(master, replica, deadline)

    async def _wait_streaming(self, master: schema.Shard, replica: schema.Shard,
                              deadline: float) -> None:
        """Until a write made on the master now has reached the replica. A link that is up is
        not enough: after a diskless sync the master streams its writes to the replica only
        from the replica's next REPLCONF ACK (Redis sends one a second), so for up to a second
        a replica reported in sync has none of the writes acknowledged meanwhile, and a
        failover then would lose them all."""
        m_addr, r_addr = await self.address(master), await self.address(replica)
        while True:
            try:
                async with await m_addr.connect() as conn:
                    # A replicated no-op: a sharded channel nobody subscribes to.
                    await conn.execute("SPUBLISH", "__dmc__:synced", "")
                    mark = int((await info(conn, "replication"))["master_repl_offset"])
                while trio.current_time() < deadline:
                    r = await replication_info(r_addr)
                    if int(r.get("slave_repl_offset") or 0) >= mark:
                        return
                    await trio.sleep(0.05)
            except (RedisUnavailable, ReplyError, KeyError, ValueError):
                pass
            if trio.current_time() > deadline:
                raise ActionFailed(f"replica shard {replica.uid} does not receive its "
                                   f"master's writes")
            await trio.sleep(0.05)

    async def wait_caught_up(self, master: schema.Shard, replica: schema.Shard,
                             timeout: float = 10.0) -> None:
        """Until the replica has applied everything its master has (writes are paused)."""
        deadline = trio.current_time() + timeout
        m_addr, r_addr = await self.address(master), await self.address(replica)
        while True:
            m, r = await replication_info(m_addr), await replication_info(r_addr)
            if r.get("master_link_status") == "up" and \
                    r.get("slave_repl_offset") == m.get("master_repl_offset"):
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"replica shard {replica.uid} did not catch up "
                                   f"(master offset {m.get('master_repl_offset')}, replica "
                                   f"{r.get('slave_repl_offset')})")
            await trio.sleep(0.005)

    async def current_map(self, bdb_uid: int) -> schema.BdbMap | None:
        return await schema.get_map(self.redis, bdb_uid)

    async def publish_map(self, bdb_uid: int, masters: list[schema.Shard], *,
                          paused: bool) -> int:
        """Write the next version of the database's map; returns it."""
        old = await self.current_map(bdb_uid)
        version = (old.version if old else 0) + 1
        nodes = await self.nodes()
        value = schema.BdbMap(version=version, paused=paused, shards=[
            schema.MapShard(uid=s.uid, address=schema.shard_address(s, nodes), slots=s.slots,
                            tls_port=s.tls_port)
            for s in sorted(masters, key=lambda s: s.slots[0][0])])
        try:
            ShardMap.from_dict(schema.as_dict(value))   # every slot owned once, or not published
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

    async def masters_of(self, bdb_uid: int) -> list[schema.Shard]:
        return [s for s in (await self.shards_of(bdb_uid)).values() if s.role == "master"]

    async def new_shard(self, bdb_uid: int, node_uid: int, role: str, slots,
                        master_uid: int | None = None, uid: int | None = None) -> schema.Shard:
        """A new shard record (`uid`: one allocated before, recorded in the action's state)."""
        used = schema.used_shard_ports(await schema.shards(self.redis))
        if uid is None:
            uid = await schema.next_uid(self.redis, "shard")
        # A tls-port for each shard from the start: DPINE (data_internode_encryption) can be
        # switched on later without moving it.
        shard = schema.Shard(uid=uid, bdb_uid=bdb_uid,
                             node_uid=node_uid, role=role, port=schema.free_shard_port(used),
                             tls_port=schema.free_shard_port(used), slots=slots,
                             master_uid=master_uid)
        await schema.put_shard(self.redis, shard)
        return shard

    async def add_missing_replicas(self, strict: bool) -> list[schema.Shard]:
        """A replica, on another node, for each master of the database that has none. With
        `strict`, a master that cannot have one fails the action; else it is left without."""
        shards = await self.shards_of(self.bdb_uid)
        have = {s.master_uid for s in shards.values() if s.role == "replica"}
        up = await self.up()
        load = node_load(await schema.shards(self.redis))
        added = []
        for master in [s for s in shards.values() if s.role == "master"]:
            if master.uid in have:
                continue
            node = pick_node(up, {master.node_uid}, load)
            if node is None:
                if strict:
                    raise ActionFailed("replication needs a second node up")
                break
            added.append(await self.new_shard(self.bdb_uid, node, "replica", master.slots,
                                              master.uid))
        return added

    async def switch(self, bdb_uid: int, promote: list[tuple[schema.Shard, schema.Shard]],
                     masters_after) -> None:
        """The paused switch: pause every proxy, wait until each (master, replica) pair in
        `promote` is caught up, promote the replicas, then publish `masters_after()` (called
        once the promotions are done) unpaused. A failure before it resumes the old map; one
        after `masters_after` recorded the state `committed` (bdb_reshard's point of no
        return) leaves the map paused for the step's resumption to go forward: the old map
        would send writes to the masters that gave slots away."""
        current = await self.masters_of(bdb_uid)
        version = await self.publish_map(bdb_uid, current, paused=True)
        try:
            await self.wait_acks(bdb_uid, version)
            for master, replica in promote:
                await self.wait_caught_up(master, replica)
            for _master, replica in promote:
                async with await (await self.address(replica)).connect() as conn:
                    await conn.execute("REPLICAOF", "NO", "ONE")
            masters = await masters_after()
        except BaseException:
            if not self.state.get("committed"):
                with trio.CancelScope(shield=True):
                    await self.publish_map(bdb_uid, await self.masters_of(bdb_uid),
                                           paused=False)
            raise
        version = await self.publish_map(bdb_uid, masters, paused=False)
        await self.wait_acks(bdb_uid, version, required=False)
