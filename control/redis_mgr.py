"""redis_mgr: the node's shard processes, as CCS asks for them.

It reconciles, on every change notice and every POLL_EVERY seconds:

- every shard record in CCS placed on this node gets a `redis-server` (its folder is
  `shards/<uid>/` in the node's folder: redis.conf, redis.pid, redis.log, data), bound to the
  node's address on the shard's port, with `maxmemory` = the database's memory size over its
  shard count and its eviction policy; a change of either is applied with CONFIG SET;
- a replica is pointed at its master shard's address (REPLICAOF), a master replicates nobody;
- with the database's data_internode_encryption (DPINE) on, each shard also serves its
  `tls-port` (the shard record's, beside its port) with the node's `cp` certificate and
  `tls-auth-clients yes` (a client must show a certificate the cluster CA signed), and a
  replica follows its master's tls-port with `tls-replication yes`; switched on or off with
  CONFIG SET, no restart. Its plain port is then closed (`port 0`): every shard also has a
  unix socket in its folder (mode 0700) for the node's own services, and the other nodes reach
  it over its tls-port only (control/shard_link.py says why and how each service connects);
- every shard of a database gets the ACL users its `roles_permissions` give (control/access.py
  `database_acl`: the users of each role, with the password hash and the rules of its
  redis_acl), set with ACL SETUSER on masters and replicas alike (Redis does not replicate
  ACLs), so `AUTH name password` through the proxy is checked by the shard;
- a shard process that is no longer in CCS is stopped and its folder removed;
- a replica is reported `synced` once it holds a copy of its master's data: it completed a
  sync (INFO replication: master_link_status up, no sync in progress), remembered by the file
  `synced` in its folder, which a restart keeps only where the database persists on replicas
  (its data came back from its own disk). A failover promotes only a synced replica
  (cluster_view.serving_replica): a replica just re-created elsewhere is empty until then.

It notices a shard process that died within POLL_EVERY (it has to, to start it again) and
reports it in CCS's `shard_state` hash. A dead replica, or a dead master of a database without
replication, is started again at once; a dead master with a replica is left to the master
node's node_wd, which has cnm_exec fail over to the replica and then asks for the old master back
as a replica (or sets `restart_after` on the record when there is nothing to fail over to).
Whether a running shard answers is node_wd's probe, not redis_mgr's (control/node_wd.py).

Shard processes run in sessions of their own, so restarting redis_mgr does not stop them: a new
redis_mgr adopts them through their pid files. `dmc cluster stop` stops them through the same
files. Writes go to the CCS master through the node's forwarded port; a node whose CCS copy is not
in sync with the master (or has not yet seen a shard's creation) never stops a shard.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import trio

from control import access, ccs, schema, shard_link
from control.shard_link import dpine
from control.node import NodeConfig, atomic_write, service_command
from control.redis_client import RedisUnavailable, ReplyError, info
from control.tls import ca_file, cert_file, files_stamp, key_file
from dmc.processes import REDIS_SERVER, pid_alive, processes_under, stop_redis

log = logging.getLogger("redis_mgr")
SYNCED = "synced"     # in a replica's folder: it holds a copy of its master's data

POLL_EVERY = 0.1          # how often shard processes are checked for life
RECONCILE_EVERY = 1.0     # a full pass even without change notices
START_TIMEOUT = 10.0


def shard_conf(config: NodeConfig, shard: schema.Shard, bdb: schema.Bdb,
               tls_policy: dict | None = None, alone: bool = False) -> str:
    folder = config.shards_dir / str(shard.uid)
    lines = [
        f"bind {config.address}",
        f"port {0 if dpine(shard, bdb) else shard.port}",
        f"unixsocket {shard_link.socket_path(config.shards_dir, shard.uid)}",
        "unixsocketperm 700",
        f"dir {folder}",
        f"pidfile {folder / 'redis.pid'}",
        "daemonize no",
        "protected-mode no",
        # Replication streams the RDB over the socket, and the replica loads it from the socket
        # while it still serves its old data (swapdb): no shard touches the disk to sync.
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-diskless-load swapdb",
        "replica-read-only yes",
        f"replica-announce-ip {config.address}",
        f"maxmemory {maxmemory(bdb)}",
        f"maxmemory-policy {bdb.eviction_policy}",
    ]
    lines += [f'{name} "{value}"' for name, value in persistence(shard, bdb, alone).items()]
    lines += [f'{name} "{value}"' for name, value in
              data_tls(config, shard, bdb, True, tls_policy).items() if name != "port"]
    return "\n".join(lines) + "\n"


def persistence(shard: schema.Shard, bdb: schema.Bdb, alone: bool = False) -> dict[str, str]:
    """The persistence settings of a shard: with replication, only replicas write to disk (a
    master does no disk I/O, so disk latency never slows the database); without it, the master
    does. A master `alone` -- no replica of it is synced (it was just promoted, or its replica
    is being re-created) and it holds the disk copy (it wrote as a replica) -- keeps writing
    until one is: else the database's only disk copy would stop where the promotion stopped it,
    and the master, dying then, would come back empty (a chaos run lost a durable database's
    acknowledged writes so: promoted while its replica was re-created elsewhere, then killed).
    Applied with CONFIG SET when the policy, the shard's role or `alone` changes."""
    writer = schema.persists(bdb, shard.role) or \
        (alone and shard.role == "master" and schema.persists(bdb, "replica"))
    aof = writer and bdb.data_persistence == "aof"
    snapshot = writer and bdb.data_persistence == "snapshot"
    rules = bdb.snapshot_policy
    return {
        "appendonly": "yes" if aof else "no",
        "appendfsync": "always" if bdb.aof_policy == "appendfsync-always" else "everysec",
        "save": " ".join(f"{r['secs']} {r['writes']}" for r in rules) if snapshot else "",
    }


def data_tls(config: NodeConfig, shard: schema.Shard, bdb: schema.Bdb,
             has_socket: bool | None = None, tls_policy: dict | None = None) -> dict[str, str]:
    """The shard's TLS settings (DPINE): its tls-port with the node's `cp` certificate, client
    certificates required, replication over TLS, the cluster's min_data_TLS_version and
    ciphers (`tls_policy`, schema.data_tls_policy), and no plain TCP port if it has its unix
    socket (`has_socket`, None: look; one started before shards had one keeps its port, the
    node's services' only way in); off: its plain port, no tls-port, plain replication."""
    policy = tls_policy or schema.data_tls_policy({})
    if not dpine(shard, bdb):
        return {"port": str(shard.port), "tls-port": "0", "tls-replication": "no"}
    if has_socket is None:
        has_socket = shard_link.socket_path(config.shards_dir, shard.uid).exists()
    return {"port": "0" if has_socket else str(shard.port),
            "tls-cert-file": str(cert_file(config.dir, "cp")),
            "tls-key-file": str(key_file(config.dir, "cp")),
            "tls-ca-cert-file": str(ca_file(config.dir)), "tls-auth-clients": "yes",
            "tls-port": str(shard.tls_port), "tls-replication": "yes",
            "tls-protocols": "TLSv1.3" if policy["tls_min_version"] == "1.3"
            else "TLSv1.2 TLSv1.3",
            "tls-ciphers": policy["tls_ciphers"], "tls-ciphersuites": policy["tls_ciphersuites"]}


def masters_alone(records: dict[int, schema.Shard], states: dict) -> set[int]:
    """The master shards none of whose replicas runs synced (redis_mgr's `synced`; a state
    without it is a master's, from before its demotion: not synced yet)."""
    covered = {r.master_uid for r in records.values() if r.role == "replica"
               and (states.get(r.uid) or {}).get("status") == "running"
               and (states.get(r.uid) or {}).get("synced", False)}
    return {u for u, s in records.items() if s.role == "master" and u not in covered}


def maxmemory(bdb: schema.Bdb) -> int:
    return max(1 << 20, int(bdb.memory_size) // max(1, int(bdb.shards_count)))


def wanted(config: NodeConfig, shard: schema.Shard, bdb: schema.Bdb,
           master: tuple[str, int] | None, acl: dict[str, list[str]] | None = None,
           tls_policy: dict | None = None, alone: bool = False) -> dict:
    """What redis_mgr keeps applied to a running shard; `acl`: its ACL users
    (access.database_acl); `alone`: a master without a synced replica (persistence)."""
    tls = data_tls(config, shard, bdb, tls_policy=tls_policy)
    return {"master": master, "maxmemory": maxmemory(bdb), "policy": bdb.eviction_policy,
            "persistence": persistence(shard, bdb, alone), "tls": tls,
            # (a renewed certificate is loaded again: setting tls-cert-file reloads it)
            "tls_files": files_stamp(v for k, v in sorted(tls.items()) if k.endswith("-file")),
            "acl": acl or {}}


async def apply_acl(conn, folder, acl: dict[str, list[str]]) -> None:
    """Give the shard exactly the ACL users the control plane manages for its database: each
    one set anew (`reset`, then its password hash and rules), and the ones it gave before and
    no longer wants deleted. Users made through the endpoint with ACL SETUSER are left alone:
    the names this manages are kept in the shard's folder (acl_users.json), beside its data."""
    record = folder / "acl_users.json"
    try:
        before = set(json.loads(record.read_text()))
    except (OSError, ValueError):
        before = set()
    gone = sorted(before - set(acl))
    if gone:
        await conn.execute("ACL", "DELUSER", *gone)
    for name, args in sorted(acl.items()):
        await conn.execute("ACL", "SETUSER", name, *args)
    atomic_write(record, json.dumps(sorted(acl)))
    if gone or acl:
        log.info("shard %s: ACL users %s%s", folder.name, ", ".join(sorted(acl)) or "none",
                 f" (deleted {', '.join(gone)})" if gone else "")


class Shard:
    """A shard process this node runs (started here, or adopted from its pid file)."""

    def __init__(self, uid: int, folder, proc: subprocess.Popen | None = None):
        self.uid = uid
        self.folder = folder
        self.proc = proc
        self.pid = proc.pid if proc else read_pid(folder)
        self.applied: dict = {}        # what was last applied: role, master address, config
        self.synced = (folder / SYNCED).exists()    # a copy of its master's data (a replica)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return bool(self.pid) and pid_alive(self.pid)

    def stop(self) -> None:
        """Stopped and gone, busy or not (dmc.processes.stop_redis: SIGTERM, SCRIPT KILL /
        FUNCTION KILL, SHUTDOWN NOSAVE, SIGKILL after a grace period)."""
        if self.alive():
            host, port = conf_endpoint(self.folder)
            stop_redis(self.pid, host, port, proc=self.proc)
        elif self.proc is not None:
            self.proc.wait()


def conf_endpoint(folder) -> tuple[str | None, int | None]:
    """The bind address and port in the shard's redis.conf."""
    host = port = None
    try:
        for line in (folder / "redis.conf").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "bind":
                host = value.split()[0]
            elif key == "port":
                port = int(value)
    except (OSError, ValueError, IndexError):
        pass
    return host, port


def read_pid(folder) -> int | None:
    try:
        pid = int((folder / "redis.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


class RedisMgr:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.shards: dict[int, Shard] = {}
        self.reported: dict[int, dict] = {}      # shard uid -> the state last written to CCS
        self.access: tuple = ({}, {}, {})        # users, roles, redis_acls (access.py)
        self.tls_policy = schema.data_tls_policy({})   # the cluster's min_data_TLS_version ...
        self.alone: set[int] = set()             # masters without a synced replica (persistence)

    async def run(self) -> None:
        self.config.shards_dir.mkdir(parents=True, exist_ok=True)
        for folder in self.config.shards_dir.iterdir():
            if folder.name.isdigit() and read_pid(folder):
                self.shards[int(folder.name)] = Shard(int(folder.name), folder)
                log.info("adopted shard %s (pid %s)", folder.name, self.shards[int(folder.name)].pid)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.watch)
            nursery.start_soon(self._watch_processes)
            while True:
                try:
                    await self.reconcile()
                except (RedisUnavailable, ReplyError, OSError) as exc:
                    log.info("reconcile postponed: %s", exc)
                await self.session.wait_changed(RECONCILE_EVERY)

    async def _watch_processes(self) -> None:
        """The watchdog: a shard process that died is noticed within POLL_EVERY."""
        while True:
            await trio.sleep(POLL_EVERY)
            if any(not s.alive() for s in self.shards.values()):
                self.session.poke()

    # ---- the reconcile pass --------------------------------------------------------------

    async def reconcile(self) -> None:
        local = await self.session.local()
        if not await in_sync(local):
            return
        records = await schema.shards(local)
        bdbs = await schema.bdbs(local)
        nodes = await ccs.read_hash(local, ccs.NODES)
        states = await ccs.read_hash(local, schema.SHARD_STATE)
        self.access = (await access.users(local), await access.roles(local),
                       await access.redis_acls(local))
        self.tls_policy = schema.data_tls_policy(await schema.cluster_policy(local))
        self.alone = masters_alone(records, states)
        last_uid = int(await local.execute("HGET", schema.COUNTERS, "shard") or 0)
        mine = {uid: s for uid, s in records.items()
                if s.node_uid == self.config.uid and s.bdb_uid in bdbs}
        for uid, shard in mine.items():
            await self._ensure(shard, bdbs[shard.bdb_uid], records, nodes, states.get(uid))
        for uid in list(self.shards):
            if uid not in mine and uid <= last_uid:
                await self._remove(uid)
        for folder in self.config.shards_dir.iterdir():
            if folder.name.isdigit() and int(folder.name) not in mine \
                    and int(folder.name) not in self.shards and int(folder.name) <= last_uid:
                shutil.rmtree(folder, ignore_errors=True)

    async def _ensure(self, shard: schema.Shard, bdb: schema.Bdb,
                      records: dict[int, schema.Shard], nodes: dict,
                      state: dict | None) -> None:
        uid = shard.uid
        running = self.shards.get(uid)
        if running is not None and not running.alive():
            log.warning("shard %d (pid %s) died", uid, running.pid)
            self.shards.pop(uid)
            running = None
            await self._report(uid, "down", shard, since=time.time())
            state = self.reported[uid]
        if running is None and state is not None and state.get("status") == "running" \
                and state.get("node_uid") == self.config.uid:
            # It ran here before this redis_mgr (the node restarted, or crashed): it died too.
            await self._report(uid, "down", shard, since=time.time())
            state = self.reported[uid]
        if running is None:
            if not self._may_start(shard, bdb, state):
                return
            running = await trio.to_thread.run_sync(self._start, shard, bdb, records, nodes)
            if running is None:
                await self._report(uid, "error", shard, error="did not start")
                return
            self.shards[uid] = running
        await self._configure(running, shard, bdb, records, nodes)
        if shard.role == "replica" and not running.synced:
            await self._check_synced(running, shard)
        await self._report(uid, "running", shard, pid=running.pid,
                           **({"synced": running.synced} if shard.role == "replica" else {}))

    async def _check_synced(self, running: Shard, shard: schema.Shard) -> None:
        try:
            async with await shard_link.local_link(self.config, shard).connect() as conn:
                replication = await info(conn, "replication")
        except (RedisUnavailable, ReplyError):
            return
        if replication.get("master_link_status") == "up" and \
                replication.get("master_sync_in_progress") == "0":
            (running.folder / SYNCED).touch()
            running.synced = True
            log.info("replica shard %d synced with its master", shard.uid)

    def _may_start(self, shard: schema.Shard, bdb: schema.Bdb, state: dict | None) -> bool:
        """A master that died while it had a replica waits for cnm_exec's decision."""
        if state is None or state.get("status") != "down" or shard.role != "master":
            return True
        if not bdb.replication:
            return True
        return (shard.restart_after or 0) >= state.get("since", 0)

    def _start(self, shard: schema.Shard, bdb: schema.Bdb, records: dict[int, schema.Shard],
               nodes: dict) -> Shard | None:
        folder = self.config.shards_dir / str(shard.uid)
        folder.mkdir(parents=True, exist_ok=True)
        if not schema.persists(bdb, "replica"):
            (folder / SYNCED).unlink(missing_ok=True)    # a new process starts empty
        # A master that comes back alone loads its disk copy (and keeps writing it).
        alone = shard.uid in self.alone and any(
            (folder / name).exists() for name in ("appendonlydir", "dump.rdb"))
        conf = shard_conf(self.config, shard, bdb, self.tls_policy, alone)
        master = self._master_of(shard, bdb, records, nodes)
        if master:
            conf += f"replicaof {master[0]} {master[1]}\n"
        (folder / "redis.conf").write_text(conf)
        with open(folder / "redis.log", "ab") as out:
            proc = subprocess.Popen([REDIS_SERVER, str(folder / "redis.conf")], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started = Shard(shard.uid, folder, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and started.alive():
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(0.2)
                    probe.connect(str(shard_link.socket_path(self.config.shards_dir, shard.uid)))
                    log.info("started shard %d on port %d (pid %d)", shard.uid, shard.port,
                             proc.pid)
                    # a new process has no ACL users yet: _configure gives them
                    started.applied = {**wanted(self.config, shard, bdb, master,
                                                tls_policy=self.tls_policy, alone=alone),
                                   "acl": None}
                    return started
            except OSError:
                time.sleep(0.02)
        started.stop()
        return None

    def _master_of(self, shard: schema.Shard, bdb: schema.Bdb, records: dict[int, schema.Shard],
                   nodes: dict) -> tuple[str, int] | None:
        """Where a replica replicates from: its master's port, or its tls-port with DPINE."""
        if shard.role != "replica":
            return None
        master = records.get(shard.master_uid)
        if master is None or master.node_uid not in nodes:
            return None
        return nodes[master.node_uid]["address"], \
            master.tls_port if dpine(master, bdb) and dpine(shard, bdb) else master.port

    async def _configure(self, running: Shard, shard: schema.Shard, bdb: schema.Bdb,
                         records: dict[int, schema.Shard], nodes: dict) -> None:
        # Alone, it keeps writing if it writes now (never starts: a new master has no copy).
        writing = running.applied.get("persistence") or {}
        alone = shard.uid in self.alone and \
            (writing.get("appendonly") == "yes" or bool(writing.get("save")))
        want = wanted(self.config, shard, bdb, self._master_of(shard, bdb, records, nodes),
                      access.database_acl(bdb, *self.access), self.tls_policy, alone)
        if running.applied == want:
            return
        async with await shard_link.local_link(self.config, shard).connect() as conn:
            if (want["tls"], want["tls_files"]) != \
                    (running.applied.get("tls"), running.applied.get("tls_files")):
                # Before REPLICAOF: a replica of a TLS master connects with tls-replication.
                await conn.execute("CONFIG", "SET", *(x for kv in want["tls"].items() for x in kv))
                log.info("shard %d: data-path TLS %s", shard.uid,
                         f"on (tls-port {shard.tls_port})" if dpine(shard, bdb) else "off")
            if want["master"] != running.applied.get("master"):
                if want["master"]:
                    await conn.execute("REPLICAOF", *map(str, want["master"]))
                else:
                    await conn.execute("REPLICAOF", "NO", "ONE")
            await conn.execute("CONFIG", "SET", "maxmemory", str(want["maxmemory"]),
                               "maxmemory-policy", want["policy"])
            if want["persistence"] != running.applied.get("persistence"):
                # appendonly yes starts an AOF rewrite in the background; no stops the AOF.
                await conn.execute("CONFIG", "SET",
                                   *(x for kv in want["persistence"].items() for x in kv))
                if shard.role == "master" and want["persistence"]["appendonly"] == "no":
                    # Stale from now on: a master coming back alone must not load it.
                    shutil.rmtree(running.folder / "appendonlydir", ignore_errors=True)
            if want["acl"] != running.applied.get("acl"):
                await apply_acl(conn, running.folder, want["acl"])
        running.applied = want

    async def _remove(self, uid: int) -> None:
        shard = self.shards.pop(uid)
        log.info("stopping shard %d (pid %s): no longer placed here", uid, shard.pid)
        await trio.to_thread.run_sync(shard.stop)
        shutil.rmtree(shard.folder, ignore_errors=True)
        master = await self.session.master()
        await master.execute("HDEL", schema.SHARD_STATE, str(uid))
        self.reported.pop(uid, None)

    async def _report(self, uid: int, status: str, shard: schema.Shard, **extra) -> None:
        value = {"uid": uid, "node_uid": self.config.uid, "status": status,
                 "role": shard.role, "port": shard.port, **extra}
        old = self.reported.get(uid)
        if old is not None and old["status"] == status and \
                {k: v for k, v in old.items() if k not in ("time", "since")} == \
                {k: v for k, v in value.items() if k != "since"}:
            return
        value["time"] = time.time()
        value.setdefault("since", value["time"])
        await ccs.write(await self.session.master(), schema.SHARD_STATE, value, field=uid)
        self.reported[uid] = value


async def in_sync(local) -> bool:
    """The node's CCS copy is the master, or a replica with its link to the master up."""
    replication = await info(local, "replication")
    return replication.get("role") == "master" or replication.get("master_link_status") == "up"


def stop_all(config: NodeConfig) -> None:
    """Stop every shard process of the node (what `dmc cluster stop` does after supervisord):
    those of the pid files, then any other running in a shard's folder (one redis_mgr started
    as the node stopped, before it wrote its pid file)."""
    for folder in config.shards_dir.iterdir() if config.shards_dir.exists() else ():
        pid = read_pid(folder)
        if pid:
            Shard(int(folder.name), folder).stop()
    for pid in processes_under(config.shards_dir) if config.shards_dir.exists() else ():
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue                        # gone meanwhile
        stop_redis(pid, *conf_endpoint(cwd))


def shard_pids(config: NodeConfig) -> dict[str, int]:
    """{'shard:<uid>': pid} of the node's live shard processes."""
    out = {}
    for folder in config.shards_dir.iterdir() if config.shards_dir.exists() else ():
        pid = read_pid(folder)
        if pid:
            out[f"shard:{folder.name}"] = pid
    return out


main = service_command("redis_mgr", RedisMgr)

if __name__ == "__main__":
    main()
