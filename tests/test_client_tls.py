"""Client TLS terminated in dmcproxy's compiled loop (dmc/fastpath/tls.pxi): redis-py and
redis-cli over TLS (commands, a pipeline of 1000, a 1 MB value, pub/sub), client certificates
required (refused without one or with a foreign CA's, served with one the CA signed), a
plaintext client refused without harm, the certificate rotated on SIGHUP without dropping
anyone; dmcproxy over real redis-servers, with 2 worker threads where it matters. Then ONE
cluster test: a database created with `tls_mode: enabled` through REST serves TLS with a
certificate the cluster CA signed, and `dmc db update --tls-client-auth` requires client
certificates."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys

import pytest
import redis
import trio
from click.testing import CliRunner
from certs import tls_1_2_refused
from clusters import DATABASE_SERVICES, rest_client, rest_cluster
from cryptography import x509
from waiting import wait_until

from control import certificates
from control.cli import main
from control.node import supervisor_rpc
from control.proxy_stats import read_proxy_stats
from dmc.local import redis_servers, start_proxy
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
    """A CA, the endpoint's certificate and a client's (both signed by it), and a client
    certificate of a foreign CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = certificates.make_ca("tls.test")
    foreign = certificates.make_ca("foreign.test")
    (folder / "ca.pem").write_bytes(ca.certificate)
    files = {"ca": str(folder / "ca.pem"), "folder": folder, "ca_pair": ca}
    files["server"] = write_pair(folder, "server", certificates.issue(ca, 1, HOST, "tls.test"))
    files["client"] = write_pair(folder, "client", certificates.issue(ca, 2, HOST, "tls.test"))
    files["foreign"] = write_pair(folder, "foreign",
                                  certificates.issue(foreign, 3, HOST, "foreign.test"))
    return files


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    with redis_servers(tmp_path_factory.mktemp("shards"), 2) as started:
        yield [(HOST, port) for port, _ in started]


@pytest.fixture(scope="module")
def redis_tls_port(pki, tmp_path_factory):
    """A plain redis-server's own tls-port, with the endpoint's certificate: what dmcproxy's
    TLS endpoint is compared with."""
    cert, key = pki["server"]
    port = free_port()
    with redis_servers(tmp_path_factory.mktemp("redis-tls"), 1, "--tls-port", str(port),
                       "--tls-cert-file", cert, "--tls-key-file", key,
                       "--tls-auth-clients", "no"):
        yield port


def tls_args(pki, *extra: str) -> list[str]:
    cert, key = pki["server"]
    return ["--tls-cert-file", cert, "--tls-key-file", key, *extra]


@pytest.fixture(scope="module")
def tls_proxy(shards, pki, tmp_path_factory):
    """A TLS endpoint with 2 worker threads, no client certificates asked for."""
    proc, port = start_proxy(shards, 0, tmp_path_factory.mktemp("proxy"),
                             *tls_args(pki, "--threads", "2"))
    try:
        yield proc, port
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def mtls_proxy(shards, pki, tmp_path_factory):
    """A TLS endpoint that requires a client certificate the CA signed."""
    proc, port = start_proxy(shards, 0, tmp_path_factory.mktemp("mproxy"),
                             *tls_args(pki, "--tls-ca-cert-file", pki["ca"],
                                       "--tls-auth-clients", "yes"))
    try:
        yield port
    finally:
        stop_process(proc)


def tls_client(port: int, pki, cert=None, **kw) -> redis.Redis:
    options = {}
    if cert is not None:
        options = {"ssl_certfile": cert[0], "ssl_keyfile": cert[1]}
    return redis.Redis(HOST, port, ssl=True, ssl_ca_certs=pki["ca"], socket_timeout=5,
                       protocol=2, **options, **kw)


def test_commands_over_tls(tls_proxy, pki):
    r = tls_client(tls_proxy[1], pki)
    assert r.ping()
    assert r.set("tls:a", "1") and r.get("tls:a") == b"1"
    assert r.incr("tls:counter") == 1
    # The endpoint's certificate is the CA-signed one: redis-py verified it against the CA.
    assert r.connection_pool.get_connection()._sock.version().startswith("TLSv1.")


def test_pipeline_of_1000_over_tls(tls_proxy, pki):
    r = tls_client(tls_proxy[1], pki)
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"tls:p:{i}", i)
        pipe.get(f"tls:p:{i}")
    replies = pipe.execute()
    assert replies[0::2] == [True] * 1000
    assert replies[1::2] == [str(i).encode() for i in range(1000)]


def test_large_value_over_tls(tls_proxy, pki):
    """1 MB each way: many TLS records, partial writes of the reply."""
    r = tls_client(tls_proxy[1], pki)
    value = os.urandom(1 << 20)
    assert r.set("tls:big", value)
    assert r.get("tls:big") == value
    assert r.strlen("tls:big") == 1 << 20


def test_pubsub_over_tls(tls_proxy, pki):
    r = tls_client(tls_proxy[1], pki)
    sub = tls_client(tls_proxy[1], pki).pubsub()
    sub.subscribe("tls:news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    wait_until(lambda: r.publish("tls:news", "hello") == 1, 10, what="the subscriber")
    message = wait_until(lambda: sub.get_message(timeout=1), 10, what="the message")
    assert (message["type"], message["data"]) == ("message", b"hello")
    sub.close()


def redis_cli(port: int, pki, *args: str, cert=None) -> subprocess.CompletedProcess:
    options = ["--tls", "--cacert", pki["ca"]]
    if cert is not None:
        options += ["--cert", cert[0], "--key", cert[1]]
    return subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *options, *args],
                          capture_output=True, text=True, timeout=20)


def test_redis_cli_over_tls(tls_proxy, pki):
    assert redis_cli(tls_proxy[1], pki, "SET", "tls:cli", "v").stdout.strip() == "OK"
    assert redis_cli(tls_proxy[1], pki, "GET", "tls:cli").stdout.strip() == "v"


def plaintext_refused(port: int) -> bool:
    """A RESP command in plain text: the handshake fails and the proxy closes the connection
    without a reply (no RESP byte comes back)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            data = s.recv(4096)
            while data and b"PONG" not in data:
                more = s.recv(4096)
                if not more:
                    break
                data += more
        except ConnectionResetError:
            return True
        return b"PONG" not in data and b"+" not in data[:1]


def test_plaintext_client_is_refused(tls_proxy, pki, redis_tls_port):
    proc, port = tls_proxy
    assert plaintext_refused(redis_tls_port)        # as redis-server's own tls-port does
    for _ in range(20):
        assert plaintext_refused(port)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(HOST, port, socket_timeout=5).ping()
    assert proc.poll() is None
    assert tls_client(port, pki).ping()     # and the endpoint serves TLS clients as before


def test_client_certificate_required(mtls_proxy, pki):
    with pytest.raises(redis.ConnectionError):
        tls_client(mtls_proxy, pki).ping()
    with pytest.raises(redis.ConnectionError):
        tls_client(mtls_proxy, pki, cert=pki["foreign"]).ping()
    r = tls_client(mtls_proxy, pki, cert=pki["client"])
    assert r.set("tls:m", "yes") and r.get("tls:m") == b"yes"
    assert redis_cli(mtls_proxy, pki, "GET", "tls:m", cert=pki["client"]).stdout.strip() == "yes"
    assert redis_cli(mtls_proxy, pki, "GET", "tls:m").stdout.strip() != "yes"


def peer_serial(host: str, port: int, cafile: str, cert=None) -> int:
    """The serial number of the certificate the endpoint presents to a new connection."""
    context = ssl.create_default_context(cafile=cafile)
    if cert is not None:
        context.load_cert_chain(*cert)
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_certificate_rotated_on_sighup(shards, pki, tmp_path):
    """New handshakes get the renewed certificate; a client connected before keeps its
    connection (2 workers: each reloads)."""
    cert, key = write_pair(tmp_path, "endpoint",
                           certificates.issue(pki["ca_pair"], 1, HOST, "tls.test"))
    proc, port = start_proxy(shards, 0, tmp_path, "--tls-cert-file", cert, "--tls-key-file",
                             key, "--threads", "2")
    try:
        before = peer_serial(HOST, port, pki["ca"])
        old = tls_client(port, pki)
        assert old.set("tls:rot", "1")
        renewed = certificates.issue(pki["ca_pair"], 1, HOST, "tls.test")
        write_pair(tmp_path, "endpoint", renewed)
        os.kill(proc.pid, signal.SIGHUP)
        wanted = x509.load_pem_x509_certificate(renewed.certificate).serial_number
        wait_until(lambda: peer_serial(HOST, port, pki["ca"]) == wanted, 10,
                   what="the renewed certificate")
        assert before != wanted
        assert old.get("tls:rot") == b"1"       # the same connection, still served
        assert old.connection_pool._created_connections == 1
    finally:
        stop_process(proc)


# ---- authorized names, protocol versions and ciphers, the handshake timeout ---------------------

@pytest.fixture(scope="module")
def named_proxy(shards, pki, tmp_path_factory):
    """Client certificates required, and only the one named node2.tls.test (pki's "client")
    authorized; TLS 1.3 only."""
    proc, port = start_proxy(shards, 0, tmp_path_factory.mktemp("nproxy"),
                             *tls_args(pki, "--tls-ca-cert-file", pki["ca"],
                                       "--tls-auth-clients", "yes",
                                       "--tls-authorized-name", "node2.tls.test",
                                       "--tls-authorized-name", "app.tls.test",
                                       "--tls-min-version", "1.3"))
    try:
        yield port
    finally:
        stop_process(proc)


def test_authorized_names_refuse_another_name_of_the_same_ca(named_proxy, pki):
    """A certificate the CA signed is refused at the handshake unless it names one of the
    authorized names (its subject CN / DNS SAN)."""
    other = write_pair(pki["folder"], "other", certificates.issue(pki["ca_pair"], 7, HOST,
                                                                   "tls.test"))
    with pytest.raises(redis.ConnectionError):
        tls_client(named_proxy, pki, cert=other).ping()
    with pytest.raises(redis.ConnectionError):
        tls_client(named_proxy, pki).ping()
    r = tls_client(named_proxy, pki, cert=pki["client"])       # node2.tls.test
    assert r.set("tls:named", "ok") and r.get("tls:named") == b"ok"


def handshake(port: int, pki, **versions) -> str:
    """A TLS handshake with the client certificate, in the versions given: the one agreed."""
    context = ssl.create_default_context(cafile=pki["ca"])
    context.load_cert_chain(*pki["client"])
    for name, value in versions.items():
        setattr(context, name, value)
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
        return s.version()


def test_a_tls_1_2_client_is_refused_when_1_3_is_the_minimum(named_proxy, pki):
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(named_proxy, pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert handshake(named_proxy, pki) == "TLSv1.3"


def test_cipher_list_and_ciphersuites(shards, pki, tmp_path):
    """TLS 1.2 clients get a cipher of the list; a client offering none of it is refused;
    TLS 1.3 clients get one of the ciphersuites."""
    proc, port = start_proxy(shards, 0, tmp_path, *tls_args(
        pki, "--tls-ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256",
        "--tls-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"))
    try:
        context = ssl.create_default_context(cafile=pki["ca"])
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection((HOST, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=HOST) as s:
            assert s.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        context.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with socket.create_connection((HOST, port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST):
                pass
        with socket.create_connection((HOST, port), timeout=5) as raw, \
                ssl.create_default_context(cafile=pki["ca"]).wrap_socket(
                    raw, server_hostname=HOST) as s:
            assert s.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
    finally:
        stop_process(proc)


def test_bad_tls_settings_stop_dmcproxy_with_a_clear_error(shards, pki, tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        start_proxy(shards, 0, tmp_path, *tls_args(pki, "--tls-ciphers", "NO-SUCH-CIPHER"))
    assert "TLS cipher list 'NO-SUCH-CIPHER'" in (tmp_path / "dmcproxy.log").read_text()


def closed_within(port: int, seconds: float) -> bool:
    """Connect, send nothing: whether the endpoint closes the connection within `seconds`."""
    with socket.create_connection((HOST, port), timeout=seconds) as s:
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_a_client_silent_in_its_handshake_is_closed_after_the_timeout(shards, pki, tmp_path):
    """--tls-handshake-timeout 0.5: a client that connects and never says hello is closed;
    one whose handshake is done may then stay idle."""
    proc, port = start_proxy(shards, 0, tmp_path,
                             *tls_args(pki, "--tls-handshake-timeout", "0.5"))
    try:
        done = tls_client(port, pki)
        assert done.ping()
        assert closed_within(port, 5)
        assert not closed_within(port, 0.2)      # (not at once: after the timeout)
        assert done.ping()          # idle past the timeout after its handshake: still served
        assert done.connection_pool._created_connections == 1
    finally:
        stop_process(proc)


# ---- one cluster, through REST and the CLI ------------------------------------------------------

CLUSTER_ADDRESS = "127.0.1.61"      # other modules' clusters use other addresses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("tls") / "cluster", CLUSTER_ADDRESS,
                      timeout=120, services=DATABASE_SERVICES) as c:
        yield c


@pytest.mark.timeout(240)
def test_database_with_tls_mode_enabled(cluster, tmp_path):
    """POST /v1/bdbs with tls_mode enabled: the endpoint's certificate is the node's `proxy`
    one, which the cluster CA signed (redis-py verifies it, hostname included; redis-cli
    --cacert <(dmc cluster ca) too), plaintext is refused; `dmc db update
    --tls-client-auth` then requires a client certificate the CA signed; a renewed `proxy`
    certificate is served to new connections, without dropping the open one."""
    api = rest_client(cluster, timeout=30)
    reply = api.post("/v1/bdbs", json={"name": "secure", "tls_mode": "enabled"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["tls_mode"] == "enabled"
    wait_until(lambda: api.get(f"/v1/actions/{reply.json()['action_uid']}").json()["status"]
               == "completed", 90, what="bdb_create")
    port, node = reply.json()["port"], cluster.nodes[1]
    ca_pem = certificates.ca_file(node.dir)

    def client(cert=None) -> redis.Redis:
        options = {} if cert is None else {"ssl_certfile": cert[0], "ssl_keyfile": cert[1]}
        return redis.Redis(node.address, port, ssl=True, ssl_ca_certs=str(ca_pem),
                           ssl_check_hostname=True, socket_timeout=5, **options)
    r = wait_until(lambda: client().ping() and client(), 30, what="the TLS endpoint",
                   ignoring=(redis.ConnectionError,))
    assert r.set("k", "v") and r.get("k") == b"v"
    cli = subprocess.run(
        ["bash", "-c", f"redis-cli -h {node.address} -p {port} --tls --cacert "
         f"<({sys.executable} -m control.cli cluster ca --home {cluster.home}) GET k"],
        capture_output=True, text=True, timeout=60)
    assert cli.stdout.strip() == "v", cli.stderr
    with pytest.raises(redis.ConnectionError):
        redis.Redis(node.address, port, socket_timeout=5).ping()

    result = CliRunner().invoke(main, ["db", "update", "secure", "--tls-client-auth",
                                       "--home", str(cluster.home)])
    assert result.exit_code == 0, result.output
    with pytest.raises(redis.ConnectionError):
        client().ping()
    signed = write_pair(tmp_path, "app", certificates.issue(
        cluster.cluster_ca(), 99, node.address, node.cluster_fqdn))
    authed = client(signed)
    assert authed.get("k") == b"v"
    renewed = certificates.issue(cluster.cluster_ca(), node.uid, node.address, node.cluster_fqdn)
    certificates.install(node.dir, "proxy", renewed)
    wanted = x509.load_pem_x509_certificate(renewed.certificate).serial_number
    wait_until(lambda: peer_serial(node.address, port, str(ca_pem), signed) == wanted, 15,
               what="the renewed endpoint certificate")
    assert authed.get("k") == b"v" and authed.connection_pool._created_connections == 1
    assert api.get(f"/v1/bdbs/{reply.json()['uid']}").json()[
        "enforce_client_authentication"] == "enabled"


@pytest.mark.timeout(240)
def test_authorized_names_and_tls_versions_through_rest_and_the_cli(cluster, tmp_path):
    """`dmc db update --tls-authorized-name` (authorized_names): a certificate the cluster CA
    signed for another name is refused at the handshake (counted in the endpoint's
    tls_handshake_failures); `tls_mode: replica_ssl` is refused with why; PUT /v1/cluster
    min_data_TLS_version 1.3 refuses a TLS 1.2 client on the endpoint, min_control_TLS_version
    1.3 one on the REST API's HTTPS port and on CCS's tls-port."""
    api = rest_client(cluster, timeout=30)
    refused = api.post("/v1/bdbs", json={"name": "rs", "tls_mode": "replica_ssl"})
    assert refused.status_code == 400 and "Replica Of" in refused.json()["description"]
    bdb = next(b for b in api.get("/v1/bdbs").json() if b["name"] == "secure")
    node, ca = cluster.nodes[1], cluster.cluster_ca()
    ca_pem = str(certificates.ca_file(node.dir))
    allowed = write_pair(tmp_path, "allowed", certificates.issue(ca, 97, node.address,
                                                                  node.cluster_fqdn))
    other = write_pair(tmp_path, "other", certificates.issue(ca, 98, node.address,
                                                              node.cluster_fqdn))
    result = CliRunner().invoke(main, ["db", "update", "secure", "--tls-authorized-name",
                                       f"node97.{node.cluster_fqdn}",
                                       "--home", str(cluster.home)])
    assert result.exit_code == 0, result.output
    assert api.get(f"/v1/bdbs/{bdb['uid']}").json()["authorized_names"] == [
        f"node97.{node.cluster_fqdn}"]

    def client(cert) -> redis.Redis:
        return redis.Redis(node.address, bdb["port"], ssl=True, ssl_ca_certs=ca_pem,
                           ssl_certfile=cert[0], ssl_keyfile=cert[1], socket_timeout=5)

    def failures() -> int:
        stats = trio.run(read_proxy_stats, node, 5.0)
        return stats[bdb["uid"]]["tls_handshake_failures"]

    def name_refused() -> bool:
        try:
            return not client(other).ping()
        except redis.ConnectionError:
            return True
    wait_until(name_refused, 15, what="the other name refused")
    before = failures()
    assert name_refused()
    assert wait_until(lambda: failures() > before, 10, what="the refusal counted")
    assert client(allowed).get("k") == b"v"

    assert api.put("/v1/cluster", json={"min_data_TLS_version": "1.1"}).status_code == 400
    reply = api.put("/v1/cluster", json={"min_data_TLS_version": "1.3",
                                         "min_control_TLS_version": "1.3"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["min_data_TLS_version"] == "1.3"
    try:
        wait_until(lambda: tls_1_2_refused(node.address, bdb["port"], ca_pem, allowed), 15,
                   what="TLS 1.2 refused by the endpoint")
        assert client(allowed).get("k") == b"v"         # TLS 1.3
        wait_until(lambda: tls_1_2_refused(node.address, node.rest_tls_port, ca_pem), 20,
                   what="TLS 1.2 refused by the REST API")
        cp = (str(certificates.cert_file(node.dir, "cp")),
              str(certificates.key_file(node.dir, "cp")))      # (else refused for no certificate)
        wait_until(lambda: tls_1_2_refused(node.address, node.ccs_tls_port, ca_pem, cp), 20,
                   what="TLS 1.2 refused by CCS's tls-port")
        wait_until(lambda: tls_1_2_refused(node.address, node.gossip_port, ca_pem, cp), 20,
                   what="TLS 1.2 refused by cluster_wd's gossip port")
        if "cm_server" in node.services:
            wait_until(lambda: tls_1_2_refused(node.address, node.ui_port, ca_pem), 20,
                       what="TLS 1.2 refused by the web UI")
        assert api.get("/v1/cluster").status_code == 200
    finally:
        api.put("/v1/cluster", json={"min_data_TLS_version": "1.2",
                                     "min_control_TLS_version": "1.2"})


@pytest.mark.timeout(240)
def test_an_endpoint_served_from_its_cached_map_keeps_the_cluster_tls_policy(cluster, tmp_path):
    """dmcproxy restarted while its node's CCS is down serves its databases from run/maps/ at
    once, with the cluster's data-path TLS policy they were served with: at
    min_data_TLS_version 1.3 a TLS 1.2 client stays refused (not the defaults' 1.2)."""
    api = rest_client(cluster, timeout=30)
    bdb = next(b for b in api.get("/v1/bdbs").json() if b["name"] == "secure")
    master = cluster.wait_for_master()
    node = next(c for u, c in sorted(cluster.nodes.items()) if u != master)
    ca_pem = str(certificates.ca_file(node.dir))
    signed = write_pair(tmp_path, "app", certificates.issue(   # (node97: authorized_names')
        cluster.cluster_ca(), 97, node.address, node.cluster_fqdn))

    def served_over_tls_1_3() -> bool:
        try:
            return redis.Redis(node.address, bdb["port"], ssl=True, ssl_ca_certs=ca_pem,
                               ssl_certfile=signed[0], ssl_keyfile=signed[1],
                               socket_timeout=5).ping()
        except redis.ConnectionError:
            return False
    rpc = supervisor_rpc(node.supervisor_sock).supervisor
    reply = api.put("/v1/cluster", json={"min_data_TLS_version": "1.3"})
    assert reply.status_code == 200, reply.text
    try:
        wait_until(lambda: tls_1_2_refused(node.address, bdb["port"], ca_pem, signed), 15,
                   what="TLS 1.2 refused by the endpoint")
        rpc.stopProcess("ccs")
        rpc.stopProcess("dmcproxy")
        rpc.startProcess("dmcproxy")
        wait_until(served_over_tls_1_3, 30, what="the endpoint served from its cached map")
        assert tls_1_2_refused(node.address, bdb["port"], ca_pem, signed)
    finally:
        if rpc.getProcessInfo("ccs")["statename"] != "RUNNING":
            rpc.startProcess("ccs")
        api.put("/v1/cluster", json={"min_data_TLS_version": "1.2"})
