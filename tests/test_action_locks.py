"""A database lock left behind by an ended action is dropped by the master's cnm_exec
(schema.release_ended): found by a 60-minute chaos run, where a master lost its CCS between an
action's last save (`completed`) and the release of its lock, and every later change of the
database was refused. One real redis-server as the CCS copy."""

from __future__ import annotations

import trio

from control import schema
from control.redis_client import connect
from dmc.local import redis_servers


def test_locks_of_ended_actions_are_dropped_and_the_others_kept(tmp_path):
    with redis_servers(tmp_path, 1) as [(port, _)]:
        async def scenario():
            async with await connect("127.0.0.1", port) as r:
                actions = {}
                for uid, status in ((1, "completed"), (2, "failed"), (3, "active"),
                                    (4, "pending")):
                    await schema.put_bdb(r, schema.Bdb(uid=uid, name=f"db{uid}"))
                    action = await schema.submit(
                        r, schema.new_action("shard_failover", "shard", uid, {}, bdb_uid=uid),
                        lock_bdb=uid)
                    action.status = status
                    await schema.put_action(r, action)
                    actions[uid] = action
                # db 5: a submit in progress (its lock is written before its action)
                await schema.put_bdb(r, schema.Bdb(uid=5, name="db5"))
                await r.execute("SET", schema.lock_key(5), "not-recorded-yet")

                dropped = await schema.release_ended(r, await schema.actions(r))
                held = {uid: await r.execute("GET", schema.lock_key(uid))
                        for uid in range(1, 6)}
                return dropped, held, actions
        dropped, held, actions = trio.run(scenario)
    assert sorted(dropped) == [1, 2]
    assert held[1] is None and held[2] is None
    assert held[3] == actions[3].action_uid.encode()
    assert held[4] == actions[4].action_uid.encode()
    assert held[5] == b"not-recorded-yet"
