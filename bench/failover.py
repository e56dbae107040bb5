"""Control-plane failover time: a local cluster of N nodes, kill -9 of every process of the
master node, time until another node's CCS copy accepts a write. Repeated; the killed node is
started again between rounds. Prints each figure and the median.

    python3 bench/failover.py [--nodes 3] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from control.local_cluster import LocalCluster, loopback_addresses


def writable_master(cluster: LocalCluster, exclude: int) -> int | None:
    for uid, c in cluster.nodes.items():
        if uid == exclude:
            continue
        try:
            redis.Redis(unix_socket_path=str(c.ccs_socket), socket_timeout=1).set(
                "failover-probe", uid)       # (the node's plaintext CCS: its socket)
            return uid
        except (redis.exceptions.ResponseError, redis.exceptions.ConnectionError):
            pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster.create(Path(tmp) / "cluster", loopback_addresses(args.nodes))
        try:
            figures = []
            for _ in range(args.rounds):
                old = cluster.wait_for_master()
                time.sleep(2)     # a settled cluster: leases renewed, heartbeats flowing
                killed = time.monotonic()
                cluster.kill_node(old)
                while (new := writable_master(cluster, old)) is None:
                    time.sleep(0.005)
                took = time.monotonic() - killed
                figures.append(took)
                print(f"kill -9 of master node {old}: CCS writable on node {new} "
                      f"after {took:.3f}s", flush=True)
                cluster.start_node(old)
            print(f"median {statistics.median(figures):.3f}s, min {min(figures):.3f}s, "
                  f"max {max(figures):.3f}s over {len(figures)} rounds ({args.nodes} nodes)")
        finally:
            cluster.delete()


if __name__ == "__main__":
    main()
