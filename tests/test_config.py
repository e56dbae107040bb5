"""CONFIG through the proxy, as a managed Redis serves it: CONFIG GET answers any parameter
from one shard; CONFIG SET changes only the parameters of CONFIG_SET_ALLOWED, on every shard,
and refuses the ones the cluster manages with one line; CONFIG RESETSTAT reaches every shard;
CONFIG REWRITE is refused. Errors about unknown parameters or bad values are Redis's own."""

from __future__ import annotations

import pytest
import redis

from dmc import _fastpath
from dmc.commands import CONFIG_SET_ALLOWED, ask_shard, compile_command_reply, build_table


def reply(client: redis.Redis, *args):
    """The reply to one command, an error as ("error", text)."""
    try:
        return client.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", str(exc))


def shard_values(db, name):
    return [db.shard(i).config_get(name)[name] for i in range(len(db.shard_ports))]


def managed(name):
    return ("error", f"CONFIG SET parameter '{name}' is managed by the cluster")


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("patterns", [["maxmemory*"], ["*max-listpack*"], ["slowlog*"],
                                      ["notify-keyspace-events"], ["nosuchparam*"],
                                      ["maxmemory-policy", "hash-max-*"], ["MAXMEMORY-POLICY"]])
def test_config_get_answers_like_a_single_redis(db, r, ref, protocol, patterns):
    client = db.client(protocol=protocol)
    assert client.config_get(*patterns) == ref.config_get(*patterns)


def test_config_get_answers_any_parameter_from_one_shard(db, r):
    everything = r.config_get("*")
    assert everything == db.shard(0).config_get("*")
    assert set(everything) >= {"dir", "port", "save", "appendonly", "maxmemory", "timeout"}


def test_allowed_parameters_are_set_on_every_shard(db, r, ref):
    try:
        for client in (r, ref):
            assert client.config_set("maxmemory-policy", "allkeys-lru") is True
            assert reply(client, "CONFIG", "SET", "slowlog-max-len", "200",
                         "HASH-MAX-LISTPACK-ENTRIES", "64", "notify-keyspace-events", "KEA") == b"OK"
        assert shard_values(db, "maxmemory-policy") == ["allkeys-lru"] * 3
        assert shard_values(db, "slowlog-max-len") == ["200"] * 3
        assert shard_values(db, "hash-max-listpack-entries") == ["64"] * 3
        assert shard_values(db, "notify-keyspace-events") == [ref.config_get("notify-keyspace-events")
                                                              ["notify-keyspace-events"]] * 3
        # An alias is its parameter.
        assert r.config_set("hash-max-ziplist-entries", "100") is True
        assert shard_values(db, "hash-max-listpack-entries") == ["100"] * 3
        assert r.config_get("maxmemory-policy", "slowlog-max-len") == \
            ref.config_get("maxmemory-policy", "slowlog-max-len")
    finally:
        for client in [r, ref]:
            client.config_set("maxmemory-policy", "noeviction")
            reply(client, "CONFIG", "SET", "slowlog-max-len", "128", "hash-max-listpack-entries", "128",
                  "notify-keyspace-events", "")


# (maxmemory and min-replicas-to-write are the database's: tests/test_fidelity_units.py.)
@pytest.mark.parametrize("name", ["dir", "port", "bind", "dbfilename", "appendonly", "save",
                                  "replicaof", "slaveof", "requirepass", "masterauth",
                                  "maxclients", "timeout", "protected-mode", "cluster-enabled",
                                  "DIR", "Save"])
def test_parameters_managed_by_the_cluster_are_refused(db, r, name):
    before = shard_values(db, name.lower())
    assert reply(r, "CONFIG", "SET", name, "1") == managed(name)
    assert shard_values(db, name.lower()) == before


def test_several_parameters_are_refused_as_a_whole(db, r):
    before = shard_values(db, "slowlog-max-len")
    assert reply(r, "CONFIG", "SET", "slowlog-max-len", "999", "dir", "/tmp") == managed("dir")
    assert reply(r, "CONFIG", "SET", "appendonly", "yes", "slowlog-max-len", "999") == \
        managed("appendonly")
    assert shard_values(db, "slowlog-max-len") == before


@pytest.mark.parametrize("args", [
    ["nosuchparam", "1"],                                   # unknown: Redis's own error
    ["slowlog-max-len", "5", "nosuchparam", "1"],           # and nothing is applied
    ["maxmemory-policy", "bogus"],                          # a bad value
    ["slowlog-max-len", "5", "slowlog-max-len", "6"],       # duplicate parameter
    ["maxmemory-policy"],                                   # arity
    ["maxmemory-policy", "allkeys-lru", "dir"],             # not in pairs: syntax error
    ["hash-max-listpack-entries", "-1x"],
])
def test_config_set_errors_are_redis_errors(db, r, ref, args):
    before = shard_values(db, "slowlog-max-len")
    got = reply(r, "CONFIG", "SET", *args)
    expected = reply(ref, "CONFIG", "SET", *args)
    assert got == expected
    assert got[0] == "error"
    assert shard_values(db, "slowlog-max-len") == before


def test_config_set_inside_multi_is_checked_when_queued(r):
    pipe = r.pipeline(transaction=True)
    pipe.config_set("dir", "/tmp")
    with pytest.raises(redis.ResponseError, match="'dir' is managed by the cluster"):
        pipe.execute()


def test_config_resetstat_resets_every_shard(db, r):
    keys = {}
    i = 0
    while len(keys) < len(db.shard_ports):
        keys.setdefault(db.shard_index_of(f"s{i}"), f"s{i}")
        i += 1
    for k in keys.values():
        r.set(k, "v")
        assert r.get(k) == b"v"
    assert all(db.shard(i).info("stats")["keyspace_hits"] > 0 for i in keys)
    assert r.config_resetstat() is True
    assert [db.shard(i).info("stats")["keyspace_hits"] for i in sorted(keys)] == [0, 0, 0]


def test_config_rewrite_is_refused(r):
    error = reply(r, "CONFIG", "REWRITE")
    assert error[0] == "error" and "the cluster manages its shards" in error[1]


def test_allowed_parameters_are_known_to_redis(db):
    """The list names real parameters (set-max-listpack-* arrive with Redis 7.2)."""
    known = set(ask_shard("127.0.0.1", db.shard_ports[0], [b"CONFIG", b"GET", b"*"])[0][::2])
    unknown = {n for n in CONFIG_SET_ALLOWED if n.encode() not in known}
    assert unknown <= {"set-max-listpack-entries", "set-max-listpack-value"}


def test_without_the_shards_parameter_names_every_other_name_is_refused(db):
    commands = ask_shard("127.0.0.1", db.shard_ports[0], [b"COMMAND"])[0]
    strict = build_table(compile_command_reply(commands, None))
    known = build_table(compile_command_reply(commands, ["dir", "maxmemory-policy"]))
    for table in (strict, known):
        assert table.param_refused([b"CONFIG", b"SET", b"maxmemory-policy", b"x"]) is None
        assert table.param_refused([b"CONFIG", b"SET", b"slowlog-max-len", b"1", b"dir", b"x"]) == 4
        assert table.param_refused([b"CONFIG", b"GET", b"dir"]) is None
    assert strict.param_refused([b"CONFIG", b"SET", b"nosuchparam", b"1"]) == 2
    assert known.param_refused([b"CONFIG", b"SET", b"nosuchparam", b"1"]) is None
    assert isinstance(strict, _fastpath.CommandTable)


@pytest.mark.parametrize("args", [
    ["save", ""], ["SAVE", "  "], ["appendonly", "NO"], ["save", "", "appendonly", "no"],
    ["maxmemory", "0"], ["maxmemory", "0mb"], ["timeout", "0"], ["maxclients", "10000"],
])
def test_a_managed_parameter_at_the_value_applied_is_a_no_op(db, r, args):
    names = [args[i].lower() for i in range(0, len(args), 2)]
    before = {n: shard_values(db, n) for n in names}
    assert reply(r, "CONFIG", "SET", *args) == b"OK"
    assert {n: shard_values(db, n) for n in names} == before


def test_no_op_pairs_are_left_out_and_the_others_set(db, r):
    try:
        assert reply(r, "CONFIG", "SET", "save", "", "slowlog-max-len", "77",
                     "appendonly", "no") == b"OK"
        assert shard_values(db, "slowlog-max-len") == ["77"] * len(db.shard_ports)
        assert shard_values(db, "save") == [""] * len(db.shard_ports)
    finally:
        r.config_set("slowlog-max-len", "128")


@pytest.mark.parametrize("args, refused", [
    (["save", "3600 1"], "save"), (["timeout", "5"], "timeout"),
    (["appendonly", "no", "save", "900 1"], "save"), (["requirepass", ""], "requirepass"),
    (["dir", "."], "dir"), (["port", "0"], "port"),
])
def test_a_managed_parameter_at_another_value_or_never_settable_is_refused(db, r, args, refused):
    """Persistence belongs to the control plane (memory: test_fidelity_units.py); a shard's identity and its
    secrets are refused whatever the value (an answer would tell a guess right)."""
    assert reply(r, "CONFIG", "SET", *args) == managed(refused)
