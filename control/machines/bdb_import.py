"""bdb_import: load a backup, or any RDB file, into a database through its endpoint."""

from __future__ import annotations

from pathlib import Path

import trio

from control import backup_mgr
from control.machines.base import ActionFailed, Machine
from control.redis_client import connect
from control.sealing import reveal_text


class BdbImport(Machine):
    """params: backup_path (a backup's folder) or rdb_path (an RDB file: a backup's, or a
    plain redis-server's); flush: empty the database first. Backup files are checked against
    their manifest's sha256 first. Every key is written through the database's endpoint on
    this node (control/backup_mgr.py), so a backup of any shard count loads into a database of
    any other; RESTORE ... REPLACE makes a file loaded twice (after a master change) harmless."""
    steps = (("check", 10), ("flush", 15), ("load", 100))

    def password(self, bdb) -> str | None:
        """The database password (sealed in CCS)."""
        return reveal_text(self.exec.config.dir, bdb.authentication_redis_pass) \
            or None

    async def check(self) -> None:
        bdb = await self.bdb()
        if bdb.status != "active":
            raise ActionFailed(f"database {self.bdb_uid} is {bdb.status}, not active")
        if "files" in self.state:
            return
        params = self.action.params
        try:
            if params.get("backup_path"):
                manifest = await trio.to_thread.run_sync(backup_mgr.read_manifest,
                                                         Path(params["backup_path"]))
                files = await trio.to_thread.run_sync(backup_mgr.verify, manifest)
            else:
                await trio.to_thread.run_sync(backup_mgr.check_rdb_file,
                                              Path(params["rdb_path"]))
                files = [{"path": params["rdb_path"], "slots": None}]
        except backup_mgr.BackupError as exc:
            raise ActionFailed(str(exc)) from None
        self.state.update(files=files, loaded=0, keys=0)

    async def endpoint(self):
        bdb = await self.bdb()
        return await connect(self.exec.config.address, bdb.port, timeout=30.0,
                             password=self.password(bdb))

    async def flush(self) -> None:
        if self.action.params.get("flush"):
            async with await self.endpoint() as conn:
                await conn.execute("FLUSHALL")

    async def load(self) -> None:
        bdb = await self.bdb()
        files = self.state["files"]
        saved = trio.current_time()

        async def progress(done: int, total: int) -> None:
            nonlocal saved
            part = (self.state["loaded"] + (done / total if total else 1)) / len(files)
            self.action.progress = 15 + int(84 * part)
            if trio.current_time() - saved > 0.5:
                saved = trio.current_time()
                await self.save()

        for i in range(self.state["loaded"], len(files)):
            try:
                keys = await backup_mgr.load_rdb(
                    Path(files[i]["path"]), (self.exec.config.address, bdb.port),
                    password=self.password(bdb),
                    slots=files[i]["slots"], progress=progress,
                    work_dir=self.exec.config.dir / "tmp" / f"import-{self.action.action_uid}")
            except backup_mgr.BackupError as exc:
                raise ActionFailed(str(exc)) from None
            self.state["loaded"] = i + 1
            self.state["keys"] += keys
            self.action.result = {"keys": self.state["keys"], "files": i + 1}
            await self.save()
