"""cnm_http's access control: who is asking (basic authentication against the cluster's users,
failed logins counted and locked out), whether their management role allows the route
(`ROUTE_PERMISSIONS`, 403 otherwise), and the routes that manage access, in Redis Enterprise's
shape: `/v1/users` (with `PUT /v1/users/password`), `/v1/roles`, `/v1/redis_acls`.

The records and the role matrix are control/access.py. Until the cluster's first user is in
CCS (cnm_http seeds it at start), the admin of node.json logs in. Accepted credentials are
remembered in memory by their sha256 with the password hash they matched, so only a user's
first request pays scrypt and a changed password is checked again at once.

Logs name the user and the client's address of every failed login, never a password.
"""


import hashlib
import logging
import time
from typing import Literal

import trio
from fastapi import FastAPI, Request
from fastapi.security import HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from control import access, ccs, schema
from control.node import check_admin
from control.redis_client import RedisUnavailable, ReplyError
from control.rest_models import ERRORS

log = logging.getLogger("cnm_http")

# (method, route path) -> the permission it needs (control/access.py PERMISSIONS). Every route
# of the API is here (tests/test_access.py checks it); one missing is the admin's only.
OWN_PASSWORD = "own_password"        # any user, for their own password
ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "view_bdb",
    ("GET", "/docs"): "view_bdb",
    # databases
    ("GET", "/v1/bdbs"): "view_bdb",
    ("GET", "/v1/bdbs/{uid}"): "view_bdb",
    ("POST", "/v1/bdbs"): "edit_bdb",
    ("PUT", "/v1/bdbs/{uid}"): "edit_bdb",
    ("DELETE", "/v1/bdbs/{uid}"): "edit_bdb",
    ("POST", "/v1/bdbs/{uid}/actions/backup"): "edit_bdb",
    ("POST", "/v1/bdbs/{uid}/actions/import"): "edit_bdb",
    ("GET", "/v1/bdbs/{uid}/backups"): "view_bdb",
    ("GET", "/v1/bdbs/{uid}/backups/{backup_id}"): "view_bdb",
    ("GET", "/v1/bdbs/stats"): "view_bdb",
    ("GET", "/v1/bdbs/stats/{uid}"): "view_bdb",
    ("GET", "/v1/bdbs/stats/last"): "view_bdb",
    ("GET", "/v1/bdbs/stats/last/{uid}"): "view_bdb",
    ("GET", "/v1/bdbs/alerts"): "view_bdb",
    ("GET", "/v1/bdbs/alerts/{uid}"): "view_bdb",
    # shards and actions: what a database is made of and what changes it
    ("GET", "/v1/shards"): "view_bdb",
    ("GET", "/v1/shards/{uid}"): "view_bdb",
    ("GET", "/v1/shards/stats"): "view_bdb",
    ("GET", "/v1/shards/stats/{uid}"): "view_bdb",
    ("GET", "/v1/shards/stats/last"): "view_bdb",
    ("GET", "/v1/shards/stats/last/{uid}"): "view_bdb",
    ("POST", "/v1/shards/{uid}/actions/failover"): "edit_cluster",
    ("POST", "/v1/shards/{uid}/actions/migrate"): "edit_cluster",
    ("GET", "/v1/actions"): "view_bdb",
    ("GET", "/v1/actions/{uid}"): "view_bdb",
    # the cluster and its nodes
    ("GET", "/v1/cluster"): "view_cluster",
    ("PUT", "/v1/cluster"): "edit_cluster",
    ("GET", "/v1/cluster/stats"): "view_cluster",
    ("GET", "/v1/cluster/stats/last"): "view_cluster",
    ("GET", "/v1/cluster/alerts"): "view_cluster",
    ("GET", "/v1/nodes"): "view_cluster",
    ("GET", "/v1/nodes/{uid}"): "view_cluster",
    ("POST", "/v1/nodes/{uid}/actions/remove"): "edit_cluster",
    ("GET", "/v1/nodes/stats"): "view_cluster",
    ("GET", "/v1/nodes/stats/{uid}"): "view_cluster",
    ("GET", "/v1/nodes/stats/last"): "view_cluster",
    ("GET", "/v1/nodes/stats/last/{uid}"): "view_cluster",
    ("GET", "/v1/nodes/alerts"): "view_cluster",
    ("GET", "/v1/nodes/alerts/{uid}"): "view_cluster",
    ("GET", "/v1/logs"): "view_logs",
    ("GET", "/v1/cluster/certificates"): "view_cluster",
    ("PUT", "/v1/cluster/update_cert"): "manage_certificates",
    # access
    ("GET", "/v1/users"): "manage_users",
    ("POST", "/v1/users"): "manage_users",
    ("PUT", "/v1/users/password"): OWN_PASSWORD,
    ("GET", "/v1/users/{uid}"): "manage_users",
    ("PUT", "/v1/users/{uid}"): "manage_users",
    ("DELETE", "/v1/users/{uid}"): "manage_users",
    ("GET", "/v1/roles"): "manage_users",
    ("POST", "/v1/roles"): "manage_users",
    ("GET", "/v1/roles/{uid}"): "manage_users",
    ("PUT", "/v1/roles/{uid}"): "manage_users",
    ("DELETE", "/v1/roles/{uid}"): "manage_users",
    ("GET", "/v1/redis_acls"): "manage_users",
    ("POST", "/v1/redis_acls"): "manage_users",
    ("GET", "/v1/redis_acls/{uid}"): "manage_users",
    ("PUT", "/v1/redis_acls/{uid}"): "manage_users",
    ("DELETE", "/v1/redis_acls/{uid}"): "manage_users",
}

# A name Redis takes as an ACL user name and a shell as one word; `default` is the database's.
USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
OBJECT_NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$"
DEFAULT_NAME = ("`default` is each database's own user (its password is the database's): "
                "choose another name")
Management = Literal[access.MANAGEMENT_ROLES]
PASSWORD = Field(min_length=1, max_length=256)


# ---- bodies ----------------------------------------------------------------------------------

class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=USER_NAME)
    email: str = Field("", max_length=256)
    password: str = PASSWORD
    role: Management = "none"
    role_uids: list[int] = Field([], max_length=64)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(None, pattern=USER_NAME)
    email: str = Field(None, max_length=256)
    password: str = Field(None, min_length=1, max_length=256)
    role: Management = None
    role_uids: list[int] = Field(None, max_length=64)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=256)
    old_password: str = Field(max_length=256)
    new_password: str = PASSWORD


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(None, pattern=OBJECT_NAME)
    management: Management = None


class RedisAclBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(None, pattern=OBJECT_NAME)
    acl: str = Field(None, max_length=4096)


class UserReply(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: int
    name: str
    email: str = ""
    role: str = "none"
    role_uids: list[int] = []
    auth_method: str = "regular"
    password_issue_date: float | None = None


class RoleReply(BaseModel):
    uid: int
    name: str
    management: str


class RedisAclReply(BaseModel):
    uid: int
    name: str
    acl: str


# ---- who is asking ---------------------------------------------------------------------------

class Authenticator:
    """cnm_http's logins: `login` answers the User behind basic credentials, or raises the
    API's 401 / 429 (`error(status, code, description, headers)` builds the exception)."""

    def __init__(self, api, error):
        self.api = api
        self.error = error
        self._accepted: dict[bytes, tuple[int, str]] = {}   # sha256 -> (uid, password hash)

    async def login(self, credentials: HTTPBasicCredentials | None, client: str) -> access.User:
        if credentials is None:
            raise self.error(401, "unauthorized", "basic authentication is required")
        name, password = credentials.username, credentials.password
        key = hashlib.sha256(f"{name}\0{password}".encode()).digest()
        r = await self.api.reader()
        found = await access.users(r)
        if not found:            # the first user is not in CCS yet: node.json's admin
            admin = self.api.config.admin
            if self._accepted.get(key) == (1, admin.get("hash")) or (
                    await trio.to_thread.run_sync(check_admin, admin, name, password)):
                self._accepted[key] = (1, admin.get("hash"))
                return access.User(uid=1, name=name, role="admin")
            raise self.error(401, "unauthorized", "wrong user name or password")
        # a locked-out user is refused whatever it gives, its remembered credentials too
        locked = await access.locked_for(r, name)
        if locked:
            raise self.error(429, "login_locked", f"too many failed logins as {name!r}: "
                             f"refused for {locked} more seconds",
                             {"Retry-After": str(locked)})
        user = access.find_user(found, name)
        hashed = (user.password_hash or {}).get("hash") if user else None
        if user is not None and self._accepted.get(key) == (user.uid, hashed):
            return user
        ok = user is not None and await trio.to_thread.run_sync(access.check_password, user,
                                                                password)
        if not ok:
            policy = await schema.cluster_policy(r)
            count, lock = await self._counted(access.count_failure, name, policy)
            log.warning("failed REST login as %r from %s (%s of %s)", name, client,
                        count if count is not None else "not counted: no CCS master",
                        policy["login_lockout_threshold"] or "unlimited")
            if lock:
                log.warning("logins as %r are refused for %ds: %d failed in a row", name, lock,
                            count)
            raise self.error(401, "unauthorized", "wrong user name or password")
        await self._counted(access.clear_failures, name)
        if len(self._accepted) > 1024:
            self._accepted.clear()
        self._accepted[key] = (user.uid, hashed)
        return user


    async def _counted(self, write, *args):
        """A write of the failed-login count, to the master; while there is none (the node
        reads its own copy), the login is still judged, only not counted."""
        try:
            return await write(await self.api.writer(), *args)
        except (RedisUnavailable, ReplyError) as exc:
            log.info("failed-login count not written: %s", exc)
            return None, 0


def route_permission(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    return ROUTE_PERMISSIONS.get((request.method, path), "manage_users")


async def authorize(api, user: access.User, request: Request, error) -> None:
    """403 unless the user's management roles have the route's permission."""
    permission = route_permission(request)
    if permission == OWN_PASSWORD:
        return                   # the body names the user and proves the old password
    found = await access.roles(await api.reader()) if user.role_uids else {}
    if not access.allowed(user, found, permission):
        roles = ", ".join(sorted(access.management_roles(user, found)))
        raise error(403, "insufficient_permissions", f"user {user.name!r} (role {roles}) may "
                    f"not {request.method} {request.url.path}: it needs {permission}")


# ---- the routes ------------------------------------------------------------------------------

def add_routes(app: FastAPI, api, error, not_found) -> None:   # noqa: C901 (one route each)
    """/v1/users, /v1/roles, /v1/redis_acls on `app`; writes hold cnm_http's config lock, so
    two nodes never give one name twice."""
    errors = {k: ERRORS[k] for k in (400, 403, 404, 406, 503)}

    async def unique(found: dict, name: str, uid: int | None, kind: str) -> None:
        for other in found.values():
            if other.name == name and other.uid != uid:
                raise schema.InvalidRequest(f"a {kind} named {name!r} exists (uid {other.uid})")

    async def check_role_uids(r, role_uids) -> None:
        found = await access.roles(r)
        missing = sorted(set(role_uids) - set(found))
        if missing:
            raise schema.InvalidRequest(f"no role {', '.join(map(str, missing))}")

    async def put(r, key: str, record) -> None:
        with trio.CancelScope(shield=True):
            await ccs.write(r, key, record, field=record.uid)

    async def check_rules(r, acl: str) -> None:
        """406 unless Redis takes the rules: tried on a scratch user of the node's own CCS copy
        (ACL is per redis-server, never replicated), deleted at once."""
        try:
            rules = access.check_rules(acl)
        except ValueError as exc:
            raise schema.InvalidRequest(str(exc)) from None
        scratch = f"dmc-check-{time.monotonic_ns()}"
        local = await api.session.local()
        try:
            await local.execute("ACL", "SETUSER", scratch, "reset", "off", *rules)
        except ReplyError as exc:
            raise schema.InvalidRequest(f"Redis refuses the ACL {acl!r}: {exc}") from None
        finally:
            await local.execute("ACL", "DELUSER", scratch)

    # ---- users ----

    @app.get("/v1/users", response_model=list[UserReply], tags=["access"])
    async def list_users():
        found = await access.users(await api.reader())
        return [access.public_user(u) for _, u in sorted(found.items())]

    @app.get("/v1/users/{uid}", response_model=UserReply, tags=["access"], responses=errors)
    async def get_user(uid: int):
        user = (await access.users(await api.reader())).get(uid)
        if user is None:
            raise not_found("user", uid)
        return access.public_user(user)

    @app.post("/v1/users", response_model=UserReply, tags=["access"], responses=errors,
              summary="Create a user: a REST login with its management role, and database "
              "logins through its role_uids")
    async def create_user(body: UserCreate):
        if body.name == "default":
            raise schema.InvalidRequest(DEFAULT_NAME)
        r = await api.writer()
        async with api.config_lock(r):
            found = await access.users(r)
            await unique(found, body.name, None, "user")
            await check_role_uids(r, body.role_uids)
            fields = await trio.to_thread.run_sync(access.password_fields, body.password)
            uid = await schema.next_uid(r, "user")
            user = access.User(uid=uid, name=body.name, email=body.email, role=body.role,
                               role_uids=body.role_uids, created_time=time.time(), **fields)
            await put(r, access.USERS, user)
        log.info("user %d (%s) created, role %s, role_uids %s", uid, user.name, user.role,
                 user.role_uids)
        return access.public_user(user)

    async def update_user_fields(r, user: access.User, given: dict) -> access.User:
        if "password" in given:
            given.update(await trio.to_thread.run_sync(access.password_fields,
                                                       given.pop("password")))
        schema.set_fields(user, **given)
        await put(r, access.USERS, user)
        return user

    @app.put("/v1/users/password", tags=["access"], responses={**errors, 401: ERRORS[401]},
             summary="Change a user's password (the admin's too), given the old one")
    async def change_password(body: PasswordChange, request: Request):
        caller: access.User = request.state.user
        r = await api.writer()
        user = access.find_user(await access.users(r), body.username)
        may_manage = access.allowed(caller, await access.roles(r), "manage_users")
        if user is None or (user.uid != caller.uid and not may_manage):
            raise error(403, "insufficient_permissions", f"user {caller.name!r} may not change "
                        f"the password of {body.username!r}")
        if not await trio.to_thread.run_sync(access.check_password, user, body.old_password):
            log.warning("password change of %r refused: wrong old password (asked by %r)",
                        user.name, caller.name)
            raise error(401, "unauthorized", "the old password is wrong")
        await update_user_fields(r, user, {"password": body.new_password})
        log.info("user %d (%s): password changed by %s", user.uid, user.name, caller.name)
        return {"uid": user.uid, "password_issue_date": user.password_issue_date}

    @app.put("/v1/users/{uid}", response_model=UserReply, tags=["access"], responses=errors)
    async def update_user(uid: int, body: UserUpdate):
        given = body.model_dump(exclude_unset=True)
        changed = ", ".join(sorted(given))
        if given.get("name") == "default":
            raise schema.InvalidRequest(DEFAULT_NAME)
        r = await api.writer()
        async with api.config_lock(r):
            found = await access.users(r)
            user = found.get(uid)
            if user is None:
                raise not_found("user", uid)
            if "name" in given:
                await unique(found, given["name"], uid, "user")
            if "role_uids" in given:
                await check_role_uids(r, given["role_uids"])
            if uid == 1 and given.get("role", "admin") != "admin":
                raise schema.InvalidRequest("user 1 is the cluster's admin: its role stays admin")
            await update_user_fields(r, user, given)
        log.info("user %d (%s) changed: %s", uid, user.name, changed)
        return access.public_user(user)

    @app.delete("/v1/users/{uid}", tags=["access"], responses=errors)
    async def delete_user(uid: int, request: Request):
        r = await api.writer()
        if uid not in await access.users(r):
            raise not_found("user", uid)
        if uid == 1 or uid == request.state.user.uid:
            raise schema.InvalidRequest("the cluster's admin (user 1) and the user asking "
                                        "cannot be deleted")
        with trio.CancelScope(shield=True):
            await ccs.delete(r, access.USERS, uid)
        log.info("user %d deleted", uid)
        return {"uid": uid}

    # ---- roles and redis_acls: the same four routes each ----

    def object_routes(path: str, key: str, kind: str, record_type, body_type, reply, read,
                      check, in_use):
        @app.get(f"/v1/{path}", response_model=list[reply], tags=["access"])
        async def list_objects():
            return [schema.as_dict(o) for _, o in sorted((await read(await api.reader()))
                                                         .items())]

        @app.get(f"/v1/{path}/{{uid}}", response_model=reply, tags=["access"],
                 responses=errors)
        async def get_object(uid: int):
            found = (await read(await api.reader())).get(uid)
            if found is None:
                raise not_found(kind, uid)
            return schema.as_dict(found)

        @app.post(f"/v1/{path}", response_model=reply, tags=["access"], responses=errors)
        async def create_object(body: body_type):
            given = body.model_dump(exclude_unset=True)
            if "name" not in given:
                raise error(400, "invalid_schema", "name is required")
            r = await api.writer()
            async with api.config_lock(r):
                await unique(await read(r), given["name"], None, kind)
                await check(r, given)
                record = record_type(uid=await schema.next_uid(r, kind), **given)
                await put(r, key, record)
            log.info("%s %d (%s) created: %s", kind, record.uid, record.name,
                     schema.as_dict(record))
            return schema.as_dict(record)

        @app.put(f"/v1/{path}/{{uid}}", response_model=reply, tags=["access"],
                 responses=errors)
        async def update_object(uid: int, body: body_type):
            given = body.model_dump(exclude_unset=True)
            r = await api.writer()
            async with api.config_lock(r):
                found = await read(r)
                record = found.get(uid)
                if record is None:
                    raise not_found(kind, uid)
                if "name" in given:
                    await unique(found, given["name"], uid, kind)
                await check(r, given)
                schema.set_fields(record, **given)
                await put(r, key, record)
            log.info("%s %d changed: %s", kind, uid, schema.as_dict(record))
            return schema.as_dict(record)

        @app.delete(f"/v1/{path}/{{uid}}", tags=["access"], responses=errors)
        async def delete_object(uid: int):
            r = await api.writer()
            if uid not in await read(r):
                raise not_found(kind, uid)
            users_of = await in_use(r, uid)
            if users_of:
                raise schema.InvalidRequest(f"{kind} {uid} is in use by {users_of}")
            with trio.CancelScope(shield=True):
                await ccs.delete(r, key, uid)
            log.info("%s %d deleted", kind, uid)
            return {"uid": uid}

    async def granted_by(r, field: str, uid: int) -> list[str]:
        return [f"database {b.uid}" for b in (await schema.bdbs(r)).values()
                if any(g.get(field) == uid for g in b.roles_permissions or ())]

    async def role_in_use(r, uid: int) -> str:
        holders = [f"user {u.uid}" for u in (await access.users(r)).values()
                   if uid in u.role_uids]
        return ", ".join(holders + await granted_by(r, "role_uid", uid))

    async def acl_in_use(r, uid: int) -> str:
        return ", ".join(await granted_by(r, "redis_acl_uid", uid))

    async def no_check(r, given: dict) -> None:
        return None

    async def check_acl(r, given: dict) -> None:
        if "acl" in given:
            await check_rules(r, given["acl"])

    object_routes("roles", access.ROLES, "role", access.Role, RoleBody, RoleReply,
                  access.roles, no_check, role_in_use)
    object_routes("redis_acls", access.REDIS_ACLS, "redis_acl", access.RedisAcl, RedisAclBody,
                  RedisAclReply, access.redis_acls, check_acl, acl_in_use)


async def check_roles_permissions(r, grants: list[dict] | None) -> None:
    """406 unless every role and redis_acl a database's roles_permissions name exists."""
    if not grants:
        return
    found_roles, found_acls = await access.roles(r), await access.redis_acls(r)
    for grant in grants:
        if grant["role_uid"] not in found_roles:
            raise schema.InvalidRequest(f"roles_permissions: no role {grant['role_uid']}")
        if grant["redis_acl_uid"] not in found_acls:
            raise schema.InvalidRequest(f"roles_permissions: no redis_acl "
                                        f"{grant['redis_acl_uid']}")

