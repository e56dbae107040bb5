"""`dmc`: the operator's command line.

`dmc local start|stop|status` runs the embedded local default (shards and a proxy, no control
plane); the cluster commands (`dmc cluster`, `dmc node`, `dmc status`, `dmc services`,
`dmc ccs-cli`) come from `control.cli`, `dmc chaos` (the fault-injection suite) from `chaos.cli`.
Errors are one line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from chaos.cli import chaos as chaos_command
from control.cli import COMMANDS as CLUSTER_COMMANDS
from dmc.local import LocalDatabase, start_local

DEFAULT_WORKDIR = Path(os.environ.get("DMC_HOME", Path.home() / ".dmc")) / "local"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """dmc: a sharded Redis database behind one endpoint."""


@main.group()
def local():
    """The local default: N redis-server shards and a dmcproxy on 127.0.0.1."""


@local.command("start")
@click.option("--shards", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--port", default=12000, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the database endpoint; a free one if it is taken.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_WORKDIR, show_default=True)
def local_start(shards, port, workdir):
    """Start the shards and the proxy in the background, print the endpoint."""
    existing = LocalDatabase.load(workdir)
    if existing and all(existing.alive().values()):
        click.echo(f"already running: redis-cli -p {existing.port}")
        return
    if existing:
        existing.stop()
    try:
        db = start_local(workdir, shards=shards, port=port)
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise click.ClickException(f"could not start: {exc}") from None
    click.echo(f"dmc: database over {shards} shards on 127.0.0.1:{db.port}")
    click.echo(f"redis-cli -p {db.port}")


@local.command("stop")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_WORKDIR, show_default=True)
def local_stop(workdir):
    """Stop the proxy and the shards."""
    db = LocalDatabase.load(workdir)
    if db is None:
        raise click.ClickException("no local database is running")
    db.stop()
    click.echo("stopped")


@local.command("status")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_WORKDIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def local_status(workdir, as_json):
    """Show the processes of the local database."""
    db = LocalDatabase.load(workdir)
    if db is None:
        raise click.ClickException("no local database is running")
    alive = db.alive()
    if as_json:
        click.echo(json.dumps({"port": db.port, "processes": alive}))
        return
    click.echo(f"endpoint 127.0.0.1:{db.port}")
    for name, up in alive.items():
        click.echo(f"  {name:<16} {'up' if up else 'DOWN'}")
    if not all(alive.values()):
        raise SystemExit(1)


for _command in CLUSTER_COMMANDS:
    main.add_command(_command)
main.add_command(chaos_command)


if __name__ == "__main__":
    main()
