#!/usr/bin/env python3
"""Per-request cost of dmcproxy (1 and N worker threads) and of a redis-server shard: the
figures of the scaling model in bench/RESULTS.md.

    python3 bench/per_request.py [--threads 1,2] [--requests 20000] [--skip-callgrind]
                                 [--proxy-args "--multi-slot-commands sequential"]

Over 3 redis-server shards on 127.0.0.1, for each workload (redis-benchmark, 20 clients:
GET and SET one at a time, GET and SET pipelined 16 deep, MSET of 10 keys):

- callgrind: instructions per request of the proxy's loop (`--toggle-collect` of loop_once and
  everything it calls: parsing, routing, the worker locks, the libc side of the syscalls; not
  the kernel), one dmcproxy under valgrind per thread count, counters dumped after each
  workload (callgrind_control -d). Instructions do not depend on what else the machine runs.
- CPU time: user + system CPU seconds (/proc/PID/stat) per request of the proxy and of the
  shards together, without valgrind. This includes the kernel's side of every syscall, but a
  loaded machine inflates it (cache misses, context switches): read it as an upper bound.

Prints one table per measure; nothing else is written.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from dmc.local import redis_servers  # noqa: E402
from dmc.processes import free_port, stop_process  # noqa: E402

WORKLOADS = [("GET P1", ["-t", "get"]), ("SET P1", ["-t", "set"]),
             ("GET P16", ["-t", "get", "-P", "16"]), ("SET P16", ["-t", "set", "-P", "16"]),
             ("MSET 10 keys", ["-t", "mset"])]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


def wait_answers(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on port {port}")
        time.sleep(0.5)


def benchmark(port: int, args: list[str], requests: int) -> None:
    subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(requests), "-c", "20",
                    "-r", "1000", "-q", *args], check=True, capture_output=True, timeout=3600)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# More dmcproxy options for every proxy started (--proxy-args): a setting's cost, before/after.
PROXY_ARGS: list[str] = []


def proxy_command(shards: list[int], port: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "dmc.proxy", "--port", str(port), "--threads", str(threads),
           *PROXY_ARGS]
    for p in shards:
        cmd += ["--shard", f"127.0.0.1:{p}"]
    return cmd


def callgrind_figures(shards: list[int], threads: int, requests: int, out: Path) -> dict:
    port = free_port()
    prefix = out / f"callgrind.t{threads}"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}",
                             "--toggle-collect=*fastpath_loop_once",
                             *proxy_command(shards, port, threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    figures = {}
    try:
        wait_answers(port, 300)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       capture_output=True)
        for name, args in WORKLOADS:
            benchmark(port, args, requests)
            before = set(glob.glob(f"{prefix}.*"))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
            dump = wait_new_file(prefix, before)
            figures[name] = total_instructions(dump) / requests
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return figures


def wait_new_file(prefix: Path, before: set[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(f"{prefix}.*")) - before)
        if new and "totals:" in Path(new[-1]).read_text(errors="replace"):
            return new[-1]
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def total_instructions(path: str) -> int:
    match = re.search(r"^(?:totals|summary): (\d+)", Path(path).read_text(errors="replace"),
                      re.MULTILINE)
    return int(match.group(1)) if match else 0


def cpu_figures(shards: list[tuple[int, subprocess.Popen]], threads: int, requests: int) -> dict:
    port = free_port()
    proc = subprocess.Popen(proxy_command([p for p, _ in shards], port, threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    figures = {}
    try:
        wait_answers(port, 60)
        for name, args in WORKLOADS:
            p0 = cpu_seconds(proc.pid)
            s0 = sum(cpu_seconds(sp.pid) for _, sp in shards)
            benchmark(port, args, requests)
            figures[name] = ((cpu_seconds(proc.pid) - p0) / requests * 1e6,
                             (sum(cpu_seconds(sp.pid) for _, sp in shards) - s0) / requests * 1e6)
    finally:
        stop_process(proc)
    return figures


def direct_cpu(shards: list[tuple[int, subprocess.Popen]], requests: int) -> dict:
    """One shard asked directly: its CPU per request (the shard's cost alone)."""
    port, proc = shards[0]
    figures = {}
    for name, args in WORKLOADS:
        if name.startswith("MSET"):
            continue        # one shard holds every key directly: not the proxied request
        s0 = cpu_seconds(proc.pid)
        benchmark(port, args, requests)
        figures[name] = (cpu_seconds(proc.pid) - s0) / requests * 1e6
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--proxy-args", default="", help="more dmcproxy options, one string")
    args = ap.parse_args()
    PROXY_ARGS[:] = args.proxy_args.split()
    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp, \
            redis_servers(Path(tmp), 3, "--save", "", "--appendonly", "no") as shards:
        ports = [p for p, _ in shards]
        if not args.skip_callgrind:
            print(f"callgrind: proxy instructions per request ({args.requests} requests a "
                  "workload, 20 clients)")
            rows = {t: callgrind_figures(ports, t, args.requests, Path(tmp)) for t in counts}
            print("| workload | " + " | ".join(f"{t} thread(s)" for t in counts) + " |")
            print("| --- |" + " --- |" * len(counts))
            for name, _ in WORKLOADS:
                print(f"| {name} | " + " | ".join(f"{rows[t][name]:,.0f}" for t in counts) + " |")
        print(f"\nCPU µs per request, proxy / the 3 shards together ({args.requests * 5} "
              "requests a workload)")
        rows = {t: cpu_figures(shards, t, args.requests * 5) for t in counts}
        direct = direct_cpu(shards, args.requests * 5)
        print("| workload | " + " | ".join(f"{t} thread(s): proxy / shards" for t in counts)
              + " | one shard direct |")
        print("| --- |" + " --- |" * (len(counts) + 1))
        for name, _ in WORKLOADS:
            shard = f"{direct[name]:.2f}" if name in direct else "-"
            print(f"| {name} | " + " | ".join(f"{rows[t][name][0]:.2f} / {rows[t][name][1]:.2f}"
                                              for t in counts) + f" | {shard} |")

if __name__ == "__main__":
    main()
