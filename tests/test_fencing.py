"""The fenced data path (dmc/fastpath/fence.pxi): no reply of a shard that is no longer the
master of a request's slots reaches a client, and a fenced proxy refuses writes. Real
redis-server shards (a master and its replica), proxies in this process."""

from __future__ import annotations

import os
import signal

import pytest
import redis
from raw_resp import RawClient
from waiting import wait_until

from dmc.endpoint import Endpoint
from dmc.local import start_redis_on_free_port, stop_process
from dmc.shard_map import ShardMap

HOST = "127.0.0.1"


@pytest.fixture
def pair(tmp_path):
    """(master port, replica port, clients of each): a replicating pair, stopped at the end."""
    procs, ports = [], []
    try:
        for _ in range(2):
            port, proc = start_redis_on_free_port(tmp_path)
            ports.append(port)
            procs.append(proc)
        master, replica = (redis.Redis(HOST, p, socket_timeout=10) for p in ports)
        replica.replicaof(HOST, ports[0])
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up",
                   what="the replica in sync")
        yield ports[0], ports[1], master, replica
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            stop_process(proc)


@pytest.fixture
def endpoint():
    made = []

    def make(port: int) -> Endpoint:
        ep = Endpoint(HOST, 0, None, ShardMap.even([(HOST, port)], 1)).start()
        made.append(ep)
        return ep
    yield make
    for ep in made:
        ep.stop()


def _pid(client: redis.Redis) -> int:
    return client.info("server")["process_id"]


def test_a_write_in_flight_to_a_stopped_master_is_not_acknowledged_after_its_failover(
        pair, endpoint):
    """The master stops (SIGSTOP) with a SET in flight, its replica is promoted and the map
    switched to it; the old master, resumed, runs the SET and answers +OK. That +OK must not
    reach the client: the old master is demoted and loses the write when it resyncs."""
    master_port, replica_port, master, replica = pair
    ep = endpoint(master_port)
    pid = _pid(master)
    c, blocked = RawClient(ep.port), RawClient(ep.port)
    assert c.call(("SET", "before", "1")) == [b"OK"]
    os.kill(pid, signal.SIGSTOP)
    try:
        c.send(("SET", "k", "in-flight"), ("INCR", "n"))
        blocked.send(("BLPOP", "queue", 0))
        wait_until(lambda: ep.inflight() == 2, what="the writes in flight")
        replica.replicaof("NO", "ONE")
        ep.apply_shard_map(ShardMap.even([(HOST, replica_port)], 2))
        replies = c.replies(2, timeout=3)
        assert all(r[0] == "error" and r[1].startswith("TRYAGAIN ") for r in replies), replies
        (unblocked,) = blocked.replies(1, timeout=3)
        assert unblocked[0] == "error" and unblocked[1].startswith("TRYAGAIN "), unblocked
    finally:
        os.kill(pid, signal.SIGCONT)
    # The old master runs what was in its socket; nothing of it comes back through the proxy.
    wait_until(lambda: master.get("k") == b"in-flight", what="the old master running the SET")
    assert c.nothing_within(0.3)
    master.rpush("queue", "x")          # the old master's BLPOP is not read either
    assert blocked.nothing_within(0.3)
    # The next requests go to the new master.
    assert c.call(("SET", "k", "after"), ("GET", "before")) == [b"OK", b"1"]
    assert replica.get("k") == b"after"
    c.close()
    blocked.close()


def test_a_map_change_leaves_requests_in_flight_to_shards_that_keep_their_slots(
        pair, endpoint):
    """Only shards that lose slots are fenced: a new map version that moves nothing fails
    nothing (a request in flight to a stopped shard is still answered by it)."""
    master_port, _, master, _ = pair
    ep = endpoint(master_port)
    pid = _pid(master)
    c = RawClient(ep.port)
    os.kill(pid, signal.SIGSTOP)
    try:
        c.send(("SET", "k", "v"))
        wait_until(lambda: ep.inflight() == 1, what="the SET in flight")
        ep.apply_shard_map(ShardMap.even([(HOST, master_port)], 2))
        assert c.nothing_within(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert c.replies(1) == [b"OK"]
    c.close()


def test_a_fenced_proxy_refuses_writes_and_serves_reads(pair, endpoint):
    master_port, _, master, _ = pair
    ep = endpoint(master_port)
    c = RawClient(ep.port)
    assert c.call(("SET", "k", "v")) == [b"OK"]
    ep.call(lambda p: p.fence(True))
    assert ep.stats()["fenced"]
    replies = c.call(("SET", "k", "w"), ("GET", "k"), ("INCR", "n"),
                     ("EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "k"),
                     ("MULTI",), ("SET", "k", "y"), ("EXEC",), ("MGET", "k", "n"))
    refused = [replies[i] for i in (0, 2, 3, 6)]
    assert all(r[0] == "error" and r[1].startswith("READONLY ") for r in refused), replies
    assert replies[1] == b"v" and replies[7] == [b"v", None]
    assert master.get("k") == b"v" and master.get("n") is None
    ep.call(lambda p: p.fence(False))
    assert c.call(("SET", "k", "w")) == [b"OK"]
    c.close()
