"""Multi-key commands over keys of several shards (issue 15): with `--multi-slot-commands
sequential` a 3-shard dmcproxy answers them as one redis-server does, and leaves the same data;
with the default `refuse` they stay CROSSSLOT.

Every scenario runs on a plain redis-server and through the sequential proxy, with key names
chosen so that the keys of one command live on different shards; replies (RESP2 and RESP3)
and the resulting data are compared.
"""

from __future__ import annotations

import threading

import pytest

from replies import Error, RespConn

# {name}: a key of its own shard (filled in per database: a, b, c on three different shards).
SCENARIOS = {
    "rename": [["RPUSH", "{a}", "1", "2"], ["PEXPIRE", "{a}", "100000"], ["RENAME", "{a}", "{b}"],
               ["RENAME", "{a}", "{b}"], ["SET", "{c}", "x"], ["RENAME", "{b}", "{c}"]],
    "renamenx": [["SET", "{a}", "1"], ["SET", "{b}", "2"], ["RENAMENX", "{a}", "{b}"],
                 ["DEL", "{b}"], ["RENAMENX", "{a}", "{b}"], ["RENAMENX", "{c}", "{a}"]],
    "copy": [["HSET", "{a}", "f", "v"], ["COPY", "{a}", "{b}"], ["COPY", "{a}", "{b}"],
             ["COPY", "{a}", "{b}", "REPLACE"], ["COPY", "{c}", "{b}"]],
    "smove": [["SADD", "{a}", "m", "n"], ["SMOVE", "{a}", "{b}", "m"], ["SMOVE", "{a}", "{b}", "zz"],
              ["SET", "{c}", "str"], ["SMOVE", "{a}", "{c}", "n"], ["SMOVE", "{c}", "{a}", "n"],
              ["SMOVE", "{a}", "{b}", "n"]],
    "lmove": [["RPUSH", "{a}", "1", "2", "3"], ["LMOVE", "{a}", "{b}", "LEFT", "RIGHT"],
              ["LMOVE", "{a}", "{b}", "RIGHT", "LEFT"], ["RPOPLPUSH", "{a}", "{b}"],
              ["RPOPLPUSH", "{a}", "{b}"], ["SET", "{c}", "s"], ["LMOVE", "{b}", "{c}", "LEFT", "LEFT"]],
    "setstore": [["SADD", "{a}", "1", "2", "3"], ["SADD", "{b}", "2", "3", "4"],
                 ["SUNIONSTORE", "{c}", "{a}", "{b}"], ["SINTERSTORE", "{c}", "{a}", "{b}"],
                 ["SDIFFSTORE", "{c}", "{a}", "{b}"], ["SINTERSTORE", "{c}", "{a}", "{nokey}"],
                 ["SET", "{b}", "x"], ["SUNIONSTORE", "{c}", "{a}", "{b}"]],
    "zsetstore": [["ZADD", "{a}", "1", "x", "2", "y"], ["ZADD", "{b}", "3", "y", "4", "z"],
                  ["ZUNIONSTORE", "{c}", "2", "{a}", "{b}", "WEIGHTS", "2", "3"],
                  ["ZINTERSTORE", "{c}", "2", "{a}", "{b}", "AGGREGATE", "MAX"],
                  ["ZDIFFSTORE", "{c}", "2", "{a}", "{b}"],
                  ["ZRANGESTORE", "{c}", "{b}", "0", "-1"],
                  ["ZRANGESTORE", "{c}", "{b}", "(3", "+inf", "BYSCORE"],
                  ["ZUNIONSTORE", "{c}", "2", "{a}", "{b}", "WEIGHTS", "x"]],
    "pfmerge_bitop": [["PFADD", "{a}", "1", "2", "3"], ["PFADD", "{b}", "3", "4"],
                      ["PFMERGE", "{c}", "{a}", "{b}"], ["PFCOUNT", "{c}"],
                      ["SET", "{a}", "ab"], ["SET", "{b}", "cd"],
                      ["BITOP", "AND", "{c}", "{a}", "{b}"], ["BITOP", "XOR", "{c}", "{a}", "{b}"],
                      ["BITOP", "NOT", "{c}", "{b}"]],
    "geo": [["GEOADD", "{a}", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"],
            ["GEOSEARCHSTORE", "{b}", "{a}", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC"],
            ["GEOSEARCHSTORE", "{c}", "{a}", "FROMMEMBER", "Palermo", "BYBOX", "400", "400", "km", "STOREDIST"],
            ["GEORADIUS", "{a}", "15", "37", "200", "km", "STORE", "{b}"],
            ["GEORADIUSBYMEMBER", "{a}", "Palermo", "300", "km", "STOREDIST", "{c}"]],
    "sort_store": [["RPUSH", "{a}", "3", "1", "2"], ["SORT", "{a}", "STORE", "{b}"],
                   ["SORT", "{a}", "DESC", "LIMIT", "0", "2", "STORE", "{c}"]],
    "mpop": [["RPUSH", "{c}", "1", "2", "3"], ["LMPOP", "3", "{a}", "{b}", "{c}", "LEFT"],
             ["RPUSH", "{b}", "x"], ["LMPOP", "3", "{a}", "{b}", "{c}", "RIGHT", "COUNT", "5"],
             ["LMPOP", "2", "{a}", "{b}", "LEFT"], ["SET", "{a}", "s"],
             ["LMPOP", "2", "{a}", "{c}", "LEFT"],
             ["ZADD", "{b}", "1", "m", "2", "n"], ["ZMPOP", "2", "{nokey}", "{b}", "MAX", "COUNT", "1"]],
    "msetnx": [["MSETNX", "{a}", "1", "{b}", "2", "{c}", "3"], ["MSETNX", "{a}", "x", "{nokey}", "y"],
               ["DEL", "{a}"], ["MSETNX", "{a}", "9", "{nokey}", "8"], ["MSETNX", "{a}", "1", "{b}"]],
}


def shard_keys(db) -> dict[str, str]:
    """Names for {a}, {b}, {c}, {nokey}: a, b and c on three different shards, nokey never set."""
    a, b, c = db.keys_on_every_shard("ms")
    return {"a": a, "b": b, "c": c, "nokey": "ms-none-" + a}


def filled(cmd, names):
    return [arg.format(**names) if "{" in arg else arg for arg in cmd]


def normalise(reply):
    if isinstance(reply, Error):
        return ("error", bytes(reply))
    if isinstance(reply, list):
        return [normalise(x) for x in reply]
    if isinstance(reply, dict):
        return {normalise(k): normalise(v) for k, v in reply.items()}
    if isinstance(reply, float):
        return round(reply, 4)
    if isinstance(reply, bytes):
        try:
            return round(float(reply), 4) if b"." in reply else reply
        except ValueError:
            return reply
    return reply


def data_of(conn: RespConn, keys) -> dict:
    """What the keys hold: type, value and whether a TTL is set."""
    out = {}
    for k in keys:
        kind = conn.call("TYPE", k)
        if kind == b"none":
            continue
        read = {b"string": ["GET", k], b"list": ["LRANGE", k, "0", "-1"],
                b"set": ["SMEMBERS", k], b"hash": ["HGETALL", k],
                b"zset": ["ZRANGE", k, "0", "-1", "WITHSCORES"], b"stream": ["XRANGE", k, "-", "+"]}[kind]
        value = normalise(conn.call(*read))
        if kind == b"set":
            value = sorted(value)
        out[k] = (kind, value, conn.call("PTTL", k) > 0)
    return out


def run_scenario(port, steps, names, resp3, raw=False):
    """The replies of the steps (raw: their exact bytes) and the data left behind."""
    conn = RespConn(port)
    try:
        if resp3:
            conn.call("HELLO", "3")
        replies = [conn.call_raw(*filled(cmd, names)) if raw else normalise(conn.call(*filled(cmd, names)))
                   for cmd in steps]
        data = data_of(conn, [names[k] for k in ("a", "b", "c", "nokey")])
        return replies, data
    finally:
        conn.close()


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sequential_answers_as_one_redis(seq, ref, scenario, resp3):
    names = shard_keys(seq)
    assert len({seq.shard_index_of(names[k]) for k in "abc"}) == 3
    ref_port = ref.connection_pool.connection_kwargs["port"]
    expected = run_scenario(ref_port, SCENARIOS[scenario], names, resp3)
    got = run_scenario(seq.port, SCENARIOS[scenario], names, resp3)
    assert got[0] == expected[0]        # replies, step by step
    assert got[1] == expected[1]        # the data left behind
    # No staging key is left on any shard.
    for i in range(3):
        assert seq.shard(i).keys("*dmc:sequential*") == []


@pytest.mark.parametrize("cmd", [["RENAME", "{a}", "{b}"], ["SMOVE", "{a}", "{b}", "m"],
                                 ["SUNIONSTORE", "{c}", "{a}", "{b}"], ["MSETNX", "{a}", "1", "{b}", "2"],
                                 ["LMPOP", "2", "{a}", "{b}", "LEFT"]])
def test_refuse_keeps_crossslot(db, r, cmd):
    names = shard_keys(db)
    r.sadd(names["a"], "m")
    conn = RespConn(db.port)
    try:
        reply = conn.call(*filled(cmd, names))
    finally:
        conn.close()
    assert isinstance(reply, Error) and reply.startswith(b"CROSSSLOT"), reply


def test_sort_with_patterns_over_several_shards_is_carried_out(seq):
    """(More in tests/test_fidelity_units.py, compared with one redis-server.)"""
    names = shard_keys(seq)
    c = seq.client()
    c.rpush(names["a"], 1, 2)
    c.set("w_1", 2)
    c.set("w_2", 1)
    assert c.sort(names["a"], by="w_*", store=names["b"]) == 2
    assert c.lrange(names["b"], 0, -1) == [b"2", b"1"]


def test_pipeline_keeps_order(seq):
    """Requests after a sequence wait for it: a pipeline's replies stay in request order."""
    names = shard_keys(seq)
    c = seq.client()
    p = c.pipeline(transaction=False)
    p.set(names["a"], "v")
    p.rename(names["a"], names["b"])
    p.get(names["b"])
    p.exists(names["a"])
    p.copy(names["b"], names["c"])
    p.get(names["c"])
    assert p.execute() == [True, True, b"v", 0, True, b"v"]


def ping_pong(seq, command, check, rounds=200):
    """Two clients move the same value back and forth between a and b at once."""
    names = shard_keys(seq)
    errors = []

    def worker(src, dst):
        c = seq.client()
        try:
            for _ in range(rounds):
                command(c, names[src], names[dst])
        except Exception as exc:      # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("a", "b")),
               threading.Thread(target=worker, args=("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(seq.client(), names, errors)


def test_concurrent_smove_loses_and_duplicates_nothing(seq):
    names = shard_keys(seq)
    c = seq.client()
    members = {f"m{i}".encode() for i in range(20)}
    c.sadd(names["a"], *members)

    def move(cl, src, dst):
        m = cl.srandmember(src)
        if m is not None:
            cl.smove(src, dst, m)

    def check(cl, names, errors):
        assert errors == []
        a, b = cl.smembers(names["a"]), cl.smembers(names["b"])
        assert a | b == members and not (a & b)

    ping_pong(seq, move, check)


def test_concurrent_rename_loses_nothing(seq):
    names = shard_keys(seq)
    c = seq.client()
    c.rpush(names["a"], *range(50))

    def move(cl, src, dst):
        try:
            cl.rename(src, dst)
        except Exception as exc:      # the other client moved it first
            if "no such key" not in str(exc):
                raise

    def check(cl, names, errors):
        assert errors == []
        held = [k for k in (names["a"], names["b"]) if cl.exists(k)]
        assert len(held) == 1
        assert cl.lrange(held[0], 0, -1) == [str(i).encode() for i in range(50)]

    ping_pong(seq, move, check)


def test_concurrent_lmove_loses_and_duplicates_nothing(seq):
    names = shard_keys(seq)
    c = seq.client()
    c.rpush(names["a"], *range(30))

    def check(cl, names, errors):
        assert errors == []
        items = cl.lrange(names["a"], 0, -1) + cl.lrange(names["b"], 0, -1)
        assert sorted(int(x) for x in items) == list(range(30))

    ping_pong(seq, lambda cl, s, d: cl.lmove(s, d, "LEFT", "RIGHT"), check)


def test_dead_source_shard_keeps_the_data(make_db):
    """A RENAME whose source shard is down answers an error and changes nothing."""
    d = make_db(proxy_args=("--multi-slot-commands", "sequential"))
    names = shard_keys(d)
    c = d.client()
    c.set(names["b"], "old")
    c.set(names["a"], "new")
    d.kill_shard(d.shard_index_of(names["a"]))
    with pytest.raises(Exception):
        c.rename(names["a"], names["b"])
    assert c.get(names["b"]) == b"old"
