"""What a bad-input and fault probe of the cluster found (issue 21), each reproduced on one real
3-node cluster shared by the module: numbers beyond any bound, nulls the document allows, a 405's
Allow, a port a foreign process holds (refused on every node up; shown as failed on the node
that cannot bind it later), and a database bigger than the nodes' memory (with overbooking)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
from clusters import rest_client, rest_cluster
from waiting import wait_until

from control import ccs, redis_mgr, schema
from control.heartbeatd import MEMORY_TOTAL
from control.local_cluster import ClusterError
from control.node import NodeConfig, supervisor_rpc
from control.node_wd import cpu_demand
from dmc.local import start_redis_on_free_port
from dmc.processes import (KILL_GRACE, REDIS_SERVER, TERM_WAIT, free_port, pid_alive,
                           processes_under, stop_redis)

pytestmark = pytest.mark.timeout(180)

FIRST_ADDRESS = "127.0.0.231"      # other modules' clusters use other addresses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("hardening") / "cluster", FIRST_ADDRESS) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster) -> httpx.Client:
    with rest_client(cluster, timeout=15) as client:
        yield client


def wait_action(api, uid: str, timeout=60.0) -> dict:
    action = wait_until(lambda: (a := api.get(f"/v1/actions/{uid}").json())["status"] in
                        ("completed", "failed") and a, timeout, 0.1, f"action {uid}")
    assert action["status"] == "completed", action
    return action


def bdbs_in_ccs(cluster) -> dict:
    for config in cluster.nodes.values():
        r = redis.Redis(config.address, config.ccs_port, socket_timeout=2, protocol=2)
        return {k: ccs.unpack(v) for k, v in r.hgetall(schema.BDBS).items()}


# ---- memory (first: the cluster holds no database yet, so placement spreads evenly) ------------

def test_a_database_bigger_than_the_nodes_memory_is_406_unless_overbooking_allows_it(api):
    cluster_info = api.get("/v1/cluster").json()
    assert cluster_info["shards_overbooking"] is False
    assert cluster_info["overbooking_percent"] == 0
    assert cluster_info["memory_size"] == 3 * MEMORY_TOTAL
    huge = {"name": "huge", "memory_size": 2 * MEMORY_TOTAL}
    for path in ("/v1/bdbs", "/v1/bdbs?dry_run=1"):
        resp = api.post(path, json=huge)
        assert resp.status_code == 406, resp.text
        assert "not enough memory on node" in resp.json()["description"]
    # three shards of 0.8 of a node each fit one per node, but not twice with replication
    spread = {"name": "spread", "shards_count": 3, "memory_size": int(2.4 * MEMORY_TOTAL)}
    assert api.post("/v1/bdbs?dry_run=1", json=spread).status_code == 200
    resp = api.post("/v1/bdbs?dry_run=1", json={**spread, "replication": True})
    assert resp.status_code == 406 and "twice" in resp.json()["description"], resp.text

    changed = api.put("/v1/cluster", json={"overbooking_percent": 150})
    assert changed.status_code == 200 and changed.json()["overbooking_percent"] == 150
    try:
        assert api.post("/v1/bdbs?dry_run=1", json=huge).status_code == 200
        assert api.put("/v1/cluster", json={"overbooking_percent": 0, "shards_overbooking": True}
                       ).status_code == 200
        assert api.post("/v1/bdbs?dry_run=1", json={**huge, "memory_size": 50 * MEMORY_TOTAL}
                        ).status_code == 200
    finally:
        api.put("/v1/cluster", json={"overbooking_percent": 0, "shards_overbooking": False})
    assert api.post("/v1/bdbs?dry_run=1", json=huge).status_code == 406
    assert api.put("/v1/cluster", json={"overbooking_percent": -1}).status_code == 400


def test_a_put_that_grows_a_database_beyond_the_nodes_memory_is_406(api):
    created = api.post("/v1/bdbs", json={"name": "grows", "memory_size": 8 << 20})
    assert created.status_code == 200, created.text
    wait_action(api, created.json()["action_uid"])
    uid = created.json()["uid"]
    for path in (f"/v1/bdbs/{uid}", f"/v1/bdbs/{uid}?dry_run=1"):
        resp = api.put(path, json={"memory_size": 2 * MEMORY_TOTAL})
        assert resp.status_code == 406 and "not enough memory" in resp.text, resp.text
    wait_action(api, api.delete(f"/v1/bdbs/{uid}").json()["action_uid"])


# ---- numbers, nulls, methods ------------------------------------------------------------------

HUGE = 10 ** 30


@pytest.mark.parametrize("field, body", [
    ("memory_size", {"memory_size": HUGE}),
    ("backup_interval", {"backup_interval": HUGE}),
    ("snapshot_policy.0.secs", {"snapshot_policy": [{"secs": HUGE}]}),
    ("snapshot_policy.0.writes", {"snapshot_policy": [{"secs": 60, "writes": HUGE}]}),
    ("shards_count", {"shards_count": HUGE}),
    ("port", {"port": HUGE}),
    ("client_query_buffer_limit", {"client_query_buffer_limit": HUGE}),
    ("memory_size", {"memory_size": 2 ** 64}),
], ids=["memory", "backup-interval", "secs", "writes", "shards", "port", "query-buffer", "2^64"])
def test_a_number_beyond_its_bound_is_a_400_naming_the_field_in_every_call(cluster, api, field,
                                                                          body):
    before = bdbs_in_ccs(cluster)
    for path in ("/v1/bdbs", "/v1/bdbs?dry_run=1"):
        resp = api.post(path, json={"name": "big", **body})
        assert resp.status_code == 400, (path, resp.text)
        assert resp.json()["description"].startswith(f"{field}: "), resp.text
    resp = api.post("/v1/shards/1/actions/migrate", json={"target_node_uid": HUGE})
    assert resp.status_code in (400,), resp.text
    assert bdbs_in_ccs(cluster) == before


def test_put_checks_numbers_and_nulls_as_the_document_declares_them(cluster, api):
    created = api.post("/v1/bdbs", json={"name": "nulls", "memory_size": 8 << 20,
                                         "backup_location": "/tmp/somewhere"})
    assert created.status_code == 200, created.text
    uid = created.json()["uid"]
    wait_action(api, created.json()["action_uid"])
    for path in (f"/v1/bdbs/{uid}", f"/v1/bdbs/{uid}?dry_run=1"):
        resp = api.put(path, json={"memory_size": HUGE})
        assert resp.status_code == 400 and "memory_size" in resp.text, resp.text
    props = api.get("/openapi.json").json()["components"]["schemas"]["BdbSettings"]["properties"]
    nullable = {k for k, p in props.items() if {"type": "null"} in p.get("anyOf", [])}
    assert nullable == {"backup_location"}
    assert api.put(f"/v1/bdbs/{uid}", json={"name": None}).status_code == 400
    reset = api.put(f"/v1/bdbs/{uid}", json={"backup_location": None})
    assert reset.status_code == 200, reset.text
    wait_action(api, reset.json()["action_uid"])
    location = api.get(f"/v1/bdbs/{uid}").json()["backup_location"]
    assert location == str(cluster.nodes[1].dir / "backups") or location.endswith("backups")
    wait_action(api, api.delete(f"/v1/bdbs/{uid}").json()["action_uid"])


def test_a_405_lists_every_method_of_the_path(api):
    resp = api.patch("/v1/bdbs/1", json={})
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["allow"].split(",")} >= {"GET", "PUT", "DELETE"}
    assert resp.json()["error_code"] == "method_not_allowed"
    resp = api.delete("/v1/cluster")
    assert {m.strip() for m in resp.headers["allow"].split(",")} >= {"GET", "PUT"}


def test_every_operation_with_parameters_declares_its_400(api):
    doc = api.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if operation.get("parameters") or operation.get("requestBody"):
                assert "400" in operation["responses"], (method, path)
    resp = api.get("/v1/nodes/not-a-number")
    assert resp.status_code == 400 and resp.json()["error_code"] == "invalid_schema"
    assert api.post("/v1/bdbs?dry_run=perhaps", json={"name": "x"}).status_code == 400


# ---- ports -------------------------------------------------------------------------------------

def listener(address: str, port: int) -> socket.socket:
    """A foreign program's socket on address:port (no SO_REUSEADDR, as most programs)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, port))
    sock.listen(1)
    return sock


def test_a_port_a_foreign_process_holds_on_one_node_is_406_naming_the_node(cluster, api):
    port = free_port()
    before = bdbs_in_ccs(cluster)
    with listener(cluster.nodes[2].address, port):
        for path in ("/v1/bdbs", "/v1/bdbs?dry_run=1"):
            resp = api.post(path, json={"name": "taken", "port": port, "memory_size": 8 << 20})
            assert resp.status_code == 406, resp.text
            says = resp.json()["description"]
            assert f"port {port} cannot be bound on node 2" in says and "in use" in says, says
    assert bdbs_in_ccs(cluster) == before
    resp = api.post("/v1/bdbs?dry_run=1", json={"name": "taken", "port": port,
                                                 "memory_size": 8 << 20})
    assert resp.status_code == 200, resp.text


def test_a_port_below_1024_needs_allow_privileged_port(api):
    resp = api.post("/v1/bdbs?dry_run=1", json={"name": "low", "port": 1023})
    assert resp.status_code == 406 and "allow_privileged_port" in resp.json()["description"]
    resp = api.post("/v1/bdbs?dry_run=1", json={"name": "low", "port": 1023,
                                                 "allow_privileged_port": True})
    # past the policy the probe decides: root binds it, anyone else is told why not
    assert resp.status_code in (200, 406), resp.text
    if resp.status_code == 406:
        assert "cannot be bound" in resp.json()["description"]
    assert "allow_privileged_port" not in (resp.json().get("bdb") or {})


def test_a_node_that_cannot_bind_the_port_later_shows_the_endpoint_failed(cluster, api,
                                                                           tmp_path):
    created = api.post("/v1/bdbs", json={"name": "later", "memory_size": 8 << 20})
    assert created.status_code == 200, created.text
    uid, port = created.json()["uid"], created.json()["port"]
    wait_action(api, created.json()["action_uid"])
    node = cluster.nodes[3]
    rpc = supervisor_rpc(node.supervisor_sock)
    rpc.supervisor.stopProcess("dmcproxy")
    try:
        with listener(node.address, port):
            rpc.supervisor.startProcess("dmcproxy")
            endpoint = wait_until(
                lambda: (e := api.get(f"/v1/bdbs/{uid}").json()["endpoints"][0])["status"] ==
                "failed" and e, 30, 0.2, "the endpoint shown failed on node 3")
            assert [f["node_uid"] for f in endpoint["failed_nodes"]] == [3]
            assert "in use" in endpoint["failed_nodes"][0]["reason"]
            shown = subprocess.run([sys.executable, "-m", "control.cli", "db", "show", "later",
                                    "--home", str(cluster.home)], capture_output=True,
                                   text=True, timeout=30)
            assert shown.returncode == 0, shown.stderr
            assert "FAILED on node 3" in shown.stdout and "in use" in shown.stdout
            alert = wait_until(lambda: (a := api.get(f"/v1/bdbs/alerts/{uid}").json()
                                        .get("bdb_endpoint_failed")) and a["state"] and a,
                               30, 0.2, "the alert bdb_endpoint_failed raised")
            assert alert["severity"] == "ERROR" and alert["value"] == 1
        wait_until(lambda: api.get(f"/v1/bdbs/{uid}").json()["endpoints"][0]["status"] ==
                   "active", 30, 0.2, "the endpoint served on node 3 again")
        wait_until(lambda: not api.get(f"/v1/bdbs/alerts/{uid}").json()
                   ["bdb_endpoint_failed"]["state"], 30, 0.2, "the alert cleared")
    finally:
        if rpc.supervisor.getProcessInfo("dmcproxy")["statename"] != "RUNNING":
            rpc.supervisor.startProcess("dmcproxy")
    wait_action(api, api.delete(f"/v1/bdbs/{uid}").json()["action_uid"])


# ---- a removed node -----------------------------------------------------------------------------

def test_a_master_busy_with_a_script_is_not_failed_over(cluster, api):
    """A script runs 4 s on a master shard (under Redis's busy-reply-threshold of 5 s it answers
    nothing, not even -BUSY): node_wd sees its process on the CPU and takes it for busy, not
    dead -- no failover, as one redis-server would stay itself."""
    created = api.post("/v1/bdbs", json={"name": "scripted", "memory_size": 8 << 20,
                                         "replication": True})
    assert created.status_code == 200, created.text
    wait_action(api, created.json()["action_uid"])
    uid = created.json()["uid"]
    master = next(s for s in api.get("/v1/shards").json()
                  if s["bdb_uid"] == uid and s["role"] == "master")
    address = cluster.nodes[master["node_uid"]].address
    spin = ("local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end "
            "local s = now() repeat until now() - s >= 4000000 return 1")
    started = time.monotonic()
    assert redis.Redis(address, master["port"], socket_timeout=30).eval(spin, 0) == 1
    assert time.monotonic() - started >= 4
    assert api.get(f"/v1/shards/{master['uid']}").json()["role"] == "master"
    assert not [a for a in api.get("/v1/actions").json() if a["name"] == "shard_failover"
                and a["object_uid"] == master["uid"]]
    wait_action(api, api.delete(f"/v1/bdbs/{uid}").json()["action_uid"])


def test_a_script_starved_of_the_cpu_is_still_seen_busy(tmp_path):
    """On a loaded machine a looping script gets only its share of a core (here: its main
    thread and three CPU hogs on one core, about a quarter each): node_wd's busy rule counts the time
    it waited for its turn, so it is busy, not dead -- by its CPU time alone it would have been
    failed over."""
    port, proc = start_redis_on_free_port(tmp_path, "--busy-reply-threshold", "100")
    hogs = []
    try:
        busy("127.0.0.1", port)
        core = {min(os.sched_getaffinity(0))}
        os.sched_setaffinity(proc.pid, core)            # the main thread, which runs the script
        # (each in a session of its own: with the kernel's autogroups, CPU time is shared
        # fairly between sessions first)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                 start_new_session=True) for _ in range(3)]
        for hog in hogs:
            os.sched_setaffinity(hog.pid, core)
        started = [_cpu_ticks(hog.pid) for hog in hogs]
        wait_until(lambda: all(_cpu_ticks(h.pid) > t + 10 for h, t in zip(hogs, started)),
                   30, what="the hogs on the CPU")
        demand, ticks = cpu_demand(proc.pid), _cpu_ticks(proc.pid)
        started = time.monotonic()
        time.sleep(1.0)
        elapsed = time.monotonic() - started
        state, wanted = cpu_demand(proc.pid)
        ran = (_cpu_ticks(proc.pid) - ticks) / os.sysconf("SC_CLK_TCK")
        assert state == "R" and wanted - demand[1] >= elapsed * 0.8, (wanted - demand[1], elapsed)
        assert ran < elapsed / 2, ran                  # what the CPU time alone would show
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        proc.kill()
        proc.wait()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_removed_node_stops_every_service_and_does_not_join_again(cluster, api):
    master = cluster.wait_for_master()
    uid = next(u for u in (3, 2) if u != master)
    node = cluster.nodes[uid]
    created = api.post("/v1/bdbs", json={"name": "moves", "memory_size": 8 << 20,
                                         "shards_count": 3})
    assert created.status_code == 200, created.text
    wait_action(api, created.json()["action_uid"])
    removal = api.post(f"/v1/nodes/{uid}/actions/remove")
    assert removal.status_code == 200, removal.text
    wait_action(api, removal.json()["action_uid"], timeout=120)
    wait_until(lambda: processes_under(node.home) == [], 30, 0.2,
               f"every process of node {uid} gone")
    assert node.removed_file.exists()
    assert uid not in {n["uid"] for n in api.get("/v1/nodes").json()}
    time.sleep(3)                       # a node that asked to join again would be back by now
    assert uid not in {n["uid"] for n in api.get("/v1/nodes").json()}
    assert all(s["node_uid"] != uid for s in api.get("/v1/shards").json())
    uid_db = created.json()["uid"]
    wait_action(api, api.delete(f"/v1/bdbs/{uid_db}").json()["action_uid"])


def test_the_master_node_removed_while_down_drains_and_does_not_come_back(cluster):
    """The master node is stopped (as `dmc node remove` of the master does) and removed through
    another node: its shards, on a node that is down, move off (the drain does not stall); when
    it is started again it learns it is no member and stops every service of its own."""
    cluster.add_node()                            # three members again (one was removed above)
    master = cluster.wait_for_master()
    node = cluster.nodes[master]
    other = next(u for u in cluster.nodes if u != master and not cluster.nodes[u]
                 .removed_file.exists())
    with rest_client(cluster, timeout=15, node=other) as api:
        created = api.post("/v1/bdbs", json={"name": "on-master", "memory_size": 8 << 20,
                                             "shards_count": 2, "replication": True})
        assert created.status_code == 200, created.text
        wait_action(api, created.json()["action_uid"])
        on_it = [s for s in api.get("/v1/shards").json() if s["node_uid"] == master]
        assert on_it, "a shard of the database on the master node"
        cluster.stop_node(master)
        cluster.wait_for_master(among=[u for u in cluster.nodes if u != master])
        removal = wait_until(lambda: (r := api.post(f"/v1/nodes/{master}/actions/remove"))
                             .status_code == 200 and r, 30, 0.5, "the removal accepted")
        wait_action(api, removal.json()["action_uid"], timeout=120)
        shards = [s for s in api.get("/v1/shards").json()
                  if s["bdb_uid"] == created.json()["uid"]]
        assert all(s["node_uid"] != master for s in shards)
        assert len(shards) == 4                   # no copy left behind by the move
        assert master not in {n["uid"] for n in api.get("/v1/nodes").json()}

        cluster.start_node(master)                # down during its removal: never told
        wait_until(lambda: node.removed_file.exists() and processes_under(node.home) == [],
                   30, 0.2, f"node {master} stopped itself")
        assert master not in {n["uid"] for n in api.get("/v1/nodes").json()}
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "control.cli", "status", "--json", "--home",
             str(cluster.home)], capture_output=True, text=True, timeout=30).stdout)
        assert master not in {row["node"] for row in status["nodes"] if row["state"] == "OK"}
        uid_db = created.json()["uid"]
        wait_action(api, api.delete(f"/v1/bdbs/{uid_db}").json()["action_uid"])


# ---- a busy shard is stopped all the same ------------------------------------------------------

def busy(host: str, port: int, script: str = "while true do end") -> None:
    """A client runs a script that never ends on the redis-server at host:port."""
    def run():
        try:
            redis.Redis(host, port, socket_timeout=60).eval(script, 0)
        except redis.RedisError:
            pass            # the server went away under it
    threading.Thread(target=run, daemon=True).start()
    wait_until(lambda: _busy_at(host, port), 10, 0.05, "the script running")


@pytest.mark.parametrize("script, how", [
    ("while true do end", "SCRIPT KILL"),
    ("redis.call('SET', 'k', 'v') while true do end", "SHUTDOWN NOSAVE"),
], ids=["read-only-script", "script-that-wrote"])
def test_a_redis_server_running_a_script_that_never_ends_is_stopped(tmp_path, script, how):
    port, proc = start_redis_on_free_port(tmp_path, "--busy-reply-threshold", "100")
    try:
        busy("127.0.0.1", port, script)
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(TERM_WAIT)
        assert proc.poll() is None          # SIGTERM alone: it keeps running the script
        started = time.monotonic()
        stop_redis(proc.pid, "127.0.0.1", port, proc=proc)
        took = time.monotonic() - started
        assert proc.poll() is not None and took < KILL_GRACE, took
        log = (tmp_path / f"redis-{port}.log").read_text()
        if how == "SCRIPT KILL":
            assert "Script killed by user with SCRIPT KILL" in log or "killed" in log.lower()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_shard_that_has_not_written_its_pid_file_is_stopped_with_its_node(tmp_path):
    """redis_mgr may start a shard just as its node stops: the shard's pid file is not written
    yet when the node's shards are stopped (redis_mgr.stop_all), and it must not outlive them."""
    config = NodeConfig(uid=1, address="127.0.0.1", home=str(tmp_path / "node-1"), ccs_port=0,
                        gossip_port=0, ccs_forward_port=0)
    folder = config.shards_dir / "7"
    folder.mkdir(parents=True)
    port = free_port("127.0.0.1")
    proc = subprocess.Popen([REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port),
                             "--dir", str(folder), "--save", ""], cwd=folder,
                            stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis.Redis("127.0.0.1", port).ping(), 10,
                   what="the shard answering", ignoring=(redis.RedisError,))
        assert not (folder / "redis.pid").exists()
        redis_mgr.stop_all(config)
        assert proc.wait(timeout=KILL_GRACE) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cluster_delete_stops_a_busy_shard_and_refuses_while_a_process_of_it_runs(cluster):
    """Last: it stops the module's cluster."""
    with rest_client(cluster, timeout=15, node=member(cluster)) as api:
        _busy_shard_and_delete(cluster, api)


def member(cluster) -> int:
    """A node of the module's cluster that was not removed (node 1 may have been)."""
    return next(u for u, c in sorted(cluster.nodes.items()) if not c.removed_file.exists())


def _busy_shard_and_delete(cluster, api) -> None:
    created = api.post("/v1/bdbs", json={"name": "busy", "memory_size": 8 << 20})
    assert created.status_code == 200, created.text
    wait_action(api, created.json()["action_uid"])
    shards = [s for s in api.get("/v1/shards").json() if s["bdb_uid"] == created.json()["uid"]]
    node = cluster.nodes[shards[0]["node_uid"]]
    shard_pid = int((node.shards_dir / str(shards[0]["uid"]) / "redis.pid").read_text())
    with redis.Redis(node.address, shards[0]["port"]) as r:
        r.config_set("busy-reply-threshold", 100)
    busy(node.address, shards[0]["port"])
    stray = subprocess.Popen(["sleep", "60"], cwd=node.home)     # a process of the node's folder
    try:
        with pytest.raises(ClusterError, match=f"pids {stray.pid}"):
            cluster.delete()
        assert not pid_alive(shard_pid)            # the busy shard was stopped all the same
        assert (cluster.home / "cluster.json").exists()   # and nothing was deleted
    finally:
        stray.kill()
        stray.wait()
    assert processes_under(cluster.home) == []


def _busy_at(host: str, port: int) -> bool:
    try:
        redis.Redis(host, port, socket_timeout=1).ping()
        return False
    except redis.ResponseError as exc:
        return "BUSY" in str(exc)
    except redis.RedisError:
        return False
