"""sentinel_service against real clients: redis-py's Sentinel finds a database of a real 3-node
cluster by its name, reads and writes through the endpoint it gives, and follows the endpoint
when the node serving it dies (with +switch-master on the pub/sub channel); `redis-cli`
gets the same field names, shapes and errors from it as from a real redis-sentinel (Debian's
redis-sentinel) asked the same questions, in RESP2 and RESP3."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import redis
from clusters import DATABASE_SERVICES, Cluster
from redis.sentinel import Sentinel
from waiting import wait_until

from control.sentinel_service import NullArray, Push, encode
from dmc.processes import free_port

pytestmark = pytest.mark.timeout(240)

FIRST_ADDRESS = "127.0.0.201"      # other modules' clusters use other addresses
DB = "sdb"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("sentinel") / "cluster", FIRST_ADDRESS,
                services=[*DATABASE_SERVICES, "sentinel_service"])
    try:
        c.db = c.create_db(DB, shards=2, replication=True)
        for config in c.lc.nodes.values():
            wait_until(lambda cfg=config: ask(cfg, "SENTINEL", "get-master-addr-by-name", DB),
                       20, what=f"node {config.uid}'s sentinel to know {DB}")
        yield c
    finally:
        c.close()


def ask(config, *args, protocol=2):
    with redis.Redis(config.address, config.sentinel_port, protocol=protocol,
                     socket_timeout=5) as r:
        return r.execute_command(*args)


def sentinels(c: Cluster) -> list[tuple[str, int]]:
    return [(n.address, n.sentinel_port) for _, n in sorted(c.lc.nodes.items())]


# ---- a real redis-sentinel, for the shapes -----------------------------------------------------

@pytest.fixture(scope="module")
def real_sentinel(tmp_path_factory):
    """A redis-server master with one replica, watched by two redis-sentinels; the port of the
    first sentinel once it knows the replica and the other sentinel."""
    if shutil.which("redis-sentinel") is None:
        pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)")
    home = tmp_path_factory.mktemp("real_sentinel")
    master, replica = free_port(), free_port()
    procs = [subprocess.Popen(["redis-server", "--port", str(master), "--bind", "127.0.0.1",
                               "--save", "", "--dir", str(home)], stdout=subprocess.DEVNULL),
             subprocess.Popen(["redis-server", "--port", str(replica), "--bind", "127.0.0.1",
                               "--save", "", "--dir", str(home),
                               "--replicaof", "127.0.0.1", str(master)],
                              stdout=subprocess.DEVNULL)]
    ports = [free_port(), free_port()]
    try:
        for port in ports:
            conf = home / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {home}\n"
                            f"sentinel monitor {DB} 127.0.0.1 {master} 1\n")
            procs.append(subprocess.Popen(["redis-sentinel", str(conf)],
                                          stdout=subprocess.DEVNULL))
        r = redis.Redis("127.0.0.1", ports[0], socket_timeout=5)
        wait_until(lambda: _answers(r) and r.execute_command("SENTINEL", "REPLICAS", DB)
                   and r.execute_command("SENTINEL", "SENTINELS", DB), 30,
                   what="the real sentinels to know the replica and each other")
        yield ports[0]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def _answers(r) -> bool:
    try:
        return r.ping()
    except redis.ConnectionError:
        return False


def cli_json(host: str, port: int, *args, resp: int = 3):
    out = subprocess.run(["redis-cli", "-h", host, "-p", str(port), f"-{resp}", "--json",
                          *args], capture_output=True, text=True, timeout=10)
    return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) \
        else out.stdout.strip()


def shape(value):
    """What a reply looks like without its values: keys (in order) and types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value) and len(value) % 2 == 0 \
                and len(value) > 2:     # a RESP2 map: its keys
            return value[::2]
        return [shape(v) for v in value[:1]]
    return type(value).__name__


QUESTIONS = [("SENTINEL", "MASTER", DB), ("SENTINEL", "MASTERS"), ("SENTINEL", "REPLICAS", DB),
             ("SENTINEL", "SLAVES", DB), ("SENTINEL", "SENTINELS", DB),
             ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", DB), ("ROLE",), ("HELLO", "3")]
ERRORS = [("SENTINEL", "MASTER", "nope"), ("SENTINEL", "REPLICAS", "nope"),
          ("SENTINEL", "SENTINELS", "nope"), ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "nope"),
          ("SENTINEL", "nosuch"), ("SENTINEL",), ("SET", "a", "b"), ("PING", "x")]


@pytest.mark.parametrize("resp", [2, 3])
def test_replies_have_real_sentinels_fields_and_shapes(cluster, real_sentinel, resp):
    node = cluster.lc.nodes[1]
    for question in QUESTIONS:
        ours = cli_json(node.address, node.sentinel_port, *question, resp=resp)
        theirs = cli_json("127.0.0.1", real_sentinel, *question, resp=resp)
        if question[0] == "HELLO":     # HELLO 3 within a RESP2 session switches it
            ours, theirs = set(ours), set(theirs)
        assert shape(ours) == shape(theirs), question


def test_errors_and_unknown_names_answer_as_real_sentinel(cluster, real_sentinel):
    node = cluster.lc.nodes[1]
    for question in ERRORS:
        ours = subprocess.run(["redis-cli", "-h", node.address, "-p", str(node.sentinel_port),
                               *question], capture_output=True, text=True).stdout
        theirs = subprocess.run(["redis-cli", "-p", str(real_sentinel), *question],
                                capture_output=True, text=True).stdout
        assert ours == theirs, question


def test_master_is_a_proxy_endpoint_on_a_node_holding_a_master_shard(cluster):
    node = cluster.lc.nodes[1]
    host, port = ask(node, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", DB)
    assert int(port) == cluster.db["port"]          # the endpoint's port, not a shard's
    shard_ports = {s["port"] for s in cluster.shards(cluster.db["uid"]).values()}
    assert int(port) not in shard_ports
    holders = {cluster.lc.nodes[s["node_uid"]].address
               for s in cluster.shards(cluster.db["uid"]).values() if s["role"] == "master"}
    assert host.decode() in holders
    # every node's sentinel gives the same answer, and knows the other two
    for config in cluster.lc.nodes.values():
        assert ask(config, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", DB) == [host, port]
        assert len(ask(config, "SENTINEL", "SENTINELS", DB)) == 2
    replicas = ask(node, "SENTINEL", "REPLICAS", DB)
    assert len(replicas) == 2                       # the other two nodes' proxies


def test_redis_py_master_for_reads_and_writes(cluster):
    s = Sentinel(sentinels(cluster), socket_timeout=5)
    assert s.discover_master(DB)[1] == cluster.db["port"]
    master = s.master_for(DB, socket_timeout=5)
    for i in range(50):
        assert master.set(f"k{i}", i)
    assert [int(master.get(f"k{i}")) for i in range(50)] == list(range(50))
    replica = s.slave_for(DB, socket_timeout=5)
    assert int(replica.get("k7")) == 7
    with pytest.raises(redis.sentinel.MasterNotFoundError):
        s.discover_master("nope")


def test_redis_py_in_resp3(cluster):
    s = Sentinel(sentinels(cluster), socket_timeout=5, sentinel_kwargs={"protocol": 3},
                 protocol=3)
    master = s.master_for(DB, socket_timeout=5)
    assert master.set("resp3", "yes") and master.get("resp3") == b"yes"


def test_encoding_of_replies():
    assert encode({"a": "1"}, 2) == b"*2\r\n$1\r\na\r\n$1\r\n1\r\n"
    assert encode({"a": "1"}, 3) == b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"
    assert encode(NullArray, 2) == b"*-1\r\n" and encode(NullArray, 3) == b"_\r\n"
    assert encode(Push(["message", "c", "m"]), 3).startswith(b">3\r\n")


def test_client_follows_the_endpoint_when_its_node_dies(cluster):
    """Killing the node whose proxy is the master endpoint moves the endpoint: a sentinel of
    another node publishes +switch-master, and the same redis-py client keeps writing, now to
    the new endpoint, with every key written before still there."""
    s = Sentinel(sentinels(cluster), socket_timeout=2)
    master = s.master_for(DB, socket_timeout=2)
    for i in range(100):
        master.set(f"before:{i}", i)
    old_host, port = s.discover_master(DB)
    dying = next(u for u, n in cluster.lc.nodes.items() if n.address == old_host)
    staying = next(n for u, n in cluster.lc.nodes.items() if u != dying)
    sub = redis.Redis(staying.address, staying.sentinel_port, socket_timeout=60).pubsub()
    sub.subscribe("+switch-master")
    assert sub.get_message(timeout=5)["type"] == "subscribe"

    cluster.lc.kill_node(dying)

    message = wait_until(lambda: sub.get_message(timeout=1), 30, what="+switch-master")
    name, old_ip, old_port, new_ip, new_port = message["data"].decode().split()
    assert (name, old_ip, int(old_port)) == (DB, old_host, port)
    assert new_ip != old_host and int(new_port) == port
    sub.close()

    def writes():
        try:
            return master.set("after", "moved")
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False        # until the dead node's master shards have failed over
    wait_until(writes, 60, interval=0.2, what="a write through the moved endpoint")
    now = s.discover_master(DB)
    assert now[0] != old_host and master.connection_pool.master_address == now
    assert [int(master.get(f"before:{i}")) for i in range(100)] == list(range(100))
