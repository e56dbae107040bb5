"""dmc's fault-injection suite: a real cluster, clients recording every operation, a nemesis
injecting faults on a seeded schedule, and a checker of the recorded history (issue 18).

- `chaos.checker` / `chaos.linearizable`: pure functions of a history (no cluster needed);
- `chaos.workload`: a client process, one history file of its own;
- `chaos.nemesis`: the faults;
- `chaos.runner`: the run (cluster, databases, clients, nemesis, final reads, report);
- `chaos.cli`: `dmc chaos` and `python -m chaos`.
"""
