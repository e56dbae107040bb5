"""What the proxy does when things go wrong: a dead or slow shard, a client sending garbage or
not reading its replies, too many clients; and a shard map replaced under live connections."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from raw_resp import RawClient
from waiting import wait_until

from dmc._fastpath import slot_of
from dmc.local import start_redis, start_redis_on_free_port
from dmc.processes import free_port, stop_process


def keys_by_shard(db, count=60):
    """Some keys for each shard index."""
    out = {0: [], 1: [], 2: []}
    i = 0
    while min(len(v) for v in out.values()) < count:
        k = f"key:{i}"
        out[db.shard_index_of(k)].append(k)
        i += 1
    return out


def raw_exchange(port, data: bytes, wait=0.5) -> tuple[bytes, bool]:
    """Send bytes, read until the server closes or goes quiet; (reply, closed by server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if data:
            s.sendall(data)
        s.settimeout(wait)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except socket.timeout:
            return out, False


def proxy_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_killed_shard_fails_only_its_commands_and_is_used_again_when_back(make_db):
    db = make_db()
    c = db.client()
    by_shard = keys_by_shard(db)
    for keys in by_shard.values():
        c.mset({k: k for k in keys})
    db.kill_shard(1)
    for k in by_shard[1][:10]:
        with pytest.raises(redis.ResponseError, match=f"shard 127.0.0.1:{db.shard_ports[1]}"):
            c.get(k)
    # The other shards keep answering on the same client connection.
    for k in by_shard[0][:10] + by_shard[2][:10]:
        assert c.get(k) == k.encode()
    # A command spanning the dead shard fails as a whole; one that avoids it works.
    with pytest.raises(redis.ResponseError):
        c.mget(by_shard[0][0], by_shard[1][0])
    assert c.mget(by_shard[0][0], by_shard[2][0]) == [by_shard[0][0].encode(), by_shard[2][0].encode()]
    db.restart_shard(1)
    assert wait_until(lambda: c.set(by_shard[1][0], "again"), 5, ignoring=redis.ResponseError,
                      what="the shard back")
    assert c.get(by_shard[1][0]) == b"again"
    assert db.shard(1).get(by_shard[1][0]) == b"again"
    assert db.proxy.poll() is None


def test_slow_shard_times_out_its_commands_without_blocking_the_others(make_db):
    db = make_db(proxy_args=("--backend-timeout-ms", "500"))
    c = db.client()
    other = db.client()
    by_shard = keys_by_shard(db)
    stalled_id = str(c.client_id())
    os.kill(db.shard_procs[2].pid, signal.SIGSTOP)
    outcome = {}

    def stalled_get():
        started = time.monotonic()
        try:
            c.get(by_shard[2][0])
        except redis.ResponseError as exc:
            outcome["error"] = str(exc)
        outcome["waited"] = time.monotonic() - started

    try:
        stalled = threading.Thread(target=stalled_get)
        stalled.start()
        wait_until(lambda: any(e["id"] == stalled_id and e["cmd"] == "get"
                               for e in other.client_list()), 2, 0.01, "the GET sent")
        # While that command waits on the stopped shard, the healthy shards answer at once.
        t0 = time.monotonic()
        for k in by_shard[0][:20] + by_shard[1][:20]:
            other.set(k, 1)
        assert time.monotonic() - t0 < 0.3
        assert stalled.is_alive()
        stalled.join(5)
    finally:
        os.kill(db.shard_procs[2].pid, signal.SIGCONT)
    assert "timeout waiting for shard" in outcome["error"]
    assert 0.4 < outcome["waited"] < 3, outcome
    assert wait_until(lambda: c.set(by_shard[2][0], "v"), 5, ignoring=redis.ResponseError,
                      what="the shard back")
    assert c.get(by_shard[2][0]) == b"v"


@pytest.mark.parametrize("garbage,error", [
    (b"*2\r\n:3\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"GET \"unterminated\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b"A" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
])
def test_garbage_gets_a_protocol_error_and_closes_only_that_client(db, r, garbage, error):
    r.set("survivor", "yes")
    reply, closed = raw_exchange(db.port, b"PING\r\n" + garbage)
    # Replies owed before the garbage come first, then Redis's error text, then the close.
    assert reply == b"+PONG\r\n" + error
    assert closed
    assert r.get("survivor") == b"yes"
    assert db.proxy.poll() is None


def test_quit_answers_ok_and_closes(db, r):
    reply, closed = raw_exchange(db.port, b"SET q 1\r\nQUIT\r\nSET q 2\r\n")
    assert reply == b"+OK\r\n+OK\r\n"
    assert closed
    assert r.get("q") == b"1"


def test_client_that_does_not_read_cannot_grow_proxy_memory(make_db):
    db = make_db(proxy_args=("--client-output-limit-mb", "32"))
    r = db.client()
    value = b"x" * (1 << 20)
    r.set("big", value)
    rss_before = proxy_rss_kb(db.proxy.pid)
    s = socket.create_connection(("127.0.0.1", db.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 200
    disconnected = False
    deadline = time.monotonic() + 3
    # Ask for far more replies than the limit allows, and read none of them.
    while time.monotonic() < deadline and not disconnected:
        try:
            s.send(request)
        except BlockingIOError:
            time.sleep(0.01)
        except (ConnectionResetError, BrokenPipeError):
            disconnected = True
    time.sleep(0.5)     # what the proxy read is processed: its memory is at its height now
    growth_mb = (proxy_rss_kb(db.proxy.pid) - rss_before) / 1024
    # Other clients are served meanwhile.
    assert r.get("big") == value
    if not disconnected:
        s.setblocking(True)
        s.settimeout(5)
        try:
            while s.recv(1 << 20):
                pass
            disconnected = True
        except (ConnectionResetError, BrokenPipeError):
            disconnected = True
    s.close()
    # The reader that fell behind its output limit was disconnected.
    assert disconnected
    assert growth_mb < 32 + 64, growth_mb


def test_max_clients_refuses_the_one_too_many_with_redis_error(make_db):
    db = make_db(proxy_args=("--max-clients", "5"))
    held = [socket.create_connection(("127.0.0.1", db.port)) for _ in range(5)]
    try:
        for s in held:
            s.sendall(b"PING\r\n")
            assert s.recv(64) == b"+PONG\r\n"
        # The refusal is written on accept, before the client says anything.
        reply, closed = raw_exchange(db.port, b"")
        assert reply == b"-ERR max number of clients reached\r\n"
        assert closed
    finally:
        for s in held:
            s.close()
    # Accepted again once the proxy has seen the held clients go.
    wait_until(lambda: raw_exchange(db.port, b"PING\r\n")[0] == b"+PONG\r\n", 5,
               ignoring=ConnectionResetError, what="a client accepted again")


def test_shard_map_replaced_on_sighup_without_dropping_clients(tmp_path):
    ports = [free_port() for _ in range(3)]
    shards = [start_redis(p, tmp_path / "shards") for p in ports]
    config = tmp_path / "db.toml"
    config.write_text('port = 0\nshards = ["127.0.0.1:%d", "127.0.0.1:%d"]\n' % tuple(ports[:2]))
    proxy = subprocess.Popen([sys.executable, "-m", "dmc.proxy", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        port = int(proxy.stdout.readline().split()[3].rsplit(b":", 1)[1])
        c = RawClient(port, timeout=5)
        [client_id] = c.call(["CLIENT", "ID"])
        assert c.call(["SET", "before", 1]) == [b"OK"]
        # Three shards now, slots given explicitly: the third takes the upper half.
        config.write_text(
            'port = 0\nshards = ["127.0.0.1:%d", "127.0.0.1:%d", "127.0.0.1:%d"]\n'
            'slots = [[[0, 4095]], [[4096, 8191]], [[8192, 16383]]]\n' % tuple(ports))
        proxy.send_signal(signal.SIGHUP)
        high = [k for k in (f"k{i}" for i in range(200)) if slot_of(k) >= 8192][:20]
        third = redis.Redis(port=ports[2], protocol=2)
        wait_until(lambda: c.call(["SET", high[0], "probe"]) == [b"OK"]
                   and third.get(high[0]) == b"probe", 5, what="the new map applied")
        assert c.call(*(["SET", k, "v"] for k in high)) == [b"OK"] * len(high)
        assert {k.decode() for k in third.keys("*")} == set(high)
        # The same client connection served before and after the switch: the proxy knows it
        # by the same CLIENT ID, and it was never closed (a closed one raises ConnectionError).
        assert c.call(["CLIENT", "ID"]) == [client_id]
        assert c.call(["PING"]) == [b"PONG"]
        c.close()
        third.close()
        assert proxy.poll() is None
    finally:
        stop_process(proxy)
        proxy.stderr.close()
        for s in shards:
            stop_process(s)


# ---- input limits: client-query-buffer-limit and the process's input budget (issue 21) --------

def send_declared_bulk(port: int, declared: int, send: int, out: dict, name) -> None:
    """SET k <a bulk string declared `declared` bytes long>, of which `send` bytes are sent;
    out[name] = (bytes sent, closed by the server, bytes answered)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent, closed, answer = 0, False, b""
    try:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % declared)
        piece = b"x" * (1 << 20)
        while sent < send:
            s.sendall(piece)
            sent += len(piece)
        s.settimeout(2)
        answer = s.recv(4096)
        closed = answer == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except socket.timeout:
        pass
    finally:
        s.close()
    out[name] = (sent, closed, answer)


def test_a_client_past_its_query_buffer_limit_is_closed_without_a_reply_as_redis_does(
        make_db, tmp_path):
    db = make_db(nshards=1, proxy_args=("--client-query-buffer-limit", str(4 << 20)))
    port, plain = start_redis_on_free_port(tmp_path / "plain", "--client-query-buffer-limit",
                                           "4mb")
    try:
        seen = {}
        for name, p in (("proxy", db.port), ("redis", port)):
            send_declared_bulk(p, 100 << 20, 16 << 20, seen, name)
        assert seen["proxy"][1:] == seen["redis"][1:] == (True, b""), seen
        assert db.client().ping() and redis.Redis(port=port).ping()
        assert "Closing client that reached max query buffer length" in \
            (tmp_path / "plain" / f"redis-{port}.log").read_text()
    finally:
        stop_process(plain)


def test_clients_sending_huge_bulks_are_evicted_past_the_budget_and_a_small_one_is_served(
        make_db):
    budget = 32 << 20
    db = make_db(nshards=1, proxy_args=("--maxmemory-clients", str(budget)))
    small = db.client()
    small.set("small", "1")
    rss_before = proxy_rss_kb(db.proxy.pid)
    seen: dict = {}
    senders = [threading.Thread(target=send_declared_bulk,
                                args=(db.port, 500 << 20, 24 << 20, seen, i)) for i in range(4)]
    peak = 0
    answered = 0
    for t in senders:
        t.start()
    while any(t.is_alive() for t in senders):
        assert small.get("small") == b"1"       # served all along
        answered += 1
        peak = max(peak, proxy_rss_kb(db.proxy.pid) - rss_before)
        time.sleep(0.01)
    for t in senders:
        t.join()
    evicted = [i for i, (_sent, closed, answer) in seen.items() if closed and answer == b""]
    # 4 x 24 MB were sent; the proxy held at most its budget and a read more per client
    print(f"peak RSS growth {peak / 1024:.1f} MB, evicted {len(evicted)} of 4, small client "
          f"answered {answered} times")
    assert len(evicted) >= 2, seen
    assert peak / 1024 < budget / (1 << 20) + 32, peak
    assert answered > 0 and small.get("small") == b"1"
