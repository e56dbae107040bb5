"""Users, roles and Redis ACLs as Redis Enterprise manages them, on one real 3-node cluster
shared by the module: every REST route asked by a user of every management role (403 exactly
where the role may not act), a database's roles_permissions turned into ACL users on its shards
(NOPERM through the proxy as from one redis-server with the same ACL), password changes, failed
logins locked out and logged, and no password in a log, a CCS value, a command line or a file
others may read."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import httpx
import pytest
import redis
from clusters import DATABASE_SERVICES, rest_client, rest_cluster
from waiting import wait_until

from control import access, cnm_http, rest_access
from control.node import NodeConfig
from dmc.local import redis_servers

pytestmark = pytest.mark.timeout(180)

FIRST_ADDRESS = "127.0.1.11"
PASSWORD = "S3cret-pass-for-tests"          # every test user's; scanned for at the end
ROLES = ("none", "db_viewer", "db_member", "cluster_viewer", "cluster_member", "admin")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with rest_cluster(tmp_path_factory.mktemp("access") / "cluster", FIRST_ADDRESS,
                      timeout=120, services=DATABASE_SERVICES) as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster) -> httpx.Client:
    return rest_client(cluster)


def as_user(cluster, name: str, password: str = PASSWORD) -> httpx.Client:
    config = cluster.nodes[1]
    return httpx.Client(base_url=f"http://{config.address}:{config.rest_port}",
                        auth=(name, password), timeout=30)


@pytest.fixture(scope="module")
def role_users(cluster, admin) -> dict[str, httpx.Client]:
    """One user per management role, named after it."""
    out = {}
    for role in ROLES:
        reply = admin.post("/v1/users", json={"name": f"u-{role}", "password": PASSWORD,
                                              "role": role})
        assert reply.status_code == 200, reply.text
        out[role] = as_user(cluster, f"u-{role}")
    return out


def wait_action(client, uid: str) -> dict:
    action = wait_until(lambda: (a := client.get(f"/v1/actions/{uid}").json())["status"]
                        in ("completed", "failed") and a, 90, 0.1, f"action {uid}")
    assert action["status"] == "completed", action
    return action


def app_routes() -> set[tuple[str, str]]:
    config = NodeConfig(uid=1, address="127.0.0.1", home="/nonexistent", ccs_port=1,
                        gossip_port=2, ccs_forward_port=3)
    app = cnm_http.CnmHttp(config).app
    return {(m, r.path) for r in app.routes for m in (getattr(r, "methods", None) or ())
            if m != "HEAD"}


def test_every_route_names_the_permission_it_needs():
    assert app_routes() == set(rest_access.ROUTE_PERMISSIONS)


def test_role_matrix_every_route_by_every_role(role_users):
    """Each route, asked by each role with a body the schema refuses or an object that does not
    exist (so nothing changes): 403 exactly for the roles without the route's permission; for
    the others the request gets past the check (a 200, 400 or 404)."""
    wrong = []
    for (method, path), permission in sorted(rest_access.ROUTE_PERMISSIONS.items()):
        url = re.sub(r"\{uid\}", "999999", path).replace("{backup_id}", "none")
        body = {"no_such_field": 1} if method in ("POST", "PUT") else None
        for role, client in role_users.items():
            status = client.request(method, url, json=body).status_code
            may = permission == rest_access.OWN_PASSWORD or \
                role in access.PERMISSIONS[permission]
            if (status == 403) == may or status in (401, 429, 500):
                wrong.append(f"{role} {method} {path}: {status}")
    assert wrong == []


def test_a_403_names_the_user_and_the_permission(role_users):
    reply = role_users["db_viewer"].post("/v1/bdbs", json={"name": "nope"})
    assert reply.status_code == 403
    assert reply.json()["error_code"] == "insufficient_permissions"
    assert "u-db_viewer" in reply.json()["description"]
    assert "edit_bdb" in reply.json()["description"]


def test_users_are_shown_without_their_password_hashes(admin, role_users):
    users = admin.get("/v1/users").json()
    assert {u["name"] for u in users} >= {"admin", *(f"u-{r}" for r in ROLES)}
    for user in users:
        assert "password_hash" not in user and "acl_password" not in user
        assert "password" not in user


def test_bad_users_roles_and_acls_are_refused(admin):
    assert admin.post("/v1/users", json={"name": "default", "password": "x"}).status_code == 406
    assert admin.post("/v1/users", json={"name": "has space", "password": "x"}).status_code == 400
    assert admin.post("/v1/users", json={"name": "r1", "password": "x",
                                          "role_uids": [424242]}).status_code == 406
    assert admin.post("/v1/users", json={"name": "admin", "password": "x"}).status_code == 406
    bad = admin.post("/v1/redis_acls", json={"name": "bad", "acl": "+nosuchcommand"})
    assert bad.status_code == 406 and "Redis refuses" in bad.json()["description"]
    sneaky = admin.post("/v1/redis_acls", json={"name": "pw", "acl": "+@all >letmein"})
    assert sneaky.status_code == 406
    assert admin.delete("/v1/users/1").status_code == 406


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One plain redis-server: what the same ACL answers there."""
    with redis_servers(tmp_path_factory.mktemp("reference"), 1) as [(port, _)]:
        yield redis.Redis("127.0.0.1", port, socket_timeout=5, protocol=2)


def test_roles_permissions_give_database_logins_with_redis_own_acl(cluster, admin, reference):
    rules = "+@read +ping +acl|whoami -keys ~cache:*"
    acl = admin.post("/v1/redis_acls", json={"name": "cache-reader", "acl": rules}).json()
    role = admin.post("/v1/roles", json={"name": "app", "management": "none"}).json()
    user = admin.post("/v1/users", json={"name": "alice", "password": PASSWORD,
                                         "role_uids": [role["uid"]]}).json()
    created = admin.post("/v1/bdbs", json={
        "name": "cache", "shards_count": 2, "roles_permissions": [
            {"role_uid": role["uid"], "redis_acl_uid": acl["uid"]}]})
    assert created.status_code == 200, created.text
    wait_action(admin, created.json()["action_uid"])
    bdb = created.json()
    assert admin.get(f"/v1/bdbs/{bdb['uid']}").json()["roles_permissions"] == [
        {"role_uid": role["uid"], "redis_acl_uid": acl["uid"]}]
    reference.execute_command("ACL", "SETUSER", "alice", "on", f">{PASSWORD}", *rules.split())
    endpoint = redis.Redis(FIRST_ADDRESS, bdb["port"], socket_timeout=5, protocol=2)
    endpoint.set("cache:1", "v")
    reference.set("cache:1", "v")
    for c in (endpoint, reference):
        assert c.execute_command("AUTH", "alice", PASSWORD) is True
        assert c.execute_command("ACL", "WHOAMI") == b"alice"
    seen = {}
    for name, c in (("dmc", endpoint), ("redis", reference)):
        answers = []
        for command in (("GET", "cache:1"), ("GET", "other"), ("SET", "cache:1", "w"),
                        ("KEYS", "*")):
            try:
                answers.append(c.execute_command(*command))
            except redis.ResponseError as exc:
                answers.append(str(exc))
        seen[name] = answers
    assert seen["dmc"] == seen["redis"]
    assert seen["dmc"][0] == b"v" and "no permissions" in seen["dmc"][2]   # NOPERM

    # a new password reaches the shards: the old one is refused, the new one taken
    new_password = PASSWORD + "-2"
    assert admin.put(f"/v1/users/{user['uid']}", json={"password": new_password}
                     ).status_code == 200

    def auth_works(password) -> bool:
        c = redis.Redis(FIRST_ADDRESS, bdb["port"], socket_timeout=5, protocol=2)
        try:
            return c.execute_command("AUTH", "alice", password) is True
        except (redis.AuthenticationError, redis.ResponseError):
            return False
        finally:
            c.close()
    wait_until(lambda: auth_works(new_password) and not auth_works(PASSWORD), 20,
               what="the new password on the shards")

    # the grant taken away: alice is no user of the database any more
    reply = admin.put(f"/v1/bdbs/{bdb['uid']}", json={"roles_permissions": []})
    wait_action(admin, reply.json()["action_uid"])
    wait_until(lambda: not auth_works(new_password), 20, what="alice gone from the shards")
    # a role or an ACL in use cannot be deleted; unused, they can
    assert admin.delete(f"/v1/roles/{role['uid']}").status_code == 406      # alice has it
    assert admin.delete(f"/v1/redis_acls/{acl['uid']}").status_code == 200
    assert admin.delete(f"/v1/users/{user['uid']}").status_code == 200
    assert admin.delete(f"/v1/roles/{role['uid']}").status_code == 200


def test_unknown_roles_in_roles_permissions_are_refused(admin):
    reply = admin.post("/v1/bdbs", json={"name": "x", "roles_permissions": [
        {"role_uid": 4242, "redis_acl_uid": 1}]})
    assert reply.status_code == 406 and "no role 4242" in reply.json()["description"]


def test_the_admin_changes_its_password(cluster, admin):
    name, old = cluster.admin_login()
    new = old + "-changed"
    reply = admin.put("/v1/users/password", json={"username": name, "old_password": "wrong",
                                                  "new_password": new})
    assert reply.status_code == 401
    reply = admin.put("/v1/users/password", json={"username": name, "old_password": old,
                                                  "new_password": new})
    assert reply.status_code == 200, reply.text
    assert as_user(cluster, name, old).get("/v1/cluster").status_code == 401
    changed = as_user(cluster, name, new)
    assert changed.get("/v1/cluster").status_code == 200
    reply = changed.put("/v1/users/password", json={"username": name, "old_password": new,
                                                    "new_password": old})
    assert reply.status_code == 200
    assert admin.get("/v1/cluster").status_code == 200


def test_a_user_changes_only_its_own_password(role_users):
    reply = role_users["db_viewer"].put("/v1/users/password", json={
        "username": "u-admin", "old_password": PASSWORD, "new_password": "x"})
    assert reply.status_code == 403


def test_failed_logins_are_locked_out_and_logged(cluster, admin, role_users):
    assert admin.put("/v1/cluster", json={"login_lockout_threshold": 3,
                                          "login_lockout_duration": 2}).status_code == 200
    try:
        wrong = as_user(cluster, "u-db_member", "not-the-password")
        assert [wrong.get("/v1/bdbs").status_code for _ in range(3)] == [401] * 3
        locked = role_users["db_member"].get("/v1/bdbs")
        assert locked.status_code == 429
        assert locked.json()["error_code"] == "login_locked"
        assert 1 <= int(locked.headers["Retry-After"]) <= 2
        # only that user is locked
        assert role_users["db_viewer"].get("/v1/bdbs").status_code == 200
        wait_until(lambda: role_users["db_member"].get("/v1/bdbs").status_code == 200, 10,
                   0.2, what="the lockout to end")
    finally:
        admin.put("/v1/cluster", json={"login_lockout_threshold": 5,
                                       "login_lockout_duration": 1800})
    log = (cluster.nodes[1].dir / "logs" / "cnm_http.log").read_text()
    assert "failed REST login as 'u-db_member' from 127.0.0.1" in log
    assert "logins as 'u-db_member' are refused for 2s" in log
    assert "not-the-password" not in log


def dmc(cluster, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control.cli", *args, "--home",
                           str(cluster.home)], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_cli_manages_users_roles_and_acls(cluster):
    made = dmc(cluster, "user", "create", "carol", "--role", "db_viewer", "--password-stdin",
               stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    users = json.loads(dmc(cluster, "user", "list", "--json").stdout)
    assert any(u["name"] == "carol" and u["role"] == "db_viewer" for u in users)
    assert as_user(cluster, "carol").get("/v1/bdbs").status_code == 200
    assert dmc(cluster, "role", "create", "ops", "--management", "cluster_viewer"
               ).returncode == 0
    assert dmc(cluster, "acl", "create", "ro", "+@read ~*").returncode == 0
    assert dmc(cluster, "user", "update", "carol", "--roles", "ops").returncode == 0
    assert as_user(cluster, "carol").get("/v1/nodes").status_code == 200   # ops: cluster_viewer
    refused = dmc(cluster, "acl", "create", "bad", "+nosuchcommand")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Redis refuses") and "\n" == refused.stderr[-1]
    assert refused.stderr.count("\n") == 1
    assert dmc(cluster, "user", "delete", "carol").returncode == 0
    assert dmc(cluster, "role", "delete", "ops").returncode == 0
    assert dmc(cluster, "acl", "delete", "ro").returncode == 0


def test_cli_changes_the_admin_password_and_keeps_working(cluster):
    name, old = cluster.admin_login()
    new = old + "-cli"
    changed = dmc(cluster, "user", "password", "--password-stdin", stdin=f"{old}\n{new}\n")
    assert changed.returncode == 0, changed.stderr
    assert cluster.admin_login() == (name, new)
    assert stat.S_IMODE(os.stat(cluster.admin_file).st_mode) == 0o600
    assert dmc(cluster, "user", "list").returncode == 0         # with the new password
    back = dmc(cluster, "user", "password", "--password-stdin", stdin=f"{new}\n{old}\n")
    assert back.returncode == 0, back.stderr


def test_the_database_password_is_sealed_in_ccs(cluster, admin):
    created = admin.post("/v1/bdbs", json={"name": "sealed", "authentication_redis_pass":
                                           PASSWORD})
    assert created.status_code == 200, created.text
    wait_action(admin, created.json()["action_uid"])
    bdb = created.json()
    assert bdb["authentication_redis_pass"] == PASSWORD             # REST shows it, as RE
    master = cluster.nodes[cluster.wait_for_master()]
    raw = redis.Redis(master.address, master.ccs_port, protocol=2).hget("bdbs", str(bdb["uid"]))
    assert PASSWORD.encode() not in raw and b"sealed:" in raw
    c = redis.Redis(FIRST_ADDRESS, bdb["port"], socket_timeout=5, protocol=2)
    with pytest.raises(redis.AuthenticationError):
        c.ping()
    assert redis.Redis(FIRST_ADDRESS, bdb["port"], password=PASSWORD, socket_timeout=5,
                       protocol=2).ping()
    # the same password again changes nothing; another one is sealed too
    # (409 while cnm_exec has yet to release the creation's lock, just after it completed)
    same = wait_until(lambda: (r := admin.put(f"/v1/bdbs/{bdb['uid']}", json={
        "authentication_redis_pass": PASSWORD})).status_code != 409 and r, 20,
        what="the database's lock released")
    assert same.status_code == 200 and same.json().get("action_uid") is None, same.text


def test_no_secret_in_logs_ccs_command_lines_or_readable_files(cluster, admin):
    """After the tests above: no test password in any file of the cluster (logs, CCS's
    append-only files, node.json, shard folders) but admin.json, which only its owner reads;
    nor in any process's command line; no file of the cluster readable by others."""
    _, admin_password = cluster.admin_login()
    secrets = {PASSWORD.encode(), (PASSWORD + "-2").encode(), admin_password.encode()}
    found, readable = [], []
    for root, _dirs, files in os.walk(cluster.home):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path) or stat.S_ISSOCK(os.stat(path).st_mode):
                continue
            if os.stat(path).st_mode & 0o044 and not path.endswith(".pem"):  # certificates
                readable.append(path)                                          # are public
            if path == str(cluster.admin_file):
                continue
            with open(path, "rb") as f:
                data = f.read()
            found += [f"{path}: {s!r}" for s in secrets if s in data]
    assert found == []
    assert readable == []
    assert stat.S_IMODE(os.stat(cluster.admin_file).st_mode) == 0o600
    lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout
    assert not any(s in lines for s in secrets)
