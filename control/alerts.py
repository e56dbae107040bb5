"""Alerts and the event log in CCS, and the rules that raise and clear alerts (pure functions,
so that the thresholds and the hysteresis are tested without a cluster). alert_mgr evaluates
them on the master node; the REST API (control/rest_stats.py) and `dmc alerts` read them.

CCS keys:
    alerts               hash: `<object type>:<uid>:<name>` (the cluster's: `cluster:0:<name>`)
                         -> {name, object_type, object_uid, state, severity, enabled,
                         change_time, change_value: {state, threshold, value}}
    logs                 list: the event log, oldest first, at most LOG_LIMIT events
                         {time, type, severity, description, bdb_uid?, node_uid?, ...}
    logs:actions         hash: action uid -> the status whose event was logged (once each)
    cluster:alert_settings   the cluster's and nodes' alert settings, as RE's
                         `{name: {enabled, threshold}}` (absent: CLUSTER_DEFAULTS)

A database's settings are its record's `alert_settings` (RE's field): `{name: {enabled,
threshold}}`, thresholds as RE gives them: `bdb_size` % of the memory limit,
`bdb_high_latency` µs, `bdb_high_throughput` / `bdb_low_throughput` ops/s,
`bdb_backup_delayed` and `bdb_long_running_action` seconds. A database alert is off unless set,
but for `bdb_endpoint_failed` (BDB_DEFAULTS): raised while a node's dmcproxy cannot serve the
database's endpoint (its `endpoint_status:<bdb>` hash names the node and the reason), its value
the number of such nodes.

Hysteresis: an alert is raised after RAISE_AFTER evaluations in a row past its threshold and
cleared after CLEAR_AFTER evaluations in a row back past the threshold by CLEAR_MARGIN of it
(a database at 80.5% of a `bdb_size` 80 threshold stays raised until it is under 72%).
"""

from __future__ import annotations

import time

from control import ccs

ALERTS = "alerts"
LOGS = "logs"
LOGGED_ACTIONS = "logs:actions"
CLUSTER_SETTINGS = "cluster:alert_settings"
LOG_LIMIT = 1000

RAISE_AFTER = 2
CLEAR_AFTER = 2
CLEAR_MARGIN = 0.10

# name -> (direction, severity): "above" raised when the value exceeds the threshold, "below"
# when it falls under it, "true" when the condition holds (no threshold).
BDB_ALERTS = {
    "bdb_size": ("above", "WARNING"),
    "bdb_high_latency": ("above", "WARNING"),
    "bdb_high_throughput": ("above", "WARNING"),
    "bdb_low_throughput": ("below", "WARNING"),
    "bdb_backup_delayed": ("above", "WARNING"),
    "bdb_long_running_action": ("above", "WARNING"),
    "bdb_endpoint_failed": ("true", "ERROR"),
}
BDB_DEFAULTS = {"bdb_endpoint_failed": {"enabled": True}}
NODE_ALERTS = {
    "node_failed": ("true", "ERROR"),
    "node_memory": ("above", "WARNING"),
    "node_cpu_utilization": ("above", "WARNING"),
    "node_persistent_storage": ("above", "WARNING"),
}
CLUSTER_ALERTS = {
    "cluster_multiple_nodes_down": ("true", "ERROR"),
    "cluster_too_few_nodes_for_replication": ("true", "WARNING"),
}
CLUSTER_DEFAULTS = {
    "node_failed": {"enabled": True},
    "node_memory": {"enabled": True, "threshold": "90"},
    "node_cpu_utilization": {"enabled": True, "threshold": "90"},
    "node_persistent_storage": {"enabled": True, "threshold": "90"},
    "cluster_multiple_nodes_down": {"enabled": True},
    "cluster_too_few_nodes_for_replication": {"enabled": True},
}
# What a finished action is called in the event log: name -> (completed, failed)
ACTION_EVENTS = {
    "bdb_create": ("bdb_created", "bdb_creation_failed"),
    "bdb_update": ("bdb_updated", "bdb_update_failed"),
    "bdb_delete": ("bdb_deleted", "bdb_deletion_failed"),
    "bdb_reshard": ("bdb_resharded", "bdb_reshard_failed"),
    "bdb_backup": ("backup_succeeded", "backup_failed"),
    "bdb_import": ("import_succeeded", "import_failed"),
    "shard_failover": ("failover", "failover_failed"),
    "shard_migrate": ("shard_migrated", "shard_migration_failed"),
    "node_add": ("node_joined", "node_join_failed"),
    "node_remove": ("node_removed", "node_removal_failed"),
}


def alert_field(object_type: str, uid: int | None, name: str) -> str:
    return f"{object_type}:{uid or 0}:{name}"


async def cluster_settings(r) -> dict:
    """The cluster's and nodes' alert settings as set (CLUSTER_DEFAULTS fill in the others)."""
    return ccs.unpack(await r.execute("GET", CLUSTER_SETTINGS)) or {}


def threshold_of(settings: dict | None) -> float | None:
    try:
        return float((settings or {}).get("threshold"))
    except (TypeError, ValueError):
        return None


class Hysteresis:
    """Consecutive evaluations past a threshold, per alert (in memory: a new master starts
    counting again, from the states stored in CCS)."""

    def __init__(self):
        self.streak: dict[str, int] = {}

    def step(self, field: str, raised: bool, direction: str, value, threshold) -> bool:
        """The alert's new state, from its current one and this evaluation's value."""
        if direction == "true":
            past, back = bool(value), not value
        elif value is None or threshold is None:
            self.streak.pop(field, None)
            return raised
        elif direction == "above":
            past = value > threshold
            back = value < threshold - abs(threshold) * CLEAR_MARGIN
        else:
            past = value < threshold
            back = value > threshold + abs(threshold) * CLEAR_MARGIN
        moving = back if raised else past
        if not moving:
            self.streak.pop(field, None)
            return raised
        self.streak[field] = self.streak.get(field, 0) + 1
        if self.streak[field] >= (CLEAR_AFTER if raised else RAISE_AFTER):
            self.streak.pop(field, None)
            return not raised
        return raised


def event(kind: str, severity: str, description: str, **about) -> dict:
    return {"time": time.time(), "type": kind, "severity": severity,
            "description": description, **{k: v for k, v in about.items() if v is not None}}


async def log_events(r, events: list[dict]) -> None:
    if not events:
        return
    await r.pipeline([("RPUSH", LOGS, *(ccs.pack(e) for e in events)),
                      ("LTRIM", LOGS, -LOG_LIMIT, -1)])


async def read_alerts(r) -> dict[str, dict]:
    return ccs.str_hash(await r.execute("HGETALL", ALERTS))


async def read_logs(r) -> list[dict]:
    return [ccs.unpack(v) for v in await r.execute("LRANGE", LOGS, 0, -1) or []]


def public_alert(alert: dict) -> dict:
    """An alert as RE's REST API shows it (times as ISO 8601)."""
    from control.stats_store import iso
    out = {k: v for k, v in alert.items() if k not in ("object_type", "object_uid")}
    if alert.get("change_time"):
        out["change_time"] = iso(alert["change_time"])
    return out
