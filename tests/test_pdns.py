"""pdns_server on a real 3-node cluster named at creation: `dig` (UDP and TCP) and dnspython's
resolver get each database's names answered with the nodes its proxy policy advertises, SOA and
NS for the zone, NXDOMAIN for unknown names; answers follow a node's proxy going away and coming
back; malformed packets get no answer and break nothing. Also what the CLI and the REST API say
of the names."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
from click.testing import CliRunner
from clusters import Cluster
from waiting import wait_until

from control.discovery import advertised, dns_name, internal_dns_name
from control.node import supervisor_rpc
from control.cli import main

pytestmark = pytest.mark.timeout(240)

FIRST_ADDRESS = "127.0.0.211"      # other modules' clusters use other addresses
FQDN = "prod.dmc.test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("pdns") / "cluster", FIRST_ADDRESS, name=FQDN)
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


def test_policies_order_and_fallback():
    assert advertised("all-nodes", [1, 2, 3], {3}) == [3, 1, 2]
    assert advertised("all-master-shards", [1, 2, 3], {2, 3}) == [2, 3]
    assert advertised("single", [1, 2, 3], {2, 3}) == [2]
    # the master shards' nodes do not serve: the nodes that do are advertised
    assert advertised("single", [1, 3], {2}) == [1]
    assert advertised("all-master-shards", [], {2}) == []


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


def test_answers_follow_a_nodes_proxy(cluster):
    """A node whose dmcproxy stops leaves every answer; back when it runs again."""
    gone = cluster.lc.nodes[3]
    asked = cluster.lc.nodes[1]
    name = dns_name(cluster.dbs["all"]["port"], FQDN)
    rpc = supervisor_rpc(gone.supervisor_sock).supervisor
    rpc.stopProcess("dmcproxy")
    try:
        wait_until(lambda: addresses(asked, name) ==
                   {cluster.lc.nodes[1].address, cluster.lc.nodes[2].address}, 15,
                   what=f"node 3 out of {name}")
    finally:
        rpc.startProcess("dmcproxy")
    wait_until(lambda: gone.address in addresses(asked, name), 20, what=f"node 3 back in {name}")


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
