"""The command table compiled from a shard's COMMAND reply: key positions agree with the shard's
own COMMAND GETKEYS, and the per-command counters count what the fast path served."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

from dmc import _fastpath
from dmc.commands import ask_shard, table_from_shards

COMMANDS = [
    ["GET", "k"], ["MSET", "a", "1", "b", "2"], ["MGET", "a", "b", "c"],
    ["EVAL", "return 1", "2", "k1", "k2", "arg"], ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
    ["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"],
    ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"], ["OBJECT", "ENCODING", "k"],
    ["LMPOP", "2", "a", "b", "LEFT"], ["BLMPOP", "0", "2", "a", "b", "LEFT"],
    ["BITOP", "AND", "dest", "a", "b"], ["SINTERCARD", "2", "a", "b", "LIMIT", "1"],
    ["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "dst"], ["RENAME", "a", "b"],
    ["LMOVE", "a", "b", "LEFT", "RIGHT"], ["SET", "k", "v", "EX", "10"], ["COPY", "a", "b"],
]


@pytest.fixture(scope="module")
def shard(db):
    return ("127.0.0.1", db.shard_ports[0])


@pytest.fixture(scope="module")
def table(db):
    return table_from_shards([("127.0.0.1", db.shard_ports[0])])[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_key_positions_agree_with_command_getkeys(shard, table, argv):
    positions = table.keys_of([a.encode() for a in argv])
    reply = ask_shard(*shard, [b"COMMAND", b"GETKEYS", *[a.encode() for a in argv]])[0]
    expected = [k.decode() for k in reply]
    assert [argv[i] for i in positions] == expected


def test_unknown_command_has_no_entry(table):
    assert table.keys_of([b"NOSUCHCMD", b"x"]) is None


def test_per_command_counters_count_calls_and_errors(db):
    """An in-process proxy over the same shards, its loop on a thread; counters read back."""
    table, version = table_from_shards([("127.0.0.1", p) for p in db.shard_ports])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    proxy = _fastpath.Proxy(listener.fileno(), table, server_version=version)
    proxy.apply_shard_map(1, [("127.0.0.1", p) for p in db.shard_ports],
                          [s * len(db.shard_ports) // _fastpath.SLOTS for s in range(_fastpath.SLOTS)])
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [proxy.run_once(20) for _ in iter(stop.is_set, True)])
    loop.start()
    try:
        c = redis.Redis(port=listener.getsockname()[1], protocol=2)
        for i in range(25):
            c.set(f"c{i}", i)
        for i in range(10):
            c.get(f"c{i}")
        c.set("str", "x")
        for _ in range(3):
            with pytest.raises(redis.ResponseError):
                c.lpush("str", 1)
        c.close()
        counters = proxy.stats()["commands"]
        assert counters["set"][:2] == (26, 0)
        assert counters["get"][:2] == (10, 0)
        assert counters["lpush"][:2] == (3, 3)
        assert counters["get"][2] > 0          # microseconds spent, summed
        assert proxy.stats()["map_version"] == 1
    finally:
        stop.set()
        loop.join()
        listener.close()
