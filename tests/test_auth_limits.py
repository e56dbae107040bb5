"""AUTH against the database password, RESET, and the idle-client timeout."""

from __future__ import annotations

import socket
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(port, **kw) -> redis.Redis:
    """A client that reports an authentication error at once instead of retrying it."""
    kw.setdefault("protocol", 2)
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), **kw)


def test_commands_need_auth_when_the_database_has_a_password(make_db):
    db = make_db(proxy_args=("--password", "s3cret"))
    anon = connect(db.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anon.get("k")
    with pytest.raises(redis.exceptions.AuthenticationError):
        connect(db.port, password="wrong").ping()
    ok = connect(db.port, password="s3cret")
    assert ok.set("k", "v") and ok.get("k") == b"v"
    assert connect(db.port, protocol=3, username="default", password="s3cret").get("k") == b"v"
    with pytest.raises(redis.exceptions.AuthenticationError):
        connect(db.port, username="other", password="s3cret").ping()
    # RESET forgets the authentication.
    s = socket.create_connection(("127.0.0.1", db.port), timeout=5)
    s.sendall(b"AUTH s3cret\r\nGET k\r\nRESET\r\nGET k\r\n")
    want = b"+OK\r\n$1\r\nv\r\n+RESET\r\n-NOAUTH Authentication required.\r\n"
    got = b""
    while len(got) < len(want):
        got += s.recv(4096)
    s.close()
    assert got == want
    for c in (anon, ok):
        c.close()


def test_auth_without_a_password_configured_is_redis_error(db, r):
    r = connect(db.port)
    with pytest.raises(redis.exceptions.AuthenticationError, match="without any password configured"):
        r.execute_command("AUTH", "x")
    assert r.execute_command("AUTH", "default", "anything") in (b"OK", True)


def test_reset_leaves_transaction_and_protocol(db, r):
    c = db.client(protocol=3)
    c.execute_command("MULTI")
    assert c.execute_command("RESET") in (b"RESET", "RESET")
    with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
        c.execute_command("EXEC")


def test_idle_clients_are_closed_after_the_timeout(make_db):
    db = make_db(proxy_args=("--timeout", "1"))
    idle = socket.create_connection(("127.0.0.1", db.port), timeout=5)
    busy = redis.Redis(port=db.port, protocol=2)
    # The behaviour under test takes time: for 3.5 s (past the 1 s timeout) one client is busy
    # every 0.2 s and the other says nothing.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert busy.ping()
        time.sleep(0.2)
    assert idle.recv(16) == b""         # closed by the proxy
    idle.close()
    busy.close()
