"""node_remove: move every shard off a node (a shard_migrate each), then the node leaves."""

from __future__ import annotations

import trio

from control import ccs, schema
from control.cluster_view import node_load, pair_nodes, pick_node
from control.cluster_wd import request
from control.machines.base import ActionFailed, Machine
from control.redis_client import RedisUnavailable


class NodeRemove(Machine):
    """object_uid: the node. Every shard on it moves to another node (one shard_migrate action
    each, run by this same cnm_exec, so each takes its database's lock like any change), then the
    node leaves the membership through cluster_wd. The master node itself is not removed.
    Shards that have failed (the node is down: a master node stopped so that another removes
    it) are left to node_wd's HA policy, which moves them off: the drain waits for it."""
    steps = (("drain", 90), ("leave", 100))

    @property
    def node_uid(self) -> int:
        return self.action.object_uid

    async def drain(self) -> None:
        if self.node_uid == self.exec.config.uid:
            raise ActionFailed("the master node cannot remove itself; remove it from another "
                               "master (stop it first, and another node takes over)")
        children = self.state.setdefault("children", {})
        deadline = trio.current_time() + 600
        while True:
            view = await self.view()
            shards = {u: s for u, s in view.shards.items() if s.node_uid == self.node_uid}
            if not shards:
                return
            if trio.current_time() > deadline:
                raise ActionFailed(f"shards {sorted(shards)} still on node {self.node_uid}")
            for uid, shard in shards.items():
                if view.failed(shard):
                    # Its node is down (the master node, stopped to be removed, say) or it
                    # does not serve: node_wd's HA policy fails a master over and re-creates
                    # a replica elsewhere. A migration would copy from a shard that does not
                    # answer and hold the database's lock that the failover needs.
                    continue
                child = children.get(str(uid))
                if child is not None:
                    found = await schema.get_action(self.redis, child)
                    if found and found.status in ("pending", "active"):
                        continue
                    if found and found.status == "failed":
                        raise ActionFailed(f"moving shard {uid}: {found.error}")
                target = await self._target(shard)
                action = schema.new_action("shard_migrate", "shard", uid,
                                           {"target_node_uid": target})
                action.bdb_uid = shard.bdb_uid
                try:
                    await schema.submit(self.redis, action, lock_bdb=shard.bdb_uid)
                except schema.Conflict:
                    continue            # its database is busy: tried again below
                children[str(uid)] = action.action_uid
                await self.save()
            self.action.progress = max(self.action.progress, 90 - 9 * len(shards))
            await self.save()
            await self.exec.session.wait_changed(0.2)

    async def _target(self, shard: schema.Shard) -> int:
        every = await schema.shards(self.redis)
        node = pick_node(await self.up(), {self.node_uid} | pair_nodes(shard, every),
                         node_load(every))
        if node is None:
            raise ActionFailed(f"no node can take shard {shard.uid}")
        return node

    async def leave(self) -> None:
        if "member" not in self.state:
            self.state["member"] = (await ccs.read_hash(self.redis, ccs.NODES)).get(
                self.node_uid) or {}
        try:
            reply = await request(self.exec.config.address, self.exec.config.gossip_port,
                                  {"op": "leave", "uid": self.node_uid}, 5.0,
                                  ssl_context=self.exec.tls.client())
        except (OSError, trio.TooSlowError, ValueError) as exc:
            raise RedisUnavailable(f"cluster_wd did not answer: {exc!r}") from exc
        if not reply.get("ok") and "is not a member" not in str(reply.get("error")):
            raise ActionFailed(f"node {self.node_uid} did not leave: {reply.get('error')}")
        # The node itself is told, if it answers, and stops its services (cluster_wd's
        # "removed"); one that is down learns nothing but is no member: it is refused as one.
        member = self.state.get("member") or {}
        if member:
            try:
                await request(member["address"], member["gossip_port"],
                              {"op": "removed"}, 5.0, ssl_context=self.exec.tls.client())
            except (OSError, trio.TooSlowError, ValueError, ConnectionError):
                pass
