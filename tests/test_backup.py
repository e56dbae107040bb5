"""Backups on one real 3-node cluster shared by the module: an RDB per shard read from the
replicas, with a manifest, listed and shown by the REST API and the CLI; restored into a database
of another shard count with every key, value, type and expiry; an RDB of a plain redis-server
imported; backups that happen by themselves every `backup_interval`; the REST API's refusals."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from clusters import rest_cluster
from waiting import wait_until

from control import shard_link
from control.cli import main
from control.node import NodeConfig, supervisor_rpc
from dmc.local import start_redis_on_free_port
from dmc.processes import stop_process

pytestmark = pytest.mark.timeout(120)

FIRST_ADDRESS = "127.0.0.121"     # other modules' clusters use other addresses
TTL_SLACK_MS = 2000               # a restored expiry may move by the time a copy takes


class Rest:
    """One node's REST API."""

    def __init__(self, config, auth):
        self.client = httpx.Client(base_url=f"http://{config.address}:{config.rest_port}",
                                   auth=auth, timeout=10)

    def __getattr__(self, method):
        return getattr(self.client, method)

    def wait_action(self, uid: str, timeout=60.0) -> dict:
        return wait_until(lambda: (a := self.get(f"/v1/actions/{uid}").json())["status"] in
                          ("completed", "failed") and a, timeout, 0.05, f"action {uid}")

    def run(self, method, path, body=None) -> dict:
        """A change that must be accepted and complete; the completed action. Tried again
        while the database is locked (409: a scheduled backup is running), as a client does."""
        resp = wait_until(lambda: (r := self.request(method, path, json=body)).status_code
                          != 409 and r, 30, 0.2, f"{method} {path} accepted")
        assert resp.status_code == 200, resp.text
        action = self.wait_action(resp.json()["action_uid"])
        assert action["status"] == "completed", action
        return action

    def create(self, **body) -> dict:
        resp = self.post("/v1/bdbs", json={"memory_size": 32 << 20, **body})
        assert resp.status_code == 200, resp.text
        assert self.wait_action(resp.json()["action_uid"])["status"] == "completed"
        return self.get(f"/v1/bdbs/{resp.json()['uid']}").json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("backup") / "cluster", FIRST_ADDRESS) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster) -> Rest:
    return Rest(cluster.nodes[1], cluster.admin_login())


def client(cluster, bdb: dict, node: int = 1, **kw) -> redis.Redis:
    return redis.Redis(cluster.nodes[node].address, bdb["port"], socket_timeout=10, protocol=2,
                       **kw)


def fill(r: redis.Redis, n: int = 3000) -> None:
    """n keys of every common type, a third of them with an expiry, some sharing a hash tag."""
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        key = f"{{user{i % 50}}}:k{i}" if i % 7 == 0 else f"k{i}"
        kind = i % 6
        if kind == 0:
            pipe.set(key, f"value-{i}" * (i % 5 + 1))
        elif kind == 1:
            pipe.hset(key, mapping={"a": i, "b": f"x{i}"})
        elif kind == 2:
            pipe.rpush(key, *range(i % 9 + 1))
        elif kind == 3:
            pipe.sadd(key, *(f"m{j}" for j in range(i % 4 + 1)))
        elif kind == 4:
            pipe.zadd(key, {f"z{j}": j * 1.5 for j in range(i % 5 + 1)})
        else:
            pipe.xadd(key, {"field": i})
        if i % 3 == 0:
            pipe.expire(key, 1000 + i)
    pipe.execute()


def contents(r: redis.Redis) -> dict[bytes, tuple]:
    """Every key of the database: (type, value, absolute expiry in ms or -1)."""
    keys = list(r.scan_iter(count=1000))
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.type(k)
        pipe.pexpiretime(k)
    meta = pipe.execute()
    readers = {b"string": lambda p, k: p.get(k), b"hash": lambda p, k: p.hgetall(k),
               b"list": lambda p, k: p.lrange(k, 0, -1), b"set": lambda p, k: p.smembers(k),
               b"zset": lambda p, k: p.zrange(k, 0, -1, withscores=True),
               b"stream": lambda p, k: p.xrange(k)}
    for k, kind in zip(keys, meta[::2]):
        readers[kind](pipe, k)
    values = pipe.execute()
    return {k: (kind, value, expiry) for k, kind, expiry, value in
            zip(keys, meta[::2], meta[1::2], values)}


def assert_same(restored: dict, original: dict) -> None:
    assert set(restored) == set(original)
    for key, (kind, value, expiry) in original.items():
        r_kind, r_value, r_expiry = restored[key]
        assert (r_kind, r_value) == (kind, value), key
        if expiry == -1:
            assert r_expiry == -1, key
        else:
            assert abs(r_expiry - expiry) < TTL_SLACK_MS, (key, r_expiry, expiry)


@pytest.fixture(scope="module")
def source(cluster, api):
    """A 2-shard database with replication, filled: {bdb, contents}."""
    bdb = api.create(name="source", shards_count=2, replication=True)
    r = client(cluster, bdb)
    fill(r)
    return {"bdb": bdb, "contents": contents(r)}


@pytest.fixture(scope="module")
def backup(api, source) -> dict:
    """A backup of `source` taken through the REST API: the completed action."""
    return api.run("POST", f"/v1/bdbs/{source['bdb']['uid']}/actions/backup")


@pytest.fixture(scope="module")
def plain_rdb(tmp_path_factory) -> tuple[Path, dict]:
    """The RDB file of a plain redis-server (stopped), and what it held."""
    folder = tmp_path_factory.mktemp("plain")
    port, proc = start_redis_on_free_port(folder)
    try:
        r = redis.Redis("127.0.0.1", port, protocol=2)
        fill(r, 500)
        r.set("expired-soon", "x", px=1)
        wait_until(lambda: not r.exists("expired-soon"), what="the key expired")
        held = contents(r)
        r.save()
        r.close()
    finally:
        stop_process(proc)
    return folder / "dump.rdb", held


# ---- taking a backup -------------------------------------------------------------------------

def test_a_backup_is_an_rdb_per_shard_read_from_the_replicas_with_a_manifest(api, source,
                                                                              backup):
    uid = source["bdb"]["uid"]
    result = backup["result"]
    assert result["files"] == 2 and result["keys"] == len(source["contents"])
    listed = api.get(f"/v1/bdbs/{uid}/backups").json()
    assert [b["backup_id"] for b in listed] == [result["backup_id"]]
    (b,) = listed
    assert api.get(f"/v1/bdbs/{uid}/backups/{b['backup_id']}").json() == b
    assert (b["bdb_uid"], b["name"], b["status"], b["scheduled"]) == (uid, "source", "complete",
                                                                       False)
    folder = Path(b["path"])
    assert folder.parent.name == f"source-{uid}" and folder.name == b["backup_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-1.rdb",
                                                        "shard-2.rdb"]
    assert [s["slots"] for s in b["shards"]] == [[[0, 8191]], [[8192, 16383]]]
    for s in b["shards"]:
        data = (folder / s["file"]).read_bytes()
        assert data.startswith(b"REDIS")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (s["bytes"], s["sha256"])
        assert s["role"] == "replica"          # the master shards wrote nothing
    assert sum(s["keys"] for s in b["shards"]) == len(source["contents"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    record = api.get(f"/v1/bdbs/{uid}").json()
    assert (record["last_backup_id"], record["backup_status"]) == (b["backup_id"], "succeeded")
    assert record["last_backup_time"] == b["time"]
    assert record["backup_location"] == str(folder.parent.parent)


def test_a_backup_restores_into_a_database_of_another_shard_count(cluster, api, source,
                                                                  backup):
    restored = api.create(name="restored", shards_count=3)
    action = api.run("POST", f"/v1/bdbs/{restored['uid']}/actions/import",
                     {"backup_id": backup["result"]["backup_id"],
                      "from_bdb_uid": source["bdb"]["uid"]})
    assert action["result"] == {"keys": len(source["contents"]), "files": 2}
    assert_same(contents(client(cluster, restored, node=2)), source["contents"])
    # the temporary redis-servers that loaded the files are gone with their folders
    master = cluster.nodes[cluster.wait_for_master()]
    assert not list((master.dir / "tmp").glob("import-*"))
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and
                action["action_uid"].encode() in _cmdline(pid)]


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_an_rdb_of_a_plain_redis_server_imports_into_a_database(cluster, api, plain_rdb):
    path, held = plain_rdb
    target = api.create(name="plain", shards_count=2)
    r = client(cluster, target)
    r.set("there-before", "1")
    action = api.run("POST", f"/v1/bdbs/{target['uid']}/actions/import",
                     {"rdb_path": str(path), "flush": True})
    assert action["result"]["keys"] == len(held)
    now = contents(r)
    assert b"there-before" not in now and b"expired-soon" not in now
    assert_same(now, held)


@contextlib.contextmanager
def shard_ping_deadline(cluster, seconds: float):
    """node_wd of every node restarted with this PING deadline (node.json's
    shard_ping_deadline); the one before restored after."""
    def apply(value: float) -> float:
        before = None
        for config in cluster.nodes.values():
            saved = NodeConfig.load(config.dir)
            before, saved.shard_ping_deadline = saved.shard_ping_deadline, value
            saved.save()
            rpc = supervisor_rpc(config.supervisor_sock).supervisor
            rpc.stopProcess("node_wd")
            rpc.startProcess("node_wd")
        return before
    before = apply(seconds)
    try:
        yield
    finally:
        apply(before)


def test_a_backup_gives_way_to_the_failover_of_a_master_shard_that_dies(cluster, api):
    with shard_ping_deadline(cluster, 30):
        # node_wd would fail the stopped master over as unresponsive before the backup reads
        # it on a loaded machine; killed, it is failed over as down at once
        _backup_while_the_master_dies(cluster, api)


def _backup_while_the_master_dies(cluster, api):
    bdb = api.create(name="fragile", replication=True)
    client(cluster, bdb).set("survives", "yes")
    shards = [s for s in api.get("/v1/shards").json() if s["bdb_uid"] == bdb["uid"]]
    master = next(s for s in shards if s["role"] == "master")
    replica = next(s for s in shards if s["role"] == "replica")
    on_replica = redis.Redis(cluster.nodes[replica["node_uid"]].address, replica["port"])
    wait_until(lambda: on_replica.get("survives"), 10, what="the write on the replica")
    # A stopped master answers nothing: the backup does not trust the replica it cannot compare
    # with it, and waits on the master itself, as it would on a big one.
    os.kill(master["pid"], signal.SIGSTOP)
    try:
        resp = api.post(f"/v1/bdbs/{bdb['uid']}/actions/backup")
        assert resp.status_code == 200, resp.text
        # its argv, exactly: its port, or its unix socket if cnm_exec runs on its node
        socket_path = shard_link.socket_path(cluster.nodes[master["node_uid"]].shards_dir,
                                             master["uid"])
        readings = (b"\0-p\0%d\0--rdb\0" % master["port"],
                    b"\0-s\0%s\0--rdb\0" % os.fsencode(socket_path))
        wait_until(lambda: any(r in c for c in map(_cmdline, os.listdir("/proc"))
                               for r in readings), 10, 0.05, "redis-cli reading the master shard")
    finally:
        os.kill(master["pid"], signal.SIGKILL)
    killed = time.monotonic()
    action = api.wait_action(resp.json()["action_uid"], 10)
    assert action["status"] == "failed"
    assert f"master shards [{master['uid']}] went down" in action["error"]
    wait_until(lambda: api.get(f"/v1/shards/{replica['uid']}").json()["role"] == "master", 10,
               0.05, "the failover")
    assert time.monotonic() - killed < 5
    assert wait_until(lambda: _get(client(cluster, bdb), "survives"), 10) == b"yes"
    record = api.get(f"/v1/bdbs/{bdb['uid']}").json()
    assert record["backup_status"] == "failed" and "went down" in record["backup_failure_reason"]
    assert api.get(f"/v1/bdbs/{bdb['uid']}/backups").json() == []
    folder = Path(record["backup_location"]) / f"fragile-{bdb['uid']}"
    wait_until(lambda: not folder.exists() or not list(folder.iterdir()), 10, 0.1,
               "nothing half-made left")


def _get(r: redis.Redis, key: str):
    try:
        return r.get(key)
    except redis.RedisError:
        return None


# ---- scheduled backups -----------------------------------------------------------------------

def test_backups_happen_by_themselves_every_backup_interval(cluster, api):
    bdb = api.create(name="ticking", backup_interval=2)
    client(cluster, bdb).set("tick", "tock")

    def scheduled():
        found = [b for b in api.get(f"/v1/bdbs/{bdb['uid']}/backups").json() if b["scheduled"]]
        return len(found) >= 2 and found
    found = wait_until(scheduled, 20, 0.2, "two scheduled backups")
    assert found[1]["time"] - found[0]["time"] >= 2
    assert all(b["keys"] == 1 for b in found)
    assert api.get(f"/v1/bdbs/{bdb['uid']}").json()["last_backup_time"] >= found[1]["time"]

    api.run("PUT", f"/v1/bdbs/{bdb['uid']}", {"backup_interval": 0})
    wait_until(lambda: all(a["status"] in ("completed", "failed")
                           for a in api.get("/v1/actions").json()), 20, what="no running action")
    count = len(api.get(f"/v1/bdbs/{bdb['uid']}/backups").json())
    time.sleep(3.5)         # the behaviour under test: longer than the old interval, no backup
    assert len(api.get(f"/v1/bdbs/{bdb['uid']}/backups").json()) == count


# ---- refusals ----------------------------------------------------------------------------------

def test_the_rest_api_refuses_bad_backups_and_imports_with_the_reason(api, source, backup,
                                                                      tmp_path):
    uid = source["bdb"]["uid"]
    not_rdb = tmp_path / "notes.txt"
    not_rdb.write_text("hello")
    cases = [
        ("post", "/v1/bdbs/999/actions/backup", None, 404, "bdb 999 does not exist"),
        ("get", "/v1/bdbs/999/backups", None, 404, "bdb 999 does not exist"),
        ("get", f"/v1/bdbs/{uid}/backups/20000101-000000-abcd", None, 404,
         "backup 20000101-000000-abcd does not exist"),
        ("post", "/v1/bdbs/999/actions/import", {"rdb_path": str(not_rdb)}, 404,
         "bdb 999 does not exist"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {"rdb_path": "/no/such/dump.rdb"}, 404,
         "/no/such/dump.rdb does not exist"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {"rdb_path": str(not_rdb)}, 400,
         "is not an RDB file"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {"rdb_path": "dump.rdb"}, 400,
         "not an absolute path"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {"backup_path": str(tmp_path)}, 400,
         "is not a backup"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {"backup_id": "20000101-000000-abcd"}, 404,
         "backup 20000101-000000-abcd of database"),
        ("post", f"/v1/bdbs/{uid}/actions/import", {}, 400, "give exactly one of"),
        ("post", f"/v1/bdbs/{uid}/actions/import",
         {"backup_id": backup["result"]["backup_id"], "rdb_path": "/x"}, 400,
         "give exactly one of"),
        ("post", f"/v1/bdbs/{uid}/actions/backup", {"location": str(not_rdb)}, 406,
         "is a file, not a folder"),
        ("put", f"/v1/bdbs/{uid}", {"backup_interval": -1}, 400, "backup_interval"),
    ]
    for method, path, body, status, says in cases:
        resp = api.request(method, path, json=body)
        assert resp.status_code == status, (path, body, resp.text)
        assert says in resp.json()["description"], (path, body, resp.text)
    for method, path in [("post", f"/v1/bdbs/{uid}/actions/backup"),
                         ("get", f"/v1/bdbs/{uid}/backups"),
                         ("get", f"/v1/bdbs/{uid}/backups/{backup['result']['backup_id']}"),
                         ("post", f"/v1/bdbs/{uid}/actions/import")]:
        resp = httpx.request(method, f"{api.base_url}{path}", json={"rdb_path": str(not_rdb)})
        assert resp.status_code == 401, (path, resp.text)
    assert backup["result"]["backup_id"] in [b["backup_id"] for b in
                                             api.get(f"/v1/bdbs/{uid}/backups").json()]


def test_an_import_of_a_backup_whose_file_changed_fails_before_loading(cluster, api, source,
                                                                       backup, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(backup["result"]["path"], copy)
    data = bytearray((copy / "shard-2.rdb").read_bytes())
    data[-20] ^= 0xFF
    (copy / "shard-2.rdb").write_bytes(bytes(data))
    target = api.create(name="untouched")
    client(cluster, target).set("mine", "1")
    resp = api.post(f"/v1/bdbs/{target['uid']}/actions/import", json={"backup_path": str(copy)})
    assert resp.status_code == 200, resp.text
    action = api.wait_action(resp.json()["action_uid"])
    assert action["status"] == "failed"
    assert "shard-2.rdb is not the file the backup wrote" in action["error"]
    assert client(cluster, target).keys("*") == [b"mine"]


def test_openapi_documents_the_backup_paths_and_models(api):
    doc = api.get("/openapi.json").json()
    assert {"/v1/bdbs/{uid}/actions/backup", "/v1/bdbs/{uid}/backups",
            "/v1/bdbs/{uid}/backups/{backup_id}", "/v1/bdbs/{uid}/actions/import"} <= \
        set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"Backup", "BackupShard", "ImportRequest"} <= set(schemas)
    assert {"backup_interval", "backup_location"} <= set(schemas["BdbSettings"]["properties"])
    assert "last_backup_time" in schemas["Bdb"]["properties"]


# ---- the CLI -----------------------------------------------------------------------------------

def test_the_cli_backs_up_lists_shows_restores_and_imports(cluster, source, plain_rdb):
    runner = CliRunner()

    def dmc(*args):
        return runner.invoke(main, [*args, "--home", str(cluster.home)])

    made = dmc("backup", "create", "source")
    assert made.exit_code == 0, made.output
    first = made.stdout.splitlines()[0].split()
    assert first[0] == "backup" and first[2:] == ["of", "database", str(source["bdb"]["uid"]) +
                                                  ":", str(len(source["contents"])), "keys",
                                                  "in", "2", "RDB", "files"]
    backup_id = first[1]
    listed = dmc("backup", "list", "source")
    assert listed.exit_code == 0
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(backup_id))
    assert row[3:5] == ["2", str(len(source["contents"]))] and row[-2:] == ["on", "demand"]
    shown = dmc("backup", "show", "source", backup_id)
    assert shown.exit_code == 0
    assert sum(line.startswith("shard-") for line in shown.stdout.splitlines()) == 2
    assert json.loads(dmc("backup", "show", "source", backup_id, "--json").stdout)[
        "backup_id"] == backup_id

    restored = dmc("db", "restore", backup_id, "--from-db", "source", "--name", "fromcli",
                   "--shards", "1")
    assert restored.exit_code == 0, restored.output
    lines = restored.stdout.splitlines()
    assert lines[0].endswith(f"(fromcli) restored from backup {backup_id}: "
                             f"{len(source['contents'])} keys")
    assert lines[1].startswith("redis-cli -h ")
    new = next(b for b in json.loads(dmc("db", "list", "--json").stdout)
               if b["name"] == "fromcli")
    assert new["shards_count"] == 1
    assert_same(contents(client(cluster, new)), source["contents"])

    path, held = plain_rdb
    imported = dmc("db", "import", "fromcli", str(path), "--flush")
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip() == f"database {new['uid']}: {len(held)} keys loaded from {path}"
    assert_same(contents(client(cluster, new)), held)

    for args, line in [
        (("backup", "show", "source", "nope"), "error: backup nope does not exist"),
        (("db", "import", "fromcli", "/no/such.rdb"), "error: /no/such.rdb does not exist"),
        (("db", "restore", "nope", "--name", "x"),
         "error: no folder nope: give --from-db for a backup id"),
        (("backup", "create", "nosuch"), "error: no database named 'nosuch'"),
    ]:
        out = dmc(*args)
        assert (out.exit_code, out.stderr, out.stdout) == (1, line + "\n", ""), args
