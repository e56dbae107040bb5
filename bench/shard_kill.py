"""kill -9 of a master shard under a write load, as clients see it: per round, the longest time a
client went without an acknowledgement, and the errors the clients got. A 3-node local cluster
(every service), a 2-shard replicated database, `--clients` redis-py clients writing one SET at a
time through one node's endpoint.

    PYTHONPATH=. python3 bench/shard_kill.py [--rounds 5] [--clients 4]

The figures are in bench/RESULTS.md ("Holding instead of failing").
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from clusters import Cluster  # noqa: E402  (the tests' cluster helpers)
from waiting import wait_until  # noqa: E402
from workload import WriteLoad  # noqa: E402


def longest_gap(load: WriteLoad, clients: int, since: float) -> float:
    """The longest time one client went without an acknowledgement, after `since`."""
    worst = 0.0
    for i in range(clients):
        times = sorted(t for k, t in load.acked_at.items() if k.startswith(f"load:{i}:"))
        before = [t for t in times if t < since]
        times = ([before[-1]] if before else []) + [t for t in times if t >= since]
        worst = max([worst] + [b - a for a, b in zip(times, times[1:])])
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    gaps, errors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "cluster", "127.0.0.81")
        try:
            for n in range(args.rounds):
                db = cluster.create_db(f"kill{n}", shards=2, replication=True)
                load = WriteLoad(cluster.lc.nodes[3].address, db["port"],
                                 clients=args.clients).start()
                try:
                    wait_until(lambda: load.writes > 200, what="the load writing")
                    victim = cluster.master_of_key(db["uid"], b"probe")
                    pid = redis.Redis(*cluster.address(victim)).info("server")["process_id"]
                    killed = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    written = load.writes
                    wait_until(lambda: load.writes > written + 500, timeout=30,
                               what="the load writing on")
                    time.sleep(1.0)
                finally:
                    load.stop()
                gap = longest_gap(load, args.clients, killed)
                errs = [e for t, e in load.errors if t >= killed]
                gaps.append(gap)
                errors.append(len(errs))
                kinds = sorted({e.split("(")[0] for e in errs})
                print(f"round {n}: longest gap {gap:.3f}s, {len(errs)} errors {kinds}", flush=True)
        finally:
            cluster.close()
    print(f"longest gap: median {statistics.median(gaps):.3f}s, max {max(gaps):.3f}s; errors: "
          f"median {statistics.median(errors)}, max {max(errors)} over {args.rounds} rounds "
          f"({args.clients} clients)")


if __name__ == "__main__":
    main()
