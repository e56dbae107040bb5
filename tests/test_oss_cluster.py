"""The OSS Cluster API of a database (REST `oss_cluster`) on a real 3-node cluster: every node's
proxy answers CLUSTER SLOTS/SHARDS/NODES/INFO/MYID/KEYSLOT/COUNTKEYSINSLOT/GETKEYSINSLOT with
the proxies of the nodes that hold master shards as the cluster's nodes, and -MOVED for a key
whose master shard is another node's; redis-py's RedisCluster, `redis-cli -c` and
`redis-benchmark --cluster` work against it, and the topology follows a failover and a
migration under a cluster client's load without losing an acknowledged write. Also the
database's proxy_threads (`dmc db update --proxy-threads`): every node's endpoint served by
that many workers."""

from __future__ import annotations

import subprocess

import pytest
import redis
from click.testing import CliRunner
from clusters import Cluster, api_answers, rest_client
from redis.cluster import RedisCluster
from waiting import wait_until
from workload import WriteLoad

from control.cli import main as cli_main
from dmc._fastpath import slot_of
from dmc.cluster_api import node_id

pytestmark = pytest.mark.timeout(300)

FIRST_ADDRESS = "127.0.0.181"      # other modules' clusters use other addresses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("oss") / "cluster", FIRST_ADDRESS, timeout=90)
    try:
        for config in c.lc.nodes.values():
            wait_until(lambda cfg=config: api_answers(cfg, c.lc.admin_login()), 60,
                       what=f"cnm_http of node {config.uid}")
        with rest_client(c.lc) as api:
            reply = api.post("/v1/bdbs", json={"name": "oss", "shards_count": 2,
                                               "replication": True, "oss_cluster": True})
            assert reply.status_code == 200, reply.text
        c.wait_action(reply.json()["action_uid"])
        c.db = c.bdb(reply.json()["uid"])
        c.wait_proxies_current(c.db["uid"])
        yield c
    finally:
        c.close()


def masters(c: Cluster) -> list[dict]:
    return sorted((s for s in c.shards(c.db["uid"]).values() if s["role"] == "master"),
                  key=lambda s: s["slots"][0][0])


def expected_slots(c: Cluster) -> list:
    """CLUSTER SLOTS as it must be: for each node of a master shard, its proxy for the slots of
    its masters, contiguous ranges as one (as a Redis Cluster node owning them lists them)."""
    owner = {}
    for s in masters(c):
        for first, last in s["slots"]:
            owner.update(dict.fromkeys(range(first, last + 1), s["node_uid"]))
    rows = []
    for slot in range(16384):
        if rows and rows[-1][3] == owner[slot]:
            rows[-1][1] = slot
        else:
            rows.append([slot, slot, None, owner[slot]])
    port = c.db["port"]
    return [[first, last, [c.lc.nodes[n].address.encode(), port,
                           node_id((c.lc.nodes[n].address, port)).encode(), []]]
            for first, last, _, n in rows]


def node_client(c: Cluster, node: int, **kw) -> redis.Redis:
    return c.client(node, c.db["port"], protocol=kw.pop("protocol", 2), **kw)


def cluster_client(c: Cluster, node: int = 1, **kw) -> RedisCluster:
    return RedisCluster(host=c.lc.nodes[node].address, port=c.db["port"], socket_timeout=10,
                        **kw)


def key_on(c: Cluster, node: int, prefix: str = "k") -> str:
    """A key whose master shard is on that node."""
    return next(f"{prefix}{i}" for i in range(10000)
                if c.master_of_key(c.db["uid"], f"{prefix}{i}".encode())["node_uid"] == node)


def test_rest_shows_the_setting(cluster):
    with rest_client(cluster.lc) as api:
        bdb = api.get(f"/v1/bdbs/{cluster.db['uid']}").json()
    assert bdb["oss_cluster"] is True
    assert bdb["proxy_threads"] == 1


def test_every_node_answers_the_master_shards_nodes_as_the_cluster(cluster):
    expected = expected_slots(cluster)
    master_nodes = {s["node_uid"] for s in masters(cluster)}
    ids = set()
    for node, config in cluster.lc.nodes.items():
        r = node_client(cluster, node)
        assert sorted(r.execute_command("CLUSTER", "SLOTS")) == expected
        myid = r.execute_command("CLUSTER", "MYID").decode()
        assert myid == node_id((config.address, cluster.db["port"]))
        ids.add(myid)
        nodes = r.execute_command("CLUSTER", "NODES").decode().splitlines()
        mine = [line for line in nodes if "myself" in line]
        assert len(mine) == 1 and mine[0].startswith(myid)
        assert len(nodes) == len(master_nodes | {node})
        info = dict(line.split(":", 1) for line in
                    r.execute_command("CLUSTER", "INFO").decode().splitlines() if line)
        assert info["cluster_state"] == "ok" and info["cluster_size"] == str(len(master_nodes))
        shards = node_client(cluster, node, protocol=3).execute_command("CLUSTER", "SHARDS")
        assert sorted(s[b"nodes"][0][b"ip"].decode() for s in shards) == sorted(
            cluster.lc.nodes[n].address for n in master_nodes)
        assert r.execute_command("CLUSTER", "KEYSLOT", "{user1}.name") == slot_of(b"user1")
    assert len(ids) == len(cluster.lc.nodes)


def test_a_key_of_another_node_is_moved_there(cluster):
    owners = {s["node_uid"] for s in masters(cluster)}
    owner = min(owners)
    key = key_on(cluster, owner)
    for node, config in cluster.lc.nodes.items():
        r = node_client(cluster, node)
        if node == owner:
            assert r.set(key, "v") is True
            assert r.get(key) == b"v"
        else:
            with pytest.raises(redis.exceptions.MovedError) as moved:     # -MOVED ...
                r.get(key)
            assert str(moved.value) == (f"{slot_of(key.encode())} "
                                        f"{cluster.lc.nodes[owner].address}:{cluster.db['port']}")
    other = key_on(cluster, max(owners), prefix="o")
    with pytest.raises(redis.ResponseError, match="don.t hash to the same slot"):   # CROSSSLOT
        node_client(cluster, owner).mget(key, other)


def test_keys_in_slot_are_counted_where_the_slot_lives(cluster):
    slot = slot_of(b"slotted")
    owner = cluster.master_of_key(cluster.db["uid"], b"{slotted}")["node_uid"]
    r = node_client(cluster, owner)
    r.delete(*[f"{{slotted}}{i}" for i in range(5)])
    r.mset({f"{{slotted}}{i}": i for i in range(5)})
    assert r.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 5
    got = r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3)
    assert len(got) == 3 and all(k.startswith(b"{slotted}") for k in got)
    elsewhere = next(n for n in cluster.lc.nodes if n != owner)
    assert node_client(cluster, elsewhere).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    with pytest.raises(redis.ResponseError, match="Invalid slot"):
        r.execute_command("CLUSTER", "COUNTKEYSINSLOT", 16384)
    with pytest.raises(redis.ResponseError, match="Invalid slot or number of keys"):
        r.execute_command("CLUSTER", "GETKEYSINSLOT", slot, -1)


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_cluster_client_reads_and_writes_every_slot(cluster, protocol):
    rc = cluster_client(cluster, node=3, protocol=protocol, decode_responses=True)
    try:
        keys = {f"py{protocol}:{i}": str(i) for i in range(300)}
        for k, v in keys.items():
            assert rc.set(k, v)
        assert rc.mget_nonatomic(list(keys)) == list(keys.values())
    finally:
        rc.close()
    for k, v in list(keys.items())[:50]:      # each on its own master shard
        shard = redis.Redis(*cluster.address(cluster.master_of_key(cluster.db["uid"], k.encode())))
        assert shard.get(k) == v.encode()


def test_redis_cli_follows_moved(cluster):
    owners = {s["node_uid"] for s in masters(cluster)}
    stranger = next((n for n in cluster.lc.nodes if n not in owners), 1)
    key = key_on(cluster, next(n for n in owners if n != stranger), prefix="cli")
    host = cluster.lc.nodes[stranger].address
    cli = ["redis-cli", "-c", "-h", host, "-p", str(cluster.db["port"])]
    assert subprocess.run([*cli, "SET", key, "hello"], capture_output=True, text=True,
                          timeout=10).stdout.strip() == "OK"
    assert subprocess.run([*cli, "GET", key], capture_output=True, text=True,
                          timeout=10).stdout.strip() == "hello"


def test_redis_benchmark_cluster_mode_runs(cluster):
    out = subprocess.run(["redis-benchmark", "--cluster", "-h", cluster.lc.nodes[1].address,
                          "-p", str(cluster.db["port"]), "-t", "set,get", "-n", "2000", "-c",
                          "4", "-q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "SET:" in out.stdout and "GET:" in out.stdout, out.stdout


def test_topology_follows_failover_and_migration_under_load(cluster):
    load = WriteLoad(cluster.lc.nodes[1].address, cluster.db["port"], clients=2,
                     connect=lambda: cluster_client(cluster, decode_responses=True)).start()
    try:
        load.wait_writes()
        first = masters(cluster)[0]
        cluster.run("shard_failover", "shard", first["uid"], {}, cluster.db["uid"])
        cluster.wait_proxies_current(cluster.db["uid"])
        assert sorted(node_client(cluster, 2).execute_command("CLUSTER", "SLOTS")) == \
            expected_slots(cluster)
        load.wait_writes()
        moving = masters(cluster)[-1]
        pair = {s["node_uid"] for s in cluster.shards(cluster.db["uid"]).values()
                if s["slots"] == moving["slots"]}
        target = next(n for n in cluster.lc.nodes if n not in pair)
        cluster.run("shard_migrate", "shard", moving["uid"], {"target_node_uid": target},
                    cluster.db["uid"])
        cluster.wait_proxies_current(cluster.db["uid"])
        assert sorted(node_client(cluster, 3).execute_command("CLUSTER", "SLOTS")) == \
            expected_slots(cluster)
        load.wait_writes()
    finally:
        load.stop()
    assert load.errors == []
    rc = cluster_client(cluster, decode_responses=True)
    try:
        keys = list(load.acked)
        found = rc.mget_nonatomic(keys)
    finally:
        rc.close()
    assert {k: v for k, v in zip(keys, found) if v != load.acked[k]} == {}
    assert load.writes > 200


def test_proxy_threads_serves_every_nodes_endpoint_with_that_many_workers(cluster):
    done = CliRunner().invoke(cli_main, ["db", "update", "oss", "--proxy-threads", "2",
                                         "--home", str(cluster.lc.home)])
    assert done.exit_code == 0, done.output
    assert cluster.bdb(cluster.db["uid"])["proxy_threads"] == 2

    def both_workers_serve(node) -> bool:
        # Worker i of N gives client ids i mod N: both parities, both workers.
        clients = [node_client(cluster, node) for _ in range(16)]
        try:
            return {c.client_id() % 2 for c in clients} == {0, 1}
        finally:
            for c in clients:
                c.close()
    for node in cluster.lc.nodes:
        wait_until(lambda node=node: both_workers_serve(node), 30,
                   what=f"node {node}'s endpoint on two workers", ignoring=(redis.RedisError,))
    rc = cluster_client(cluster, decode_responses=True)
    try:
        for i in range(100):
            assert rc.set(f"threads:{i}", i)
        assert rc.mget_nonatomic([f"threads:{i}" for i in range(100)]) == \
            [str(i) for i in range(100)]
    finally:
        rc.close()


def test_turned_off_the_endpoint_is_a_plain_database_again(cluster):
    with rest_client(cluster.lc) as api:
        reply = api.put(f"/v1/bdbs/{cluster.db['uid']}", json={"oss_cluster": False})
        assert reply.status_code == 200, reply.text
    cluster.wait_action(reply.json()["action_uid"])
    owner = masters(cluster)[0]["node_uid"]
    key = key_on(cluster, owner, prefix="off")
    for node in cluster.lc.nodes:
        r = node_client(cluster, node)
        wait_until(lambda r=r: r.set(key, "x"), 10, what=f"node {node} to serve every key",
                   ignoring=(redis.ResponseError,))
        with pytest.raises(redis.ResponseError, match="cluster support disabled"):
            r.execute_command("CLUSTER", "SLOTS")
