"""`dmc chaos` (also `python -m chaos`): run the fault-injection suite, or check a recorded
history again. Prints a progress bar while it runs and a summary table at the end; `--json`
writes the report, `--plot` the picture. Exit code 1 when a promise was broken (an acknowledged
durable write lost, a register history not linearizable, two masters) or the run could not be
made; the reason in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chaos.nemesis import FAULTS

BROKEN = ("acknowledged_lost", "linearizability_violations", "two_masters",
          "minority_writes_acknowledged")


def broken(report: dict) -> list[str]:
    return [f"{k}={report[k]}" for k in BROKEN if report.get(k)]


def summary(report: dict) -> Table:
    table = Table(title=f"chaos run, seed {report.get('seed')}", show_header=True)
    table.add_column("check")
    table.add_column("result", justify="right")
    ops = report["operations"]
    by_kind = {}
    for f in report["faults"]:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    rows = [
        ("operations", str(ops["total"])),
        ("faults", ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"),
        ("acknowledged writes lost (WAIT, appendfsync-always)", str(report["acknowledged_lost"])),
        (f"plain writes lost (outside the {report['async_window']:.0f} s window)",
         f"{report['plain_lost']} ({report['plain_lost_outside_window']})"),
        ("registers checked / not linearizable / undecided",
         f"{report['registers_checked']} / {report['linearizability_violations']} / "
         f"{report['linearizability_undecided']}"),
        ("counters contradicted", str(report["counter_violations"])),
        ("lists with lost or duplicated elements", str(report["list_violations"])),
        ("two masters", str(report["two_masters"])),
    ]
    if "minority_writes_acknowledged" in report:
        rows.insert(-1, (f"writes acknowledged by a minority node {report['fence_bound']} s "
                         "after the cut", str(report["minority_writes_acknowledged"])))
    a = report["availability"]
    if a.get("fraction_ok") is not None:
        rows.append(("availability (ok, longest gap)",
                     f"{a['fraction_ok']:.1%}, {a['longest_gap']:.2f} s"))
    for kind, f in a.get("by_fault", {}).items():
        if f["fraction_ok"] is not None:
            rows.append((f"  during {kind}", f"{f['fraction_ok']:.1%}, {f['longest_gap']:.2f} s"))
    for check, result in rows:
        bad = (check.split(" (")[0] in ("acknowledged writes lost", "two masters")
               or check.startswith("writes acknowledged by a minority")) and result != "0"
        table.add_row(check, f"[red]{result}[/red]" if bad else result)
    return table


def _faults(value: str) -> list[str]:
    chosen = [f.strip() for f in value.split(",") if f.strip()] if value != "all" else list(FAULTS)
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        raise click.BadParameter(f"unknown fault {', '.join(unknown)} "
                                 f"(known: {', '.join(FAULTS)}, or all, or none)")
    return chosen


@click.command("chaos")
@click.option("--seconds", type=click.FloatRange(10), default=60, show_default=True,
              help="How long the clients and the nemesis run.")
@click.option("--seed", type=int, help="The nemesis's and the clients' seed (default: random).")
@click.option("--faults", default="all", show_default=True,
              help=f"Comma-separated kinds: {', '.join(FAULTS)} (or all, or none).")
@click.option("--clients", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Nodes of the cluster.")
@click.option("--netns/--no-netns", default=None,
              help="Run the nodes in network namespaces (default: when a network fault "
                   "(partition, isolate, bridge) is chosen and namespaces work here).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("chaos-run"), show_default=True,
              help="The run's folder: cluster, histories, report.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report here.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of latency and errors over time, faults marked.")
@click.option("--keep", is_flag=True, help="Keep the cluster's folder (stopped) afterwards.")
@click.option("--check", "check_file", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="Do not run: check this history.jsonl again.")
def chaos(seconds, seed, faults, clients, nodes, netns, workdir, json_file, plot_file, keep,
          check_file):
    """Faults on a real 3- or 5-node cluster under a recorded client load; then check the
    history."""
    from chaos import checker
    from chaos.runner import Run, Settings

    console = Console(stderr=True)
    if check_file:
        records = checker.load(check_file)
        election_file = check_file.parent / "election.jsonl"
        election = checker.load(election_file) if election_file.exists() else []
        report = checker.check(records, election)
    else:
        settings = Settings(seconds=seconds, faults=[] if faults == "none" else _faults(faults),
                            clients=clients, nodes=int(nodes), workdir=workdir, keep=keep,
                            netns=netns)
        if seed is not None:
            settings.seed = seed
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task("starting", total=seconds)

            def progress(elapsed, counts, n_faults):
                ok, fail, unknown = counts
                bar.update(task, completed=min(elapsed, seconds),
                           description=f"ok {ok}  fail {fail}  unknown {unknown}  "
                                       f"faults {n_faults}")
            run = Run(settings, log=lambda line: bar.console.log(line), progress=progress)
            try:
                report = run.run()
            except Exception as exc:  # noqa: BLE001 - one line for the operator
                raise click.ClickException(f"the run failed: {type(exc).__name__}: {exc}") \
                    from None
        records = run.records
    console.print(summary(report))
    if json_file:
        json_file.write_text(json.dumps(report, indent=2, default=str))
    if plot_file:
        from chaos.plot import plot
        plot(records, plot_file, f"seed {report.get('seed')}")
    problems = broken(report)
    if problems:
        click.echo(f"error: promises broken: {', '.join(problems)}", err=True)
        sys.exit(1)


def main():
    chaos()
