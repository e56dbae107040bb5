"""Control-plane encryption, on by default: on a real 3-node cluster (its core services), CCS
replicates over TLS and the heartbeats and the forwarder reach the master's CCS on its tls-port;
the CCS tls-port and the gossip port refuse plaintext, no certificate, a foreign CA's and an
expired one, with a clear error; a node whose certificate the cluster CA did not sign cannot
join; on routable addresses (network namespaces), where CCS serves no plaintext TCP, `dmc node
join` and `dmc ccs-cli` reach another member's CCS over TLS."""

from __future__ import annotations

import dataclasses
import datetime
import ssl
import stat
import subprocess
import sys

import pytest
import redis
import trio
from chaos.netns import TestNetwork, in_netns
from click.testing import CliRunner
from waiting import wait_until

from control import ccs, certificates, history
from control.cli import main
from control.cluster_wd import request
from control.local_cluster import ClusterError, LocalCluster, loopback_addresses
from control.node import CORE_SERVICES, NodeConfig
from control.tls import ControlPlaneTLS

pytestmark = pytest.mark.timeout(180)

FIRST_ADDRESS = "127.0.1.41"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster.create(tmp_path_factory.mktemp("cpine") / "cluster",
                            loopback_addresses(3, FIRST_ADDRESS), record_history=True,
                            services=list(CORE_SERVICES), timeout=60)
    try:
        yield c
    finally:
        c.stop()
    assert history.violations(history.load_dir(c.home)) == []


def plain(config) -> redis.Redis:
    return redis.Redis(config.address, config.ccs_port, socket_timeout=3, protocol=2)


def tls_client(config, cert_dir=None, **kw) -> redis.Redis:
    """redis-py over TLS to the node's CCS tls-port, presenting the certificate of cert_dir."""
    ca = certificates.ca_file(config.dir)
    options = {"ssl_ca_certs": str(ca)}
    if cert_dir is not None:
        options.update(ssl_certfile=str(certificates.cert_file(cert_dir, "cp")),
                       ssl_keyfile=str(certificates.key_file(cert_dir, "cp")))
    return redis.Redis(config.address, config.ccs_tls_port, ssl=True, socket_timeout=3,
                       protocol=2, **options, **kw)


def test_ccs_replicates_over_tls(cluster):
    master_uid = cluster.wait_for_master()
    master = cluster.nodes[master_uid]
    for uid, config in cluster.nodes.items():
        if uid == master_uid:
            continue
        wait_until(lambda c=config: (i := plain(c).info("replication"))["master_link_status"]
                   == "up" and i, 30, what=f"node {uid}'s CCS replicating")
        replication = plain(config).info("replication")
        assert replication["master_port"] == master.ccs_tls_port
    record = ccs.unpack(plain(master).get(ccs.MASTER))
    assert record["ccs_tls_port"] == master.ccs_tls_port
    # the replicas' connections to the master's CCS arrive on its tls-port, and so do the
    # other nodes' heartbeats (a SET of node_heartbeat:<uid> every second)
    clients = plain(master).client_list()
    replicas = [c for c in clients if "S" in c["flags"]]
    assert len(replicas) == 2
    assert all(c["laddr"].endswith(f":{master.ccs_tls_port}") for c in replicas)
    on_tls = [c for c in clients if c["laddr"].endswith(f":{master.ccs_tls_port}")]
    assert len(on_tls) >= 4


def test_the_forwarder_reaches_the_master_over_tls(cluster):
    master_uid = cluster.wait_for_master()
    other = next(c for u, c in cluster.nodes.items() if u != master_uid)
    forwarded = redis.Redis(other.address, other.ccs_forward_port, socket_timeout=3,
                            protocol=2)
    wait_until(lambda: forwarded.set("cpine:probe", "1"), 20, ignoring=(redis.RedisError,),
               what="a write through node's forwarded port")
    assert plain(cluster.nodes[master_uid]).get("cpine:probe") == b"1"


def test_the_ccs_tls_port_refuses_plaintext_and_unknown_certificates(cluster, tmp_path):
    config = cluster.nodes[1]
    assert tls_client(config, config.dir).ping() is True
    with pytest.raises(redis.ConnectionError):
        redis.Redis(config.address, config.ccs_tls_port, socket_timeout=3).ping()
    with pytest.raises(redis.ConnectionError):
        tls_client(config).ping()                           # no client certificate
    foreign = tmp_path / "foreign"
    certificates.provision(foreign, certificates.make_ca("foreign"), 1, config.address, "x")
    with pytest.raises(redis.ConnectionError):
        tls_client(config, foreign).ping()
    expired = tmp_path / "expired"
    ca = certificates.read_ca(config.dir)
    certificates.install_ca(expired, ca)
    certificates.install(expired, "cp", certificates.issue(
        ca, 1, config.address, "x", days=1,
        not_before=datetime.datetime(2022, 1, 1, tzinfo=datetime.timezone.utc)))
    with pytest.raises(redis.ConnectionError):
        tls_client(config, expired).ping()


def test_the_gossip_port_refuses_plaintext_and_foreign_certificates(cluster, tmp_path):
    config = cluster.nodes[2]
    with pytest.raises((ConnectionError, OSError, trio.TooSlowError)):
        trio.run(request, config.address, config.gossip_port, {"op": "status"}, 3.0)
    foreign = tmp_path / "foreign"
    certificates.provision(foreign, certificates.make_ca("foreign"), 9, "127.0.1.49", "x")
    context = ControlPlaneTLS(foreign).client()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE        # it trusts any server: only its own cert is bad
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        trio.run(lambda: request(config.address, config.gossip_port, {"op": "status"}, 3.0,
                                 ssl_context=context))
    log = (config.dir / "logs" / "cluster_wd.log").read_text()
    assert "refused a control-plane connection from 127." in log
    assert "TLS handshake failed" in log
    # and a node's own certificate is accepted
    own = cluster.nodes[1].control_plane_tls().client()
    assert trio.run(lambda: request(config.address, config.gossip_port, {"op": "status"},
                                    3.0, ssl_context=own))["ok"]


def test_a_node_with_a_foreign_certificate_cannot_join(cluster):
    foreign = certificates.make_ca("foreign")
    with pytest.raises(ClusterError, match="refuses the new node's certificate"):
        cluster.add_node("127.0.1.48", ca=foreign)
    assert sorted(int(u) for u in cluster.status(1)["members"]) == [1, 2, 3]


def test_the_node_services_reach_ccs_on_unix_sockets_only_the_owner_opens(cluster):
    """CCS's plaintext for the node's own services is its unix socket (and heartbeatd's
    forward socket), mode 0700; the services use them (the cluster above runs on them)."""
    for config in cluster.nodes.values():
        for path in (config.ccs_socket, config.forward_socket):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        local = redis.Redis(unix_socket_path=str(config.ccs_socket), socket_timeout=3)
        assert local.config_get("unixsocketperm") == {"unixsocketperm": "700"}
        forwarded = redis.Redis(unix_socket_path=str(config.forward_socket), socket_timeout=3)
        assert forwarded.execute_command("ROLE")[0] == b"master"
        # The node's services are connected on the socket (CLIENT LIST: no TCP address).
        assert any(c["addr"].startswith("/") or c.get("laddr", "").startswith("/")
                   for c in local.client_list()), local.client_list()


def test_a_node_on_a_routable_address_serves_no_plaintext_tcp(tmp_path):
    """On an address other hosts reach, CCS's plain port is closed (`port 0`; its tls-port
    stays) and heartbeatd's forwarder listens on its unix socket only; on a loopback address
    (a local cluster: no other host reaches it) or without CPINE the plain ports stay."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "cp.pem").write_text("")
    routable = NodeConfig(uid=1, address="10.20.30.40", home=str(tmp_path), ccs_port=7001,
                          gossip_port=7002, ccs_forward_port=7003, ccs_tls_port=7004)
    assert not routable.plain_tcp
    conf = routable._ccs_conf().splitlines()
    assert "port 0" in conf and "tls-port 7004" in conf
    assert f"unixsocket {routable.ccs_socket}" in conf
    assert dataclasses.replace(routable, address="127.0.3.1").plain_tcp
    assert dataclasses.replace(routable, control_plane_encryption=False).plain_tcp
    assert "port 7001" in dataclasses.replace(routable, address="127.0.3.1")._ccs_conf()


@pytest.mark.skipif(not TestNetwork.available(),
                    reason=f"no network namespaces: {TestNetwork.unavailable_reason()}")
@pytest.mark.timeout(300)
def test_dmc_node_join_and_ccs_cli_reach_a_routable_member_over_tls(tmp_path):
    """A node on a routable address serves CCS in plaintext on its unix socket only: `dmc node
    join` from another machine's folder takes the cluster's name from a member's CCS over its
    tls-port (with the joining node's certificate), and `dmc ccs-cli` reaches the master's
    CCS over TLS from that folder and on the master's socket from its own."""
    with TestNetwork(2) as net:
        first, second = net.hosts
        cluster = LocalCluster.create(tmp_path / "cluster", [first.address], netns=[first.name],
                                      services=list(CORE_SERVICES), name="routable.example",
                                      timeout=60)
        elsewhere = tmp_path / "other-machine"
        joined = None
        try:
            with in_netns(first.name):
                cluster.wait_for_master(60)
            peer = cluster.nodes[1]
            assert not peer.plain_tcp
            with in_netns(second.name):
                result = CliRunner().invoke(main, [
                    "node", "join", f"{peer.address}:{peer.gossip_port}", "--address",
                    second.address, "--ca-dir", str(peer.dir / "certs"),
                    "--home", str(elsewhere)])
                assert result.exit_code == 0, result.output
                assert f"node 2 joined at {second.address}" in result.output
                joined = LocalCluster.load(elsewhere)
                assert joined.nodes[2].cluster_fqdn == "routable.example"
                # (no master_link_status until the joined copy has turned replica)
                wait_until(lambda: plain_socket(joined.nodes[2]).info("replication").get(
                    "master_link_status") == "up", 60, what="the joined node's CCS replicating")
                role = subprocess.run([sys.executable, "-m", "control.cli", "ccs-cli", "ROLE",
                                       "--home", str(elsewhere)],
                                      capture_output=True, text=True, timeout=60)
                assert role.returncode == 0 and role.stdout.split()[0] == "master", \
                    role.stdout + role.stderr
            # From the cluster's own folder, on node 1's socket: the host's namespace reaches
            # no 198.18 address. (Waited for: once, at load 50, it took the tls-port instead --
            # a moment's view in which node 1 was not the master or its socket was not there.)
            tried = []

            def master_on_the_socket() -> bool:
                tried.append(subprocess.run(
                    [sys.executable, "-m", "control.cli", "ccs-cli", "ROLE", "--home",
                     str(cluster.home)], capture_output=True, text=True, timeout=60))
                return tried[-1].returncode == 0 and tried[-1].stdout.split()[0] == "master"
            try:
                wait_until(master_on_the_socket, 30, 1.0, "ccs-cli on node 1's socket")
            except AssertionError:
                raise AssertionError(tried[-1].stderr) from None
        finally:
            with in_netns(second.name):
                if joined is not None:
                    joined.stop()
            with in_netns(first.name):
                cluster.stop()


def plain_socket(config) -> redis.Redis:
    """The node's CCS copy on its unix socket (its plaintext way in)."""
    return redis.Redis(unix_socket_path=str(config.ccs_socket), socket_timeout=3, protocol=2)


def test_ccs_link_is_the_socket_here_the_tls_port_elsewhere_the_plain_port_without_cpine(
        tmp_path):
    """shard_link.ccs_link, the CLI's one way to a member's CCS: a node of this folder on its
    unix socket, another member on its tls-port with the folder's `cp` certificate, a member
    without a tls-port (CPINE off) on its plain port."""
    from control.shard_link import ccs_link
    here = NodeConfig(uid=1, address="10.20.30.41", home=str(tmp_path / "n1"), ccs_port=7001,
                      gossip_port=7002, ccs_forward_port=7003, ccs_tls_port=7004)
    here.ccs_socket.parent.mkdir(parents=True)
    here.ccs_socket.touch()
    local = ccs_link(here.member_info(), {1: here}, tmp_path)
    assert local.cli_args() == ["-s", str(here.ccs_socket)]
    other = {"uid": 2, "address": "10.20.30.42", "ccs_port": 7101, "ccs_tls_port": 7104}
    remote = ccs_link(other, {1: here}, here.dir)
    assert remote.cli_args()[:5] == ["-h", "10.20.30.42", "-p", "7104", "--tls"]
    assert str(certificates.cert_file(here.dir, "cp")) in remote.cli_args()
    plain = ccs_link({**other, "ccs_tls_port": 0}, {1: here}, here.dir)
    assert plain.cli_args() == ["-h", "10.20.30.42", "-p", "7101"]
