"""control.redis_client against real redis-server processes. Tests are plain sync functions that
each drive one `trio.run`; every process started here is stopped by the fixture that started it."""

from __future__ import annotations

import os
import signal
import time

import pytest
import trio
import trio.lowlevel

from control.redis_client import RedisUnavailable, ReplyError, connect, subscribe
from dmc.local import start_redis_on_free_port
from dmc.processes import free_port, stop_process

HOST = "127.0.0.1"


def _stop(proc) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)   # SIGTERM is not acted on by a stopped process
    stop_process(proc)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    """(port) of a redis-server shared by the tests that neither stop nor kill it."""
    port, proc = start_redis_on_free_port(tmp_path_factory.mktemp("redis_client"))
    yield port
    _stop(proc)


@pytest.fixture
def port(shared_redis):
    async def flush():
        async with await connect(HOST, shared_redis) as r:
            await r.execute("FLUSHALL")
    trio.run(flush)
    return shared_redis


@pytest.fixture
def own_redis(tmp_path):
    """start(*extra) -> (port, process) of a redis-server of this test's own, to stop or kill."""
    procs = []

    def start(*extra: str):
        port, proc = start_redis_on_free_port(tmp_path / f"redis{len(procs)}", *extra)
        procs.append(proc)
        return port, proc

    yield start
    for proc in procs:
        _stop(proc)


def run(fn, *args, limit: float = 20):
    """trio.run with an overall deadline, so a hang fails the test instead of stalling the run."""
    async def bounded():
        with trio.fail_after(limit):
            return await fn(*args)
    return trio.run(bounded)


def test_set_get_round_trip_is_binary_safe(port):
    value = bytes(range(256)) + b"\r\n*1\r\n$-1\r\n\x00"
    key = b"k\x00\r\n\xff"

    async def main():
        async with await connect(HOST, port) as r:
            assert await r.execute("SET", key, value) == b"OK"
            assert await r.execute(b"GET", key) == value
            assert await r.execute("SET", "ключ", "значение") == b"OK"
            assert await r.execute("GET", "ключ".encode()) == "значение".encode()
            assert await r.execute("SET", "n", 42) == b"OK"
            assert await r.execute("INCRBYFLOAT", "n", 0.5) == b"42.5"
    run(main)


def test_int_none_and_list_replies(port):
    async def main():
        async with await connect(HOST, port) as r:
            assert await r.execute("PING") == b"PONG"
            assert await r.execute("INCR", "counter") == 1
            assert await r.execute("INCRBY", "counter", -11) == -10
            assert await r.execute("GET", "missing") is None
            assert await r.execute("RPUSH", "list", "a", b"b", 3) == 3
            assert await r.execute("LRANGE", "list", 0, -1) == [b"a", b"b", b"3"]
            assert await r.execute("LRANGE", "missing", 0, -1) == []
            await r.execute("HSET", "h", "f", "v")
            assert await r.execute("SCAN", 0, "MATCH", "h") == [b"0", [b"h"]]
    run(main)


def test_error_reply_raises_reply_error_with_kind(port):
    async def main():
        async with await connect(HOST, port) as r:
            with pytest.raises(ReplyError) as err:
                await r.execute("NOSUCHCOMMAND", "x")
            assert err.value.kind == "ERR"
            assert str(err.value).startswith("ERR unknown command")
            await r.execute("SET", "s", "v")
            with pytest.raises(ReplyError) as err:
                await r.execute("LPUSH", "s", "x")
            assert err.value.kind == "WRONGTYPE"
            assert str(err.value).startswith("WRONGTYPE Operation against a key")
            assert not r.closed   # an error reply leaves the connection in sync
            assert await r.execute("GET", "s") == b"v"
    run(main)


def test_unsendable_argument_is_refused_before_sending(port):
    async def main():
        async with await connect(HOST, port) as r:
            with pytest.raises(TypeError):
                await r.execute("SET", "k", True)
            with pytest.raises(TypeError):
                await r.execute("SET", "k", None)
            assert await r.execute("EXISTS", "k") == 0
    run(main)


def test_pipeline_returns_an_error_in_the_middle_in_place(port):
    async def main():
        async with await connect(HOST, port) as r:
            replies = await r.pipeline([
                ("SET", "a", "1"),
                ("LPUSH", "a", "x"),
                ("INCR", "a"),
                ("GET", "a"),
            ])
            assert replies[0] == b"OK"
            assert isinstance(replies[1], ReplyError) and replies[1].kind == "WRONGTYPE"
            assert replies[2:] == [2, b"2"]
            assert await r.pipeline([]) == []
    run(main)


def test_errors_inside_exec_are_reply_errors(port):
    async def main():
        async with await connect(HOST, port) as r:
            replies = await r.pipeline([("MULTI",), ("SET", "a", "1"), ("LPUSH", "a", "x"),
                                        ("EXEC",)])
            assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
            assert replies[3][0] == b"OK"
            assert isinstance(replies[3][1], ReplyError) and replies[3][1].kind == "WRONGTYPE"
    run(main)


def test_concurrent_execute_from_50_tasks_each_gets_its_own_answer(port):
    answers: dict[int, list] = {}

    async def task(r, i):
        got = []
        for n in range(5):
            got.append(await r.execute("ECHO", f"task{i}-{n}"))
            await trio.lowlevel.checkpoint()   # let the other tasks interleave
        got.append(await r.execute("INCRBY", f"count{i}", i))
        answers[i] = got

    async def main():
        async with await connect(HOST, port) as r, trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(task, r, i)
    run(main)
    assert sorted(answers) == list(range(50))
    for i, got in answers.items():
        assert got == [f"task{i}-{n}".encode() for n in range(5)] + [i]


def test_subscribe_receives_published_messages_in_order(port):
    sent = [(b"ch1" if n % 2 else b"ch2", f"message {n}".encode()) for n in range(20)]

    async def main():
        async with subscribe(HOST, port, ["ch1", "ch2"]) as sub:
            async with await connect(HOST, port) as publisher:
                # a receiver count of 1 shows the subscription was active on entering
                for channel, message in sent:
                    assert await publisher.execute("PUBLISH", channel, message) == 1
            received = []
            async for item in sub:
                received.append(item)
                if len(received) == len(sent):
                    break
            return received
    assert run(main, limit=10) == sent


def test_connect_to_a_closed_port_raises_quickly():
    port = free_port()

    async def main():
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
            await connect(HOST, port, timeout=5)
        with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
            async with subscribe(HOST, port, ["ch"], timeout=5):
                pass
        return time.monotonic() - start
    assert run(main) < 1.0   # refused at once, not waited out


def test_stopped_server_makes_execute_time_out(own_redis):
    port, proc = own_redis()

    async def main():
        async with await connect(HOST, port, timeout=0.5) as r:
            assert await r.execute("PING") == b"PONG"
            os.kill(proc.pid, signal.SIGSTOP)
            start = time.monotonic()
            with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
                await r.execute("PING")
            elapsed = time.monotonic() - start
            assert r.closed   # a late PONG must not be read as the next call's reply
            with pytest.raises(RedisUnavailable):
                await r.execute("PING")
            return elapsed
    try:
        elapsed = run(main)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
    assert 0.45 <= elapsed < 1.5


def test_killed_server_makes_execute_raise(own_redis):
    port, proc = own_redis()

    async def main():
        async with await connect(HOST, port, timeout=2) as r:
            assert await r.execute("PING") == b"PONG"
            proc.kill()
            proc.wait()
            with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
                await r.execute("PING")
            assert r.closed
    run(main)


def test_killed_server_ends_a_subscription_with_redis_unavailable(own_redis):
    port, proc = own_redis()

    async def main():
        async with subscribe(HOST, port, ["ch"]) as sub:
            proc.kill()
            proc.wait()
            with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{port}"):
                await sub.__anext__()
    run(main)


def test_cancelled_execute_closes_the_connection(port):
    async def main():
        async with await connect(HOST, port, timeout=5) as r:
            with trio.move_on_after(0.2) as scope:
                await r.execute("BLPOP", "nothing", 0)   # blocks server-side
            assert scope.cancelled_caught
            assert r.closed   # BLPOP's eventual reply would be owed to the next call
    run(main)


def test_cancelled_subscription_wait_keeps_the_subscription(port):
    async def main():
        async with subscribe(HOST, port, ["ch"]) as sub:
            with trio.move_on_after(0.1) as scope:
                await sub.__anext__()
            assert scope.cancelled_caught
            async with await connect(HOST, port) as publisher:
                assert await publisher.execute("PUBLISH", "ch", "after") == 1
            assert await sub.__anext__() == (b"ch", b"after")
    run(main)


def test_password_is_sent_as_auth(own_redis):
    port, _ = own_redis()   # start_redis waits for +PONG, so the password is set afterwards

    async def main():
        async with await connect(HOST, port) as r:
            await r.execute("CONFIG", "SET", "requirepass", "s3cret")
        async with await connect(HOST, port, password="s3cret") as r:
            assert await r.execute("PING") == b"PONG"
        async with await connect(HOST, port) as r:
            with pytest.raises(ReplyError) as err:
                await r.execute("PING")
            assert err.value.kind == "NOAUTH"
        with pytest.raises(ReplyError) as err:
            await connect(HOST, port, password="wrong")
        assert err.value.kind == "WRONGPASS"
        async with subscribe(HOST, port, ["ch"], password="s3cret") as sub:
            async with await connect(HOST, port, password="s3cret") as publisher:
                await publisher.execute("PUBLISH", "ch", "m")
            assert await sub.__anext__() == (b"ch", b"m")
    run(main)
