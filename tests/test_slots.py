"""Hash slots: dmc._fastpath.slot_of must agree with Redis Cluster (CRC16/XMODEM of the key or of
its first non-empty `{...}` hash tag, modulo 16384). Checked against the values of the Redis
Cluster specification, a pure-Python CRC16, and, when redis-server is installed, a real
cluster-enabled redis-server's CLUSTER KEYSLOT."""

from __future__ import annotations

import random

import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmc.local import start_redis_on_free_port
from dmc.processes import stop_process

from dmc._fastpath import slot_of



# ---- reference -------------------------------------------------------------------------------

def crc16_xmodem(data: bytes) -> int:
    """CRC16/XMODEM (poly 0x1021, init 0, no reflection), bit by bit: no table to share a typo
    with the one under test."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def ref_slot(key: bytes) -> int:
    """keyHashSlot() of redis/src/cluster.c, transcribed."""
    s = key.find(b"{")
    if s != -1:
        e = key.find(b"}", s + 1)
        if e != -1 and e != s + 1:
            key = key[s + 1:e]
    return crc16_xmodem(key) & 16383


def test_reference_crc16_check_value():
    # The CRC16/XMODEM check value, and the example of the Redis Cluster specification.
    assert crc16_xmodem(b"123456789") == 0x31C3


# ---- known values ----------------------------------------------------------------------------

def test_known_slots():
    assert slot_of(b"123456789") == 0x31C3 == 12739
    assert slot_of(b"foo") == 12182
    assert slot_of(b"bar") == 5061
    assert slot_of(b"") == 0


def test_str_and_bytes_agree():
    assert slot_of("foo") == slot_of(b"foo")
    assert slot_of("clé") == slot_of("clé".encode())
    assert slot_of(bytearray(b"foo")) == slot_of(b"foo")
    assert slot_of(memoryview(b"foo")) == slot_of(b"foo")


def test_hash_tags():
    # The examples of the Redis Cluster specification.
    user = slot_of("user1000")
    assert slot_of("{user1000}.following") == user
    assert slot_of("{user1000}.followers") == user
    # An empty tag does not count: the whole key is hashed.
    assert slot_of("foo{}{bar}") == ref_slot(b"foo{}{bar}")
    assert slot_of("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") & 16383
    # The tag ends at the first '}' after the first '{'.
    assert slot_of("foo{{bar}}zap") == slot_of("{bar")
    assert slot_of("foo{{bar}}zap") == crc16_xmodem(b"{bar") & 16383
    # Only the first tag counts.
    assert slot_of("foo{bar}{zap}") == slot_of("bar")
    # No closing brace, or a closing brace before the opening one: the whole key.
    assert slot_of("foo{bar") == crc16_xmodem(b"foo{bar") & 16383
    assert slot_of("foo}bar{") == crc16_xmodem(b"foo}bar{") & 16383
    assert slot_of("}{") == crc16_xmodem(b"}{") & 16383
    assert slot_of("{}") == crc16_xmodem(b"{}") & 16383
    # A tag may be a single byte, or a NUL.
    assert slot_of(b"x{a}y") == slot_of(b"a")
    assert slot_of(b"x{\x00}y") == slot_of(b"\x00")


def test_every_slot_is_reachable():
    seen = {slot_of(b"key:%d" % i) for i in range(200_000)}
    assert len(seen) == 16384


# ---- against the reference, over generated keys ----------------------------------------------

tagged_keys = st.builds(
    lambda a, t, b: a + b"{" + t + b"}" + b,
    st.binary(max_size=8), st.binary(max_size=8), st.binary(max_size=8))
brace_heavy = st.lists(st.sampled_from([b"{", b"}", b"a", b"\x00", b"\xff", b"{}"]),
                       max_size=12).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=64), tagged_keys, brace_heavy))
@example(b"")
@example(b"{")
@example(b"}")
@example(b"{}")
@example(b"{{}}")
@example(b"\xff" * 300)
def test_slot_of_matches_reference(key):
    assert slot_of(key) == ref_slot(key)
    assert 0 <= slot_of(key) < 16384


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20))
def test_slot_of_str_is_slot_of_utf8(key):
    assert slot_of(key) == ref_slot(key.encode())


# ---- against a real redis-server -------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_redis(tmp_path_factory):
    """A cluster-enabled redis-server (no slots assigned: CLUSTER KEYSLOT needs none)."""
    workdir = tmp_path_factory.mktemp("cluster-redis")
    port, proc = start_redis_on_free_port(workdir, "--cluster-enabled", "yes",
                                          "--cluster-config-file", str(workdir / "nodes.conf"))
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)
    try:
        yield client
    finally:
        client.close()
        stop_process(proc)


def test_cluster_keyslot_agrees(cluster_redis):
    rng = random.Random(20240601)
    keys = [b"", b"123456789", b"foo", b"{user1000}.following", b"foo{}{bar}",
            b"foo{{bar}}zap", b"foo{bar}{zap}", b"{", b"}", b"{}", b"\x00{\x00}"]
    alphabet = b"{}ab\x00\xff\r\n "
    while len(keys) < 220:
        n = rng.randrange(0, 40)
        if rng.random() < 0.5:
            keys.append(bytes(rng.randrange(256) for _ in range(n)))
        else:
            keys.append(bytes(rng.choice(alphabet) for _ in range(n)))
    pipe = cluster_redis.pipeline(transaction=False)
    for k in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", k)
    answers = pipe.execute()
    mismatches = [(k, a, slot_of(k)) for k, a in zip(keys, answers) if a != slot_of(k)]
    assert not mismatches
