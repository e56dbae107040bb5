"""`dmc user|role|acl`: the cluster's users, roles and Redis ACLs (control/access.py), through
the REST API as the cluster admin (control/db_cli.py's RestApi).

Passwords are never arguments (a command line is visible to every user of the machine): they
are asked for on the terminal, hidden, or read from standard input with `--password-stdin`.
`dmc user password` of the admin also updates the local cluster's `admin.json`, so the other
commands keep working. Errors are one line and exit 1.
"""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from control.access import MANAGEMENT_ROLES
from control.db_cli import Failure, RestApi, home_option
from control.local_cluster import ClusterError, LocalCluster

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
stdin_option = click.option("--password-stdin", is_flag=True,
                            help="Read the password from the first line of standard input.")


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    if not password:
        raise Failure("the password is empty")
    return password


def _table(rows: list[dict], columns: list[str]) -> None:
    table = Table(*(c.upper() for c in columns), box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console().print(table)


def _cell(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return "-" if value in (None, "") else str(value)


def _uid(api: RestApi, path: str, kind: str, ref: str) -> int:
    """An object named by uid or by name."""
    if ref.isdigit():
        return int(ref)
    found = [o["uid"] for o in api.call("GET", f"/v1/{path}") if o.get("name") == ref]
    if not found:
        raise Failure(f"no {kind} named {ref!r}")
    return found[0]


def _role_uids(api: RestApi, names: str | None) -> list[int] | None:
    if names is None:
        return None
    return [_uid(api, "roles", "role", n.strip()) for n in names.split(",") if n.strip()]


def _listing(api: RestApi, path: str, as_json: bool, columns: list[str]) -> None:
    rows = api.call("GET", f"/v1/{path}")
    if as_json:
        click.echo(json.dumps(rows))
    else:
        _table(rows, columns)


def _update(home, path: str, kind: str, ref: str, fields: dict) -> None:
    api = RestApi.of(home)
    uid = _uid(api, path, kind, ref)
    body = {k: v for k, v in fields.items() if v is not None}
    if not body:
        raise Failure("nothing to change (see --help)")
    api.call("PUT", f"/v1/{path}/{uid}", body=body)
    click.echo(f"{kind} {uid} updated")


def _list_and_delete(group: click.Group, path: str, kind: str, columns: list[str]) -> None:
    """`list` and `delete` of a group of objects: roles, redis_acls."""
    @group.command("list", help=f"Every {kind}: {', '.join(columns)}.")
    @json_option
    @home_option
    def listing(as_json, home):
        _listing(RestApi.of(home), path, as_json, columns)

    @group.command("delete", help=f"Delete a {kind} (refused while in use).")
    @click.argument("ref", metavar="UID|NAME")
    @home_option
    def delete(ref, home):
        api = RestApi.of(home)
        uid = _uid(api, path, kind, ref)
        api.call("DELETE", f"/v1/{path}/{uid}")
        click.echo(f"{kind} {uid} deleted")


# ---- dmc user --------------------------------------------------------------------------------

@click.group()
def user():
    """The cluster's users: REST logins with a management role, database logins by role."""


@user.command("list")
@json_option
@home_option
def user_list(as_json, home):
    """Every user: uid, name, email, management role, roles."""
    _listing(RestApi.of(home), "users", as_json, ["uid", "name", "email", "role", "role_uids"])


@user.command("create")
@click.argument("name")
@click.option("--email", default="")
@click.option("--role", type=click.Choice(MANAGEMENT_ROLES), default="none", show_default=True,
              help="The user's management role on the REST API.")
@click.option("--roles", help="Roles (names or uids, comma-separated): the databases whose "
              "roles_permissions name them take the user's logins.")
@stdin_option
@home_option
def user_create(name, email, role, roles, password_stdin, home):
    """A new user; the password is asked for (or read with --password-stdin)."""
    api = RestApi.of(home)
    body = {"name": name, "email": email, "role": role,
            "role_uids": _role_uids(api, roles) or [],
            "password": _read_password(password_stdin)}
    reply = api.call("POST", "/v1/users", body=body)
    click.echo(f"user {reply['uid']} ({reply['name']}) created")


@user.command("update")
@click.argument("ref", metavar="UID|NAME")
@click.option("--name", "new_name")
@click.option("--email")
@click.option("--role", type=click.Choice(MANAGEMENT_ROLES))
@click.option("--roles", help="The user's roles, all of them (names or uids, comma-separated; "
              "'' for none).")
@click.option("--password", "new_password", is_flag=True,
              help="Set a new password (asked for, or read with --password-stdin).")
@stdin_option
@home_option
def user_update(ref, new_name, email, role, roles, new_password, password_stdin, home):
    """Change a user's name, email, role, roles or password."""
    api = RestApi.of(home)
    uid = _uid(api, "users", "user", ref)
    body = {k: v for k, v in {"name": new_name, "email": email, "role": role,
                              "role_uids": _role_uids(api, roles)}.items() if v is not None}
    if new_password or password_stdin:
        body["password"] = _read_password(password_stdin, "New password")
    if not body:
        raise Failure("nothing to change (see --help)")
    api.call("PUT", f"/v1/users/{uid}", body=body)
    click.echo(f"user {uid} updated")


@user.command("password")
@click.argument("name", required=False)
@stdin_option
@home_option
def user_password(name, password_stdin, home):
    """Change a user's password (default: the cluster admin's), given the old one. With
    --password-stdin: the old password on the first line, the new one on the second."""
    cluster = _cluster(home)
    admin_name, admin_password = cluster.admin_login()
    name = name or admin_name
    if password_stdin:
        old = sys.stdin.readline().rstrip("\n")
        new = sys.stdin.readline().rstrip("\n")
    else:
        old = admin_password if name == admin_name else \
            click.prompt("Old password", hide_input=True)
        new = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    if not new:
        raise Failure("the new password is empty")
    RestApi(cluster).call("PUT", "/v1/users/password",
                          body={"username": name, "old_password": old, "new_password": new})
    if name == admin_name:
        fd = os.open(cluster.admin_file, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            json.dump({"username": admin_name, "password": new}, f)
    click.echo(f"password of {name} changed")


@user.command("delete")
@click.argument("ref", metavar="UID|NAME")
@home_option
def user_delete(ref, home):
    api = RestApi.of(home)
    uid = _uid(api, "users", "user", ref)
    api.call("DELETE", f"/v1/users/{uid}")
    click.echo(f"user {uid} deleted")


def _cluster(home) -> LocalCluster:
    try:
        return LocalCluster.load(home)
    except ClusterError as exc:
        raise Failure(str(exc)) from None


# ---- dmc role ----------------------------------------------------------------------------------

@click.group()
def role():
    """Roles: a management role for the REST API, and what a database's roles_permissions name."""


@role.command("create")
@click.argument("name")
@click.option("--management", type=click.Choice(MANAGEMENT_ROLES), default="none",
              show_default=True)
@home_option
def role_create(name, management, home):
    reply = RestApi.of(home).call("POST", "/v1/roles",
                                  body={"name": name, "management": management})
    click.echo(f"role {reply['uid']} ({reply['name']}) created")


@role.command("update")
@click.argument("ref", metavar="UID|NAME")
@click.option("--name", "new_name")
@click.option("--management", type=click.Choice(MANAGEMENT_ROLES))
@home_option
def role_update(ref, new_name, management, home):
    _update(home, "roles", "role", ref, {"name": new_name, "management": management})


# ---- dmc acl -----------------------------------------------------------------------------------

@click.group()
def acl():
    """Redis ACLs (rules such as '+@read ~cache:*') and which role has which on a database."""


@acl.command("create")
@click.argument("name")
@click.argument("rules")
@home_option
def acl_create(name, rules, home):
    """A Redis ACL named NAME with RULES (one argument: quote it)."""
    reply = RestApi.of(home).call("POST", "/v1/redis_acls", body={"name": name, "acl": rules})
    click.echo(f"redis_acl {reply['uid']} ({reply['name']}) created")


@acl.command("update")
@click.argument("ref", metavar="UID|NAME")
@click.option("--name", "new_name")
@click.option("--rules")
@home_option
def acl_update(ref, new_name, rules, home):
    _update(home, "redis_acls", "redis_acl", ref, {"name": new_name, "acl": rules})


def _set_grants(api: RestApi, db: str, change) -> None:
    bdb_uid = api.bdb_uid(db)
    grants = change(api.call("GET", f"/v1/bdbs/{bdb_uid}").get("roles_permissions") or [])
    reply = api.call("PUT", f"/v1/bdbs/{bdb_uid}", body={"roles_permissions": grants})
    if reply.get("action_uid"):
        api.follow(reply["action_uid"])


@acl.command("grant")
@click.argument("db", metavar="DB")
@click.option("--role", "role_ref", required=True, help="The role (name or uid).")
@click.option("--acl", "acl_ref", required=True, help="The Redis ACL (name or uid).")
@home_option
def acl_grant(db, role_ref, acl_ref, home):
    """Let the users of a role log in to database DB with a Redis ACL's rules (its
    roles_permissions; a role's earlier grant on DB is replaced)."""
    api = RestApi.of(home)
    role_uid = _uid(api, "roles", "role", role_ref)
    acl_uid = _uid(api, "redis_acls", "redis_acl", acl_ref)
    _set_grants(api, db, lambda grants: [g for g in grants if g["role_uid"] != role_uid]
                + [{"role_uid": role_uid, "redis_acl_uid": acl_uid}])
    click.echo(f"role {role_uid} logs in to {db} with redis_acl {acl_uid}")


@acl.command("revoke")
@click.argument("db", metavar="DB")
@click.option("--role", "role_ref", required=True, help="The role (name or uid).")
@home_option
def acl_revoke(db, role_ref, home):
    """Take a role's logins to database DB away."""
    api = RestApi.of(home)
    role_uid = _uid(api, "roles", "role", role_ref)
    _set_grants(api, db, lambda grants: [g for g in grants if g["role_uid"] != role_uid])
    click.echo(f"role {role_uid} no longer logs in to {db}")


_list_and_delete(role, "roles", "role", ["uid", "name", "management"])
_list_and_delete(acl, "redis_acls", "redis_acl", ["uid", "name", "acl"])

COMMANDS = (user, role, acl)
