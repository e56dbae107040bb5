"""The statistics history in CCS: its keys, its intervals, and how the REST API and alert_mgr
read it back (control/stats_archiver.py writes it).

Every node's stats_archiver writes what its node owns (control/node_figures.py): its node's
figures, its own shards', and its part of each database (its proxy's endpoint, its master
shards), as bounded lists of points, one list per interval and series:

    stats:<interval>:node:<node uid>
    stats:<interval>:shard:<shard uid>
    stats:<interval>:bdb:<bdb uid>:<node uid>      one node's part of the database

A point is a msgpack map {stime, etime (epoch seconds), <RE statistic>: value, ...}. Kept in
CCS, the history survives a node restart, a whole-cluster stop and a change of master node (the
lists replicate like every key); it is not announced on `ccs:changes`. A database's point is the
sum of its parts with the same stime (averages made from the sums: node_figures.finish); the
cluster's, the sum of the nodes' (CPU portions averaged).
"""

from __future__ import annotations

import datetime

from control import ccs
from control.node_figures import finish

# RE's intervals: name -> (seconds, points kept)
INTERVALS = {
    "1sec": (1, 300),           # 5 minutes
    "10sec": (10, 360),         # 1 hour
    "5min": (300, 288),         # 1 day
    "15min": (900, 672),        # 1 week
    "1hour": (3600, 720),       # 30 days
    "12hour": (43200, 730),     # 1 year
    "1week": (604800, 260),     # 5 years
}
NAMES = tuple(INTERVALS)
AVERAGED = ("cpu_user", "cpu_system", "cpu_idle")   # a cluster's CPU portions: the mean


def key(interval: str, kind: str, uid: int, node: int | None = None) -> str:
    return f"stats:{interval}:{kind}:{uid}" + (f":{node}" if node is not None else "")


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """An ISO 8601 time (`2024-01-01T10:00:00Z`; without a zone, UTC) as epoch seconds.
    ValueError if it is not one."""
    if not text:
        return None
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def mean(points: list[dict]) -> dict:
    """One point for several consecutive ones: each statistic's mean over the points that have
    it (rates stay rates, gauges become their average)."""
    out: dict = {}
    for name in {k for p in points for k in p} - {"stime", "etime"}:
        values = [p[name] for p in points if isinstance(p.get(name), (int, float))]
        if values:
            out[name] = sum(values) / len(values)
    return out


def total(points: list[dict], averaged=()) -> dict:
    """The sum of the parts of one object at one time (the `averaged` statistics: the mean)."""
    out: dict = {}
    for name in {k for p in points for k in p} - {"stime", "etime", "role", "bdb_uid"}:
        values = [p[name] for p in points if isinstance(p.get(name), (int, float))]
        if values:
            out[name] = sum(values) / len(values) if name in averaged else sum(values)
    return out


async def read_points(r, keys: list[str]) -> list[list[dict]]:
    if not keys:
        return []
    replies = await r.pipeline([("LRANGE", k, 0, -1) for k in keys])
    return [[ccs.unpack(v) for v in reply or []] if isinstance(reply, list) else []
            for reply in replies]


async def scan(r, pattern: str) -> list[str]:
    found, cursor = set(), b"0"
    while True:
        cursor, keys = await r.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found.update(k.decode() for k in keys)
        if cursor in (b"0", 0, "0"):
            return sorted(found)


def merged(series: list[list[dict]], *, bdb: bool = False, averaged=()) -> list[dict]:
    """Points of several series summed per stime, oldest first."""
    by_time: dict[int, list[dict]] = {}
    for points in series:
        for p in points:
            by_time.setdefault(p["stime"], []).append(p)
    out = []
    for stime in sorted(by_time):
        parts = by_time[stime]
        point = total(parts, averaged)
        if bdb:
            point = finish(point)
        out.append({"stime": stime, "etime": max(p["etime"] for p in parts), **point})
    return out


def window(points: list[dict], stime: float | None, etime: float | None) -> list[dict]:
    return [p for p in points if (stime is None or p["stime"] >= stime)
            and (etime is None or p["etime"] <= etime)]


async def bdb_history(r, interval: str, uid: int) -> list[dict]:
    keys = await scan(r, key(interval, "bdb", uid) + ":*")
    return merged(await read_points(r, keys), bdb=True)


async def object_history(r, interval: str, kind: str, uid: int) -> list[dict]:
    (points,) = await read_points(r, [key(interval, kind, uid)])
    return points


async def cluster_history(r, interval: str, node_uids) -> list[dict]:
    keys = [key(interval, "node", u) for u in node_uids]
    return merged(await read_points(r, keys), averaged=AVERAGED)


def public(interval: str, point: dict) -> dict:
    """A point as RE's REST API shows it."""
    return {"interval": interval, **point, "stime": iso(point["stime"]),
            "etime": iso(point["etime"])}
