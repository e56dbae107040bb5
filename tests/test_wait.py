"""WAIT through dmcproxy: three master shards, each with a real replica; the answer is the
smallest number of replicas that acknowledged the client's writes on the shards it wrote to,
and the WAIT never holds up another client."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest
import redis
from conftest import Database, start_database
from waiting import wait_until

from dmc.local import start_redis_on_free_port
from dmc.processes import stop_process

pytestmark = pytest.mark.timeout(120)


@dataclass
class Replicated:
    db: Database
    replica_ports: list[int]
    replica_procs: list

    def replica(self, i: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.replica_ports[i], socket_timeout=10)

    def key_on(self, shard: int, prefix: str = "k") -> str:
        n = 0
        while self.db.shard_index_of(f"{prefix}{n}") != shard:
            n += 1
        return f"{prefix}{n}"

    def pause_replica(self, i: int):
        os.kill(self.replica_procs[i].pid, signal.SIGSTOP)

    def resume_replica(self, i: int):
        os.kill(self.replica_procs[i].pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    db = start_database(tmp_path_factory.mktemp("wait"), 3)
    ports, procs = [], []
    try:
        for i, master in enumerate(db.shard_ports):
            port, proc = start_redis_on_free_port(db.workdir / f"replica{i}", "--replicaof",
                                                  "127.0.0.1", str(master))
            ports.append(port)
            procs.append(proc)
        for i in range(3):
            wait_until(lambda i=i: db.shard(i).info("replication")["connected_slaves"] == 1 and
                       db.shard(i).info("replication")["slave0"]["state"] == "online", 20,
                       what=f"replica of shard {i} online")
        yield Replicated(db, ports, procs)
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            stop_process(p)
        db.close()


def test_wait_counts_replicas_that_have_every_write(replicated):
    c = replicated.db.client()
    keys = [f"wait:{i}" for i in range(200)]
    for k in keys:
        c.set(k, k)
    assert c.wait(1, 5000) == 1
    # Acknowledged by each shard's replica: read from the replicas themselves.
    for i in range(3):
        mine = [k for k in keys if replicated.db.shard_index_of(k) == i]
        assert mine and replicated.replica(i).mget(mine) == [k.encode() for k in mine]


def test_pipelined_write_then_wait(replicated):
    c = replicated.db.client()
    key = replicated.key_on(2, "pipe")
    pipe = c.pipeline(transaction=False)
    pipe.set(key, "v").incr(key + "{x}").wait(1, 5000)
    assert pipe.execute()[-1] == 1
    assert replicated.replica(2).get(key) == b"v"


def test_wait_only_on_the_shards_written_to(replicated):
    c = replicated.db.client()
    c.wait(1, 5000)                         # forget earlier writes
    replicated.pause_replica(0)
    try:
        c.set(replicated.key_on(1), "x")
        started = time.monotonic()
        assert c.wait(1, 3000) == 1         # shard 1's replica acknowledges; shard 0 not asked
        assert time.monotonic() - started < 2.0
        c.set(replicated.key_on(0), "x")
        started = time.monotonic()
        assert c.wait(1, 300) == 0          # shard 0's replica is stopped: the timeout answers
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        replicated.resume_replica(0)


def test_a_waiting_client_holds_up_nobody(replicated):
    waiter, other = replicated.db.client(), replicated.db.client()
    key = replicated.key_on(0, "block")
    replicated.pause_replica(0)
    result = {}
    try:
        waiter.set(key, "1")
        t = threading.Thread(target=lambda: result.update(n=waiter.wait(1, 2000)))
        t.start()
        wait_until(lambda: any("b" in c["flags"] for c in other.client_list()), 5, 0.01,
                   "the WAIT blocked")
        started = time.monotonic()
        for i in range(50):
            other.set(key, i)               # the same shard, over the shared connection
        assert other.get(key) == b"49"
        assert time.monotonic() - started < 1.0
        t.join(5)
        assert result == {"n": 0}
    finally:
        replicated.resume_replica(0)


def test_wait_without_writes_answers_at_once(replicated):
    c = replicated.db.client()
    c.wait(1, 5000)
    started = time.monotonic()
    assert c.wait(1, 5000) == 1
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    assert c.wait(2, 300) == 1              # one replica per shard: the timeout answers
    assert time.monotonic() - started >= 0.25


@pytest.mark.parametrize("args", [("1", "-1"), ("x", "0"), ("1", "y"), ("1",)])
def test_wait_errors_as_redis(replicated, args):
    direct = replicated.db.shard(0)
    c = replicated.db.client()
    with pytest.raises(redis.ResponseError) as theirs:
        direct.execute_command("WAIT", *args)
    with pytest.raises(redis.ResponseError) as ours:
        c.execute_command("WAIT", *args)
    assert str(ours.value) == str(theirs.value)


def test_client_gone_while_waiting(replicated):
    shard = replicated.db.shard(0)
    before = len(shard.client_list())
    replicated.pause_replica(0)
    try:
        c = replicated.db.client()
        c.set(replicated.key_on(0, "gone"), "1")
        sock = redis.Connection(host="127.0.0.1", port=replicated.db.port)
        sock.connect()
        sock.send_command("SET", replicated.key_on(0, "gone"), "2")
        assert sock.read_response() == b"OK"
        sock.send_command("WAIT", "1", "0")         # waits forever: the replica is stopped
        wait_until(lambda: len(shard.client_list()) > before, 5, what="its WAIT connection")
        sock.disconnect()
        wait_until(lambda: len(shard.client_list()) <= before + 1, 5,
                   what="the WAIT connection closed with its client")
        assert c.get(replicated.key_on(0, "gone")) == b"2"
    finally:
        replicated.resume_replica(0)


def test_wait_in_a_transaction_answers_at_once(replicated):
    """As Redis (compared with the shard itself): inside MULTI, WAIT does not block; its count
    is the one already reached, so only its range is checked."""
    key = replicated.key_on(1, "tx")
    replicated.pause_replica(1)
    try:
        answers = []
        for c in (replicated.db.client(), replicated.db.shard(1)):
            started = time.monotonic()
            pipe = c.pipeline(transaction=True)
            pipe.set(key, "1").wait(1, 5000)
            answers.append(pipe.execute())
            assert time.monotonic() - started < 2.0
        for answer in answers:
            assert answer[0] is True and answer[1] in (0, 1)
    finally:
        replicated.resume_replica(1)


@pytest.mark.parametrize("reason", ["TIMEOUT", "ERROR"])
def test_client_unblock_ends_a_wait(replicated, reason):
    waiter, admin = replicated.db.client(), replicated.db.client()
    key = replicated.key_on(2, "unblock")
    replicated.pause_replica(2)
    result = {}

    def wait_forever():
        try:
            result["n"] = waiter.wait(1, 0)
        except redis.ResponseError as exc:
            result["error"] = str(exc)
    try:
        waiter.set(key, "1")
        t = threading.Thread(target=wait_forever)
        t.start()
        wait_until(lambda: any("b" in c["flags"] for c in admin.client_list()), 5,
                   what="the WAIT blocked")
        wid = next(c["id"] for c in admin.client_list() if "b" in c["flags"])
        assert admin.execute_command("CLIENT", "UNBLOCK", wid, reason) == 1
        t.join(5)
        if reason == "TIMEOUT":
            assert result == {"n": 0}          # what the shard had reached: its replica stopped
        else:
            assert result == {"error": "UNBLOCKED client unblocked via CLIENT UNBLOCK"}
        assert waiter.get(key) == b"1"         # the client goes on as usual
    finally:
        replicated.resume_replica(2)
