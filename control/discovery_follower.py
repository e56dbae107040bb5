"""The discovery view (control/discovery.py) as the node's own CCS copy holds it, kept current
for sentinel_service and pdns_server: `ViewFollower` re-reads it on every change notice (and
every REFRESH_EVERY), each read bounded by READ_TIMEOUT, so that the services never block on
CCS and keep serving their last view while it is away.

The last view is also kept on disk (`run/discovery_view.json` in the node's folder, rewritten
when it changes): a service started while CCS does not answer (down, or stopped mid-reply)
serves that one from its first request, and is ready at once; it never waits for CCS to start.

The cluster's name comes from CCS (`cluster:fqdn`, set by its first master) when CCS has it,
else from node.json; the zone's SOA serial is CCS's (`cluster:dns_zone`, which the master's
pdns_server moves on when the zone changes: `bump_serial`), so every node gives the same one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import trio

from control import ccs, schema
from control.discovery import DiscoveryView, build_view
from control.node import atomic_write
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("discovery")

READ_TIMEOUT = 2.0          # one read of the view from the node's CCS copy, at most
REFRESH_EVERY = 1.0         # a refresh without change notices


async def read_view(conn, fqdn: str) -> DiscoveryView:
    """The view from one CCS copy, in two round trips; `fqdn` if CCS names no cluster."""
    nodes_raw, bdbs_raw, shards_raw, name, zone = await conn.pipeline(
        [("HGETALL", ccs.NODES), ("HGETALL", schema.BDBS), ("HGETALL", schema.SHARDS),
         ("GET", ccs.FQDN), ("GET", ccs.DNS_ZONE)])
    for reply in (nodes_raw, bdbs_raw, shards_raw, name, zone):
        if isinstance(reply, ReplyError):
            raise reply
    nodes = ccs.int_hash(nodes_raw)
    bdbs, shards = ccs.int_hash(bdbs_raw, schema.Bdb), ccs.int_hash(shards_raw, schema.Shard)
    uids, dbs = sorted(nodes), sorted(bdbs)
    cmds = [("MGET", *(ccs.heartbeat_key(u) for u in uids))] if uids else []
    cmds += [("HGETALL", schema.ack_key(u)) for u in dbs]
    replies = await conn.pipeline(cmds) if cmds else []
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
    beats = dict(zip(uids, map(ccs.unpack, replies[0]))) if uids else {}
    acks = {u: ccs.int_hash(r) for u, r in zip(dbs, replies[1 if uids else 0:])}
    return build_view(ccs.unpack(name) or fqdn, nodes, beats, bdbs, shards, acks,
                      read_at=time.time(), serial=(ccs.unpack(zone) or {}).get("serial", 0))


async def bump_serial(conn, view: DiscoveryView) -> int | None:
    """On the master's (writable) copy: a new serial for the zone if `view`, the master's own,
    answers otherwise than the zone the stored serial was given for; the new serial, or None."""
    zone = ccs.unpack(await conn.execute("GET", ccs.DNS_ZONE)) or {}
    digest = view.digest()
    if zone.get("digest") == digest:
        return None
    serial = zone.get("serial", 0) + 1
    await ccs.write(conn, ccs.DNS_ZONE, {"serial": serial, "digest": digest,
                                         "time": time.time()})
    return serial


# ---- following CCS ---------------------------------------------------------------------------

class ViewFollower:
    """The last view of the node's CCS copy; `on_change(old, new)` is called (synchronously)
    after each read that changed it. `cache`: the file the view is kept in across restarts."""

    def __init__(self, session: ccs.Session, fqdn: str,
                 on_change: Callable[[DiscoveryView, DiscoveryView], None] | None = None,
                 cache: Path | None = None):
        self.session = session
        self.fqdn = fqdn
        self.cache = cache
        self.view = self._cached() or DiscoveryView(fqdn)
        self.on_change = on_change
        self.changes = 0          # how many reads changed the view

    def _cached(self) -> DiscoveryView | None:
        if self.cache is None or not self.cache.exists():
            return None
        try:
            return DiscoveryView.from_json(json.loads(self.cache.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s not read: %s", self.cache, exc)
            return None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Ready at once (with the cached view, if any); the reads happen in the background."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.session.watch)
            task_status.started()
            while True:
                await self.refresh()
                await self.session.wait_changed(REFRESH_EVERY)

    async def refresh(self) -> bool:
        """One read; False (and the last view kept) if CCS did not answer in time."""
        try:
            with trio.fail_after(READ_TIMEOUT):
                new = await read_view(await self.session.local(), self.fqdn)
        except (RedisUnavailable, ReplyError, OSError, trio.TooSlowError) as exc:
            # (a read cut short closes its connection: control.redis_client's rule)
            log.debug("CCS not read, serving the last view: %s", exc)
            return False
        old = self.view
        if (old.fqdn, old.nodes, old.dbs, old.serial) != (new.fqdn, new.nodes, new.dbs,
                                                          new.serial):
            self.changes += 1
            self.view = new
            await trio.to_thread.run_sync(self._save, new)
            if self.on_change is not None:
                self.on_change(old, new)
        else:
            old.read_at = new.read_at
        return True

    def _save(self, view: DiscoveryView) -> None:
        if self.cache is not None:
            try:
                atomic_write(self.cache, json.dumps(view.to_json()))
            except OSError as exc:
                log.warning("%s not written: %s", self.cache, exc)
