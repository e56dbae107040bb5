"""Who may do what: the cluster's users, roles and Redis ACLs (Redis Enterprise's `/v1/users`,
`/v1/roles`, `/v1/redis_acls`), the management roles' permissions on the REST API, failed
logins, and the ACL users a database's `roles_permissions` give its shards.

Records live in CCS (hashes `users`, `roles`, `redis_acls`, keyed by uid; control/CCS.md). A
user's password is never stored: only what checks it, two ways --
- `password_hash`: a salted scrypt hash (control/node.py's `admin_credentials`), what cnm_http
  checks a REST login against;
- `acl_password`: the SHA-256 of the password, Redis's own form (`ACL SETUSER name #<hex>`),
  what redis_mgr gives the shards so that `AUTH name password` through the proxy is checked by
  Redis itself. It is the form every redis-server keeps in memory and shows to ACL GETUSER.

The management role of a user is the highest its `role` and its `role_uids` give (RE's roles:
none, db_viewer, db_member, cluster_viewer, cluster_member, admin); `ROUTE_PERMISSIONS` in
control/rest_access.py says which permission each REST route needs and `PERMISSIONS` which
roles have it. A route not listed there is the admin's only.

Pure functions and CCS readers: cnm_http (control/rest_access.py) writes these records,
redis_mgr applies `database_acl` to the shards. This module never writes CCS itself, except the
first user (the cluster's admin, `seed_admin`) and the failed-login counters.
"""

from __future__ import annotations

import hashlib
import time

import msgspec

from control import ccs, schema
from control.node import admin_credentials, check_admin
from control.redis_client import checked

USERS = "users"                    # hash: user uid -> User
ROLES = "roles"                    # hash: role uid -> Role
REDIS_ACLS = "redis_acls"          # hash: redis_acl uid -> RedisAcl


def login_failures_key(name: str) -> str:
    """login_failures:<name>: failed REST logins as `name`, an integer that expires
    `login_lockout_counter_reset_after` seconds after the first failure counted."""
    return f"login_failures:{name.lower()}"


def lockout_key(name: str) -> str:
    """login_lockout:<name>: set (with its TTL) while logins as `name` are refused."""
    return f"login_lockout:{name.lower()}"


MANAGEMENT_ROLES = ("none", "db_viewer", "db_member", "cluster_viewer", "cluster_member",
                    "admin")

# permission -> the management roles that have it (RE's REST API permissions, in groups)
PERMISSIONS: dict[str, frozenset[str]] = {
    "view_bdb": frozenset({"db_viewer", "db_member", "cluster_viewer", "cluster_member",
                           "admin"}),
    "edit_bdb": frozenset({"db_member", "cluster_member", "admin"}),
    "view_logs": frozenset({"db_member", "cluster_viewer", "cluster_member", "admin"}),
    "view_cluster": frozenset({"cluster_viewer", "cluster_member", "admin"}),
    "edit_cluster": frozenset({"cluster_member", "admin"}),
    "manage_users": frozenset({"admin"}),
    "manage_certificates": frozenset({"admin"}),
}

# Rules a redis_acl may not hold: the user's password and its on/off state are the user's.
FORBIDDEN_RULE_PREFIXES = (">", "<", "#", "!")
FORBIDDEN_RULES = {"on", "off", "nopass", "resetpass", "reset"}


class User(msgspec.Struct, kw_only=True):
    """users:<uid>: who may log in to the REST API and, through its roles, to databases."""
    uid: int
    name: str
    email: str = ""
    role: str = "none"                  # RE's single management role (the admin's: admin)
    role_uids: list[int] = []
    auth_method: str = "regular"
    password_hash: dict = {}            # {salt, hash}: scrypt (control/node.py)
    acl_password: str = ""              # SHA-256 hex: the shards' `#<hash>`
    password_issue_date: float | None = None
    created_time: float | None = None


class Role(msgspec.Struct, kw_only=True):
    """roles:<uid>: a management role, and the role a database's roles_permissions name."""
    uid: int
    name: str
    management: str = "none"


class RedisAcl(msgspec.Struct, kw_only=True):
    """redis_acls:<uid>: Redis ACL rules (`+@read ~cache:*`), given to a role per database."""
    uid: int
    name: str
    acl: str = ""


# ---- passwords -------------------------------------------------------------------------------

def password_fields(password: str) -> dict:
    """What a user record keeps of a password: never the password."""
    credentials = admin_credentials("", password)
    return {"password_hash": {"salt": credentials["salt"], "hash": credentials["hash"]},
            "acl_password": hashlib.sha256(password.encode()).hexdigest(),
            "password_issue_date": time.time()}


def check_password(user: User, password: str) -> bool:
    """scrypt: call it in a thread."""
    if not user.password_hash:
        return False
    return check_admin({"username": user.name, **user.password_hash}, user.name, password)


def public_user(user: User) -> dict:
    """A user as the REST API shows it: without what checks its password."""
    out = schema.as_dict(user)
    out.pop("password_hash")
    out.pop("acl_password")
    return out


# ---- roles -----------------------------------------------------------------------------------

def management_roles(user: User, roles: dict[int, Role]) -> set[str]:
    found = {user.role}
    found.update(roles[r].management for r in user.role_uids if r in roles)
    return found


def allowed(user: User, roles: dict[int, Role], permission: str) -> bool:
    granted = PERMISSIONS.get(permission, PERMISSIONS["manage_users"])
    return bool(management_roles(user, roles) & granted)


def check_rules(acl: str) -> list[str]:
    """The rules of a redis_acl, split as ACL SETUSER takes them; ValueError for a rule that
    would set a password or switch the user on or off (those are the user's)."""
    rules = acl.split()
    for rule in rules:
        if rule.lower() in FORBIDDEN_RULES or rule.startswith(FORBIDDEN_RULE_PREFIXES):
            raise ValueError(f"rule {rule!r} is not a permission: a redis_acl holds commands, "
                             "keys and channels, the user holds its password")
    return rules


def database_acl(bdb: schema.Bdb, users: dict[int, User], roles: dict[int, Role],
                 acls: dict[int, RedisAcl]) -> dict[str, list[str]]:
    """The ACL users the database's shards must have: user name -> the ACL SETUSER arguments
    after the name. A user with several roles given to the database gets each role's rules,
    the first as its root permissions, the others as selectors (Redis 7: any one may allow)."""
    per_role: dict[int, list[str]] = {}
    for grant in bdb.roles_permissions or ():
        acl = acls.get(grant.get("redis_acl_uid"))
        if acl is not None and grant.get("role_uid") in roles:
            per_role.setdefault(grant["role_uid"], []).append(acl.acl)
    out: dict[str, list[str]] = {}
    for user in sorted(users.values(), key=lambda u: u.uid):
        rule_sets = [a for r in user.role_uids for a in per_role.get(r, ())]
        if not rule_sets or not user.acl_password:
            continue
        args = ["reset", "on", f"#{user.acl_password}", *rule_sets[0].split()]
        args += [f"({rules})" for rules in rule_sets[1:]]
        out[user.name] = args
    return out


# ---- CCS -------------------------------------------------------------------------------------

async def users(redis) -> dict[int, User]:
    return await ccs.read_hash(redis, USERS, User)


async def roles(redis) -> dict[int, Role]:
    return await ccs.read_hash(redis, ROLES, Role)


async def redis_acls(redis) -> dict[int, RedisAcl]:
    return await ccs.read_hash(redis, REDIS_ACLS, RedisAcl)


def find_user(found: dict[int, User], login: str) -> User | None:
    """A user by name, or by email (RE logs in with either)."""
    for user in found.values():
        if user.name == login or (user.email and user.email == login):
            return user
    return None


async def seed_admin(redis, admin: dict) -> None:
    """The cluster's first user, the admin that `dmc cluster create` made (node.json's
    credentials): user 1 with role admin, written once (HSETNX) by whichever node comes first."""
    if not admin:
        return
    user = User(uid=1, name=admin["username"], role="admin",
                password_hash={"salt": admin["salt"], "hash": admin["hash"]},
                created_time=time.time(), password_issue_date=time.time())
    replies = await redis.pipeline([("HSETNX", USERS, "1", ccs.pack(user)),
                                    ("HSETNX", schema.COUNTERS, "user", "1"),
                                    ("PUBLISH", ccs.CHANGES, USERS)])
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


async def locked_for(redis, name: str) -> int:
    """Seconds logins as `name` stay refused (0: not locked)."""
    ttl = int(await redis.execute("TTL", lockout_key(name)))
    return max(ttl, 0)


async def count_failure(redis, name: str, policy: dict) -> tuple[int, int]:
    """One more failed login as `name`: (failures counted, seconds locked now: 0 or the
    lockout's duration once the threshold is reached)."""
    key = login_failures_key(name)
    count, _ = checked(await redis.pipeline([
        ("INCR", key), ("EXPIRE", key, policy["login_lockout_counter_reset_after"], "NX")]))
    threshold = policy["login_lockout_threshold"]
    if threshold and int(count) >= threshold:
        checked(await redis.pipeline([("SET", lockout_key(name), "1", "EX",
                                        policy["login_lockout_duration"]), ("DEL", key)]))
        return int(count), policy["login_lockout_duration"]
    return int(count), 0



async def clear_failures(redis, name: str) -> None:
    await redis.execute("DEL", login_failures_key(name), lockout_key(name))
