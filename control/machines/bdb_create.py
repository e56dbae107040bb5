"""bdb_create: place the shards (a master and, with replication, a replica on another node per
slot range), wait for redis_mgr to run them and the replicas to sync, publish the shard map, wait
for every node's dmcproxy to serve it, mark the database active."""

from __future__ import annotations

import trio

from control import schema
from control.cluster_view import node_load, pair_nodes, pick_node, place
from control.machines.base import START_TIMEOUT, ActionFailed, Machine

NODES_UP_GRACE = 10.0   # s a placement waits for enough nodes up (ccs.HEARTBEAT_TTL_MS and more)


class BdbCreate(Machine):
    steps = (("place", 20), ("start_shards", 60), ("sync_replicas", 75), ("publish", 85),
             ("serve", 95), ("activate", 100))

    async def place(self) -> None:
        """Every slot range gets a master (and a replica); run again after a master change,
        it places only what the previous run had not."""
        bdb = await self.bdb()
        covered = [m.slots for m in await self.masters_of(bdb.uid)]
        missing = [r for r in schema.split_slots(bdb.shards_count) if r not in covered]
        if missing:
            placement = await self._placement(len(missing), bdb.replication)
            for slots, (m_node, r_node) in zip(missing, placement):
                master = await self.new_shard(bdb.uid, m_node, "master", slots)
                if r_node is not None:
                    await self.new_shard(bdb.uid, r_node, "replica", slots, master.uid)
        if bdb.replication:
            await self.add_missing_replicas(strict=True)

    async def _placement(self, count: int, replication: bool):
        """Nodes for `count` masters (and replicas). Too few nodes up is given NODES_UP_GRACE:
        the request was accepted with enough (cnm_http checks), and a master elected meanwhile
        sees the others up only once their heartbeats reach it."""
        deadline = trio.current_time() + NODES_UP_GRACE
        while True:
            load = node_load(await schema.shards(self.redis))
            try:
                return place(count, replication, sorted(await self.up()), load)
            except schema.InvalidRequest as exc:
                if trio.current_time() > deadline:
                    raise ActionFailed(str(exc)) from None
            await trio.sleep(0.5)

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
        mine = {u: s for u, s in every.items() if s.bdb_uid == self.bdb_uid}
        for shard in mine.values():
            if shard.node_uid in up:
                continue
            node = pick_node(up, pair_nodes(shard, mine), node_load(every))
            if node is not None:
                await schema.relocate(self.redis, shard, node, every)

    async def sync_replicas(self) -> None:
        for shard in (await self.shards_of(self.bdb_uid)).values():
            if shard.role == "replica":
                await self.wait_synced(shard)

    async def publish(self) -> None:
        self.state["version"] = await self.publish_map(
            self.bdb_uid, await self.masters_of(self.bdb_uid), paused=False)

    async def serve(self) -> None:
        await self.wait_acks(self.bdb_uid, self.state["version"], required=False)

    async def activate(self) -> None:
        bdb = await self.bdb()
        bdb.status = "active"
        await schema.put_bdb(self.redis, bdb)

    async def finish(self, ok: bool) -> None:
        if not ok:
            bdb = await schema.get_bdb(self.redis, self.bdb_uid)
            if bdb is not None:
                bdb.status = "creation-failed"
                await schema.put_bdb(self.redis, bdb)
