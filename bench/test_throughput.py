"""Client-side throughput through redis-py: direct redis-server vs twemproxy vs dmcproxy.

    python3 -m pytest bench/ --benchmark-only

Not part of the test suite: pyproject's testpaths = ["tests"], so a plain `pytest` in the repo
root never collects this directory. The peers (3 shards, direct, nutcracker, dmcproxy) are
started once for the module by bench/setup_peers.py and stopped at its end.

Each workload is one benchmark group, with one row per endpoint, so the table compares them
side by side. For the pipelined groups one round is PIPELINE commands in one redis-py pipeline
(transaction=False: twemproxy has no MULTI), so commands/s = OPS column x PIPELINE.
These figures include redis-py's own CPU time (packing and parsing 1000 commands), which is the
same for every endpoint; the proxy-only view (CPU per request) is run_peer_comparison.py's.
"""

from __future__ import annotations

import pytest
import redis

from setup_peers import Peers

ENDPOINTS = ["direct", "twemproxy", "dmcproxy"]
PIPELINE = 1000
MULTI = 10
VALUE = b"v" * 32
SET_KEYS = [f"bench:sg:{i}" for i in range(PIPELINE)]
M_KEYS = [f"bench:m:{i}" for i in range(MULTI)]     # plain keys: they land on different shards


@pytest.fixture(scope="module")
def peers():
    with Peers() as p:
        yield p


def connect(host: str, port: int) -> redis.Redis:
    """A RESP2 client that sends nothing on connect: twemproxy closes the connection on
    redis-py's default CLIENT SETINFO, so it is switched off for every endpoint alike."""
    kw = dict(host=host, port=port, protocol=2, socket_timeout=30)
    try:
        return redis.Redis(**kw, driver_info=None)            # redis-py >= 7
    except TypeError:
        return redis.Redis(**kw, lib_name=None, lib_version=None)


@pytest.fixture(scope="module")
def clients(peers):
    cs = {name: connect(ep.host, ep.port) for name, ep in peers.endpoints().items()}
    yield cs
    for c in cs.values():
        c.close()


@pytest.fixture(params=ENDPOINTS)
def endpoint(request, clients):
    c = clients[request.param]
    assert c.ping()
    return request.param, c


def _setup_keys(c: redis.Redis) -> None:
    p = c.pipeline(transaction=False)
    for k in SET_KEYS:
        p.set(k, VALUE)
    p.execute()
    c.mset({k: VALUE for k in M_KEYS})


def test_set_pipelined(benchmark, endpoint):
    name, c = endpoint
    benchmark.group = f"SET x{PIPELINE} in one pipeline"
    benchmark.extra_info.update(endpoint=name, commands_per_round=PIPELINE)

    def run():
        p = c.pipeline(transaction=False)
        for k in SET_KEYS:
            p.set(k, VALUE)
        return p.execute()

    res = benchmark(run)
    assert res == [True] * PIPELINE


def test_get_pipelined(benchmark, endpoint):
    name, c = endpoint
    _setup_keys(c)
    benchmark.group = f"GET x{PIPELINE} in one pipeline"
    benchmark.extra_info.update(endpoint=name, commands_per_round=PIPELINE)

    def run():
        p = c.pipeline(transaction=False)
        for k in SET_KEYS:
            p.get(k)
        return p.execute()

    res = benchmark(run)
    assert res == [VALUE] * PIPELINE


def test_mset_10_keys(benchmark, endpoint):
    name, c = endpoint
    benchmark.group = f"MSET {MULTI} keys"
    benchmark.extra_info.update(endpoint=name, commands_per_round=1)
    mapping = {k: VALUE for k in M_KEYS}
    assert benchmark(c.mset, mapping) is True


def test_mget_10_keys(benchmark, endpoint):
    name, c = endpoint
    _setup_keys(c)
    benchmark.group = f"MGET {MULTI} keys"
    benchmark.extra_info.update(endpoint=name, commands_per_round=1)
    assert benchmark(c.mget, M_KEYS) == [VALUE] * MULTI
