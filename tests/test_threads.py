"""An endpoint served by worker threads (Endpoint(threads=2), dmcproxy --threads 2): connections
are spread over the workers, and what is per endpoint stays per endpoint: client ids unique,
CLIENT LIST / KILL / UNBLOCK over every worker's clients, MONITOR sees every command, one
keyspace relay, a pause and a map change reach every worker at once, counters summed (INFO's
too), ACL DELUSER closes every worker's clients of the user, CLIENT TRACKING REDIRECT reaches a
client of another worker, a shard's -BUSY is every worker's, and the sequential commands' slot
locks are the endpoint's.
(The behaviour tests of one thread run with two too: DMC_PROXY_THREADS=2, tests/conftest.py.)"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from raw_resp import RawClient
from replies import Error, Push, RespConn
from waiting import wait_until

from dmc._fastpath import slot_of
from dmc.endpoint import Endpoint
from dmc.shard_map import ShardMap

HOST = "127.0.0.1"
THREADS = 2


@pytest.fixture
def endpoint(shard_ports):
    for port in shard_ports:
        redis.Redis(HOST, port).flushall()
    ep = Endpoint(HOST, 0, None, ShardMap.even([(HOST, p) for p in shard_ports]),
                  threads=THREADS).start()
    yield ep
    ep.stop()


def clients_on_every_worker(ep: Endpoint, n: int = 8) -> list[redis.Redis]:
    """n clients, connected until the kernel has given some to every worker."""
    made = []
    while True:
        c = redis.Redis(HOST, ep.port, socket_timeout=10, protocol=2)
        c.ping()
        made.append(c)
        workers = {c.client_id() % THREADS for c in made}
        if len(made) >= n and len(workers) == THREADS:
            return made
        assert len(made) < 200, "the kernel gave every connection to one worker"


def test_connections_are_spread_over_the_workers(endpoint):
    clients = clients_on_every_worker(endpoint)
    per_worker = endpoint.call_each(lambda p: p.stats()["clients"])
    assert len(per_worker) == THREADS and all(n > 0 for n in per_worker)
    assert sum(per_worker) == len(clients) == endpoint.stats()["clients"]


def test_client_ids_are_unique_and_client_list_shows_every_worker(endpoint):
    clients = clients_on_every_worker(endpoint)
    ids = [c.client_id() for c in clients]
    assert len(set(ids)) == len(ids)
    for c in clients[:2]:
        assert sorted(int(e["id"]) for e in c.client_list()) == sorted(ids)


def test_client_kill_closes_a_client_of_another_worker(endpoint):
    killer = clients_on_every_worker(endpoint)[0]
    while True:     # a connection of the other worker's (ids: worker i of N has i mod N)
        victim = socket.create_connection((HOST, endpoint.port), timeout=10)
        victim.sendall(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        victim_id = int(victim.recv(100)[1:])
        if victim_id % THREADS != killer.client_id() % THREADS:
            break
        victim.close()
    assert killer.client_kill_filter(_id=victim_id) == 1
    assert victim.recv(100) == b""          # closed by the proxy
    victim.close()
    assert victim_id not in [int(e["id"]) for e in killer.client_list()]


def test_client_unblock_ends_a_blpop_on_another_worker(endpoint):
    clients = clients_on_every_worker(endpoint)
    waiter = clients[0]
    other = next(c for c in clients if c.client_id() % THREADS != waiter.client_id() % THREADS)
    waiter_id = waiter.client_id()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=waiter.blpop("nothing", 0)))
    t.start()
    wait_until(lambda: any(int(e["id"]) == waiter_id and "b" in e["flags"]
                           for e in other.client_list()), 10, what="the BLPOP to block")
    assert other.client_unblock(waiter_id) == 1
    t.join(10)
    assert result == {"r": None}


def test_monitor_sees_the_commands_of_every_worker(endpoint):
    clients = clients_on_every_worker(endpoint)
    monitor = RawClient(endpoint.port)
    monitor.send(("MONITOR",))
    assert monitor.replies(1) == [b"OK"]
    for i, c in enumerate(clients):
        c.get(f"seen:{i}")
    wanted = {f'"GET" "seen:{i}"' for i in range(len(clients))}
    got = set()
    deadline = time.monotonic() + 10
    while got != wanted and time.monotonic() < deadline:
        for line in monitor.replies(1):
            text = line.decode()
            got |= {w for w in wanted if text.endswith(w)}
    assert got == wanted
    monitor.close()


def test_keyspace_notifications_come_once_through_one_relay(endpoint):
    clients = clients_on_every_worker(endpoint)
    clients[0].config_set("notify-keyspace-events", "KEA")
    try:
        sub = redis.Redis(HOST, endpoint.port, socket_timeout=10, protocol=2).pubsub()
        sub.psubscribe("__keyevent@0__:set")
        assert sub.get_message(timeout=5)["type"] == "psubscribe"
        keys = [f"note:{i}" for i in range(20)]      # on every shard
        for k in keys:
            clients[1].set(k, "v")
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < len(keys) and time.monotonic() < deadline:
            m = sub.get_message(timeout=1)
            if m and m["type"] == "pmessage":
                seen.append(m["data"].decode())
        while (m := sub.get_message(timeout=0.5)) is not None:     # and none twice
            seen.append(m["data"].decode())
        assert sorted(seen) == sorted(keys)
        sub.close()
    finally:
        clients[0].config_set("notify-keyspace-events", "")


def test_a_pause_holds_every_worker_until_resume(endpoint):
    clients = clients_on_every_worker(endpoint)
    endpoint.pause()
    assert endpoint.call_each(lambda p: p.paused) == [True] * THREADS
    raw = []
    for _ in range(6):
        r = RawClient(endpoint.port)
        r.send(("SET", "held", "x"))
        raw.append(r)
    sock = socket.create_connection((HOST, endpoint.port))
    sock.sendall(b"*2\r\n$3\r\nGET\r\n$4\r\nheld\r\n")
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(100)
    endpoint.resume()
    assert [r.replies(1) for r in raw] == [[b"OK"]] * 6
    sock.settimeout(5)
    assert sock.recv(100) in (b"$1\r\nx\r\n", b"$-1\r\n")
    sock.close()
    assert clients[0].get("held") == b"x"


def test_a_shard_map_reaches_every_worker(endpoint, shard_ports):
    clients = clients_on_every_worker(endpoint)
    one = ShardMap.even([(HOST, shard_ports[0])], version=2)
    assert endpoint.apply_shard_map(one) is True
    assert endpoint.call_each(lambda p: p.map_version) == [2] * THREADS
    for i, c in enumerate(clients):
        c.set(f"moved:{i}", i)
    assert redis.Redis(HOST, shard_ports[0]).dbsize() == len(clients)


def test_counters_are_summed_over_the_workers(endpoint):
    clients = clients_on_every_worker(endpoint)
    before = endpoint.stats()["counters"]
    for c in clients:
        for _ in range(5):
            c.get("counted")
    after = endpoint.stats()["counters"]
    assert after["read_req"] - before["read_req"] == 5 * len(clients)
    assert after["conns"] == len(clients)
    assert sum(after["latency_histogram"]["read"]) >= 5 * len(clients)


def conn_on_worker(ep: Endpoint, worker: int, protocol: int = 2) -> tuple[RespConn, int]:
    """A raw connection the kernel gave to that worker, and its client id."""
    for _ in range(200):
        conn = RespConn(ep.port)
        if protocol == 3:
            conn.call("HELLO", "3")
        client_id = conn.call("CLIENT", "ID")
        if client_id % THREADS == worker:
            return conn, client_id
        conn.close()
    raise AssertionError(f"the kernel gave no connection to worker {worker}")


def info_field(conn: RespConn, section: str, name: str) -> int:
    text = conn.call("INFO", section).decode()
    return int(next(line.split(":", 1)[1] for line in text.splitlines()
                    if line.startswith(name + ":")))


def requests(ep: Endpoint) -> int:
    counters = ep.stats()["counters"]
    return sum(counters[f"{cls}_req"] for cls in ("read", "write", "other"))


def test_info_stats_count_every_workers_commands_and_config_resetstat_resets_them(endpoint):
    asker, _ = conn_on_worker(endpoint, 0)
    other, _ = conn_on_worker(endpoint, 1)
    for i in range(30):
        other.call("GET", f"counted:{i}")
    before = requests(endpoint)
    seen = info_field(asker, "stats", "total_commands_processed")
    after = requests(endpoint)
    assert before <= seen <= after
    assert info_field(asker, "stats", "total_connections_received") >= 2
    assert info_field(asker, "clients", "connected_clients") == 2
    assert asker.call("CONFIG", "RESETSTAT") == b"OK"
    for i in range(3):
        other.call("GET", f"counted:{i}")
    assert 3 <= info_field(asker, "stats", "total_commands_processed") <= 5
    assert info_field(asker, "stats", "total_connections_received") == 0
    run_ids = {conn.call("INFO", "server").decode().split("run_id:")[1].split()[0]
               for conn in (asker, other)}
    assert len(run_ids) == 1            # one endpoint, one run_id
    asker.close()
    other.close()


def test_acl_deluser_closes_the_users_clients_on_every_worker(endpoint):
    admin, _ = conn_on_worker(endpoint, 0)
    assert admin.call("ACL", "SETUSER", "leaving", "on", ">pw", "~*", "+@all") == b"OK"
    users = []
    for worker in range(THREADS):
        conn, _ = conn_on_worker(endpoint, worker)
        assert conn.call("AUTH", "leaving", "pw") == b"OK"
        assert conn.call("SET", f"by:{worker}", "x") == b"OK"     # on its user's connections
        users.append(conn)
    assert admin.call("ACL", "DELUSER", "leaving") == 1
    for conn in users:
        with pytest.raises(ConnectionError):
            conn.read(timeout=5)            # closed by the proxy, as Redis closes them
        conn.close()
    assert admin.call("PING") == b"PONG"
    admin.close()


def test_tracking_redirect_reaches_a_client_of_another_worker(endpoint, shard_ports):
    keys = [f"redir:{i}" for i in range(8)]      # on every shard
    sink, sink_id = conn_on_worker(endpoint, 1)
    assert sink.call("SUBSCRIBE", "__redis__:invalidate") == [b"subscribe",
                                                              b"__redis__:invalidate", 1]
    tracker, _ = conn_on_worker(endpoint, 0)
    writer, _ = conn_on_worker(endpoint, 0)
    assert tracker.call("CLIENT", "TRACKING", "ON", "REDIRECT", sink_id) == b"OK"
    assert tracker.call("CLIENT", "GETREDIR") == sink_id
    for k in keys:
        tracker.call("GET", k)
    for k in keys:
        writer.call("SET", k, "x")
    got = sorted(sink.read(timeout=5)[2][0].decode() for _ in keys)
    assert got == sorted(keys)
    missing = tracker.call("CLIENT", "TRACKING", "ON", "REDIRECT", sink_id + THREADS * 1000)
    assert isinstance(missing, Error) and b"redirect to does not exist" in missing
    for c in (sink, tracker, writer):
        c.close()


def test_tracking_redirect_broken_is_told_across_workers(endpoint):
    sink, sink_id = conn_on_worker(endpoint, 1)
    tracker, _ = conn_on_worker(endpoint, 0, protocol=3)
    writer, _ = conn_on_worker(endpoint, 0)
    assert tracker.call("CLIENT", "TRACKING", "ON", "REDIRECT", sink_id) == b"OK"
    tracker.call("GET", "gone")
    sink.close()
    wait_until(lambda: sink_id not in [int(e["id"]) for e in
                                       redis.Redis(HOST, endpoint.port).client_list()],
               10, what="the redirect client to be gone")
    writer.call("SET", "gone", "x")
    push = tracker.read(timeout=5)
    assert isinstance(push, Push) and push[:2] == [b"tracking-redir-broken", sink_id]
    tracker.close()
    writer.close()


def test_sequential_commands_of_two_workers_on_the_same_keys_run_one_after_the_other(
        shard_ports):
    for port in shard_ports:
        redis.Redis(HOST, port).flushall()
    with Endpoint(HOST, 0, None, ShardMap.even([(HOST, p) for p in shard_ports]),
                  threads=THREADS, multi_slot_commands="sequential") as ep:
        src, dst = "{a}list", "{b}list"
        assert slot_of(src) != slot_of(dst)
        shard_map = ShardMap.even([(HOST, p) for p in shard_ports])
        assert shard_map.shard_of_slot(slot_of(src)) != shard_map.shard_of_slot(slot_of(dst))
        items = [f"item:{i}" for i in range(300)]
        redis.Redis(HOST, ep.port).rpush(src, *items)
        movers = [conn_on_worker(ep, w % THREADS)[0] for w in range(4)]

        def move(conn):
            while conn.call("LMOVE", src, dst, "RIGHT", "LEFT") is not None:
                pass

        threads = [threading.Thread(target=move, args=(c,)) for c in movers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        check = redis.Redis(HOST, ep.port)
        # No element moved twice (in both lists, or twice in dst) nor lost.
        assert check.llen(src) == 0
        assert sorted(x.decode() for x in check.lrange(dst, 0, -1)) == sorted(items)
        for c in movers:
            c.close()


def test_a_shard_busy_with_a_script_is_busy_for_every_worker(endpoint, shard_ports):
    for port in shard_ports:
        assert RespConn(port).call("CONFIG", "SET", "busy-reply-threshold", "50") == b"OK"
    runner, _ = conn_on_worker(endpoint, 0)
    other, _ = conn_on_worker(endpoint, 1)
    try:
        runner.send(["EVAL", "while true do end", "0"])
        # The worker of the script learns it from its probe, the other one from that worker.
        wait_until(lambda: other.call("PING").startswith(b"BUSY"), 10,
                   what="PING on the other worker to answer BUSY")
        assert other.call("SCRIPT", "KILL") == b"OK"
        assert isinstance(runner.read(timeout=10), Error)      # the script's: killed
        wait_until(lambda: other.call("PING") == b"PONG", 10, what="the shard to serve again")
    finally:
        for port in shard_ports:
            conn = RespConn(port)
            conn.call("SCRIPT", "KILL")
            conn.call("CONFIG", "SET", "busy-reply-threshold", "5000")
        runner.close()
        other.close()
