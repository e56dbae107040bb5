"""The operator's observability commands, on the REST API like control/db_cli.py's:
`dmc db stats NAME` (a database's statistics over an interval: a table of the newest value,
the mean and the maximum of each, and a sparkline of its history) and `dmc alerts` (what is
raised, in the cluster, on nodes and databases), `dmc logs` (the event log).
"""

from __future__ import annotations

import json

import click

from control.db_cli import RestApi, db, format_memory, home_option
from control.stats_store import NAMES

SPARKS = "▁▂▃▄▅▆▇█"
SHOWN = ("total_req", "read_req", "write_req", "other_req", "avg_latency", "conns",
         "ingress_bytes", "egress_bytes", "used_memory", "no_of_keys", "evicted_objects",
         "expired_objects", "instantaneous_ops_per_sec")


def sparkline(values: list[float], width: int = 40) -> str:
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[int((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def shown(name: str, value: float) -> str:
    if name == "used_memory":
        return format_memory(int(value))
    if name.endswith("latency"):
        return f"{value * 1000:.3f}ms"
    return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"


@db.command("stats")
@click.argument("ref", metavar="UID|NAME")
@click.option("--interval", type=click.Choice(NAMES), default="1sec", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def db_stats(ref, interval, as_json, home):
    """A database's statistics over the kept history of INTERVAL."""
    api = RestApi.of(home)
    uid = api.bdb_uid(ref)
    reply = api.call("GET", f"/v1/bdbs/stats/{uid}", params={"interval": interval})
    if as_json:
        click.echo(json.dumps(reply))
        return
    points = reply.get("intervals") or []
    if not points:
        click.echo(f"no {interval} statistics for database {uid} yet")
        return
    click.echo(f"database {uid}, {len(points)} x {interval}, {points[0]['stime']} to "
               f"{points[-1]['etime']}")
    click.echo(f"{'STATISTIC':<28}{'LAST':>14}{'MEAN':>14}{'MAX':>14}  HISTORY")
    for name in SHOWN:
        values = [p[name] for p in points if isinstance(p.get(name), (int, float))]
        if not values:
            continue
        click.echo(f"{name:<28}{shown(name, values[-1]):>14}"
                   f"{shown(name, sum(values) / len(values)):>14}{shown(name, max(values)):>14}"
                   f"  {sparkline(values)}")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Also the alerts that are not raised.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def alerts(show_all, as_json, home):
    """The alerts raised in the cluster, on its nodes and on its databases."""
    api = RestApi.of(home)
    rows = []
    for scope, path in (("cluster", "/v1/cluster/alerts"), ("node", "/v1/nodes/alerts"),
                        ("bdb", "/v1/bdbs/alerts")):
        reply = api.call("GET", path)
        by_object = {"": reply} if scope == "cluster" else reply
        for uid, found in sorted(by_object.items()):
            for name, alert in sorted(found.items()):
                if alert.get("state") or show_all:
                    rows.append({"object": f"{scope}:{uid}" if uid else scope, "name": name,
                                 **alert})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no alert is raised")
        return
    click.echo(f"{'OBJECT':<12}{'ALERT':<40}{'STATE':<8}{'SEVERITY':<10}{'SINCE':<22}VALUE")
    for a in rows:
        value = (a.get("change_value") or {}).get("value", a.get("value"))
        click.echo(f"{a['object']:<12}{a['name']:<40}{'raised' if a.get('state') else '-':<8}"
                   f"{a.get('severity') or '?':<10}{a.get('change_time') or '-':<22}"
                   f"{value if value is not None else '-'}")


@click.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@home_option
def logs(limit, as_json, home):
    """The newest events of the cluster's event log."""
    events = RestApi.of(home).call("GET", "/v1/logs", params={"limit": limit})
    if as_json:
        click.echo(json.dumps(events))
        return
    for e in reversed(events):
        click.echo(f"{e['time']}  {e.get('severity', ''):<8}{e['type']:<28}"
                   f"{e.get('description', '')}")


COMMANDS = (alerts, logs)
