"""`dmc`, the operator's command line (the console script): the cluster commands `dmc cluster
create|start|stop|delete`, `dmc node add|join|remove`, `dmc status`, `dmc services`, `dmc
ccs-cli`, the database commands of control/db_cli.py (`dmc db`, `dmc shard`, `dmc action`), the
observability ones of control/obs_cli.py (`dmc db stats`, `dmc alerts`, `dmc logs`), the
access ones of control/access_cli.py (`dmc user`, `dmc role`, `dmc acl`), and
the data path's `dmc local ...` (dmc/cli.py, which knows nothing of the control plane).

They read the cluster from CCS (any node's copy answers reads) and control processes through
each node's supervisord; errors are one line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import xmlrpc.client
from pathlib import Path

import click
import trio

from chaos.cli import chaos
from control import ccs, certificates
from control.access_cli import COMMANDS as ACCESS_COMMANDS
from control.cluster_view import read_view
from control.db_cli import COMMANDS as DB_COMMANDS
from control.db_cli import RestApi, format_memory, format_slots
from control.discovery import DEFAULT_FQDN, FQDN
from control.local_cluster import ClusterError, LocalCluster, loopback_addresses
from control.node import supervisor_rpc
from control.obs_cli import COMMANDS as OBS_COMMANDS
from control.redis_client import RedisUnavailable, ReplyError
from control.shard_link import ccs_link
from dmc.cli import local

DEFAULT_HOME = Path(os.environ.get("DMC_HOME", Path.home() / ".dmc")) / "cluster"

home_option = click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_HOME,
    show_default=True, help="Folder of the local cluster (env DMC_HOME/cluster).")


def _load(home: Path) -> LocalCluster:
    try:
        return LocalCluster.load(home)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None


# ---- dmc cluster ---------------------------------------------------------------------------

@click.group()
def cluster():
    """Create and stop a cluster of nodes on this machine."""


@cluster.command("create")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--first-address", default="127.0.0.1", show_default=True,
              help="Loopback address of node 1; node N gets the N-th address from it.")
@click.option("--name", "fqdn", default=DEFAULT_FQDN, show_default=True,
              help="The cluster's FQDN: the DNS zone its pdns_server answers for.")
@click.option("--free-ports", is_flag=True,
              help="Free ports chosen now instead of Redis Enterprise's (REST 9443 HTTPS and "
              "8080 HTTP, metrics 8070, Sentinel 8001, DNS 53), e.g. beside another cluster "
              "on the same addresses.")
@click.option("--record-history", is_flag=True, hidden=True)
@home_option
def cluster_create(nodes, first_address, fqdn, free_ports, record_history, home):
    """Start NODES nodes in the background (each with its own supervisord) and wait until
    they have elected a master. Each node gets a certificate signed by the cluster's own CA
    (`dmc cluster ca` prints it)."""
    if not FQDN.fullmatch(fqdn):
        raise click.ClickException(f"--name {fqdn!r} is not a DNS name (example: "
                                   f"{DEFAULT_FQDN})")
    try:
        addresses = loopback_addresses(nodes, first_address)
        started = time.monotonic()
        c = LocalCluster.create(home, addresses, record_history=record_history,
                                name=fqdn.lower().rstrip("."),
                                well_known_ports=not free_ports)
        master = c.wait_for_master()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"cluster of {nodes} nodes up in {time.monotonic() - started:.1f}s; "
               f"master is node {master}")
    click.echo(f"dmc status --home {home}")


@cluster.command("ca")
@home_option
def cluster_ca(home):
    """Print the cluster CA's certificate (PEM): what clients verify the nodes against
    (curl --cacert, redis-cli --cacert)."""
    ca = _load(home).cluster_ca()
    if ca is None:
        raise click.ClickException(f"the cluster in {home} has no CA")
    click.echo(ca.certificate.decode(), nl=False)


@cluster.group("certificates")
def cluster_certificates():
    """The nodes' certificates: show them, or install one of the operator's."""


@cluster_certificates.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def certificates_show(as_json, home):
    """Each node's certificates: subject, issuer, valid until."""
    rows = []
    for uid, config in sorted(_load(home).nodes.items()):
        for plane in certificates.PLANES:
            try:
                described = certificates.describe(
                    certificates.cert_file(config.dir, plane).read_bytes())
            except (OSError, certificates.CertificateError) as exc:
                described = {"error": str(exc)}
            rows.append({"node": uid, "name": plane, **described})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["not_after"])) \
            if "not_after" in row else row.get("error")
        click.echo(f"node {row['node']}  {row['name']:<5} {row.get('subject', '-'):<40} "
                   f"until {until}")


@cluster_certificates.command("set")
@click.option("--name", default="api", show_default=True, type=click.Choice(["api"]),
              help="Which certificate: api (the REST API's HTTPS).")
@click.option("--certificate", "cert_path", required=True, type=click.Path(exists=True,
              dir_okay=False), help="PEM file of the certificate.")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM file of its private key (unencrypted).")
@home_option
def certificates_set(name, cert_path, key_path, home):
    """Install the operator's certificate on every node (PUT /v1/cluster/update_cert)."""
    body = {"name": name, "certificate": Path(cert_path).read_text(),
            "key": Path(key_path).read_text()}
    reply = RestApi.of(home).call("PUT", "/v1/cluster/update_cert", body=body)
    click.echo(f"certificate {name} set: {reply['subject']}, every node installs it within "
               "seconds")


@cluster.command("start")
@home_option
def cluster_start(home):
    """Start the nodes of a stopped cluster again, with their data."""
    c = _load(home)
    try:
        master = c.start()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"cluster of {len(c.nodes)} nodes up; master is node {master}")


@cluster.command("stop")
@home_option
def cluster_stop(home):
    """Stop every node of the cluster; its folders stay for `dmc cluster start`."""
    c = _load(home)
    c.stop()
    click.echo(f"stopped {len(c.nodes)} nodes")


@cluster.command("delete")
@home_option
def cluster_delete(home):
    """Stop every node (shards busy in a script too), then remove the cluster's folders;
    refused while any process of the cluster still runs."""
    c = _load(home)
    try:
        c.delete()
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted the cluster of {len(c.nodes)} nodes in {home}")


# ---- dmc node ------------------------------------------------------------------------------

@click.group()
def node():
    """Grow and shrink the cluster."""


@node.command("add")
@click.option("--address", help="The new node's address (default: the next loopback one).")
@home_option
def node_add(address, home):
    """Start a new node and have the master take it in."""
    c = _load(home)
    try:
        config = c.add_node(address)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"node {config.uid} joined at {config.address}")


@node.command("join")
@click.argument("peer")
@click.option("--address", required=True, help="This node's address, reachable by the others.")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder with the cluster CA's ca.pem and ca.key (a node's certs/ folder, "
              "copied safely): the new node's certificates are signed with it, else the "
              "cluster refuses the node.")
@home_option
def node_join(peer, address, ca_dir, home):
    """Start a node here and join the cluster that PEER (ADDRESS:GOSSIP_PORT of any of its
    nodes) belongs to: one node per machine."""
    host, _, port = peer.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException(f"PEER must be ADDRESS:GOSSIP_PORT, not {peer!r}")
    try:
        ca = None
        if ca_dir is not None:
            ca = certificates.Pair((ca_dir / "ca.pem").read_bytes(),
                                   (ca_dir / "ca.key").read_bytes())
        c = LocalCluster.load(home) if (home / "cluster.json").exists() else LocalCluster(home)
        config = c.add_node(address, peer=(host, int(port)), ca=ca)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot read the cluster CA in {ca_dir}: {exc}") from None
    click.echo(f"node {config.uid} joined at {config.address}")


@node.command("remove")
@click.argument("uid", type=int)
@home_option
def node_remove(uid, home):
    """Take node UID out of the cluster and stop it."""
    c = _load(home)
    try:
        c.remove_node(uid)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"node {uid} removed")


# ---- dmc status ----------------------------------------------------------------------------

async def read_cluster(c: LocalCluster) -> dict:
    """The cluster as CCS tells it, read from the first node copy that answers."""
    errors = []
    for uid, config in sorted(c.nodes.items()):
        try:
            async with await ccs.connect_node(config) as r:
                view = await read_view(r)
                # nodes of this folder that CCS does not list (yet, or any more) are shown too
                extra = sorted(set(c.nodes) - set(view.nodes))
                if extra:
                    raw = await r.execute("MGET", *(ccs.heartbeat_key(u) for u in extra))
                    view.beats.update(zip(extra, map(ccs.unpack, raw)))
        except (RedisUnavailable, ReplyError) as exc:
            errors.append(f"node {uid}: {exc}")
            continue
        return {"read_from": uid, "master": view.master, "nodes": view.nodes,
                "heartbeats": view.beats, "bdbs": view.bdbs, "shards": view.shards,
                "shard_states": view.states}
    raise ClusterError("the cluster is not running (no CCS copy answered: "
                       + "; ".join(errors) + ")")


def _uptime(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def database_rows(view: dict) -> list[dict]:
    return [{"db": uid, "name": b.name, "port": b.port, "shards": b.shards_count,
             "replication": b.replication, "status": b.status, "memory": b.memory_size}
            for uid, b in sorted(view["bdbs"].items())]


def shard_rows(view: dict) -> list[dict]:
    """Every shard; its status is what redis_mgr of its node last reported."""
    return [{"shard": uid, "db": s.bdb_uid, "node": s.node_uid, "role": s.role,
             "port": s.port, "slots": s.slots,
             "status": (view["shard_states"].get(uid) or {}).get("status", "unknown")}
            for uid, s in sorted(view["shards"].items(), key=lambda i: (i[1].bdb_uid, i[0]))]


def _address(info: dict, port_field: str) -> str | None:
    """host:port of one of a node's services, from its member record."""
    return f"{info['address']}:{info[port_field]}" if info.get(port_field) else None


def _url(info: dict, port_field: str, path: str, scheme: str = "http") -> str | None:
    where = _address(info, port_field)
    return f"{scheme}://{where}{path}" if where else None


PORT_FIELDS = ("rest_tls_port", "rest_port", "metrics_port", "sentinel_port", "dns_port", "ui_port",
               "gossip_port", "ccs_port", "ccs_tls_port", "ccs_forward_port")


def status_rows(view: dict) -> list[dict]:
    master = view["master"] or {}
    now = time.time()
    rows = []
    for uid in sorted(set(view["nodes"]) | set(view["heartbeats"])):
        info = view["nodes"].get(uid) or {}
        beat = view["heartbeats"].get(uid)
        services = beat["services"] if beat else []
        rows.append({
            "node": uid,
            "role": "master" if uid == master.get("uid") else "replica",
            "address": info.get("address") or (beat or {}).get("address"),
            "gossip_port": info.get("gossip_port"),
            # a node with a heartbeat but no membership was removed and has not stopped yet
            "state": "REMOVED" if uid not in view["nodes"] else "OK" if beat else "DOWN",
            "uptime": now - beat["started"] if beat else None,
            "term": master.get("term") if uid == master.get("uid") else None,
            "member": uid in view["nodes"],
            "sentinel_address": _address(info, "sentinel_port"),
            "dns_address": _address(info, "dns_port"),
            "rest_url": _url(info, "rest_port", "") if info.get("rest_http", True) else None,
            "rest_tls_url": _url(info, "rest_tls_port", "", "https"),
            "metrics_url": (beat or {}).get("metrics_url") or _url(info, "metrics_port",
                                                                     "/metrics"),
            "ports": {k: info[k] for k in PORT_FIELDS if k in info},
            "ui_url": _url(info, "ui_port", "/", "https" if info.get("ui_tls") else "http"),
            "services": {s["name"]: s["state"] for s in services},
        })
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def status(as_json, home):
    """Every node (address, role, state, uptime, services), database and shard, like
    `rladmin status`."""
    c = _load(home)
    try:
        view = trio.run(read_cluster, c)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    rows = status_rows(view)
    if as_json:
        fqdn = next(iter(c.nodes.values())).cluster_fqdn if c.nodes else None
        click.echo(json.dumps({"cluster_fqdn": fqdn, "master": view["master"], "nodes": rows,
                               "databases": database_rows(view), "shards": shard_rows(view)}))
        return
    master = view["master"] or {}
    click.echo(f"CLUSTER: master node:{master.get('uid', '?')} term {master.get('term', '?')}")
    click.echo("CLUSTER NODES:")
    click.echo(f"{'NODE:ID':<10}{'ROLE':<9}{'ADDRESS':<16}{'STATE':<7}{'UPTIME':<10}SERVICES")
    for r in rows:
        down = [n for n, s in r["services"].items() if s != "RUNNING"]
        services = ("all running" if r["services"] and not down else
                    ", ".join(f"{n}:{r['services'][n]}" for n in down) or "-")
        name = ("*" if r["role"] == "master" else "") + f"node:{r['node']}"
        click.echo(f"{name:<10}{r['role']:<9}{r['address'] or '?':<16}{r['state']:<7}"
                   f"{_uptime(r['uptime']) if r['uptime'] is not None else '-':<10}{services}")
    click.echo("\nDATABASES:")
    click.echo(f"{'DB:ID':<7}{'NAME':<20}{'PORT':<7}{'SHARDS':<8}{'REPLICATION':<13}"
               f"{'STATUS':<17}MEMORY")
    for d in database_rows(view):
        click.echo(f"{'db:' + str(d['db']):<7}{d['name'] or '?':<20}{d['port'] or '?':<7}"
                   f"{d['shards'] or '?':<8}{'enabled' if d['replication'] else 'disabled':<13}"
                   f"{d['status'] or '?':<17}{format_memory(d['memory'])}")
    click.echo("\nSHARDS:")
    click.echo(f"{'DB:ID':<7}{'ID':<11}{'NODE':<9}{'ROLE':<9}{'PORT':<7}{'SLOTS':<24}STATUS")
    for s in shard_rows(view):
        click.echo(f"{'db:' + str(s['db']):<7}{'redis:' + str(s['shard']):<11}"
                   f"{'node:' + str(s['node']):<9}{s['role'] or '?':<9}{s['port'] or '?':<7}"
                   f"{format_slots(s['slots']):<24}{s['status']}")


# ---- dmc services --------------------------------------------------------------------------

@click.command()
@click.option("--node", "uid", type=int, help="The node (default: every node for status, "
              "node 1 otherwise).")
@click.argument("action", type=click.Choice(["status", "start", "stop", "restart"]))
@click.argument("names", nargs=-1)
@home_option
def services(uid, action, names, home):
    """Show or control a node's services through its supervisord; `all` names them all."""
    c = _load(home)
    try:
        uids = [c.node(uid).uid] if uid is not None else (
            sorted(c.nodes) if action == "status" else [min(c.nodes)])
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    known = c.node(uids[0]).services
    unknown = [n for n in names if n != "all" and n not in known]
    if unknown:
        raise click.ClickException(f"no such service: {', '.join(unknown)} "
                                   f"(services: {', '.join(known)}, all)")
    if action != "status" and not names:
        raise click.ClickException(f"name the services to {action} (or all)")
    chosen = list(known) if not names or "all" in names else list(names)
    for u in uids:
        rpc = supervisor_rpc(c.node(u).supervisor_sock).supervisor
        try:
            if action in ("stop", "restart"):
                for name in chosen:
                    _ignore_state_errors(rpc.stopProcess, name)
            if action in ("start", "restart"):
                for name in chosen:
                    _ignore_state_errors(rpc.startProcess, name)
            infos = {p["name"]: p for p in rpc.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error) as exc:
            raise click.ClickException(f"node {u}: supervisor not reachable ({exc})") from None
        if len(uids) > 1 or action == "status":
            click.echo(f"node:{u}")
        for name in chosen:
            p = infos[name]
            detail = (f"pid {p['pid']}, uptime {_uptime(p['now'] - p['start'])}"
                      if p["statename"] == "RUNNING" else p["description"])
            click.echo(f"  {name:<14}{p['statename']:<10}{detail}")


def _ignore_state_errors(call, name):
    """Starting a running service or stopping a stopped one is not an error here."""
    try:
        call(name)
    except xmlrpc.client.Fault as fault:
        if "ALREADY_STARTED" not in fault.faultString and "NOT_RUNNING" not in fault.faultString:
            raise


# ---- dmc ccs-cli ---------------------------------------------------------------------------

@click.command("ccs-cli", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@home_option
def ccs_cli(args, home):
    """redis-cli on the current CCS master (ARGS go to redis-cli): on its unix socket if the
    master is a node of this folder, else on its tls-port with this folder's certificate
    (control-plane encryption), else on its plain port."""
    c = _load(home)
    try:
        master = trio.run(read_cluster, c)["master"]
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    if not master:
        raise click.ClickException("no CCS master has been elected yet")
    cli = shutil.which("redis-cli")
    if cli is None:
        raise click.ClickException("redis-cli is not installed (apt-get install redis-tools)")
    where = ccs_link(master, c.nodes, c.client_certificates())
    os.execv(cli, [cli, *where.cli_args(), *args])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dmc: a sharded Redis database behind one endpoint."""


for _command in (local, cluster, node, status, services, ccs_cli, chaos, *DB_COMMANDS,
                 *OBS_COMMANDS, *ACCESS_COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":
    main()
