"""shard_migrate: move a shard to another node: a new replica there, then a graceful switch."""

from __future__ import annotations

from control import ccs, schema
from control.machines.base import ActionFailed, Machine


class ShardMigrate(Machine):
    """object_uid: the shard; params.target_node_uid. A new copy on the target node takes its
    place; a master's switch is paused (see the module's doc)."""
    steps = (("copy", 40), ("sync", 60), ("switch_over", 90), ("retire", 100))

    async def copy(self) -> None:
        shards = await schema.shards(self.redis)
        shard = shards.get(self.action.object_uid)
        if shard is None:
            raise ActionFailed(f"shard {self.action.object_uid} does not exist")
        self.action.bdb_uid = shard.bdb_uid
        target = int(self.action.params["target_node_uid"])
        if target not in await self.up():
            raise ActionFailed(f"node {target} is not up")
        if "new" in self.state:
            return
        master_uid = shard.uid if shard.role == "master" else shard.master_uid
        new = await self.new_shard(shard.bdb_uid, target, "replica", shard.slots,
                                   master_uid)
        self.state.update(new=new.uid, old=shard.uid, was_master=shard.role == "master")

    async def sync(self) -> None:
        shards = await schema.shards(self.redis)
        new = shards[self.state["new"]]
        await self.wait_running([new.uid])
        await self.wait_synced(new)

    async def switch_over(self) -> None:
        if not self.state["was_master"]:
            return
        shards = await schema.shards(self.redis)
        old, new = shards[self.state["old"]], shards[self.state["new"]]
        if new.role == "master":
            return

        async def moved() -> list[schema.Shard]:
            schema.set_fields(new, role="master", master_uid=None)
            followers = [s for s in shards.values()     # the other replicas follow the new master
                         if s.master_uid == old.uid and s.uid != new.uid]
            for s in followers:
                s.master_uid = new.uid
            schema.set_fields(old, role="replica", master_uid=new.uid)
            await schema.put_shards(self.redis, new, *followers, old)     # in one write
            return await self.masters_of(old.bdb_uid)

        await self.switch(old.bdb_uid, [(old, new)], moved)

    async def retire(self) -> None:
        await ccs.delete(self.redis, schema.SHARDS, self.state["old"])

    async def finish(self, ok: bool) -> None:
        """A migration that failed before its switch leaves no copy behind: the new replica's
        record goes (its node's redis_mgr stops it) while the old shard still serves."""
        if ok or "new" not in self.state:
            return
        shards = await schema.shards(self.redis)
        new = shards.get(self.state["new"])
        if new is not None and new.role == "replica" and self.state["old"] in shards:
            await ccs.delete(self.redis, schema.SHARDS, new.uid)
