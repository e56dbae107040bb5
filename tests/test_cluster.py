"""The control plane as an operator meets it: real nodes (a supervisord each, with ccs,
cluster_wd and heartbeatd under it), on loopback addresses or in network namespaces, with every
election observation checked by the history checker when the test ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import trio
from chaos.netns import TestNetwork
from waiting import wait_until

from control import ccs, history
from control.local_cluster import LocalCluster, loopback_addresses
from control.node import CORE_SERVICES


def lease_view(config) -> dict:
    """What cluster_wd last wrote to run/lease.json: readable from outside any namespace."""
    try:
        view = json.loads(config.lease_file.read_text())
    except (OSError, ValueError):
        return {}
    until = view.get("lease_until")
    view["is_master"] = view.get("role") == "master" and until is not None \
        and until > time.monotonic()
    return view


def masters(cluster, among=None) -> list[int]:
    return [u for u, c in cluster.nodes.items()
            if (among is None or u in among) and lease_view(c).get("is_master")]


def ccs_client(config) -> redis.Redis:
    return redis.Redis(config.address, config.ccs_port, socket_timeout=2, protocol=2)


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(n, netns: TestNetwork | None = None, **kw) -> LocalCluster:
        home = tmp_path / f"cluster{len(made)}"
        if netns:
            c = LocalCluster.create(home, [h.address for h in netns.hosts], record_history=True,
                                    netns=[h.name for h in netns.hosts],
                                    services=CORE_SERVICES, **kw)
        else:
            c = LocalCluster.create(home, loopback_addresses(n), record_history=True,
                                    services=CORE_SERVICES, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        if c.registry.exists():
            c = LocalCluster.load(c.home)   # with any node a test added since
        c.stop()
        found = history.violations(history.load_dir(c.home))
        assert found == [], found


def run_dmc(home: Path, *args, check=True) -> subprocess.CompletedProcess:
    # 180 s: `node add`/`join` itself waits up to 120 s for a loaded machine
    proc = subprocess.run([sys.executable, "-m", "control.cli", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=180, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("n", [3, 5])
def test_one_master_the_others_replicas_and_ccs_replicated_to_every_node(make_cluster, n):
    cluster = make_cluster(n)
    master = cluster.wait_for_master()
    views = {u: cluster.status(u) for u in cluster.nodes}
    assert [u for u, v in views.items() if v["is_master"]] == [master]
    assert all(v["role"] == "replica" and v["master"] == master
               for u, v in views.items() if u != master)
    assert len({v["term"] for v in views.values()}) == 1

    ccs_client(cluster.nodes[master]).set("probe", "written on the master")
    for uid, config in cluster.nodes.items():
        wait_until(lambda c=config: ccs_client(c).get("probe") == b"written on the master",
                   what=f"the key on node {uid}")
        if uid != master:
            with pytest.raises(redis.exceptions.ReadOnlyError):
                ccs_client(config).set("probe", "written on a replica")

    status = wait_until(lambda: _all_ok(cluster), what="every node OK in dmc status")
    assert {row["node"]: row["role"] for row in status["nodes"]} == {
        u: ("master" if u == master else "replica") for u in cluster.nodes}


def _all_ok(cluster, expect: int | None = None):
    """dmc status --json once every node (`expect` of them) is OK with all services running."""
    proc = run_dmc(cluster.home, "status", "--json", check=False)
    if proc.returncode != 0:
        return None
    status = json.loads(proc.stdout)
    rows = status["nodes"]
    if len(rows) == (expect or len(cluster.nodes)) and all(
            r["state"] == "OK" and r["services"] and
            set(r["services"].values()) == {"RUNNING"} for r in rows):
        return status
    return None


def test_kill_9_of_the_master_node_elects_a_new_master_and_the_old_one_rejoins(make_cluster):
    cluster = make_cluster(3)
    old = cluster.wait_for_master()
    ccs_client(cluster.nodes[old]).set("before", "1")
    wait_until(lambda: all(ccs_client(c).get("before") for c in cluster.nodes.values()))

    killed_at = time.monotonic()
    cluster.kill_node(old)
    others = [u for u in cluster.nodes if u != old]

    def ccs_writable_elsewhere():
        for u in others:
            try:
                ccs_client(cluster.nodes[u]).set("after", "1")
                return u
            except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError):
                pass
        return None
    new = wait_until(ccs_writable_elsewhere, timeout=10, interval=0.01)
    took = time.monotonic() - killed_at
    print(f"\nfailover: CCS writable on node {new} {took:.2f}s after kill -9 of node {old}")
    assert took < 3.0
    assert cluster.wait_for_master() == new
    assert ccs_client(cluster.nodes[new]).get("before") == b"1"

    # heartbeatd's forwarded port on the surviving replica now leads to the new master
    survivor = cluster.nodes[next(u for u in others if u != new)]
    forwarded = redis.Redis(survivor.address, survivor.ccs_forward_port, socket_timeout=2,
                            protocol=2)
    wait_until(lambda: _set_through(forwarded), what="a write through the forwarded port")
    assert ccs_client(cluster.nodes[new]).get("through-forward") == b"1"
    # the dead node's heartbeat key expires: dmc status shows it down
    def shown_down():
        rows = json.loads(run_dmc(cluster.home, "status", "--json").stdout)["nodes"]
        return {r["node"]: r["state"] for r in rows}
    expected = {u: ("DOWN" if u == old else "OK") for u in cluster.nodes}
    wait_until(lambda: shown_down() == expected, timeout=10, interval=0.3,
               what="the killed node shown DOWN, the others OK")

    cluster.start_node(old)
    wait_until(lambda: cluster.status(old).get("master") == new, what="old master following")
    assert cluster.status(old)["role"] == "replica"
    wait_until(lambda: ccs_client(cluster.nodes[old]).get("after") == b"1",
               what="the old master's CCS copy replicating the new master")
    assert masters(cluster) == [new]


def _ccs_writes(config, values: dict[str, int]) -> None:
    """ccs.write of each key on the node's copy: each returns once a majority has it."""
    async def run():
        async with await ccs.connect_node(config, timeout=2.0) as conn:
            for key, value in values.items():
                await ccs.write(conn, key, value)
    trio.run(run)


def _ccs_reads(config, keys) -> tuple[dict, tuple[int, int]]:
    """The keys' values on the node's own copy, and its CCS position."""
    async def run():
        async with await ccs.connect_node(config, timeout=2.0) as conn:
            return ({k: await ccs.read(conn, k) for k in keys}, await ccs.read_position(conn))
    return trio.run(run)


def test_a_restarted_node_whose_ccs_copy_missed_writes_loses_the_election(make_cluster):
    """Stop 26's chaos run (bench/CHAOS.md): a node killed while the master went on writing
    CCS, started again when the master had died, its copy still what it had at its kill (it
    had no master to re-attach to). It must not become the master: its copy would replace the
    survivor's, and the acknowledged writes it missed would be gone."""
    cluster = make_cluster(3)
    master = cluster.wait_for_master()
    stale, survivor = [u for u in cluster.nodes if u != master]
    _ccs_writes(cluster.nodes[master], {"ccs27:before": 0})
    cluster.kill_node(stale)

    # acknowledged by a majority: the master's copy and the survivor's
    written = {f"ccs27:while-down:{i}": i for i in range(20)}
    _ccs_writes(cluster.nodes[master], written)
    (_, at_master), (_, at_survivor) = (_ccs_reads(cluster.nodes[u], []) for u in
                                        (master, survivor))
    assert at_survivor[1] >= at_master[1] - 1 >= 20    # (a write's own bump may be in flight)

    cluster.kill_node(master)
    cluster.start_node(stale)
    new = cluster.wait_for_master(timeout=60)
    assert new == survivor
    keys = ["ccs27:before", *written]
    expected = {"ccs27:before": 0, **written}
    values, position = _ccs_reads(cluster.nodes[new], keys)
    assert values == expected
    # the restarted copy follows the new master and gets what it missed
    wait_until(lambda: _ccs_reads(cluster.nodes[stale], keys)[0] == expected,
               what="the restarted copy replicating the new master")
    # the new master's term is in its copy's position, above every position before it
    assert position[0] == cluster.status(new)["term"] and position > at_master


def _set_through(client) -> bool:
    try:
        return client.set("through-forward", "1") and client.execute_command("ROLE")[0] in (
            b"master", "master")
    except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError):
        return False


def test_supervisor_restarts_a_killed_service_and_dmc_services_shows_it(make_cluster):
    cluster = make_cluster(3)
    master = cluster.wait_for_master()
    replica = next(u for u in cluster.nodes if u != master)
    before = cluster.node_pids(replica)
    os.kill(before["cluster_wd"], signal.SIGKILL)
    os.kill(before["ccs"], signal.SIGKILL)

    def restarted():
        out = run_dmc(cluster.home, "services", "--node", str(replica), "status").stdout
        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        return all("RUNNING" in lines[s] and f"pid {before[s]}," not in lines[s]
                   for s in ("cluster_wd", "ccs")) and lines
    lines = wait_until(restarted, timeout=20, interval=0.3, what="services restarted")
    assert f"pid {before['heartbeatd']}," in lines["heartbeatd"]   # untouched one kept its pid
    # The restarted CCS copy comes back fenced and is pointed at the master again.
    ccs_client(cluster.nodes[master]).set("after-restart", "1")
    wait_until(lambda: ccs_client(cluster.nodes[replica]).get("after-restart") == b"1",
               what="restarted CCS replicating again")
    assert cluster.wait_for_master() == master


def test_dmc_services_stop_start_and_restart(make_cluster):
    cluster = make_cluster(1)
    cluster.wait_for_master()
    home = cluster.home
    # ccs-cli is redis-cli on the CCS master
    wait_until(lambda: run_dmc(home, "ccs-cli", "set", "via-cli", "yes",
                               check=False).stdout.strip() == "OK", what="ccs-cli SET")
    assert ccs_client(cluster.nodes[1]).get("via-cli") == b"yes"
    out = run_dmc(home, "services", "--node", "1", "stop", "heartbeatd").stdout
    assert "heartbeatd" in out and "STOPPED" in out
    out = run_dmc(home, "services", "--node", "1", "start", "all").stdout
    assert out.count("RUNNING") == len(CORE_SERVICES)
    pid = cluster.node_pids(1)["cluster_wd"]
    run_dmc(home, "services", "--node", "1", "restart", "cluster_wd")
    assert cluster.node_pids(1)["cluster_wd"] != pid
    # plain supervisorctl works against the node's own configuration, too
    sup = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                          str(cluster.nodes[1].supervisor_conf), "status"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert sup.stdout.count("RUNNING") == len(CORE_SERVICES), sup.stdout


def test_cli_errors_are_one_line_and_exit_non_zero(make_cluster, tmp_path):
    missing = run_dmc(tmp_path / "nothing", "status", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no cluster" in missing.stderr
    cluster = make_cluster(1)
    cluster.wait_for_master()
    for args, text in [(("services", "--node", "7", "status"), "no node 7"),
                       (("services", "--node", "1", "stop", "nosuch"), "no such service"),
                       (("services", "--node", "1", "stop"), "name the services"),
                       (("node", "remove", "9"), "no node 9"),
                       (("cluster", "create", "--nodes", "1"), "already exists")]:
        proc = run_dmc(cluster.home, *args, check=False)
        assert proc.returncode != 0 and text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    cluster.stop()
    stopped = run_dmc(cluster.home, "status", check=False)
    assert stopped.returncode == 1 and "not running" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_node_add_and_remove_change_the_membership(make_cluster):
    cluster = make_cluster(3)
    master = cluster.wait_for_master()
    replica = cluster.nodes[next(u for u in cluster.nodes if u != master)]
    notices = ccs_client(replica).pubsub()
    notices.subscribe("ccs:changes")
    out = run_dmc(cluster.home, "node", "add").stdout
    assert "node 4 joined" in out
    # the change is announced on every node's copy: services need not poll
    heard = set()
    wait_until(lambda: (m := notices.get_message(timeout=0.2)) and heard.add(m["data"])
               or b"cluster:nodes" in heard, what="a cluster:nodes notice on a replica")
    notices.close()
    cluster = LocalCluster.load(cluster.home)
    wait_until(lambda: all(sorted(cluster.status(u).get("members", {})) == [1, 2, 3, 4]
                           for u in cluster.nodes), what="4 members everywhere")
    ccs_client(cluster.nodes[master]).set("for-four", "1")
    wait_until(lambda: ccs_client(cluster.nodes[4]).get("for-four") == b"1",
               what="the new node's CCS copy")
    # 4 members: 3 make a majority, so the cluster survives one failure, not two at once
    run_dmc(cluster.home, "node", "remove", "4")
    cluster = LocalCluster.load(cluster.home)
    assert sorted(cluster.nodes) == [1, 2, 3]
    wait_until(lambda: all(sorted(cluster.status(u).get("members", {})) == [1, 2, 3]
                           for u in cluster.nodes), what="3 members again")
    assert cluster.wait_for_master() == master


needs_netns = pytest.mark.skipif(not TestNetwork.available(),
                                 reason=f"no network namespaces: "
                                        f"{TestNetwork.unavailable_reason()}")


@needs_netns
@pytest.mark.parametrize("n", [3, 5])
def test_partition_minority_loses_the_master_majority_has_one_and_heal_converges(make_cluster, n):
    with TestNetwork(n) as net:
        cluster = make_cluster(n, netns=net)
        old = wait_until(lambda: len(masters(cluster)) == 1 and masters(cluster)[0],
                         what="a first master")
        index = {uid: uid - 1 for uid in cluster.nodes}          # uid -> host index
        minority = [old] + [u for u in cluster.nodes if u != old][: (n - 1) // 2 - 1]
        majority = [u for u in cluster.nodes if u not in minority]
        net.partition([index[u] for u in minority], [index[u] for u in majority])

        new = wait_until(lambda: masters(cluster, majority) and masters(cluster, majority)[0],
                         timeout=15, what="a master on the majority side")
        wait_until(lambda: masters(cluster) == [new], timeout=10,
                   what="the old master stepping down")
        assert all(lease_view(cluster.nodes[u])["role"] != "master" for u in minority)
        minority_terms = {lease_view(cluster.nodes[u])["term"] for u in minority}

        net.heal()
        wait_until(lambda: all(lease_view(c).get("master") == new
                               for c in cluster.nodes.values()),
                   timeout=15, what="every node following the majority's master")
        views = [lease_view(c) for c in cluster.nodes.values()]
        assert masters(cluster) == [new]
        assert lease_view(cluster.nodes[new])["term"] == max(v["term"] for v in views)
        assert max(minority_terms) <= lease_view(cluster.nodes[new])["term"]
        cluster.stop()


def test_a_node_in_a_folder_of_its_own_joins_through_a_peer(make_cluster, tmp_path):
    """What one node per machine does: the new node knows nothing but one peer's address."""
    cluster = make_cluster(1)
    cluster.wait_for_master()
    peer = cluster.nodes[1]
    elsewhere = tmp_path / "other-machine"
    refused = run_dmc(elsewhere, "node", "join", f"{peer.address}:{peer.gossip_port}",
                      "--address", "127.0.0.2", check=False)
    assert refused.returncode == 1 and "give --ca-dir" in refused.stderr   # no certificate
    out = run_dmc(elsewhere, "node", "join", f"{peer.address}:{peer.gossip_port}",
                  "--address", "127.0.0.2", "--ca-dir", str(peer.dir / "certs")).stdout
    assert "node 2 joined at 127.0.0.2" in out
    other = LocalCluster.load(elsewhere)
    try:
        status = wait_until(lambda: _all_ok(other, expect=2),
                            what="both nodes OK, seen from the new node's folder")
        assert {r["node"]: r["role"] for r in status["nodes"]} == {1: "master", 2: "replica"}
        bad = run_dmc(elsewhere, "node", "join", "127.0.0.1:1", "--address", "127.0.0.3",
                      check=False)
        assert bad.returncode == 1 and "no cluster_wd answered" in bad.stderr
    finally:
        other.stop()
