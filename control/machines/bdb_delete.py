"""bdb_delete: withdraw the endpoint, stop the shards, forget the database."""

from __future__ import annotations

import trio

from control import ccs, schema
from control.machines.base import START_TIMEOUT, Machine


class BdbDelete(Machine):
    steps = (("withdraw", 30), ("stop_shards", 80), ("forget", 100))

    async def withdraw(self) -> None:
        bdb = await self.bdb()
        bdb.status = "deleting"
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
            await self.redis.execute("HDEL", schema.SHARD_HEALTH, *map(str, shards))

    async def forget(self) -> None:
        await self.redis.execute("DEL", schema.ack_key(self.bdb_uid),
                                 schema.endpoint_status_key(self.bdb_uid))
        await ccs.delete(self.redis, schema.BDBS, self.bdb_uid)
