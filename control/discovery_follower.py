"""The discovery view (control/discovery.py) as the node's own CCS copy holds it, kept current
for sentinel_service and pdns_server: `ViewFollower` re-reads it on every change notice (and
every REFRESH_EVERY), each read bounded by READ_TIMEOUT, so that the services never block on
CCS and keep serving their last view while it is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from control import schema
from control import ccs
from control.discovery import DiscoveryView, build_view
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("discovery")

READ_TIMEOUT = 2.0          # one read of the view from the node's CCS copy, at most
REFRESH_EVERY = 1.0         # a refresh without change notices


async def read_view(conn, fqdn: str) -> DiscoveryView:
    """The view from one CCS copy, in two round trips."""
    nodes_raw, bdbs_raw, shards_raw = await conn.pipeline(
        [("HGETALL", ccs.NODES), ("HGETALL", schema.BDBS), ("HGETALL", schema.SHARDS)])
    for reply in (nodes_raw, bdbs_raw, shards_raw):
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
    return build_view(fqdn, nodes, beats, bdbs, shards, acks, read_at=time.time())


# ---- following CCS ---------------------------------------------------------------------------

class ViewFollower:
    """The last view of the node's CCS copy; `on_change(old, new)` is called (synchronously)
    after each read that changed it."""

    def __init__(self, session: ccs.Session, fqdn: str,
                 on_change: Callable[[DiscoveryView, DiscoveryView], None] | None = None):
        self.session = session
        self.view = DiscoveryView(fqdn)
        self.on_change = on_change
        self.changes = 0          # how many reads changed the view (the DNS zone's serial)
        self.serial = int(time.time())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.watch)
            task_status.started()
            while True:
                await self.refresh()
                await self.session.wait_changed(REFRESH_EVERY)

    async def refresh(self) -> bool:
        """One read; False (and the last view kept) if CCS did not answer in time."""
        try:
            with trio.fail_after(READ_TIMEOUT):
                new = await read_view(await self.session.local(), self.view.fqdn)
        except (RedisUnavailable, ReplyError, OSError, trio.TooSlowError) as exc:
            # (a read cut short closes its connection: control.redis_client's rule)
            log.debug("CCS not read, serving the last view: %s", exc)
            return False
        old = self.view
        if (old.nodes, old.dbs) != (new.nodes, new.dbs):
            self.serial = max(self.serial + 1, int(time.time()))
            self.changes += 1
            self.view = new
            if self.on_change is not None:
                self.on_change(old, new)
        else:
            old.read_at = new.read_at
        return True
