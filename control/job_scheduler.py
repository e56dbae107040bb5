"""job_scheduler: the cluster's scheduled jobs; today, the periodic backups of databases.

Every node runs it; only the one on the master node acts (the same test as cnm_exec's: its own
CCS copy is the master's), and it writes CCS on that copy only, so a node that lost its
mastership schedules nothing. It never runs a job itself: it submits an action for cnm_exec,
which does the work and records the outcome.

A database with `backup_interval` > 0 gets a `bdb_backup` action once that many seconds have
passed since the later of: its last backup that succeeded (`last_backup_time`, also an
on-demand one), the last backup this scheduler submitted for it (so a failing backup is tried
again only an interval later, not at every tick), and its creation. A database that another
action holds (the lock is taken with the submission) is tried again at the next tick. What was
submitted is kept in CCS (`jobs:bdb_backup`), so a new master goes on from there.
"""

from __future__ import annotations

import logging
import time

from control import ccs, schema
from control.cluster_view import tick_on_master
from control.node import NodeConfig, service_command

log = logging.getLogger("job_scheduler")

TICK = 1.0                         # how often due jobs are looked for
BACKUP_JOBS = "jobs:bdb_backup"    # hash: bdb uid -> {action_uid, time} of the last submission


def backup_due(bdb: schema.Bdb, submitted: dict | None, now: float) -> bool:
    """Whether the database's next scheduled backup should start now."""
    interval = bdb.backup_interval
    if interval <= 0 or bdb.status != "active":
        return False
    since = max(bdb.last_backup_time or 0, (submitted or {}).get("time") or 0,
                bdb.created_time or 0)
    return now >= since + interval


class JobScheduler:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)

    async def run(self) -> None:
        await tick_on_master(self.session, self.config.uid, self.tick, TICK, log)

    async def tick(self, redis) -> None:
        now = time.time()
        bdbs = await schema.bdbs(redis)
        submitted = await ccs.read_hash(redis, BACKUP_JOBS)
        gone = [uid for uid in submitted if uid not in bdbs]
        if gone:
            await ccs.delete(redis, BACKUP_JOBS, *gone)
        for uid, bdb in sorted(bdbs.items()):
            if not backup_due(bdb, submitted.get(uid), now):
                continue
            action = schema.new_action("bdb_backup", "bdb", uid, {"scheduled": True})
            try:
                await schema.submit(redis, action, lock_bdb=uid)
            except schema.Conflict:
                continue                # another action holds it: next tick
            await ccs.write(redis, BACKUP_JOBS, {"action_uid": action.action_uid,
                                                 "time": now}, field=uid)
            log.info("database %d: scheduled backup, action %s", uid, action.action_uid)


main = service_command("job_scheduler", JobScheduler)

if __name__ == "__main__":
    main()
