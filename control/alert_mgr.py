"""alert_mgr: raises and clears the cluster's alerts, and keeps its event log (control/alerts.py
has the keys, the rules and the hysteresis).

Every node runs it; only the one on the master node acts (as job_scheduler), once a second:

- database alerts from each database's `alert_settings`, judged on the newest `1sec` statistics
  stats_archiver wrote (the sum of the database's parts on every node), on its record (backups)
  and on the actions holding it;
- node alerts (`node_failed` from the heartbeats; memory, CPU and disk from each node's newest
  statistics) and cluster alerts, with `cluster:alert_settings` (or the defaults);
- every change of an alert's state is an event in the log, and so is every action that ended
  (bdb_created, failover, backup_succeeded, ...), once;
- every change of an alert's state is also delivered by webhook and e-mail if the cluster's
  settings ask (control/alert_delivery.py), from a queue of its own: a slow receiver never
  delays an evaluation.
"""

from __future__ import annotations

import logging
import time

import trio

from control import alerts, ccs, schema
from control import stats_store as store
from control.alert_delivery import deliver
from control.alerts import Hysteresis, alert_field, threshold_of
from control.cluster_view import UNFINISHED, ClusterView, read_view, tick_on_master
from control.node import NodeConfig, service_command
from control.redis_client import ReplyError

log = logging.getLogger("alert_mgr")

TICK = 1.0
FRESH = 5.0         # statistics older than this are no evidence (the node stopped writing)
DELIVERY_QUEUE = 1000   # alert changes waiting for their webhook / e-mail; past it, dropped


async def newest(r, keys: list[str]) -> list[dict]:
    """The last point of each list that has one."""
    if not keys:
        return []
    replies = await r.pipeline([("LINDEX", k, -1) for k in keys])
    return [ccs.unpack(v) for v in replies if v is not None and not isinstance(v, ReplyError)]


async def latest_bdb(r, uid: int, nodes, now: float) -> dict | None:
    """The database's newest 1sec statistics: the sum of its parts' newest fresh points (the
    parts of the member `nodes`)."""
    points = [p for p in await newest(r, [store.key("1sec", "bdb", uid, n) for n in nodes])
              if now - p["etime"] < FRESH]
    if not points:
        return None
    return store.merged([[{**p, "stime": 0}] for p in points], bdb=True)[0]


def bdb_values(bdb: schema.Bdb, stats: dict | None, view: ClusterView, now: float,
               failed_nodes: dict[int, dict] | None = None) -> dict:
    """Each database alert's value now (None: not known); `failed_nodes`: the database's
    endpoint_status hash."""
    stats = stats or {}
    limit = bdb.memory_size
    throughput = stats.get("total_req", stats.get("instantaneous_ops_per_sec"))
    latency = stats.get("avg_latency")
    interval = bdb.backup_interval or 0
    delay = None
    if interval > 0:
        since = max(bdb.last_backup_time or 0, bdb.created_time or 0)
        delay = max(now - since - interval, 0.0)
    running = [now - (a.creation_time or now) for a in view.actions.values()
               if a.status in UNFINISHED
               and bdb.uid in (a.bdb_uid, a.object_uid)
               and a.object_type in ("bdb", "shard")]
    return {"bdb_size": 100.0 * stats["used_memory"] / limit
            if limit and "used_memory" in stats else None,
            "bdb_high_latency": latency * 1e6 if latency is not None else None,
            "bdb_high_throughput": throughput, "bdb_low_throughput": throughput,
            "bdb_backup_delayed": delay,
            "bdb_long_running_action": max(running) if running else 0.0,
            "bdb_endpoint_failed": len([n for n in failed_nodes or {} if n in view.nodes])}


def node_values(uid: int, view: ClusterView, stats: dict | None) -> dict:
    stats = stats or {}
    memory = disk = cpu = None
    if stats.get("total_memory") and "free_memory" in stats:
        memory = 100.0 * (1 - stats["free_memory"] / stats["total_memory"])
    if stats.get("persistent_storage_size") and "persistent_storage_free" in stats:
        disk = 100.0 * (1 - stats["persistent_storage_free"] / stats["persistent_storage_size"])
    if "cpu_idle" in stats:
        cpu = 100.0 * (1 - stats["cpu_idle"])
    return {"node_failed": uid not in view.up, "node_memory": memory,
            "node_cpu_utilization": cpu, "node_persistent_storage": disk}


def cluster_values(view: ClusterView) -> dict:
    down = len(view.nodes) - len(view.up)
    replicated = any(b.replication for b in view.bdbs.values())
    return {"cluster_multiple_nodes_down": down > 1,
            "cluster_too_few_nodes_for_replication": replicated and len(view.up) < 2}


class AlertMgr:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.hysteresis = Hysteresis()
        self.deliveries: trio.MemorySendChannel | None = None

    async def run(self) -> None:
        send, receive = trio.open_memory_channel(DELIVERY_QUEUE)
        self.deliveries = send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, receive)
            await tick_on_master(self.session, self.config.uid, self.tick, TICK, log)

    async def _deliver(self, receive: trio.MemoryReceiveChannel) -> None:
        """Webhook and e-mail, one change after the other, off the tick."""
        async for policy, alert, event in receive:
            await deliver(policy, self.config.cluster_fqdn, alert, event)

    def _queue_delivery(self, policy: dict, alert: dict, event: dict) -> None:
        if self.deliveries is None or not (policy.get("alerts_webhook_url")
                                           or policy.get("email_alerts")):
            return
        try:
            self.deliveries.send_nowait((policy, alert, event))
        except trio.WouldBlock:
            log.warning("alert %s not delivered: %d deliveries are waiting", alert["name"],
                        DELIVERY_QUEUE)

    async def tick(self, r) -> None:
        now = time.time()
        view = await read_view(r, with_actions=True)
        stored = await alerts.read_alerts(r)
        cluster_settings = {**alerts.CLUSTER_DEFAULTS, **await alerts.cluster_settings(r)}
        judged: list[tuple[str, str, int | None, str, dict, object]] = []
        failures = await schema.endpoint_failures(r, view.bdbs)
        for uid, bdb in view.bdbs.items():
            if bdb.status != "active":
                continue
            values = bdb_values(bdb, await latest_bdb(r, uid, view.nodes, now), view, now,
                                failures.get(uid))
            bdb_settings = {**alerts.BDB_DEFAULTS,
                            **{k: v for k, v in (bdb.alert_settings or {}).items() if v}}
            for name, value in values.items():
                judged.append(("bdb", name, uid, alerts.BDB_ALERTS[name][0],
                               bdb_settings.get(name) or {}, value))
        node_points = dict(zip(view.nodes, await newest(r, [store.key("1sec", "node", u)
                                                            for u in view.nodes])))
        for uid in view.nodes:
            point = node_points.get(uid)
            if point is not None and now - point["etime"] >= FRESH:
                point = None
            for name, value in node_values(uid, view, point).items():
                judged.append(("node", name, uid, alerts.NODE_ALERTS[name][0],
                               cluster_settings.get(name) or {}, value))
        for name, value in cluster_values(view).items():
            judged.append(("cluster", name, None, alerts.CLUSTER_ALERTS[name][0],
                           cluster_settings.get(name) or {}, value))

        writes, events, keep, changed = [], [], set(), []
        for object_type, name, uid, direction, setting, value in judged:
            field = alert_field(object_type, uid, name)
            keep.add(field)
            old = stored.get(field) or {}
            enabled = bool(setting.get("enabled"))
            threshold = threshold_of(setting)
            raised = bool(old.get("state")) and enabled
            state = self.hysteresis.step(field, raised, direction, value, threshold) \
                if enabled else False
            severity = {**alerts.BDB_ALERTS, **alerts.NODE_ALERTS,
                        **alerts.CLUSTER_ALERTS}[name][1]
            record = {"name": name, "object_type": object_type, "object_uid": uid,
                      "enabled": enabled, "state": state, "severity": severity,
                      "threshold": setting.get("threshold"),
                      "change_time": old.get("change_time"),
                      "change_value": old.get("change_value"), "value": value}
            if state != bool(old.get("state")) or not old:
                record["change_time"] = now if old or state else None
                record["change_value"] = {"state": state, "threshold": setting.get("threshold"),
                                          "value": value}
                if old or state:
                    what = f"{object_type} {uid}" if uid is not None else "the cluster"
                    changed.append((record, len(events)))
                    events.append(alerts.event(
                        name, severity if state else "INFO",
                        f"{name} {'raised' if state else 'cleared'} for {what} (value "
                        f"{value}, threshold {setting.get('threshold')})", state=state,
                        **({f"{object_type}_uid": uid} if uid is not None else {})))
            if record != old:
                writes += [("HSET", alerts.ALERTS, field, ccs.pack(record))]
        own = {*alerts.BDB_ALERTS, *alerts.NODE_ALERTS, *alerts.CLUSTER_ALERTS}
        gone = [f for f in stored if f not in keep and (
            f.rsplit(":", 1)[-1] in own or (f.startswith("bdb:") and
                                           int(f.split(":")[1]) not in view.bdbs))]
        if gone:
            writes.append(("HDEL", alerts.ALERTS, *gone))
        events += await self.action_events(r, view)
        if writes:
            await r.pipeline(writes)
        await alerts.log_events(r, events)
        for e in events:
            log.info("event %s: %s", e["type"], e["description"])
        if changed:
            policy = await schema.cluster_policy(r)
            for record, index in changed:
                self._queue_delivery(policy, record, events[index])

    async def action_events(self, r, view: ClusterView) -> list[dict]:
        """An event for every action that ended and has none yet."""
        logged = ccs.str_hash(await r.execute("HGETALL", alerts.LOGGED_ACTIONS))
        events, marks = [], []
        for uid, action in view.actions.items():
            status = action.status
            if status not in ("completed", "failed") or logged.get(uid) == status:
                continue
            done, failed = alerts.ACTION_EVENTS.get(
                action.name, (f"{action.name}_completed", f"{action.name}_failed"))
            kind = done if status == "completed" else failed
            about = {f"{action.object_type}_uid": action.object_uid,
                     "bdb_uid": action.bdb_uid}
            events.append(alerts.event(
                kind, "INFO" if status == "completed" else "ERROR",
                f"{action.name} of {action.object_type} {action.object_uid} {status}"
                + (f": {action.error}" if action.error else ""),
                action_uid=uid, **about))
            marks += [uid, ccs.pack(status)]
        stale = [u for u in logged if u not in view.actions]
        cmds = ([("HSET", alerts.LOGGED_ACTIONS, *marks)] if marks else []) + \
            ([("HDEL", alerts.LOGGED_ACTIONS, *stale)] if stale else [])
        if cmds:
            await r.pipeline(cmds)
        return events


main = service_command("alert_mgr", AlertMgr)

if __name__ == "__main__":
    main()
