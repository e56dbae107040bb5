"""backup_mgr: backups of databases as files in a folder, and RDB files loaded into a database.

A library, not a process of its own: cnm_exec's `bdb_backup` and `bdb_import` machines (on the
master node) call it to take and load backups, cnm_http calls it to list and show them. It never
writes CCS; the machines record what happened.

A backup is one RDB per slot range of the database (one per master shard of its map) and a
manifest, in the database's backup location (`backup_location`; by default the `backups` folder
beside the node folders, `<cluster folder>/backups`):

    <location>/<db name>-<uid>/<backup id>/shard-1.rdb ... shard-N.rdb
                                          manifest.json
    <location>/<db name>-<uid>/.<backup id>.partial/      while it is being written

The folder is renamed into place only once every file and the manifest are written and synced, so
a backup that is listed is complete. The location must be readable at the same path on every
node (on one machine it is; across machines it is a shared mount, as Redis Enterprise's
mount-point backups).

An RDB is fetched with the replication protocol (`redis-cli --rdb`, the RDB streamed over the
socket; the shards sync diskless), from the shard's replica when it has one running: a master
shard never writes a backup to disk, and does not even fork for it. Each RDB is checked with
`redis-check-rdb`, which also counts its keys.

Loading (a backup or a plain redis-server's RDB) goes through the database's own endpoint: a
temporary redis-server on 127.0.0.1 loads the file, then every key is copied with DUMP + PTTL
and `RESTORE ... REPLACE`, pipelined, so dmcproxy routes each key to its shard whatever the
shard count of the backup and of the database. Expiry times stay absolute (the RDB holds them
so); keys already expired are not loaded. Keys of a backup's RDB outside that file's slot ranges
(a shard's leftovers from a reshard) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from dmc._fastpath import slot_of

from control import schema
from control.redis_client import RedisUnavailable, ReplyError, connect, info
from control.shard_link import ShardLink
from dmc.processes import REDIS_SERVER, free_port

log = logging.getLogger("backup_mgr")

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
REDIS_CHECK_RDB = shutil.which("redis-check-rdb") or "/usr/bin/redis-check-rdb"
MANIFEST = "manifest.json"
RDB_MAGIC = b"REDIS"
BACKUP_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")   # 20250101-120000-1a2b: sorts by time
FETCH_TIMEOUT = 3600.0
LOAD_TIMEOUT = 600.0         # a temporary redis-server has this long to load its RDB
BATCH = 500                  # keys per SCAN / DUMP / RESTORE round trip


class BackupError(Exception):
    """A backup or an RDB file that cannot be made, found or loaded; the message says why."""


class NotFound(BackupError):
    """The file or folder named is not there."""


# ---- where backups are -----------------------------------------------------------------------

def default_location(node_dir: str | Path) -> Path:
    """`<cluster folder>/backups`: the folder beside the node folders."""
    return Path(node_dir).resolve().parent / "backups"


def location_of(bdb: schema.Bdb, node_dir: str | Path) -> Path:
    return Path(bdb.backup_location or default_location(node_dir))


def bdb_folder(location: Path, bdb: schema.Bdb) -> Path:
    return Path(location) / f"{bdb.name or 'bdb'}-{bdb.uid}"


def new_backup_id(now: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(2)


def partial_folder(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


# ---- listing ---------------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except FileNotFoundError:
        if not Path(folder).exists():
            raise NotFound(f"{folder} does not exist") from None
        raise BackupError(f"{folder} is not a backup (no {MANIFEST})") from None
    except NotADirectoryError:
        raise BackupError(f"{folder} is a file, not a backup's folder") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder / MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise BackupError(f"{folder / MANIFEST} is not a backup manifest")
    return {**manifest, "path": str(folder)}


def list_backups(location: Path, bdb_uid: int) -> list[dict]:
    """The complete backups of database `bdb_uid` in `location` (whatever its name was when
    each was taken), oldest first."""
    location = Path(location)
    found = []
    try:
        folders = [f for f in location.iterdir()
                   if f.is_dir() and f.name.rsplit("-", 1)[-1] == str(bdb_uid)]
    except FileNotFoundError:
        return []
    for folder in folders:
        for sub in folder.iterdir():
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            try:
                manifest = read_manifest(sub)
            except BackupError as exc:
                log.warning("skipped %s: %s", sub, exc)
                continue
            if manifest.get("bdb_uid") == bdb_uid:
                found.append(manifest)
    return sorted(found, key=lambda m: (m.get("time") or 0, m.get("backup_id") or ""))


def find_backup(location: Path, bdb_uid: int, backup_id: str) -> dict | None:
    if not BACKUP_ID.match(backup_id):
        return None
    return next((m for m in list_backups(location, bdb_uid) if m["backup_id"] == backup_id),
                None)


def check_rdb_file(path: Path) -> None:
    """BackupError unless `path` is a readable file that starts like an RDB."""
    path = Path(path)
    if not path.is_absolute():
        raise BackupError(f"{path} is not an absolute path")
    try:
        with open(path, "rb") as f:
            head = f.read(len(RDB_MAGIC))
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except IsADirectoryError:
        raise BackupError(f"{path} is a folder, not an RDB file") from None
    except OSError as exc:
        raise BackupError(f"{path} cannot be read: {exc.strerror}") from None
    if head != RDB_MAGIC:
        raise BackupError(f"{path} is not an RDB file (it does not start with REDIS)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(manifest: dict) -> list[dict]:
    """Every RDB of a backup, with its slots, once its size and sha256 are the manifest's:
    [{path, slots}]. BackupError for the first that is missing or changed."""
    folder = Path(manifest["path"])
    if manifest.get("status") != "complete":
        raise BackupError(f"backup {folder} is not complete")
    files = []
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        check_rdb_file(path)
        if path.stat().st_size != shard["bytes"] or sha256_of(path) != shard["sha256"]:
            raise BackupError(f"{path} is not the file the backup wrote (size or sha256 "
                              "differ)")
        files.append({"path": str(path), "slots": shard["slots"]})
    return files


# ---- taking a backup -------------------------------------------------------------------------

async def fetch_rdb(source: ShardLink, dest: Path) -> dict:
    """Stream the shard's RDB into `dest` through the replication protocol (redis-cli as the
    node's services reach the shard: shard_link); check it. Returns {bytes, sha256, keys}."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with trio.move_on_after(FETCH_TIMEOUT) as waited:
        done = await trio.run_process([REDIS_CLI, *source.cli_args(), "--rdb", str(dest)],
                                      capture_stdout=True, capture_stderr=True, check=False)
    if waited.cancelled_caught:
        raise RedisUnavailable(f"redis-cli --rdb from {source}: no RDB within "
                               f"{FETCH_TIMEOUT:.0f}s")
    if done.returncode != 0 or not dest.exists():
        why = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise RedisUnavailable(f"redis-cli --rdb from {source} failed: "
                               f"{why[-1] if why else done.returncode}")
    keys = await count_keys(dest)
    size = dest.stat().st_size
    digest = await trio.to_thread.run_sync(_synced_sha256, dest)
    return {"bytes": size, "sha256": digest, "keys": keys}


def _synced_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return sha256_of(path)


async def count_keys(path: Path) -> int:
    """Keys a redis-server would load from the RDB (redis-check-rdb reads it whole, checksum
    included); BackupError if the file is damaged."""
    done = await trio.run_process([REDIS_CHECK_RDB, str(path)], capture_stdout=True,
                                  capture_stderr=True, check=False)
    text = (done.stdout + done.stderr).decode(errors="replace")
    read = re.search(r"\[info\] (\d+) keys read", text)
    if done.returncode != 0 or read is None:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise BackupError(f"{path.name} is not a sound RDB ({last[0]})")
    expired = re.search(r"\[info\] (\d+) already expired", text)
    return int(read.group(1)) - (int(expired.group(1)) if expired else 0)


async def redis_version(source: ShardLink) -> str | None:
    async with await source.connect(timeout=5.0) as conn:
        return (await info(conn, "server")).get("redis_version", "").strip() or None


def seal(partial: Path, final: Path, manifest: dict) -> None:
    """Write the manifest and move the complete backup into place (atomic rename)."""
    text = json.dumps({**manifest, "status": "complete"}, indent=2)
    tmp = partial / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, partial / MANIFEST)
    _fsync_dir(partial)
    os.replace(partial, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- loading an RDB into a database ----------------------------------------------------------

Progress = Callable[[int, int], Awaitable[None]]


async def load_rdb(rdb: Path, target: tuple[str, int], *, password: str | None = None,
                   slots: list[list[int]] | None = None, work_dir: Path,
                   progress: Progress | None = None) -> int:
    """Copy every key of the RDB file into the database whose endpoint is `target` (with
    `slots`, only keys of those slots); returns how many keys were written. A temporary
    redis-server in `work_dir` loads the file and is stopped afterwards, also on error."""
    work_dir.mkdir(parents=True, exist_ok=True)
    link = work_dir / "load.rdb"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(rdb).resolve())          # never written: the server saves nothing
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work_dir), "--dbfilename", link.name,
         "--logfile", str(work_dir / "redis.log"), "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        source = await _loaded(port, proc, work_dir)
        async with source, await connect(*target, timeout=30.0, password=password) as dest:
            return await _copy_keys(source, dest, slots, progress)
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            shutil.rmtree(work_dir, ignore_errors=True)


async def _loaded(port: int, proc, work_dir: Path):
    """A connection to the temporary server once it has loaded its RDB."""
    deadline = trio.current_time() + LOAD_TIMEOUT
    while True:
        if proc.poll() is not None:
            lines = (work_dir / "redis.log").read_text(errors="replace").splitlines()
            raise BackupError("redis-server could not load the RDB: "
                              + (lines[-1] if lines else f"exit {proc.returncode}"))
        try:
            conn = await connect("127.0.0.1", port, timeout=30.0)
            try:
                if (await info(conn, "persistence")).get("loading") == "0":
                    return conn
            except (RedisUnavailable, ReplyError):
                pass
            await conn.aclose()
        except RedisUnavailable:
            pass
        if trio.current_time() > deadline:
            raise BackupError(f"redis-server did not load the RDB within {LOAD_TIMEOUT:.0f}s")
        await trio.sleep(0.02)


async def _copy_keys(source, dest, slots, progress: Progress | None) -> int:
    owned = None
    if slots is not None:
        owned = bytearray(16384)
        for a, b in slots:
            owned[a:b + 1] = b"\x01" * (b - a + 1)
    total = int(await source.execute("DBSIZE"))
    seen = written = 0
    cursor = b"0"
    while True:
        cursor, keys = await source.execute("SCAN", cursor, "COUNT", BATCH)
        seen += len(keys)
        if owned is not None:
            keys = [k for k in keys if owned[slot_of(k)]]
        if keys:
            replies = await source.pipeline([c for k in keys for c in (("PTTL", k),
                                                                        ("DUMP", k))])
            restores = []
            for key, ttl, payload in zip(keys, replies[::2], replies[1::2]):
                if payload is None or isinstance(payload, ReplyError) or ttl == -2:
                    continue            # expired meanwhile
                # PTTL 0 is "expires now", but RESTORE's 0 is "never": 1 ms is the closest
                restores.append(("RESTORE", key, 0 if ttl == -1 else max(ttl, 1), payload,
                                 "REPLACE"))
            for (_, key, *_), reply in zip(restores, await dest.pipeline(restores)):
                if isinstance(reply, ReplyError):
                    raise BackupError(f"RESTORE {key.decode(errors='replace')!r} was refused: "
                                      f"{reply}")
            written += len(restores)
        if progress is not None:
            await progress(min(seen, total), total)
        if cursor == b"0":
            return written
