"""node_add: wait until a node that joined runs its services and serves every database."""

from __future__ import annotations

import trio

from control import ccs, schema
from control.machines.base import ACK_TIMEOUT, START_TIMEOUT, ActionFailed, Machine


class NodeAdd(Machine):
    """object_uid: a node that joined through cluster_wd. Done when its heartbeat is in CCS with
    its database services running, and its dmcproxy serves the newest map of every database;
    from then on placement uses it."""
    steps = (("heartbeat", 40), ("serve", 100))

    async def heartbeat(self) -> None:
        uid = self.action.object_uid
        deadline = trio.current_time() + START_TIMEOUT
        while True:
            beat = await ccs.read(self.redis, ccs.heartbeat_key(uid))
            states = {s["name"]: s["state"] for s in (beat or {}).get("services", [])}
            if beat and all(states.get(n) == "RUNNING" for n in ("redis_mgr", "dmcproxy")):
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"node {uid} is not up with its services ({states})")
            await self.exec.session.wait_changed(0.2)

    async def serve(self) -> None:
        uid = self.action.object_uid
        deadline = trio.current_time() + ACK_TIMEOUT
        while True:
            behind = []
            for bdb_uid in await schema.bdbs(self.redis):
                current = await self.current_map(bdb_uid)
                ack = (await ccs.read_hash(self.redis, schema.ack_key(bdb_uid))).get(uid) or {}
                if current and ack.get("version", 0) < current.version:
                    behind.append(bdb_uid)
            if not behind:
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"node {uid} does not serve databases {behind}")
            await self.exec.session.wait_changed(0.2)
