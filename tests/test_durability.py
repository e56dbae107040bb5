"""Durability on real 3-node clusters: with replication only the replicas write to disk (AOF or
snapshots, changed live), replication is diskless on both sides, and a whole cluster killed
with kill -9 and started again brings back every write acknowledged with `appendfsync-always`
plus `WAIT 1`."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import redis
from clusters import Cluster
from waiting import wait_until
from workload import WriteLoad

from control import redis_mgr, schema
from dmc.local import redis_servers

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("durability"), "127.0.0.141")
    yield c
    c.close()


def shard_config(cluster, shard, *names) -> dict[str, str]:
    r = redis.Redis(*cluster.address(shard), socket_timeout=5, decode_responses=True)
    out = {}
    for name in names:
        out.update(r.config_get(name))
    return out


def shard_dir(cluster, shard) -> Path:
    return cluster.lc.nodes[shard["node_uid"]].shards_dir / str(shard["uid"])


def persisted(cluster, bdb_uid) -> dict[str, dict[str, str]]:
    """role -> the persistence settings every shard of that role has (asserted equal)."""
    out: dict[str, dict[str, str]] = {}
    for s in cluster.shards(bdb_uid).values():
        conf = shard_config(cluster, s, "appendonly", "appendfsync", "save")
        assert out.setdefault(s["role"], conf) == conf, (s, out)
    return out


def test_with_replication_only_the_replicas_write_to_disk(cluster):
    db = cluster.create_db("aof", shards=2, replication=True, data_persistence="aof",
                           aof_policy="appendfsync-always")
    shards = cluster.shards(db["uid"])
    for s in shards.values():
        conf = shard_config(cluster, s, "repl-diskless-sync", "repl-diskless-load")
        assert conf == {"repl-diskless-sync": "yes", "repl-diskless-load": "swapdb"}
    assert persisted(cluster, db["uid"]) == {
        "master": {"appendonly": "no", "appendfsync": "always", "save": ""},
        "replica": {"appendonly": "yes", "appendfsync": "always", "save": ""}}
    c = cluster.client(1, db["port"])
    for i in range(500):
        c.set(f"k{i}", i)
    assert c.wait(1, 5000) == 1
    for s in shards.values():
        folder = shard_dir(cluster, s)
        files = {p.name for p in folder.iterdir()}
        if s["role"] == "master":
            # No AOF, no RDB: the master never touched the disk, not even to sync its replica.
            assert not files & {"appendonlydir", "dump.rdb"}, files
        else:
            aof = folder / "appendonlydir"
            assert sum(p.stat().st_size for p in aof.iterdir()) > 0


def test_a_policy_change_applies_live_and_follows_a_failover(cluster):
    db = cluster.create_db("live", shards=1, replication=True, data_persistence="aof")
    pids = {u: s["pid"] for u, s in cluster.states().items() if u in cluster.shards(db["uid"])}
    cluster.run("bdb_update", "bdb", db["uid"],
                {"data_persistence": "snapshot",
                 "snapshot_policy": [{"secs": 600, "writes": 10}, {"secs": 60, "writes": 1000}]},
                db["uid"])
    wait_until(lambda: persisted(cluster, db["uid"]) == {
        "master": {"appendonly": "no", "appendfsync": "everysec", "save": ""},
        "replica": {"appendonly": "no", "appendfsync": "everysec", "save": "600 10 60 1000"}},
        what="snapshots on the replica only")
    cluster.run("bdb_update", "bdb", db["uid"],
                {"data_persistence": "aof", "aof_policy": "appendfsync-always"}, db["uid"])
    wait_until(lambda: persisted(cluster, db["uid"])["replica"] ==
               {"appendonly": "yes", "appendfsync": "always", "save": ""}, what="AOF again")
    # No shard was restarted for any of it.
    assert {u: s["pid"] for u, s in cluster.states().items() if u in pids} == pids
    master = next(s for s in cluster.shards(db["uid"]).values() if s["role"] == "master")
    cluster.run("shard_failover", "shard", master["uid"], {}, db["uid"])
    shards = cluster.shards(db["uid"])
    assert shards[master["uid"]]["role"] == "replica"
    wait_until(lambda: persisted(cluster, db["uid"]) == {
        "master": {"appendonly": "no", "appendfsync": "always", "save": ""},
        "replica": {"appendonly": "yes", "appendfsync": "always", "save": ""}},
        what="the disk writer follows the replica role")


def test_without_replication_the_master_persists(cluster):
    db = cluster.create_db("solo", shards=1, replication=False, data_persistence="aof")
    assert persisted(cluster, db["uid"]) == {
        "master": {"appendonly": "yes", "appendfsync": "everysec", "save": ""}}


def test_masters_alone_and_their_persistence():
    """Pure: a master counts as alone unless a replica of it runs synced (a state without the
    flag is a demoted master's: not synced); alone, a master of a database that persists on
    replicas writes as a replica does."""
    def shard(uid, role, master_uid=None):
        return schema.Shard(uid=uid, bdb_uid=1, node_uid=1, role=role, port=1, slots=[[0, 1]],
                            master_uid=master_uid)
    records = {1: shard(1, "master"), 2: shard(2, "replica", 1), 3: shard(3, "master"),
               4: shard(4, "replica", 3), 5: shard(5, "master")}
    states = {2: {"status": "running", "synced": True}, 4: {"status": "running"}}
    assert redis_mgr.masters_alone(records, states) == {3, 5}
    bdb = schema.Bdb(uid=1, name="d", port=1, memory_size=1 << 20, shards_count=1,
                     replication=True, data_persistence="aof")
    assert redis_mgr.persistence(records[1], bdb)["appendonly"] == "no"
    assert redis_mgr.persistence(records[3], bdb, alone=True)["appendonly"] == "yes"
    assert redis_mgr.persistence(records[2], bdb)["appendonly"] == "yes"
    off = schema.Bdb(uid=1, name="d", port=1, memory_size=1 << 20, shards_count=1,
                     replication=True, data_persistence="disabled")
    assert redis_mgr.persistence(records[3], off, alone=True)["appendonly"] == "no"


def test_a_promoted_master_without_a_synced_replica_keeps_its_disk_copy(cluster, tmp_path):
    """The master shard stopped (SIGSTOP), its replica promoted by a forced failover: with no
    synced replica behind it, the new master keeps writing the AOF it wrote as a replica, so
    its disk copy has every write -- from before the failover and after it (else a master
    killed now would come back empty: a chaos run lost acknowledged writes so)."""
    db = cluster.create_db("alone", shards=1, replication=True, data_persistence="aof",
                           aof_policy="appendfsync-always")
    c = cluster.client(1, db["port"])
    for i in range(200):
        c.set(f"before{i}", i)
    assert c.wait(1, 5000) == 1
    master = next(s for s in cluster.shards(db["uid"]).values() if s["role"] == "master")
    pid = redis.Redis(*cluster.address(master)).info("server")["process_id"]
    os.kill(pid, signal.SIGSTOP)
    try:
        cluster.run("shard_failover", "shard", master["uid"], {"forced": True}, db["uid"])
        cluster.wait_proxies_current(db["uid"])
        promoted = next(s for s in cluster.shards(db["uid"]).values() if s["role"] == "master")
        assert promoted["uid"] != master["uid"]
        for i in range(200):
            c.set(f"after{i}", i)
        assert shard_config(cluster, promoted, "appendonly") == {"appendonly": "yes"}
        copy = tmp_path / "copy"
        shutil.copytree(shard_dir(cluster, promoted) / "appendonlydir", copy / "appendonlydir")
    finally:
        os.kill(pid, signal.SIGCONT)
    with redis_servers(copy, 1, "--appendonly", "yes") as [(port, _)]:
        assert redis.Redis("127.0.0.1", port).dbsize() == 400


def test_whole_cluster_killed_brings_back_every_write_acknowledged_with_wait(tmp_path):
    cluster = Cluster(tmp_path, "127.0.0.146")
    try:
        db = cluster.create_db("durable", shards=2, replication=True, data_persistence="aof",
                               aof_policy="appendfsync-always")
        load = WriteLoad(cluster.lc.nodes[1].address, db["port"], clients=3,
                         wait_replicas=1).start()
        wait_until(lambda: load.writes >= 600, 60, what="acknowledged writes")
        # kill -9 of every process of every node, the writers still writing.
        for uid in cluster.lc.nodes:
            cluster.lc.kill_node(uid)
        load.stop()
        acked = dict(load.acked)
        started = time.monotonic()
        cluster.lc.start()
        c = cluster.client(2, db["port"], socket_timeout=5)

        def serving():
            try:
                return c.dbsize() >= len(acked) and c.set("probe", "1")
            except redis.RedisError:
                return False
        wait_until(serving, 120, interval=0.2, what="the database serving its data again")
        back_after = time.monotonic() - started
        lost = load.lost(c)
        assert lost == {}, f"{len(lost)} of {len(acked)} acknowledged writes lost"
        # Recovery trusted the replicas' AOF: they were promoted, the old masters follow them.
        shards = cluster.shards(db["uid"])
        assert sorted(s["role"] for s in shards.values()) == ["master", "master", "replica",
                                                              "replica"]
        print(f"{len(acked)} acknowledged writes, all back {back_after:.1f} s after the start")
    finally:
        cluster.close()
