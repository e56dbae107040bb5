"""Pub/Sub through the proxy: every message published on any proxy connection reaches every
subscriber exactly once, RESP2 and RESP3; a subscriber may PING; one that leaves is forgotten."""

from __future__ import annotations

import socket
import time

import pytest


def next_message(ps, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if m is not None:
            return m
    raise AssertionError("no message")


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
                b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                b"RESET are allowed in this context\r\n"
                b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n")
    got = b""
    while len(got) < len(expected):
        chunk = s.recv(4096)
        assert chunk
        got += chunk
    s.close()
    assert got == expected


def test_subscriber_that_leaves_is_forgotten_by_the_shard(db, r):
    s = socket.create_connection(("127.0.0.1", db.port), timeout=5)
    s.sendall(b"SUBSCRIBE gone\r\n")
    assert s.recv(4096).startswith(b"*3\r\n$9\r\nsubscribe")
    assert r.pubsub_numsub("gone") == [(b"gone", 1)]
    s.close()
    deadline = time.monotonic() + 5
    while r.pubsub_numsub("gone") != [(b"gone", 0)]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
