"""resource_mgr: watches memory per node and per database, on the master node (every node runs
it, only the master's acts; once every TICK seconds), from the newest `1sec` statistics
stats_archiver wrote.

- A database at its memory limit (its master shards' used memory >= `memory_size`): the shards'
  eviction policy acts, as always (redis_mgr gives each master `maxmemory`); resource_mgr raises
  the alert `bdb_memory_limit` (control/alerts.py's store, severity WARNING), cleared once the
  database is under AT_LIMIT_CLEAR of its limit.
- A node whose free memory falls under the cluster's threshold (`cluster:resource_settings`,
  `{node_min_free_memory: bytes, nodes: {<uid>: {node_min_free_memory}}}`, the second a node's
  own; absent or 0: off) for LOW_FOR seconds: one shard is moved off
  it with a `shard_migrate` action (the existing machine, control/machines/shard_migrate.py),
  RE's "slave migration": a replica first (moving one costs a copy, no switch), the one using
  the most memory, to the node up with the most free memory that holds no copy of its slots,
  if that node is above the threshold itself. One migration at a time; the next is considered
  when it ended and the node is still low.
"""

from __future__ import annotations

import logging
import time

from control import alerts, ccs, schema
from control import stats_store as store
from control.alert_mgr import FRESH, latest_bdb, newest
from control.cluster_view import UNFINISHED, ClusterView, pair_nodes, read_view, tick_on_master
from control.node import NodeConfig, service_command

log = logging.getLogger("resource_mgr")

TICK = 1.0
LOW_FOR = 5.0                   # a node this long under the threshold has shards moved off
AT_LIMIT = 1.0                  # used memory / memory_size from which the alert is raised
AT_LIMIT_CLEAR = 0.95
RESOURCE_SETTINGS = "cluster:resource_settings"


def node_thresholds(settings: dict, nodes) -> dict[int, float]:
    """Each node's free-memory threshold: its own in `settings["nodes"]` (nodes of different
    sizes), else the cluster's `node_min_free_memory` (0: off)."""
    default = float(settings.get("node_min_free_memory") or 0)
    own = {int(k): v for k, v in (settings.get("nodes") or {}).items()}
    return {u: float((own.get(u) or {}).get("node_min_free_memory", default) or 0)
            for u in nodes}


def plan_migration(low_node: int, view: ClusterView, free: dict[int, float],
                   threshold: float | dict[int, float],
                   used: dict[int, int]) -> tuple[int, int] | None:
    """(shard uid, target node) to move off `low_node`, or None (pure). `threshold`: the
    free memory a target must stay above, one for all or per node."""
    limit = threshold if isinstance(threshold, dict) else dict.fromkeys(view.nodes, threshold)
    on_node = [s for s in view.shards.values() if s.node_uid == low_node]
    on_node.sort(key=lambda s: (s.role != "replica", -used.get(s.uid, 0), s.uid))
    for shard in on_node:
        excluded = pair_nodes(shard, view.shards) | {low_node}
        targets = [n for n in view.up if n not in excluded
                   and free.get(n, 0) > limit.get(n, 0)]
        if targets:
            return shard.uid, max(targets, key=lambda n: (free[n], -n))
    return None


class ResourceMgr:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.low_since: dict[int, float] = {}
        self.migrating: str | None = None      # the action uid of the migration it asked for

    async def run(self) -> None:
        await tick_on_master(self.session, self.config.uid, self.tick, TICK, log)

    async def tick(self, r) -> None:
        now = time.time()
        view = await read_view(r, with_actions=True)
        await self.watch_databases(r, view, now)
        settings = ccs.unpack(await r.execute("GET", RESOURCE_SETTINGS)) or {}
        thresholds = node_thresholds(settings, view.nodes)
        if not any(t > 0 for t in thresholds.values()):
            self.low_since.clear()
            return
        points = dict(zip(view.nodes, await newest(r, [store.key("1sec", "node", u)
                                                       for u in view.nodes])))
        free = {u: p.get("available_memory", p.get("free_memory", 0))
                for u, p in points.items() if p and now - p["etime"] < FRESH}
        for uid in list(view.up):
            if uid in free and free[uid] < thresholds[uid]:
                self.low_since.setdefault(uid, now)
            else:
                self.low_since.pop(uid, None)
        if self.migrating is not None:
            running = view.actions.get(self.migrating)
            if running is not None and running.status in UNFINISHED:
                return
            self.migrating = None
        for uid, since in sorted(self.low_since.items(), key=lambda i: i[1]):
            if now - since < LOW_FOR:
                continue
            shards = await newest(r, [store.key("1sec", "shard", s) for s in view.shards])
            used = {s: p.get("used_memory", 0) for s, p in zip(view.shards, shards) if p}
            plan = plan_migration(uid, view, free, thresholds, used)
            if plan is None:
                continue
            shard_uid, target = plan
            bdb_uid = view.shards[shard_uid].bdb_uid
            action = schema.new_action("shard_migrate", "shard", shard_uid,
                                       {"target_node_uid": target, "reason": "node memory"},
                                       bdb_uid=bdb_uid)
            try:
                await schema.submit(r, action, lock_bdb=bdb_uid)
            except schema.Conflict:
                continue
            self.migrating = action.action_uid
            log.warning("node %d has %.0f bytes free (< %.0f): shard %d moves to node %d",
                        uid, free[uid], thresholds[uid], shard_uid, target)
            return

    async def watch_databases(self, r, view: ClusterView, now: float) -> None:
        stored = await alerts.read_alerts(r)
        writes, events = [], []
        for uid, bdb in view.bdbs.items():
            stats = await latest_bdb(r, uid, view.nodes, now)
            limit = bdb.memory_size
            if not stats or not limit or "used_memory" not in stats:
                continue
            ratio = stats["used_memory"] / limit
            field = alerts.alert_field("bdb", uid, "bdb_memory_limit")
            old = stored.get(field) or {}
            state = ratio >= AT_LIMIT or (bool(old.get("state")) and ratio >= AT_LIMIT_CLEAR)
            if state == bool(old.get("state")) and old:
                continue
            value = {"state": state, "threshold": str(AT_LIMIT * 100), "value": ratio * 100}
            writes.append(("HSET", alerts.ALERTS, field, ccs.pack({
                "name": "bdb_memory_limit", "object_type": "bdb", "object_uid": uid,
                "enabled": True, "state": state, "severity": "WARNING",
                "change_time": now, "change_value": value, "value": ratio * 100})))
            if old or state:
                events.append(alerts.event(
                    "bdb_memory_limit", "WARNING" if state else "INFO",
                    f"database {uid} {'reached' if state else 'is back under'} its memory "
                    f"limit ({ratio:.0%} of {limit} bytes; eviction policy "
                    f"{bdb.eviction_policy})", bdb_uid=uid, state=state))
        if writes:
            await r.pipeline(writes)
        await alerts.log_events(r, events)


main = service_command("resource_mgr", ResourceMgr)

if __name__ == "__main__":
    main()
