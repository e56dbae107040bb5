"""The operator's database commands, registered on `dmc` with the cluster commands
(control/cli.py): `dmc db create|list|show|update|delete|reshard|import|restore`, `dmc backup
create|list|show`, `dmc shard list|failover|migrate`, `dmc action list|show`.

They talk to the cluster's REST API (cnm_http) over HTTPS, verified against the cluster CA, as
the cluster admin, with the credentials the local cluster folder keeps (`admin.json`), through
any node: when one does not answer, the next
one is asked. A change answers with an action; the command follows it with a progress bar (on
stderr) until it is completed (exit 0) or failed (exit 1 and the action's error), unless
`--no-wait`. Every error is one line, `error: <description>`, and exit 1; never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from control import schema
from control.local_cluster import ClusterError, LocalCluster

# The same --home as the cluster commands (control/cli.py imports this module, so it cannot
# import that one).
DEFAULT_HOME = Path(os.environ.get("DMC_HOME", Path.home() / ".dmc")) / "cluster"

home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_HOME,
    show_default=True, help="Folder of the local cluster (env DMC_HOME/cluster).")

POLL_EVERY = 0.2
WAIT_TIMEOUT = 600.0
# When every node refuses the connection (nothing listens: a cluster just started, cnm_http
# restarting), ask again for this long: the request was never sent, so it is safe to repeat.
CONNECT_PATIENCE = 5.0


class Failure(click.ClickException):
    """One line on stderr, `error: ...`, and exit 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


# ---- sizes and slots, as an operator writes and reads them -----------------------------------

UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
         "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def parse_memory(text: str) -> int:
    """'1GB', '512mb', '100M', '1.5g' or a number of bytes; units are powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 1GB, 512MB, 1073741824)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def format_memory(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"


def format_slots(ranges) -> str:
    if not ranges:
        return "-"
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges)


class MemoryType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_memory(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


MEMORY = MemoryType()


# ---- the REST API from the operator's machine ------------------------------------------------

class RestApi:
    """cnm_http of the cluster's nodes, asked in turn: a node that refuses the connection (or,
    for a read, cannot reach CCS) is skipped. A request that may have reached a node is never
    sent again to another, so a change is never made twice."""

    def __init__(self, cluster: LocalCluster, timeout: float = 10.0):
        if not cluster.nodes:
            raise Failure(f"the cluster in {cluster.home} has no nodes")
        try:
            auth = cluster.admin_login()
        except (OSError, ValueError, KeyError) as exc:
            raise Failure(f"no admin credentials in {cluster.admin_file} ({exc})") from None
        ca = cluster.cluster_ca()
        self.endpoints = [(uid, rest_base(c, ca is not None))
                          for uid, c in sorted(cluster.nodes.items())]
        verify = True
        if ca is not None:        # the cluster CA's, or an operator's from a CA the system trusts
            verify = ssl.create_default_context()
            verify.load_verify_locations(cadata=ca.certificate.decode())
        self.client = httpx.Client(auth=auth, timeout=timeout, verify=verify)
        self.current = 0

    @classmethod
    def of(cls, home: Path) -> RestApi:
        try:
            return cls(LocalCluster.load(home))
        except ClusterError as exc:
            raise Failure(str(exc)) from None

    def call(self, method: str, path: str, *, body: dict | None = None,
             params: dict | None = None):
        deadline = time.monotonic() + CONNECT_PATIENCE
        while True:
            problems, refused = [], True
            for i in range(len(self.endpoints)):
                index = (self.current + i) % len(self.endpoints)
                uid, base = self.endpoints[index]
                try:
                    resp = self.client.request(method, base + path, json=body, params=params)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    problems.append(f"node {uid}: {exc or type(exc).__name__}")
                    continue
                except httpx.TransportError as exc:
                    raise Failure(f"node {uid} did not answer {method} {path} "
                                  f"({exc or type(exc).__name__})") from None
                if resp.status_code == 503 and method == "GET":
                    problems.append(f"node {uid}: {_description(resp)}")
                    refused = False
                    continue
                self.current = index
                if resp.status_code >= 400:
                    raise Failure(_description(resp))
                return resp.json()
            if not refused or time.monotonic() > deadline:
                raise Failure("no node's REST API answered (" + "; ".join(problems) + ")")
            time.sleep(0.2)

    def bdb_uid(self, ref: str) -> int:
        """A database named by uid or by name."""
        if ref.isdigit():
            return int(ref)
        found = [b["uid"] for b in self.call("GET", "/v1/bdbs") if b.get("name") == ref]
        if not found:
            raise Failure(f"no database named {ref!r}")
        return found[0]

    def follow(self, action_uid: str, timeout: float = WAIT_TIMEOUT) -> dict:
        """Poll the action, with a progress bar, until it ends; Failure if it failed."""
        console = Console(stderr=True)
        with Progress(TextColumn("{task.description:<32}"), BarColumn(), TaskProgressColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("queued", total=100)
            deadline = time.monotonic() + timeout
            while True:
                action = self.call("GET", f"/v1/actions/{action_uid}")
                progress.update(task, completed=action.get("progress") or 0,
                                description=f"{action['name']}: {action.get('step') or ''}")
                if action["status"] in ("completed", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise Failure(f"action {action_uid} is still {action['status']} after "
                                  f"{timeout:.0f}s (dmc action show {action_uid})")
                time.sleep(POLL_EVERY)
        if action["status"] == "failed":
            raise Failure(f"{action['name']} failed: {action.get('error') or 'no reason given'}")
        return action


def rest_base(config, tls: bool = True) -> str:
    """A node's REST API: HTTPS, verified against the cluster CA, where the node has a
    certificate; else HTTP."""
    if tls:
        return f"https://{config.address}:{config.rest_tls_port}"
    return f"http://{config.address}:{config.rest_port}"


def _description(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        return str(data.get("description") or data)
    except ValueError:
        return f"HTTP {resp.status_code} {resp.reason_phrase}"


def _started(api: RestApi, reply: dict, wait: bool, done: str) -> None:
    """Follow (or not) the action a change started, and say how it ended."""
    action_uid = reply.get("action_uid")
    if action_uid is None:
        click.echo("nothing to change")
        return
    if not wait:
        click.echo(f"action {action_uid} started (dmc action show {action_uid})")
        return
    api.follow(action_uid)
    click.echo(done)


def _dry_run(reply: dict) -> None:
    if reply.get("action") is None:
        click.echo("dry run: nothing would change")
        return
    what = f"dry run: would start {reply['action']}"
    if reply.get("params"):
        what += " with " + ", ".join(f"{k}={v}" for k, v in reply["params"].items())
    click.echo(what)
    for i, p in enumerate(reply.get("placement") or [], start=1):
        replica = p.get("replica_node_uid")
        click.echo(f"  shard {i}: master on node {p['master_node_uid']}"
                   + (f", replica on node {replica}" if replica else ""))


def _redis_cli_line(reply: dict) -> str:
    endpoint = (reply.get("endpoints") or [{}])[0]
    addr = (endpoint.get("addr") or ["127.0.0.1"])[0]
    line = f"redis-cli -h {addr} -p {reply['port']}"
    if reply.get("tls_mode") == "enabled":
        line += " --tls --cacert <(dmc cluster ca)"
    return line + " --askpass" if reply.get("authentication_redis_pass") else line


# ---- dmc db ----------------------------------------------------------------------------------

wait_option = click.option("--wait/--no-wait", default=True, show_default=True,
                           help="Follow the action until it ends.")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Validate and show what would happen; change nothing.")


def _settings_options(f, *, create: bool):
    """The options of `db create` and `db update` (defaults only for create)."""
    options = [
        click.option("--port", type=click.IntRange(1, 65535),
                     help="The endpoint's port (default: the lowest free from 10000)."
                     if create else "A new port for the endpoint."),
        click.option("--memory", type=MEMORY, default="100MB" if create else None,
                     show_default=create, help="Memory limit, split over the shards (1GB, ...)."),
        click.option("--replication/--no-replication", default=False if create else None,
                     show_default=create, help="A replica for every master shard."),
        click.option("--persistence", type=click.Choice(schema.PERSISTENCE),
                     default="disabled" if create else None, show_default=create,
                     help="Written to disk by the replicas with --replication, else the master."),
        click.option("--aof-policy", type=click.Choice(schema.AOF_POLICIES),
                     default="appendfsync-every-sec" if create else None, show_default=create),
        click.option("--password", help="Password clients give with AUTH."),
        click.option("--eviction-policy", type=click.Choice(schema.EVICTION_POLICIES),
                     default="volatile-lru" if create else None, show_default=create),
        click.option("--multi-slot-commands", type=click.Choice(schema.MULTI_SLOT_POLICIES),
                     help="Multi-key commands over keys of several shards: refuse (CROSSSLOT, "
                          "the default) or sequential (carried out in single-shard steps)."),
        click.option("--oss-cluster/--no-oss-cluster", default=None,
                     help="The OSS Cluster API: cluster clients talk to the proxies of the nodes "
                          "of the master shards (CLUSTER SLOTS, -MOVED)."),
        click.option("--proxy-threads", type=click.IntRange(1, 64), default=None,
                     help="Worker threads of each node's proxy for this database (default 1)."),
        click.option("--backup-interval", type=click.IntRange(0), metavar="SECONDS",
                     help="Back the database up every SECONDS (0: no scheduled backups)."),
        click.option("--backup-location", type=click.Path(file_okay=False),
                     help="Folder of its backups (default: the cluster folder's backups/)."),
        click.option("--query-buffer-limit", type=MEMORY, default=None,
                     help="A client's unparsed input on the proxy at most (Redis's "
                     "client-query-buffer-limit; default 1GB)."),
        click.option("--allow-privileged-port", is_flag=True, default=None,
                     help="Accept a --port below 1024."),
        click.option("--tls/--no-tls", default=None,
                     help="Client TLS: clients must speak TLS to the endpoint (verify it with "
                          "`dmc cluster ca`; tls_mode)."),
        click.option("--tls-client-auth/--no-tls-client-auth", default=None,
                     help="With --tls: clients must present a certificate the cluster CA "
                          "signed, or one given with --tls-client-cert."),
        click.option("--tls-client-cert", "tls_client_certs", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="A client certificate (PEM file) the database trusts; repeat for "
                          "more (replaces the list)."),
        click.option("--tls-authorized-name", "tls_authorized_names", multiple=True,
                     metavar="NAME",
                     help="With --tls-client-auth: a client certificate must name one of these "
                          "(subject CN or DNS SAN); repeat for more (replaces the list; "
                          "authorized_names)."),
        click.option("--data-internode-encryption/--no-data-internode-encryption", default=None,
                     help="DPINE: the proxies reach the shards, and replicas their masters, "
                          "over TLS (data_internode_encryption)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def create_settings(f):
    return _settings_options(f, create=True)


def update_settings(f):
    return _settings_options(f, create=False)


def _settings(port, memory, replication, persistence, aof_policy, password,
              eviction_policy, multi_slot_commands=None, oss_cluster=None, proxy_threads=None,
              backup_interval=None, backup_location=None, query_buffer_limit=None,
              allow_privileged_port=None, tls=None, tls_client_auth=None,
              tls_client_certs=(), tls_authorized_names=(),
              data_internode_encryption=None) -> dict:
    given = {"port": port, "memory_size": memory, "replication": replication,
             "client_query_buffer_limit": query_buffer_limit,
             "allow_privileged_port": allow_privileged_port or None,
             "data_persistence": persistence, "aof_policy": aof_policy,
             "authentication_redis_pass": password, "eviction_policy": eviction_policy,
             "backup_interval": backup_interval, "multi_slot_commands": multi_slot_commands,
             "oss_cluster": oss_cluster, "proxy_threads": proxy_threads,
             "backup_location": os.path.abspath(backup_location) if backup_location else None,
             "tls_mode": None if tls is None else ("enabled" if tls else "disabled"),
             "enforce_client_authentication": None if tls_client_auth is None
             else ("enabled" if tls_client_auth else "disabled"),
             "authentication_ssl_client_certs": [
                 {"client_cert": Path(f).read_text()} for f in tls_client_certs] or None,
             "authorized_names": list(tls_authorized_names) or None,
             "data_internode_encryption": data_internode_encryption}
    return {k: v for k, v in given.items() if v is not None}


@click.group()
def db():
    """Create, change and delete databases (through the REST API)."""


@db.command("create")
@click.argument("name")
@click.option("--shards", type=click.IntRange(1, 64), default=1, show_default=True)
@create_settings
@dry_run_option
@wait_option
@home_option
def db_create(name, shards, port, memory, replication, persistence, aof_policy, password,
              eviction_policy, multi_slot_commands, oss_cluster, proxy_threads, backup_interval,
              backup_location, query_buffer_limit, allow_privileged_port, tls, tls_client_auth,
              tls_client_certs, tls_authorized_names, data_internode_encryption, dry_run, wait,
              home):
    """Create database NAME and wait until its endpoint serves."""
    api = RestApi.of(home)
    body = {"name": name, "shards_count": shards, **_settings(
        port, memory, replication, persistence, aof_policy, password, eviction_policy,
        multi_slot_commands, oss_cluster, proxy_threads, backup_interval, backup_location,
        query_buffer_limit, allow_privileged_port, tls=tls, tls_client_auth=tls_client_auth,
        tls_client_certs=tls_client_certs, tls_authorized_names=tls_authorized_names,
        data_internode_encryption=data_internode_encryption)}
    reply = api.call("POST", "/v1/bdbs", body=body, params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        planned = reply.get("bdb") or {}
        click.echo(f"  port {planned.get('port')}, {format_memory(planned.get('memory_size'))}")
        return
    _started(api, reply, wait, f"database {reply['uid']} ({name}) is active on port "
             f"{reply.get('port')}")
    click.echo(_redis_cli_line(reply))


@db.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def db_list(as_json, home):
    """Every database: uid, name, port, shards, replication, status, memory."""
    bdbs = RestApi.of(home).call("GET", "/v1/bdbs")
    if as_json:
        click.echo(json.dumps(bdbs))
        return
    click.echo(f"{'UID':<5}{'NAME':<20}{'PORT':<7}{'SHARDS':<8}{'REPLICATION':<13}"
               f"{'PERSISTENCE':<13}{'STATUS':<17}MEMORY")
    for b in bdbs:
        click.echo(f"{b['uid']:<5}{b.get('name') or '?':<20}{b.get('port') or '?':<7}"
                   f"{b.get('shards_count') or '?':<8}"
                   f"{'enabled' if b.get('replication') else 'disabled':<13}"
                   f"{b.get('data_persistence') or '?':<13}{b.get('status') or '?':<17}"
                   f"{format_memory(b.get('memory_size'))}")


@db.command("show")
@click.argument("ref", metavar="UID|NAME")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def db_show(ref, as_json, home):
    """One database, every field."""
    api = RestApi.of(home)
    b = api.call("GET", f"/v1/bdbs/{api.bdb_uid(ref)}")
    if as_json:
        click.echo(json.dumps(b))
        return
    for key, value in b.items():
        if key == "memory_size":
            value = f"{format_memory(value)} ({value} bytes)"
        elif key == "authentication_redis_pass":
            value = "(set)" if value else "(none)"
        elif key == "authentication_ssl_client_certs":
            value = f"{len(value or [])} trusted besides the cluster CA's"
        elif key == "endpoints":
            failed = [f for e in value for f in e.get("failed_nodes") or []]
            value = ", ".join(f"{a}:{e.get('port')}" for e in value for a in e.get("addr", []))
            for f in failed:
                value += f"\n{'':<28}FAILED on node {f['node_uid']}: {f.get('reason')}"
        elif key.endswith("_time") and isinstance(value, (int, float)):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        click.echo(f"{key + ':':<28}{value}")
        if key == "endpoints":
            for name, where in _discovery_lines(api, b):
                click.echo(f"{name + ':':<28}{where}")


def _discovery_lines(api: RestApi, b: dict) -> list[tuple[str, str]]:
    """Where clients find the database by name: its DNS name (pdns_server) and the Sentinel
    addresses (sentinel_service, the database's name as the master's name)."""
    lines = [("dns_address", f"{e['dns_address_master']}:{e.get('port')}")
             for e in b.get("endpoints") or [] if e.get("dns_address_master")]
    sentinels = [f"{n['addr']}:{n['sentinel_port']}" for n in api.call("GET", "/v1/nodes")
                 if n.get("sentinel_port") and n.get("status") == "active"]
    if sentinels:
        lines.append(("sentinel", f"{', '.join(sentinels)} (master name {b.get('name')})"))
    return lines


@db.command("update")
@click.argument("ref", metavar="UID|NAME")
@click.option("--name", "new_name", help="A new name.")
@update_settings
@dry_run_option
@wait_option
@home_option
def db_update(ref, new_name, port, memory, replication, persistence, aof_policy, password,
              eviction_policy, multi_slot_commands, oss_cluster, proxy_threads, backup_interval,
              backup_location, query_buffer_limit, allow_privileged_port, tls, tls_client_auth,
              tls_client_certs, tls_authorized_names, data_internode_encryption, dry_run, wait,
              home):
    """Change a database's settings (only those given)."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    body = _settings(port, memory, replication, persistence, aof_policy, password,
                     eviction_policy, multi_slot_commands, oss_cluster, proxy_threads,
                     backup_interval, backup_location, query_buffer_limit, allow_privileged_port,
                     tls=tls, tls_client_auth=tls_client_auth, tls_client_certs=tls_client_certs,
                     tls_authorized_names=tls_authorized_names,
                     data_internode_encryption=data_internode_encryption)
    if new_name is not None:
        body["name"] = new_name
    if not body:
        raise Failure("give at least one setting to change (see --help)")
    reply = api.call("PUT", f"/v1/bdbs/{uid}", body=body,
                     params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        return
    _started(api, reply, wait, f"database {uid} updated")


@db.command("reshard")
@click.argument("ref", metavar="UID|NAME")
@click.option("--shards", type=click.IntRange(1, 64), required=True,
              help="The new number of master shards: a multiple of the current one.")
@dry_run_option
@wait_option
@home_option
def db_reshard(ref, shards, dry_run, wait, home):
    """Split every master shard's slots to reach SHARDS shards, online."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    reply = api.call("PUT", f"/v1/bdbs/{uid}", body={"shards_count": shards},
                     params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        return
    _started(api, reply, wait, f"database {uid} now has {shards} shards")


@db.command("delete")
@click.argument("ref", metavar="UID|NAME")
@dry_run_option
@wait_option
@home_option
def db_delete(ref, dry_run, wait, home):
    """Delete a database: its endpoint, its shards and their data."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    reply = api.call("DELETE", f"/v1/bdbs/{uid}", params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        return
    _started(api, reply, wait, f"database {uid} deleted")


@db.command("import")
@click.argument("ref", metavar="UID|NAME")
@click.argument("source", metavar="RDB_FILE|BACKUP_FOLDER")
@click.option("--flush", is_flag=True, help="Empty the database first.")
@wait_option
@home_option
def db_import(ref, source, flush, wait, home):
    """Load an RDB file (a plain redis-server's, say) or a backup's folder into a database;
    keys it already has are replaced."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    path = os.path.abspath(source)
    body = {"backup_path" if os.path.isdir(path) else "rdb_path": path, "flush": flush}
    reply = api.call("POST", f"/v1/bdbs/{uid}/actions/import", body=body)
    if not wait:
        _started(api, reply, wait, "")
        return
    result = api.follow(reply["action_uid"]).get("result") or {}
    click.echo(f"database {uid}: {result.get('keys', 0)} keys loaded from {path}")


@db.command("restore")
@click.argument("backup", metavar="BACKUP_ID|BACKUP_FOLDER")
@click.option("--from-db", "source", metavar="UID|NAME",
              help="The database the backup was taken of (needed for a BACKUP_ID).")
@click.option("--name", required=True, help="The new database's name.")
@click.option("--shards", type=click.IntRange(1, 64),
              help="Master shards of the new database (default: as many as the backup has).")
@create_settings
@home_option
def db_restore(backup, source, name, shards, port, memory, replication, persistence,
               aof_policy, password, eviction_policy, multi_slot_commands, oss_cluster,
               proxy_threads, backup_interval,
               backup_location, query_buffer_limit, allow_privileged_port, tls, tls_client_auth,
               tls_client_certs, tls_authorized_names, data_internode_encryption, home):
    """Create database NAME and load a backup into it (any shard count takes any backup)."""
    api = RestApi.of(home)
    if os.path.isdir(backup):
        path = os.path.abspath(backup)
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise Failure(f"{path} is not a backup ({exc})") from None
    elif source is None:
        raise Failure(f"no folder {backup}: give --from-db for a backup id")
    else:
        manifest = api.call("GET", f"/v1/bdbs/{api.bdb_uid(source)}/backups/{backup}")
        path = manifest["path"]
    body = {"name": name, "shards_count": shards or len(manifest.get("shards") or [1]),
            **_settings(port, memory, replication, persistence, aof_policy, password,
                        eviction_policy, multi_slot_commands, oss_cluster, proxy_threads,
                        backup_interval,
                        backup_location, query_buffer_limit, allow_privileged_port, tls=tls,
                        tls_client_auth=tls_client_auth, tls_client_certs=tls_client_certs,
                        tls_authorized_names=tls_authorized_names,
                        data_internode_encryption=data_internode_encryption)}
    created = api.call("POST", "/v1/bdbs", body=body)
    api.follow(created["action_uid"])
    reply = api.call("POST", f"/v1/bdbs/{created['uid']}/actions/import",
                     body={"backup_path": path})
    result = api.follow(reply["action_uid"]).get("result") or {}
    click.echo(f"database {created['uid']} ({name}) restored from backup "
               f"{manifest.get('backup_id')}: {result.get('keys', 0)} keys")
    click.echo(_redis_cli_line(created))


# ---- dmc backup ------------------------------------------------------------------------------

@click.group()
def backup():
    """Back databases up (an RDB per shard and a manifest, in a folder) and list their
    backups; `dmc db restore` and `dmc db import` load them."""


@backup.command("create")
@click.argument("ref", metavar="UID|NAME")
@click.option("--location", type=click.Path(file_okay=False),
              help="A folder for this backup (default: the database's backup location).")
@wait_option
@home_option
def backup_create(ref, location, wait, home):
    """Back a database up now."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    body = {"location": os.path.abspath(location)} if location else None
    reply = api.call("POST", f"/v1/bdbs/{uid}/actions/backup", body=body)
    if not wait:
        _started(api, reply, wait, "")
        return
    result = api.follow(reply["action_uid"]).get("result") or {}
    click.echo(f"backup {result.get('backup_id')} of database {uid}: {result.get('keys')} "
               f"keys in {result.get('files')} RDB files")
    click.echo(result.get("path") or "")


def _backup_time(b: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["time"])) if b.get("time") \
        else "-"


@backup.command("list")
@click.argument("ref", metavar="UID|NAME")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def backup_list(ref, as_json, home):
    """A database's backups, oldest first."""
    api = RestApi.of(home)
    backups = api.call("GET", f"/v1/bdbs/{api.bdb_uid(ref)}/backups")
    if as_json:
        click.echo(json.dumps(backups))
        return
    click.echo(f"{'BACKUP':<22}{'TAKEN':<21}{'SHARDS':<8}{'KEYS':<10}{'SIZE':<9}KIND")
    for b in backups:
        size = sum(s.get("bytes") or 0 for s in b.get("shards") or [])
        click.echo(f"{b['backup_id']:<22}{_backup_time(b):<21}{len(b.get('shards') or []):<8}"
                   f"{b.get('keys', '?'):<10}{format_memory(size):<9}"
                   f"{'scheduled' if b.get('scheduled') else 'on demand'}")


@backup.command("show")
@click.argument("ref", metavar="UID|NAME")
@click.argument("backup_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def backup_show(ref, backup_id, as_json, home):
    """One backup: where it is, and each shard's RDB file."""
    api = RestApi.of(home)
    b = api.call("GET", f"/v1/bdbs/{api.bdb_uid(ref)}/backups/{backup_id}")
    if as_json:
        click.echo(json.dumps(b))
        return
    for key in ("backup_id", "bdb_uid", "name", "time", "status", "keys", "redis_version",
                "scheduled", "path"):
        value = _backup_time(b) if key == "time" else b.get(key)
        click.echo(f"{key + ':':<16}{value}")
    click.echo(f"{'FILE':<14}{'SLOTS':<24}{'KEYS':<10}{'BYTES':<12}{'FROM':<16}SHA256")
    for s in b.get("shards") or []:
        origin = f"{s.get('role')} {s.get('source_shard_uid')}"
        click.echo(f"{s['file']:<14}{format_slots(s.get('slots')):<24}{s.get('keys'):<10}"
                   f"{s.get('bytes'):<12}{origin:<16}{s.get('sha256')}")


# ---- dmc shard -------------------------------------------------------------------------------

@click.group()
def shard():
    """List shards, fail a master over to its replica, move a shard to another node."""


@shard.command("list")
@click.option("--db", "ref", metavar="UID|NAME", help="Only this database's shards.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def shard_list(ref, as_json, home):
    """Every shard: uid, database, node, role, port, slots, status."""
    api = RestApi.of(home)
    shards = api.call("GET", "/v1/shards")
    if ref is not None:
        uid = api.bdb_uid(ref)
        shards = [s for s in shards if s.get("bdb_uid") == uid]
    if as_json:
        click.echo(json.dumps(shards))
        return
    click.echo(f"{'UID':<6}{'DB':<5}{'NODE':<6}{'ROLE':<9}{'PORT':<7}{'SLOTS':<24}STATUS")
    for s in shards:
        click.echo(f"{s['uid']:<6}{s.get('bdb_uid', '-'):<5}{s.get('node_uid', '-'):<6}"
                   f"{s.get('role') or '-':<9}{s.get('port') or '-':<7}"
                   f"{format_slots(s.get('slots')):<24}{s.get('status')}")


@shard.command("failover")
@click.argument("uid", type=int)
@dry_run_option
@wait_option
@home_option
def shard_failover(uid, dry_run, wait, home):
    """Promote master shard UID's replica (or fail over replica UID's master)."""
    api = RestApi.of(home)
    reply = api.call("POST", f"/v1/shards/{uid}/actions/failover",
                     params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        return
    _started(api, reply, wait, f"shard {uid} failed over")


@shard.command("migrate")
@click.argument("uid", type=int)
@click.option("--to-node", "node", type=int, required=True, help="The node to move it to.")
@dry_run_option
@wait_option
@home_option
def shard_migrate(uid, node, dry_run, wait, home):
    """Move shard UID to another node (a master keeps serving; clients see a short pause)."""
    api = RestApi.of(home)
    reply = api.call("POST", f"/v1/shards/{uid}/actions/migrate",
                     body={"target_node_uid": node}, params={"dry_run": 1} if dry_run else None)
    if dry_run:
        _dry_run(reply)
        return
    _started(api, reply, wait, f"shard {uid} moved to node {node}")


# ---- dmc action ------------------------------------------------------------------------------

@click.group()
def action():
    """What the cluster is doing or did: create, update, delete, failover, migrate, reshard."""


def _action_line(a: dict) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(a["creation_time"])) \
        if a.get("creation_time") else "-"
    obj = f"{a.get('object_type')}:{a.get('object_uid')}"
    line = (f"{a['action_uid']:<38}{a['name']:<16}{obj:<10}{a['status']:<11}"
            f"{a.get('progress') or 0:>5.0f}%  {when}  {a.get('step') or ''}")
    return line + (f"  ({a['error']})" if a.get("error") else "")


@action.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def action_list(as_json, home):
    """Every action, oldest first."""
    actions = RestApi.of(home).call("GET", "/v1/actions")
    if as_json:
        click.echo(json.dumps(actions))
        return
    click.echo(f"{'ACTION':<38}{'NAME':<16}{'OBJECT':<10}{'STATUS':<11}{'DONE':>6}  "
               f"{'CREATED':<8}  STEP")
    for a in actions:
        click.echo(_action_line(a))


@action.command("show")
@click.argument("uid")
@click.option("--wait", is_flag=True, help="Follow it until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def action_show(uid, wait, as_json, home):
    """One action; with --wait, follow it (exit 1 if it fails)."""
    api = RestApi.of(home)
    a = api.follow(uid) if wait else api.call("GET", f"/v1/actions/{uid}")
    if as_json:
        click.echo(json.dumps(a))
        return
    for key, value in a.items():
        if key.endswith("_time") and isinstance(value, (int, float)):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        click.echo(f"{key + ':':<16}{value}")


COMMANDS = (db, backup, shard, action)
