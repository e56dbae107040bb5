"""The markdown tables of a `dmc chaos --json` report, as bench/CHAOS.md shows them:

    python bench/chaos_report.py long.json >> bench/CHAOS.md
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def markdown(report: dict) -> str:
    ops = report["operations"]
    lines = [f"Seed {report.get('seed')}, {report.get('seconds', 0):.0f} s, "
             f"{report.get('nodes', 3)} nodes (network namespaces: "
             f"{'yes' if report.get('netns') else 'no'}), {report.get('clients')} clients; "
             f"healed at the end: {report.get('healed')}.", "",
             "| check | result |", "| --- | --- |",
             f"| operations | {ops['total']} |",
             f"| faults injected | {len(report['faults'])} |",
             f"| acknowledged writes lost (WAIT 1, appendfsync-always) | "
             f"{report['acknowledged_lost']} |",
             f"| plain writes lost (outside the {report['async_window']:.0f} s window) | "
             f"{report['plain_lost']} ({report['plain_lost_outside_window']}) |",
             f"| registers checked / not linearizable / undecided | "
             f"{report['registers_checked']} / {report['linearizability_violations']} / "
             f"{report['linearizability_undecided']} |",
             f"| counters contradicted | {report['counter_violations']} |",
             f"| lists with lost or duplicated elements | {report['list_violations']} |",
             f"| writes acknowledged by a minority node {report.get('fence_bound')} s after "
             f"the cut | {report.get('minority_writes_acknowledged')} |",
             f"| two masters | {report['two_masters']} |", ""]
    a = report["availability"]
    lines += ["| fault | injected | operations during it (+3 s) | succeeded | longest gap (s) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    kinds = Counter(f["kind"] for f in report["faults"])
    for kind, f in sorted(a.get("by_fault", {}).items()):
        ok = "-" if f["fraction_ok"] is None else f"{f['fraction_ok']:.1%}"
        lines.append(f"| {kind} | {kinds[kind]} | {f['operations']} | {ok} | "
                     f"{f['longest_gap']:.2f} |")
    if a.get("fraction_ok") is not None:
        lines.append(f"| **whole run** | {len(report['faults'])} | {a['operations']} | "
                     f"{a['fraction_ok']:.1%} | {a['longest_gap']:.2f} |")
    lines += ["", "| operation | ok | fail | unknown |", "| --- | ---: | ---: | ---: |"]
    for op, outcomes in sorted((k, v) for k, v in ops.items() if k != "total"):
        lines.append(f"| {op} | {outcomes.get('ok', 0)} | {outcomes.get('fail', 0)} | "
                     f"{outcomes.get('unknown', 0)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(markdown(json.load(f)))
