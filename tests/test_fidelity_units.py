"""What Redis's own test suite showed through a 3-shard dmcproxy (issue 12, bench/COMPAT.md),
each behaviour run against one plain redis-server and through the endpoint, the answers
compared (as tests/test_fidelity.py): a transaction meeting a busy script, the order of a
blocking command and another client's write, CONFIG SET of per-database parameters, SORT's
BY and GET patterns.
"""

from __future__ import annotations

import time

import pytest

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

def blocked_reader_then_writer(port: int, change: list[str], rounds: int = 10) -> list:
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


@pytest.mark.parametrize("change", [["DEL", "mystream"], ["SET", "mystream", "val1"],
                                    ["FLUSHALL"]], ids=["del", "set", "flushall"])
def test_a_blocking_command_reaches_its_shard_before_a_later_command_of_another_client(
        ports, change):
    want, got = on_both(ports, lambda p: blocked_reader_then_writer(p, change))
    assert got == want
    assert all(isinstance(e, Error) and b"no longer exists" in e for e in want)
