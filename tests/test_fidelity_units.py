"""What Redis's own test suite showed through a 3-shard dmcproxy (issue 12, bench/COMPAT.md),
each behaviour run against one plain redis-server and through the endpoint, the answers
compared (as tests/test_fidelity.py): a transaction meeting a busy script, the order of a
blocking command and another client's write, CONFIG SET of per-database parameters, SORT's
BY and GET patterns.
"""

from __future__ import annotations

import time

import pytest

from conftest import PROXY_THREADS

from dmc.local import start_proxy, start_redis_on_free_port
from dmc.processes import stop_process
from replies import Error, RespConn, on_both
from test_fidelity import SELF_CHECK, kill_scripts_on_shards, port_of
from waiting import wait_until


@pytest.fixture
def ports(db, r, ref):
    return {"redis": port_of(ref), "dmc": port_of(ref) if SELF_CHECK else db.port}


# --------------------------------------------------------------------------- MULTI and a busy script

SPIN = "while true do end"


def transaction_meets_a_busy_script(port: int, multi_before: bool) -> list:
    """The suite's `MULTI and script timeout` (multi_before False: MULTI sent while the script
    runs) and `MULTI-EXEC body and script timeout` (True: MULTI and one INCR queued before):
    what the transaction's client is answered, and what xx holds after."""
    admin, runner, tx = RespConn(port), RespConn(port), RespConn(port)
    try:
        assert admin.call("CONFIG", "SET", "lua-time-limit", "10") == b"OK"
        assert admin.call("SET", "xx", "1") == b"OK"
        out = []
        if multi_before:
            out += [tx.call("MULTI"), tx.call("INCR", "xx")]
        runner.send(["EVAL", SPIN, "0"])
        time.sleep(0.3)                  # past the limit: the server says BUSY
        if not multi_before:
            out.append(tx.call("MULTI"))
        out.append(tx.call("INCR", "xx"))
        out.append(admin.call("SCRIPT", "KILL"))
        out.append(isinstance(runner.read(timeout=5), Error))
        wait_until(lambda: admin.call("PING") == b"PONG", timeout=5, what="the script to end")
        if not multi_before:
            out.append(tx.call("INCR", "xx"))
        out.append(tx.call("EXEC"))
        out.append(admin.call("GET", "xx"))
        out.append(tx.call("PING", "asdf"))
        return out
    finally:
        for c in (admin, runner, tx):
            c.close()


def exec_meets_a_busy_script(port: int, incr_while_busy: bool) -> dict:
    """The suite's `just EXEC and script timeout` and `EXEC and script timeout` (an INCR
    refused while the script runs, then EXEC): EXEC while a script runs is refused with
    EXECABORT ... BUSY (not "previous errors"), and the transaction is gone."""
    admin, runner, tx = RespConn(port), RespConn(port), RespConn(port)
    try:
        assert admin.call("CONFIG", "SET", "lua-time-limit", "10") == b"OK"
        assert admin.call("SET", "xx", "1") == b"OK"
        out = {"queued": [tx.call("MULTI"), tx.call("INCR", "xx")]}
        runner.send(["EVAL", SPIN, "0"])
        time.sleep(0.3)
        if incr_while_busy:
            out["incr"] = tx.call("INCR", "xx")
        out["exec"] = tx.call("EXEC")
        out["kill"] = admin.call("SCRIPT", "KILL")
        runner.read(timeout=5)
        wait_until(lambda: admin.call("PING") == b"PONG", timeout=5, what="the script to end")
        out["xx"] = admin.call("GET", "xx")
        out["exec_again"] = tx.call("EXEC")
        return out
    finally:
        for c in (admin, runner, tx):
            c.close()


@pytest.mark.parametrize("multi_before", [False, True])
def test_a_command_queued_while_a_script_runs_is_refused_busy_and_exec_aborts(
        db, ports, multi_before):
    try:
        want, got = on_both(ports, lambda p: transaction_meets_a_busy_script(p, multi_before))
    finally:
        kill_scripts_on_shards(db)
    assert got == want
    assert isinstance(want[2 if multi_before else 1], Error)       # the INCR while it runs
    assert want[-3].startswith(b"EXECABORT") and want[-2] == b"1" and want[-1] == b"asdf"


@pytest.mark.parametrize("incr_while_busy", [False, True])
def test_exec_while_a_script_runs_is_aborted_busy_and_nothing_runs(db, ports, incr_while_busy):
    try:
        want, got = on_both(ports, lambda p: exec_meets_a_busy_script(p, incr_while_busy))
    finally:
        kill_scripts_on_shards(db)
    assert got == want
    assert want["exec"].startswith(b"EXECABORT Transaction discarded because of: BUSY")
    assert want["xx"] == b"1" and want["exec_again"].startswith(b"ERR EXEC without MULTI")


# --------------------------------------------------------------------------- order across clients

def blocked_reader_then_writer(port: int, change: list[str], rounds: int = 5) -> list:
    """The suite's `Blocking XREADGROUP: key deleted` (and `... type changed with SET`,
    `... flushed DB`): one client blocks in XREADGROUP, another changes the stream at once,
    without waiting; the blocked client is answered that the stream is gone, every time (its
    command reached the shard first, as it reached the server first)."""
    admin = RespConn(port)
    out = []
    try:
        for _ in range(rounds):
            admin.call("DEL", "mystream")
            admin.call("XADD", "mystream", "666", "f", "v")
            admin.call("XGROUP", "CREATE", "mystream", "mygroup", "$")
            rd = RespConn(port)
            try:
                assert rd.call("SELECT", "0") == b"OK"    # as the suite's deferring client
                rd.send(["XREADGROUP", "GROUP", "mygroup", "Alice", "BLOCK", "0",
                         "STREAMS", "mystream", ">"])
                admin.call(*change)
                out.append(rd.read(timeout=5))
            finally:
                rd.close()
        return out
    finally:
        admin.close()


@pytest.mark.skipif(PROXY_THREADS > 1, reason="two clients of two workers are ordered as the "
                    "clients of two proxies: by nothing (README, Worker threads)")
@pytest.mark.parametrize("change", [["DEL", "mystream"], ["SET", "mystream", "val1"],
                                    ["FLUSHALL"]], ids=["del", "set", "flushall"])
def test_a_blocking_command_reaches_its_shard_before_a_later_command_of_another_client(
        ports, change):
    want, got = on_both(ports, lambda p: blocked_reader_then_writer(p, change))
    assert got == want
    assert all(isinstance(e, Error) and b"no longer exists" in e for e in want)


# --------------------------------------------------------------------------- CONFIG SET, per database

def oom_session(port: int) -> list:
    """The suite's `allow-oom shebang flag` and `reject script do not cause a Lua stack leak`:
    with `maxmemory 1` a write (and a script that may write) is refused OOM, a read is not;
    `maxmemory 0` lifts it."""
    c = RespConn(port)
    try:
        out = [c.call("SET", "x", "123"), c.call("CONFIG", "SET", "maxmemory", "1")]
        out.append(c.call("SET", "x", "1"))
        out.append(c.call("EVAL", "#!lua\nreturn 1", "0"))
        out.append(c.call("GET", "x"))
        out.append(c.call("CONFIG", "SET", "maxmemory", "0"))
        out.append(c.call("SET", "x", "1"))
        out.append(c.call("CONFIG", "GET", "maxmemory"))
        return out
    finally:
        c.call("CONFIG", "SET", "maxmemory", "0")
        c.close()


def test_config_set_maxmemory_is_the_databases_limit_shared_by_its_shards(db, ports):
    want, got = on_both(ports, oom_session)
    assert got == want
    assert isinstance(want[2], Error) and want[2].startswith(b"OOM")
    assert want[4] == b"123" and want[6] == b"OK"
    if not SELF_CHECK:
        # Each shard got its share, rounded up (1 byte stays a limit), and its own back after.
        for i in range(len(db.shard_ports)):
            assert db.shard(i).config_get("maxmemory") == {"maxmemory": "0"}


def test_config_set_maxmemory_above_the_databases_limit_is_refused(tmp_path):
    """A database of 3 shards of 10mb each (as the control plane sets a bdb's memory_size):
    up to 30mb is the client's to set, split over the shards; above it is refused."""
    procs, ports = [], []
    try:
        for _ in range(3):
            p, proc = start_redis_on_free_port(tmp_path / "shards")
            procs.append(proc)
            ports.append(p)
            RespConn(p).call("CONFIG", "SET", "maxmemory", "10mb")
        proxy, port = start_proxy([("127.0.0.1", p) for p in ports], 0, tmp_path)
        procs.append(proxy)
        c = RespConn(port)
        assert c.call("CONFIG", "SET", "maxmemory", "3mb") == b"OK"
        assert {RespConn(p).call("CONFIG", "GET", "maxmemory")[1] for p in ports} == {b"1048576"}
        refused = c.call("CONFIG", "SET", "maxmemory", "31mb")
        assert isinstance(refused, Error) and b"above the database's memory limit" in refused
        assert c.call("CONFIG", "SET", "maxmemory", "0") == b"OK"
        assert {RespConn(p).call("CONFIG", "GET", "maxmemory")[1] for p in ports} == {b"10485760"}
        c.close()
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def min_replicas_session(port: int) -> list:
    """The suite's `not enough good replicas`: with min-replicas-to-write 1 and no replica, a
    read-only script runs, a script that may write and a write are refused NOREPLICAS."""
    c = RespConn(port)
    try:
        out = [c.call("SET", "x", "some value"),
               c.call("CONFIG", "SET", "min-replicas-to-write", "1"),
               c.call("EVAL", "#!lua flags=no-writes\nreturn redis.call('get','x')", "1", "x"),
               c.call("EVAL", "return redis.call('get','x')", "1", "x"),
               c.call("EVAL", "#!lua\nreturn redis.call('get','x')", "1", "x"),
               c.call("SET", "x", "2")]
        return out
    finally:
        c.call("CONFIG", "SET", "min-replicas-to-write", "0")
        c.close()


def test_config_set_min_replicas_to_write_applies_to_every_shard(ports):
    want, got = on_both(ports, min_replicas_session)
    assert got == want
    assert want[2] == want[3] == b"some value"
    assert want[4].startswith(b"NOREPLICAS") and want[5].startswith(b"NOREPLICAS")


# --------------------------------------------------------------------------- MULTI, INFO

def test_a_no_multi_command_inside_multi_is_refused_and_exec_aborts(ports, conns):
    def run(port):
        c = conns(port)
        return [c.call("SET", "foo", "bar"), c.call("MULTI"), c.call("SAVE"), c.call("EXEC"),
                c.call("GET", "foo")]
    want, got = on_both(ports, run)
    assert got == want
    assert want[2] == b"ERR Command not allowed inside a transaction"
    assert want[3].startswith(b"EXECABORT")


def test_config_resetstat_restarts_the_endpoints_info_counters(ports, conns):
    def run(port):
        c = conns(port)
        c.call("LPUSH", "str", "a")
        for _ in range(3):
            c.call("GET", "str")                        # WRONGTYPE
        c.call("CONFIG", "RESETSTAT")
        c.call("GET", "str")
        info = c.call("INFO", "stats").decode()
        return dict(line.split(":", 1) for line in info.splitlines()
                    if line.startswith("total_error_replies"))
    want, got = on_both(ports, run)
    assert got == want == {"total_error_replies": "1"}


# --------------------------------------------------------------------------- SORT BY / GET, sequential

@pytest.fixture(scope="module")
def seq_db(tmp_path_factory):
    """A 3-shard database with multi_slot_commands = sequential."""
    from conftest import start_database
    d = start_database(tmp_path_factory.mktemp("seqdb"), 3,
                       ("--multi-slot-commands", "sequential"))
    yield d
    d.close()


SORTS = [["tosort", "BY", "weight_*"], ["tosort", "BY", "wobj_*->weight"],
         ["tosort", "BY", "weight_*", "GET", "#", "GET", "wobj_*->name", "GET", "weight_*"],
         ["tosort", "BY", "weight_*", "LIMIT", "1", "2"], ["tosort", "BY", "weight_*", "DESC"],
         ["tosort", "BY", "weight_*", "STORE", "sort-res"], ["tosort", "GET", "nokey_*"],
         ["tosort", "BY", "weight_*", "BADOPT"], ["weight_1", "BY", "weight_*"],
         ["tosort", "BY", "wobj_*->name", "ALPHA", "GET", "wobj_*->"],
         ["emptylist", "BY", "weight_*", "STORE", "sort-empty"]]


def sort_session(port: int) -> list:
    """The Redis suite's `sort` unit in small: BY and GET patterns (keys, hash fields, `#`,
    missing keys), LIMIT, DESC, ALPHA, STORE, errors; what each answers, and every key after."""
    c = RespConn(port)
    try:
        c.call("FLUSHALL")
        c.call("RPUSH", "tosort", "3", "1", "2", "5", "4")
        for i in range(1, 6):
            c.call("SET", f"weight_{i}", str(10 - i))
            c.call("HSET", f"wobj_{i}", "weight", str(i * 3 % 7), "name", f"n{6 - i}")
        out = [c.call("SORT", *args) for args in SORTS]
        out.append(c.call("SORT_RO", "tosort", "BY", "weight_*", "GET", "wobj_*->name"))
        out.append(c.call("LRANGE", "sort-res", "0", "-1"))
        out.append(sorted(c.call("KEYS", "*")))
        return out
    finally:
        c.close()


def test_sort_by_and_get_patterns_over_several_shards_answer_as_one_redis(seq_db, ref):
    want, got = on_both({"redis": port_of(ref),
                         "dmc": port_of(ref) if SELF_CHECK else seq_db.port}, sort_session)
    assert got == want
    assert want[0] == [b"5", b"4", b"3", b"2", b"1"] and want[-2] == want[0]
    if not SELF_CHECK:
        # No copy left behind on a shard that does not own the key.
        assert sum(seq_db.shard(i).dbsize() for i in range(3)) == len(want[-1])


def test_total_error_replies_counts_an_error_a_script_caught(ports, conns):
    """The suite's `Consistent eval error reporting`: an OOM a script catches with redis.pcall
    is not answered, yet counted in total_error_replies, as one Redis counts it."""
    def run(port):
        c = conns(port)
        try:
            c.call("CONFIG", "SET", "maxmemory", "1")
            c.call("CONFIG", "RESETSTAT")
            caught = c.call("EVAL", "local t = redis.pcall('set','x','y') "
                            "if t['err'] then return 1 end return 0", "1", "x")
            info = c.call("INFO", "stats").decode()
        finally:
            c.call("CONFIG", "SET", "maxmemory", "0")
        return caught, [line for line in info.splitlines()
                        if line.startswith("total_error_replies")]
    want, got = on_both(ports, run)
    assert got == want == (1, ["total_error_replies:1"])


def test_config_set_maxmemory_splits_the_room_above_what_info_showed(db, r):
    """The suite's `Tracking invalidation message of eviction keys ...`: a client reads
    used_memory and asks for 100kb more. Each shard gets its own use plus a third of the
    100kb, so no shard is over its limit at once (an even split would put the fullest over)."""
    c = RespConn(db.port)
    try:
        used = int(dict(line.split(":", 1) for line in c.call("INFO", "memory").decode()
                        .splitlines() if ":" in line)["used_memory"])
        assert c.call("CONFIG", "SET", "maxmemory", str(used + 102400)) == b"OK"
        # Writes on every shard go on (an even split leaves the fullest shard over its part).
        for k in db.keys_on_every_shard("roomy"):
            assert c.call("SET", k, "v") == b"OK"
        limits = [int(db.shard(i).config_get("maxmemory")["maxmemory"])
                  for i in range(len(db.shard_ports))]
        assert sum(limits) >= used + 102400 and len(set(limits)) > 1
    finally:
        c.call("CONFIG", "SET", "maxmemory", "0")
        c.close()
