"""bdb_reshard: more shards, by splitting each master's slots: replicate, then split (see
control/machines/__init__.py), then each shard drops the keys of slots it gave away."""

from __future__ import annotations

from dmc._fastpath import slot_of

from control import schema
from control.cluster_view import node_load, pick_node
from control.machines.base import ActionFailed, Machine
from control.shard_link import ShardLink


class BdbReshard(Machine):
    """params.shards_count: a multiple of the current count; each master's slots are split."""
    steps = (("plan", 10), ("copy", 40), ("split", 70), ("clean", 85), ("replicate", 100))

    async def plan(self) -> None:
        bdb = await self.bdb()
        new_count = int(self.action.params["shards_count"])
        masters = sorted(await self.masters_of(self.bdb_uid), key=lambda s: s.slots[0][0])
        if "pieces" in self.state:
            return
        if new_count % len(masters):
            raise ActionFailed(f"{new_count} shards is not a multiple of {len(masters)}")
        parts = new_count // len(masters)
        self.state["pieces"] = {str(m.uid): schema.halve(m.slots, parts) for m in masters}
        self.state["replication"] = bool(bdb.replication)

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
                children.setdefault(m_uid, []).append(shard.uid)
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
        if all(shards[u].role == "master" for us in children.values() for u in us):
            return
        pairs = [(shards[int(m)], shards[u]) for m, us in children.items() for u in us]

        async def split_masters() -> list[schema.Shard]:
            for m_uid, pieces in self.state["pieces"].items():
                master = shards[int(m_uid)]
                master.slots = pieces[0]
                await schema.put_shard(self.redis, master)
                for uid in children[m_uid]:
                    schema.set_fields(shards[uid], role="master", master_uid=None)
                    await schema.put_shard(self.redis, shards[uid])
            return await self.masters_of(self.bdb_uid)

        await self.switch(self.bdb_uid, pairs, split_masters)
        # The replicas of a split master keep only its remaining slots.
        for s in (await self.shards_of(self.bdb_uid)).values():
            if s.role == "replica" and s.master_uid is not None:
                m = shards.get(s.master_uid)
                if m and s.slots != m.slots:
                    s.slots = m.slots
                    await schema.put_shard(self.redis, s)

    async def clean(self) -> None:
        for shard in await self.masters_of(self.bdb_uid):
            await drop_foreign_keys(await self.address(shard), shard.slots)

    async def replicate(self) -> None:
        bdb = await self.bdb()
        bdb.shards_count = len(await self.masters_of(self.bdb_uid))
        await schema.put_bdb(self.redis, bdb)
        if not self.state["replication"]:
            return
        added = await self.add_missing_replicas(strict=False)
        await self.wait_running([s.uid for s in added])


async def drop_foreign_keys(target: ShardLink, slots, batch: int = 500) -> int:
    """UNLINK every key of the shard whose slot is outside `slots`; returns how many."""
    owned = bytearray(16384)
    for a, b in slots:
        owned[a:b + 1] = b"\x01" * (b - a + 1)
    dropped = 0
    async with await target.connect(timeout=10.0) as conn:
        cursor = b"0"
        while True:
            cursor, keys = await conn.execute("SCAN", cursor, "COUNT", batch)
            foreign = [k for k in keys if not owned[slot_of(k)]]
            if foreign:
                await conn.execute("UNLINK", *foreign)
                dropped += len(foreign)
            if cursor == b"0":
                return dropped
