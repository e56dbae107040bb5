"""The blocking pops and moves over keys of several shards (issue 15) through a 3-shard dmcproxy
with `--multi-slot-commands sequential`, compared with one redis-server: the exact reply bytes
(RESP2 and RESP3) when a key has an element, when the client waits and a push on another shard
wakes it, and when it times out; and, with several shards ready at once or several clients
waiting on the same keys, every element served once and none lost (design:
dmc/fastpath/blocking_sequential.pxi)."""

from __future__ import annotations

import threading

import pytest

from replies import Error, RespConn
from test_multislot import data_of, filled, run_scenario, shard_keys
from waiting import wait_until


def ref_port(ref) -> int:
    return ref.connection_pool.connection_kwargs["port"]


def connect(port: int, resp3: bool) -> RespConn:
    c = RespConn(port, timeout=10)
    if resp3:
        c.call("HELLO", "3")
    return c


# Replies when a key has an element (or an error, or a short timeout that passes): one
# redis-server's bytes, step by step. {a}, {b}, {c} live on three different shards.
NOT_BLOCKING = {
    "blpop": [["RPUSH", "{b}", "x", "y"], ["BLPOP", "{a}", "{b}", "{c}", "1"],
              ["RPUSH", "{a}", "1"], ["BLPOP", "{c}", "{b}", "{a}", "0"],
              ["BLPOP", "{c}", "{a}", "{b}", "0"], ["BLPOP", "{c}", "{a}", "{b}", "0.05"]],
    "brpop": [["RPUSH", "{c}", "x", "y"], ["BRPOP", "{a}", "{b}", "{c}", "1"],
              ["BRPOP", "{a}", "{b}", "0.05"]],
    "blmpop": [["RPUSH", "{b}", "1", "2", "3"], ["BLMPOP", "1", "3", "{a}", "{b}", "{c}", "LEFT"],
               ["BLMPOP", "0", "2", "{a}", "{b}", "RIGHT", "COUNT", "5"],
               ["BLMPOP", "0.05", "2", "{a}", "{b}", "LEFT"]],
    "bzpop": [["ZADD", "{b}", "1", "m", "2.5", "n"], ["ZADD", "{c}", "0", "z"],
              ["BZPOPMIN", "{a}", "{b}", "{c}", "1"], ["BZPOPMAX", "{a}", "{b}", "{c}", "0"],
              ["BZPOPMAX", "{a}", "{b}", "{c}", "0"], ["BZPOPMIN", "{a}", "{b}", "0.05"]],
    "bzmpop": [["ZADD", "{c}", "1", "m", "2", "n", "3", "o"],
               ["BZMPOP", "1", "3", "{a}", "{b}", "{c}", "MIN", "COUNT", "2"],
               ["BZMPOP", "0", "2", "{b}", "{c}", "MAX"], ["BZMPOP", "0.05", "2", "{a}", "{b}", "MIN"]],
    "blmove": [["RPUSH", "{a}", "1", "2", "3"], ["BLMOVE", "{a}", "{b}", "LEFT", "RIGHT", "1"],
               ["BLMOVE", "{a}", "{b}", "RIGHT", "LEFT", "0"], ["BRPOPLPUSH", "{a}", "{c}", "0"],
               ["BRPOPLPUSH", "{a}", "{c}", "0.05"], ["BLMOVE", "{a}", "{b}", "LEFT", "LEFT", "0.05"]],
    "xread": [["XADD", "{b}", "1-1", "f", "v"], ["XADD", "{c}", "2-1", "g", "w"], ["XADD", "{c}", "2-2", "h", "x"],
              ["XREAD", "STREAMS", "{a}", "{b}", "{c}", "0", "0", "0"],
              ["XREAD", "COUNT", "1", "STREAMS", "{c}", "{a}", "{b}", "0", "0", "0"],
              ["XREAD", "BLOCK", "1000", "STREAMS", "{a}", "{b}", "{c}", "0", "1-1", "2-1"],
              ["XREAD", "STREAMS", "{a}", "{b}", "0", "1-1"], ["XREAD", "BLOCK", "50", "STREAMS", "{a}", "{b}", "$", "$"],
              ["XREAD", "STREAMS", "{a}", "{b}", "0", "bad"], ["XREAD", "BLOCK", "-1", "STREAMS", "{a}", "{b}", "0", "0"],
              ["XREAD", "STREAMS", "{a}", "{b}", "{c}", "0", "0"],
              ["SET", "{a}", "s"], ["XREAD", "STREAMS", "{a}", "{b}", "0", "0"]],
    "errors": [["SET", "{a}", "s"], ["RPUSH", "{b}", "x"], ["BLPOP", "{a}", "{b}", "0"],
               ["BLPOP", "{c}", "{b}", "-1"], ["BLPOP", "{c}", "{b}", "soon"],
               ["BZPOPMIN", "{a}", "{b}", "0"], ["BLMOVE", "{b}", "{a}", "LEFT", "LEFT", "0"],
               ["BLMPOP", "0", "2", "{c}", "{b}", "UP"], ["BLPOP", "{c}", "{b}"]],
}


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
@pytest.mark.parametrize("scenario", sorted(NOT_BLOCKING))
def test_answers_as_one_redis_when_a_key_has_an_element(seq, ref, scenario, resp3):
    names = shard_keys(seq)
    expected = run_scenario(ref_port(ref), NOT_BLOCKING[scenario], names, resp3, raw=True)
    got = run_scenario(seq.port, NOT_BLOCKING[scenario], names, resp3, raw=True)
    assert got == expected


# Blocks on keys of three shards, woken by a push on the second key's shard.
WOKEN = {
    "blpop": (["BLPOP", "{a}", "{b}", "{c}", "5"], ["RPUSH", "{b}", "x", "y"]),
    "brpop": (["BRPOP", "{a}", "{b}", "{c}", "0"], ["RPUSH", "{b}", "x", "y"]),
    "blmpop": (["BLMPOP", "5", "3", "{a}", "{b}", "{c}", "RIGHT", "COUNT", "3"], ["RPUSH", "{b}", "x", "y"]),
    "bzpopmin": (["BZPOPMIN", "{a}", "{b}", "{c}", "5"], ["ZADD", "{b}", "1.5", "m", "2", "n"]),
    "bzpopmax": (["BZPOPMAX", "{a}", "{b}", "{c}", "0"], ["ZADD", "{b}", "1.5", "m", "2", "n"]),
    "bzmpop": (["BZMPOP", "5", "3", "{a}", "{b}", "{c}", "MAX", "COUNT", "1"], ["ZADD", "{b}", "1", "m", "2", "n"]),
    "blmove": (["BLMOVE", "{b}", "{a}", "LEFT", "RIGHT", "5"], ["RPUSH", "{b}", "x", "y"]),
    "brpoplpush": (["BRPOPLPUSH", "{b}", "{c}", "0"], ["RPUSH", "{b}", "x", "y"]),
    "xread": (["XREAD", "COUNT", "5", "BLOCK", "5000", "STREAMS", "{a}", "{b}", "{c}", "$", "$", "0-1"],
              ["XADD", "{b}", "1-1", "f", "v"]),
}


def blocked_then_pushed(port, blocking, push, names, resp3, is_blocked):
    waiter = connect(port, resp3)
    pusher = connect(port, False)
    try:
        waiter.send(filled(blocking, names))
        wait_until(is_blocked, timeout=10)
        with pytest.raises(TimeoutError):
            waiter.read_raw(timeout=0.05)       # still waiting
        waiter.sock.settimeout(10)
        pusher.call(*filled(push, names))
        reply = waiter.read_raw(timeout=10)
        return reply, data_of(pusher, [names[k] for k in ("a", "b", "c")])
    finally:
        waiter.close()
        pusher.close()


def blocked_clients(conn_port) -> int:
    c = RespConn(conn_port)
    try:
        info = c.call("INFO", "clients").decode()
    finally:
        c.close()
    return int(info.split("blocked_clients:")[1].split()[0])


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
@pytest.mark.parametrize("scenario", sorted(WOKEN))
def test_a_push_on_the_second_keys_shard_wakes_it_as_one_redis(seq, ref, scenario, resp3):
    names = shard_keys(seq)
    blocking, push = WOKEN[scenario]
    expected = blocked_then_pushed(ref_port(ref), blocking, push, names, resp3,
                                   lambda: blocked_clients(ref_port(ref)) == 1)
    # Through the proxy: every shard of the keys holds a wait (one per key; BLMOVE: its source).
    nwaits = 1 if scenario in ("blmove", "brpoplpush") else 3     # XREAD: one per shard
    shards_waiting = lambda: sum(seq.shard(i).info("clients")["blocked_clients"] for i in range(3))
    got = blocked_then_pushed(seq.port, blocking, push, names, resp3,
                              lambda: shards_waiting() == nwaits)
    assert got == expected
    wait_until(lambda: shards_waiting() == 0, timeout=5)     # the other waits were ended


def test_times_out_as_one_redis(seq, ref):
    names = shard_keys(seq)
    for resp3 in (False, True):
        for cmd in (["BLPOP", "{a}", "{b}", "0.2"], ["BZMPOP", "0.2", "2", "{a}", "{c}", "MIN"],
                    ["BLMOVE", "{a}", "{b}", "LEFT", "LEFT", "0.2"],
                    ["XREAD", "BLOCK", "200", "STREAMS", "{a}", "{b}", "0", "0"],
                    # Over before the keys are all tried: answered without a wait.
                    ["BLPOP", "{a}", "{b}", "{c}", "0.0001"], ["BZPOPMAX", "{a}", "{b}", "{c}", "0.0001"],
                    ["XREAD", "BLOCK", "1", "STREAMS", "{a}", "{b}", "{c}", "0", "0", "0"]):
            expected = connect(ref_port(ref), resp3).call_raw(*filled(cmd, names))
            got = connect(seq.port, resp3).call_raw(*filled(cmd, names))
            assert got == expected, cmd
    assert sum(seq.shard(i).info("clients")["blocked_clients"] for i in range(3)) == 0


@pytest.mark.parametrize("reason", ["TIMEOUT", "ERROR"])
def test_client_unblock_as_one_redis(seq, ref, reason):
    names = shard_keys(seq)
    answers = []
    for port in (ref_port(ref), seq.port):
        waiter, other = connect(port, False), connect(port, False)
        waiter_id = waiter.call("CLIENT", "ID")
        waiter.send(filled(["BLPOP", "{a}", "{b}", "{c}", "0"], names))
        wait_until(lambda: other.call("CLIENT", "UNBLOCK", waiter_id, reason) == 1, timeout=10)
        answers.append(waiter.read_raw(timeout=10))
        waiter.close()
        other.close()
    assert answers[1] == answers[0]


def test_refuse_keeps_blocking_forms_crossslot(db):
    names = shard_keys(db)
    c = RespConn(db.port)
    try:
        for cmd in (["BLPOP", "{a}", "{b}", "0"], ["BLMOVE", "{a}", "{b}", "LEFT", "LEFT", "0"],
                    ["BZMPOP", "0", "2", "{a}", "{b}", "MIN"]):
            reply = c.call(*filled(cmd, names))
            assert isinstance(reply, Error) and reply.startswith(b"CROSSSLOT"), reply
    finally:
        c.close()


def test_xreadgroup_over_several_shards_stays_crossslot(seq):
    """XREADGROUP consumes (its entries go to the consumer's pending list): a wait on every
    shard could not give back what a second shard delivered."""
    names = shard_keys(seq)
    c = RespConn(seq.port)
    try:
        reply = c.call(*filled(["XREADGROUP", "GROUP", "g", "c", "BLOCK", "10", "STREAMS", "{a}", "{b}", ">", ">"], names))
        assert isinstance(reply, Error) and reply.startswith(b"CROSSSLOT"), reply
    finally:
        c.close()


# ---- several shards ready at once, several clients waiting ------------------------------------


def served_once(seq, pop, push_pipeline, remaining, rounds=40, waiters=1):
    """`waiters` clients wait (pop) on a and b; each round pushes to a and b in one go (two
    shards ready at once). Every element pushed is either served to exactly one client or
    still in a key."""
    names = shard_keys(seq)
    got, errors = [], []
    stop = threading.Event()

    def waiter():
        c = seq.client()
        try:
            while not stop.is_set():
                reply = pop(c, names["a"], names["b"])
                if reply is not None:
                    got.append(reply)
        except Exception as exc:       # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(waiters)]
    for t in threads:
        t.start()
    pusher = seq.client()
    pushed = []
    for i in range(rounds):
        p = pusher.pipeline(transaction=False)
        for key in ("a", "b"):
            element = f"{key}{i}"
            push_pipeline(p, names[key], element, i)
            pushed.append(element.encode())
        p.execute()
        wait_until(lambda: len(got) + len(remaining(pusher, names)) >= len(pushed) or errors,
                   timeout=10)
    stop.set()
    for _ in threads:
        # Each waiter ends with one last element of its own.
        p = pusher.pipeline(transaction=False)
        push_pipeline(p, names["a"], "last", rounds)
        p.execute()
    for t in threads:
        t.join(10)
    assert errors == []
    served = [e for e in got if e != b"last"]
    left = [e for e in remaining(pusher, names) if e != b"last"]
    assert sorted(served + left) == sorted(pushed)        # none lost, none twice


def test_two_shards_ready_at_once_list_elements_served_once(seq):
    def pop(c, a, b):
        reply = c.blpop([a, b], timeout=2)
        return reply[1] if reply else None

    served_once(seq, pop, lambda p, key, element, i: p.rpush(key, element),
                lambda c, names: c.lrange(names["a"], 0, -1) + c.lrange(names["b"], 0, -1))


def test_two_shards_ready_at_once_zset_elements_served_once(seq):
    """The waits pop (no zset command waits without popping): a second shard's element is
    pushed back."""
    def pop(c, a, b):
        reply = c.bzpopmin([a, b], timeout=2)
        return reply[1] if reply else None

    served_once(seq, pop, lambda p, key, element, i: p.zadd(key, {element: i}),
                lambda c, names: c.zrange(names["a"], 0, -1) + c.zrange(names["b"], 0, -1))


def test_concurrent_waiters_on_the_same_keys_each_served_once(seq):
    def pop(c, a, b):
        reply = c.blpop([a, b], timeout=2)
        return reply[1] if reply else None

    served_once(seq, pop, lambda p, key, element, i: p.rpush(key, element),
                lambda c, names: c.lrange(names["a"], 0, -1) + c.lrange(names["b"], 0, -1),
                rounds=30, waiters=3)


def test_concurrent_zset_waiters_on_the_same_keys_each_served_once(seq):
    def pop(c, a, b):
        reply = c.bzmpop(2, 2, [a, b], min=True)
        return reply[1][0][0] if reply else None

    served_once(seq, pop, lambda p, key, element, i: p.zadd(key, {element: i}),
                lambda c, names: c.zrange(names["a"], 0, -1) + c.zrange(names["b"], 0, -1),
                rounds=30, waiters=3)


def test_concurrent_blmove_waiters_move_each_element_once(seq):
    names = shard_keys(seq)
    got, errors = [], []

    def waiter():
        c = seq.client()
        try:
            while (reply := c.blmove(names["a"], names["b"], 1, "LEFT", "RIGHT")) is not None:
                got.append(reply)
        except Exception as exc:       # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    pusher = seq.client()
    pushed = [f"e{i}".encode() for i in range(30)]
    for e in pushed:
        pusher.rpush(names["a"], e)
    for t in threads:
        t.join(20)
    assert errors == []
    assert sorted(got) == sorted(pushed)
    assert sorted(pusher.lrange(names["b"], 0, -1)) == sorted(pushed)
    assert pusher.exists(names["a"]) == 0


def test_a_client_that_leaves_while_waiting_takes_nothing(seq):
    names = shard_keys(seq)
    shards_waiting = lambda: sum(seq.shard(i).info("clients")["blocked_clients"] for i in range(3))
    for cmd in (["BLPOP", "{a}", "{b}", "{c}", "0"], ["BZPOPMIN", "{a}", "{b}", "{c}", "0"]):
        waiter = RespConn(seq.port)
        waiter.send(filled(cmd, names))
        wait_until(lambda: shards_waiting() == 3, timeout=10)
        waiter.close()
        wait_until(lambda: shards_waiting() == 0, timeout=10)     # its waits went with it
    c = seq.client()
    c.rpush(names["b"], "x")
    c.zadd(names["c"], {"m": 1})
    assert c.lrange(names["b"], 0, -1) == [b"x"] and c.zrange(names["c"], 0, -1) == [b"m"]


def test_requests_after_a_waiting_command_wait_for_it(seq):
    """A pipeline's replies stay in request order around a blocking command over several shards."""
    names = shard_keys(seq)
    conn = RespConn(seq.port, timeout=10)
    pusher = seq.client()
    try:
        conn.send(["SET", "k", "1"], filled(["BLPOP", "{a}", "{b}", "5"], names), ["GET", "k"])
        assert conn.read() == b"OK"
        with pytest.raises(TimeoutError):
            conn.read(timeout=0.2)           # BLPOP waits, and GET behind it
        conn.sock.settimeout(10)
        pusher.rpush(names["b"], "x")
        assert conn.read() == [names["b"].encode(), b"x"]
        assert conn.read() == b"1"
    finally:
        conn.close()


# ---- the Redis suite's blocking-list cases, with their keys on different shards ----------------
# Each is a transcript: ("send", client, cmd) sends without reading, ("blocked", n) waits until
# n clients are blocked (INFO blocked_clients), ("call", client, cmd) and ("read", client) record
# a reply; the transcripts of one redis-server and of the proxy must be the same.
TRANSCRIPTS = {
    # "BLPOP when new key is moved into place": a RENAME (itself over two shards) wakes it.
    "woken_by_rename": [("send", 1, ["BLPOP", "{a}", "{b}", "5"]), ("blocked", 1),
                        ("call", 0, ["RPUSH", "{c}", "x"]), ("call", 0, ["RENAME", "{c}", "{b}"]),
                        ("read", 1), ("call", 0, ["EXISTS", "{b}", "{c}"])],
    # "BRPOPLPUSH with wrong destination type": woken, the move fails, the element stays.
    "brpoplpush_wrong_destination": [("call", 0, ["SET", "{b}", "s"]),
                                     ("send", 1, ["BRPOPLPUSH", "{a}", "{b}", "5"]), ("blocked", 1),
                                     ("call", 0, ["RPUSH", "{a}", "x"]), ("read", 1),
                                     ("call", 0, ["LRANGE", "{a}", "0", "-1"])],
    # "circular BRPOPLPUSH": each client moves the element on once.
    "circular_brpoplpush": [("send", 1, ["BRPOPLPUSH", "{a}", "{b}", "5"]),
                            ("send", 2, ["BRPOPLPUSH", "{b}", "{a}", "5"]), ("blocked", 2),
                            ("call", 0, ["RPUSH", "{a}", "foo"]), ("read", 1), ("read", 2),
                            ("call", 0, ["LRANGE", "{a}", "0", "-1"]), ("call", 0, ["LRANGE", "{b}", "0", "-1"])],
    # "BLPOP with same key multiple times should work (issue #801)".
    "same_key_twice": [("send", 1, ["BLPOP", "{a}", "{b}", "{a}", "5"]), ("blocked", 1),
                       ("call", 0, ["RPUSH", "{a}", "x", "y"]), ("read", 1),
                       ("send", 1, ["BLPOP", "{a}", "{b}", "{a}", "5"]), ("read", 1)],
    # Two clients on the same keys: served in the order they blocked, one element each.
    "two_waiters": [("send", 1, ["BZPOPMIN", "{a}", "{b}", "5"]), ("blocked", 1),
                    ("send", 2, ["BZPOPMIN", "{a}", "{b}", "5"]), ("blocked", 2),
                    ("call", 0, ["ZADD", "{b}", "1", "m", "2", "n"]), ("read", 1), ("read", 2)],
}


def transcript(port, steps, names):
    clients = {i: RespConn(port, timeout=10) for i in range(3)}
    out = []
    try:
        for step in steps:
            if step[0] == "send":
                clients[step[1]].send(filled(step[2], names))
            elif step[0] == "blocked":
                wait_until(lambda: blocked_clients(port) == step[1], timeout=10)
            elif step[0] == "call":
                out.append(clients[step[1]].call_raw(*filled(step[2], names)))
            else:
                out.append(clients[step[1]].read_raw(timeout=10))
        return out
    finally:
        for c in clients.values():
            c.close()


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_suite_cases_over_several_shards_as_one_redis(seq, ref, name):
    names = shard_keys(seq)
    got = transcript(seq.port, TRANSCRIPTS[name], names)
    assert got == transcript(ref_port(ref), TRANSCRIPTS[name], names)


def test_a_shard_lost_while_waiting_answers_an_error_and_ends_the_other_waits(make_db):
    d = make_db(proxy_args=("--multi-slot-commands", "sequential"))
    names = shard_keys(d)
    waiting = lambda i: d.shard(i).info("clients")["blocked_clients"]
    a, b = d.shard_index_of(names["a"]), d.shard_index_of(names["b"])
    conn = RespConn(d.port, timeout=10)
    try:
        conn.send(filled(["BLPOP", "{a}", "{b}", "0"], names))
        wait_until(lambda: waiting(a) == 1 and waiting(b) == 1, timeout=10)
        d.kill_shard(b)
        reply = conn.read(timeout=10)
        assert isinstance(reply, Error) and b"shard" in reply, reply
        wait_until(lambda: waiting(a) == 0, timeout=10)
        # The client is served again, and a push is not taken by a wait left behind.
        conn.call("RPUSH", names["a"], "x")
        assert conn.call("LRANGE", names["a"], "0", "-1") == [b"x"]
    finally:
        conn.close()


def test_a_wait_that_loses_its_element_to_another_client_waits_again(seq):
    """The list waits take nothing: when a client blocked on the shard itself takes the element
    first, the proxy's client tries again, finds nothing and waits again for what is left of
    its timeout."""
    names = shard_keys(seq)
    a, b = seq.shard_index_of(names["a"]), seq.shard_index_of(names["b"])
    waiting = lambda i: seq.shard(i).info("clients")["blocked_clients"]
    conn = RespConn(seq.port, timeout=10)
    direct = RespConn(seq.shard_ports[b], timeout=10)
    seq.shard(b).config_resetstat()         # (commandstats counted below)
    try:
        conn.send(filled(["BLPOP", "{a}", "{b}", "5"], names))
        wait_until(lambda: waiting(a) == 1 and waiting(b) == 1, timeout=10)
        direct.send(["BLPOP", names["b"], "0"])      # blocked after the proxy's wait
        wait_until(lambda: waiting(b) == 2, timeout=10)
        seq.shard(b).rpush(names["b"], "x")
        assert direct.read() == [names["b"].encode(), b"x"]
        # Redis served the proxy's wait first (it leaves the element), then the direct client.
        wait_until(lambda: waiting(a) == 1 and waiting(b) == 1, timeout=10)
        with pytest.raises(TimeoutError):
            conn.read(timeout=0.1)
        seq.shard(a).rpush(names["a"], "y")
        assert conn.read(timeout=10) == [names["a"].encode(), b"y"]
        # Two waits on b's shard: the one served, and the one after the try that found nothing.
        blmoves = lambda: seq.shard(b).info("commandstats").get("cmdstat_blmove", {}).get("calls", 0)
        wait_until(lambda: blmoves() == 2, timeout=10)
    finally:
        conn.close()
        direct.close()


def test_a_client_of_an_acl_user_waits_as_that_user(seq):
    names = shard_keys(seq)
    admin = RespConn(seq.port)
    conn = RespConn(seq.port, timeout=10)
    try:
        assert admin.call("ACL", "SETUSER", "blk", "on", ">pw", "~*", "&*", "+@all") == b"OK"
        assert conn.call("AUTH", "blk", "pw") == b"OK"
        conn.send(filled(["BZPOPMIN", "{a}", "{b}", "{c}", "0"], names))
        wait_until(lambda: blocked_clients(seq.port) == 1, timeout=10)
        admin.call("ZADD", names["c"], "1", "m")
        assert conn.read(timeout=10) == [names["c"].encode(), b"m", b"1"]
        conn_id = conn.call("CLIENT", "ID")
        conn.send(filled(["BLPOP", "{a}", "{b}", "0"], names))
        wait_until(lambda: admin.call("CLIENT", "UNBLOCK", conn_id) == 1, timeout=10)
        assert conn.read(timeout=10) is None
        assert conn.call("ACL", "WHOAMI") == b"blk"
    finally:
        admin.call("ACL", "DELUSER", "blk")
        conn.close()
        admin.close()


def test_a_waiting_client_holds_no_slot_lock(seq):
    """While it waits, a blocking command over several shards holds none of its slots: a
    sequential command that fills one of its keys (here LMOVE from a third shard) runs at once
    and wakes it."""
    names = shard_keys(seq)
    conn = RespConn(seq.port, timeout=10)
    other = RespConn(seq.port, timeout=5)
    try:
        conn.send(filled(["BLPOP", "{a}", "{b}", "0"], names))
        wait_until(lambda: blocked_clients(seq.port) == 1, timeout=10)
        other.call("RPUSH", names["c"], "x")
        assert other.call("LMOVE", names["c"], names["b"], "LEFT", "RIGHT") == b"x"
        assert conn.read(timeout=10) == [names["b"].encode(), b"x"]
    finally:
        conn.close()
        other.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_zset_element_pushed_back_keeps_its_score(seq, protocol):
    """Two zsets of two shards filled in one go while a client waits on both: one element is
    served, the other is where it was, with its score (pushed back when its shard popped it
    too: shards' ZADD calls beyond the pushes count those)."""
    names = shard_keys(seq)
    a, b = names["a"], names["b"]
    waiter = seq.client(protocol=protocol)
    pusher = seq.client()
    for i in range(3):
        seq.shard(i).config_resetstat()
    for i in range(20):
        served = []
        t = threading.Thread(target=lambda: served.append(waiter.bzpopmin([a, b], timeout=5)))
        t.start()
        wait_until(lambda: blocked_clients(seq.port) == 1, timeout=10)
        p = pusher.pipeline(transaction=False)
        p.zadd(a, {f"a{i}": i + 0.25})
        p.zadd(b, {f"b{i}": i + 0.5})
        p.execute()
        t.join(10)
        key, member, score = served[0]
        other = b if key.decode() == a else a
        assert pusher.zrange(other, 0, -1, withscores=True) == \
            [((f"b{i}" if other == b else f"a{i}").encode(), i + (0.5 if other == b else 0.25))]
        assert float(score) == i + (0.25 if key.decode() == a else 0.5)
        pusher.delete(other)
    zadds = sum(seq.shard(i).info("commandstats").get("cmdstat_zadd", {}).get("calls", 0) for i in range(3))
    assert zadds > 40       # the push-back path ran (in practice in nearly every round)
