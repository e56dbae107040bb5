"""What the control plane needs from the proxy core: pause and resume around a live migration,
waking the loop from another thread, and several database endpoints served by threads of one
process (dmc.endpoint.Endpoint). Real redis-server shards; proxies in this process."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import pytest
import redis
from conftest import PROXY_THREADS
from raw_resp import RawClient
from waiting import wait_until

from dmc import _fastpath
from dmc.commands import table_from_shards
from dmc.endpoint import Endpoint, EndpointStopped
from dmc.local import start_redis_on_free_port
from dmc.processes import stop_process
from dmc.proxy import ProxyConfig, open_proxy
from dmc.shard_map import SLOT_COUNT, ShardMap

HOST = "127.0.0.1"


@dataclass
class Servers:
    ports: list[int]
    procs: list
    clients: dict = field(default_factory=dict)

    def client(self, i: int) -> redis.Redis:
        """A client of server i itself, not through any proxy."""
        if i not in self.clients:
            self.clients[i] = redis.Redis(host=HOST, port=self.ports[i], socket_timeout=10,
                                          protocol=2)
        return self.clients[i]

    def keys_on(self, i: int) -> set[bytes]:
        return set(self.client(i).keys("*"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Four redis-servers: the first three are a database's shards, the fourth a spare that a
    new shard map moves slots to."""
    workdir = tmp_path_factory.mktemp("pause")
    servers = Servers([], [])
    try:
        for _ in range(4):
            port, proc = start_redis_on_free_port(workdir)
            servers.ports.append(port)
            servers.procs.append(proc)
        yield servers
    finally:
        for c in servers.clients.values():
            c.close()
        for proc in servers.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)     # a test may have stopped it
            stop_process(proc)


@pytest.fixture
def shards(servers):
    """The servers, emptied."""
    for i in range(len(servers.ports)):
        servers.client(i).flushall()
    return servers


@pytest.fixture
def endpoint():
    """Start Endpoints; every one is stopped when the test ends."""
    made = []

    def make(shard_map: ShardMap, password: str | None = None) -> Endpoint:
        ep = Endpoint(HOST, 0, password, shard_map, threads=PROXY_THREADS).start()
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.stop()


def even_map(servers: Servers, *indices: int, version: int = 1) -> ShardMap:
    return ShardMap.even([(HOST, servers.ports[i]) for i in indices], version)


def moved(shard_map: ShardMap, slot: int, to: tuple[str, int]) -> ShardMap:
    """shard_map with one slot moved to another shard (added to the map if new), version + 1."""
    shards = list(shard_map.shards)
    if to not in shards:
        shards.append(to)
    owners = [shards.index(shard_map.shards[o]) for o in shard_map.slot_owners()]
    owners[slot] = shards.index(to)
    ranges = [[] for _ in shards]
    first = 0
    for s in range(1, SLOT_COUNT + 1):
        if s == SLOT_COUNT or owners[s] != owners[first]:
            ranges[owners[first]].append((first, s - 1))
            first = s
    return ShardMap(shard_map.version + 1, tuple(shards), tuple(map(tuple, ranges)))


def key_on(shard_map: ShardMap, port: int, prefix: str) -> str:
    """A key of that prefix whose slot the shard on `port` owns in shard_map."""
    for i in range(100000):
        key = f"{prefix}{i}"
        if shard_map.shard_of_slot(_fastpath.slot_of(key))[1] == port:
            return key
    raise AssertionError(f"no key on port {port}")


def mixed_commands(n: int, count: int = 1000) -> list[tuple]:
    """Client n's pipeline: writes and reads on keys of its own spread over every shard,
    multi-key commands split across shards, and commands the proxy answers itself."""
    cmds = []
    for i in range(count):
        k = f"c{n}:k{i % 17}"
        kind = i % 10
        if kind == 0:
            cmds.append(("SET", k, i))
        elif kind == 1:
            cmds.append(("GET", k))
        elif kind == 2:
            cmds.append(("INCR", f"c{n}:counter"))
        elif kind == 3:
            cmds.append(("MGET", k, f"c{n}:k{(i + 5) % 17}", f"c{n}:k{(i + 11) % 17}"))
        elif kind == 4:
            cmds.append(("RPUSH", f"c{n}:list", i))
        elif kind == 5:
            cmds.append(("LRANGE", f"c{n}:list", -3, -1))
        elif kind == 6:
            cmds.append(("DEL", f"c{n}:k{(i + 3) % 17}", f"c{n}:k{(i + 7) % 17}"))
        elif kind == 7:
            cmds.append(("APPEND", k, "x"))
        elif kind == 8:
            cmds.append(("PING", f"p{i}"))
        else:
            cmds.append(("EXISTS", k, f"c{n}:k{(i + 1) % 17}", f"c{n}:counter"))
    return cmds


def reference_replies(ref: redis.Redis, commands) -> list:
    """The same commands on one plain redis-server, as raw replies."""
    port = ref.connection_pool.connection_kwargs["port"]
    with RawClient(port) as c:
        return c.call(*commands)


# ---- pause and resume ------------------------------------------------------------------------

def test_a_paused_proxy_sends_nothing_to_the_shards_until_resumed(shards, endpoint):
    m = even_map(shards, 0, 1, 2)
    ep = endpoint(m)
    key = key_on(m, shards.ports[1], "held")
    ep.pause()
    assert ep.call(lambda p: p.paused)
    c = RawClient(ep.port)
    c.send(("SET", key, "v"), ("GET", key))
    late = RawClient(ep.port)            # a connection made while paused is accepted
    late.send(("PING",))
    wait_until(lambda: ep.stats()["clients"] == 2, what="both clients accepted")
    assert c.nothing_within(0.3) and late.nothing_within(0.01)
    assert shards.client(1).get(key) is None
    assert ep.inflight() == 0
    ep.resume()
    assert c.replies(2) == [b"OK", b"v"]
    assert late.replies(1) == [b"PONG"]
    assert shards.client(1).get(key) == b"v"
    c.close()
    late.close()


def test_held_pipelines_are_answered_in_request_order_after_resume(shards, endpoint, ref):
    ep = endpoint(even_map(shards, 0, 1, 2))
    pipelines = [mixed_commands(n) for n in range(5)]
    ep.pause()
    clients = [RawClient(ep.port) for _ in pipelines]
    for c, cmds in zip(clients, pipelines):
        c.send(*cmds)
    wait_until(lambda: ep.stats()["clients"] == len(clients), what="clients accepted")
    assert clients[0].nothing_within(0.3)
    assert all(shards.client(i).dbsize() == 0 for i in range(3))
    ep.resume()
    for c, cmds in zip(clients, pipelines):
        assert c.replies(len(cmds)) == reference_replies(ref, cmds)
        c.close()


def test_pipelines_answer_in_order_while_the_proxy_is_paused_and_resumed_again_and_again(
        shards, endpoint, ref):
    ep = endpoint(even_map(shards, 0, 1, 2))
    pipelines = [mixed_commands(n) for n in range(4)]
    results: dict[int, list] = {}
    errors = []

    def run(n):
        c = RawClient(ep.port)
        try:
            got = []
            for start in range(0, len(pipelines[n]), 20):
                batch = pipelines[n][start:start + 20]
                c.send(*batch)
                got += c.replies(len(batch))
            results[n] = got
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(pipelines))]
    for t in threads:
        t.start()
    toggles = 0
    while any(t.is_alive() for t in threads):
        # The sleeps are the behaviour under test: paused for a few ms, then serving for a few.
        ep.pause()
        time.sleep(0.003)
        ep.resume()
        toggles += 1
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert not errors
    assert toggles >= 5
    for n, cmds in enumerate(pipelines):
        assert results[n] == reference_replies(ref, cmds)


def test_inflight_falls_to_zero_while_paused_once_the_shards_answer(shards, endpoint):
    m = even_map(shards, 0, 1, 2)
    ep = endpoint(m)
    slow_key = key_on(m, shards.ports[0], "slow")
    held_key = key_on(m, shards.ports[1], "held")
    # Waiting on purpose, not counted: a client blocked in BLPOP, a subscriber.
    blocked = RawClient(ep.port)
    blocked.send(("BLPOP", key_on(m, shards.ports[2], "queue"), 0))
    subscriber = RawClient(ep.port)
    subscriber.send(("SUBSCRIBE", "news"))
    assert subscriber.replies(1) == [[b"subscribe", b"news", 1]]
    wait_until(lambda: any(c["cmd"] == "blpop" for c in shards.client(2).client_list()),
               what="the BLPOP to reach its shard")
    assert ep.inflight() == 0
    shards.procs[0].send_signal(signal.SIGSTOP)
    try:
        writer = RawClient(ep.port)
        writer.send(("SET", slow_key, "1"))
        wait_until(lambda: ep.inflight() == 1, what="the SET in flight")
        ep.pause()
        held = RawClient(ep.port)
        held.send(("SET", held_key, "1"))
        assert held.nothing_within(0.2)
        assert ep.inflight() == 1
    finally:
        shards.procs[0].send_signal(signal.SIGCONT)
    assert writer.replies(1) == [b"OK"]
    assert ep.wait_drained(5.0)
    assert ep.call(lambda p: p.paused)
    assert shards.client(1).get(held_key) is None
    ep.resume()
    assert held.replies(1) == [b"OK"]
    assert shards.client(1).get(held_key) == b"1"
    with redis.Redis(host=HOST, port=ep.port, protocol=2) as c:
        c.rpush(key_on(m, shards.ports[2], "queue"), "x")
    assert blocked.replies(1)[0][1] == b"x"
    for c in (blocked, subscriber, writer, held):
        c.close()


def test_writes_held_across_a_new_map_land_on_the_new_shard_only(shards, endpoint):
    old = even_map(shards, 0)
    ep = endpoint(old)
    with redis.Redis(host=HOST, port=ep.port, protocol=2) as c:
        c.set("before", "1")
    ep.pause()
    assert ep.wait_drained(5.0)
    writers = [RawClient(ep.port) for _ in range(3)]
    for n, w in enumerate(writers):
        w.send(*[("SET", f"w{n}:{i}", i) for i in range(200)])
    assert writers[0].nothing_within(0.2)
    assert ep.apply_shard_map(even_map(shards, 3, version=2))
    ep.resume()
    for w in writers:
        assert w.replies(200) == [b"OK"] * 200
        w.close()
    assert shards.keys_on(0) == {b"before"}
    assert len(shards.keys_on(3)) == 600


def test_a_client_that_hangs_up_while_held_is_cleaned_up(shards, endpoint):
    m = even_map(shards, 0, 1, 2)
    ep = endpoint(m)
    ep.pause()
    gone = RawClient(ep.port)
    gone.send(("SET", "gone", "1"))
    stays = RawClient(ep.port)
    stays.send(("SET", "stays", "1"))
    wait_until(lambda: ep.stats()["clients"] == 2, what="clients accepted")
    assert gone.nothing_within(0.1)
    gone.close()
    wait_until(lambda: ep.stats()["clients"] == 1, what="the client that left to be closed")
    ep.resume()
    assert stays.replies(1) == [b"OK"]
    stays.close()
    with redis.Redis(host=HOST, port=ep.port, protocol=2) as c:
        assert c.get("stays") == b"1"
        assert c.get("gone") is None


def _over_three_shards(shards, endpoint):
    """An endpoint over shards 0-2, and the slot of `{t}`, the one these tests move to shard 3:
    (map, endpoint, slot)."""
    old = even_map(shards, 0, 1, 2)
    return old, endpoint(old), _fastpath.slot_of("{t}")


def _move_to_shard_3_while_paused(ep, old, slot, shards) -> bool:
    """Pause the endpoint and install the map with `slot` on shard 3 (True: installed)."""
    ep.pause()
    return ep.apply_shard_map(moved(old, slot, (HOST, shards.ports[3])))


@pytest.mark.parametrize("queued_after_the_pause", [(), (("INCR", "{t}n"),)],
                         ids=["exec-only", "incr-and-exec"])
def test_exec_held_across_a_pause_runs_on_the_shard_of_the_new_map(shards, endpoint,
                                                                   queued_after_the_pause):
    old, ep, slot = _over_three_shards(shards, endpoint)
    was = old.shard_of_slot(slot)[1]
    c = RawClient(ep.port)
    c.send(("MULTI",), ("SET", "{t}a", "1"))
    assert c.replies(2) == [b"OK", b"QUEUED"]
    assert _move_to_shard_3_while_paused(ep, old, slot, shards)
    c.send(*queued_after_the_pause, ("EXEC",))
    assert c.nothing_within(0.2)
    ep.resume()
    n = len(queued_after_the_pause)
    assert c.replies(n + 1) == [b"QUEUED"] * n + [[b"OK", 1][:n + 1]]
    assert shards.keys_on(3) == ({b"{t}a", b"{t}n"} if n else {b"{t}a"})
    assert shards.keys_on(shards.ports.index(was)) == set()
    c.close()


def test_exec_after_a_map_change_aborts_when_its_keys_are_now_on_two_shards(shards, endpoint):
    old, ep, slot = _over_three_shards(shards, endpoint)
    other = key_on(old, old.shard_of_slot(slot)[1], "same-shard-other-slot")
    assert _fastpath.slot_of(other) != slot
    c = RawClient(ep.port)
    c.send(("MULTI",), ("SET", "{t}a", "1"), ("SET", other, "1"))
    assert c.replies(3) == [b"OK", b"QUEUED", b"QUEUED"]
    assert _move_to_shard_3_while_paused(ep, old, slot, shards)
    ep.resume()
    c.send(("EXEC",))
    assert c.replies(1)[0][1].startswith("EXECABORT")
    assert all(shards.client(i).dbsize() == 0 for i in range(4))
    c.close()


@pytest.mark.parametrize("queued_after_the_pause", [(), (("SET", "{t}b", "1"),)],
                         ids=["exec-only", "set-and-exec"])
def test_exec_after_a_map_change_fails_like_a_touched_watch(shards, endpoint,
                                                            queued_after_the_pause):
    old, ep, slot = _over_three_shards(shards, endpoint)
    c = RawClient(ep.port)
    c.send(("WATCH", "{t}a"), ("MULTI",), ("SET", "{t}a", "1"))
    assert c.replies(3) == [b"OK", b"OK", b"QUEUED"]
    assert _move_to_shard_3_while_paused(ep, old, slot, shards)
    c.send(*queued_after_the_pause, ("EXEC",))
    ep.resume()
    assert c.replies(len(queued_after_the_pause) + 1) == \
        [b"QUEUED"] * len(queued_after_the_pause) + [None]
    assert all(shards.client(i).dbsize() == 0 for i in range(4))
    # The connection is usable: the next transaction watches on the new shard and runs.
    c.send(("WATCH", "{t}a"), ("MULTI",), ("SET", "{t}a", "2"), ("EXEC",))
    assert c.replies(4) == [b"OK", b"OK", b"QUEUED", [b"OK"]]
    assert shards.client(3).get("{t}a") == b"2"
    c.close()


# ---- wake-up, endpoints, passwords -----------------------------------------------------------

def _in_epoll_wait(thread: threading.Thread) -> bool:
    """The thread is blocked in the kernel's epoll wait (Linux names it in /proc)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            return f.read() == "do_epoll_wait"
    except FileNotFoundError:      # between two turns the thread is not there yet or any more
        return False


def test_wakeup_from_another_thread_ends_a_turn_waiting_in_epoll(shards):
    sock, proxy = open_proxy(ProxyConfig(port=0), even_map(shards, 0))
    ended, stop = [], threading.Event()

    def loop():         # turns until told to stop: a turn may also end on its own events
        while not stop.is_set():
            proxy.run_once(10000)
            ended.append(time.monotonic())
    t = threading.Thread(target=loop)
    t.start()
    try:
        wait_until(lambda: _in_epoll_wait(t), 5, 0.01, "the loop thread in epoll_wait")
        woken_at = time.monotonic()
        proxy.wakeup()
        wait_until(lambda: ended and ended[-1] >= woken_at, 5, 0.01, "the turn ended")
        assert min(e for e in ended if e >= woken_at) - woken_at < 0.5
    finally:
        stop.set()
        proxy.wakeup()
        t.join(5)
        proxy.close()
        sock.close()


def test_call_runs_on_the_loop_thread_and_raises_there_errors_here(shards, endpoint):
    ep = endpoint(even_map(shards, 0))
    # One thread: on the loop's own; workers: on the caller's, while every worker is stopped.
    where = f"endpoint:{ep.port}" if PROXY_THREADS == 1 else threading.current_thread().name
    assert ep.call(lambda p: threading.current_thread().name) == where
    with pytest.raises(ZeroDivisionError):
        ep.call(lambda p: 1 / 0)
    assert ep.call(lambda p: p.map_version) == 1


def test_a_stopped_endpoint_closes_its_clients_and_its_port(shards):
    ep = Endpoint(HOST, 0, None, even_map(shards, 0)).start()
    c = RawClient(ep.port)
    c.send(("PING",))
    assert c.replies(1) == [b"PONG"]
    ep.stop()
    assert c.sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, ep.port), timeout=1)
    with pytest.raises(EndpointStopped):
        ep.call(lambda p: p.map_version)
    c.close()


def test_one_command_table_serves_one_proxy(shards):
    table, _ = table_from_shards([(HOST, shards.ports[0])])
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind((HOST, 0))
            s.listen(1)
        first = _fastpath.Proxy(a.fileno(), table)
        with pytest.raises(ValueError):
            _fastpath.Proxy(b.fileno(), table)
        first.close()


def test_two_endpoints_serve_two_databases_from_threads_of_one_process(shards, endpoint):
    ep1 = endpoint(even_map(shards, 0, 1))
    ep2 = endpoint(even_map(shards, 2))
    idle = call_latency(ep1, 500)
    stop = threading.Event()
    written = {1: 0, 2: 0}
    lock = threading.Lock()
    errors = []

    def write(db, port, n):
        c = redis.Redis(host=HOST, port=port, socket_timeout=10, protocol=2)
        i = 0
        try:
            while not stop.is_set():
                pipe = c.pipeline(transaction=False)
                for j in range(100):
                    pipe.set(f"db{db}:w{n}:{i + j}", i + j)
                assert pipe.execute() == [True] * 100
                i += 100
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            c.close()
            with lock:
                written[db] += i

    threads = [threading.Thread(target=write, args=(db, ep.port, n))
               for db, ep in ((1, ep1), (2, ep2)) for n in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: all(e.stats()["commands"].get("set", [0])[0] >= 1000 for e in (ep1, ep2)),
               what="both databases under write load")
    loaded = call_latency(ep1, 500)
    for _ in range(5):      # the other database pauses and resumes; this one keeps serving
        ep2.pause()
        time.sleep(0.02)    # paused for a while: the behaviour under test
        ep2.resume()
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert written[1] > 0 and written[2] > 0
    db1_keys = shards.keys_on(0) | shards.keys_on(1)
    assert len(db1_keys) == written[1] and all(k.startswith(b"db1:") for k in db1_keys)
    db2_keys = shards.keys_on(2)
    assert len(db2_keys) == written[2] and all(k.startswith(b"db2:") for k in db2_keys)
    assert ep1.stats()["commands"]["set"][0] == written[1]
    assert ep2.stats()["commands"]["set"][0] == written[2]
    print(f"\ncall() round trip: idle median {idle[0]:.0f} us, p99 {idle[1]:.0f} us; "
          f"under write load median {loaded[0]:.0f} us, p99 {loaded[1]:.0f} us; "
          f"{written[1] + written[2]} SETs")
    assert idle[0] < 5000 and loaded[0] < 50000


def call_latency(ep: Endpoint, n: int) -> tuple[float, float]:
    """(median, p99) in microseconds of n call() round trips."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ep.call(lambda p: p.map_version)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def test_a_new_password_applies_to_new_auths(shards, endpoint):
    ep = endpoint(even_map(shards, 0), password="old")
    before = RawClient(ep.port)
    before.send(("AUTH", "old"), ("PING",))
    assert before.replies(2) == [b"OK", b"PONG"]
    unauthed = RawClient(ep.port)
    unauthed.send(("PING",))
    assert unauthed.replies(1)[0][1].startswith("NOAUTH")
    ep.set_password("new")
    after = RawClient(ep.port)
    after.send(("AUTH", "old"), ("AUTH", "new"), ("PING",))
    wrongpass = "WRONGPASS invalid username-password pair or user is disabled."
    assert after.replies(3) == [("error", wrongpass), b"OK", b"PONG"]
    before.send(("PING",))
    assert before.replies(1) == [b"PONG"]          # authenticated before: stays so, as in Redis
    ep.set_password(None)
    unauthed.send(("PING",))
    assert unauthed.replies(1) == [b"PONG"]        # no password: every client may run commands
    for c in (before, unauthed, after):
        c.close()
