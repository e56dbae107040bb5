"""cnm_http: the cluster's REST API, in Redis Enterprise's shape (`/v1/bdbs`, `/v1/nodes`,
`/v1/cluster`, `/v1/shards`, `/v1/actions`; statistics, alerts and logs in
control/rest_stats.py), served by FastAPI on hypercorn's Trio worker at the
node's `address:rest_port`. Every node runs one; any of them answers for the whole cluster.

Models are control/rest_models.py, the checks of a request against the cluster
control/rest_checks.py; this module is the service, its routes and its error answers.

What it owns: validating requests (schema -> 400, impossible configuration -> 406, a database
another action is changing -> 409) and turning each accepted change into an action record in
CCS for cnm_exec, answered at once with its `action_uid`. It writes only three things, all to
the CCS master through the node's forwarded port: a new database's record (POST /v1/bdbs), action
records with their database lock (`schema.submit`), and its own endpoint in `cluster:rest`. It never
changes an existing database record and never runs an action; `?dry_run=1` writes nothing at all.

Reads come from the master's copy (a GET right after a POST sees it) and, if the master cannot
be reached, from the node's own copy. A CCS that answers nothing is a 503.

Every endpoint asks for a user's basic-auth credentials and checks the user's management role
against the route (control/rest_access.py: 401, 429 after too many failed logins, 403).
Errors are JSON `{"error_code", "description"}`, never a stack trace.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import hypercorn.config
import hypercorn.trio
import trio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException
from starlette.routing import Match

from control import (access, alerts, backup_mgr, ccs, certificates, rest_access, rest_models,
                     rest_stats, schema, tls)
from control.cluster_view import ClusterView, pair_of, read_view
from control.node import NodeConfig, atomic_write, service_command
from control.redis_client import RedisUnavailable, ReplyError, info
from control.rest_checks import booked_memory, check_backup_location, plan_create, plan_update
from control.rest_models import (ERRORS, Action, ActionStarted, Backup, BackupRequest, Bdb,
                                 CertificateUpdate, Cluster, DryRun, ImportRequest,
                                 MigrateRequest, Node, Shard)
from dmc.proxy import bind_failure

log = logging.getLogger("cnm_http")

# Two changes validated at once on two nodes could both take the same name or port: the check
# and the write happen while holding this key (SET NX PX), so they happen one after the other.
CONFIG_LOCK = "cnm_http:config_lock"
CONFIG_LOCK_MS = 5000
CONFIG_LOCK_WAIT = 3.0

NOT_WRITABLE = {"NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN"}

# Can every node bind a database's port? The node that validates a request asks all nodes up
# through CCS (a CCS request answered by each node's own cnm_http, which binds the port on its
# node's address as dmcproxy would): it PUBLISHes {token, port} on PORT_PROBE (replicated to
# every node's copy), each node PUBLISHes its answer on the master's PORT_PROBE:<token>, and a
# node up that has not answered within PORT_PROBE_DEADLINE makes the request a 503. Only the
# nodes whose cnm_http runs (their heartbeat says so) are asked: a node still starting cannot
# answer, and its dmcproxy reports a port it cannot bind in endpoint_status:<bdb> instead. Only
# messages: no key is written (a dry run asks too).
PORT_PROBE = "cnm_http:port_probe"

# The operator's own certificates (PUT /v1/cluster/update_cert), for every node to install:
# hash, name -> {certificate (PEM), key (sealed: certificates.seal), time}.
CERTIFICATES = "cluster:certificates"
OPERATOR_CERTIFICATES = ("api", "proxy")   # the REST API's, the database endpoints'
PORT_PROBE_DEADLINE = 10.0
PORT_PROBE_REPEAT = 1.0


class ApiError(Exception):
    """An answer other than 200, with Redis Enterprise's error body."""

    def __init__(self, status: int, error_code: str, description: str,
                 headers: dict | None = None):
        super().__init__(description)
        self.status, self.error_code, self.description = status, error_code, description
        self.headers = headers


def hypercorn_config(address: str, port: int, logger: logging.Logger, certfile: str | None = None,
                     keyfile: str | None = None, node_dir=None) -> hypercorn.config.Config:
    """How a node's web services (cnm_http, cm_server) are served: on the node's address, quick
    to stop, errors to the service's log, HTTPS when given a certificate and its key (with the
    control-plane TLS policy of node_dir, if given)."""
    hc = RestServerConfig()
    hc.node_dir = node_dir
    hc.bind = [f"{address}:{port}"]
    hc.graceful_timeout = 1.0
    hc.errorlog = logger
    if certfile and keyfile:
        hc.certfile, hc.keyfile = certfile, keyfile
    return hc


def _not_found(kind: str, uid) -> ApiError:
    return ApiError(404, f"{kind}_not_exist", f"{kind} {uid} does not exist")


# ---- answers ---------------------------------------------------------------------------------

def node_reply(view: ClusterView, uid: int) -> dict:
    info = view.nodes.get(uid) or {}
    beat = view.beats.get(uid)
    shard_list = sorted(s for s, rec in view.shards.items() if rec.node_uid == uid)
    extra = {k: info[k] for k in ("gossip_port", "rest_port", "sentinel_port", "dns_port",
                                  "ui_port") if k in info}
    return {"uid": uid, "addr": info.get("address") or (beat or {}).get("address"),
            "status": "active" if beat else "down", "shard_count": len(shard_list),
            "shard_list": shard_list, "master": uid == (view.master or {}).get("uid"),
            "uptime": time.time() - beat["started"] if beat else None,
            "services": {s["name"]: s["state"] for s in (beat or {}).get("services", [])},
            **extra}


def shard_reply(shard: schema.Shard, state: dict | None) -> dict:
    state = state or {}
    return {**{k: v for k, v in state.items() if k != "uid"}, **schema.as_dict(shard),
            "status": state.get("status", "unknown")}


def action_reply(action: schema.Action) -> dict:
    return {k: v for k, v in schema.as_dict(action).items() if k != "state"}   # cnm_exec's own


# ---- the service -----------------------------------------------------------------------------

class RestServerConfig(hypercorn.config.Config):
    """hypercorn's configuration, keeping the TLS context it serves with (hypercorn makes it
    once), so that a renewed certificate and the node's control-plane TLS policy (`node_dir`'s
    certs/tls_policy.json: min_control_TLS_version, control_cipher_suites) are loaded into that
    same context (tls.LiveContext)."""
    live = None             # tls.LiveContext, once hypercorn made its context
    node_dir = None

    def create_ssl_context(self):
        self.live = tls.LiveContext(super().create_ssl_context(), self.node_dir,
                                    self.certfile, self.keyfile)
        return self.live.context

    def reload_certificate(self) -> bool:
        """The certificate files (and the TLS policy) loaded again if they changed."""
        return self.live is not None and self.live.refresh()


class CnmHttp:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.session = ccs.Session.of_node(config)
        self.tls_policy: dict | None = None     # the control-plane TLS policy applied
        self.auth = rest_access.Authenticator(self, ApiError)
        self._master_conn = None
        self.redis_version: str | None = None
        self.app = build_app(self)

    async def run(self) -> None:
        hc = RestServerConfig()
        hc.node_dir = self.config.dir
        address = self.config.address
        http = [f"{address}:{self.config.rest_port}"] if self.config.rest_http else []
        if certificates.cert_file(self.config.dir, "api").exists():
            hc.certfile = str(certificates.cert_file(self.config.dir, "api"))
            hc.keyfile = str(certificates.key_file(self.config.dir, "api"))
            hc.bind = [f"{address}:{self.config.rest_tls_port}"]
            hc.insecure_bind = http
            nursery_task = self._keep_certificates
        else:
            log.warning("no certificate in %s: the REST API is served over HTTP only",
                        certificates.certs_dir(self.config.dir))
            hc.bind = http
            nursery_task = None
        hc.graceful_timeout = 1.0
        # hypercorn's 5 s closes idle connections while a client may just be reusing one (the
        # client then sees "disconnected without a response"); 75 s, as nginx
        hc.keep_alive_timeout = 75.0
        hc.errorlog = log
        self.server_config = hc
        if not self.config.admin:
            log.warning("node.json has no admin credentials: every request will be refused")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce)
            nursery.start_soon(self._answer_port_probes)
            if nursery_task:
                nursery.start_soon(nursery_task)
            await hypercorn.trio.serve(self.app, hc)
            nursery.cancel_scope.cancel()

    # ---- certificates ----------------------------------------------------------------------

    async def _keep_certificates(self) -> None:
        """Every tls.CERT_CHECK_EVERY: install the operator's certificate for the REST API when CCS
        has a new one, renew the node's CA-signed ones that are due, and load the REST API's
        again when its file changed (new handshakes use it; open connections keep theirs)."""
        while True:
            try:
                await self._install_operator_certificate()
            except (RedisUnavailable, ReplyError) as exc:
                log.debug("operator certificates not read for now: %s", exc)
            except (certificates.CertificateError, ValueError, KeyError) as exc:
                log.warning("the operator's certificate is not installed: %s", exc)
            renewed = await trio.to_thread.run_sync(
                certificates.renew_if_due, self.config.dir, self.config.uid,
                self.config.address, self.config.cluster_fqdn)
            if renewed:
                log.info("renewed the node's certificates: %s", ", ".join(renewed))
            if "cp" in renewed and self.config.cpine:
                await self._reload_ccs_certificate()
            try:
                await self._follow_tls_policy()
            except (RedisUnavailable, ReplyError) as exc:
                log.debug("TLS policy not read for now: %s", exc)
            if self.server_config.reload_certificate():
                log.info("REST API: serving certificate %s",
                         certificates.describe(certificates.cert_file(
                             self.config.dir, "api").read_bytes())["serial"])
            await trio.sleep(tls.CERT_CHECK_EVERY)

    async def _follow_tls_policy(self) -> None:
        """The cluster's min_control_TLS_version and control_cipher_suites, when they change:
        into the node's certs/tls_policy.json (every control-plane context of the node's
        services applies it at its next refresh: control/tls.py; the REST API's and the UI's
        HTTPS, RestServerConfig), and the CCS copy's tls-port (CONFIG SET tls-protocols,
        tls-ciphers)."""
        policy = await schema.cluster_policy(await self.session.local())
        wanted = {"min_version": policy["min_control_TLS_version"],
                  "ciphers": policy["control_cipher_suites"]}
        if wanted == self.tls_policy:
            return
        atomic_write(tls.policy_file(self.config.dir), json.dumps(wanted))
        self.server_config.reload_certificate()     # (applies the policy file)
        if self.config.cpine:
            await (await self.session.local()).execute(
                "CONFIG", "SET", "tls-protocols",
                "TLSv1.3" if wanted["min_version"] == "1.3" else "TLSv1.2 TLSv1.3",
                "tls-ciphers", wanted["ciphers"])
        self.tls_policy = wanted
        log.info("control-plane TLS: %s and up, ciphers %s", wanted["min_version"],
                 wanted["ciphers"] or "OpenSSL's defaults")

    async def _reload_ccs_certificate(self) -> None:
        """The node's CCS copy loads its renewed `cp` certificate (setting tls-cert-file makes
        redis-server load it again; its open connections keep theirs)."""
        d = self.config.dir
        try:
            await (await self.session.local()).execute(
                "CONFIG", "SET", "tls-cert-file", str(certificates.cert_file(d, "cp")),
                "tls-key-file", str(certificates.key_file(d, "cp")))
        except (RedisUnavailable, ReplyError) as exc:
            log.warning("CCS did not load the renewed certificate: %s", exc)

    async def _install_operator_certificate(self) -> None:
        for name in OPERATOR_CERTIFICATES:
            value = ccs.unpack(await (await self.session.local()).execute(
                "HGET", CERTIFICATES, name))
            if not value:
                continue
            pem = value["certificate"].encode()
            try:
                if certificates.cert_file(self.config.dir, name).read_bytes() == pem:
                    continue
            except FileNotFoundError:
                pass
            ca = certificates.read_ca(self.config.dir)
            pair = certificates.Pair(pem, certificates.unseal(ca, value["key"]))
            certificates.check_pair(pair)
            certificates.install(self.config.dir, name, pair)
            log.info("installed the operator's certificate %s", name)

    async def update_certificate(self, name: str, pem: str, key: str) -> dict:
        if name not in OPERATOR_CERTIFICATES:
            raise schema.InvalidRequest(f"certificate {name!r} cannot be set: "
                                        f"{', '.join(OPERATOR_CERTIFICATES)} can")
        pair = certificates.Pair(pem.encode(), key.encode())
        try:
            cert = certificates.check_pair(pair)
        except certificates.CertificateError as exc:
            raise ApiError(400, "invalid_certificate", str(exc)) from None
        sealed = certificates.seal(certificates.read_ca(self.config.dir), pair.key)
        r = await self.writer()
        with trio.CancelScope(shield=True):
            await ccs.write(r, CERTIFICATES, {"certificate": pem, "key": sealed,
                                              "time": time.time()}, field=name)
        described = certificates.describe(pair.certificate)
        log.info("certificate %s set by the operator: %s, valid until %s", name,
                 described["subject"], cert.not_valid_after_utc.isoformat())
        return {"name": name, **described}

    async def _announce(self) -> None:
        """Write this node's REST endpoint to `cluster:rest`; learn the Redis version."""
        while True:
            try:
                r = await self.session.master()
                await ccs.write(r, schema.NODE_REST, {"address": self.config.address,
                                                   "port": self.config.rest_port,
                                                   "tls_port": self.config.rest_tls_port,
                                                   "http": self.config.rest_http},
                                field=self.config.uid)
                await access.seed_admin(r, self.config.admin)
                server = await info(await self.session.local(), "server")
                self.redis_version = server.get("redis_version", "").strip() or None
                log.info("node %d: REST API on %s, HTTPS port %d, HTTP port %s",
                         self.config.uid, self.config.address, self.config.rest_tls_port,
                         self.config.rest_port if self.config.rest_http else "off")
                return
            except (RedisUnavailable, ReplyError):
                await trio.sleep(1.0)

    # ---- can the nodes bind a port? ----------------------------------------------------------

    async def _answer_port_probes(self) -> None:
        """Answer every node's question "can you bind this port?" for this node."""
        while True:
            try:
                async with ccs.subscribe_node(self.config, [PORT_PROBE]) as sub:
                    async for _channel, message in sub:
                        probe = ccs.unpack(message)
                        reason = bind_failure(self.config.address, probe["port"])
                        await (await self.session.master()).execute(
                            "PUBLISH", port_probe_channel(probe["token"]), ccs.pack(
                                {"node_uid": self.config.uid, "ok": reason is None,
                                 "reason": reason}))
            except (RedisUnavailable, ReplyError, OSError, KeyError, TypeError) as exc:
                log.debug("port probes not answered for now: %s", exc)
                await trio.sleep(0.5)

    async def check_port_bindable(self, r, view: ClusterView, port: int) -> None:
        """406 unless every node up can bind `port` now (each answers for itself). Nothing is
        written: the question and the answers are messages (a dry run makes it too)."""
        token = uuid.uuid4().hex
        answers: dict[int, dict] = {}
        asked = set(view.running("cnm_http")) | {self.config.uid}
        async with ccs.subscribe_node(self.config, [port_probe_channel(token)],
                                      forwarded=True) as replies:
            question = ccs.pack({"token": token, "port": port})
            with trio.move_on_after(PORT_PROBE_DEADLINE):
                # Asked again every PORT_PROBE_REPEAT: a node whose CCS copy is still syncing
                # (a cluster just started) misses a message published before it is in sync.
                while not asked <= set(answers):
                    await r.execute("PUBLISH", PORT_PROBE, question)
                    with trio.move_on_after(PORT_PROBE_REPEAT):
                        async for _channel, message in replies:
                            answer = ccs.unpack(message)
                            answers[answer["node_uid"]] = answer
                            if asked <= set(answers):
                                break
        failed = {n: a["reason"] for n, a in sorted(answers.items()) if not a.get("ok")}
        if failed:
            raise schema.InvalidRequest(f"port {port} cannot be bound on " + "; ".join(
                f"node {n}: {reason}" for n, reason in failed.items()))
        silent = sorted(asked - set(answers))
        if silent:
            raise ApiError(503, "port_check_timeout", f"node(s) {', '.join(map(str, silent))} "
                           f"did not say within {PORT_PROBE_DEADLINE}s whether they can bind "
                           f"port {port}; try again")

    # ---- CCS -------------------------------------------------------------------------------

    async def _master(self):
        """The master's copy, through the forwarded port. A connection heartbeatd dropped
        because the master changed is noticed by PING and made again, once; a new connection
        that fails is not tried twice."""
        r = await self.session.master()
        reused, self._master_conn = r is self._master_conn, r
        try:
            await r.execute("PING")
        except RedisUnavailable:
            if not reused:
                raise
            r = self._master_conn = await self.session.master()
            await r.execute("PING")
        return r

    async def reader(self):
        """The master's copy if it answers, else the node's own (possibly a little behind)."""
        try:
            return await self._master()
        except (RedisUnavailable, ReplyError) as exc:
            log.info("reading the node's own CCS copy: the master's does not answer (%s)", exc)
            return await self.session.local()

    async def writer(self):
        return await self._master()

    @asynccontextmanager
    async def config_lock(self, r):
        token = uuid.uuid4().hex
        deadline = trio.current_time() + CONFIG_LOCK_WAIT
        while await r.execute("SET", CONFIG_LOCK, token, "NX", "PX", CONFIG_LOCK_MS) is None:
            if trio.current_time() > deadline:
                raise ApiError(503, "busy", "another change is being validated; try again")
            await trio.sleep(0.02)
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await r.execute("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                    "return redis.call('DEL', KEYS[1]) end return 0",
                                    1, CONFIG_LOCK, token)
                except (RedisUnavailable, ReplyError):
                    pass            # it expires by itself

    async def _unlocked(self, r, bdb_uid: int) -> None:
        holder = await r.execute("GET", schema.lock_key(bdb_uid))
        if holder is not None:
            raise schema.Conflict(f"database {bdb_uid} is being changed by action "
                               f"{holder.decode()}")

    # ---- the requests ----------------------------------------------------------------------

    async def create_bdb(self, body: rest_models.BdbCreate, dry_run: bool) -> dict:
        check_backup_location(body.backup_location)
        r = await (self.reader() if dry_run else self.writer())
        await rest_access.check_roles_permissions(r, body.model_dump()["roles_permissions"])
        async with nullcontext() if dry_run else self.config_lock(r):
            view = await read_view(r, with_actions=True)
            record, placement = plan_create(view, body, await schema.cluster_policy(r))
            await self.check_port_bindable(r, view, record["port"])
            if dry_run:
                return {"dry_run": True, "action": "bdb_create", "object_uid": None,
                        "params": {}, "bdb": record,
                        "placement": [{"master_node_uid": m, "replica_node_uid": rep}
                                      for m, rep in placement]}
            # A client that goes away must not leave half a request behind (a record without
            # its action, a lock without an action to release it): every Redis call is bounded.
            with trio.CancelScope(shield=True):
                uid = await schema.next_uid(r, "bdb")
                action = schema.new_action("bdb_create", "bdb", uid, {})
                record["authentication_redis_pass"] = self.seal(
                    record["authentication_redis_pass"])
                record.update(uid=uid, status="pending", action_uid=action.action_uid,
                              created_time=time.time())
                if not record.get("backup_location"):
                    record["backup_location"] = str(backup_mgr.default_location(
                        self.config.dir))
                if self.redis_version:
                    record["redis_version"] = self.redis_version
                bdb = schema.Bdb(**record)
                await schema.put_bdb(r, bdb)
                await schema.submit(r, action, lock_bdb=uid)
            log.info("database %d (%s) requested: action %s", uid, record["name"],
                     action.action_uid)
        return {**self.shown(schema.public_bdb(bdb, view.nodes, [], self.config.cluster_fqdn,
                                               addresses=view.endpoint_addresses(bdb))),
                "action_uid": action.action_uid}

    # ---- the database password: sealed in CCS (certificates.seal_text), shown by REST as RE's

    def seal(self, password: str) -> str:
        return certificates.seal_text(self.config.dir, password)

    def reveal(self, value: str | None) -> str | None:
        return certificates.reveal_text(self.config.dir, value)

    def shown(self, reply: dict) -> dict:
        reply["authentication_redis_pass"] = self.reveal(reply.get("authentication_redis_pass"))
        return reply

    async def update_bdb(self, uid: int, body: rest_models.BdbSettings, dry_run: bool) -> dict:
        given = body.model_dump(exclude_unset=True)
        if "backup_location" in given and given["backup_location"] is None:
            given["backup_location"] = str(backup_mgr.default_location(self.config.dir))
        check_backup_location(given.get("backup_location"))
        r = await (self.reader() if dry_run else self.writer())
        await rest_access.check_roles_permissions(r, given.get("roles_permissions"))
        async with nullcontext() if dry_run else self.config_lock(r):
            view = await read_view(r, with_actions=True)
            current = view.bdbs.get(uid)
            if current is None:
                raise _not_found("bdb", uid)
            await self._unlocked(r, uid)
            if "authentication_redis_pass" in given:     # CCS holds it sealed
                if given["authentication_redis_pass"] == self.reveal(
                        current.authentication_redis_pass):
                    del given["authentication_redis_pass"]
                else:
                    given["authentication_redis_pass"] = self.seal(
                        given["authentication_redis_pass"])
            name, params = plan_update(view, current, given, await schema.cluster_policy(r))
            if "port" in params:
                await self.check_port_bindable(r, view, params["port"])
            if dry_run or name is None:
                reply = self.shown(schema.public_bdb(current, view.nodes, view.shards_of(uid),
                                                     self.config.cluster_fqdn,
                                                     addresses=view.endpoint_addresses(current)))
                if dry_run:
                    return {"dry_run": True, "action": name, "object_uid": uid,
                            "params": params, "bdb": reply}
                return {**reply, "action_uid": None}
            with trio.CancelScope(shield=True):
                action = await schema.submit(r, schema.new_action(name, "bdb", uid, params),
                                          lock_bdb=uid)
        log.info("database %d: %s %s, action %s", uid, name, sorted(params), action.action_uid)
        return {**self.shown(schema.public_bdb(current, view.nodes, view.shards_of(uid),
                                               self.config.cluster_fqdn,
                                               addresses=view.endpoint_addresses(current))),
                "action_uid": action.action_uid}

    async def delete_bdb(self, uid: int, dry_run: bool) -> dict:
        r = await (self.reader() if dry_run else self.writer())
        current = await schema.get_bdb(r, uid)
        if current is None:
            raise _not_found("bdb", uid)
        await self._unlocked(r, uid)
        if dry_run:
            return {"dry_run": True, "action": "bdb_delete", "object_uid": uid, "params": {}}
        with trio.CancelScope(shield=True):
            action = await schema.submit(r, schema.new_action("bdb_delete", "bdb", uid, {}),
                                      lock_bdb=uid)
        log.info("database %d: delete, action %s", uid, action.action_uid)
        return {"action_uid": action.action_uid, "object_uid": uid}

    async def shard_action(self, uid: int, name: str, params: dict, dry_run: bool) -> dict:
        r = await (self.reader() if dry_run else self.writer())
        view = await read_view(r)
        shard = view.shards.get(uid)
        if shard is None:
            raise _not_found("shard", uid)
        bdb_uid = shard.bdb_uid
        await self._unlocked(r, bdb_uid)
        pair = pair_of(shard, view.shards)
        if name == "shard_failover" and not pair:
            raise schema.InvalidRequest(f"shard {uid} has no replica to fail over to"
                                     if shard.role == "master" else
                                     f"replica shard {uid} has no master")
        if name == "shard_migrate":
            target = params["target_node_uid"]
            if target not in view.nodes:
                raise schema.InvalidRequest(f"node {target} is not a member of the cluster")
            if target not in view.up:
                raise schema.InvalidRequest(f"node {target} is down")
            if shard.node_uid == target:
                raise schema.InvalidRequest(f"shard {uid} is already on node {target}")
            for other in pair:
                if other.node_uid == target:
                    raise schema.InvalidRequest(f"node {target} holds shard {other.uid}, the "
                                             f"{other.role} of shard {uid}")
        if dry_run:
            return {"dry_run": True, "action": name, "object_uid": uid, "params": params}
        action = schema.new_action(name, "shard", uid, params)
        action.bdb_uid = bdb_uid           # whose lock cnm_exec releases at the end
        with trio.CancelScope(shield=True):
            await schema.submit(r, action, lock_bdb=bdb_uid)
        log.info("shard %d: %s %s, action %s", uid, name, params, action.action_uid)
        return {"action_uid": action.action_uid, "object_uid": uid}


    # ---- backups ---------------------------------------------------------------------------

    async def backup_bdb(self, uid: int, body: BackupRequest | None, dry_run: bool) -> dict:
        location = body.location if body else None
        check_backup_location(location)
        r = await (self.reader() if dry_run else self.writer())
        current = await self._active(r, uid)
        params = {"location": location} if location else {}
        if dry_run:
            return {"dry_run": True, "action": "bdb_backup", "object_uid": uid, "params": params,
                    "location": location or current.backup_location or
                    str(backup_mgr.default_location(self.config.dir))}
        with trio.CancelScope(shield=True):
            action = await schema.submit(r, schema.new_action("bdb_backup", "bdb", uid, params),
                                      lock_bdb=uid)
        log.info("database %d: backup, action %s", uid, action.action_uid)
        return {"action_uid": action.action_uid, "object_uid": uid}

    async def import_bdb(self, uid: int, body: ImportRequest, dry_run: bool) -> dict:
        given = [k for k in ("backup_id", "backup_path", "rdb_path") if getattr(body, k)]
        if len(given) != 1:
            raise ApiError(400, "invalid_schema", "give exactly one of backup_id, backup_path, "
                           "rdb_path" + (f" (not {' and '.join(given)})" if given else ""))
        if body.from_bdb_uid is not None and not body.backup_id:
            raise ApiError(400, "invalid_schema", "from_bdb_uid goes with backup_id")
        r = await (self.reader() if dry_run else self.writer())
        await self._active(r, uid)
        params: dict = {"flush": body.flush}
        if body.backup_id:
            source_uid = body.from_bdb_uid if body.from_bdb_uid is not None else uid
            source = await schema.get_bdb(r, source_uid)
            if source is None:
                raise ApiError(404, "bdb_not_exist", f"bdb {source_uid} does not exist (the "
                               "backups of a deleted database are imported by backup_path)")
            location = backup_mgr.location_of(source, self.config.dir)
            found = await trio.to_thread.run_sync(backup_mgr.find_backup, location, source_uid,
                                                  body.backup_id)
            if found is None:
                raise ApiError(404, "backup_not_exist", f"backup {body.backup_id} of database "
                               f"{source_uid} does not exist in {location}")
            params["backup_path"] = found["path"]
        elif body.backup_path:
            path = _absolute(body.backup_path)
            manifest = await _checked(backup_mgr.read_manifest, path, "invalid_backup")
            if manifest.get("status") != "complete":
                raise ApiError(400, "invalid_backup", f"backup {path} is not complete")
            params["backup_path"] = str(path)
        else:
            path = _absolute(body.rdb_path)
            await _checked(backup_mgr.check_rdb_file, path, "invalid_rdb")
            params["rdb_path"] = str(path)
        if dry_run:
            return {"dry_run": True, "action": "bdb_import", "object_uid": uid, "params": params}
        with trio.CancelScope(shield=True):
            action = await schema.submit(r, schema.new_action("bdb_import", "bdb", uid, params),
                                      lock_bdb=uid)
        log.info("database %d: import %s, action %s", uid, params, action.action_uid)
        return {"action_uid": action.action_uid, "object_uid": uid}

    async def backups(self, uid: int) -> list[dict]:
        current = await schema.get_bdb(await self.reader(), uid)
        if current is None:
            raise _not_found("bdb", uid)
        location = backup_mgr.location_of(current, self.config.dir)
        return await trio.to_thread.run_sync(backup_mgr.list_backups, location, uid)

    async def _active(self, r, uid: int) -> schema.Bdb:
        """The database, if it exists (404), no action holds it (409) and it is active (406)."""
        current = await schema.get_bdb(r, uid)
        if current is None:
            raise _not_found("bdb", uid)
        await self._unlocked(r, uid)
        if current.status != "active":
            raise schema.InvalidRequest(f"database {uid} is {current.status}, not active")
        return current


def port_probe_channel(token: str) -> str:
    return f"{PORT_PROBE}:{token}"


def _absolute(path: str) -> Path:
    if not os.path.isabs(path):
        raise ApiError(400, "invalid_schema", f"{path} is not an absolute path")
    return Path(path)


async def _checked(check, path: Path, error_code: str):
    """check(path) in a thread: 404 if the path is not there, 400 if it is not what it should
    be."""
    try:
        return await trio.to_thread.run_sync(check, path)
    except backup_mgr.NotFound as exc:
        raise ApiError(404, "file_not_exist", str(exc)) from None
    except backup_mgr.BackupError as exc:
        raise ApiError(400, error_code, str(exc)) from None


def _unauthorized(description: str) -> ApiError:
    return ApiError(401, "unauthorized", description)


def _error(status: int, code: str, description: str, headers=None) -> JSONResponse:
    return JSONResponse({"error_code": code, "description": description}, status_code=status,
                        headers=headers)


def _describe(error: dict, request: Request) -> str:
    loc = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
    if error["type"] == "extra_forbidden":
        return f"unknown field {loc}"
    if error["type"] == "json_invalid":
        return "the body is not valid JSON"
    if loc == "body" and error["type"] == "missing":
        return "a JSON body is required"
    if loc == "body" and "json" not in request.headers.get("content-type", ""):
        return "the body must be a JSON object sent as Content-Type: application/json"
    if loc == "body":
        return "the body must be a JSON object"
    return f"{loc}: {error['msg']}"


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route of the request's path answers (for a 405's Allow)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return sorted(methods)


# ---- the FastAPI application ----------------------------------------------------------------

BASIC = HTTPBasic(auto_error=False, realm="dmc")


def build_app(api: CnmHttp) -> FastAPI:
    async def authenticated(request: Request,
                            credentials: Annotated[HTTPBasicCredentials | None,
                                                   Depends(BASIC)]) -> None:
        client = request.client.host if request.client else "?"
        request.state.user = await api.auth.login(credentials, client)
        await rest_access.authorize(api, request.state.user, request, ApiError)

    app = FastAPI(title="dmc cluster REST API", version="1",
                  description="Databases, nodes, shards and actions of a dmc cluster, in the "
                  "shape of Redis Enterprise's REST API. Basic authentication as a user of the "
                  "cluster; its management role decides what it may do (403).",
                  dependencies=[Depends(authenticated)],
                  responses={k: ERRORS[k] for k in (401, 403, 429)},
                  openapi_url=None, docs_url=None, redoc_url=None)

    # ---- errors ----

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="dmc"'
        return _error(exc.status, exc.error_code, exc.description, headers or None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = 'Basic realm="dmc"'
        if exc.status_code == 405:       # Starlette names the methods of one route of the path
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"),
                      str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return _error(400, "invalid_schema", "; ".join(_describe(e, request) for e in errors))

    @app.exception_handler(schema.InvalidRequest)
    async def _invalid_configuration(request: Request, exc: schema.InvalidRequest):
        return _error(406, "invalid_configuration", str(exc))

    @app.exception_handler(schema.Conflict)
    async def _conflict(request: Request, exc: schema.Conflict):
        return _error(409, "bdb_locked", str(exc))

    @app.exception_handler(RedisUnavailable)
    async def _unavailable(request: Request, exc: RedisUnavailable):
        return _error(503, "ccs_unavailable", f"the cluster configuration store does not "
                      f"answer ({exc})")

    @app.exception_handler(ReplyError)
    async def _reply_error(request: Request, exc: ReplyError):
        if exc.kind in NOT_WRITABLE:
            return _error(503, "ccs_unavailable", f"no writable CCS master ({exc})")
        log.error("CCS error on %s %s: %s", request.method, request.url.path, exc)
        return _error(500, "internal_error", f"CCS error: {exc}")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    # ---- the API's description ----

    generated = app.openapi

    def openapi() -> dict:
        """FastAPI's document, without the 422 it adds everywhere: validation errors are 400,
        declared on every operation that has a path or query parameter or a body."""
        document = generated()
        for path in document["paths"].values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {
                        "description": ERRORS[400]["description"],
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorReply"}}}})
        for name in ("HTTPValidationError", "ValidationError"):
            document.get("components", {}).get("schemas", {}).pop(name, None)
        return document

    app.openapi = openapi

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json():
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    # statistics, alerts, the event log (before /v1/bdbs/{uid}, which would take `stats`)
    rest_stats.add_routes(app, api, ApiError, _not_found)
    rest_access.add_routes(app, api, ApiError, _not_found)

    # ---- bdbs ----

    bdb_errors = {k: ERRORS[k] for k in (400, 404, 406, 409, 503)}

    @app.get("/v1/bdbs", response_model=list[Bdb], tags=["bdbs"])
    async def list_bdbs():
        r = await api.reader()
        view = await read_view(r)
        failures = await schema.endpoint_failures(r, view.bdbs)
        return [api.shown(schema.public_bdb(b, view.nodes, view.shards_of(u),
                                            api.config.cluster_fqdn, failures.get(u),
                                            view.endpoint_addresses(b)))
                for u, b in sorted(view.bdbs.items())]

    @app.get("/v1/bdbs/{uid}", response_model=Bdb, tags=["bdbs"], responses=bdb_errors)
    async def get_bdb(uid: int):
        r = await api.reader()
        view = await read_view(r)
        if uid not in view.bdbs:
            raise _not_found("bdb", uid)
        failures = await schema.endpoint_failures(r, [uid])
        return api.shown(schema.public_bdb(view.bdbs[uid], view.nodes, view.shards_of(uid),
                                           api.config.cluster_fqdn, failures.get(uid),
                                           view.endpoint_addresses(view.bdbs[uid])))

    @app.post("/v1/bdbs", response_model=Bdb | DryRun, tags=["bdbs"], responses=bdb_errors,
              summary="Create a database (answers at once; follow action_uid)")
    async def create_bdb(body: rest_models.BdbCreate, dry_run: bool = False):
        return await api.create_bdb(body, dry_run)

    @app.put("/v1/bdbs/{uid}", response_model=Bdb | DryRun, tags=["bdbs"], responses=bdb_errors,
             summary="Change a database: shards_count alone reshards, the rest updates")
    async def update_bdb(uid: int, body: rest_models.BdbSettings, dry_run: bool = False):
        return await api.update_bdb(uid, body, dry_run)

    @app.delete("/v1/bdbs/{uid}", response_model=ActionStarted | DryRun, tags=["bdbs"],
                responses=bdb_errors)
    async def delete_bdb(uid: int, dry_run: bool = False):
        return await api.delete_bdb(uid, dry_run)

    # ---- backups ----

    @app.post("/v1/bdbs/{uid}/actions/backup", response_model=ActionStarted | DryRun,
              tags=["backups"], responses=bdb_errors,
              summary="Back the database up: an RDB per shard and a manifest, in a folder")
    async def backup_bdb(uid: int, body: BackupRequest | None = None, dry_run: bool = False):
        return await api.backup_bdb(uid, body, dry_run)

    @app.get("/v1/bdbs/{uid}/backups", response_model=list[Backup], tags=["backups"],
             responses={404: ERRORS[404]}, summary="The database's complete backups, oldest "
             "first (those in its backup_location)")
    async def list_backups(uid: int):
        return await api.backups(uid)

    @app.get("/v1/bdbs/{uid}/backups/{backup_id}", response_model=Backup, tags=["backups"],
             responses={404: ERRORS[404]})
    async def get_backup(uid: int, backup_id: str):
        found = [b for b in await api.backups(uid) if b["backup_id"] == backup_id]
        if not found:
            raise _not_found("backup", backup_id)
        return found[0]

    @app.post("/v1/bdbs/{uid}/actions/import", response_model=ActionStarted | DryRun,
              tags=["backups"], responses=bdb_errors,
              summary="Load a backup (of any shard count) or an RDB file into the database")
    async def import_bdb(uid: int, body: ImportRequest, dry_run: bool = False):
        return await api.import_bdb(uid, body, dry_run)

    # ---- nodes, cluster ----

    @app.get("/v1/nodes", response_model=list[Node], tags=["nodes"])
    async def list_nodes():
        view = await read_view(await api.reader())
        return [node_reply(view, u) for u in sorted(view.nodes)]

    @app.get("/v1/nodes/{uid}", response_model=Node, tags=["nodes"],
             responses={404: ERRORS[404]})
    async def get_node(uid: int):
        view = await read_view(await api.reader())
        if uid not in view.nodes:
            raise _not_found("node", uid)
        return node_reply(view, uid)

    def cluster_reply(view: ClusterView, policy: dict, alert_settings: dict) -> dict:
        master = view.master or {}
        return {"name": "dmc", "master_node_uid": master.get("uid"), "term": master.get("term"),
                "master_since": master.get("since"), "nodes_count": len(view.nodes),
                "nodes_up": len(view.up), "bdbs_count": len(view.bdbs),
                "shards_count": len(view.shards), **policy,
                "memory_size": sum((view.beats.get(n) or {}).get("memory_total") or 0
                                   for n in view.up),
                "memory_booked": sum(booked_memory(view).values()),
                "alert_settings": {**alerts.CLUSTER_DEFAULTS, **alert_settings}}

    @app.get("/v1/cluster", response_model=Cluster, tags=["cluster"])
    async def get_cluster():
        r = await api.reader()
        return cluster_reply(await read_view(r), await schema.cluster_policy(r),
                             await alerts.cluster_settings(r))

    @app.put("/v1/cluster", response_model=Cluster, tags=["cluster"],
             responses={k: ERRORS[k] for k in (400, 503)},
             summary="Change the cluster's settings (memory overbooking)")
    async def update_cluster(body: rest_models.ClusterPolicy):
        r = await api.writer()
        changes = body.model_dump(exclude_unset=True)
        settings = await alerts.cluster_settings(r)
        if "alert_settings" in changes:
            settings = {**settings, **{name: setting for name, setting in
                                       (changes.pop("alert_settings") or {}).items() if setting}}
        policy = {**await schema.cluster_policy(r), **changes}
        with trio.CancelScope(shield=True):
            await ccs.write(r, schema.CLUSTER_POLICY, policy)
            await ccs.write(r, alerts.CLUSTER_SETTINGS, settings)
        log.info("cluster settings: %s", policy)
        return cluster_reply(await read_view(r), policy, settings)

    @app.get("/v1/cluster/certificates", tags=["cluster"],
             summary="The cluster CA's certificate and this node's (PEM), no keys")
    async def get_certificates():
        d = api.config.dir
        out = {"ca_cert": certificates.ca_file(d).read_text()}
        for plane in certificates.PLANES:
            pem = certificates.cert_file(d, plane).read_bytes()
            out[f"{plane}_cert"] = pem.decode()
            out[plane] = certificates.describe(pem)
        return out

    @app.put("/v1/cluster/update_cert", tags=["cluster"],
             responses={k: ERRORS[k] for k in (400, 406, 503)},
             summary="Install the operator's certificate and key (name: api) on every node")
    async def update_cert(body: CertificateUpdate):
        return await api.update_certificate(body.name, body.certificate, body.key)

    # ---- shards ----

    async def shard_states(r) -> dict[int, dict]:
        return await ccs.read_hash(r, schema.SHARD_STATE)

    @app.get("/v1/shards", response_model=list[Shard], tags=["shards"])
    async def list_shards():
        r = await api.reader()
        shards, states = await schema.shards(r), await shard_states(r)
        return [shard_reply(s, states.get(u)) for u, s in sorted(shards.items())]

    @app.get("/v1/shards/{uid}", response_model=Shard, tags=["shards"],
             responses={404: ERRORS[404]})
    async def get_shard(uid: int):
        r = await api.reader()
        shard = await schema.get_shard(r, uid)
        if shard is None:
            raise _not_found("shard", uid)
        state = ccs.unpack(await r.execute("HGET", schema.SHARD_STATE, str(uid)))
        return shard_reply(shard, state)

    shard_errors = {k: ERRORS[k] for k in (404, 406, 409, 503)}

    @app.post("/v1/shards/{uid}/actions/failover", response_model=ActionStarted | DryRun,
              tags=["shards"], responses=shard_errors,
              summary="Promote the master shard's replica")
    async def failover_shard(uid: int, dry_run: bool = False):
        return await api.shard_action(uid, "shard_failover", {}, dry_run)

    @app.post("/v1/shards/{uid}/actions/migrate", response_model=ActionStarted | DryRun,
              tags=["shards"], responses={**shard_errors, 400: ERRORS[400]},
              summary="Move the shard to another node")
    async def migrate_shard(uid: int, body: MigrateRequest, dry_run: bool = False):
        return await api.shard_action(uid, "shard_migrate",
                                      {"target_node_uid": body.target_node_uid}, dry_run)

    @app.post("/v1/nodes/{uid}/actions/remove", response_model=ActionStarted | DryRun,
              tags=["nodes"], responses={k: ERRORS[k] for k in (404, 406, 503)},
              summary="Move every shard off the node, then take it out of the cluster")
    async def remove_node(uid: int, dry_run: bool = False):
        r = await (api.reader() if dry_run else api.writer())
        view = await read_view(r)
        if uid not in view.nodes:
            raise _not_found("node", uid)
        if len(view.nodes) < 2:
            raise schema.InvalidRequest("the last node of a cluster cannot be removed")
        if dry_run:
            return {"dry_run": True, "action": "node_remove", "object_uid": uid, "params": {}}
        action = schema.new_action("node_remove", "node", uid, {})
        with trio.CancelScope(shield=True):
            await schema.submit(r, action)
        return {"action_uid": action.action_uid, "object_uid": uid}

    # ---- actions ----

    @app.get("/v1/actions", response_model=list[Action], tags=["actions"])
    async def list_actions():
        actions = await schema.actions(await api.reader())
        return [action_reply(a) for a in sorted(actions.values(),
                                                key=lambda a: a.creation_time or 0)]

    @app.get("/v1/actions/{uid}", response_model=Action, tags=["actions"],
             responses={404: ERRORS[404]})
    async def get_action(uid: str):
        action = await schema.get_action(await api.reader(), uid)
        if action is None:
            raise _not_found("action", uid)
        return action_reply(action)

    return app


main = service_command("cnm_http", CnmHttp)

if __name__ == "__main__":
    main()
