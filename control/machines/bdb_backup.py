"""bdb_backup: an RDB of every slot range (from the replicas when they have caught up) and a
manifest, in a folder (control/backup_mgr.py)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import trio

from control import backup_mgr, schema
from control.machines.base import (BACKUP_CATCH_UP, ActionFailed, Machine,
                                   replication_info)
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("cnm_exec")


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
        if bdb.status != "active":
            raise ActionFailed(f"database {self.bdb_uid} is {bdb.status}, not active")
        location = self.action.params.get("location") or \
            backup_mgr.location_of(bdb, self.exec.config.dir)
        now = time.time()
        backup_id = backup_mgr.new_backup_id(now)
        masters = sorted(await self.masters_of(self.bdb_uid), key=lambda s: s.slots[0][0])
        self.state.update(backup_id=backup_id, time=now, name=bdb.name, files={},
                          folder=str(backup_mgr.bdb_folder(Path(location), bdb) / backup_id),
                          ranges=[m.slots for m in masters])

    async def fetch(self) -> None:
        ranges = self.state["ranges"]
        for i, slots in enumerate(ranges, start=1):
            if str(i) in self.state["files"]:
                continue
            self.state["files"][str(i)] = await self.unless_a_master_dies(
                "backup", self._fetch_one, i, slots)
            self.action.progress = 5 + 85 * len(self.state["files"]) // len(ranges)
            await self.save()

    async def _fetch_one(self, i: int, slots) -> dict:
        """shard-<i>.rdb, the RDB of `slots`, in the partial folder: its manifest entry."""
        master, source = await self._source(slots)
        address = await self.address(source)
        dest = backup_mgr.partial_folder(Path(self.state["folder"])) / f"shard-{i}.rdb"
        try:
            got = await backup_mgr.fetch_rdb(address, dest)
        except backup_mgr.BackupError as exc:
            raise ActionFailed(f"shard {source.uid}: {exc}") from None
        self.state.setdefault("redis_version", await backup_mgr.redis_version(address))
        return {"slots": slots, "file": dest.name, **got, "source_shard_uid": source.uid,
                "role": source.role, "master_shard_uid": master.uid}

    async def _source(self, slots) -> tuple[schema.Shard, schema.Shard]:
        """The master that holds `slots`, and where to read them: a replica on a live node that
        has caught up with what the master had when asked (so the backup holds every write
        acknowledged before it started), else the master itself."""
        shards = await self.shards_of(self.bdb_uid)
        master = next((s for s in shards.values() if s.role == "master"
                       and s.slots == slots), None)
        if master is None:
            raise ActionFailed(f"no master shard holds slots {slots} any more")
        view = await self.view()
        for replica in shards.values():
            if replica.master_uid == master.uid and replica.role == "replica" \
                    and (view.states.get(replica.uid) or {}).get("status") == "running" \
                    and not view.failed(replica) and await self._caught_up(master, replica):
                return master, replica
        return master, master

    async def _caught_up(self, master: schema.Shard, replica: schema.Shard) -> bool:
        """Whether the replica reaches the master's current replication offset within
        BACKUP_CATCH_UP (a replica just synced gets its first writes only after about a
        second)."""
        try:
            target = int((await replication_info(await self.address(master)))
                         .get("master_repl_offset", 0))
            address = await self.address(replica)
            deadline = trio.current_time() + BACKUP_CATCH_UP
            while True:
                info = await replication_info(address)
                if info.get("master_link_status") == "up" and \
                        info.get("master_sync_in_progress") == "0" and \
                        int(info.get("slave_repl_offset", -1)) >= target:
                    return True
                if trio.current_time() > deadline:
                    log.warning("backup of database %d: replica shard %d is behind, reading "
                                "master shard %d", self.bdb_uid, replica.uid, master.uid)
                    return False
                await trio.sleep(0.02)
        except (RedisUnavailable, ReplyError):
            return False

    async def seal(self) -> None:
        final = Path(self.state["folder"])
        files = [self.state["files"][str(i)] for i in range(1, len(self.state["ranges"]) + 1)]
        manifest = {"backup_id": self.state["backup_id"], "bdb_uid": self.bdb_uid,
                    "name": self.state["name"], "time": self.state["time"],
                    "redis_version": self.state.get("redis_version"),
                    "keys": sum(f["keys"] for f in files), "shards": files,
                    "scheduled": bool(self.action.params.get("scheduled")),
                    "action_uid": self.action.action_uid}
        if not (final / backup_mgr.MANIFEST).exists():
            await trio.to_thread.run_sync(backup_mgr.seal, backup_mgr.partial_folder(final),
                                          final, manifest)
        self.action.result = {"backup_id": manifest["backup_id"], "path": str(final),
                              "keys": manifest["keys"], "files": len(files)}

    async def finish(self, ok: bool) -> None:
        if not ok and "folder" in self.state:
            shutil.rmtree(backup_mgr.partial_folder(Path(self.state["folder"])),
                          ignore_errors=True)
        bdb = await schema.get_bdb(self.redis, self.bdb_uid)
        if bdb is None:
            return
        if ok:
            schema.set_fields(bdb, last_backup_time=self.state["time"], backup_status="succeeded",
                              last_backup_id=self.state["backup_id"], backup_failure_reason=None)
        else:
            schema.set_fields(bdb, backup_status="failed", backup_failure_reason=self.action.error)
        await schema.put_bdb(self.redis, bdb)
