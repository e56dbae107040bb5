"""MONITOR through dmcproxy: the commands of every client, whatever shard they go to, in
redis-server's own line format (compared with a real redis-server's monitor output)."""

from __future__ import annotations

import re
import time

import pytest
from raw_resp import RawClient
from waiting import wait_until

pytestmark = pytest.mark.timeout(60)

LINE = re.compile(rb"^(\d+)\.(\d{6}) \[0 127\.0\.0\.1:(\d+)\] (.*)$")


class Monitor(RawClient):
    """A raw connection in MONITOR mode: each line it is sent is one RESP simple string."""

    def __init__(self, port: int, password: str | None = None):
        super().__init__(port, timeout=5)
        if password:
            assert self.call(["AUTH", password]) == [b"OK"]
        assert self.call(["MONITOR"]) == [b"OK"]

    def commands(self, n: int) -> list[bytes]:
        """The next n lines, without their time and client (checked for shape)."""
        out = []
        for line in self.replies(n):
            m = LINE.match(line)
            assert m, line
            assert abs(int(m.group(1)) - time.time()) < 60
            out.append(m.group(4))
        return out


COMMANDS = [
    (b"SET", b"plain", b"v"),
    (b"SET", b'quo"te\\back', b"line\nbreak\ttab\x01\xc3\xbf"),
    (b"MGET", b"a", b"b", b"c"),                # split across shards: one line, as sent
    (b"incrby", b"counter", b"1"),              # the name as the client wrote it
    (b"AUTH", b"secret"),                       # refused on both; the password is redacted
    (b"HELLO", b"2", b"AUTH", b"default", b"pw"),
    (b"PING",),
]


def drive(port: int) -> None:
    with RawClient(port, timeout=5) as c:
        for cmd in COMMANDS:
            c.call(cmd)


EXPECTED = [
    b'"SET" "plain" "v"',
    b'"SET" "quo\\"te\\\\back" "line\\nbreak\\ttab\\x01\\xc3\\xbf"',
    b'"MGET" "a" "b" "c"',
    b'"incrby" "counter" "1"',
    b'"AUTH" "(redacted)"',
    b'"HELLO" "2" "AUTH" "(redacted)" "(redacted)"',
    b'"PING"',
]


def test_monitor_shows_every_command_as_redis_does(db, ref):
    theirs = Monitor(ref.connection_pool.connection_kwargs["port"])
    ours = Monitor(db.port)
    try:
        drive(ref.connection_pool.connection_kwargs["port"])
        drive(db.port)
        assert theirs.commands(len(EXPECTED)) == EXPECTED
        assert ours.commands(len(EXPECTED)) == EXPECTED
    finally:
        theirs.close()
        ours.close()


def test_monitor_sees_every_client_and_shard(db, r):
    clients = [db.client() for _ in range(3)]
    for c in clients:
        c.ping()                                # connected (and introduced) before MONITOR
    mon = Monitor(db.port)
    try:
        keys = [f"key{i}" for i in range(30)]
        assert len({db.shard_index_of(k) for k in keys}) == 3
        for i, k in enumerate(keys):
            clients[i % 3].set(k, i)
        seen = mon.commands(len(keys))
        assert seen == [b'"SET" "%s" "%d"' % (k.encode(), i) for i, k in enumerate(keys)]
    finally:
        mon.close()


def test_admin_commands_and_monitor_itself_are_not_shown(db, r):
    mon = Monitor(db.port)
    try:
        r.config_get("maxmemory-policy")        # admin: not shown (as in Redis)
        other = db.client()
        other.ping()
        while mon.commands(1) != [b'"PING"']:
            pass                                # its connection's CLIENT SETINFO lines
        r.execute_command("MONITOR")            # the client becomes a monitor: not shown
        other.get("after")
        assert mon.commands(1) == [b'"GET" "after"']
        # CLIENT LIST flags both monitors `O`, as redis-server does.
        assert sum("O" in c["flags"] for c in other.client_list()) == 2
    finally:
        mon.close()
        r.connection_pool.disconnect()


def test_a_monitor_that_leaves_is_forgotten(db, r):
    mon = Monitor(db.port)
    mon.close()
    for i in range(100):
        r.set(f"k{i}", i)                      # no monitor left to write to
    assert r.dbsize() == 100
    wait_until(lambda: not any("O" in c["flags"] for c in r.client_list()), 5,
               what="no monitor left")
