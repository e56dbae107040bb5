"""Shared fixtures: real redis-server shards and a real dmcproxy, on 127.0.0.1, on ports chosen
at run time. Every process a fixture starts is stopped when the fixture ends."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from dmc.local import redis_servers, start_proxy, start_redis, start_redis_on_free_port
from dmc.processes import stop_process
from dmc.shard_map import ShardMap
from replies import RespConn


@dataclass
class Database:
    """A dmcproxy over N redis-server shards, as a test sees it."""
    workdir: Path
    shard_ports: list[int]
    shard_procs: list[subprocess.Popen]
    proxy: subprocess.Popen
    port: int
    _clients: list = field(default_factory=list)

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("protocol", 2)
        c = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)
        self._clients.append(c)
        return c

    def shard(self, i: int) -> redis.Redis:
        c = redis.Redis(host="127.0.0.1", port=self.shard_ports[i], socket_timeout=10, protocol=2)
        self._clients.append(c)
        return c

    @property
    def shard_map(self) -> ShardMap:
        return ShardMap.even([("127.0.0.1", p) for p in self.shard_ports])

    def shard_index_of(self, key) -> int:
        from dmc._fastpath import slot_of
        host_port = self.shard_map.shard_of_slot(slot_of(key))
        return self.shard_ports.index(host_port[1])

    def keys_on_every_shard(self, prefix: str = "key") -> list[str]:
        """One key name on each shard, in shard order of discovery: prefix0, prefix5, ..."""
        keys, seen = [], set()
        i = 0
        while len(seen) < len(self.shard_ports):
            shard = self.shard_index_of(f"{prefix}{i}")
            if shard not in seen:
                seen.add(shard)
                keys.append(f"{prefix}{i}")
            i += 1
        return keys

    def kill_shard(self, i: int) -> None:
        self.shard_procs[i].send_signal(signal.SIGKILL)
        self.shard_procs[i].wait()

    def restart_shard(self, i: int) -> None:
        self.shard_procs[i] = start_redis(self.shard_ports[i], self.workdir / "shards")

    def close(self) -> None:
        for c in self._clients:
            c.close()
        stop_process(self.proxy)
        for p in self.shard_procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)   # a test may have paused it
            stop_process(p)


# DMC_PROXY_THREADS=2: every dmcproxy the fixtures start serves with that many worker threads
# (dmcproxy --threads), so that a behaviour test file runs with 1 and with 2 threads.
PROXY_THREADS = int(os.environ.get("DMC_PROXY_THREADS", "1"))


def start_database(workdir: Path, nshards: int = 3, proxy_args=()) -> Database:
    if PROXY_THREADS > 1 and "--threads" not in proxy_args:
        proxy_args = (*proxy_args, "--threads", str(PROXY_THREADS))
    ports, procs = [], []
    try:
        for _ in range(nshards):
            p, proc = start_redis_on_free_port(workdir / "shards")
            procs.append(proc)
            ports.append(p)
        proxy, port = start_proxy([("127.0.0.1", p) for p in ports], 0, workdir, *proxy_args)
    except BaseException:
        for p in procs:
            stop_process(p)
        raise
    return Database(workdir, ports, procs, proxy, port)


@pytest.fixture(scope="module")
def shard_ports(tmp_path_factory):
    """Three redis-servers for a module's own proxies (Proxy, Endpoint): their ports."""
    with redis_servers(tmp_path_factory.mktemp("shards"), 3) as started:
        yield [port for port, _ in started]


def shared_database(tmp_path_factory, name: str, proxy_args=()):
    """A 3-shard database for a module-scoped fixture (`yield from` it): stopped at the end."""
    d = start_database(tmp_path_factory.mktemp(name), proxy_args=proxy_args)
    yield d
    d.close()


def emptied(d: Database) -> Database:
    for i in range(len(d.shard_ports)):
        d.shard(i).flushall()
    return d


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A 3-shard database shared by a module's tests; flushed before each test by `r`."""
    yield from shared_database(tmp_path_factory, "db")


@pytest.fixture
def r(db):
    """A redis-py client of the shared database, which starts empty."""
    return emptied(db).client()


@pytest.fixture(scope="module")
def seqdb(tmp_path_factory):
    """A 3-shard database with multi_slot_commands = sequential, shared by a module's tests."""
    yield from shared_database(tmp_path_factory, "seqdb", ("--multi-slot-commands", "sequential"))


@pytest.fixture
def seq(seqdb):
    """The sequential database, empty."""
    return emptied(seqdb)


@pytest.fixture
def make_db(tmp_path):
    """Start a database of one's own (for tests that kill, pause or reconfigure things)."""
    made = []

    def make(nshards: int = 3, proxy_args=()) -> Database:
        d = start_database(tmp_path / f"db{len(made)}", nshards, proxy_args)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture(scope="module")
def single_redis(tmp_path_factory):
    """One plain redis-server: the reference a sharded database must answer like."""
    port, proc = start_redis_on_free_port(tmp_path_factory.mktemp("single"))
    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)
    yield c
    c.close()
    stop_process(proc)


@pytest.fixture
def conns():
    """RespConn factory; every connection made is closed at the end."""
    made = []

    def conn(port: int, resp3: bool = False) -> RespConn:
        c = RespConn(port)
        made.append(c)
        if resp3:
            hello = c.call("HELLO", "3")
            assert isinstance(hello, dict), hello
        return c

    yield conn
    for c in made:
        c.close()


@pytest.fixture
def ref(single_redis):
    single_redis.flushall()
    return single_redis
