"""One chaos run: a real 3-node (or 5-node) LocalCluster (with election history on), a replicated
database and a durable one (replicated, `appendfsync-always`, every write followed by `WAIT 1`),
client processes recording every operation, the nemesis injecting faults, then -- faults undone,
the cluster healed -- a final read of every key, and the checker's report of the whole history.

With network faults the nodes run in a TestNetwork (chaos/netns.py), one host each, and this
process -- with the clients it starts, the REST calls and the shard-map polling -- in one more
host of that network (its main thread enters that namespace for the whole run; threads and
processes started from it inherit it): a host that reaches every node however they are cut.

The run owns its folder: the cluster's nodes, each client's history, the merged `history.jsonl`
(the checker's input: `python -m chaos check history.jsonl` checks it again), and it deletes the
cluster (keeping the history) unless asked to keep it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from chaos import checker
from chaos.nemesis import FAULTS, NETWORK_FAULTS, Nemesis
from chaos.netns import TestNetwork, in_netns
from chaos.workload import COUNTERS, LISTS, PAIRS, REGISTERS, Database, read_final, run_client
from control import schema
from control import ccs, history
from control.db_cli import Failure, RestApi
from control.local_cluster import LocalCluster, loopback_addresses

SHARDS = 2
START_TIMEOUT = 180.0   # s for the new cluster to elect a master, hear every node, create a db
MAP_POLL = 0.3          # s between two readings of the shard maps
HEAL_TIMEOUT = 60.0     # s for the cluster to serve every endpoint again after the faults
FIRST_FAULT_AFTER = 3.0


@dataclass
class Settings:
    seconds: float = 60.0
    seed: int = field(default_factory=lambda: random.randrange(1 << 31))
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    clients: int = 4
    nodes: int = 3
    workdir: Path = Path("chaos-run")
    keep: bool = False
    netns: bool | None = None       # nodes in network namespaces; None: if a network fault is on


def first_address() -> str:
    """A loopback /24 of this run's own (by pid), so parallel runs never share addresses."""
    pid = os.getpid()
    return f"127.{100 + pid % 150}.{(pid // 150) % 250}.1"


class Run:
    def __init__(self, settings: Settings, log=lambda line: None, progress=None):
        self.s = settings
        self.log = log
        self.progress = progress or (lambda elapsed, counts, faults: None)
        self.dir = Path(settings.workdir).resolve()   # the nodes run in folders of their own
        self.records: list[dict] = []
        self.cluster: LocalCluster | None = None
        self.net: TestNetwork | None = None
        self._stop_polling = threading.Event()
        self._client_host = contextlib.ExitStack()

    # ---- the cluster and its databases ----------------------------------------------------------

    def _use_netns(self) -> bool:
        s = self.s
        wanted = s.netns if s.netns is not None else bool(set(s.faults) & set(NETWORK_FAULTS))
        if not wanted:
            return False
        reason = TestNetwork.unavailable_reason()
        if reason is None:
            return True
        if s.netns:
            raise RuntimeError(f"no network namespaces here: {reason}")
        dropped = sorted(set(s.faults) & set(NETWORK_FAULTS))
        s.faults = [f for f in s.faults if f not in NETWORK_FAULTS]
        self.log(f"no network namespaces here ({reason}): not injecting {', '.join(dropped)}")
        return False

    def _create_cluster(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        home, n = self.dir / "cluster", self.s.nodes
        if self._use_netns():
            self.log(f"starting a {n}-node cluster in network namespaces")
            self.net = TestNetwork(n + 1)
            self._client_host.enter_context(in_netns(self.net.hosts[n].name))
            nodes = self.net.hosts[:n]
            self.cluster = LocalCluster.create(home, [h.address for h in nodes],
                                               record_history=True,
                                               netns=[h.name for h in nodes])
            self.cluster.wait_for_master(START_TIMEOUT)
            self.cluster.wait_ready(START_TIMEOUT)
        else:
            self.log(f"starting a {n}-node cluster")
            self.cluster = LocalCluster.create(home, loopback_addresses(n, first_address()),
                                               record_history=True, timeout=START_TIMEOUT)
        self.api = RestApi(self.cluster, timeout=START_TIMEOUT / 6)   # 30 s: a loaded machine
        _until(self._rest_answers, START_TIMEOUT, "the REST API")

    def _rest_answers(self) -> bool:
        try:
            self.api.call("GET", "/v1/nodes")
        except Failure:
            return False
        return True

    def _create_db(self, name: str, durable: bool) -> tuple[int, Database]:
        body = {"name": name, "shards_count": SHARDS, "replication": True,
                "memory_size": 64 << 20}
        if durable:
            body |= {"data_persistence": "aof", "aof_policy": "appendfsync-always"}
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                reply = self.api.call("POST", "/v1/bdbs", body=body)
                self._follow(reply["action_uid"], START_TIMEOUT)
                break
            except Failure as exc:
                # A young cluster on a loaded machine may answer 503 (its CCS re-pointed after
                # an election): again, unless the request got through (then: until active).
                made = [b for b in self._bdbs() if b.get("name") == name]
                if made:
                    _until(lambda: self._bdb(made[0]["uid"]).get("status") == "active",
                           max(1.0, deadline - time.monotonic()), f"database {name}")
                    reply = made[0]
                    break
                if time.monotonic() > deadline:
                    raise
                self.log(f"database {name} not created yet: {exc.message}")
                time.sleep(1.0)
        endpoints = [(c.address, reply["port"]) for _, c in sorted(self.cluster.nodes.items())]
        db = Database(name, durable, endpoints, sorted(self.cluster.nodes))
        for host, port in endpoints:      # every node's proxy serves it
            _until(lambda h=host, p=port: _answers(h, p), START_TIMEOUT / 3,
                   f"{name} on {host}:{port}")
        return reply["uid"], db

    def _bdbs(self) -> list[dict]:
        try:
            return self.api.call("GET", "/v1/bdbs")
        except Failure:
            return []

    def _bdb(self, uid: int) -> dict:
        try:
            return self.api.call("GET", f"/v1/bdbs/{uid}")
        except Failure:
            return {}

    def _follow(self, action_uid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            action = self.api.call("GET", f"/v1/actions/{action_uid}")
            if action["status"] == "completed":
                return
            if action["status"] == "failed" or time.monotonic() > deadline:
                raise Failure(f"{action['name']} {action['status']}: {action.get('error')}")
            time.sleep(0.2)

    # ---- shard maps ---------------------------------------------------------------------------

    def _poll_maps(self, bdb_uids: list[int]) -> None:
        """Record every database's shard map and CCS's master shards, read through any node's
        forwarded CCS port, until told to stop."""
        # (the forward socket: a node on a routable address serves no plaintext TCP for CCS)
        conns = [redis.Redis(unix_socket_path=str(c.forward_socket), socket_timeout=1)
                 for c in self.cluster.nodes.values()]
        last: dict[int, object] = {}
        while not self._stop_polling.wait(MAP_POLL):
            for conn in conns:
                try:
                    shards = {int(k): ccs.unpack(v, schema.Shard)
                              for k, v in conn.hgetall(schema.SHARDS).items()}
                    maps = {u: ccs.unpack(conn.get(schema.map_key(u)), schema.BdbMap)
                            for u in bdb_uids}
                except redis.RedisError:
                    continue
                now = time.monotonic()
                for uid, shard_map in maps.items():
                    if not shard_map:
                        continue
                    roles = [{"uid": s_uid, "slots": s.slots}
                             for s_uid, s in sorted(shards.items())
                             if s.bdb_uid == uid and s.role == "master"]
                    masters = [{"uid": s.uid, "slots": s.slots} for s in shard_map.shards]
                    paused = shard_map.paused
                    seen = (shard_map.version, paused, json.dumps(masters),
                            json.dumps(roles))
                    if last.get(uid) != seen:
                        last[uid] = seen
                        self.records.append({"type": "shard_map", "time": now, "bdb": uid,
                                             "version": shard_map.version,
                                             "paused": paused,
                                             "masters": masters, "shard_roles": roles})
                break
        for conn in conns:
            conn.close()

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self._stop_polling.set()
            try:
                if self.cluster is not None:
                    if self.s.keep:
                        self.cluster.stop()
                    else:
                        self.cluster.delete()
            finally:
                self._client_host.close()
                if self.net is not None:
                    self.net.close()

    def _run(self) -> dict:
        s = self.s
        self._create_cluster()
        uid_a, replicated = self._create_db("replicated", durable=False)
        uid_b, durable = self._create_db("durable", durable=True)
        databases = [replicated, durable]
        poller = threading.Thread(target=self._poll_maps, args=([uid_a, uid_b],), daemon=True)
        poller.start()

        ctx = multiprocessing.get_context("spawn")
        # ok, fail, unknown of each client (its own slots: no lock, no semaphore to track)
        counts = ctx.Array("l", 3 * s.clients, lock=False)
        # The clients run until this deadline, set once every one of them has completed an
        # operation: a process takes seconds to start on a loaded machine, and the run's time
        # (and the first fault) should not pass before the load is there.
        shared_deadline = ctx.Value("d", 0.0, lock=False)
        files = [self.dir / f"client-{i}.jsonl" for i in range(s.clients)]
        for f in files:
            f.unlink(missing_ok=True)
        procs = [ctx.Process(target=run_client, args=(i, databases, s.seed, shared_deadline,
                                                      str(f), counts, 3 * i), daemon=True)
                 for i, f in enumerate(files)]
        for p in procs:
            p.start()
        try:
            _until(lambda: all(sum(counts[3 * i:3 * i + 3]) for i in range(s.clients)),
                   START_TIMEOUT, "every client's first operation")
        except TimeoutError:
            shared_deadline.value = time.monotonic()      # the ones running stop
            raise
        start = time.monotonic()
        deadline = shared_deadline.value = start + s.seconds
        self.log(f"{s.clients} clients running for {s.seconds:.0f}s, seed {s.seed}")

        nemesis = Nemesis(self.cluster, self.api, [uid_a, uid_b], s.seed, s.faults, self.log,
                          self.net)
        next_fault = start + FIRST_FAULT_AFTER
        while time.monotonic() < deadline:
            self.progress(time.monotonic() - start, _totals(counts), len(nemesis.injected))
            if s.faults and time.monotonic() >= next_fault and deadline - time.monotonic() > 8:
                nemesis.step()
                next_fault = time.monotonic() + nemesis.rng.uniform(1.0, 4.0)
            time.sleep(0.2)
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        self.progress(s.seconds, _totals(counts), len(nemesis.injected))

        self.log("faults over: waiting for the cluster to heal")
        nemesis.settle_actions(30)
        healed = self._heal(databases)
        self.log("final reads")
        final_file = self.dir / "final.jsonl"
        final_file.unlink(missing_ok=True)
        unread = 0
        for db in databases:
            unread += read_final(db, _final_keys(db, files), str(final_file),
                                 time.monotonic() + 30)
        self._stop_polling.set()
        poller.join(5)
        self.cluster.stop()
        election = history.load_dir(self.cluster.home)

        for f in [*files, final_file]:
            if f.exists():
                self.records += checker.load(f)
        self.records += nemesis.injected
        self.records.sort(key=lambda r: r.get("invoke", r.get("time", r.get("start", 0))))
        with open(self.dir / "history.jsonl", "w") as out:
            out.writelines(json.dumps(r) + "\n" for r in self.records)
        with open(self.dir / "election.jsonl", "w") as out:
            out.writelines(json.dumps(o) + "\n" for o in election)
        report = checker.check(self.records, election)
        report.update(seed=s.seed, seconds=s.seconds, clients=s.clients, nodes=s.nodes,
                      netns=self.net is not None, start=start,
                      healed=healed, final_reads_missing=unread,
                      history=str(self.dir / "history.jsonl"))
        return report

    def _heal(self, databases: list[Database]) -> bool:
        """Every node running, and every endpoint of every database answering a write."""
        deadline = time.monotonic() + HEAL_TIMEOUT
        if self.net is not None:
            self.net.heal()
        for uid in self.cluster.nodes:
            if not self.cluster.node_pids(uid):
                self.cluster.start_node(uid, timeout=START_TIMEOUT / 3)
        try:
            for db in databases:
                for host, port in db.endpoints:
                    _until(lambda h=host, p=port: _answers(h, p),
                           max(1.0, deadline - time.monotonic()), f"{db.name} on {host}:{port}")
        except TimeoutError as exc:
            self.log(f"not healed: {exc}")
            return False
        return True


def _totals(counts) -> list[int]:
    """ok, fail, unknown over every client."""
    return [sum(counts[i::3]) for i in range(3)]


def _final_keys(db: Database, files: list[Path]) -> list[tuple[str, str]]:
    """What to read back at the end: every key written once (by any client, whatever its
    outcome), every counter and list, and on the durable database every register and pair."""
    written = set()
    for f in files:
        if f.exists():
            for r in checker.load(f):
                if r["db"] == db.name and r["op"] == "write":
                    written.add(r["key"])
    keys = [("get", k) for k in sorted(written)]
    keys += [("get", f"c:{i}") for i in range(COUNTERS)]
    keys += [("lrange", f"l:{i}") for i in range(LISTS)]
    if db.durable:
        keys += [("get", f"r:{i}") for i in range(REGISTERS)]
        keys += [("txn_get", f"{{t:{i}}}") for i in range(PAIRS)]
    return keys


def _answers(host: str, port: int) -> bool:
    try:
        with redis.Redis(host, port, socket_timeout=1, socket_connect_timeout=1) as r:
            return bool(r.set("chaos:probe", "1"))
    except redis.RedisError:
        return False


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f}s")
        time.sleep(0.2)
