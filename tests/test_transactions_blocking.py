"""MULTI/EXEC/DISCARD and blocking commands through the proxy, against a single redis-server as
the reference where both must answer alike."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from raw_resp import RawClient, multibulk
from replies import plain
from waiting import wait_until


def transaction(client: redis.Redis, commands):
    """MULTI, the commands, EXEC, one by one; every reply (errors as ('error', text))."""
    out = []
    for cmd in [("MULTI",), *commands, ("EXEC",)]:
        try:
            out.append(plain(client.execute_command(*cmd)))
        except redis.ResponseError as exc:
            out.append(("error", str(exc)))
    return out


SAME_SHARD = [("SET", "{acct}:a", "10"), ("INCRBY", "{acct}:a", "5"), ("GET", "{acct}:a"),
              ("LPUSH", "{acct}:l", "x"), ("PING",), ("INCR", "{acct}:l")]


def test_transaction_on_one_shard_answers_like_redis(r, ref):
    assert transaction(r, SAME_SHARD) == transaction(ref, SAME_SHARD)
    assert r.get("{acct}:a") == b"15"


def test_queue_time_errors_abort_exec_like_redis(r, ref):
    commands = [("SET", "{t}k", "1"), ("NOSUCHCMD", "x"), ("GET",), ("SET", "{t}k", "2")]
    mine, theirs = transaction(r, commands), transaction(ref, commands)
    assert mine == theirs
    assert mine[-1][1].startswith("Transaction discarded because of previous errors")
    assert r.get("{t}k") is None


def test_transaction_spanning_shards_is_refused_and_nothing_runs(db, r):
    a, b = "alpha", "beta"
    assert db.shard_index_of(a) != db.shard_index_of(b)
    out = transaction(r, [("INCRBY", a, "1"), ("INCRBY", b, "2")])
    assert out[1] == b"QUEUED"
    assert out[2] == ("error", "Keys in request don't hash to the same slot")
    assert out[3][1].startswith("Transaction discarded")
    assert r.get(a) is None and r.get(b) is None


def test_discard_and_misplaced_exec(r, ref):
    for client in (r, ref):
        assert client.execute_command("MULTI") in (b"OK", True)
        assert client.execute_command("INCRBY", "d", "1") == b"QUEUED"
        assert client.execute_command("DISCARD") in (b"OK", True)
        with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
            client.execute_command("EXEC")
        with pytest.raises(redis.ResponseError, match="DISCARD without MULTI"):
            client.execute_command("DISCARD")
        client.execute_command("MULTI")
        with pytest.raises(redis.ResponseError, match="MULTI calls can not be nested"):
            client.execute_command("MULTI")
        client.execute_command("DISCARD")
        assert client.get("d") is None


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_transactional_pipeline(db, r, protocol):
    pipe = db.client(protocol=protocol).pipeline(transaction=True)
    pipe.set("{u}x", 1).incr("{u}x").mget("{u}x", "{u}y").hset("{u}h", "f", "v").hgetall("{u}h")
    assert pipe.execute() == [True, 2, [b"2", None], 1, {b"f": b"v"}]


def test_blpop_from_a_resp3_client(db, r):
    c = db.client(protocol=3)
    r.rpush("q3", "v")
    assert c.blpop(["q3"], timeout=1) == [b"q3", b"v"]
    assert c.blpop(["q3"], timeout=0.2) is None


def test_transaction_is_atomic_against_other_clients(db, r):
    r.set("{c}n", 0)
    stop = time.monotonic() + 1.5
    errors = []

    def incr_in_transactions():
        c = db.client()
        while time.monotonic() < stop:
            p = c.pipeline(transaction=True)
            p.incr("{c}n").incr("{c}n")
            a, b = p.execute()
            if b != a + 1:      # nothing ran between the two INCRs
                errors.append((a, b))

    threads = [threading.Thread(target=incr_in_transactions) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert int(r.get("{c}n")) % 2 == 0


def test_blpop_blocks_only_its_client_and_is_woken_by_a_push(db, r):
    waiter = db.client()
    got = {}

    def wait():
        got["value"] = waiter.blpop(["queue"], timeout=10)

    t = threading.Thread(target=wait)
    t.start()
    shard = db.shard(db.shard_index_of("queue"))
    wait_until(lambda: shard.info("clients")["blocked_clients"] == 1, 5, 0.01, "BLPOP blocked")
    # The shared connections keep serving everyone else without delay.
    t0 = time.monotonic()
    for i in range(50):
        r.set(f"k{i}", i)
    assert time.monotonic() - t0 < 0.5
    assert t.is_alive()
    r.rpush("queue", "job-1")
    t.join(5)
    assert got["value"] == (b"queue", b"job-1")


def test_blocking_timeouts_are_honoured(r):
    t0 = time.monotonic()
    assert r.blpop(["empty"], timeout=1) is None
    assert 0.9 < time.monotonic() - t0 < 3
    t0 = time.monotonic()
    assert r.bzpopmin(["emptyz"], timeout=0.5) is None
    assert r.xread({"nostream": "0-0"}, block=300) == []
    assert time.monotonic() - t0 < 3


def test_requests_after_a_blocking_command_wait_for_it(db, r):
    """On one connection, Redis runs nothing after BLPOP until BLPOP returns."""
    c = db.client()
    pipe = c.pipeline(transaction=False)
    pipe.blpop(["{q}in"], timeout=1)
    pipe.rpush("{q}in", "late")
    t0 = time.monotonic()
    out = pipe.execute()
    assert out == [None, 1]
    assert time.monotonic() - t0 >= 0.9


@pytest.mark.parametrize("then", [b"", b"PING\r\n"], ids=["idle", "with-requests-waiting"])
def test_client_leaving_while_blocked_frees_the_shard_side(db, r, then):
    shard = db.shard(db.shard_index_of("gone"))
    # A raw socket: redis-py would reconnect and block again after a disconnect.
    c = RawClient(db.port)
    c.send_bytes(multibulk(["BLPOP", "gone", 0]) + then)
    wait_until(lambda: shard.info("clients")["blocked_clients"] == 1, 5, what="BLPOP blocked")
    c.close()
    wait_until(lambda: shard.info("clients")["blocked_clients"] == 0, 5,
               what="the shard to let go of the blocked client")


def test_blocking_command_across_shards_is_crossslot(db, r):
    a, b = "alpha", "beta"
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        r.blpop([a, b], timeout=1)


def test_watch_then_exec_succeeds_when_nobody_touched_the_key(db, r):
    c = db.client()
    c.set("{w}balance", 100)
    assert c.execute_command("WATCH", "{w}balance") in (b"OK", True)
    balance = int(c.get("{w}balance"))
    out = transaction(c, [("SET", "{w}balance", str(balance - 30)), ("INCR", "{w}ops")])
    assert out[-1] == [b"OK", 1]
    assert r.get("{w}balance") == b"70"


def test_watch_aborts_exec_when_another_client_writes_the_key(db, r, ref):
    for client, other in ((db.client(), r), (ref, None)):
        other = other or redis.Redis(port=ref.connection_pool.connection_kwargs["port"], protocol=2)
        client.set("{w}k", 1)
        client.execute_command("WATCH", "{w}k")
        other.set("{w}k", 2)
        out = transaction(client, [("SET", "{w}k", "3")])
        assert out[-1] is None          # EXEC's null reply: the transaction did not run
        assert client.get("{w}k") == b"2"


def test_discard_and_unwatch_forget_the_watch(db, r):
    c = db.client()
    c.set("{w}x", 1)
    c.execute_command("WATCH", "{w}x")
    c.execute_command("MULTI")
    c.execute_command("DISCARD")
    r.set("{w}x", 2)                    # after DISCARD: no longer watched
    assert transaction(c, [("INCR", "{w}x")])[-1] == [3]
    c.execute_command("WATCH", "{w}x")
    c.execute_command("UNWATCH")
    r.set("{w}x", 10)
    assert transaction(c, [("INCR", "{w}x")])[-1] == [11]


def test_redis_py_transaction_helper_retries_on_conflict(db, r):
    r.set("{t}counter", 0)
    calls = []

    def bump(pipe):
        value = int(pipe.get("{t}counter"))
        if not calls:
            r.incr("{t}counter")        # a concurrent write: the first EXEC must abort
        calls.append(value)
        pipe.multi()
        pipe.set("{t}counter", value + 10)

    db.client().transaction(bump, "{t}counter")
    assert calls == [0, 1]
    assert r.get("{t}counter") == b"11"


def test_watch_errors(db, r):
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        r.execute_command("WATCH", "alpha", "beta")
    c = db.client()
    c.execute_command("MULTI")
    with pytest.raises(redis.ResponseError, match="WATCH inside MULTI is not allowed"):
        c.execute_command("WATCH", "{w}k")
    c.execute_command("DISCARD")
