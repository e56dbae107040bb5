"""A node's own figures, read fresh and turned into Redis Enterprise's statistics: what
metrics_exporter exports, stats_archiver keeps and alert_mgr and resource_mgr judge.

A node reports only what it owns, so that every figure is counted once in the cluster:

- its dmcproxy's endpoints (control/proxy_stats.py): one part of each database's requests,
  connections and bytes; a database's total is the sum over the nodes;
- its own shards (INFO of each redis-server that CCS places on it): a database's memory, keys,
  evictions and expirations are the sums over its *master* shards (a replica holds a copy, not
  more data), each master reported by its node;
- the machine: CPU times, memory, the free space of the disk holding the node's folder.

`Reading` is the raw, cumulative figures at one time; `figures(before, now)` makes the RE
statistics of the span between two readings (rates per second, averages, gauges), as
{"node": {...}, "bdbs": {uid: {...}}, "shards": {uid: {...}}}. A figure the source did not give
(an older dmcproxy without counters, a shard that did not answer) is absent, not zero.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field

import psutil
import trio

from control import ccs, schema, shard_link
from control.proxy_stats import read_proxy_stats
from control.redis_client import RedisUnavailable, ReplyError, parse_info

log = logging.getLogger("node_figures")

READ_DEADLINE = 1.5         # a reading waits this long for its slowest source
CLASSES = ("read", "write", "other")
# The proxy's cumulative counters (control/proxy_stats.py's contract) that become rates.
RATE_COUNTERS = ("read_req", "write_req", "other_req", "read_res", "write_res", "other_res",
                 "total_req", "total_res", "ingress_bytes", "egress_bytes",
                 "total_connections_received", "rejected_connections", "errors",
                 "auth_failures")
GAUGES = ("conns", "monitors", "pubsub_channels", "pubsub_patterns", "max_pipeline")
MASTER_LINK = {"up": 1, "down": 2}       # RE's redis_master_link_status; 3: none (a master)


def proxy_counters(stats: dict) -> dict:
    """The cumulative figures of one endpoint, from its stats: the data path's `counters`
    where it has them; connections (and the total of commands) from the older fields."""
    counters = dict(stats.get("counters") or {})
    out = {k: v for k, v in counters.items() if isinstance(v, (int, float))}
    out.setdefault("conns", stats.get("clients"))
    out.setdefault("total_connections_received", stats.get("total_connections"))
    out.setdefault("rejected_connections", stats.get("rejected_connections"))
    if all(f"{c}_req" in out for c in CLASSES):
        out["total_req"] = sum(out[f"{c}_req"] for c in CLASSES)
    elif isinstance(stats.get("commands"), dict):      # calls per command: a total only
        out["total_req"] = sum(v[0] for v in stats["commands"].values())
    if all(f"{c}_res" in out for c in CLASSES):
        out["total_res"] = sum(out[f"{c}_res"] for c in CLASSES)
    if all(f"{c}_latency_us" in out for c in CLASSES):
        out["latency_us"] = sum(out[f"{c}_latency_us"] for c in CLASSES)
    if "latency_buckets_us" in counters and "latency_histogram" in counters:
        out["latency_buckets_us"] = list(counters["latency_buckets_us"])
        out["latency_histogram"] = dict(counters["latency_histogram"])
    return {k: v for k, v in out.items() if v is not None}


def shard_figures(info: dict[str, str]) -> dict:
    """What a shard's INFO says, as numbers."""
    def num(name, kind=int):
        try:
            return kind(info[name])
        except (KeyError, ValueError):
            return None
    keys = 0
    db0 = info.get("db0")
    if db0:
        keys = int(dict(p.split("=") for p in db0.split(","))["keys"])
    role = "master" if info.get("role") == "master" else "replica"
    out = {"up": 1, "role": role, "used_memory": num("used_memory"),
           "maxmemory": num("maxmemory"), "connected_clients": num("connected_clients"),
           "db0_keys": keys, "evicted_keys": num("evicted_keys"),
           "expired_keys": num("expired_keys"),
           "instantaneous_ops_per_sec": num("instantaneous_ops_per_sec"),
           "total_commands_processed": num("total_commands_processed"),
           "master_repl_offset": num("master_repl_offset"),
           "master_link_status": MASTER_LINK.get(info.get("master_link_status"), 3)}
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class Reading:
    """The raw, cumulative figures of a node at `time`."""
    time: float
    node: dict = field(default_factory=dict)
    proxies: dict[int, dict] = field(default_factory=dict)     # bdb uid -> proxy_counters
    shards: dict[int, dict] = field(default_factory=dict)      # shard uid -> shard_figures
    bdbs: dict[int, schema.Bdb] = field(default_factory=dict)
    shard_records: dict[int, schema.Shard] = field(default_factory=dict)

    def bdb_of(self, shard_uid: int) -> int | None:
        """The database of a shard (None: CCS did not answer this reading)."""
        record = self.shard_records.get(shard_uid)
        return record.bdb_uid if record is not None else None


def machine_figures(path) -> dict:
    cpu = psutil.cpu_times()
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(path)
    return {"cpu_user": cpu.user + getattr(cpu, "nice", 0.0), "cpu_system": cpu.system,
            "cpu_idle": cpu.idle, "cpu_total": sum(cpu),
            "free_memory": memory.available, "total_memory": memory.total,
            "persistent_storage_free": disk.free, "persistent_storage_size": disk.total}


class NodeReader:
    """Reads a node's figures; keeps one connection per shard between readings."""

    def __init__(self, config, session):
        self.config, self.session = config, session
        self.conns: dict[int, object] = {}         # shard port -> connection

    async def read(self, deadline: float = READ_DEADLINE) -> Reading:
        reading = Reading(time=time.time())
        reading.node = await trio.to_thread.run_sync(machine_figures, self.config.dir)
        try:
            local = await self.session.local()
            reading.bdbs = await schema.bdbs(local)
            reading.shard_records = await schema.shards(local)
            reading.node["member"] = bool(await local.execute(
                "EXISTS", ccs.heartbeat_key(self.config.uid)))
        except (RedisUnavailable, ReplyError) as exc:
            log.info("CCS away: no database figures (%s)", exc)
        mine = {u: s for u, s in reading.shard_records.items()
                if s.node_uid == self.config.uid}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_proxy, reading, deadline)
            for uid, shard in mine.items():
                nursery.start_soon(self._read_shard, reading, uid, shard, deadline)
        for port in [p for p in self.conns if p not in {s.port for s in mine.values()}]:
            await self.conns.pop(port).aclose()
        return reading

    async def _read_proxy(self, reading: Reading, deadline: float) -> None:
        try:
            stats = await read_proxy_stats(self.config, deadline)
        except (OSError, ValueError) as exc:
            log.debug("no proxy figures: %s", exc)
            return
        reading.proxies = {uid: proxy_counters(s) for uid, s in stats.items()}

    async def _read_shard(self, reading: Reading, uid: int, shard: schema.Shard,
                          deadline) -> None:
        port = shard.port
        with trio.move_on_after(deadline):
            try:
                conn = self.conns.get(port)
                if conn is None or conn.closed:
                    conn = self.conns[port] = await shard_link.local_link(
                        self.config, shard).connect(timeout=deadline)
                reading.shards[uid] = shard_figures(parse_info(await conn.execute("INFO")))
                return
            except (RedisUnavailable, ReplyError) as exc:
                log.debug("shard %d: no INFO: %s", uid, exc)
        conn = self.conns.pop(port, None)
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()
        reading.shards[uid] = {"up": 0, "role": shard.role}

    async def aclose(self) -> None:
        for conn in self.conns.values():
            await conn.aclose()
        self.conns.clear()


# ---- from two readings, RE's statistics -------------------------------------------------------

def _rate(before: dict, now: dict, name: str, seconds: float) -> float | None:
    if name not in now or name not in before or seconds <= 0:
        return None
    delta = now[name] - before[name]
    return max(delta, 0) / seconds      # a counter that restarted counts from 0 again


def bdb_part(before: Reading, now: Reading, uid: int) -> dict:
    """This node's part of database `uid` over the span: sums of these over the nodes are the
    database's figures (averages are made from the sums: see `finish`)."""
    seconds = now.time - before.time
    out: dict = {}
    p_now, p_before = now.proxies.get(uid), before.proxies.get(uid)
    if p_now is not None:
        for name in GAUGES:
            if name in p_now:
                out[name] = p_now[name]
        if p_before is not None:
            for name in RATE_COUNTERS:
                value = _rate(p_before, p_now, name, seconds)
                if value is not None:
                    out[name] = value
            for c in CLASSES:   # latency per second of time: divided by responses in finish()
                value = _rate(p_before, p_now, f"{c}_latency_us", seconds)
                if value is not None:
                    out[f"acc_{c}_latency"] = value / 1e6
            value = _rate(p_before, p_now, "latency_us", seconds)
            if value is not None:
                out["acc_latency"] = value / 1e6
    masters = [(u, s) for u, s in now.shards.items() if s.get("role") == "master"
               and now.bdb_of(u) == uid and s.get("up")]
    if masters:
        out["used_memory"] = sum(s.get("used_memory", 0) for _, s in masters)
        out["no_of_keys"] = sum(s.get("db0_keys", 0) for _, s in masters)
        out["instantaneous_ops_per_sec"] = sum(s.get("instantaneous_ops_per_sec", 0)
                                               for _, s in masters)
        for ours, theirs in (("evicted_objects", "evicted_keys"),
                             ("expired_objects", "expired_keys")):
            rates = [_rate(before.shards.get(u) or {}, s, theirs, seconds) for u, s in masters]
            if all(r is not None for r in rates):
                out[ours] = sum(rates)
    return out


def finish(bdb: dict) -> dict:
    """A database's statistics from the sum of its parts: the average latencies (seconds)."""
    out = dict(bdb)
    for prefix, res in (("", "total_res"), ("read_", "read_res"), ("write_", "write_res"),
                        ("other_", "other_res")):
        acc = out.get(f"acc_{prefix}latency")
        if acc is not None and out.get(res):
            out[f"avg_{prefix}latency"] = acc / out[res]
    return out


def node_stats(before: Reading, now: Reading) -> dict:
    seconds = now.time - before.time
    out = {k: now.node[k] for k in ("free_memory", "total_memory", "persistent_storage_free",
                                    "persistent_storage_size") if k in now.node}
    out["persistent_storage_avail"] = now.node.get("persistent_storage_free")
    # Available for provisioning: free memory less what this node's shards may still grow to.
    reserved = sum(max((s.get("maxmemory") or 0) - (s.get("used_memory") or 0), 0)
                   for s in now.shards.values() if s.get("up"))
    if "free_memory" in out:
        out["available_memory"] = max(out["free_memory"] - reserved, 0)
    cpu_span = now.node.get("cpu_total", 0) - before.node.get("cpu_total", 0)
    if cpu_span > 0:
        for name in ("cpu_user", "cpu_system", "cpu_idle"):
            out[name] = max(now.node[name] - before.node[name], 0) / cpu_span
    parts = [bdb_part(before, now, u) for u in now.proxies]
    out["conns"] = sum(p.get("conns", 0) for p in parts)
    for name in ("total_req", "ingress_bytes", "egress_bytes"):
        values = [p[name] for p in parts if name in p]
        if values or not parts:
            out[name] = sum(values)
    if seconds <= 0:
        for name in ("total_req", "ingress_bytes", "egress_bytes"):
            out.pop(name, None)
    return out


def shard_stats(before: Reading, now: Reading, uid: int) -> dict:
    s = now.shards.get(uid) or {}
    record = now.shard_records.get(uid)
    out = {"up": s.get("up", 0), "role": s.get("role") or (record.role if record else None),
           "bdb_uid": now.bdb_of(uid)}
    for name in ("used_memory", "connected_clients", "master_repl_offset", "master_link_status",
                 "instantaneous_ops_per_sec"):
        if name in s:
            out[name] = s[name]
    if "db0_keys" in s:
        out["no_of_keys"] = s["db0_keys"]
    seconds = now.time - before.time
    for ours, theirs in (("evicted_objects", "evicted_keys"), ("expired_objects", "expired_keys"),
                         ("total_req", "total_commands_processed")):
        value = _rate(before.shards.get(uid) or {}, s, theirs, seconds)
        if value is not None:
            out[ours] = value
    return out


def figures(before: Reading, now: Reading) -> dict:
    """RE's statistics of this node over the span from `before` to `now`."""
    bdbs = {u: bdb_part(before, now, u) for u in set(now.proxies) |
            {now.bdb_of(s) for s in now.shards} if u in now.bdbs}
    return {"node": node_stats(before, now), "bdbs": bdbs,
            "shards": {u: shard_stats(before, now, u) for u in now.shards}}
