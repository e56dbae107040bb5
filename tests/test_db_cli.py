"""`dmc db|shard|action` and the databases in `dmc status`, as an operator uses them against one
real 3-node cluster shared by the module: changes follow their action to the end (exit 0, or 1
with the action's error), errors are one line `error: ...` with exit 1, a node whose API is down
is skipped. Most commands run in-process (click's runner); those that check what a real process
prints run `python -m control.cli`."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys

import pytest
import redis
from click.testing import CliRunner
from clusters import rest_cluster

from control import ccs, db_cli, schema
from control.local_cluster import LocalCluster
from control.node import supervisor_rpc
from control.sealing import reveal_text
from control.cli import main

pytestmark = pytest.mark.timeout(120)

FIRST_ADDRESS = "127.0.0.81"      # other modules' clusters use other addresses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("dbcli") / "cluster", FIRST_ADDRESS) as c:
        yield c


@pytest.fixture(scope="module")
def dmc(cluster):
    """`dmc ARGS --home <cluster>` in-process: the click result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, [*args, "--home", str(cluster.home)])
    return run


def dmc_process(cluster, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", *args, "--home", str(cluster.home)],
                          capture_output=True, text=True, timeout=60, check=False)


def ccs_master(cluster) -> redis.Redis:
    master = cluster.nodes[cluster.wait_for_master()]
    return redis.Redis(master.address, master.ccs_port, socket_timeout=2, protocol=2)


def bdbs_by_name(cluster) -> dict[str, dict]:
    return {b["name"]: b for b in (ccs.unpack(v) for v in
                                   ccs_master(cluster).hgetall(schema.BDBS).values())}


@pytest.fixture(scope="module")
def cache(dmc, cluster):
    """A 2-shard database created with `dmc db create`: the click result and its record."""
    result = dmc("db", "create", "cache", "--shards", "2", "--memory", "64MB",
                 "--eviction-policy", "allkeys-lru")
    return result, bdbs_by_name(cluster).get("cache")


# ---- create, list, show, status ---------------------------------------------------------------

def test_db_create_waits_for_the_action_and_prints_the_redis_cli_line(cache):
    result, record = cache
    assert result.exit_code == 0, result.output
    assert record["status"] == "active" and record["shards_count"] == 2
    assert (record["memory_size"], record["eviction_policy"]) == (64 << 20, "allkeys-lru")
    assert "100%" in result.stderr and "bdb_create" in result.stderr       # the progress bar
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"database {record['uid']} (cache) is active on port {record['port']}"
    cli = shlex.split(lines[-1])
    assert cli[0] == "redis-cli" and cli[cli.index("-p") + 1] == str(record["port"])
    out = subprocess.run(cli, input="SET greeting hello\nGET greeting\n", capture_output=True,
                         text=True, timeout=10, check=False)
    assert out.stdout.split() == ["OK", "hello"], out.stdout + out.stderr


def test_db_list_and_show_find_the_database_by_uid_and_by_name(dmc, cache):
    _, record = cache
    listed = dmc("db", "list")
    assert listed.exit_code == 0
    row = next(line.split() for line in listed.stdout.splitlines()[1:]
               if line.split()[1] == "cache")
    assert row == [str(record["uid"]), "cache", str(record["port"]), "2", "disabled",
                   "disabled", "active", "64MB"]
    by_name, by_uid = dmc("db", "show", "cache"), dmc("db", "show", str(record["uid"]))
    assert by_name.exit_code == by_uid.exit_code == 0
    assert by_name.stdout == by_uid.stdout
    assert "memory_size:                64MB (67108864 bytes)" in by_name.stdout
    shown = json.loads(dmc("db", "show", "cache", "--json").stdout)
    assert shown["uid"] == record["uid"] and len(shown["shard_list"]) == 2


def test_dmc_status_shows_databases_and_shards_like_rladmin(dmc, cache):
    _, record = cache
    out = dmc("status")
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "\nDATABASES:\n" in text and "\nSHARDS:\n" in text
    databases = text.split("DATABASES:\n")[1].split("\n\nSHARDS:")[0].splitlines()
    assert databases[0].split() == ["DB:ID", "NAME", "PORT", "SHARDS", "REPLICATION", "STATUS",
                                    "MEMORY"]
    assert f"db:{record['uid']} cache {record['port']} 2 disabled active 64MB".split() in \
        [line.split() for line in databases[1:]]
    shards = [line.split() for line in text.split("SHARDS:\n")[1].splitlines()[1:]]
    mine = [s for s in shards if s[0] == f"db:{record['uid']}"]
    assert sorted(s[5] for s in mine) == ["0-8191", "8192-16383"]
    assert all(s[3] == "master" and s[6] == "running" for s in mine)
    as_json = json.loads(dmc("status", "--json").stdout)
    assert {"db": record["uid"], "name": "cache", "port": record["port"], "shards": 2,
            "replication": False, "status": "active", "memory": 64 << 20} in as_json["databases"]
    assert len([s for s in as_json["shards"] if s["db"] == record["uid"]]) == 2


# ---- changes ---------------------------------------------------------------------------------

def test_db_update_changes_only_what_is_given(dmc, cluster, cache):
    _, record = cache
    result = dmc("db", "update", "cache", "--memory", "128MB", "--password", "s3cret")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"database {record['uid']} updated"
    now = bdbs_by_name(cluster)["cache"]
    sealed = now["authentication_redis_pass"]    # CCS holds it sealed under the cluster's key
    assert sealed.startswith("sealed:") and "s3cret" not in sealed
    assert (now["memory_size"], reveal_text(cluster.nodes[1].dir, sealed),
            now["eviction_policy"]) == (128 << 20, "s3cret", "allkeys-lru")
    assert "(set)" in dmc("db", "show", "cache").stdout          # the password is not shown
    nothing = dmc("db", "update", "cache")
    assert nothing.exit_code == 1
    assert nothing.stderr.startswith("error: give at least one setting")


def test_db_create_dry_run_shows_the_placement_and_creates_nothing(dmc, cluster):
    result = dmc("db", "create", "planned", "--shards", "2", "--replication", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: would start bdb_create"
    assert len([line for line in lines if line.startswith("  shard ")]) == 2
    assert all("replica on node" in line for line in lines[1:3])
    assert "planned" not in bdbs_by_name(cluster)


def test_no_wait_returns_with_the_action_and_action_show_follows_it(dmc, cluster):
    result = dmc("db", "create", "later", "--memory", "8MB", "--no-wait")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("action ") and first.endswith("started (dmc action show "
                                                          f"{first.split()[1]})")
    action_uid = first.split()[1]
    followed = dmc("action", "show", action_uid, "--wait")
    assert followed.exit_code == 0, followed.output
    assert "status:         completed" in followed.stdout
    listed = dmc("action", "list")
    assert any(line.startswith(action_uid) and "bdb_create" in line and "completed" in line
               for line in listed.stdout.splitlines())
    deleted = dmc("db", "delete", "later")
    assert deleted.exit_code == 0, deleted.output
    assert "later" not in bdbs_by_name(cluster)


def test_shard_migrate_moves_a_replica_and_refuses_its_masters_node(dmc, cluster):
    created = dmc("db", "create", "paired", "--memory", "16MB", "--replication")
    assert created.exit_code == 0, created.output
    uid = bdbs_by_name(cluster)["paired"]["uid"]
    shards = json.loads(dmc("shard", "list", "--db", "paired", "--json").stdout)
    master = next(s for s in shards if s["role"] == "master")
    replica = next(s for s in shards if s["role"] == "replica")
    refused = dmc("shard", "migrate", str(replica["uid"]), "--to-node", str(master["node_uid"]))
    assert refused.exit_code == 1
    assert refused.stderr == (f"error: node {master['node_uid']} holds shard {master['uid']}, "
                              f"the master of shard {replica['uid']}\n")
    free = ({1, 2, 3} - {master["node_uid"], replica["node_uid"]}).pop()
    moved = dmc("shard", "migrate", str(replica["uid"]), "--to-node", str(free))
    assert moved.exit_code == 0, moved.output
    now = [s for s in json.loads(dmc("shard", "list", "--json").stdout) if s["bdb_uid"] == uid]
    assert sorted((s["role"], s["node_uid"]) for s in now) == \
        sorted([("master", master["node_uid"]), ("replica", free)])


# ---- errors ----------------------------------------------------------------------------------

def test_api_errors_are_one_line_and_exit_1(dmc, cluster, cache):
    _, record = cache
    cases = [
        (("db", "create", "cache"), f"error: name 'cache' is used by database {record['uid']}"),
        (("db", "show", "nosuch"), "error: no database named 'nosuch'"),
        (("db", "show", "999"), "error: bdb 999 does not exist"),
        (("db", "reshard", "cache", "--shards", "3"),
         "error: shards_count must be a multiple of the current 2 (asked 3)"),
        (("shard", "failover", "999"), "error: shard 999 does not exist"),
        (("action", "show", "nope"), "error: action nope does not exist"),
    ]
    for args, line in cases:
        out = dmc(*args)
        assert (out.exit_code, out.stderr, out.stdout) == (1, line + "\n", ""), args
    # and so in a real process: no traceback
    out = dmc_process(cluster, *cases[0][0])
    assert (out.returncode, out.stderr, out.stdout) == (1, cases[0][1] + "\n", "")


def test_a_failed_action_exits_1_with_its_error(dmc, cluster):
    # an action cnm_exec cannot run (unknown name) is marked failed with a reason
    action = schema.new_action("bogus_machine", "bdb", None, {})
    ccs_master(cluster).hset(schema.ACTIONS, action.action_uid, ccs.pack(action))
    result = dmc("action", "show", action.action_uid, "--wait")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == \
        "error: bogus_machine failed: unknown action bogus_machine"


def test_a_node_whose_api_is_down_is_skipped(dmc, cluster, cache):
    rpc = supervisor_rpc(cluster.nodes[1].supervisor_sock).supervisor
    rpc.stopProcess("cnm_http")
    try:
        result = dmc("db", "list")
        assert result.exit_code == 0, result.output
        assert "cache" in result.stdout
    finally:
        rpc.startProcess("cnm_http")


def test_no_node_answering_is_one_line_too(tmp_path, cluster, monkeypatch):
    monkeypatch.setattr(db_cli, "CONNECT_PATIENCE", 0.5)
    runner = CliRunner()
    # the cluster's folder as another machine might have it, with REST ports nothing listens on
    copy = LocalCluster(tmp_path, {u: dataclasses.replace(c, home=str(tmp_path / f"node-{u}"),
                                                          rest_port=1)
                                   for u, c in cluster.nodes.items()})
    for config in copy.nodes.values():
        config.save()
    copy.save()
    copy.admin_file.write_text(cluster.admin_file.read_text())
    out = runner.invoke(main, ["db", "list", "--home", str(tmp_path)])
    assert out.exit_code == 1
    assert out.stderr.startswith("error: no node's REST API answered (node 1:")
    assert len(out.stderr.splitlines()) == 1
