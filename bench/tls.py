#!/usr/bin/env python3
"""Client TLS throughput: dmcproxy with TLS vs dmcproxy plaintext vs redis-server's own
tls-port and plain port, over the same 3 shards (the figures of bench/RESULTS.md, "Client TLS");
and data-path internode encryption (DPINE): a plaintext dmcproxy over the shards' tls-ports.

    python3 bench/tls.py [--requests 200000] [--clients 50] [--threads 1]

Three redis-servers on 127.0.0.1, each with a plain port and a `tls-port` (the certificate of
a CA made here, the one dmcproxy's TLS endpoint serves too; `tls-auth-clients no`); one
dmcproxy plaintext and one with --tls-cert-file over them. For each workload (redis-benchmark:
GET and SET one at a time, GET and SET pipelined 16 deep), in turn, on:

    direct        shard 1's plain port
    direct TLS    shard 1's tls-port (redis-server's own TLS)
    dmcproxy      the plaintext proxy
    dmcproxy TLS  the TLS proxy
    DPINE         a plaintext proxy whose shard connections speak TLS (--shard-tls, the
                  shards' tls-ports): what data_internode_encryption costs, beside "dmcproxy"

prints requests/s (redis-benchmark's) and the CPU µs per request of the process that served
them (the proxy alone for the proxies; /proc/PID/stat, an upper bound on a loaded machine).
redis-benchmark opens its connections once (a handshake per client, not per request): this
is the cost of encryption on a steady connection. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from control import certificates  # noqa: E402
from dmc.local import start_proxy  # noqa: E402
from dmc.processes import free_port, stop_process, wait_for_port  # noqa: E402

WORKLOADS = [("GET P1", ["-t", "get"]), ("SET P1", ["-t", "set"]),
             ("GET P16", ["-t", "get", "-P", "16"]), ("SET P16", ["-t", "set", "-P", "16"])]
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def write_pki(folder: Path) -> dict:
    ca = certificates.make_ca("bench.tls")
    pair = certificates.issue(ca, 1, HOST, "bench.tls")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.certificate)
    files["cert"].write_bytes(pair.certificate)
    files["key"].write_bytes(pair.key)
    return {k: str(v) for k, v in files.items()}


def start_shard(folder: Path, pki: dict) -> tuple[int, int, subprocess.Popen]:
    port, tls_port = free_port(), free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--tls-port", str(tls_port), "--bind", HOST,
         "--tls-cert-file", pki["cert"], "--tls-key-file", pki["key"],
         "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, HOST, proc=proc)     # (the tls-port opens with it)
    return port, tls_port, proc


def benchmark(port: int, args: list[str], requests: int, clients: int,
              tls: list[str]) -> float:
    out = subprocess.run(["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(requests),
                          "-c", str(clients), "-r", "100000", "-q", *tls, *args],
                         check=True, capture_output=True, text=True, timeout=3600).stdout
    # "GET: 81234.56 requests per second, p50=0.3 msec" (after \r-separated progress lines)
    last = out.replace("\r", "\n").strip().splitlines()[-1]
    return float(last.split(":", 1)[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="dmcproxy's worker threads")
    args = parser.parse_args()
    started: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        folder = Path(tmp)
        pki = write_pki(folder)
        try:
            shards = [start_shard(folder, pki) for _ in range(3)]
            started += [proc for _, _, proc in shards]
            plain_shards = [(HOST, port) for port, _, _ in shards]
            threads = ["--threads", str(args.threads)]
            plain_proxy, plain_port = start_proxy(plain_shards, 0, folder, *threads)
            started.append(plain_proxy)
            tls_proxy, tls_port = start_proxy(plain_shards, 0, folder, *threads,
                                              "--tls-cert-file", pki["cert"],
                                              "--tls-key-file", pki["key"])
            started.append(tls_proxy)
            dpine_proxy, dpine_port = start_proxy([(HOST, tls) for _, tls, _ in shards], 0,
                                                  folder, *threads, "--shard-tls",
                                                  "--shard-tls-ca-cert-file", pki["ca"])
            started.append(dpine_proxy)
            tls = ["--tls", "--cacert", pki["ca"]]
            targets = [("direct", shards[0][0], shards[0][2], []),
                       ("direct TLS", shards[0][1], shards[0][2], tls),
                       ("dmcproxy", plain_port, plain_proxy, []),
                       ("dmcproxy TLS", tls_port, tls_proxy, tls),
                       ("DPINE", dpine_port, dpine_proxy, [])]
            print(f"client TLS: {args.requests} requests a workload, {args.clients} clients, "
                  f"dmcproxy --threads {args.threads}; requests/s (CPU µs per request of the "
                  "serving process)")
            print("| workload | " + " | ".join(name for name, *_ in targets) + " |")
            print("| --- |" + " --- |" * len(targets))
            for workload, wargs in WORKLOADS:
                cells = []
                for _, port, proc, tls_args in targets:
                    before = cpu_seconds(proc.pid)
                    rps = benchmark(port, wargs, args.requests, args.clients, tls_args)
                    cpu = (cpu_seconds(proc.pid) - before) / args.requests * 1e6
                    cells.append(f"{rps:,.0f} ({cpu:.1f})")
                print(f"| {workload} | " + " | ".join(cells) + " |", flush=True)
                time.sleep(0.1)
        finally:
            for proc in started:
                stop_process(proc)


if __name__ == "__main__":
    main()
