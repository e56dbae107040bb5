"""The nemesis: faults injected into a running LocalCluster on a schedule drawn from a seed, each
recorded (kind, target, start, end: time.monotonic()) for the checker and the plot.

It keeps a majority alive -- at most one node is down, paused or cut off at a time, save the
full-cluster kill, which takes every node down at once and starts them all again -- and every
fault is undone (a stopped shard continued, a killed node started again, a partition healed)
before the next begins, so that a run always ends healed. Killed processes other than a whole
node come back by themselves: supervisord restarts a service, redis_mgr a shard. Failovers and
migrations are started through the REST API, on their own or in the middle of another fault;
so are reshards (a database's shards doubled, up to RESHARD_MAX_SHARDS) when `reshard` is among
the faults.

Network faults need the nodes in a TestNetwork (chaos/netns.py): node uid u is host u - 1, and
the clients run in one more host that no fault cuts, except `isolate`. They cut links between
nodes only (`TestNetwork.cut`), so the clients keep reaching both sides:

- `partition`: a majority | minority split (1 | 2 of 3 nodes, 2 | 3 of 5); the minority's
  nodes are recorded (`minority`): the checker holds them to the fence;
- `isolate`: one node cut from every other host, the clients' host too (its clients' connections
  hang, new ones time out);
- `bridge`: two groups that cannot see each other and one node that sees both (every node
  still sees a majority: nobody is fenced, and the election must not make two masters).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

from chaos.netns import TestNetwork, links_between
from control.db_cli import Failure, RestApi
from control.local_cluster import ClusterError, LocalCluster

# kind -> how often it is drawn, relative to the others
FAULTS = {"kill_shard": 3, "kill_proxy": 2, "kill_service": 2, "kill_node": 2, "pause_shard": 2,
          "pause_node": 1, "partition": 2, "isolate": 1, "bridge": 1, "restart_cluster": 1,
          "failover": 1, "migrate": 1, "reshard": 1}
NETWORK_FAULTS = ("partition", "isolate", "bridge")     # need the nodes in a TestNetwork
RESTART_TIMEOUT = 90.0  # s for a cluster killed whole to elect a master again
START_TIMEOUT = 60.0    # s for a killed node's supervisord to answer again
RESHARD_MAX_SHARDS = 8  # a reshard doubles a database's shards (dmc grows by multiples) up to this
SERVICES = ("cluster_wd", "heartbeatd", "redis_mgr", "cnm_exec", "cnm_http", "ccs")


class Nemesis:
    def __init__(self, cluster: LocalCluster, api: RestApi, bdb_uids: list[int], seed: int,
                 faults: list[str], log: Callable[[str], None] = lambda line: None,
                 net: TestNetwork | None = None):
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault {', '.join(unknown)} (known: {', '.join(FAULTS)})")
        if net is None and set(faults) & set(NETWORK_FAULTS):
            raise ValueError(f"{', '.join(sorted(set(faults) & set(NETWORK_FAULTS)))} need the "
                             "nodes in network namespaces")
        self.cluster, self.api, self.bdb_uids, self.net = cluster, api, bdb_uids, net
        self.rng = random.Random(seed)
        self.faults = list(faults)
        self.log = log
        self.injected: list[dict] = []

    # ---- targets -----------------------------------------------------------------------------

    def _shards(self, role: str | None = None) -> list[dict]:
        try:
            shards = self.api.call("GET", "/v1/shards")
        except Failure:
            return []
        return [s for s in shards if s.get("bdb_uid") in self.bdb_uids
                and (role is None or s.get("role") == role)]

    def _shard_pid(self, shard: dict) -> int | None:
        return self.cluster.node_pids(shard["node_uid"]).get(f"shard:{shard['uid']}")

    def _pick_shard(self) -> tuple[dict, int] | None:
        role = "master" if self.rng.random() < 0.7 else None
        shards = self._shards(role)
        self.rng.shuffle(shards)
        for shard in shards:
            pid = self._shard_pid(shard)
            if pid:
                return shard, pid
        return None

    def _node(self) -> int:
        return self.rng.choice(sorted(self.cluster.nodes))

    # ---- recording ---------------------------------------------------------------------------

    def _record(self, kind: str, target: str, start: float, end: float | None = None,
                **extra) -> dict:
        fault = {"type": "fault", "kind": kind, "target": target, "start": start,
                 "end": end if end is not None else start, **extra}
        self.injected.append(fault)
        self.log(f"{kind}: {target}" + (f" ({extra['note']})" if extra.get("note") else ""))
        return fault

    # ---- faults ------------------------------------------------------------------------------

    def step(self) -> None:
        """Inject one fault, chosen from the seed, and undo it before returning."""
        kind = self.rng.choices(self.faults, weights=[FAULTS[f] for f in self.faults])[0]
        getattr(self, kind)()

    def kill_shard(self) -> None:
        picked = self._pick_shard()
        if picked is None:
            return
        shard, pid = picked
        _kill(pid, signal.SIGKILL)
        self._record("kill_shard", f"{shard['role']} shard {shard['uid']} on node "
                     f"{shard['node_uid']}", time.monotonic())

    def _kill_service(self, kind: str, service: str) -> None:
        uid = self._node()
        pid = self.cluster.node_pids(uid).get(service)
        if pid:
            _kill(pid, signal.SIGKILL)
            self._record(kind, f"{service} on node {uid}", time.monotonic())

    def kill_proxy(self) -> None:
        self._kill_service("kill_proxy", "dmcproxy")

    def kill_service(self) -> None:
        self._kill_service("kill_service", self.rng.choice(SERVICES))

    def kill_node(self) -> None:
        uid = self._node()
        start = time.monotonic()
        self.cluster.kill_node(uid)
        self.log(f"kill_node: node {uid} (all its processes, kill -9)")
        self._during(self.rng.uniform(4, 8))
        self._record("kill_node", f"node {uid}", start, time.monotonic(),
                     note=self._start(uid))

    def pause_shard(self) -> None:
        picked = self._pick_shard()
        if picked is None:
            return
        shard, pid = picked
        start = time.monotonic()
        _kill(pid, signal.SIGSTOP)
        self.log(f"pause_shard: SIGSTOP {shard['role']} shard {shard['uid']}")
        try:
            self._during(self.rng.uniform(2, 5))
        finally:
            _kill(pid, signal.SIGCONT)
        self._record("pause_shard", f"{shard['role']} shard {shard['uid']} on node "
                     f"{shard['node_uid']}", start, time.monotonic())

    def pause_node(self) -> None:
        """SIGSTOP of every process of a node (supervisord first, so it sees nothing die)."""
        uid = self._node()
        pids = self.cluster.node_pids(uid)
        order = [pids.pop("supervisor")] if "supervisor" in pids else []
        order += list(pids.values())
        start = time.monotonic()
        for pid in order:
            _kill(pid, signal.SIGSTOP)
        self.log(f"pause_node: SIGSTOP node {uid} ({len(order)} processes)")
        try:
            self._during(self.rng.uniform(2, 6))
        finally:
            for pid in reversed(order):
                _kill(pid, signal.SIGCONT)
        self._record("pause_node", f"node {uid}", start, time.monotonic())

    def restart_cluster(self) -> None:
        """kill -9 of every process of every node, then every node started again."""
        start = time.monotonic()
        for uid in sorted(self.cluster.nodes):
            self.cluster.kill_node(uid)
        self.log("restart_cluster: every node killed (kill -9)")
        time.sleep(self.rng.uniform(1, 3))
        notes = [self._start(uid) for uid in sorted(self.cluster.nodes)]
        try:
            self.cluster.wait_for_master(RESTART_TIMEOUT)
        except ClusterError as exc:
            notes.append(str(exc))
        self._record("restart_cluster", "every node", start, time.monotonic(),
                     note="; ".join(n for n in notes if n))

    def _start(self, uid: int) -> str:
        """Start a killed node again; what went wrong, if anything (the run's heal tries again)."""
        try:
            self.cluster.start_node(uid, timeout=START_TIMEOUT)
        except ClusterError as exc:
            self.log(f"node {uid} not started again: {exc}")
            return str(exc)
        return ""

    # ---- the network (node uid u is host u - 1) ------------------------------------------------

    def _cut(self, kind: str, target: str, links: set[tuple[int, int]], minority: list[int],
             seconds: float) -> None:
        start = time.monotonic()
        self.net.cut(links)
        self.log(f"{kind}: {target}")
        try:
            self._during(seconds)
        finally:
            self.net.heal()
        self._record(kind, target, start, time.monotonic(), minority=minority)

    def partition(self) -> None:
        nodes = sorted(self.cluster.nodes)
        self.rng.shuffle(nodes)
        small = (len(nodes) - 1) // 2
        minority, majority = sorted(nodes[:small]), sorted(nodes[small:])
        self._cut("partition", f"nodes {minority} | {majority}",
                  links_between([u - 1 for u in minority], [u - 1 for u in majority]),
                  minority, self.rng.uniform(5, 12))

    def isolate(self) -> None:
        uid = self._node()
        others = [h.index for h in self.net.hosts if h.index != uid - 1]   # the clients' too
        self._cut("isolate", f"node {uid} from every host", links_between([uid - 1], others),
                  [uid], self.rng.uniform(5, 12))

    def bridge(self) -> None:
        nodes = sorted(self.cluster.nodes)
        self.rng.shuffle(nodes)
        middle, rest = nodes[0], nodes[1:]
        left, right = sorted(rest[:len(rest) // 2]), sorted(rest[len(rest) // 2:])
        self._cut("bridge", f"nodes {left} | {right}, node {middle} sees both",
                  links_between([u - 1 for u in left], [u - 1 for u in right]), [],
                  self.rng.uniform(5, 12))

    def _during(self, seconds: float) -> None:
        """Wait out a fault; half the time a failover or a migration (or a reshard, when it is
        among the faults) starts in the middle."""
        deadline = time.monotonic() + seconds
        time.sleep(seconds * self.rng.uniform(0.2, 0.6))
        if self.rng.random() < 0.5:
            actions = (self.failover, self.migrate) + ((self.reshard,) if "reshard" in self.faults
                                                       else ())
            self.rng.choice(actions)()
        time.sleep(max(0.0, deadline - time.monotonic()))

    def failover(self) -> None:
        masters = self._shards("master")
        if not masters:
            return
        shard = self.rng.choice(masters)
        self._action("failover", f"shard {shard['uid']}",
                     f"/v1/shards/{shard['uid']}/actions/failover", None)

    def migrate(self) -> None:
        shards = self._shards()
        if not shards:
            return
        shard = self.rng.choice(shards)
        nodes = [u for u in sorted(self.cluster.nodes) if u != shard["node_uid"]]
        to = self.rng.choice(nodes)
        self._action("migrate", f"shard {shard['uid']} to node {to}",
                     f"/v1/shards/{shard['uid']}/actions/migrate", {"target_node_uid": to})

    def reshard(self) -> None:
        uid = self.rng.choice(self.bdb_uids)
        try:
            shards = self.api.call("GET", f"/v1/bdbs/{uid}").get("shards_count") or 1
        except Failure:
            return
        if shards * 2 > RESHARD_MAX_SHARDS:
            self._record("reshard", f"bdb {uid}", time.monotonic(),
                         note=f"skipped: {shards} shards already")
            return
        self._action("reshard", f"bdb {uid}: {shards} -> {shards * 2} shards", f"/v1/bdbs/{uid}",
                     {"shards_count": shards * 2}, method="PUT")

    def _action(self, kind: str, target: str, path: str, body: dict | None,
                method: str = "POST") -> None:
        start = time.monotonic()
        try:
            reply = self.api.call(method, path, body=body)
        except Failure as exc:
            self._record(kind, target, start, note=f"refused: {exc.message}")
            return
        self._record(kind, target, start, action_uid=reply.get("action_uid"))

    # ---- the end -----------------------------------------------------------------------------

    def settle_actions(self, timeout: float) -> None:
        """Wait for the actions started to end; note how each ended (end = when seen ended)."""
        deadline = time.monotonic() + timeout
        for fault in self.injected:
            uid = fault.get("action_uid")
            while uid:
                try:
                    action = self.api.call("GET", f"/v1/actions/{uid}")
                except Failure:
                    action = {"status": "unknown"}
                if action["status"] in ("completed", "failed") or time.monotonic() > deadline:
                    fault["status"] = action["status"]
                    if action.get("error"):
                        fault["note"] = action["error"]
                    break
                time.sleep(0.3)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
