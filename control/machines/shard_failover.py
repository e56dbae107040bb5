"""shard_failover: promote a master's replica; graceful (pause, catch up, switch) while the
master lives, forced when it has failed (node_wd submits those)."""

from __future__ import annotations

import logging

from control import schema
from control.cluster_view import node_load, pick_node
from control.machines.base import ActionFailed, Machine

log = logging.getLogger("cnm_exec")


class ShardFailover(Machine):
    """object_uid: the master shard (or its replica). params.forced: the master is dead."""
    steps = (("failover", 80), ("reattach", 100))

    async def _pair(self) -> tuple[schema.Shard, schema.Shard]:
        shards = await schema.shards(self.redis)
        shard = shards.get(self.action.object_uid)
        if shard is None:
            raise ActionFailed(f"shard {self.action.object_uid} does not exist")
        self.action.bdb_uid = shard.bdb_uid
        if "pair" in self.state:
            m, r = self.state["pair"]
            return shards[m], shards[r]
        master = shard if shard.role == "master" else shards.get(shard.master_uid)
        replica = next((s for s in shards.values() if s.master_uid == master.uid
                        and s.role == "replica" and s.slots == master.slots), None)
        if replica is None:
            raise ActionFailed(f"shard {master.uid} has no replica to fail over to")
        self.state["pair"] = [master.uid, replica.uid]
        return master, replica

    async def failover(self) -> None:
        master, replica = await self._pair()
        if master.role == "replica" and replica.role == "master":
            return          # done before a master change
        bdb_uid = master.bdb_uid

        async def swapped() -> list[schema.Shard]:
            schema.set_fields(replica, role="master", master_uid=None)
            schema.set_fields(master, role="replica", master_uid=replica.uid, restart_after=None)
            # In one write: CCS never shows both as master (a chaos run's map poll saw it).
            await schema.put_shards(self.redis, replica, master)
            return await self.masters_of(bdb_uid)

        if self.action.params.get("forced"):
            async with await (await self.address(replica)).connect() as conn:
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
        if old.node_uid not in up:
            node = pick_node(up, {new.node_uid}, node_load(shards))
            if node is None:
                return
            await schema.relocate(self.redis, old, node, shards)
        try:
            await self.wait_running([old.uid], timeout=10.0)
        except ActionFailed:
            log.warning("old master shard %d not back yet as a replica", old.uid)
