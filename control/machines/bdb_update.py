"""bdb_update: apply new settings (memory, eviction, password, persistence, replication on/off);
wait for shards and proxies to apply them."""

from __future__ import annotations

import logging

import trio

from control import ccs, schema
from control.machines.base import ACK_TIMEOUT, Machine

log = logging.getLogger("cnm_exec")


class BdbUpdate(Machine):
    steps = (("apply", 30), ("replicas", 80), ("settle", 100))

    async def apply(self) -> None:
        bdb = await self.bdb()
        changes = {k: v for k, v in self.action.params.items() if k != "shards_count"}
        self.state["replication"] = changes.get("replication", bdb.replication)
        schema.set_fields(bdb, **changes)
        bdb.version += 1
        await schema.put_bdb(self.redis, bdb)

    async def replicas(self) -> None:
        shards = await self.shards_of(self.bdb_uid)
        replicas = [s for s in shards.values() if s.role == "replica"]
        if self.state["replication"]:
            added = await self.add_missing_replicas(strict=True)
            await self.wait_running([s.uid for s in added])
            for shard in added:
                await self.wait_synced(shard)
        else:
            if replicas:
                await ccs.delete(self.redis, schema.SHARDS, *(r.uid for r in replicas))

    async def settle(self) -> None:
        """Until every live node's dmcproxy serves the new record (its password, say); shards
        get their memory limit and eviction policy from redis_mgr in the same pass."""
        version = (await self.bdb()).version
        deadline = trio.current_time() + ACK_TIMEOUT
        while trio.current_time() < deadline:
            up = await self.up()
            acks = await ccs.read_hash(self.redis, schema.ack_key(self.bdb_uid))
            if all((acks.get(n) or {}).get("bdb_version", 0) >= version for n in up):
                return
            await self.exec.session.wait_changed(0.1)
        log.warning("database %d: not every proxy acknowledged version %d", self.bdb_uid,
                    version)
