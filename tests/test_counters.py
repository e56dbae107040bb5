"""The endpoint's counters (issue 14) and its INFO (issue 12), each checked against an
independent count: the commands, bytes and connections a test made itself, and what the shards
themselves say (DBSIZE, CONFIG GET, their own INFO). Real redis-server shards; each test gets an
endpoint of its own in this process (dmc.endpoint.Endpoint), so its counters start at zero, and
talks to it in raw RESP (tests/replies.py), so that nothing is sent but what the test wrote."""

from __future__ import annotations

import bisect
import os
import socket
import threading
import time

import pytest
import redis
import trio
from replies import Error, RespConn
from waiting import wait_until

from control.node import NodeConfig
from control.node_proxy import NodeProxy
from control.proxy_stats import read_proxy_stats
from dmc._fastpath import LATENCY_BUCKETS_US, latency_bucket, slot_of
from dmc.endpoint import Endpoint
from dmc.shard_map import ShardMap

HOST = "127.0.0.1"
CLASSES = ("read", "write", "other")
CONTRACT = {"read_req", "write_req", "other_req", "read_res", "write_res", "other_res",
            "read_latency_us", "write_latency_us", "other_latency_us", "latency_buckets_us",
            "latency_histogram", "conns", "total_connections_received", "rejected_connections",
            "ingress_bytes", "egress_bytes", "max_pipeline", "errors", "auth_failures",
            "monitors", "pubsub_channels", "pubsub_patterns", "uptime_s"}


@pytest.fixture
def shards(shard_ports):
    """redis-py clients of the shards themselves, emptied."""
    clients = [redis.Redis(host=HOST, port=p, socket_timeout=10, protocol=2) for p in shard_ports]
    for c in clients:
        c.flushall()
    yield clients
    for c in clients:
        c.close()


@pytest.fixture
def endpoint(shard_ports, shards):
    """make(**settings): a new endpoint over the three shards; stopped when the test ends."""
    made = []

    def make(password: str | None = None, **settings) -> Endpoint:
        ep = Endpoint(HOST, 0, password, ShardMap.even([(HOST, p) for p in shard_ports]),
                      **settings).start()
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.stop()


@pytest.fixture
def conns():
    made = []

    def conn(port: int) -> RespConn:
        c = RespConn(port)
        made.append(c)
        return c

    yield conn
    for c in made:
        c.close()


def counters(ep: Endpoint) -> dict:
    return ep.stats()["counters"]


def keys_on_every_shard(ports: list[int], prefix: str) -> list[str]:
    smap = ShardMap.even([(HOST, p) for p in ports])
    keys, seen, i = [], set(), 0
    while len(seen) < len(ports):
        owner = smap.shard_of_slot(slot_of(f"{prefix}{i}"))
        if owner not in seen:
            seen.add(owner)
            keys.append(f"{prefix}{i}")
        i += 1
    return keys


def info_fields(text: bytes) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.decode().splitlines()
                if ":" in line and not line.startswith("#"))


# --------------------------------------------------------------------------- the contract

def test_stats_counters_keep_the_contract_every_value_an_int(endpoint):
    c = counters(endpoint())
    assert CONTRACT <= set(c)
    bounds = c["latency_buckets_us"]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert set(c["latency_histogram"]) == set(CLASSES)
    for cls in CLASSES:
        assert len(c["latency_histogram"][cls]) == len(bounds) + 1      # the last: +Inf
        assert all(type(v) is int for v in c["latency_histogram"][cls])
    for key in CONTRACT - {"latency_buckets_us", "latency_histogram", "uptime_s"}:
        assert type(c[key]) is int, key
    assert isinstance(c["uptime_s"], float) and c["uptime_s"] >= 0


def test_latency_bucket_is_the_first_bound_not_below_the_latency():
    bounds = LATENCY_BUCKETS_US
    values = {0, 1, 2**62} | {b + d for b in bounds for d in (-1, 0, 1)} | set(range(0, 3000, 7))
    for us in values:
        assert latency_bucket(us) == bisect.bisect_left(bounds, us), us


# --------------------------------------------------------------------------- requests, latency

def test_requests_and_answers_are_counted_by_the_commands_class(endpoint, conns, shard_ports):
    ep = endpoint()
    c = conns(ep.port)
    keys = keys_on_every_shard(shard_ports, "cls")
    for k in keys * 2:                          # 6 writes
        assert c.call("SET", k, "v") == b"OK"
    assert c.call("MSET", *[a for k in keys for a in (k, "w")]) == b"OK"   # 1 write, 3 shards
    for k in keys * 3:                          # 9 reads
        assert c.call("GET", k) in (b"v", b"w")
    assert c.call("MGET", *keys) == [b"w"] * 3  # 1 read
    for _ in range(4):                          # 4 others
        assert c.call("PING") == b"PONG"
    assert c.call("DBSIZE") == 3                # `readonly` in COMMAND: a read
    got = counters(ep)
    assert (got["write_req"], got["read_req"], got["other_req"]) == (7, 11, 4)
    assert (got["write_res"], got["read_res"], got["other_res"]) == (7, 11, 4)
    for cls in CLASSES:
        # Every answer here is timed: the histogram holds each once.
        assert sum(got["latency_histogram"][cls]) == got[f"{cls}_res"]
    assert got["write_latency_us"] > 0 and got["read_latency_us"] > 0


# A script that runs 30 ms on its shard (DEBUG SLEEP is disabled in Redis 7 by default).
SPIN_30MS = ("local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] "
             "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= 30000 "
             "return 1")


def test_a_slow_command_lands_in_the_histogram_bucket_of_its_latency(endpoint, conns):
    ep = endpoint()
    c = conns(ep.port)
    start = time.monotonic()
    assert c.call("EVAL", SPIN_30MS, "0") == 1       # EVAL: neither `write` nor `readonly`
    seen_us = (time.monotonic() - start) * 1e6
    got = counters(ep)
    bounds = got["latency_buckets_us"] + [float("inf")]
    hist = got["latency_histogram"]["other"]
    assert sum(hist) == 1
    bucket = hist.index(1)
    low = bounds[bucket - 1] if bucket else 0
    assert low < 30000 <= got["other_latency_us"] <= bounds[bucket]
    assert got["other_latency_us"] <= seen_us


def test_blocking_commands_are_counted_but_not_timed(endpoint, conns):
    ep = endpoint()
    c = conns(ep.port)
    assert c.call("BLPOP", "nothing", "0.05") is None
    got = counters(ep)
    assert got["write_req"] == got["write_res"] == 1
    assert sum(got["latency_histogram"]["write"]) == 0 and got["write_latency_us"] == 0


def test_errors_returned_to_clients_are_counted(endpoint, conns):
    ep = endpoint()
    c = conns(ep.port)
    assert c.call("SET", "s", "text") == b"OK"
    assert isinstance(c.call("INCR", "s"), Error)               # from the shard
    assert isinstance(c.call("NOSUCHCOMMAND", "x"), Error)      # unknown: the shard says so
    assert isinstance(c.call("GET"), Error)                     # arity
    assert isinstance(c.call("SELECT", "3"), Error)             # from the proxy itself
    assert c.call("GET", "s") == b"text"
    got = counters(ep)
    assert got["errors"] == 4
    assert got["other_req"] == 2        # the unknown command and SELECT


def test_auth_failures_are_counted(endpoint, conns):
    ep = endpoint(password="sesame")
    c = conns(ep.port)
    assert isinstance(c.call("GET", "k"), Error)                # NOAUTH: not an auth failure
    assert isinstance(c.call("AUTH", "wrong"), Error)
    assert isinstance(c.call("AUTH", "default", "wrong"), Error)
    assert isinstance(c.call("HELLO", "2", "AUTH", "default", "wrong"), Error)
    assert c.call("AUTH", "sesame") == b"OK"
    got = counters(ep)
    assert got["auth_failures"] == 3
    assert got["errors"] == 4


# --------------------------------------------------------------------------- bytes, pipelines

def raw_exchange(port: int, request: bytes, reply_len: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(request)
        got = b""
        while len(got) < reply_len:
            data = s.recv(65536)
            assert data, "connection closed"
            got += data
    return got


def test_ingress_and_egress_bytes_are_the_client_sides(endpoint, shards):
    ep = endpoint()
    request = b"*1\r\n$4\r\nPING\r\n" * 3 + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n" \
        + b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    expected = b"+PONG\r\n" * 3 + b"+OK\r\n" + b"$5\r\nhello\r\n"
    assert raw_exchange(ep.port, request, len(expected)) == expected
    got = counters(ep)
    assert (got["ingress_bytes"], got["egress_bytes"]) == (len(request), len(expected))


def test_the_longest_pipeline_is_the_most_requests_one_read_brought(endpoint, conns):
    ep = endpoint()
    c = conns(ep.port)
    assert c.call("PING") == b"PONG"
    c.send(*[["PING"]] * 50)                    # one write, well under one read's 64 KiB
    assert [c.read() for _ in range(50)] == [b"PONG"] * 50
    assert counters(ep)["max_pipeline"] == 50


# --------------------------------------------------------------------------- connections

def test_connections_current_received_and_refused_beyond_max_clients(endpoint, conns):
    ep = endpoint(max_clients=2)
    a, b = conns(ep.port), conns(ep.port)
    assert a.call("PING") == b.call("PING") == b"PONG"
    refused = conns(ep.port)
    assert refused.read() == Error(b"ERR max number of clients reached")
    got = counters(ep)
    assert (got["conns"], got["total_connections_received"], got["rejected_connections"]) == \
        (2, 2, 1)
    b.close()
    wait_until(lambda: counters(ep)["conns"] == 1, timeout=5, what="the closed client to go")


def test_monitor_sessions_are_counted_while_they_last(endpoint, conns):
    ep = endpoint()
    m1, m2 = conns(ep.port), conns(ep.port)
    assert m1.call("MONITOR") == m2.call("MONITOR") == b"OK"
    assert counters(ep)["monitors"] == 2
    m1.close()
    wait_until(lambda: counters(ep)["monitors"] == 1, timeout=5, what="one monitor left")


def test_pubsub_channels_and_patterns_are_the_endpoints_subscriptions(endpoint, conns):
    ep = endpoint()
    a, b = conns(ep.port), conns(ep.port)
    a.send(["SUBSCRIBE", "news", "sport"], ["PSUBSCRIBE", "w*"])
    assert [a.read()[2] for _ in range(3)] == [1, 2, 3]
    b.send(["SUBSCRIBE", "news"], ["SSUBSCRIBE", "s1"])
    assert [b.read()[2] for _ in range(2)] == [1, 1]
    got = counters(ep)
    assert (got["pubsub_channels"], got["pubsub_patterns"], got["pubsub_shard_channels"]) == \
        (3, 1, 1)
    a.send(["UNSUBSCRIBE", "sport"])
    assert a.read()[2] == 2
    assert counters(ep)["pubsub_channels"] == 2
    a.close()
    wait_until(lambda: (counters(ep)["pubsub_channels"], counters(ep)["pubsub_patterns"])
               == (1, 0), timeout=5, what="the closed subscriber's subscriptions to go")


# --------------------------------------------------------------------------- the node's socket

def test_the_node_proxy_serves_every_endpoints_stats_on_its_socket(endpoint, conns, tmp_path):
    config = NodeConfig(uid=1, address=HOST, home=str(tmp_path / "node-1"), ccs_port=1,
                        gossip_port=2, ccs_forward_port=3)
    config.run_dir.mkdir(parents=True)
    node = NodeProxy(config)
    node.endpoints = {4: endpoint(), 9: endpoint()}
    assert conns(node.endpoints[9].port).call("SET", "k", "v") == b"OK"

    async def ask():
        async with trio.open_nursery() as nursery:
            await nursery.start(node._serve_stats)
            stats = await read_proxy_stats(config)
            nursery.cancel_scope.cancel()
        return stats

    stats = trio.run(ask)
    assert set(stats) == {4, 9}
    assert CONTRACT <= set(stats[9]["counters"])
    assert (stats[4]["counters"]["write_req"], stats[9]["counters"]["write_req"]) == (0, 1)
    assert not config.proxy_stats_sock.exists()     # removed when the task ends


# --------------------------------------------------------------------------- INFO

def test_info_db0_keys_are_the_sum_of_the_shards_dbsize(endpoint, conns, shards):
    ep = endpoint()
    c = conns(ep.port)
    for i in range(60):
        c.call("SET", f"key:{i}", "v", *(["EX", "1000"] if i % 3 == 0 else []))
    db0 = info_fields(c.call("INFO", "keyspace"))["db0"]
    fields = dict(kv.split("=") for kv in db0.split(","))
    assert int(fields["keys"]) == sum(s.dbsize() for s in shards) == 60
    assert int(fields["expires"]) == 20

    def avg_ttl():
        db0 = info_fields(c.call("INFO", "keyspace"))["db0"]
        return int(dict(kv.split("=") for kv in db0.split(","))["avg_ttl"])

    # Each shard estimates it in its expire cycle (as one Redis does): 0 until then.
    wait_until(lambda: 900_000 < avg_ttl() <= 1_000_000, timeout=10, what="avg_ttl")


def test_info_connected_clients_are_the_clients_opened(endpoint, conns):
    ep = endpoint()
    opened = [conns(ep.port) for _ in range(5)]
    for c in opened:
        assert c.call("PING") == b"PONG"
    assert info_fields(opened[0].call("INFO", "clients"))["connected_clients"] == "5"
    opened[4].close()
    wait_until(lambda: info_fields(opened[0].call("INFO", "clients"))["connected_clients"]
               == "4", timeout=5, what="connected_clients to fall")


def test_info_blocked_clients_counts_a_blpop_in_progress(endpoint, conns):
    ep = endpoint()
    c, blocked = conns(ep.port), conns(ep.port)
    assert info_fields(c.call("INFO", "clients"))["blocked_clients"] == "0"
    blocked.send(["BLPOP", "queue", "0"])
    wait_until(lambda: info_fields(c.call("INFO", "clients"))["blocked_clients"] == "1",
               timeout=5, what="blocked_clients to count the BLPOP")
    assert c.call("RPUSH", "queue", "job") == 1
    assert blocked.read() == [b"queue", b"job"]
    assert info_fields(c.call("INFO", "clients"))["blocked_clients"] == "0"


def test_info_instantaneous_ops_per_sec_is_positive_under_load(endpoint, conns):
    ep = endpoint()
    c, loader = conns(ep.port), conns(ep.port)
    stop = threading.Event()

    def load():
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            loader.send(*[["PING"]] * 20)
            for _ in range(20):
                loader.read()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_until(lambda: int(info_fields(c.call("INFO", "stats"))["instantaneous_ops_per_sec"])
                   > 0, timeout=10, what="instantaneous_ops_per_sec under load")
    finally:
        stop.set()
        thread.join()


def test_info_server_is_the_endpoints(endpoint, conns):
    ep = endpoint()
    c = conns(ep.port)
    first, second = info_fields(c.call("INFO", "server")), info_fields(c.call("INFO", "server"))
    assert first["tcp_port"] == str(ep.port)
    assert first["process_id"] == str(os.getpid())
    assert first["run_id"] == second["run_id"] and len(first["run_id"]) == 40
    int(first["run_id"], 16)
    assert int(first["uptime_in_seconds"]) <= counters(ep)["uptime_s"] + 1


def test_info_memory_and_persistence_are_summed_over_the_shards(endpoint, conns, shards):
    ep = endpoint()
    c = conns(ep.port)
    limits = [10 << 20, 20 << 20, 30 << 20]
    try:
        for s, limit in zip(shards, limits):
            s.config_set("maxmemory", limit)
        for i in range(30):
            c.call("SET", f"p:{i}", "v")
        memory = info_fields(c.call("INFO", "memory"))
        assert int(memory["maxmemory"]) == sum(limits)
        assert memory["maxmemory_human"] == "60.00M"
        persistence = info_fields(c.call("INFO", "persistence"))
        assert int(persistence["rdb_changes_since_last_save"]) == sum(
            s.info("persistence")["rdb_changes_since_last_save"] for s in shards)
    finally:
        for s in shards:
            s.config_set("maxmemory", 0)


def test_info_commandstats_and_errorstats_are_summed_per_command(endpoint, conns, shard_ports):
    ep = endpoint()
    c = conns(ep.port)
    for port in shard_ports:
        assert conns(port).call("CONFIG", "RESETSTAT") == b"OK"
    for k in keys_on_every_shard(shard_ports, "cs"):
        c.call("SET", k, "text")
        assert isinstance(c.call("INCR", k), Error)
    text = c.call("INFO", "commandstats", "errorstats")
    fields = info_fields(text)
    sets = dict(kv.split("=") for kv in fields["cmdstat_set"].split(","))
    incrs = dict(kv.split("=") for kv in fields["cmdstat_incr"].split(","))
    assert (sets["calls"], incrs["calls"], incrs["failed_calls"]) == ("3", "3", "3")
    assert float(sets["usec_per_call"]) == pytest.approx(int(sets["usec"]) / 3, abs=0.01)
    assert fields["errorstat_ERR"] == "count=3"
    assert text.decode().count("cmdstat_set:") == 1
