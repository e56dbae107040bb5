"""cnm_exec: the action runner. It picks up every pending or active action in CCS (`actions`)
and runs it with its state machine (the registry is control/machines/__init__.py, one module
per machine), one Trio task per action.

Every node runs cnm_exec; only the one on the master node acts, and it reads and writes CCS on
its own copy only, which is writable only while its node is the elected master holding a lease
(control/election.py). So a node that lost its mastership cannot change anything: its writes are
refused (-NOREPLICAS, -READONLY) and its running actions are cancelled, to be resumed by the next
master from the last step saved.

Actions come from cnm_http (a user's request), job_scheduler (scheduled backups), node_wd (a
failed master shard's failover, a lost replica's replacement) and `dmc node add|remove`.
"""

from __future__ import annotations

import logging

import trio

from control import ccs, schema
from control.cluster_view import master_here
from control.machines import MACHINES
from control.machines.base import TICK, NotMaster
from control.node import NodeConfig, service_command
from control.redis_client import RedisUnavailable, ReplyError

log = logging.getLogger("cnm_exec")


class CnmExec:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.tls = config.control_plane_tls()     # for node_remove's requests to cluster_wd
        self.running: dict[str, trio.CancelScope] = {}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.watch)
            while True:
                await self.session.wait_changed(TICK)
                try:
                    if await master_here(await self.session.local(), self.config.uid):
                        await self.pick_up(nursery)
                    else:
                        for scope in self.running.values():
                            scope.cancel()
                except (RedisUnavailable, ReplyError) as exc:
                    log.info("tick skipped: %s", exc)

    async def pick_up(self, nursery) -> None:
        """Start every unfinished action that is not running yet (and drop the database locks
        that ended actions left behind: schema.release_ended)."""
        redis = await self.session.local()
        actions = await schema.actions(redis)
        for bdb_uid in await schema.release_ended(redis, actions):
            log.warning("database %d: lock of an ended action released", bdb_uid)
        for uid, action in actions.items():
            if action.status in ("pending", "active") and uid not in self.running:
                machine = MACHINES.get(action.name)
                if machine is None:
                    schema.set_fields(action, status="failed",
                                      error=f"unknown action {action.name}")
                    await schema.put_action(redis, action)
                    continue
                self.running[uid] = trio.CancelScope()
                nursery.start_soon(self._run_action, machine, action)

    async def _run_action(self, machine, action: schema.Action) -> None:
        uid = action.action_uid
        with self.running[uid]:
            try:
                await machine(self, await self.session.local(), action).run()
            except (RedisUnavailable, ReplyError, NotMaster) as exc:
                log.warning("action %s (%s) left for the next master: %s", uid, action.name, exc)
            finally:
                self.running.pop(uid, None)


main = service_command("cnm_exec", CnmExec)

if __name__ == "__main__":
    main()
