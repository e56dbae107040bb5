"""stats_archiver: the history of the node's statistics, at Redis Enterprise's intervals (1sec,
10sec, 5min, 15min, 1hour, 12hour, 1week), kept in CCS (control/stats_store.py has the keys and
how they are read back).

Every node runs it, and each writes only its own series (its node, its shards, its part of each
database: control/node_figures.py), to the CCS master through the node's forwarded port:

- once a second, a reading of the node's figures; the statistics of the second that ended are a
  `1sec` point of every series, appended (RPUSH) and the list cut to its bound (LTRIM), in one
  pipeline per second;
- a coarser interval's point is made from the finer interval's stored points once its span has
  ended (and the finer point of its last part had time to be written): the mean of each
  statistic. Made from CCS, not from memory, a point missed while the node was down is made
  after its restart, and a point is never written twice (the list's last stime is checked).

While CCS has no master (an election) the second's points are lost: the history has a gap, the
service goes on. The master's archiver also deletes the series of databases, shards and nodes
that no longer exist, once a minute.
"""

from __future__ import annotations

import logging
import math
import time

import trio

from control import ccs, schema
from control import stats_store as store
from control.cluster_view import master_here
from control.node import NodeConfig, service_command
from control.node_figures import NodeReader, figures
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("stats_archiver")

TICK_OFFSET = 0.05          # read just after each whole second
CLEAN_EVERY = 60.0


def due_bucket(now: float, seconds: int, level: int) -> int:
    """The stime of the last bucket of `seconds` that has ended, `level` + 1 seconds ago at
    least (its finer points, themselves made `level` seconds after their ends, are in)."""
    return math.floor((now - level - 1) / seconds) * seconds - seconds


class StatsArchiver:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.reader = NodeReader(config, self.session)
        self.rolled: dict[tuple[str, str], int] = {}     # (interval, key) -> last stime made
        self.last_clean = 0.0

    async def run(self) -> None:
        before = None
        while True:
            await trio.sleep_until(trio.current_time() + (1 + TICK_OFFSET) - time.time() % 1)
            try:
                now = await self.reader.read()
            except OSError as exc:
                log.info("no reading: %s", exc)
                continue
            if before is not None:
                try:
                    await self.tick(before, now)
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("points of this second not written: %s", exc)
            before = now

    def series(self, stats: dict) -> dict[str, dict]:
        """{series key suffix: point} of this node's statistics (without stime/etime)."""
        me = self.config.uid
        out = {f"node:{me}": stats["node"]}
        out.update({f"shard:{u}": s for u, s in stats["shards"].items()})
        out.update({f"bdb:{u}:{me}": p for u, p in stats["bdbs"].items()})
        return out

    async def tick(self, before, now) -> None:
        stats = figures(before, now)
        second = math.floor(now.time) - 1
        points = self.series(stats)
        r = await self.session.master()
        limit = store.INTERVALS["1sec"][1]
        cmds = []
        for suffix, point in points.items():
            k = f"stats:1sec:{suffix}"
            cmds += [("RPUSH", k, ccs.pack({"stime": second, "etime": second + 1, **point})),
                     ("LTRIM", k, -limit, -1)]
        for reply in await r.pipeline(cmds):
            if isinstance(reply, ReplyError):
                raise reply
        await self.roll_up(r, list(points), now.time)
        if time.time() - self.last_clean > CLEAN_EVERY:
            self.last_clean = time.time()
            if await master_here(await self.session.local(), self.config.uid):
                await self.clean(r)

    async def roll_up(self, r, suffixes: list[str], now: float) -> None:
        names = store.NAMES
        for level in range(1, len(names)):
            finer, name = names[level - 1], names[level]
            (step, limit), finer_step = store.INTERVALS[name], store.INTERVALS[finer][0]
            bucket = due_bucket(now, step, level)
            for suffix in suffixes:
                k = f"stats:{name}:{suffix}"
                if self.rolled.get((name, k), -1) >= bucket:
                    continue
                last = ccs.unpack(await r.execute("LINDEX", k, -1))
                if last is not None and last["stime"] >= bucket:
                    self.rolled[(name, k)] = last["stime"]
                    continue
                raw = await r.execute("LRANGE", f"stats:{finer}:{suffix}",
                                      -(step // finer_step + 2), -1)
                parts = [p for p in map(ccs.unpack, raw or [])
                         if bucket <= p["stime"] < bucket + step]
                if parts:
                    point = {"stime": bucket, "etime": bucket + step, **store.mean(parts)}
                    await r.pipeline([("RPUSH", k, ccs.pack(point)), ("LTRIM", k, -limit, -1)])
                self.rolled[(name, k)] = bucket

    async def clean(self, r) -> None:
        """Delete the series of objects that are gone."""
        bdbs, shards = await schema.bdbs(r), await schema.shards(r)
        nodes = await ccs.read_hash(r, ccs.NODES)
        alive = {"bdb": bdbs, "shard": shards, "node": nodes}
        gone = [k for k in await store.scan(r, "stats:*")
                if len(k.split(":")) >= 4 and k.split(":")[3].isdigit()
                and int(k.split(":")[3]) not in alive.get(k.split(":")[2], {None: 0})]
        if gone:
            await r.execute("DEL", *gone)
            log.info("deleted %d series of objects that are gone", len(gone))


main = service_command("stats_archiver", StatsArchiver)

if __name__ == "__main__":
    main()
