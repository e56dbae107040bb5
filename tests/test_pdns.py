"""pdns_server on a real 3-node cluster named at creation: `dig` (UDP and TCP) and dnspython's
resolver get each database's names answered with the nodes its proxy policy advertises, SOA and
NS for the zone, NXDOMAIN for unknown names; answers follow a node's proxy going away and coming
back; malformed packets get no answer and break nothing. Also what the CLI and the REST API say
of the names."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
import redis
import trio
from click.testing import CliRunner
from clusters import DATABASE_SERVICES, Cluster
from waiting import wait_until

from control.discovery import advertised, dns_name, internal_dns_name
from control.local_cluster import LocalCluster
from control.node import NodeConfig, supervisor_rpc
from control.cli import main

pytestmark = pytest.mark.timeout(240)

FIRST_ADDRESS = "127.0.0.211"      # other modules' clusters use other addresses
FQDN = "prod.dmc.test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("pdns") / "cluster", FIRST_ADDRESS, name=FQDN,
                services=[*DATABASE_SERVICES, "pdns_server", "sentinel_service"])
    try:
        c.dbs = {"all": c.create_db("all", shards=2, replication=True),
                 "single": c.create_db("single", shards=1, proxy_policy="single"),
                 "masters": c.create_db("masters", shards=2, proxy_policy="all-master-shards")}
        for db in c.dbs.values():
            c.wait_proxies_current(db["uid"])
        yield c
    finally:
        c.close()


def resolver(config) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.lifetime = [config.address], config.dns_port, 3
    r.cache = None
    return r


def addresses(config, name: str) -> set[str]:
    try:
        return {a.address for a in resolver(config).resolve(name, "A")}
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, dns.resolver.LifetimeTimeout):
        return set()


def dig(config, *args) -> str:
    return subprocess.run(["dig", f"@{config.address}", "-p", str(config.dns_port), *args],
                          capture_output=True, text=True, timeout=20).stdout


def node_addresses(c: Cluster, db: dict, role: str | None = None) -> set[str]:
    return {c.lc.nodes[s["node_uid"]].address for s in c.shards(db["uid"]).values()
            if role is None or s["role"] == role}


def test_dig_answers_a_databases_names_with_every_node_over_udp_and_tcp(cluster):
    node = cluster.lc.nodes[1]
    port = cluster.dbs["all"]["port"]
    everyone = {n.address for n in cluster.lc.nodes.values()}
    for name in (dns_name(port, FQDN), internal_dns_name(port, FQDN)):
        for transport in ("+notcp", "+tcp"):
            out = dig(node, name, "A", transport, "+noall", "+answer", "+comments")
            assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
            records = [line.split() for line in out.splitlines()
                       if line and not line.startswith(";")]
            assert {r[4] for r in records} == everyone, out
            assert {(r[1], r[3]) for r in records} == {("5", "A")}      # a 5 s TTL


def test_each_node_answers_for_the_zone(cluster):
    port = cluster.dbs["all"]["port"]
    for config in cluster.lc.nodes.values():
        assert addresses(config, dns_name(port, FQDN)) == \
            {n.address for n in cluster.lc.nodes.values()}


def test_proxy_policies_choose_the_advertised_nodes(cluster):
    node = cluster.lc.nodes[2]
    single = cluster.dbs["single"]
    assert addresses(node, dns_name(single["port"], FQDN)) == \
        node_addresses(cluster, single, "master")
    masters = cluster.dbs["masters"]
    assert addresses(node, dns_name(masters["port"], FQDN)) == \
        node_addresses(cluster, masters, "master")


def test_rest_endpoint_addresses_follow_the_proxy_policy(cluster):
    """The REST bdb's endpoints[].addr are the addresses DNS answers with, policy by policy."""
    node = cluster.lc.nodes[1]
    for name in ("all", "single", "masters"):
        db = cluster.dbs[name]
        endpoint = cluster_rest_bdb(cluster, db["uid"])["endpoints"][0]
        assert set(endpoint["addr"]) == addresses(node, dns_name(db["port"], FQDN)), name
    assert len(cluster_rest_bdb(cluster, cluster.dbs["single"]["uid"])["endpoints"][0]["addr"]) == 1


def cluster_rest_bdb(cluster, uid: int) -> dict:
    result = CliRunner().invoke(main, ["db", "show", str(uid), "--json",
                                       "--home", str(cluster.lc.home)])
    return json.loads(result.stdout)


def test_policies_order_and_fallback():
    assert advertised("all-nodes", [1, 2, 3], {3}) == [3, 1, 2]
    assert advertised("all-master-shards", [1, 2, 3], {2, 3}) == [2, 3]
    assert advertised("single", [1, 2, 3], {2, 3}) == [2]
    # the master shards' nodes do not serve: the nodes that do are advertised
    assert advertised("single", [1, 3], {2}) == [1]
    assert advertised("all-master-shards", [], {2}) == []


def test_the_view_kept_on_disk_is_the_view_and_its_digest_is_the_zones():
    from control.discovery import DbEndpoint, DiscoveryView, NodeView
    view = DiscoveryView(FQDN, {1: NodeView(1, "127.0.0.1", 8001, 53, True)},
                         {7: DbEndpoint(7, "db", 12000, "all-nodes", ("127.0.0.1",))}, 5.0, 3)
    again = DiscoveryView.from_json(json.loads(json.dumps(view.to_json())))
    assert again == view and again.digest() == view.digest()
    again.read_at, again.serial = 9.0, 4          # when it was read is not the zone
    assert again.digest() == view.digest()
    moved = DiscoveryView(FQDN, view.nodes, {7: DbEndpoint(7, "db", 12000, "all-nodes", ())})
    assert moved.digest() != view.digest()


def test_the_follower_is_ready_at_once_and_keeps_its_view_when_ccs_never_answers(tmp_path):
    """A CCS copy that takes connections and never answers (SIGSTOP): the discovery follower
    of a service that starts is ready at once, with the view kept on disk."""
    from control import ccs
    from control.discovery import DiscoveryView, NodeView
    from control.discovery_follower import ViewFollower
    from dmc.local import start_redis_on_free_port
    port, proc = start_redis_on_free_port(tmp_path)
    cache = tmp_path / "view.json"
    kept = DiscoveryView(FQDN, {1: NodeView(1, "127.0.0.1", 1, 2, True)}, serial=7)
    cache.write_text(json.dumps(kept.to_json()))
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        follower = ViewFollower(ccs.Session("127.0.0.1", port, port), "other.name", cache=cache)

        async def start():
            with trio.fail_after(1):
                async with trio.open_nursery() as nursery:
                    await nursery.start(follower.run)
                    nursery.cancel_scope.cancel()
        trio.run(start)
        assert follower.view == kept
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_soa_ns_and_node_names(cluster):
    node = cluster.lc.nodes[1]
    r = resolver(node)
    soa = r.resolve(FQDN, "SOA")[0]
    assert str(soa.mname) == f"node1.{FQDN}." and soa.serial > 0
    assert sorted(str(ns.target) for ns in r.resolve(FQDN, "NS")) == \
        [f"node{u}.{FQDN}." for u in sorted(cluster.lc.nodes)]
    for uid, config in cluster.lc.nodes.items():
        assert addresses(node, f"node{uid}.{FQDN}") == {config.address}


def test_unknown_names_and_other_zones(cluster):
    node = cluster.lc.nodes[1]
    port = cluster.dbs["all"]["port"]

    def rcode(name, rdtype="A"):
        reply = dns.query.udp(dns.message.make_query(name, rdtype), node.address, timeout=3,
                              port=node.dns_port)
        return reply.rcode(), reply
    code, reply = rcode(f"redis-1.{FQDN}")
    assert code == dns.rcode.NXDOMAIN and reply.authority[0].rdtype == dns.rdatatype.SOA
    assert rcode(f"nothing.here.{FQDN}")[0] == dns.rcode.NXDOMAIN
    assert rcode("example.com")[0] == dns.rcode.REFUSED
    code, reply = rcode(dns_name(port, FQDN), "AAAA")          # the name exists: NODATA
    assert code == dns.rcode.NOERROR and not reply.answer
    assert rcode(f"internal.{FQDN}")[0] == dns.rcode.NOERROR   # a parent of names
    assert "status: NXDOMAIN" in dig(node, f"REDIS-1.{FQDN.upper()}")
    assert addresses(node, dns_name(port, FQDN).upper())       # names ignore case


def test_malformed_packets_are_dropped_and_break_nothing(cluster):
    node = cluster.lc.nodes[3]
    query = dns.message.make_query(dns_name(cluster.dbs["all"]["port"], FQDN), "A").to_wire()
    response = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for junk in (b"", b"\x00", os.urandom(7), os.urandom(300), query[:15],
                     query[:12] + b"\xff" * 40, response):
            s.sendto(junk, (node.address, node.dns_port))
            with pytest.raises(TimeoutError):
                s.recvfrom(4096)
    with socket.create_connection((node.address, node.dns_port), timeout=3) as t:
        t.sendall(len(b"\x07garbage").to_bytes(2, "big") + b"\x07garbage")
        assert t.recv(100) == b""                 # dropped: the connection is closed
    assert addresses(node, dns_name(cluster.dbs["all"]["port"], FQDN))


def serials(cluster) -> list[int]:
    """The SOA serial each node answers."""
    return [resolver(c).resolve(FQDN, "SOA")[0].serial for _, c in sorted(cluster.lc.nodes.items())]


def test_answers_follow_a_nodes_proxy_and_every_node_gives_the_same_serial(cluster):
    """A node whose dmcproxy stops leaves every answer; back when it runs again. The zone's
    serial is CCS's: the same on every node, and it grows with each change of the zone."""
    before = wait_until(lambda: len(set(s := serials(cluster))) == 1 and s[0], 15, 0.2,
                        "one serial on every node")
    gone = cluster.lc.nodes[3]
    asked = cluster.lc.nodes[1]
    name = dns_name(cluster.dbs["all"]["port"], FQDN)
    rpc = supervisor_rpc(gone.supervisor_sock).supervisor
    rpc.stopProcess("dmcproxy")
    try:
        wait_until(lambda: addresses(asked, name) ==
                   {cluster.lc.nodes[1].address, cluster.lc.nodes[2].address}, 15,
                   what=f"node 3 out of {name}")
        during = wait_until(lambda: len(set(s := serials(cluster))) == 1 and s[0] > before
                            and s[0], 15, 0.2, "a new serial, the same on every node")
    finally:
        rpc.startProcess("dmcproxy")
    wait_until(lambda: gone.address in addresses(asked, name), 20, what=f"node 3 back in {name}")
    wait_until(lambda: len(set(s := serials(cluster))) == 1 and s[0] > during, 15, 0.2,
               "the serial moved on again, the same on every node")


def test_a_restart_while_ccs_does_not_answer_serves_the_view_kept_on_disk(cluster):
    """Node 3's CCS copy stopped (SIGSTOP: it takes connections and never answers), then its
    pdns_server and sentinel_service restarted: both answer at once, from their last view."""
    node = cluster.lc.nodes[3]
    db = cluster.dbs["all"]
    name = dns_name(db["port"], FQDN)
    want = addresses(node, name)
    sentinel = redis.Redis(node.address, node.sentinel_port, socket_timeout=3)
    master = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "all")
    rpc = supervisor_rpc(node.supervisor_sock).supervisor
    ccs_pid = rpc.getProcessInfo("ccs")["pid"]
    os.kill(ccs_pid, signal.SIGSTOP)
    try:
        for service in ("pdns_server", "sentinel_service"):
            rpc.stopProcess(service)
            rpc.startProcess(service)
        assert wait_until(lambda: addresses(node, name), 10, 0.2, "an answer") == want
        assert wait_until(lambda: _sentinel_answer(node), 10, 0.2, "Sentinel's answer") == master
    finally:
        os.kill(ccs_pid, signal.SIGCONT)


def _sentinel_answer(node):
    try:
        return redis.Redis(node.address, node.sentinel_port, socket_timeout=2).execute_command(
            "SENTINEL", "get-master-addr-by-name", "all")
    except redis.RedisError:
        return None


def test_cli_and_rest_name_the_discovery_addresses(cluster):
    runner = CliRunner()
    home = ["--home", str(cluster.lc.home)]
    status = json.loads(runner.invoke(main, ["status", "--json", *home]).stdout)
    assert status["cluster_fqdn"] == FQDN
    for row in status["nodes"]:
        config = cluster.lc.nodes[row["node"]]
        assert row["sentinel_address"] == f"{config.address}:{config.sentinel_port}"
        assert row["dns_address"] == f"{config.address}:{config.dns_port}"
    db = cluster.dbs["all"]
    shown = runner.invoke(main, ["db", "show", "all", *home]).stdout
    assert f"dns_address:                {dns_name(db['port'], FQDN)}:{db['port']}" in shown
    sentinels = ", ".join(f"{n.address}:{n.sentinel_port}"
                          for _, n in sorted(cluster.lc.nodes.items()))
    assert f"sentinel:                   {sentinels} (master name all)" in shown
    endpoint = json.loads(runner.invoke(main, ["db", "show", "all", "--json", *home]).stdout
                          )["endpoints"][0]
    assert endpoint["dns_address_master"] == dns_name(db["port"], FQDN)
    assert endpoint["port"] == db["port"] and endpoint["proxy_policy"] == "all-nodes"


def test_cluster_create_refuses_a_bad_name(tmp_path):
    result = CliRunner().invoke(main, ["cluster", "create", "--name", "not a name",
                                       "--home", str(tmp_path)])
    assert result.exit_code == 1 and "is not a DNS name" in result.output


def test_a_node_joined_from_another_folder_takes_the_cluster_name_from_ccs(cluster, tmp_path):
    """`dmc node join` as on another machine (a folder of its own, so no sibling node.json to
    copy): the node takes the cluster's FQDN from CCS and answers for that zone. Last: it
    leaves the module's cluster with a fourth node, stopped."""
    peer = cluster.lc.nodes[1]
    address = "127.0.0.214"
    # the cluster's CA, as an operator copies it to the new machine
    result = CliRunner().invoke(main, ["node", "join", f"{peer.address}:{peer.gossip_port}",
                                       "--address", address, "--home", str(tmp_path),
                                       "--ca-dir", str(peer.dir / "certs")])
    assert (tmp_path / "cluster.json").exists() or result.exit_code == 0, result.output
    joined = LocalCluster.load(tmp_path)
    try:
        assert result.exit_code == 0, result.output
        (config,) = joined.nodes.values()
        assert NodeConfig.load(config.home).cluster_fqdn == FQDN
        soa = wait_until(lambda: _soa(config), 30, 0.5, "the new node's SOA")
        assert str(soa.mname) == f"node{config.uid}.{FQDN}."
    finally:
        joined.stop()


def _soa(config):
    try:
        return resolver(config).resolve(FQDN, "SOA")[0]
    except dns.exception.DNSException:
        return None
