"""The REST API's statistics, alerts and event log, in Redis Enterprise's shape; registered on
cnm_http's application by `add_routes` (before `/v1/bdbs/{uid}`, whose path would take
`stats`). Read from CCS like every GET (control/stats_store.py, control/alerts.py).

    GET /v1/bdbs/stats[/<uid>]   /v1/bdbs/stats/last[/<uid>]
    GET /v1/nodes/stats[/<uid>]  /v1/nodes/stats/last[/<uid>]
    GET /v1/shards/stats[/<uid>] /v1/shards/stats/last[/<uid>]   (?parent_uid=<bdb>)
    GET /v1/cluster/stats        /v1/cluster/stats/last
        ?interval=1sec|10sec|5min|15min|1hour|12hour|1week (default 1sec), stime, etime
        (ISO 8601); the history is [{uid, intervals: [{interval, stime, etime, <stat>...}]}],
        `/last` the newest point {uid: {interval, stime, etime, ...}}
    GET /v1/bdbs/alerts[/<uid>], /v1/nodes/alerts[/<uid>], /v1/cluster/alerts
        {uid: {alert name: {state, enabled, severity, threshold, change_time, change_value}}}
    GET /v1/logs?stime=&etime=&order=asc|desc&limit=    the event log
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Query

from control import alerts, ccs, schema
from control.rest_models import ERRORS
from control import stats_store as store

Interval = Literal[store.NAMES]


def add_routes(app: FastAPI, api, ApiError, _not_found) -> None:   # noqa: N803
    """`ApiError` and `_not_found` are cnm_http's (passed in: run as `python -m`, that module
    is `__main__`, and its handlers know its own classes only)."""

    def span(stime: str | None, etime: str | None) -> tuple[float | None, float | None]:
        try:
            return store.parse_time(stime), store.parse_time(etime)
        except ValueError as exc:
            raise ApiError(400, "invalid_schema", f"stime/etime: {exc} (ISO 8601 "
                           "expected, such as 2024-01-01T10:00:00Z)") from None

    def intervals(interval: str, points: list[dict], stime, etime) -> list[dict]:
        start, end = span(stime, etime)
        return [store.public(interval, p) for p in store.window(points, start, end)]

    def last(interval: str, points: list[dict]) -> dict:
        return store.public(interval, points[-1]) if points else {}

    async def histories(kind: str, uids, interval: str) -> dict[int, list[dict]]:
        r = await api.reader()
        if kind == "bdb":
            return {u: await store.bdb_history(r, interval, u) for u in uids}
        return {u: await store.object_history(r, interval, kind, u) for u in uids}

    async def objects(kind: str, uid: int | None) -> list[int]:
        r = await api.reader()
        found = {"bdb": lambda: schema.bdbs(r), "shard": lambda: schema.shards(r),
                 "node": lambda: ccs.read_hash(r, ccs.NODES)}[kind]
        uids = sorted(await found())
        if uid is not None:
            if uid not in uids:
                raise _not_found(kind, uid)
            return [uid]
        return uids

    # ---- statistics ----

    NOT_FOUND = {404: ERRORS[404]}      # a uid that names no such object

    for kind, path in (("bdb", "bdbs"), ("node", "nodes"), ("shard", "shards")):
        def routes(kind=kind, path=path):
            @app.get(f"/v1/{path}/stats/last", tags=["stats"],
                     summary=f"The newest statistics of every {kind}")
            async def all_last(interval: Interval = "1sec"):
                found = await histories(kind, await objects(kind, None), interval)
                return {str(u): last(interval, p) for u, p in found.items()}

            @app.get(f"/v1/{path}/stats/last/{{uid}}", tags=["stats"], responses=NOT_FOUND,
                     summary=f"The newest statistics of one {kind}")
            async def one_last(uid: int, interval: Interval = "1sec"):
                found = await histories(kind, await objects(kind, uid), interval)
                return {str(uid): last(interval, found[uid])}

            @app.get(f"/v1/{path}/stats", tags=["stats"],
                     summary=f"The statistics history of every {kind}")
            async def all_stats(interval: Interval = "1sec", stime: str | None = None,
                                etime: str | None = None, parent_uid: int | None = None):
                uids = await objects(kind, None)
                if kind == "shard" and parent_uid is not None:
                    shards = await schema.shards(await api.reader())
                    uids = [u for u in uids if u in shards and shards[u].bdb_uid == parent_uid]
                found = await histories(kind, uids, interval)
                return [await describe(kind, u, intervals(interval, p, stime, etime))
                        for u, p in found.items()]

            @app.get(f"/v1/{path}/stats/{{uid}}", tags=["stats"], responses=NOT_FOUND,
                     summary=f"The statistics history of one {kind}")
            async def one_stats(uid: int, interval: Interval = "1sec",
                                stime: str | None = None, etime: str | None = None):
                found = await histories(kind, await objects(kind, uid), interval)
                return await describe(kind, uid, intervals(interval, found[uid], stime, etime))
        routes()

    async def describe(kind: str, uid: int, points: list[dict]) -> dict:
        out: dict = {"uid": str(uid), "intervals": points}
        if kind == "shard":
            r = await api.reader()
            shard = await schema.get_shard(r, uid)
            state = ccs.unpack(await r.execute("HGET", schema.SHARD_STATE, str(uid))) or {}
            if shard is not None:
                out.update(node_uid=str(shard.node_uid), role=shard.role,
                           bdb_uid=shard.bdb_uid)
            out["status"] = state.get("status", "unknown")
        return out

    async def cluster_points(interval: str) -> list[dict]:
        r = await api.reader()
        return await store.cluster_history(r, interval, await ccs.read_hash(r, ccs.NODES))

    @app.get("/v1/cluster/stats/last", tags=["stats"],
             summary="The newest statistics of the cluster (the sum of its nodes')")
    async def cluster_last(interval: Interval = "1sec"):
        return last(interval, await cluster_points(interval))

    @app.get("/v1/cluster/stats", tags=["stats"],
             summary="The statistics history of the cluster")
    async def cluster_stats(interval: Interval = "1sec", stime: str | None = None,
                            etime: str | None = None):
        return {"intervals": intervals(interval, await cluster_points(interval), stime, etime)}

    # ---- alerts ----

    async def alerts_of(object_type: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for alert in (await alerts.read_alerts(await api.reader())).values():
            if alert.get("object_type") == object_type:
                out.setdefault(str(alert.get("object_uid") or 0), {})[alert["name"]] = \
                    alerts.public_alert(alert)
        return out

    for kind, path in (("bdb", "bdbs"), ("node", "nodes")):
        def alert_routes(kind=kind, path=path):
            @app.get(f"/v1/{path}/alerts", tags=["alerts"], summary=f"Every {kind}'s alerts")
            async def every_alert():
                return await alerts_of(kind)

            @app.get(f"/v1/{path}/alerts/{{uid}}", tags=["alerts"], responses=NOT_FOUND,
                     summary=f"One {kind}'s alerts")
            async def one_alerts(uid: int):
                await objects(kind, uid)
                return (await alerts_of(kind)).get(str(uid), {})
        alert_routes()

    @app.get("/v1/cluster/alerts", tags=["alerts"], summary="The cluster's alerts")
    async def cluster_alerts():
        return (await alerts_of("cluster")).get("0", {})

    # ---- the event log ----

    @app.get("/v1/logs", tags=["logs"], summary="The cluster's event log")
    async def logs(stime: str | None = None, etime: str | None = None,
                   order: Literal["asc", "desc"] = "desc",
                   limit: int | None = Query(None, ge=1), offset: int = Query(0, ge=0)):
        start, end = span(stime, etime)
        events = [e for e in await alerts.read_logs(await api.reader())
                  if (start is None or e["time"] >= start) and (end is None or e["time"] <= end)]
        if order == "desc":
            events.reverse()
        events = events[offset:offset + limit if limit else None]
        return [{**e, "time": store.iso(e["time"])} for e in events]
