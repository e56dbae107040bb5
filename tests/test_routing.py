"""Routing through dmcproxy over 3 real shards: every key lands on the shard that owns its slot,
multi-key commands are split and merged, pipelines keep request order, and the database
answers like one redis-server."""

from __future__ import annotations

import subprocess
import threading

import pytest
import redis

from dmc._fastpath import slot_of


def test_each_key_is_stored_on_the_shard_that_owns_its_slot(db, r):
    keys = [f"key:{i}" for i in range(600)]
    for k in keys:
        r.set(k, k)
    held = [set(k.decode() for k in db.shard(i).keys("*")) for i in range(3)]
    for k in keys:
        owner = db.shard_index_of(k)
        assert k in held[owner], (k, slot_of(k), owner)
    assert sum(len(h) for h in held) == len(keys)
    # The split is even enough that every shard got a share.
    assert all(len(h) > 100 for h in held)


def test_hash_tags_keep_keys_together(db, r):
    keys = [f"{{user:42}}:{field}" for field in ("name", "mail", "followers", "cart")]
    for k in keys:
        r.set(k, 1)
    owner = db.shard_index_of("user:42")
    assert sorted(db.shard(owner).keys("*")) == sorted(k.encode() for k in keys)


SCRIPT = [
    ("SET", "a", "1"), ("GET", "a"), ("INCR", "a"), ("INCRBY", "counter", "5"),
    ("APPEND", "s", "hello"), ("STRLEN", "s"), ("GETRANGE", "s", "1", "3"),
    ("LPUSH", "list", "x", "y", "z"), ("LRANGE", "list", "0", "-1"), ("LPOP", "list"),
    ("HSET", "h", "f1", "v1", "f2", "v2"), ("HGET", "h", "f1"), ("HLEN", "h"),
    ("SADD", "set", "m1", "m2", "m3"), ("SCARD", "set"), ("SISMEMBER", "set", "m2"),
    ("ZADD", "z", "1", "one", "2", "two"), ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
    ("ZSCORE", "z", "two"), ("EXPIRE", "a", "100"), ("TTL", "a"), ("TYPE", "h"),
    ("MSET", "k1", "v1", "k2", "v2", "k3", "v3", "k4", "v4"),
    ("MGET", "k1", "k2", "nosuchkey", "k3", "k4"),
    ("EXISTS", "k1", "k2", "nosuchkey", "k1"), ("DEL", "k1", "k3", "nosuchkey"),
    ("MGET", "k1", "k2", "k3", "k4"), ("TOUCH", "k2", "k4", "zzz"), ("UNLINK", "k2", "k4"),
    ("DBSIZE",), ("GET", "nosuchkey"), ("INCR", "s"), ("LPUSH", "s", "x"),
    ("GET",), ("NOSUCHCOMMAND", "arg"), ("SETEX", "e", "100", "v"), ("GETDEL", "e"),
    ("PING",), ("PING", "hello"), ("ECHO", "hi"), ("SELECT", "0"),
    ("SET", "{t}1", "a"), ("RENAME", "{t}1", "{t}2"), ("GET", "{t}2"),
    ("OBJECT", "ENCODING", "list"), ("XADD", "stream", "1-1", "f", "v"), ("XLEN", "stream"),
    ("EVAL", "return redis.call('get', KEYS[1])", "1", "{t}2"),
    ("FLUSHALL",), ("DBSIZE",), ("KEYS", "*"),
]


def run_script(client: redis.Redis):
    out = []
    for cmd in SCRIPT:
        try:
            out.append(client.execute_command(*cmd))
        except redis.ResponseError as exc:
            out.append(("error", str(exc)))
    return out


@pytest.mark.parametrize("protocol", [2, 3])
def test_answers_like_a_single_redis_server(db, r, ref, protocol):
    """The same commands against one redis-server and against the 3-shard database, from a
    RESP2 and from a RESP3 client."""
    mine = db.client(protocol=protocol)
    port = ref.connection_pool.connection_kwargs["port"]
    theirs = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    try:
        assert run_script(mine) == run_script(theirs)
    finally:
        theirs.close()


def test_redis_py_defaults_work(db, r):
    """redis-py 8 speaks RESP3 by default (HELLO 3)."""
    c = redis.Redis(host="127.0.0.1", port=db.port)
    try:
        assert c.execute_command("HELLO")[b"proto"] == 3
        c.hset("h", mapping={"a": "1", "b": "2"})
        assert c.hgetall("h") == {b"a": b"1", b"b": b"2"}
        c.mset({f"m{i}": i for i in range(20)})
        assert c.mget([f"m{i}" for i in range(20)]) == [str(i).encode() for i in range(20)]
        assert c.dbsize() == 21
        c.zadd("z", {"x": 1.5})
        assert c.zscore("z", "x") == 1.5
    finally:
        c.close()


def test_keys_and_dbsize_cover_every_shard(db, r):
    names = {f"k{i}" for i in range(50)}
    r.mset({k: 1 for k in names})
    assert {k.decode() for k in r.keys("*")} == names
    assert r.dbsize() == 50
    assert {db.shard_index_of(k) for k in names} == {0, 1, 2}


def test_mget_returns_values_in_the_order_asked_across_shards(db, r):
    keys = [f"m:{i}" for i in range(100)]
    r.mset({k: f"v{i}" for i, k in enumerate(keys)})
    ask = keys[::-1] + ["missing"] + keys[:7]
    expect = [f"v{keys.index(k)}".encode() if k in keys else None for k in ask]
    assert r.mget(ask) == expect
    assert len({db.shard_index_of(k) for k in ask}) == 3


def test_split_commands_merge_their_counts(r):
    keys = [f"c:{i}" for i in range(30)]
    r.mset({k: 1 for k in keys})
    assert r.exists(*keys, "none", keys[0]) == 31
    assert r.touch(*keys[:10], "none") == 10
    assert r.delete(*keys[:20], "none") == 20
    assert r.unlink(*keys, "none") == 10
    assert r.dbsize() == 0


def test_cross_shard_write_that_cannot_be_split_is_refused_with_crossslot(db, r):
    a, b = "alpha", "beta"
    assert db.shard_index_of(a) != db.shard_index_of(b)
    r.set(a, 1)
    # redis-py maps the `-CROSSSLOT` prefix to its own exception class.
    with pytest.raises(redis.exceptions.ClusterCrossSlotError,
                       match="^Keys in request don't hash to the same slot$"):
        r.rename(a, b)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        r.msetnx({a: 1, b: 2})
    assert r.get(a) == b"1" and r.get(b) is None


def test_pipeline_spanning_shards_gets_replies_in_request_order(r):
    pipe = r.pipeline(transaction=False)
    expected = []
    for i in range(2000):
        k = f"p:{i % 97}"
        if i % 3 == 0:
            pipe.set(k, i)
            expected.append(True)
        elif i % 3 == 1:
            pipe.incr(f"n:{i % 13}")
            expected.append(None)
        else:
            pipe.mget(k, f"p:{(i + 1) % 97}")
            expected.append("mget")
    results = pipe.execute()
    # Replay the same sequence against a model to know every reply.
    model, counters = {}, {}
    for i, res in enumerate(results):
        k = f"p:{i % 97}"
        if i % 3 == 0:
            model[k] = str(i).encode()
            assert res is True
        elif i % 3 == 1:
            name = f"n:{i % 13}"
            counters[name] = counters.get(name, 0) + 1
            assert res == counters[name]
        else:
            assert res == [model.get(k), model.get(f"p:{(i + 1) % 97}")]


def test_many_concurrent_clients_each_see_their_own_writes(db, r):
    errors = []

    def worker(n):
        c = redis.Redis(host="127.0.0.1", port=db.port, socket_timeout=10, protocol=2)
        try:
            for i in range(300):
                k = f"w{n}:{i}"
                c.set(k, f"{n}-{i}")
                if c.get(k) != f"{n}-{i}".encode():
                    errors.append(k)
            got = c.mget([f"w{n}:{i}" for i in range(300)])
            if got != [f"{n}-{i}".encode() for i in range(300)]:
                errors.append(f"mget of worker {n}")
        except Exception as exc:     # a thread's failure must reach the assertion
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert r.dbsize() == 40 * 300


def test_redis_cli_sees_one_redis(db, r):
    commands = "SET cli:1 one\nSET cli:2 two\nMGET cli:1 cli:2 cli:3\nDBSIZE\nDEL cli:1 cli:2\nDBSIZE\n"
    out = subprocess.run(["redis-cli", "-p", str(db.port)], input=commands.encode(),
                         capture_output=True, timeout=20)
    assert out.returncode == 0
    assert out.stdout.decode().split("\n") == ["OK", "OK", "one", "two", "", "2", "2", "0", ""]


def test_redis_cli_pipe_mass_insert(db, r):
    payload = b"".join(
        b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k)
        for k in (f"mass:{i}".encode() for i in range(5000)))
    out = subprocess.run(["redis-cli", "-p", str(db.port), "--pipe"], input=payload,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"errors: 0, replies: 5000" in out.stdout
    assert r.dbsize() == 5000


def test_select_other_than_0_is_refused_as_redis_does_for_a_missing_db(r):
    assert r.execute_command("SELECT", "0") is True
    with pytest.raises(redis.ResponseError, match="^DB index is out of range$"):
        r.execute_command("SELECT", "1")
    with pytest.raises(redis.ResponseError, match="value is not an integer"):
        r.execute_command("SELECT", "x")


def test_sort_store_is_routed_by_command_getkeys(db, r):
    """SORT's STORE key is not in its key specs: the proxy asks a shard COMMAND GETKEYS."""
    r.rpush("{s}src", 3, 1, 2)
    assert r.sort("{s}src", store="{s}dst") == 3
    assert r.lrange("{s}dst", 0, -1) == [b"1", b"2", b"3"]
    assert db.shard(db.shard_index_of("s")).lrange("{s}dst", 0, -1) == [b"1", b"2", b"3"]
    src, dst = "alpha", "beta"
    assert db.shard_index_of(src) != db.shard_index_of(dst)
    r.rpush(src, 1)
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        r.sort(src, store=dst)
    assert r.exists(dst) == 0
    assert r.sort(src) == [b"1"]


def test_requests_pipelined_after_a_getkeys_lookup_keep_their_order(r):
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.rpush("{p}src", i)
        pipe.sort("{p}src", store="{p}dst", desc=True)
        pipe.lindex("{p}dst", 0)
    out = pipe.execute()
    for i in range(50):
        assert out[3 * i] == i + 1
        assert out[3 * i + 1] == i + 1
        assert out[3 * i + 2] == str(i).encode()


def scan_all(client, **kw):
    seen, cursor, calls = [], 0, 0
    while True:
        cursor, keys = client.scan(cursor, **kw)
        seen += keys
        calls += 1
        if cursor == 0:
            return seen, calls


def test_scan_cursor_walks_every_shard_without_losing_or_repeating_keys(db, r):
    names = {f"scan:{i}" for i in range(1000)} | {f"other:{i}" for i in range(100)}
    r.mset({k: 1 for k in names})
    seen, calls = scan_all(r, count=50)
    assert sorted(k.decode() for k in seen) == sorted(names)
    assert calls > 3
    matched, _ = scan_all(r, match="other:*", count=100)
    assert sorted(k.decode() for k in matched) == sorted(k for k in names if k.startswith("other:"))
    r.lpush("alist", 1)
    typed, _ = scan_all(r, _type="list")
    assert typed == [b"alist"]


def test_scan_errors_are_redis_errors(r):
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "abc")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'scan'"):
        r.execute_command("SCAN")


def test_redis_cli_scan_lists_every_key(db, r):
    r.mset({f"cli:{i}": i for i in range(300)})
    out = subprocess.run(["redis-cli", "-p", str(db.port), "--scan", "--pattern", "cli:*"],
                         capture_output=True, text=True, timeout=30)
    assert sorted(out.stdout.split()) == sorted(f"cli:{i}" for i in range(300))


def test_randomkey_finds_a_key_on_any_shard(db, r):
    assert r.randomkey() is None
    lone = "lonely"
    r.set(lone, 1)
    # Two shards are empty: a random shard's nil must not hide the key.
    assert all(r.randomkey() == lone.encode() for _ in range(20))
    r.mset({f"rk{i}": i for i in range(50)})
    assert {r.randomkey() for _ in range(30)} <= {lone.encode()} | {f"rk{i}".encode() for i in range(50)}


@pytest.mark.parametrize("protocol", [2, 3])
def test_info_keyspace_is_summed_over_shards(db, r, protocol):
    r.mset({f"i{i}": i for i in range(90)})
    r.expire("i1", 100)
    r.expire("i2", 100)
    info = db.client(protocol=protocol).info()
    assert info["db0"]["keys"] == 90
    assert info["db0"]["expires"] == 2
    assert info["redis_version"]
    assert db.client(protocol=protocol).info("keyspace")["db0"]["keys"] == 90


@pytest.mark.parametrize("protocol", [2, 3])
def test_set_algebra_across_shards_matches_a_single_redis(db, r, ref, protocol):
    keys = ["alpha", "beta", "delta"]
    assert len({db.shard_index_of(k) for k in keys}) == 3
    mine = db.client(protocol=protocol)
    port = ref.connection_pool.connection_kwargs["port"]
    theirs = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    try:
        for c in (mine, theirs):
            c.sadd("alpha", *[f"m{i}" for i in range(0, 60)])
            c.sadd("beta", *[f"m{i}" for i in range(30, 90)])
            c.sadd("delta", *[f"m{i}" for i in range(50, 55)], "only-delta")
            c.set("text", "x")
        for cmd in (("SUNION", *keys), ("SINTER", *keys), ("SINTER", "alpha", "beta"),
                    ("SDIFF", *keys), ("SDIFF", "beta", "alpha", "missing"),
                    ("SUNION", "alpha", "missing"), ("SINTER", "alpha", "missing"),
                    ("SINTERCARD", "3", *keys), ("SINTERCARD", "2", "alpha", "beta", "LIMIT", "7")):
            a, b = mine.execute_command(*cmd), theirs.execute_command(*cmd)
            if isinstance(a, int):
                assert a == b, cmd
            else:
                assert sorted(a) == sorted(b) and len(a) == len(set(a)), cmd
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            mine.sunion("alpha", "text")
        # The *STORE forms would write across shards: refused as Redis Cluster does.
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            mine.sunionstore("alpha", "beta", "delta")
    finally:
        theirs.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_sorted_set_algebra_across_shards_matches_a_single_redis(db, r, ref, protocol):
    keys = ["alpha", "beta", "delta"]
    mine = db.client(protocol=protocol)
    port = ref.connection_pool.connection_kwargs["port"]
    theirs = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    try:
        for c in (mine, theirs):
            c.zadd("alpha", {f"m{i}": i * 0.5 for i in range(0, 40)})
            c.zadd("beta", {f"m{i}": 100 - i for i in range(20, 60)})
            c.zadd("delta", {"m25": 1.25, "m30": -3, "solo": float("inf"), "m1": 7})
        for cmd in (("ZUNION", 3, *keys), ("ZUNION", 3, *keys, "WITHSCORES"),
                    ("ZINTER", 2, "alpha", "beta", "WITHSCORES"),
                    ("ZINTER", 3, *keys, "AGGREGATE", "MAX", "WITHSCORES"),
                    ("ZUNION", 2, "alpha", "delta", "WEIGHTS", 2, 0.5, "AGGREGATE", "MIN", "WITHSCORES"),
                    ("ZDIFF", 3, *keys), ("ZDIFF", 2, "beta", "alpha", "WITHSCORES"),
                    ("ZINTERCARD", 2, "alpha", "beta"), ("ZINTERCARD", 2, "alpha", "beta", "LIMIT", 5),
                    ("ZUNION", 2, "alpha", "missing", "WITHSCORES")):
            assert mine.execute_command(*cmd) == theirs.execute_command(*cmd), cmd
        for c in (mine, theirs):
            with pytest.raises(redis.ResponseError, match="weight value is not a float"):
                c.execute_command("ZUNION", 2, "alpha", "beta", "WEIGHTS", 1, "x")
    finally:
        theirs.close()


def test_pfcount_across_shards_matches_a_single_redis(db, r, ref):
    port = ref.connection_pool.connection_kwargs["port"]
    theirs = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    try:
        for c in (r, theirs):
            c.pfadd("alpha", *[f"e{i}" for i in range(10)])              # sparse
            c.pfadd("beta", *[f"e{i}" for i in range(5, 30000)])         # dense
            c.pfadd("delta", *[f"x{i}" for i in range(300)])
            c.set("text", "not an hll")
        for keys in (("alpha", "beta"), ("alpha", "delta"), ("alpha", "beta", "delta"),
                     ("alpha", "missing"), ("beta",)):
            assert r.pfcount(*keys) == theirs.pfcount(*keys), keys
        assert len({db.shard_index_of(k) for k in ("alpha", "beta", "delta")}) == 3
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            r.pfcount("alpha", "text")
    finally:
        theirs.close()


def test_latency_reports_are_refused_clearly_and_slowlog_is_merged(db, r):
    with pytest.raises(redis.ResponseError, match="latency\\|latest' is not supported by this proxy yet"):
        r.execute_command("LATENCY", "LATEST")
    assert r.execute_command("LATENCY", "RESET") == 0
    keys = {}                           # one key per shard
    for k in (f"slow{i}" for i in range(100)):
        keys.setdefault(db.shard_index_of(k), k)
    assert len(keys) == len(db.shard_ports)
    r.config_set("slowlog-log-slower-than", 0)      # every command is slow (through the proxy)
    try:
        assert r.slowlog_reset()
        for k in keys.values():
            r.set(k, "v")
        r.config_set("slowlog-log-slower-than", -1)     # nothing more is logged
        per_shard = [db.shard(i).slowlog_len() for i in range(len(db.shard_ports))]
        assert all(n >= 1 for n in per_shard), per_shard
        # SLOWLOG LEN sums the shards' lengths; SLOWLOG GET has every shard's entries.
        assert r.slowlog_len() == sum(per_shard)
        logged = [e["command"] for e in r.slowlog_get(-1)]
        assert len(logged) == sum(per_shard)
        assert {f"SET {k} v".encode() for k in keys.values()} <= set(logged)
        assert r.slowlog_reset()
        assert r.slowlog_len() == 0
        assert r.slowlog_get() == []
        assert all(db.shard(i).slowlog_len() == 0 for i in range(len(db.shard_ports)))
    finally:
        r.config_set("slowlog-log-slower-than", 10000)


def test_transaction_runs_on_the_shard_of_its_keys(db, r):
    """EXEC goes where the queued commands' keys live, whichever shard that is."""
    for shard in range(len(db.shard_ports)):
        key = next(f"tx{i}" for i in range(1000) if db.shard_index_of(f"tx{i}") == shard)
        pipe = r.pipeline(transaction=True)
        pipe.set(key, "v").incr("{%s}:n" % key).get(key)
        assert pipe.execute() == [True, 1, b"v"]
        assert r.get(key) == b"v" and r.get("{%s}:n" % key) == b"1"
        assert db.shard(shard).get(key) == b"v"


def test_script_exists_is_each_script_anded_over_every_shard(db, r, ref):
    """SCRIPT EXISTS (request_policy:all_shards, response_policy:agg_logical_and) answers an
    array: each element ANDed over the shards, as Redis's policy says for array replies."""
    loaded = r.script_load("return 'loaded'")
    assert ref.script_load("return 'loaded'") == loaded
    missing = "a27e7e8a43702b7046d4f6a7ccf5b60cef6b9bda"
    assert r.script_exists(loaded, missing, loaded) == ref.script_exists(loaded, missing, loaded) \
        == [True, False, True]
    # A script only one shard knows does not exist for the database.
    db.shard(0).script_load("return 'one shard'")
    sha = ref.script_load("return 'one shard'")
    assert r.script_exists(sha) == [len(db.shard_ports) == 1]
