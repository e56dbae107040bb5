"""bdb_reshard: more shards, by splitting each master's slots: replicate, then split (see
control/machines/__init__.py), then each shard drops the keys of slots it gave away.

What a reshard that stops half-way leaves, step by step (the database's lock is held
throughout, so no failover or migration of it runs meanwhile and its masters stay put):

    plan       the pieces each master's slots are cut into, the masters' slots and the shard
               count before: nothing changed yet.
    copy       the new shards' uids are recorded first, then their records are written (each a
               replica of the master it splits, holding only its piece's slots: no failover
               ever promotes it, see cluster_view.serving_replica), then they sync. Undone by
               deleting the records: nothing was ever routed to them. A master reported
               failed meanwhile fails the reshard at once: its failover waits for the lock.
    split      the paused switch: every proxy paused on the old map, each new shard caught up
               and promoted. Up to here undone exactly: the old map published again unpaused
               (the masters' records were never touched), the new shards deleted; the masters
               have every write, none was sent during the pause. Then `committed` is recorded,
               and only then the new layout is written (the split masters' and their replicas'
               slots, the new masters, the shard count: one write) and its map published. From
               `committed` on the reshard only goes forward: a proxy may have acknowledged
               writes on a new master. A new cluster master resumes the step by writing the
               same layout and map again (every write is the same whatever ran before).
    clean      each master drops the keys of slots it no longer owns (again from the start; a
               master that does not answer is left for the next reshard's clean).
    replicate  a replica for each new master (replication on), as bdb_create places them.

A failure before `committed` is rolled back (finish); after it the new layout stands and the
map is only made sure to be unpaused. Either way every map published passes the check that
each slot has exactly one owner, and the shard count matches the masters.
"""

from __future__ import annotations

import logging
import os
import signal

from dmc._fastpath import slot_of

from control import ccs, schema
from control.cluster_view import node_load, pick_node
from control.machines.base import ActionFailed, Machine
from control.redis_client import RedisUnavailable, ReplyError
from control.shard_link import ShardLink

log = logging.getLogger("cnm_exec")

# Test hook: with DMC_TEST_STOP_AFTER_RESHARD_COMMIT=<database name> in cnm_exec's environment,
# cnm_exec stops itself (SIGSTOP) once a reshard of that database has recorded `committed`, before
# the new layout is written: the test kills it there and the restarted one must go forward.
STOP_AFTER_COMMIT = os.environ.get("DMC_TEST_STOP_AFTER_RESHARD_COMMIT", "")


class BdbReshard(Machine):
    """params.shards_count: a multiple of the current count; each master's slots are split."""
    steps = (("plan", 10), ("copy", 40), ("split", 70), ("clean", 85), ("replicate", 100))

    async def plan(self) -> None:
        if "pieces" in self.state:
            return
        bdb = await self.bdb()
        new_count = int(self.action.params["shards_count"])
        masters = sorted(await self.masters_of(self.bdb_uid), key=lambda s: s.slots[0][0])
        if new_count % len(masters):
            raise ActionFailed(f"{new_count} shards is not a multiple of {len(masters)}")
        if down := await self.masters_down():
            raise ActionFailed(f"master shards {down} are down")
        parts = new_count // len(masters)
        self.state["pieces"] = {str(m.uid): schema.halve(m.slots, parts) for m in masters}
        self.state["before"] = {str(m.uid): m.slots for m in masters}
        self.state["shards_count"] = bdb.shards_count
        self.state["replication"] = bool(bdb.replication)

    def _children(self) -> list[int]:
        return [u for us in self.state.get("children", {}).values() for u in us]

    async def copy(self) -> None:
        if "children" not in self.state:
            self.state["children"] = {
                m_uid: [await schema.next_uid(self.redis, "shard") for _ in pieces[1:]]
                for m_uid, pieces in self.state["pieces"].items()}
            await self.save()       # before the shards exist: a rollback finds every one
        shards = await schema.shards(self.redis)
        up = await self.up()
        load = node_load(shards)
        for m_uid, uids in self.state["children"].items():
            for uid, piece in zip(uids, self.state["pieces"][m_uid][1:]):
                if uid in shards:
                    continue        # written before a master change
                node = pick_node(up, set(), load)
                if node is None:
                    raise ActionFailed("no node is up to place shards on")
                await self.new_shard(self.bdb_uid, node, "replica", piece, int(m_uid), uid=uid)
        await self.unless_a_master_dies("reshard", self._copies_synced)

    async def _copies_synced(self) -> None:
        await self.wait_running(self._children())
        shards = await schema.shards(self.redis)
        for uid in self._children():
            await self.wait_synced(shards[uid])

    async def split(self) -> None:
        if self.state.get("committed"):
            await self.roll_forward()
            return
        shards = await schema.shards(self.redis)
        try:
            pairs = [(shards[int(m)], shards[u]) for m, us in self.state["children"].items()
                     for u in us]
        except KeyError as exc:
            raise ActionFailed(f"shard {exc} of the reshard is gone") from None

        async def commit() -> list[schema.Shard]:
            self.state["committed"] = True
            await self.save()       # the point of no return, recorded before its effect
            if STOP_AFTER_COMMIT and STOP_AFTER_COMMIT == (await self.bdb()).name:
                os.kill(os.getpid(), signal.SIGSTOP)
            return await self.write_layout()

        await self.switch(self.bdb_uid, pairs, commit)

    async def write_layout(self) -> list[schema.Shard]:
        """The records after the split, in one write (the same whenever it runs): each split
        master and its replicas keep their first piece, the new shards are masters of theirs;
        the database's shard count is the masters'. Returns the masters."""
        shards = await schema.shards(self.redis)
        children = set(self._children())
        changed = []
        for m_uid, pieces in self.state["pieces"].items():
            master = shards[int(m_uid)]
            for s in shards.values():
                if s.uid == master.uid or (s.role == "replica" and s.master_uid == master.uid
                                           and s.uid not in children):
                    s.slots = pieces[0]
                    changed.append(s)
            for uid in self.state["children"][m_uid]:
                schema.set_fields(shards[uid], role="master", master_uid=None)
                changed.append(shards[uid])
        await schema.put_shards(self.redis, *changed)
        masters = await self.masters_of(self.bdb_uid)
        bdb = await self.bdb()
        if bdb.shards_count != len(masters):
            bdb.shards_count = len(masters)
            await schema.put_bdb(self.redis, bdb)
        return masters

    async def roll_forward(self) -> None:
        """The split resumed past `committed` (by a new cluster master, or after CCS failed a
        write): the same layout written again, the new shards told again they are masters (a
        no-op if they are), its map published unpaused."""
        masters = await self.write_layout()
        shards = await schema.shards(self.redis)
        for uid in self._children():
            try:
                async with await (await self.address(shards[uid])).connect() as conn:
                    await conn.execute("REPLICAOF", "NO", "ONE")
            except (RedisUnavailable, ReplyError) as exc:
                log.warning("reshard: new master shard %d not told (%s): redis_mgr will", uid,
                            exc)
        await self.serve(masters)

    async def serve(self, masters: list[schema.Shard]) -> None:
        """Publish the map of `masters` unpaused, unless it is the one served already."""
        current = await self.current_map(self.bdb_uid)
        layout = sorted((s.uid, s.slots) for s in masters)
        if current is not None and not current.paused and \
                sorted((s.uid, s.slots) for s in current.shards) == layout:
            return
        version = await self.publish_map(self.bdb_uid, masters, paused=False)
        await self.wait_acks(self.bdb_uid, version, required=False)

    async def clean(self) -> None:
        """Past `committed` nothing may stop the reshard: a master that does not answer now
        (down, its failover held off by this action's lock) keeps its stale copies of the
        slots it gave away -- never routed to; the next reshard's clean drops them -- and the
        new masters still get their replicas."""
        for shard in await self.masters_of(self.bdb_uid):
            target = await self.address(shard)
            try:
                await drop_foreign_keys(target, shard.slots)
            except (RedisUnavailable, ReplyError) as exc:
                log.warning("reshard of database %d: shard %d not cleaned (%s)", self.bdb_uid,
                            shard.uid, exc)

    async def replicate(self) -> None:
        if not self.state["replication"]:
            return
        added = await self.add_missing_replicas(strict=False)
        await self.wait_running([s.uid for s in added])

    async def finish(self, ok: bool) -> None:
        """A failure before `committed` is undone exactly: the new shards' records deleted
        (their nodes' redis_mgr stops them), the masters' slots and the shard count as they
        were, the old map served unpaused. After it the new layout stands: its map is served
        unpaused (a failure in the middle of the switch may have left it paused)."""
        if ok:
            return
        if self.state.get("committed"):
            await self.serve(await self.write_layout())
            if self.state["replication"]:
                await self.add_missing_replicas(strict=False)
            return
        if "pieces" not in self.state:
            return          # failed in plan: nothing was changed
        shards = await schema.shards(self.redis)
        gone = [u for u in self._children() if u in shards]
        if gone:
            await ccs.delete(self.redis, schema.SHARDS, *gone)
        restored = []
        for m_uid, slots in self.state["before"].items():
            master = shards.get(int(m_uid))
            if master is not None and master.slots != slots:
                master.slots = slots
                restored.append(master)
        if restored:
            await schema.put_shards(self.redis, *restored)
        bdb = await self.bdb()
        if bdb.shards_count != self.state["shards_count"]:
            bdb.shards_count = self.state["shards_count"]
            await schema.put_bdb(self.redis, bdb)
        await self.serve(await self.masters_of(self.bdb_uid))
        log.warning("reshard of database %d rolled back: %d new shards removed", self.bdb_uid,
                    len(gone))


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
