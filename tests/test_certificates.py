"""The cluster CA and the nodes' certificates: made by `dmc cluster create`, the REST API on
HTTPS verified against `dmc cluster ca`, a foreign CA's, a wrong, an expired certificate and
plaintext refused with a clear error, an operator's certificate installed on every node, and a
certificate close to its end renewed by the node without dropping a connection. Pure checks
first, then one real 3-node cluster for the module."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys

import httpx
import pytest
from clusters import rest_client, rest_cluster
from waiting import wait_until

from control import certificates
from control.node import CORE_SERVICES

pytestmark = pytest.mark.timeout(180)

FIRST_ADDRESS = "127.0.1.21"


# ---- pure ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    return certificates.make_ca("test.dmc.local")


def test_a_node_certificate_is_signed_by_the_ca_and_names_the_node(ca):
    pair = certificates.issue(ca, 3, "127.0.0.9", "test.dmc.local")
    cert = certificates.check_pair(pair)
    assert certificates.signed_by(cert, ca.certificate)
    assert not certificates.signed_by(cert, certificates.make_ca("other").certificate)
    names = cert.extensions.get_extension_for_class(
        certificates.x509.SubjectAlternativeName).value
    assert "node3.test.dmc.local" in names.get_values_for_type(certificates.x509.DNSName)
    assert [str(a) for a in names.get_values_for_type(certificates.x509.IPAddress)] == [
        "127.0.0.9"]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == certificates.CERT_DAYS


def test_wrong_expired_and_malformed_pairs_are_refused_with_a_reason(ca):
    one = certificates.issue(ca, 1, "127.0.0.1", "x")
    two = certificates.issue(ca, 2, "127.0.0.2", "x")
    with pytest.raises(certificates.CertificateError, match="does not belong"):
        certificates.check_pair(certificates.Pair(one.certificate, two.key))
    old = certificates.issue(ca, 1, "127.0.0.1", "x", days=1, not_before=datetime.datetime(
        2020, 1, 1, tzinfo=datetime.timezone.utc))
    with pytest.raises(certificates.CertificateError, match="expired on 2020-01-02"):
        certificates.check_pair(old)
    with pytest.raises(certificates.CertificateError, match="not a PEM certificate"):
        certificates.check_pair(certificates.Pair(b"hello", one.key))
    with pytest.raises(certificates.CertificateError, match="private key"):
        certificates.check_pair(certificates.Pair(one.certificate, b"nope"))


def test_renewal_replaces_only_due_ca_signed_certificates(tmp_path, ca):
    certificates.provision(tmp_path, ca, 1, "127.0.0.1", "x")
    before = {p: certificates.read_pair(tmp_path, p).certificate for p in certificates.PLANES}
    assert certificates.renew_if_due(tmp_path, 1, "127.0.0.1", "x") == []
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=31)
    # the operator's own certificate (another CA) is theirs to renew
    certificates.install(tmp_path, "api", certificates.issue(
        certificates.make_ca("operator"), 1, "127.0.0.1", "x"))
    assert certificates.renew_if_due(tmp_path, 1, "127.0.0.1", "x", now=later) == ["cp", "proxy"]
    assert certificates.read_pair(tmp_path, "cp").certificate != before["cp"]
    assert (tmp_path / "certs" / "cp.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "certs" / "ca.key").stat().st_mode & 0o077 == 0


def test_sealed_secrets_open_only_with_the_cluster_ca(ca):
    sealed = certificates.seal(ca, b"private key bytes")
    assert b"private key bytes" not in sealed["sealed"]
    assert certificates.unseal(ca, sealed) == b"private key bytes"
    with pytest.raises(Exception):
        certificates.unseal(certificates.make_ca("other"), sealed)


# ---- a cluster -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # the cluster's core and cnm_http: what serves HTTPS and installs certificates
    with rest_cluster(tmp_path_factory.mktemp("certs") / "cluster", FIRST_ADDRESS, timeout=120,
                      services=[*CORE_SERVICES, "cnm_http"]) as c:
        yield c


def dmc(cluster, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", *args, "--home",
                           str(cluster.home)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def ca_pem(cluster) -> str:
    out = dmc(cluster, "cluster", "ca")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-----BEGIN CERTIFICATE-----")
    return out.stdout


def https(cluster, uid: int, cadata: str, **kw) -> httpx.Client:
    config = cluster.nodes[uid]
    return httpx.Client(base_url=f"https://{config.address}:{config.rest_tls_port}",
                        verify=ssl.create_default_context(cadata=cadata),
                        auth=cluster.admin_login(), timeout=10, **kw)


def served_serial(cluster, uid: int) -> str:
    config = cluster.nodes[uid]
    pem = ssl.get_server_certificate((config.address, config.rest_tls_port))
    return format(certificates.load_certificate(pem.encode()).serial_number, "x")


def test_every_node_serves_https_verified_by_the_cluster_ca(cluster, ca_pem):
    for uid in cluster.nodes:
        reply = https(cluster, uid, ca_pem).get("/v1/cluster")
        assert reply.status_code == 200
    shown = rest_client(cluster).get("/v1/cluster/certificates").json()
    assert shown["ca_cert"] == ca_pem
    assert "CN=dmc cluster CA" in shown["api"]["issuer"]


def test_a_client_trusting_another_ca_refuses_the_nodes(cluster):
    foreign = certificates.make_ca("foreign").certificate.decode()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        https(cluster, 1, foreign).get("/v1/cluster")


def test_plaintext_on_the_https_port_is_refused(cluster):
    config = cluster.nodes[1]
    try:
        reply = httpx.get(f"http://{config.address}:{config.rest_tls_port}/v1/cluster",
                          auth=cluster.admin_login(), timeout=5)
    except httpx.TransportError:
        return                          # the connection is closed: refused
    assert reply.status_code == 400     # or an HTTP answer that it is not TLS
    assert "cluster" not in reply.text


def test_the_cli_talks_https(cluster):
    out = dmc(cluster, "db", "list")
    assert out.returncode == 0, out.stderr
    shown = dmc(cluster, "cluster", "certificates", "show")
    assert shown.returncode == 0
    assert shown.stdout.count("node ") == len(certificates.PLANES) * len(cluster.nodes)


def test_an_expired_or_mismatched_operator_certificate_is_refused(cluster, tmp_path):
    api = rest_client(cluster)
    operator = certificates.make_ca("operator")
    old = certificates.issue(operator, 1, FIRST_ADDRESS, "x", days=1,
                             not_before=datetime.datetime(2021, 5, 1,
                                                          tzinfo=datetime.timezone.utc))
    reply = api.put("/v1/cluster/update_cert", json={"name": "api", "certificate":
                    old.certificate.decode(), "key": old.key.decode()})
    assert reply.status_code == 400
    assert reply.json() == {"error_code": "invalid_certificate", "description":
                            "the certificate expired on 2021-05-02 00:00 UTC"}
    one, two = (certificates.issue(operator, 1, FIRST_ADDRESS, "x") for _ in range(2))
    reply = api.put("/v1/cluster/update_cert", json={"name": "api", "certificate":
                    one.certificate.decode(), "key": two.key.decode()})
    assert reply.status_code == 400 and "does not belong" in reply.json()["description"]
    assert api.put("/v1/cluster/update_cert", json={"name": "cp", "certificate":
                   one.certificate.decode(), "key": one.key.decode()}).status_code == 406
    (tmp_path / "c.pem").write_bytes(old.certificate)
    (tmp_path / "c.key").write_bytes(old.key)
    out = dmc(cluster, "cluster", "certificates", "set", "--certificate",
              str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"))
    assert out.returncode == 1
    assert out.stderr == "error: the certificate expired on 2021-05-02 00:00 UTC\n"


def test_a_certificate_close_to_its_end_is_renewed_without_dropping_connections(cluster,
                                                                                ca_pem):
    config = cluster.nodes[2]
    ca = certificates.read_ca(config.dir)
    client = https(cluster, 2, ca_pem)
    assert client.get("/v1/cluster").status_code == 200          # a connection now open
    short = certificates.issue(ca, 2, config.address, config.cluster_fqdn, days=10)
    certificates.install(config.dir, "api", short)
    short_serial = format(certificates.load_certificate(short.certificate).serial_number, "x")
    wait_until(lambda: certificates.load_certificate(certificates.read_pair(
        config.dir, "api").certificate).serial_number != int(short_serial, 16), 30,
        what="the short certificate renewed")
    renewed = certificates.check_pair(certificates.read_pair(config.dir, "api"))
    assert (renewed.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days \
        >= certificates.CERT_DAYS - 1
    wait_until(lambda: served_serial(cluster, 2) == format(renewed.serial_number, "x"), 15,
               what="the renewed certificate served")
    assert client.get("/v1/cluster").status_code == 200          # the same client, still up


def test_an_operator_certificate_is_installed_on_every_node(cluster, tmp_path, ca_pem):
    operator = certificates.make_ca("operator")
    pair = certificates.issue(operator, 1, FIRST_ADDRESS, "x")   # one name: not checked here
    (tmp_path / "c.pem").write_bytes(pair.certificate)
    (tmp_path / "c.key").write_bytes(pair.key)
    out = dmc(cluster, "cluster", "certificates", "set", "--certificate",
              str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"))
    assert out.returncode == 0, out.stderr
    serial = format(certificates.load_certificate(pair.certificate).serial_number, "x")
    for uid in cluster.nodes:
        wait_until(lambda u=uid: served_serial(cluster, u) == serial, 30,
                   what=f"node {uid} serving the operator's certificate")
    # the operator's key is in CCS only sealed
    for uid, config in cluster.nodes.items():
        aof = b"".join(p.read_bytes() for p in (config.dir / "ccs").rglob("*")
                       if p.is_file())
        assert pair.key not in aof and pair.key.splitlines()[1] not in aof
