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


def exec_meets_a_busy_script(port: int) -> list:
    """The suite's `just EXEC and script timeout`: EXEC while a script runs is refused with
    EXECABORT ... BUSY, and the transaction is gone."""
    admin, runner, tx = RespConn(port), RespConn(port), RespConn(port)
    try:
        assert admin.call("CONFIG", "SET", "lua-time-limit", "10") == b"OK"
        assert admin.call("SET", "xx", "1") == b"OK"
        out = [tx.call("MULTI"), tx.call("INCR", "xx")]
        runner.send(["EVAL", SPIN, "0"])
        time.sleep(0.3)
        out.append(tx.call("EXEC"))
        out.append(admin.call("SCRIPT", "KILL"))
        runner.read(timeout=5)
        wait_until(lambda: admin.call("PING") == b"PONG", timeout=5, what="the script to end")
        out.append(admin.call("GET", "xx"))
        out.append(tx.call("EXEC"))
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


def test_exec_while_a_script_runs_is_aborted_busy_and_nothing_runs(db, ports):
    try:
        want, got = on_both(ports, exec_meets_a_busy_script)
    finally:
        kill_scripts_on_shards(db)
    assert got == want
    assert want[2].startswith(b"EXECABORT Transaction discarded because of: BUSY")
    assert want[4] == b"1" and want[5].startswith(b"ERR EXEC without MULTI")
