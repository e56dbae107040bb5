"""Pub/Sub through the proxy: every message published on any proxy connection reaches every
subscriber exactly once, RESP2 and RESP3; a subscriber may PING; one that leaves is forgotten;
one that unsubscribes from everything is an ordinary client again, its subscriber connection to
the shard closed."""

from __future__ import annotations

import socket

import pytest
import redis
from raw_resp import RawClient
from waiting import wait_until


SUBSCRIBED_CONTEXT = ("only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed "
                      "in this context")


def next_message(ps, timeout=5.0):
    return wait_until(lambda: ps.get_message(ignore_subscribe_messages=True, timeout=0.2),
                      timeout, interval=0, what="a message")


@pytest.mark.parametrize("protocol", [2, 3])
def test_every_subscriber_gets_each_message_once(db, r, protocol):
    subscribers = [db.client(protocol=protocol).pubsub() for _ in range(3)]
    for ps in subscribers:
        ps.subscribe("news")
        assert ps.get_message(timeout=2)["type"] == "subscribe"
    publishers = [db.client(protocol=protocol) for _ in range(3)]
    for i, pub in enumerate(publishers):
        assert pub.publish("news", f"m{i}") == 3
    for ps in subscribers:
        got = [next_message(ps)["data"] for _ in range(3)]
        assert got == [b"m0", b"m1", b"m2"]
        assert ps.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
        ps.close()


def test_pattern_and_sharded_channels(db, r):
    ps = db.client().pubsub()
    ps.psubscribe("user:*")
    ps.ssubscribe("{room}1")
    assert ps.get_message(timeout=2)["type"] == "psubscribe"
    assert ps.get_message(timeout=2)["type"] == "ssubscribe"
    r.publish("user:7", "hi")
    assert next_message(ps)["data"] == b"hi"
    assert r.spublish("{room}1", "sharded") == 1
    assert next_message(ps)["data"] == b"sharded"
    assert r.pubsub_numpat() == 1
    ps.close()


def test_pubsub_introspection_is_answered_from_the_pubsub_shard(db, r):
    ps = db.client().pubsub()
    ps.subscribe("a", "b")
    for _ in range(2):
        ps.get_message(timeout=2)
    assert sorted(r.pubsub_channels()) == [b"a", b"b"]
    assert r.pubsub_numsub("a", "zzz") == [(b"a", 1), (b"zzz", 0)]
    ps.close()


def test_subscribed_resp2_client_may_ping_and_gets_redis_errors_for_other_commands(db, r):
    s = socket.create_connection(("127.0.0.1", db.port), timeout=5)
    s.sendall(b"SET k v\r\nSUBSCRIBE ch\r\nPING\r\nGET k\r\nUNSUBSCRIBE ch\r\n")
    expected = (b"+OK\r\n"
                b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
                b"-ERR Can't execute 'get': " + SUBSCRIBED_CONTEXT.encode() + b"\r\n"
                b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n")
    got = b""
    while len(got) < len(expected):
        chunk = s.recv(4096)
        assert chunk
        got += chunk
    s.close()
    assert got == expected


def test_subscriber_that_leaves_is_forgotten_by_the_shard(db, r):
    c = RawClient(db.port)
    assert c.call(["SUBSCRIBE", "gone"]) == [[b"subscribe", b"gone", 1]]
    assert r.pubsub_numsub("gone") == [(b"gone", 1)]
    c.close()
    wait_until(lambda: r.pubsub_numsub("gone") == [(b"gone", 0)], what="the shard forgetting it")




def shard_subscribers(db):
    """Connections of the pub/sub shard (the first of the map) in a subscribed context."""
    with redis.Redis(host="127.0.0.1", port=db.shard_ports[0], protocol=2) as shard:
        return shard.client_list(_type="pubsub")


def session_after_unsubscribing(port, publish, keys):
    """A RESP2 connection subscribes to two channels and a pattern, gets a message on each,
    unsubscribes from everything and, in the same write, runs data commands: what it reads."""
    c = RawClient(port)
    got = c.call(["SUBSCRIBE", "news", "sport"], ["PSUBSCRIBE", "w*"])
    got += c.replies(1)         # the pattern's confirmation
    publish("news", "n1")
    publish("weather", "w1")
    got += c.replies(2)
    data = []
    for i, k in enumerate(keys):
        data += [["SET", k, f"v{i}"], ["GET", k]]
    data += [["MULTI"], ["INCR", "{%s}n" % keys[0]], ["GET", keys[0]], ["EXEC"], ["PING"],
             ["ECHO", "x"]]
    c.send(["UNSUBSCRIBE"], ["PUNSUBSCRIBE"], *data)
    unsub = c.replies(3)
    got += c.replies(len(data))
    c.close()
    # The channels' order is the shard's hash table's: compare them, and the counts, apart.
    return (sorted(u[:2] for u in unsub), [u[2] for u in unsub]), got


def test_resp2_subscriber_that_unsubscribes_from_everything_is_an_ordinary_client(db, r, ref):
    keys = db.keys_on_every_shard()
    shard0 = db.shard(0)
    before = len(shard0.client_list())
    unsub, got = session_after_unsubscribing(db.port, r.publish, keys)
    ref_unsub, expected = session_after_unsubscribing(ref.connection_pool.connection_kwargs["port"],
                                                      ref.publish, keys)
    assert unsub == ref_unsub
    assert got == expected
    assert [r.get(k) for k in keys] == [f"v{i}".encode() for i in range(len(keys))]
    # The shard-side subscriber connection is gone, not merely unsubscribed.
    assert shard_subscribers(db) == []
    wait_until(lambda: len(shard0.client_list()) <= before)


def test_unsubscribed_client_subscribes_again(db, r):
    c = RawClient(db.port)
    assert c.call(["SUBSCRIBE", "a"]) == [[b"subscribe", b"a", 1]]
    assert c.call(["UNSUBSCRIBE", "a"], ["SET", "k", "1"]) == [[b"unsubscribe", b"a", 0], b"OK"]
    wait_until(lambda: shard_subscribers(db) == [])
    assert c.call(["SUBSCRIBE", "b"]) == [[b"subscribe", b"b", 1]]
    assert r.pubsub_numsub("a", "b") == [(b"a", 0), (b"b", 1)]
    assert r.publish("b", "again") == 1
    assert c.replies(1) == [[b"message", b"b", b"again"]]
    # Still subscribed: Redis's subscribed context, from the shard.
    assert c.call(["GET", "k"])[0] == ("error", "ERR Can't execute 'get': " + SUBSCRIBED_CONTEXT)
    assert c.call(["UNSUBSCRIBE"], ["GET", "k"]) == [[b"unsubscribe", b"b", 0], b"1"]
    wait_until(lambda: shard_subscribers(db) == [])
    c.close()


SEQUENCES = {
    # A sharded channel keeps the client subscribed after UNSUBSCRIBE (Redis counts them apart).
    "sharded_channel_left": [["SUBSCRIBE", "a"], ["SSUBSCRIBE", "{x}1"], ["UNSUBSCRIBE"],
                             ["GET", "k"], ["SUNSUBSCRIBE"], ["GET", "k"]],
    "unsubscribe_some": [["SUBSCRIBE", "a", "b"], ["UNSUBSCRIBE", "a", "zz"], ["PING"], ["GET", "k"],
                         ["UNSUBSCRIBE", "b", "a"], ["GET", "k"]],
    "never_subscribed": [["UNSUBSCRIBE"], ["PUNSUBSCRIBE"], ["SUNSUBSCRIBE"], ["GET", "k"]],
    "failed_subscribe": [["SUBSCRIBE"], ["GET", "k"]],
    "reset_while_subscribed": [["SUBSCRIBE", "a"], ["PING", "p"], ["RESET"], ["GET", "k"]],
    "quit_while_subscribed": [["PSUBSCRIBE", "x*"], ["PING"], ["QUIT"]],
}


def replies_of(port, sequence, preload):
    """Send the whole sequence in one write; (every reply, closed by the server), read until the
    connection closes or stays quiet."""
    preload.set("k", "v")
    with RawClient(port) as c:
        c.send(*sequence)
        return c.replies_until_quiet(0.3)


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_subscribed_context_as_redis(db, r, ref, name):
    got = replies_of(db.port, SEQUENCES[name], r)
    expected = replies_of(ref.connection_pool.connection_kwargs["port"], SEQUENCES[name], ref)
    assert got == expected
    wait_until(lambda: shard_subscribers(db) == [])


def test_resp3_subscriber_runs_commands_and_is_released_when_unsubscribed(db, r):
    keys = db.keys_on_every_shard()
    c = RawClient(db.port)
    assert c.call(["HELLO", "3"])[0][b"proto"] == 3
    assert c.call(["SUBSCRIBE", "a"], ["SET", keys[1], "x"], ["GET", keys[1]]) == \
        [[b"subscribe", b"a", 1], b"OK", b"x"]
    assert r.publish("a", "m") == 1
    assert c.replies(1) == [[b"message", b"a", b"m"]]
    assert "P" in c.call(["CLIENT", "INFO"])[0].decode().split("flags=")[1].split()[0]
    assert c.call(["WATCH", keys[0]])[0][1].startswith("ERR WATCH is not available")
    assert c.call(["UNSUBSCRIBE"], ["GET", keys[2]]) == [[b"unsubscribe", b"a", 0], None]
    wait_until(lambda: shard_subscribers(db) == [])
    assert "flags=N" in c.call(["CLIENT", "INFO"])[0].decode()
    assert c.call(["WATCH", keys[0]], ["MULTI"], ["SET", keys[0], "y"], ["EXEC"]) == \
        [b"OK", b"OK", b"QUEUED", [b"OK"]]
    assert c.call(["SUBSCRIBE", "b"]) == [[b"subscribe", b"b", 1]]
    assert r.publish("b", "again") == 1
    assert c.replies(1) == [[b"message", b"b", b"again"]]
    c.close()


def test_subscribe_while_watching_is_refused(db, r):
    c = RawClient(db.port)
    assert c.call(["WATCH", "k"]) == [b"OK"]
    assert c.call(["SUBSCRIBE", "a"])[0][1].startswith("ERR SUBSCRIBE while WATCHing")
    assert c.call(["UNWATCH"], ["SUBSCRIBE", "a"]) == [b"OK", [b"subscribe", b"a", 1]]
    c.close()


def keyspace_events(client, writer, keys) -> list[tuple[bytes, bytes]]:
    """(channel, data) of every notification a subscriber of both families receives while the
    keys are set, expired and deleted, sorted (the shards' notifications interleave)."""
    ps = client.pubsub()
    ps.psubscribe("__keyspace@0__:*", "__keyevent@0__:*")
    for _ in range(2):
        assert ps.get_message(timeout=2)["type"] == "psubscribe"
    for k in keys:
        writer.set(k, "v")
        writer.expire(k, 100)
    writer.delete(*keys)
    got = []
    expected = 3 * len(keys) * 2
    while len(got) < expected:
        m = next_message(ps)
        got.append((m["channel"], m["data"]))
    assert ps.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    ps.close()
    return sorted(got)


@pytest.mark.parametrize("protocol", [2, 3])
def test_keyspace_notifications_of_every_shard_reach_subscribers_once(db, r, ref, protocol):
    keys = [f"note{i}" for i in range(12)]
    assert len({db.shard_index_of(k) for k in keys}) == 3
    for c in (r, ref):
        c.config_set("notify-keyspace-events", "KEA")
    try:
        ours = keyspace_events(db.client(protocol=protocol), r, keys)
        theirs = keyspace_events(ref, ref, keys)
        assert ours == theirs
        assert (b"__keyspace@0__:note11", b"expire") in ours
    finally:
        for c in (r, ref):
            c.config_set("notify-keyspace-events", "")
